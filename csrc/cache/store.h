// ExpertStore: where each (layer, expert)'s gate/up/down bytes live in the GGUF part(s), and how to
// copy them out: memcpy from the mapping (page-cached files), buffered pread, or O_DIRECT pread for
// files larger than RAM (the kernel's page cache then never holds a cold expert a second time).
#pragma once
#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kr {

// One tensor slice inside one part file; nbytes == 0 marks "absent" (dense layers have no experts).
struct ByteRange {
  int32_t part = -1;
  uint64_t offset = 0;
  uint64_t nbytes = 0;
};

// Direct: O_DIRECT reads of whole aligned blocks into an aligned bounce buffer. A file system that
// refuses O_DIRECT (tmpfs, some FUSE) falls back, per part, to buffered pread followed by
// POSIX_FADV_DONTNEED of the range, which keeps the same promise about the page cache.
enum class ReadMode { Mmap, Pread, Direct };

// Fault injection for tests, compiled in always and off by default: after `skip` successful
// reads the next `count` reads fail. Eio: -1/EIO. Eof: 0 bytes (a file truncated under us).
// Short: half the asked bytes, a legal partial read the loop must absorb (data stays correct).
// Slow: the read succeeds after 100 ms (a busy disk; for timing tests). Einval: an O_DIRECT read
// refused (a file system that takes the open but not the read); buffered reads are not hit.
enum class Fault { None, Eio, Eof, Short, Slow, Einval };

class ExpertStore {
 public:
  static constexpr uint64_t kAlign = 4096;  // O_DIRECT offset/length/buffer alignment

  // Opens and maps every part read-only (MAP_SHARED); ranges are added with set_expert.
  ExpertStore(const std::vector<std::string>& paths, int n_layers, int n_experts,
              ReadMode mode = ReadMode::Mmap);
  ~ExpertStore();
  ExpertStore(const ExpertStore&) = delete;
  ExpertStore& operator=(const ExpertStore&) = delete;

  // Validates each range against its part's size before recording it; all three must be present.
  // Refused when a cache already sized its slots and this expert would not fit in them.
  void set_expert(int layer, int expert, const ByteRange& gate, const ByteRange& up,
                  const ByteRange& down);

  int n_layers() const { return n_layers_; }
  int n_experts() const { return n_experts_; }
  int n_parts() const { return (int)parts_.size(); }
  uint64_t part_size(int part) const;
  ReadMode mode() const { return mode_; }
  // Direct mode: true while every part reads with O_DIRECT (false after a fallback).
  bool direct_active() const;

  bool has(int layer, int expert) const;
  // Gate, up, down; a slot holds them back to back in this order.
  const ByteRange* ranges(int layer, int expert) const;
  uint64_t expert_bytes(int layer, int expert) const;
  uint64_t max_expert_bytes() const { return max_bytes_; }
  // Bytes of the buffer read_range needs for all three ranges of any one expert (aligned spans in
  // Direct mode, the plain sizes otherwise).
  uint64_t staging_bytes() const;

  // A cache with slots of this many bytes now reads from the store: set_expert refuses any larger
  // expert from here on (the loader would write past the slot).
  void limit_expert_bytes(uint64_t slot_bytes);

  // Copies the expert's three slices to dst (expert_bytes long). Thread-safe; no GIL needed.
  // Direct mode bounces through an aligned buffer of its own.
  void read_expert(int layer, int expert, uint8_t* dst) const;
  // The bytes of r: read into buf (cap bytes; 4096-aligned for O_DIRECT, else buffered reads
  // are used) and a pointer to them inside buf is returned. Mmap mode returns the mapping itself
  // unless must_copy. Thread-safe.
  const uint8_t* read_range(const ByteRange& r, uint8_t* buf, uint64_t cap, bool must_copy) const;
  // Asks the kernel to start reading the expert's pages (MADV_WILLNEED / POSIX_FADV_WILLNEED);
  // nothing in Direct mode, whose reads bypass the page cache.
  void advise_willneed(int layer, int expert) const;
  // Pointer into the mapping: what a CPU kernel reads for an uncached expert.
  const uint8_t* mapped(const ByteRange& r) const;

  // Bytes of the 4096-aligned blocks that cover r (what an O_DIRECT read of r transfers).
  static uint64_t aligned_span(const ByteRange& r);

  void inject_fault(Fault kind, int64_t skip, int64_t count);
  // Reads issued (each pread call, faults included) and bytes read from the files.
  uint64_t reads() const { return reads_.load(); }
  uint64_t bytes_read() const { return bytes_read_.load(); }

 private:
  struct Part {
    std::string path;
    int fd = -1;
    int dfd = -1;  // O_DIRECT descriptor, -1 when refused
    uint64_t size = 0;
    uint8_t* map = nullptr;
  };
  size_t index(int layer, int expert) const;
  void close_all();
  ssize_t sys_pread(int fd, uint8_t* dst, uint64_t n, uint64_t off, bool direct) const;
  void pread_all(const Part& p, int fd, uint8_t* dst, uint64_t n, uint64_t off) const;
  void read_direct(int part, const ByteRange& r, uint8_t* buf) const;

  std::vector<Part> parts_;
  std::unique_ptr<std::atomic<bool>[]> direct_ok_;  // per part
  int n_layers_, n_experts_;
  ReadMode mode_;
  std::vector<ByteRange> ranges_;  // [layer][expert][3]
  uint64_t max_bytes_ = 0;
  uint64_t max_span_ = 0;
  std::atomic<uint64_t> limit_{0};  // 0: no cache yet

  std::atomic<int> fault_kind_{0};
  mutable std::atomic<int64_t> fault_skip_{0}, fault_left_{0};
  mutable std::atomic<uint64_t> reads_{0}, bytes_read_{0};
};

}  // namespace kr
