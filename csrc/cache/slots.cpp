// Host RAM slot pool: the CPU-only tier of the expert cache.
#include "cache/slots.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "common.h"

namespace kr {

HostSlotPool::HostSlotPool(size_t slot_bytes, int n_slots, bool staging)
    : slot_bytes_(slot_bytes), n_slots_(n_slots), staging_(staging) {
  KR_CHECK(slot_bytes > 0, "HostSlotPool: slot_bytes must be positive");
  KR_CHECK(n_slots > 0, "HostSlotPool: n_slots must be positive");
  stride_ = (slot_bytes + 63) / 64 * 64;
  KR_CHECK(stride_ <= (size_t)-1 / (size_t)n_slots, "HostSlotPool: size overflows");
  total_ = stride_ * (size_t)n_slots;
  // Anonymous mmap (page aligned) with a transparent-huge-page hint: fewer TLB misses while the
  // loader streams megabytes into a slot and while kernels read it.
  void* m = ::mmap(nullptr, total_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) throw std::bad_alloc();
  (void)::madvise(m, total_, MADV_HUGEPAGE);  // a hint: without THP the pool still works
  base_ = static_cast<uint8_t*>(m);
  std::memset(base_, 0, total_);
}

HostSlotPool::~HostSlotPool() { ::munmap(base_, total_); }

uintptr_t HostSlotPool::address(int slot) const {
  KR_CHECK(slot >= 0 && slot < n_slots_, "HostSlotPool: slot " + std::to_string(slot) +
                                             " out of range [0, " + std::to_string(n_slots_) + ")");
  return reinterpret_cast<uintptr_t>(base_ + (size_t)slot * stride_);
}

uint64_t HostSlotPool::begin_copy(int slot, size_t offset, const void* src, size_t n) {
  KR_CHECK(offset <= slot_bytes_ && n <= slot_bytes_ - offset, "HostSlotPool: copy exceeds slot");
  std::memcpy(reinterpret_cast<void*>(address(slot) + offset), src, n);
  return 0;
}

// Page aligned, so O_DIRECT reads can land in a staging buffer.
void* HostSlotPool::alloc_staging(size_t n) {
  void* p = std::aligned_alloc(4096, (n + 4095) / 4096 * 4096);
  if (!p) throw std::bad_alloc();
  return p;
}

void HostSlotPool::free_staging(void* p) { std::free(p); }

}  // namespace kr
