// DevicePool: the expert cache's device tier. One arena of equal slots in device memory, a ring of
// pinned staging buffers, a copy stream and several reader threads. The protocol:
//   - a load: a reader takes a staging buffer (after the copy that last used it finished: its
//     `free` event), reads the expert from the store into it, then on the copy stream waits for
//     the slot's last-use events, copies staging -> slot, records the slot's `ready` event and
//     the buffer's `free` event. The ready event is recorded the moment the copy is issued, so a
//     finished copy is never held back by the next job.
//   - acquire (compute thread): pins the slots and makes the compute stream wait on each slot's
//     ready event; the host does not wait for copies. Only a slot whose bytes are still being
//     read from the store (not yet issued to the copy stream) blocks the host, until issue.
//   - release: records the slot's last-use event on the compute stream (one per stream that used
//     the slot), then unpins; an evicted slot's next copy waits on those events on the device.
// Slots that are pinned or being read are never evicted; eviction is LRU over the rest.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "cache/store.h"
#include "devpool/device.h"

namespace kr::devpool {

struct PoolStats {
  uint64_t hits = 0, misses = 0, prefetches = 0, prefetch_dropped = 0, loads = 0, evictions = 0;
  uint64_t bytes_loaded = 0;
  uint64_t host_waits = 0;     // acquires that blocked until a load was issued
  double host_wait_seconds = 0;
};

class DevicePool {
 public:
  DevicePool(std::shared_ptr<Device> dev, std::shared_ptr<ExpertStore> store, size_t slot_bytes, int n_slots,
             int n_staging = 4, int n_readers = 2);
  ~DevicePool();  // finishes queued loads, stops readers, frees memory
  DevicePool(const DevicePool&) = delete;
  DevicePool& operator=(const DevicePool&) = delete;

  // Pins each listed expert once per occurrence, loading misses, and orders the compute stream
  // after each slot's load. Returns the slots. More distinct experts than slots: ArgError.
  std::vector<int> acquire(int layer, const std::vector<int>& ids, int compute_stream);
  // Records last use on compute_stream and unpins (same ids and multiplicity as acquire).
  void release(int layer, const std::vector<int>& ids, int compute_stream);
  // Queues loads of non-resident experts into unpinned slots; returns how many were queued.
  int prefetch(int layer, const std::vector<int>& ids);
  void wait_idle();  // all queued loads issued and their copies complete (tests, benchmarks)

  uint8_t* address(int slot) const;
  size_t slot_bytes() const { return slot_bytes_; }
  int capacity() const { return n_slots_; }
  int n_staging() const { return (int)staging_.size(); }
  int n_readers() const { return (int)readers_.size(); }
  int pinned_slots() const;
  bool contains(int layer, int expert) const;
  int slot_of(int layer, int expert) const;  // -1 when not resident
  PoolStats stats() const;
  // (layer, expert, slot, pins) of each resident slot.
  std::vector<std::tuple<int, int, int, int>> resident() const;
  // Test hooks: skip the compute stream's wait on ready events / the copy stream's wait on last
  // use, to show the stress test catches a broken protocol.
  void set_fault(bool skip_ready_wait, bool skip_last_use_wait);

 private:
  enum class State { Empty, Reading, Issued };
  struct Slot {
    int layer = -1, expert = -1;
    State state = State::Empty;
    int pins = 0;
    uint64_t lru = 0;
    uint64_t gen = 0;                      // bumped when a load into the slot fails
    int ready = -1;                        // event recorded after the copy into the slot
    std::map<int, int> last_use;           // compute stream -> event recorded at release
  };
  struct Job {
    int slot, layer, expert;
  };
  size_t key(int layer, int expert) const { return (size_t)layer * store_->n_experts() + expert; }
  void check(int layer, const std::vector<int>& ids) const;
  int take_victim();  // mu_ held; -1 when every slot is pinned or reading
  void start_load(int slot, int layer, int expert);  // mu_ held
  void reader_main();

  std::shared_ptr<Device> dev_;
  std::shared_ptr<ExpertStore> store_;
  size_t slot_bytes_;
  int n_slots_;
  uint8_t* arena_ = nullptr;
  int copy_stream_ = -1;

  mutable std::mutex mu_;
  std::condition_variable cv_;  // jobs queued, a load issued, a staging buffer freed, stop
  std::vector<Slot> slots_;
  std::vector<int> slot_of_;
  std::deque<Job> jobs_;
  int reading_ = 0;
  uint64_t tick_ = 0;
  bool stop_ = false;
  bool skip_ready_ = false, skip_last_use_ = false;
  PoolStats stats_;
  std::string last_error_;

  struct Staging {
    uint8_t* buf = nullptr;
    int free_event = -1;
  };
  std::vector<Staging> staging_;
  std::vector<int> free_staging_;
  std::mutex issue_mu_;  // orders copy-stream work of concurrent readers
  std::vector<std::thread> readers_;
  int bound_readers_ = 0;  // readers that have bound the device (guarded by mu_)
};

}  // namespace kr::devpool
