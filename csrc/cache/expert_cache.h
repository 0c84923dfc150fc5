// ExpertCache: (layer, expert) -> slot over an ExpertStore and a SlotPool, with LRU (or LFU)
// eviction, pin counts, one loader thread and per-layer statistics. All public calls are
// thread-safe; callers never hold the lock while bytes move.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "cache/slots.h"
#include "cache/store.h"

namespace kr {

// LFU counts every demand access an expert ever had (counts survive eviction, no aging), ties
// broken by recency; cheap here because the key space is only n_layers x n_experts.
enum class EvictPolicy { LRU, LFU };

struct CacheStats {
  uint64_t hits = 0;           // distinct experts of an acquire already resident (or loading)
  uint64_t misses = 0;         // distinct experts an acquire had to load
  uint64_t prefetch_hits = 0;  // hits on slots a prefetch loaded and no acquire had used yet
  uint64_t prefetches = 0;     // loads started by prefetch
  uint64_t prefetch_dropped = 0;  // prefetches skipped: every slot pinned or loading
  uint64_t loads = 0;          // loads finished (demand + prefetch)
  uint64_t bytes_loaded = 0;
  uint64_t evictions = 0;      // residents of this layer pushed out
  double stall_seconds = 0;    // time acquire spent waiting for loads
  void add(const CacheStats& o);
};

class ExpertCache {
 public:
  ExpertCache(std::shared_ptr<ExpertStore> store, std::shared_ptr<SlotPool> pool,
              EvictPolicy policy = EvictPolicy::LRU, double acquire_timeout_s = 30.0);
  ~ExpertCache();  // finishes queued loads, then stops the loader
  ExpertCache(const ExpertCache&) = delete;
  ExpertCache& operator=(const ExpertCache&) = delete;

  // Pins every listed expert (once per occurrence) and returns its slot, loading misses first.
  // Blocks only on loads; waits for other callers to release slots up to the timeout, then
  // raises. More distinct experts than slots is an immediate error.
  std::vector<int> acquire(int layer, const std::vector<int>& ids);
  // Undoes acquire (same ids, same multiplicity); slots whose pin count drops to 0 become evictable.
  void release(int layer, const std::vector<int>& ids);
  // Queues loads of non-resident experts and returns at once; never evicts pinned or loading
  // slots (a prefetch with no evictable slot is dropped). Returns the number of loads queued.
  int prefetch(int layer, const std::vector<int>& ids);
  // Blocks until no load is queued or in flight (tests and benchmarks).
  void wait_idle();

  bool contains(int layer, int expert) const;  // resident and loaded
  CacheStats stats(int layer) const;
  CacheStats total_stats() const;
  void reset_stats();
  int capacity() const { return (int)slots_.size(); }
  int pinned_slots() const;  // slots with pins > 0
  // (layer, expert, slot, pins) of each loaded slot.
  std::vector<std::tuple<int, int, int, int>> resident() const;
  const ExpertStore& store() const { return *store_; }
  const SlotPool& pool() const { return *pool_; }

 private:
  enum class State { Empty, Loading, Ready, Failed };
  struct Slot {
    int layer = -1, expert = -1;
    State state = State::Empty;
    int pins = 0;
    bool prefetched = false;  // loaded by prefetch, not yet acquired
    bool evictable = false;   // present in evictable_
    std::tuple<uint64_t, uint64_t, int> ekey;
    std::string error;
  };
  struct Job {
    int slot, layer, expert;
  };
  struct Pending {
    bool active = false;
    uint64_t ticket = 0;
    Job job{};
  };

  size_t key(int layer, int expert) const { return (size_t)layer * store_->n_experts() + expert; }
  void check_ids(int layer, const std::vector<int>& ids) const;
  void make_evictable(int s);
  void make_unevictable(int s);
  int take_slot();  // a free slot, else evict the first evictable; caller checked availability
  void free_slot(int s);
  void unpin(int s);
  void complete(const Job& job, bool ok, const std::string& err);
  void finish_pending(Pending& p);
  void loader_main();
  int count_pinned() const;  // mu_ held

  std::shared_ptr<ExpertStore> store_;
  std::shared_ptr<SlotPool> pool_;
  EvictPolicy policy_;
  std::chrono::duration<double> timeout_;

  mutable std::mutex mu_;
  std::condition_variable state_cv_;  // slot finished loading, or pins dropped
  std::condition_variable work_cv_;   // loader has work or must stop
  std::vector<Slot> slots_;
  std::vector<int> slot_of_;      // key -> slot or -1
  std::vector<uint32_t> freq_;    // key -> demand accesses (LFU)
  std::vector<int> free_;
  std::set<std::tuple<uint64_t, uint64_t, int>> evictable_;  // ordered victim-first
  std::deque<Job> queue_;
  int loading_ = 0;
  uint64_t tick_ = 0;
  bool stop_ = false;
  std::vector<CacheStats> stats_;  // per layer
  uint8_t* staging_[2] = {nullptr, nullptr};  // from the pool, when it wants staging
  std::thread loader_;
};

}  // namespace kr
