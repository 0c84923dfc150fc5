// DevicePool protocol; see pool.h.
#include "devpool/pool.h"

#include <chrono>
#include <stdexcept>
#include <string>

#include "common.h"

namespace kr::devpool {

DevicePool::DevicePool(std::shared_ptr<Device> dev, std::shared_ptr<ExpertStore> store, size_t slot_bytes,
                       int n_slots, int n_staging, int n_readers)
    : dev_(std::move(dev)), store_(std::move(store)), slot_bytes_(slot_bytes), n_slots_(n_slots) {
  KR_CHECK(dev_ && store_, "device and store are required");
  KR_CHECK(n_slots > 0 && slot_bytes > 0, "need at least one slot of non-zero size");
  KR_CHECK(n_staging >= 4, "the staging ring needs at least 4 buffers");
  KR_CHECK(n_readers >= 1 && n_readers <= n_staging, "readers must be in [1, n_staging]");
  KR_CHECK(store_->max_expert_bytes() <= slot_bytes, "a slot of " + std::to_string(slot_bytes) +
                                                         " bytes cannot hold the largest expert (" +
                                                         std::to_string(store_->max_expert_bytes()) + ")");
  const size_t stride = (slot_bytes + 255) & ~(size_t)255;
  KR_CHECK((size_t)n_slots <= SIZE_MAX / stride, "arena too large");
  slot_bytes_ = stride;
  arena_ = dev_->alloc_device(stride * (size_t)n_slots);
  KR_CHECK(arena_ != nullptr, "device arena allocation failed");
  copy_stream_ = dev_->new_stream();
  slots_.resize((size_t)n_slots);
  for (auto& s : slots_) s.ready = dev_->new_event();
  slot_of_.assign((size_t)store_->n_layers() * store_->n_experts(), -1);
  staging_.resize((size_t)n_staging);
  for (int i = 0; i < n_staging; ++i) {
    staging_[i].buf = dev_->alloc_pinned(store_->max_expert_bytes() ? store_->max_expert_bytes() : 1);
    KR_CHECK(staging_[i].buf != nullptr, "pinned staging allocation failed");
    staging_[i].free_event = dev_->new_event();
    free_staging_.push_back(i);
  }
  for (int i = 0; i < n_readers; ++i) readers_.emplace_back([this] { reader_main(); });
  // Every reader has bound the device before the pool is used, so no load runs on an unbound thread
  // however late the scheduler starts one.
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return bound_readers_ == (int)readers_.size(); });
}

DevicePool::~DevicePool() {
  {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return jobs_.empty() && reading_ == 0; });
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : readers_) t.join();
  dev_->sync_stream(copy_stream_);
  for (auto& s : staging_) dev_->free_pinned(s.buf);
  dev_->free_device(arena_);
}

uint8_t* DevicePool::address(int slot) const {
  KR_CHECK(slot >= 0 && slot < n_slots_, "slot out of range");
  return arena_ + (size_t)slot * slot_bytes_;
}

void DevicePool::check(int layer, const std::vector<int>& ids) const {
  KR_CHECK(layer >= 0 && layer < store_->n_layers(), "layer out of range");
  for (int e : ids) {
    KR_CHECK(e >= 0 && e < store_->n_experts(), "expert id out of range");
    KR_CHECK(store_->has(layer, e), "expert " + std::to_string(e) + " of layer " + std::to_string(layer) +
                                        " is not in the store");
  }
}

int DevicePool::take_victim() {
  int best = -1;
  for (int i = 0; i < n_slots_; ++i) {
    const Slot& s = slots_[(size_t)i];
    if (s.state == State::Empty) return i;
    if (s.state == State::Issued && s.pins == 0 && (best < 0 || s.lru < slots_[(size_t)best].lru)) best = i;
  }
  return best;
}

void DevicePool::start_load(int slot, int layer, int expert) {
  Slot& s = slots_[(size_t)slot];
  if (s.state != State::Empty) {
    slot_of_[key(s.layer, s.expert)] = -1;
    ++stats_.evictions;
  }
  s.layer = layer;
  s.expert = expert;
  s.state = State::Reading;
  s.lru = ++tick_;
  slot_of_[key(layer, expert)] = slot;
  ++reading_;
  jobs_.push_back(Job{slot, layer, expert});
  cv_.notify_all();
}

std::vector<int> DevicePool::acquire(int layer, const std::vector<int>& ids, int compute_stream) {
  check(layer, ids);
  std::vector<int> out(ids.size(), -1);
  std::unique_lock<std::mutex> lk(mu_);
  {
    std::vector<int> distinct;
    for (int e : ids) {
      bool seen = false;
      for (int d : distinct) seen |= d == e;
      if (!seen) distinct.push_back(e);
    }
    KR_CHECK((int)distinct.size() <= n_slots_, "acquire of " + std::to_string(distinct.size()) +
                                                   " distinct experts exceeds the pool's " +
                                                   std::to_string(n_slots_) + " slots");
  }
  // Pin residents first so that loading the misses cannot evict them.
  for (size_t i = 0; i < ids.size(); ++i) {
    const int s = slot_of_[key(layer, ids[i])];
    if (s >= 0) {
      ++slots_[(size_t)s].pins;
      slots_[(size_t)s].lru = ++tick_;
      ++stats_.hits;
      out[i] = s;
    }
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    if (out[i] >= 0) continue;
    // Re-check residency after every wait: another caller may have loaded this expert meanwhile
    // (loading it twice would leave two slots claiming one key).
    const auto t0 = std::chrono::steady_clock::now();
    bool waited = false;
    int s;
    for (;;) {
      s = slot_of_[key(layer, ids[i])];  // also an earlier occurrence in this call
      if (s >= 0) {
        ++stats_.hits;
        break;
      }
      s = take_victim();
      if (s >= 0) {
        start_load(s, layer, ids[i]);
        ++stats_.misses;
        break;
      }
      waited = true;  // every slot pinned or being read: wait for releases / readers
      cv_.wait(lk);
    }
    if (waited) {
      ++stats_.host_waits;
      stats_.host_wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    ++slots_[(size_t)s].pins;
    out[i] = s;
  }
  // The compute stream may only wait on a ready event that has been recorded: block (host) only
  // for slots whose bytes are still being read from the store.
  for (size_t i = 0; i < out.size(); ++i) {
    const int s = out[i];
    const uint64_t gen = slots_[(size_t)s].gen;
    if (slots_[(size_t)s].state == State::Reading) {
      const auto t0 = std::chrono::steady_clock::now();
      cv_.wait(lk, [&] { return slots_[(size_t)s].state != State::Reading || slots_[(size_t)s].gen != gen; });
      ++stats_.host_waits;
      stats_.host_wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    if (slots_[(size_t)s].state != State::Issued || slots_[(size_t)s].gen != gen) {  // the load failed
      for (int t : out) --slots_[(size_t)t].pins;
      cv_.notify_all();
      throw std::runtime_error("loading expert " + std::to_string(ids[i]) + " of layer " + std::to_string(layer) +
                               " failed: " + last_error_);
    }
    if (!skip_ready_) dev_->wait_event(compute_stream, slots_[(size_t)s].ready);
  }
  return out;
}

void DevicePool::release(int layer, const std::vector<int>& ids, int compute_stream) {
  check(layer, ids);
  std::lock_guard<std::mutex> lk(mu_);
  for (int e : ids) {
    const int s = slot_of_[key(layer, e)];
    KR_CHECK(s >= 0 && slots_[(size_t)s].pins > 0, "release of an expert that is not acquired");
    Slot& sl = slots_[(size_t)s];
    auto it = sl.last_use.find(compute_stream);
    if (it == sl.last_use.end()) it = sl.last_use.emplace(compute_stream, dev_->new_event()).first;
    dev_->record(it->second, compute_stream);  // before unpinning: an eviction copy waits on it
    --sl.pins;
  }
  cv_.notify_all();
}

int DevicePool::prefetch(int layer, const std::vector<int>& ids) {
  check(layer, ids);
  std::lock_guard<std::mutex> lk(mu_);
  int queued = 0;
  for (int e : ids) {
    if (slot_of_[key(layer, e)] >= 0) continue;
    const int s = take_victim();
    if (s < 0) {
      ++stats_.prefetch_dropped;
      continue;
    }
    start_load(s, layer, e);
    ++stats_.prefetches;
    ++queued;
  }
  return queued;
}

void DevicePool::reader_main() {
  dev_->bind_thread();
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++bound_readers_;
  }
  cv_.notify_all();
  for (;;) {
    Job job;
    int b;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || (!jobs_.empty() && !free_staging_.empty()); });
      if (jobs_.empty()) return;  // stop_ with nothing left
      job = jobs_.front();
      jobs_.pop_front();
      b = free_staging_.back();
      free_staging_.pop_back();
    }
    Staging& st = staging_[(size_t)b];
    const uint64_t n = store_->expert_bytes(job.layer, job.expert);
    uint8_t* dst = arena_ + (size_t)job.slot * slot_bytes_;
    try {
      dev_->sync_event(st.free_event);  // the copy that last read this buffer has finished
      store_->read_expert(job.layer, job.expert, st.buf);  // page faults here stall only this reader
      std::lock_guard<std::mutex> ik(issue_mu_);
      std::lock_guard<std::mutex> lk(mu_);
      Slot& s = slots_[(size_t)job.slot];
      if (!skip_last_use_)
        for (auto& kv : s.last_use) dev_->wait_event(copy_stream_, kv.second);
      dev_->copy_h2d(dst, st.buf, (size_t)n, copy_stream_);
      dev_->record(s.ready, copy_stream_);
      dev_->record(st.free_event, copy_stream_);
      s.state = State::Issued;
      --reading_;
      ++stats_.loads;
      stats_.bytes_loaded += n;
      free_staging_.push_back(b);
    } catch (const std::exception& ex) {  // the slot goes back empty; acquirers see the error
      std::lock_guard<std::mutex> lk(mu_);
      Slot& s = slots_[(size_t)job.slot];
      slot_of_[key(s.layer, s.expert)] = -1;
      s.state = State::Empty;
      s.layer = s.expert = -1;
      ++s.gen;
      --reading_;
      last_error_ = ex.what();
      free_staging_.push_back(b);
    }
    cv_.notify_all();
  }
}

void DevicePool::wait_idle() {
  {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return jobs_.empty() && reading_ == 0; });
  }
  dev_->sync_stream(copy_stream_);
}

int DevicePool::pinned_slots() const {
  std::lock_guard<std::mutex> lk(mu_);
  int n = 0;
  for (const auto& s : slots_) n += s.pins > 0;
  return n;
}

bool DevicePool::contains(int layer, int expert) const { return slot_of(layer, expert) >= 0; }

int DevicePool::slot_of(int layer, int expert) const {
  KR_CHECK(layer >= 0 && layer < store_->n_layers() && expert >= 0 && expert < store_->n_experts(),
           "layer/expert out of range");
  std::lock_guard<std::mutex> lk(mu_);
  return slot_of_[key(layer, expert)];
}

PoolStats DevicePool::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

std::vector<std::tuple<int, int, int, int>> DevicePool::resident() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<std::tuple<int, int, int, int>> r;
  for (int i = 0; i < n_slots_; ++i)
    if (slots_[(size_t)i].state != State::Empty)
      r.emplace_back(slots_[(size_t)i].layer, slots_[(size_t)i].expert, i, slots_[(size_t)i].pins);
  return r;
}

void DevicePool::set_fault(bool skip_ready_wait, bool skip_last_use_wait) {
  std::lock_guard<std::mutex> lk(mu_);
  skip_ready_ = skip_ready_wait;
  skip_last_use_ = skip_last_use_wait;
}

}  // namespace kr::devpool
