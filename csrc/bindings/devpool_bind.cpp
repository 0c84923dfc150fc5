// Python face of the device slot-pool protocol on the emulated device (csrc/devpool): the pool
// for small functional tests and the native stress test. The CUDA pool is in _C_cuda.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>

#include "common.h"
#include "devpool/emu_device.h"
#include "devpool/pool.h"
#include "devpool/stress.h"

namespace py = pybind11;
using namespace kr::devpool;

namespace {
py::dict stats_dict(const PoolStats& s) {
  py::dict d;
  d["hits"] = s.hits;
  d["misses"] = s.misses;
  d["prefetches"] = s.prefetches;
  d["prefetch_dropped"] = s.prefetch_dropped;
  d["loads"] = s.loads;
  d["evictions"] = s.evictions;
  d["bytes_loaded"] = s.bytes_loaded;
  d["host_waits"] = s.host_waits;
  d["host_wait_seconds"] = s.host_wait_seconds;
  return d;
}

// An emulated pool with its device, so Python holds one object.
struct EmuPool {
  std::shared_ptr<EmuDevice> dev;
  std::unique_ptr<DevicePool> pool;
};
}  // namespace

void register_devpool(py::module_& m) {
  py::class_<EmuPool>(m, "EmuDevicePool",
                      "DevicePool over the emulated device (copies complete later, on their own thread).")
      .def(py::init([](std::shared_ptr<kr::ExpertStore> store, int n_slots, int n_staging, int n_readers,
                       uint32_t seed, int max_delay_us) {
             auto p = new EmuPool();
             p->dev = std::make_shared<EmuDevice>(seed, max_delay_us, 1024);
             p->pool = std::make_unique<DevicePool>(p->dev, store, store->max_expert_bytes(), n_slots, n_staging,
                                                    n_readers);
             return p;
           }),
           py::arg("store"), py::arg("n_slots"), py::arg("n_staging") = 4, py::arg("n_readers") = 2,
           py::arg("seed") = 1, py::arg("max_delay_us") = 100)
      .def("new_stream", [](EmuPool& p) { return p.dev->new_stream(); })
      .def("sync_stream", [](EmuPool& p, int s) { p.dev->sync_stream(s); }, py::arg("stream"),
           py::call_guard<py::gil_scoped_release>())
      .def("acquire", [](EmuPool& p, int layer, const std::vector<int>& ids, int stream) {
             return p.pool->acquire(layer, ids, stream);
           }, py::arg("layer"), py::arg("ids"), py::arg("stream"), py::call_guard<py::gil_scoped_release>())
      .def("release", [](EmuPool& p, int layer, const std::vector<int>& ids, int stream) {
             p.pool->release(layer, ids, stream);
           }, py::arg("layer"), py::arg("ids"), py::arg("stream"))
      .def("prefetch", [](EmuPool& p, int layer, const std::vector<int>& ids) { return p.pool->prefetch(layer, ids); },
           py::arg("layer"), py::arg("ids"))
      .def("wait_idle", [](EmuPool& p) { p.pool->wait_idle(); }, py::call_guard<py::gil_scoped_release>())
      .def("read_slot", [](EmuPool& p, int slot, size_t n, int stream) {
             // Device-to-host read in stream order (after the stream's earlier work), as a test probe.
             KR_CHECK(n <= p.pool->slot_bytes(), "read past the slot");
             std::string out(n, '\0');
             {
               py::gil_scoped_release nogil;
               const uint8_t* src = p.pool->address(slot);
               p.dev->launch(stream, [&out, src, n] { std::memcpy(&out[0], src, n); });
               p.dev->sync_stream(stream);
             }
             return py::bytes(out);
           }, py::arg("slot"), py::arg("n"), py::arg("stream"))
      .def_property_readonly("capacity", [](EmuPool& p) { return p.pool->capacity(); })
      .def_property_readonly("n_staging", [](EmuPool& p) { return p.pool->n_staging(); })
      .def_property_readonly("bound_threads", [](EmuPool& p) { return p.dev->bound_threads(); })
      .def("pinned_slots", [](EmuPool& p) { return p.pool->pinned_slots(); })
      .def("contains", [](EmuPool& p, int l, int e) { return p.pool->contains(l, e); })
      .def("resident", [](EmuPool& p) { return p.pool->resident(); })
      .def("stats", [](EmuPool& p) { return stats_dict(p.pool->stats()); });

  m.def(
      "devpool_stress",
      [](std::shared_ptr<kr::ExpertStore> store, int n_slots, int n_staging, int n_readers, int n_threads, int iters,
         int k, uint32_t seed, int max_delay_us, bool skip_ready_wait, bool skip_last_use_wait) {
        StressConfig c;
        c.n_slots = n_slots;
        c.n_staging = n_staging;
        c.n_readers = n_readers;
        c.n_threads = n_threads;
        c.iters = iters;
        c.k = k;
        c.seed = seed;
        c.max_delay_us = max_delay_us;
        c.skip_ready_wait = skip_ready_wait;
        c.skip_last_use_wait = skip_last_use_wait;
        StressResult r;
        {
          py::gil_scoped_release nogil;
          r = run_stress(store, c);
        }
        py::dict d;
        d["computes"] = r.computes;
        d["early_reads"] = r.early_reads;
        d["torn_reads"] = r.torn_reads;
        d["loads"] = r.loads;
        d["hits"] = r.hits;
        d["misses"] = r.misses;
        d["evictions"] = r.evictions;
        d["prefetches"] = r.prefetches;
        d["host_waits"] = r.host_waits;
        d["max_pinned"] = r.max_pinned;
        d["capacity_ok"] = r.capacity_ok;
        d["bound_threads"] = r.bound_threads;
        return d;
      },
      py::arg("store"), py::arg("n_slots") = 8, py::arg("n_staging") = 4, py::arg("n_readers") = 2,
      py::arg("n_threads") = 2, py::arg("iters") = 200, py::arg("k") = 3, py::arg("seed") = 1,
      py::arg("max_delay_us") = 100, py::arg("skip_ready_wait") = false, py::arg("skip_last_use_wait") = false,
      "Native stress test of the DevicePool protocol on the emulated device; returns counters.");
}
