// ExpertCache: (layer, expert) -> slot over an ExpertStore and a SlotPool, with LRU (or LFU)
// eviction, pin counts, a pool of reader threads and per-layer statistics. All public calls are
// thread-safe; callers never hold the lock while bytes move.
//
// Tiers chain: a cache may load from an upstream cache instead of the store (disk -> RAM slots ->
// VRAM slots), each tier the same class with the same policy and statistics. A load pins the
// expert upstream (waiting for its read there) for as long as the copy runs.
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
  uint64_t prefetch_cancelled = 0;  // queued prefetches dropped by acquire_nowait(cancel_stale)
  uint64_t loads = 0;          // loads finished (demand + prefetch)
  uint64_t bytes_loaded = 0;
  uint64_t evictions = 0;      // residents of this layer pushed out
  double stall_seconds = 0;    // time acquire spent waiting for loads
  double read_seconds = 0;     // reader-thread time spent loading (read + copy), summed over readers
  uint64_t read_errors = 0;    // loads that failed (the slot was freed, the acquire raised)
  void add(const CacheStats& o);
};

class ExpertCache {
 public:
  // n_readers threads load in parallel (several reads in flight: what a disk needs to reach its
  // bandwidth). A pool that wants staging gets a ring of max(4, 2 x n_readers) staging buffers and
  // a completion thread that marks each copy ready the moment it finishes.
  ExpertCache(std::shared_ptr<ExpertStore> store, std::shared_ptr<SlotPool> pool,
              EvictPolicy policy = EvictPolicy::LRU, double acquire_timeout_s = 30.0,
              int n_readers = 1, std::shared_ptr<ExpertCache> upstream = nullptr);
  ~ExpertCache();  // finishes queued loads, then stops the readers
  ExpertCache(const ExpertCache&) = delete;
  ExpertCache& operator=(const ExpertCache&) = delete;

  // Pins every listed expert (once per occurrence) and returns its slot, loading misses first.
  // Blocks only on loads; waits for other callers to release slots up to the timeout, then
  // raises. More distinct experts than slots is an immediate error.
  std::vector<int> acquire(int layer, const std::vector<int>& ids);
  // acquire in two halves, so a caller can queue more work (the next layer's prefetch) between
  // them: the first pins and queues the misses, the second waits for the loads of those slots.
  // A failed load unpins every slot of the call and raises, as acquire does. cancel_stale: drop the
  // prefetches of this layer for other experts that no reader has started (wrong guesses).
  std::vector<int> acquire_nowait(int layer, const std::vector<int>& ids, bool cancel_stale = false);
  void wait_loaded(int layer, const std::vector<int>& slots);
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
  const ExpertCache* upstream() const { return upstream_.get(); }
  int n_readers() const { return (int)readers_.size(); }

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
  struct Copy {  // a staged load whose copy into the slot may still run
    Job job{};
    std::vector<uint64_t> tickets;
    uint8_t* buf = nullptr;
    std::chrono::steady_clock::time_point t0;
  };

  size_t key(int layer, int expert) const { return (size_t)layer * store_->n_experts() + expert; }
  void check_ids(int layer, const std::vector<int>& ids) const;
  void make_evictable(int s);
  void make_unevictable(int s);
  int take_slot();  // a free slot, else evict the first evictable; caller checked availability
  void free_slot(int s);
  void unpin(int s);
  void complete(const Job& job, bool ok, const std::string& err, double seconds);
  void reader_main(int id);
  void load(const Job& job, int id);
  // Reads the expert's three ranges into buf and starts their copies into the slot.
  std::vector<uint64_t> fill(const Job& job, uint8_t* buf, uint64_t cap);
  uint8_t* take_staging();
  void give_staging(uint8_t* b);
  void completer_main();
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
  std::shared_ptr<ExpertCache> upstream_;
  bool staged_ = false;
  uint64_t buf_bytes_ = 0;               // size of every staging / bounce buffer
  std::vector<uint8_t*> staging_;        // the ring, from the pool (page-locked on a device tier)
  std::vector<uint8_t*> staging_free_;   // mu_
  std::vector<uint8_t*> bounce_;         // per reader, for O_DIRECT into host slots
  std::condition_variable staging_cv_;   // a staging buffer came back
  std::deque<Copy> copies_;              // mu_; in issue order
  std::condition_variable copy_cv_;
  bool readers_done_ = false;
  std::vector<std::thread> readers_;
  std::thread completer_;
};

}  // namespace kr
