// SlotPool: a fixed number of equal-size slots, each holding one expert's gate|up|down bytes.
// The cache only talks to this interface, so a CUDA VRAM pool (async copies from pinned staging,
// one event per copy) can replace the host tier without touching the cache logic.
#pragma once
#include <cstddef>
#include <cstdint>

namespace kr {

class SlotPool {
 public:
  virtual ~SlotPool() = default;
  virtual size_t slot_bytes() const = 0;
  virtual int n_slots() const = 0;
  // Address of a slot's first byte (host pointer or device pointer, see host_accessible()).
  virtual uintptr_t address(int slot) const = 0;
  // True when a loader may write a slot with a plain memcpy / pread (host memory).
  virtual bool host_accessible() const = 0;
  // True when loads must go through host staging buffers (device pools; or a host pool asked to
  // exercise that path). The loader then double-buffers: read into one buffer while the other's
  // copy into its slot is still running.
  virtual bool wants_staging() const = 0;
  // Starts copying n host bytes from src into slot at offset; returns a ticket for wait_copy.
  // src must stay untouched until wait_copy(ticket) returns.
  virtual uint64_t begin_copy(int slot, size_t offset, const void* src, size_t n) = 0;
  virtual void wait_copy(uint64_t ticket) = 0;
  // Staging buffers come from the pool because a device tier needs page-locked host memory.
  // They should be 4096-byte aligned: O_DIRECT reads land in them (an unaligned buffer still
  // works, through buffered reads). The cache keeps a ring of max(4, 2 x readers) of them.
  virtual void* alloc_staging(size_t n) = 0;
  virtual void free_staging(void* p) = 0;
};

// Host RAM tier: one page-aligned allocation (slots 64-byte aligned), pre-touched so no first-use page faults land in
// the middle of a load measurement or a decode step.
class HostSlotPool : public SlotPool {
 public:
  HostSlotPool(size_t slot_bytes, int n_slots, bool staging = false);
  ~HostSlotPool() override;
  HostSlotPool(const HostSlotPool&) = delete;
  HostSlotPool& operator=(const HostSlotPool&) = delete;

  size_t slot_bytes() const override { return slot_bytes_; }
  int n_slots() const override { return n_slots_; }
  uintptr_t address(int slot) const override;
  bool host_accessible() const override { return true; }
  bool wants_staging() const override { return staging_; }
  uint64_t begin_copy(int slot, size_t offset, const void* src, size_t n) override;
  void wait_copy(uint64_t) override {}  // host copies complete inside begin_copy
  void* alloc_staging(size_t n) override;
  void free_staging(void* p) override;

 private:
  size_t slot_bytes_;   // requested size
  size_t stride_;       // slot_bytes_ rounded up to 64 so every slot starts aligned
  size_t total_ = 0;
  int n_slots_;
  bool staging_;
  uint8_t* base_ = nullptr;
};

}  // namespace kr
