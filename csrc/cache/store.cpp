// ExpertStore: maps GGUF parts read-only and copies expert slices out of them, with bounds checked
// once at registration so the copy path can trust every range.
#include "cache/store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
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
  for (const auto& path : paths) {
    Part p;
    p.path = path;
    p.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (p.fd < 0) {
      int err = errno;
      for (auto& q : parts_) {
        if (q.map) ::munmap(q.map, q.size);
        ::close(q.fd);
      }
      fail("ExpertStore: cannot open " + path + ": " + std::strerror(err));
    }
    struct stat st;
    ::fstat(p.fd, &st);
    p.size = (uint64_t)st.st_size;
    if (p.size > 0) {
      // Mapped in both modes: the mapping costs address space only, and CPU kernels read from it.
      void* m = ::mmap(nullptr, p.size, PROT_READ, MAP_SHARED, p.fd, 0);
      if (m == MAP_FAILED) {
        int err = errno;
        ::close(p.fd);
        for (auto& q : parts_) {
          if (q.map) ::munmap(q.map, q.size);
          ::close(q.fd);
        }
        fail("ExpertStore: cannot mmap " + path + ": " + std::strerror(err));
      }
      p.map = static_cast<uint8_t*>(m);
    }
    parts_.push_back(p);
  }
}

ExpertStore::~ExpertStore() {
  for (auto& p : parts_) {
    if (p.map) ::munmap(p.map, p.size);
    if (p.fd >= 0) ::close(p.fd);
  }
}

uint64_t ExpertStore::part_size(int part) const {
  KR_CHECK(part >= 0 && part < (int)parts_.size(), "ExpertStore: part index out of range");
  return parts_[part].size;
}

size_t ExpertStore::index(int layer, int expert) const {
  KR_CHECK(layer >= 0 && layer < n_layers_, "ExpertStore: layer " + std::to_string(layer) +
                                                " out of range [0, " + std::to_string(n_layers_) + ")");
  KR_CHECK(expert >= 0 && expert < n_experts_, "ExpertStore: expert " + std::to_string(expert) +
                                                   " out of range [0, " + std::to_string(n_experts_) + ")");
  return ((size_t)layer * n_experts_ + expert) * 3;
}

void ExpertStore::set_expert(int layer, int expert, const ByteRange& gate, const ByteRange& up,
                             const ByteRange& down) {
  size_t i = index(layer, expert);
  const ByteRange* rs[3] = {&gate, &up, &down};
  const char* names[3] = {"gate", "up", "down"};
  uint64_t total = 0;
  for (int k = 0; k < 3; ++k) {
    const ByteRange& r = *rs[k];
    std::string where = "ExpertStore: layer " + std::to_string(layer) + " expert " +
                        std::to_string(expert) + " " + names[k];
    KR_CHECK(r.part >= 0 && r.part < (int)parts_.size(), where + ": part index out of range");
    KR_CHECK(r.nbytes > 0, where + ": empty range");
    uint64_t size = parts_[r.part].size;
    // Written so that offset + nbytes cannot overflow.
    KR_CHECK(r.offset <= size && r.nbytes <= size - r.offset,
             where + ": range [" + std::to_string(r.offset) + ", +" + std::to_string(r.nbytes) +
                 ") exceeds file size " + std::to_string(size));
    total += r.nbytes;
  }
  for (int k = 0; k < 3; ++k) ranges_[i + k] = *rs[k];
  if (total > max_bytes_) max_bytes_ = total;
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

static void pread_all(int fd, uint8_t* dst, uint64_t n, uint64_t off, const std::string& path) {
  while (n > 0) {
    ssize_t got = ::pread(fd, dst, n, (off_t)off);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0)
      throw std::runtime_error("ExpertStore: read of " + path + " failed at offset " +
                               std::to_string(off) + ": " +
                               (got < 0 ? std::strerror(errno) : "unexpected end of file"));
    dst += got;
    n -= (uint64_t)got;
    off += (uint64_t)got;
  }
}

void ExpertStore::read_expert(int layer, int expert, uint8_t* dst) const {
  const ByteRange* r = ranges(layer, expert);
  KR_CHECK(r[0].nbytes > 0, "ExpertStore: layer " + std::to_string(layer) + " expert " +
                                std::to_string(expert) + " has no ranges");
  for (int k = 0; k < 3; ++k) {
    const Part& p = parts_[r[k].part];
    if (mode_ == ReadMode::Pread)
      pread_all(p.fd, dst, r[k].nbytes, r[k].offset, p.path);
    else
      copy_from_mapping(dst, p.map + r[k].offset, r[k].nbytes);
    dst += r[k].nbytes;
  }
}

void ExpertStore::advise_willneed(int layer, int expert) const {
  const ByteRange* r = ranges(layer, expert);
  if (r[0].nbytes == 0) return;
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
