// Stress test of the DevicePool protocol on the emulated device: compute threads, each with its
// own stream, acquire random experts (with next-layer prefetches), "compute" on their stream by
// checking the slot bytes against the store before and after a random delay, and release. A
// compute that starts before its load finished, or a load that overwrites a slot while a compute
// still reads it, shows as a byte mismatch.
#pragma once
#include <cstdint>
#include <memory>

#include "cache/store.h"

namespace kr::devpool {

struct StressConfig {
  int n_slots = 8, n_staging = 4, n_readers = 2, n_threads = 2, iters = 200, k = 3;
  uint32_t seed = 1;
  int max_delay_us = 100;
  bool skip_ready_wait = false, skip_last_use_wait = false;  // fault injection
};

struct StressResult {
  uint64_t computes = 0;
  uint64_t early_reads = 0;  // compute saw bytes that were not the expert's (load not complete)
  uint64_t torn_reads = 0;   // bytes changed while the compute held the slot (overwritten)
  uint64_t loads = 0, hits = 0, misses = 0, evictions = 0, prefetches = 0, host_waits = 0;
  int max_pinned = 0;
  bool capacity_ok = true;   // pinned slots never exceeded capacity; residents unique
  int bound_threads = 0;     // threads the pool bound to the device (readers)
};

StressResult run_stress(std::shared_ptr<ExpertStore> store, const StressConfig& cfg);

}  // namespace kr::devpool
