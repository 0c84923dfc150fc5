// ExpertStore: where each (layer, expert)'s gate/up/down bytes live in the mmapped GGUF part(s), and
// how to copy them out (memcpy from the mapping, or pread for files larger than RAM).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kr {

// One tensor slice inside one part file; nbytes == 0 marks "absent" (dense layers have no experts).
struct ByteRange {
  int32_t part = -1;
  uint64_t offset = 0;
  uint64_t nbytes = 0;
};

enum class ReadMode { Mmap, Pread };

class ExpertStore {
 public:
  // Opens and maps every part read-only (MAP_SHARED); ranges are added with set_expert.
  ExpertStore(const std::vector<std::string>& paths, int n_layers, int n_experts,
              ReadMode mode = ReadMode::Mmap);
  ~ExpertStore();
  ExpertStore(const ExpertStore&) = delete;
  ExpertStore& operator=(const ExpertStore&) = delete;

  // Validates each range against its part's size before recording it; all three must be present.
  void set_expert(int layer, int expert, const ByteRange& gate, const ByteRange& up,
                  const ByteRange& down);

  int n_layers() const { return n_layers_; }
  int n_experts() const { return n_experts_; }
  int n_parts() const { return (int)parts_.size(); }
  uint64_t part_size(int part) const;
  ReadMode mode() const { return mode_; }

  bool has(int layer, int expert) const;
  // Gate, up, down; a slot holds them back to back in this order.
  const ByteRange* ranges(int layer, int expert) const;
  uint64_t expert_bytes(int layer, int expert) const;
  uint64_t max_expert_bytes() const { return max_bytes_; }

  // Copies the expert's three slices to dst (expert_bytes long). Thread-safe; no GIL needed.
  void read_expert(int layer, int expert, uint8_t* dst) const;
  // Asks the kernel to start reading the expert's pages (MADV_WILLNEED / POSIX_FADV_WILLNEED).
  void advise_willneed(int layer, int expert) const;
  // Pointer into the mapping (Mmap mode only): what a CPU kernel reads for an uncached expert.
  const uint8_t* mapped(const ByteRange& r) const;

 private:
  struct Part {
    std::string path;
    int fd = -1;
    uint64_t size = 0;
    uint8_t* map = nullptr;
  };
  size_t index(int layer, int expert) const;

  std::vector<Part> parts_;
  int n_layers_, n_experts_;
  ReadMode mode_;
  std::vector<ByteRange> ranges_;  // [layer][expert][3]
  uint64_t max_bytes_ = 0;
};

}  // namespace kr
