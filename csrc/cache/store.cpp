// ExpertStore: maps GGUF parts read-only and copies expert slices out of them, with bounds checked
// once at registration so the copy path can trust every range.
#include "cache/store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "common.h"

namespace kr {

ExpertStore::ExpertStore(const std::vector<std::string>& paths, int n_layers, int n_experts,
                         ReadMode mode)
    : n_layers_(n_layers), n_experts_(n_experts), mode_(mode) {
  KR_CHECK(!paths.empty(), "ExpertStore needs at least one part file");
  KR_CHECK(n_layers > 0 && n_experts > 0, "ExpertStore: n_layers and n_experts must be positive");
  KR_CHECK((uint64_t)n_layers * (uint64_t)n_experts <= (1ull << 26), "ExpertStore: too many experts");
  ranges_.resize((size_t)n_layers * n_experts * 3);
  direct_ok_.reset(new std::atomic<bool>[paths.size()]);
  for (const auto& path : paths) {
    Part p;
    p.path = path;
    p.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (p.fd < 0) {
      int err = errno;
      close_all();
      fail("ExpertStore: cannot open " + path + ": " + std::strerror(err));
    }
    struct stat st;
    ::fstat(p.fd, &st);
    p.size = (uint64_t)st.st_size;
    if (p.size > 0) {
      // Mapped in every mode: the mapping costs address space only, and CPU kernels read from it.
      void* m = ::mmap(nullptr, p.size, PROT_READ, MAP_SHARED, p.fd, 0);
      if (m == MAP_FAILED) {
        int err = errno;
        ::close(p.fd);
        close_all();
        fail("ExpertStore: cannot mmap " + path + ": " + std::strerror(err));
      }
      p.map = static_cast<uint8_t*>(m);
    }
    if (mode == ReadMode::Direct) {
      // Refused with EINVAL where the file system has no O_DIRECT: that part reads buffered.
      p.dfd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
    }
    direct_ok_[parts_.size()].store(p.dfd >= 0);
    parts_.push_back(p);
  }
}

void ExpertStore::close_all() {
  for (auto& p : parts_) {
    if (p.map) ::munmap(p.map, p.size);
    if (p.fd >= 0) ::close(p.fd);
    if (p.dfd >= 0) ::close(p.dfd);
  }
  parts_.clear();
}

ExpertStore::~ExpertStore() { close_all(); }

uint64_t ExpertStore::part_size(int part) const {
  KR_CHECK(part >= 0 && part < (int)parts_.size(), "ExpertStore: part index out of range");
  return parts_[part].size;
}

bool ExpertStore::direct_active() const {
  if (mode_ != ReadMode::Direct) return false;
  for (size_t i = 0; i < parts_.size(); ++i)
    if (!direct_ok_[i].load()) return false;
  return true;
}

size_t ExpertStore::index(int layer, int expert) const {
  KR_CHECK(layer >= 0 && layer < n_layers_, "ExpertStore: layer " + std::to_string(layer) +
                                                " out of range [0, " + std::to_string(n_layers_) + ")");
  KR_CHECK(expert >= 0 && expert < n_experts_, "ExpertStore: expert " + std::to_string(expert) +
                                                   " out of range [0, " + std::to_string(n_experts_) + ")");
  return ((size_t)layer * n_experts_ + expert) * 3;
}

uint64_t ExpertStore::aligned_span(const ByteRange& r) {
  uint64_t a0 = r.offset & ~(kAlign - 1);
  uint64_t end = (r.offset + r.nbytes + kAlign - 1) & ~(kAlign - 1);
  return end - a0;
}

void ExpertStore::set_expert(int layer, int expert, const ByteRange& gate, const ByteRange& up,
                             const ByteRange& down) {
  size_t i = index(layer, expert);
  const ByteRange* rs[3] = {&gate, &up, &down};
  const char* names[3] = {"gate", "up", "down"};
  uint64_t total = 0, spans = 0;
  std::string who = "ExpertStore: layer " + std::to_string(layer) + " expert " + std::to_string(expert);
  for (int k = 0; k < 3; ++k) {
    const ByteRange& r = *rs[k];
    std::string where = who + " " + names[k];
    KR_CHECK(r.part >= 0 && r.part < (int)parts_.size(), where + ": part index out of range");
    KR_CHECK(r.nbytes > 0, where + ": empty range");
    uint64_t size = parts_[r.part].size;
    // Written so that offset + nbytes cannot overflow.
    KR_CHECK(r.offset <= size && r.nbytes <= size - r.offset,
             where + ": range [" + std::to_string(r.offset) + ", +" + std::to_string(r.nbytes) +
                 ") exceeds file size " + std::to_string(size));
    total += r.nbytes;
    spans += aligned_span(r);
  }
  uint64_t lim = limit_.load();
  KR_CHECK(lim == 0 || total <= lim,
           who + ": " + std::to_string(total) + " bytes do not fit the " + std::to_string(lim) +
               "-byte slots of a cache already reading this store (register every expert before "
               "creating a cache)");
  for (int k = 0; k < 3; ++k) ranges_[i + k] = *rs[k];
  if (total > max_bytes_) max_bytes_ = total;
  if (spans > max_span_) max_span_ = spans;
}

void ExpertStore::limit_expert_bytes(uint64_t slot_bytes) {
  KR_CHECK(slot_bytes >= max_bytes_, "ExpertStore: slots smaller than the largest expert");
  uint64_t cur = limit_.load();
  while ((cur == 0 || slot_bytes < cur) && !limit_.compare_exchange_weak(cur, slot_bytes)) {
  }
}

uint64_t ExpertStore::staging_bytes() const {
  return mode_ == ReadMode::Direct ? max_span_ : max_bytes_;
}

bool ExpertStore::has(int layer, int expert) const {
  return ranges_[index(layer, expert)].nbytes > 0;
}

const ByteRange* ExpertStore::ranges(int layer, int expert) const {
  return &ranges_[index(layer, expert)];
}

uint64_t ExpertStore::expert_bytes(int layer, int expert) const {
  const ByteRange* r = ranges(layer, expert);
  return r[0].nbytes + r[1].nbytes + r[2].nbytes;
}

const uint8_t* ExpertStore::mapped(const ByteRange& r) const {
  KR_CHECK(r.part >= 0 && r.part < (int)parts_.size() && parts_[r.part].map,
           "ExpertStore: range has no mapping");
  return parts_[r.part].map + r.offset;
}

void ExpertStore::inject_fault(Fault kind, int64_t skip, int64_t count) {
  KR_CHECK(skip >= 0 && count >= 0, "inject_fault: skip and count must be non-negative");
  fault_kind_.store(0);
  fault_skip_.store(skip);
  fault_left_.store(count);
  fault_kind_.store((int)kind);
}

// Every read goes through here, so the injected faults hit the very loop that real ones would.
ssize_t ExpertStore::sys_pread(int fd, uint8_t* dst, uint64_t n, uint64_t off, bool direct) const {
  reads_++;
  int kind = fault_kind_.load();
  if (kind == (int)Fault::Einval && !direct) kind = (int)Fault::None;
  if (kind != (int)Fault::None && fault_skip_.fetch_sub(1) <= 0 && fault_left_.fetch_sub(1) > 0) {
    if (kind == (int)Fault::Einval) {
      errno = EINVAL;
      return -1;
    }
    if (kind == (int)Fault::Eio) {
      errno = EIO;
      return -1;
    }
    if (kind == (int)Fault::Eof) return 0;
    if (kind == (int)Fault::Slow) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    // Short: a partial read, as a signal or a device may give (whole blocks for O_DIRECT).
    uint64_t half = direct ? (n / 2) & ~(kAlign - 1) : n / 2;
    if (kind == (int)Fault::Short && half > 0) {
      ssize_t got = ::pread(fd, dst, half, (off_t)off);
      if (got > 0) bytes_read_ += (uint64_t)got;
      return got;
    }
  }
  ssize_t got = ::pread(fd, dst, n, (off_t)off);
  if (got > 0) bytes_read_ += (uint64_t)got;
  return got;
}

void ExpertStore::pread_all(const Part& p, int fd, uint8_t* dst, uint64_t n, uint64_t off) const {
  while (n > 0) {
    ssize_t got = sys_pread(fd, dst, n, off, false);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0)
      throw std::runtime_error("ExpertStore: read of " + p.path + " failed at offset " +
                               std::to_string(off) + ": " +
                               (got < 0 ? std::strerror(errno) : "unexpected end of file"));
    dst += got;
    n -= (uint64_t)got;
    off += (uint64_t)got;
  }
}

// Whole aligned blocks around r into buf (aligned, aligned_span(r) long). A partial read that leaves the
// position unaligned (the end of the file, an injected short read) finishes with buffered reads.
void ExpertStore::read_direct(int part, const ByteRange& r, uint8_t* buf) const {
  const Part& p = parts_[part];
  uint64_t a0 = r.offset & ~(kAlign - 1);
  uint64_t need = r.offset + r.nbytes - a0;  // bytes of buf that must be filled
  uint64_t len = aligned_span(r);
  uint64_t got = 0;
  while (got < need) {
    if (got % kAlign != 0) {
      pread_all(p, p.fd, buf + got, need - got, a0 + got);
      return;
    }
    ssize_t n = sys_pread(p.dfd, buf + got, len - got, a0 + got, true);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EINVAL && got == 0) {
      // The file system took the open but refuses this read: buffered from now on for this part.
      direct_ok_[part].store(false);
      pread_all(p, p.fd, buf + (r.offset - a0), r.nbytes, r.offset);
      (void)::posix_fadvise(p.fd, (off_t)r.offset, (off_t)r.nbytes, POSIX_FADV_DONTNEED);
      return;
    }
    if (n <= 0)
      throw std::runtime_error("ExpertStore: direct read of " + p.path + " failed at offset " +
                               std::to_string(a0 + got) + ": " +
                               (n < 0 ? std::strerror(errno) : "unexpected end of file"));
    got += (uint64_t)n;
  }
}

const uint8_t* ExpertStore::read_range(const ByteRange& r, uint8_t* buf, uint64_t cap,
                                       bool must_copy) const {
  KR_CHECK(r.part >= 0 && r.part < (int)parts_.size() && r.nbytes > 0,
           "ExpertStore.read_range: range not registered");
  const Part& p = parts_[r.part];
  if (mode_ == ReadMode::Mmap && !must_copy) return p.map + r.offset;
  bool aligned = (reinterpret_cast<uintptr_t>(buf) & (kAlign - 1)) == 0;
  if (mode_ == ReadMode::Direct && direct_ok_[r.part].load() && aligned) {
    KR_CHECK(aligned_span(r) <= cap, "ExpertStore.read_range: buffer of " + std::to_string(cap) +
                                 " bytes is smaller than the aligned span " + std::to_string(aligned_span(r)));
    read_direct(r.part, r, buf);
    return buf + (r.offset - (r.offset & ~(kAlign - 1)));
  }
  KR_CHECK(r.nbytes <= cap, "ExpertStore.read_range: buffer of " + std::to_string(cap) +
                                " bytes is smaller than the range (" + std::to_string(r.nbytes) + ")");
  if (mode_ == ReadMode::Mmap) {
    std::memcpy(buf, p.map + r.offset, r.nbytes);
  } else {
    pread_all(p, p.fd, buf, r.nbytes, r.offset);
    if (mode_ == ReadMode::Direct)  // the buffered fallback still leaves nothing in the page cache
      (void)::posix_fadvise(p.fd, (off_t)r.offset, (off_t)r.nbytes, POSIX_FADV_DONTNEED);
  }
  return buf;
}

// Copies out of the page cache mapping. On x86-64, `rep movsb` (fast with ERMS/FSRM, the path the
// kernel's own copy_to_user takes) measured faster than glibc memcpy for megabyte copies whose
// source is 4 KiB pages scattered in physical memory (what a page-cache mapping is).
static inline void copy_from_mapping(uint8_t* dst, const uint8_t* src, uint64_t n) {
#if defined(__x86_64__)
  asm volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
#else
  std::memcpy(dst, src, n);
#endif
}

void ExpertStore::read_expert(int layer, int expert, uint8_t* dst) const {
  const ByteRange* r = ranges(layer, expert);
  KR_CHECK(r[0].nbytes > 0, "ExpertStore: layer " + std::to_string(layer) + " expert " +
                                std::to_string(expert) + " has no ranges");
  if (mode_ == ReadMode::Direct) {
    uint64_t cap = 0;
    for (int k = 0; k < 3; ++k) cap = std::max(cap, aligned_span(r[k]));
    void* bounce = std::aligned_alloc(kAlign, cap);
    if (!bounce) throw std::bad_alloc();
    try {
      for (int k = 0; k < 3; ++k) {
        const uint8_t* src = read_range(r[k], static_cast<uint8_t*>(bounce), cap, true);
        std::memcpy(dst, src, r[k].nbytes);
        dst += r[k].nbytes;
      }
    } catch (...) {
      std::free(bounce);
      throw;
    }
    std::free(bounce);
    return;
  }
  for (int k = 0; k < 3; ++k) {
    const Part& p = parts_[r[k].part];
    if (mode_ == ReadMode::Pread)
      pread_all(p, p.fd, dst, r[k].nbytes, r[k].offset);
    else
      copy_from_mapping(dst, p.map + r[k].offset, r[k].nbytes);
    dst += r[k].nbytes;
  }
}

void ExpertStore::advise_willneed(int layer, int expert) const {
  const ByteRange* r = ranges(layer, expert);
  if (r[0].nbytes == 0 || mode_ == ReadMode::Direct) return;
  static const uint64_t page = (uint64_t)::sysconf(_SC_PAGESIZE);
  for (int k = 0; k < 3; ++k) {
    const Part& p = parts_[r[k].part];
    // Hints only: failures are harmless, so their return codes are ignored on purpose.
    if (mode_ == ReadMode::Pread) {
      (void)::posix_fadvise(p.fd, (off_t)r[k].offset, (off_t)r[k].nbytes, POSIX_FADV_WILLNEED);
    } else {
      uint64_t start = r[k].offset & ~(page - 1);
      (void)::madvise(p.map + start, r[k].offset + r[k].nbytes - start, MADV_WILLNEED);
    }
  }
}

}  // namespace kr
