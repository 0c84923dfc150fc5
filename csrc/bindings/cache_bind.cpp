// Python face of csrc/cache: ExpertStore, HostSlotPool, ExpertCache. Blocking calls release the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>

#include "cache/expert_cache.h"
#include "cache/slots.h"
#include "cache/store.h"
#include "common.h"

namespace py = pybind11;
using kr::ByteRange;
using kr::CacheStats;
using kr::ExpertCache;
using kr::ExpertStore;
using kr::HostSlotPool;
using kr::SlotPool;

namespace {

ByteRange to_range(const py::tuple& t) {
  KR_CHECK(t.size() == 3, "a byte range is a (part, offset, nbytes) tuple");
  long long part = t[0].cast<long long>(), off = t[1].cast<long long>(),
            n = t[2].cast<long long>();
  KR_CHECK(part >= 0 && off >= 0 && n >= 0, "byte range fields must be non-negative");
  return ByteRange{(int32_t)part, (uint64_t)off, (uint64_t)n};
}

py::dict stats_dict(const CacheStats& s) {
  py::dict d;
  d["hits"] = s.hits;
  d["misses"] = s.misses;
  d["accesses"] = s.hits + s.misses;
  d["prefetch_hits"] = s.prefetch_hits;
  d["prefetches"] = s.prefetches;
  d["prefetch_dropped"] = s.prefetch_dropped;
  d["prefetch_cancelled"] = s.prefetch_cancelled;
  d["loads"] = s.loads;
  d["bytes_loaded"] = s.bytes_loaded;
  d["evictions"] = s.evictions;
  d["stall_seconds"] = s.stall_seconds;
  d["read_seconds"] = s.read_seconds;
  d["read_errors"] = s.read_errors;
  return d;
}

kr::ReadMode parse_mode(const std::string& m) {
  if (m == "mmap") return kr::ReadMode::Mmap;
  if (m == "pread") return kr::ReadMode::Pread;
  if (m == "direct") return kr::ReadMode::Direct;
  kr::fail("read mode must be 'mmap', 'pread' or 'direct', got '" + m + "'");
}

const char* mode_name(kr::ReadMode m) {
  return m == kr::ReadMode::Mmap ? "mmap" : m == kr::ReadMode::Pread ? "pread" : "direct";
}

kr::Fault parse_fault(const std::string& f) {
  if (f == "none") return kr::Fault::None;
  if (f == "eio") return kr::Fault::Eio;
  if (f == "eof") return kr::Fault::Eof;
  if (f == "short") return kr::Fault::Short;
  if (f == "slow") return kr::Fault::Slow;
  if (f == "einval") return kr::Fault::Einval;
  kr::fail("fault must be 'none', 'eio', 'eof', 'short', 'slow' or 'einval', got '" + f + "'");
}

// The whole pages inside a buffer (madvise and mlock work on pages; rounding inwards never
// touches a neighbour's bytes).
std::pair<uintptr_t, size_t> inner_pages(const py::buffer& b) {
  py::buffer_info info = b.request();
  static const uintptr_t page = (uintptr_t)::sysconf(_SC_PAGESIZE);
  uintptr_t lo = reinterpret_cast<uintptr_t>(info.ptr);
  uintptr_t hi = lo + (uintptr_t)(info.size * info.itemsize);
  uintptr_t a = (lo + page - 1) & ~(page - 1), z = hi & ~(page - 1);
  return {a, z > a ? (size_t)(z - a) : 0};
}

}  // namespace

void register_cache(py::module_& m) {
  py::class_<ExpertStore, std::shared_ptr<ExpertStore>>(
      m, "ExpertStore", "Byte ranges of every (layer, expert) in mmapped GGUF part files.")
      .def(py::init([](const std::vector<std::string>& paths, int n_layers, int n_experts,
                       const std::string& mode) {
             return std::make_shared<ExpertStore>(paths, n_layers, n_experts, parse_mode(mode));
           }),
           py::arg("paths"), py::arg("n_layers"), py::arg("n_experts"), py::arg("mode") = "mmap")
      .def("set_expert",
           [](ExpertStore& s, int layer, int expert, py::tuple g, py::tuple u, py::tuple d) {
             s.set_expert(layer, expert, to_range(g), to_range(u), to_range(d));
           },
           py::arg("layer"), py::arg("expert"), py::arg("gate"), py::arg("up"), py::arg("down"),
           "Register gate/up/down as (part, offset, nbytes); checked against the file size.")
      .def("set_ranges",
           [](ExpertStore& s, py::array_t<int64_t, py::array::c_style | py::array::forcecast> a) {
             KR_CHECK(a.ndim() == 2 && a.shape(1) == 11,
                      "set_ranges expects an int64 array [N, 11]: layer, expert, then "
                      "(part, offset, nbytes) for gate, up, down");
             auto r = a.unchecked<2>();
             for (py::ssize_t i = 0; i < r.shape(0); ++i) {
               ByteRange br[3];
               for (int k = 0; k < 3; ++k) {
                 KR_CHECK(r(i, 2 + 3 * k) >= 0 && r(i, 3 + 3 * k) >= 0 && r(i, 4 + 3 * k) >= 0,
                          "set_ranges: negative field in row " + std::to_string(i));
                 br[k] = ByteRange{(int32_t)r(i, 2 + 3 * k), (uint64_t)r(i, 3 + 3 * k),
                                   (uint64_t)r(i, 4 + 3 * k)};
               }
               KR_CHECK(r(i, 0) >= 0 && r(i, 0) < s.n_layers() && r(i, 1) >= 0 &&
                            r(i, 1) < s.n_experts(),
                        "set_ranges: layer/expert out of range in row " + std::to_string(i));
               s.set_expert((int)r(i, 0), (int)r(i, 1), br[0], br[1], br[2]);
             }
           },
           py::arg("rows"))
      .def_property_readonly("n_layers", &ExpertStore::n_layers)
      .def_property_readonly("n_experts", &ExpertStore::n_experts)
      .def_property_readonly("n_parts", &ExpertStore::n_parts)
      .def_property_readonly("max_expert_bytes", &ExpertStore::max_expert_bytes)
      .def_property_readonly("mode", [](const ExpertStore& s) { return mode_name(s.mode()); })
      .def_property_readonly("direct_active", &ExpertStore::direct_active,
                             "Direct mode and every part reads with O_DIRECT (no fallback taken).")
      .def_property_readonly("staging_bytes", &ExpertStore::staging_bytes)
      .def_property_readonly("reads", &ExpertStore::reads, "pread calls issued so far.")
      .def_property_readonly("bytes_read", &ExpertStore::bytes_read,
                             "Bytes pread from the files (aligned blocks included).")
      .def("inject_fault",
           [](ExpertStore& s, const std::string& kind, int64_t skip, int64_t count) {
             s.inject_fault(parse_fault(kind), skip, count);
           },
           py::arg("kind"), py::arg("skip") = 0, py::arg("count") = 1,
           "Tests: after `skip` good reads, fail the next `count` ('eio', 'eof', 'short', 'slow', 'einval'; 'none' off).")
      .def("part_size", &ExpertStore::part_size, py::arg("part"))
      .def("has", &ExpertStore::has, py::arg("layer"), py::arg("expert"))
      .def("expert_bytes", &ExpertStore::expert_bytes, py::arg("layer"), py::arg("expert"))
      .def("ranges",
           [](const ExpertStore& s, int layer, int expert) {
             const ByteRange* r = s.ranges(layer, expert);
             py::list out;
             for (int k = 0; k < 3; ++k) out.append(py::make_tuple(r[k].part, r[k].offset, r[k].nbytes));
             return out;
           },
           py::arg("layer"), py::arg("expert"), "[(part, offset, nbytes)] for gate, up, down.")
      .def("mapped_address",
           [](const ExpertStore& s, int layer, int expert, int which) {
             KR_CHECK(which >= 0 && which < 3, "which must be 0 (gate), 1 (up) or 2 (down)");
             KR_CHECK(s.has(layer, expert), "expert has no ranges");
             return reinterpret_cast<uintptr_t>(s.mapped(s.ranges(layer, expert)[which]));
           },
           py::arg("layer"), py::arg("expert"), py::arg("which"),
           "Address of a slice inside the mapping (for CPU kernels on uncached experts).")
      .def("read_expert",
           [](const ExpertStore& s, int layer, int expert) {
             KR_CHECK(s.has(layer, expert), "expert has no ranges");
             py::array_t<uint8_t> out((py::ssize_t)s.expert_bytes(layer, expert));
             uint8_t* dst = out.mutable_data();
             {
               py::gil_scoped_release nogil;
               s.read_expert(layer, expert, dst);
             }
             return out;
           },
           py::arg("layer"), py::arg("expert"), "gate|up|down bytes as a new uint8 array.")
      .def("advise_willneed", &ExpertStore::advise_willneed, py::arg("layer"), py::arg("expert"),
           py::call_guard<py::gil_scoped_release>());

  py::class_<SlotPool, std::shared_ptr<SlotPool>>(m, "SlotPool",
                                                  "Fixed-size expert slots (interface).")
      .def_property_readonly("slot_bytes", &SlotPool::slot_bytes)
      .def_property_readonly("n_slots", &SlotPool::n_slots)
      .def_property_readonly("host_accessible", &SlotPool::host_accessible)
      .def("address", &SlotPool::address, py::arg("slot"));

  py::class_<HostSlotPool, SlotPool, std::shared_ptr<HostSlotPool>>(
      m, "HostSlotPool", "Slots in host RAM (64-byte aligned, pre-touched).")
      .def(py::init<size_t, int, bool>(), py::arg("slot_bytes"), py::arg("n_slots"),
           py::arg("staging") = false)
      .def("view",
           [](std::shared_ptr<HostSlotPool> p, int slot) {
             auto* ptr = reinterpret_cast<uint8_t*>(p->address(slot));
             // The capsule keeps the pool alive as long as the view exists.
             auto* keep = new std::shared_ptr<HostSlotPool>(p);
             py::capsule owner(keep, [](void* v) { delete static_cast<std::shared_ptr<HostSlotPool>*>(v); });
             return py::array_t<uint8_t>({(py::ssize_t)p->slot_bytes()}, {1}, ptr, owner);
           },
           py::arg("slot"), "A uint8 numpy view of one slot's bytes (no copy).");

  py::class_<ExpertCache, std::shared_ptr<ExpertCache>>(
      m, "ExpertCache", "(layer, expert) -> slot cache with pinning, a loader thread and stats.")
      .def(py::init([](std::shared_ptr<ExpertStore> store, std::shared_ptr<SlotPool> pool,
                       const std::string& policy, double timeout, int n_readers,
                       std::shared_ptr<ExpertCache> upstream) {
             kr::EvictPolicy p;
             if (policy == "lru")
               p = kr::EvictPolicy::LRU;
             else if (policy == "lfu")
               p = kr::EvictPolicy::LFU;
             else
               kr::fail("native cache policy must be 'lru' or 'lfu', got '" + policy + "'");
             return std::make_shared<ExpertCache>(store, pool, p, timeout, n_readers, upstream);
           }),
           py::arg("store"), py::arg("pool"), py::arg("policy") = "lru",
           py::arg("acquire_timeout_s") = 30.0, py::arg("n_readers") = 1,
           py::arg("upstream") = nullptr)
      .def_property_readonly("n_readers", &ExpertCache::n_readers)
      .def("acquire", &ExpertCache::acquire, py::arg("layer"), py::arg("ids"),
           py::call_guard<py::gil_scoped_release>(),
           "Pin the experts (loading misses) and return their slots, in the order of ids.")
      .def("acquire_nowait", &ExpertCache::acquire_nowait, py::arg("layer"), py::arg("ids"),
           py::arg("cancel_stale") = false,
           py::call_guard<py::gil_scoped_release>(),
           "Pin the experts and queue the misses without waiting; then wait_loaded(layer, slots).")
      .def("wait_loaded", &ExpertCache::wait_loaded, py::arg("layer"), py::arg("slots"),
           py::call_guard<py::gil_scoped_release>())
      .def("release", &ExpertCache::release, py::arg("layer"), py::arg("ids"),
           py::call_guard<py::gil_scoped_release>())
      .def("prefetch", &ExpertCache::prefetch, py::arg("layer"), py::arg("ids"),
           py::call_guard<py::gil_scoped_release>(),
           "Queue loads of missing experts; returns the number queued.")
      .def("wait_idle", &ExpertCache::wait_idle, py::call_guard<py::gil_scoped_release>())
      .def("contains", &ExpertCache::contains, py::arg("layer"), py::arg("expert"))
      .def("slot_address",
           [](const ExpertCache& c, int slot) { return c.pool().address(slot); },
           py::arg("slot"))
      .def("stats",
           [](const ExpertCache& c, py::object layer) {
             return stats_dict(layer.is_none() ? c.total_stats() : c.stats(layer.cast<int>()));
           },
           py::arg("layer") = py::none())
      .def("reset_stats", &ExpertCache::reset_stats)
      .def_property_readonly("capacity", &ExpertCache::capacity)
      .def_property_readonly("pinned_slots", &ExpertCache::pinned_slots)
      .def("resident", &ExpertCache::resident,
           "[(layer, expert, slot, pins)] of every loaded slot.");

  m.def("madvise_view",
        [](py::buffer b, const std::string& advice) {
          int a = advice == "random"     ? MADV_RANDOM
                  : advice == "normal"   ? MADV_NORMAL
                  : advice == "willneed" ? MADV_WILLNEED
                  : advice == "dontneed" ? MADV_DONTNEED
                                         : -1;
          KR_CHECK(a >= 0, "advice must be random, normal, willneed or dontneed, got '" + advice + "'");
          auto r = inner_pages(b);
          if (r.second == 0) return 0;
          return ::madvise(reinterpret_cast<void*>(r.first), r.second, a) == 0 ? 0 : errno;
        },
        py::arg("buffer"), py::arg("advice"),
        "madvise the whole pages inside a (mapped) buffer; returns 0 or the errno.");
  m.def("mlock_view",
        [](py::buffer b, bool lock) {
          auto r = inner_pages(b);
          if (r.second == 0) return 0;
          void* p = reinterpret_cast<void*>(r.first);
          py::gil_scoped_release nogil;  // mlock faults every page in
          return (lock ? ::mlock(p, r.second) : ::munlock(p, r.second)) == 0 ? 0 : errno;
        },
        py::arg("buffer"), py::arg("lock") = true,
        "mlock (or munlock) the whole pages inside a buffer; returns 0 or the errno.");
}
