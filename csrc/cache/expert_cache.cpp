// ExpertCache: slot bookkeeping under one mutex, byte movement on reader threads outside it.
// Invariants: a slot is in exactly one of free_, evictable_ (Ready and unpinned), or "busy"
// (pinned or Loading); slot_of_ maps a key to its slot while the slot is not free.
#include "cache/expert_cache.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <unordered_map>

#include "common.h"

namespace kr {

void CacheStats::add(const CacheStats& o) {
  hits += o.hits;
  misses += o.misses;
  prefetch_hits += o.prefetch_hits;
  prefetches += o.prefetches;
  prefetch_dropped += o.prefetch_dropped;
  loads += o.loads;
  bytes_loaded += o.bytes_loaded;
  evictions += o.evictions;
  stall_seconds += o.stall_seconds;
  read_seconds += o.read_seconds;
  read_errors += o.read_errors;
  prefetch_cancelled += o.prefetch_cancelled;
}

ExpertCache::ExpertCache(std::shared_ptr<ExpertStore> store, std::shared_ptr<SlotPool> pool,
                         EvictPolicy policy, double acquire_timeout_s, int n_readers,
                         std::shared_ptr<ExpertCache> upstream)
    : store_(std::move(store)), pool_(std::move(pool)), policy_(policy),
      timeout_(acquire_timeout_s), upstream_(std::move(upstream)) {
  KR_CHECK(store_ && pool_, "ExpertCache needs a store and a pool");
  KR_CHECK(acquire_timeout_s > 0, "ExpertCache: acquire_timeout_s must be positive");
  KR_CHECK(n_readers >= 1 && n_readers <= 64, "ExpertCache: n_readers must be in [1, 64]");
  KR_CHECK(store_->max_expert_bytes() > 0, "ExpertCache: the store has no experts registered");
  KR_CHECK(pool_->slot_bytes() >= store_->max_expert_bytes(),
           "ExpertCache: slots of " + std::to_string(pool_->slot_bytes()) +
               " bytes cannot hold the largest expert (" +
               std::to_string(store_->max_expert_bytes()) + " bytes)");
  KR_CHECK(pool_->host_accessible() || pool_->wants_staging(),
           "ExpertCache: a pool that is not host-accessible must use staging");
  if (upstream_) {
    KR_CHECK(&upstream_->store() == store_.get(),
             "ExpertCache: an upstream tier must read the same store");
    KR_CHECK(upstream_->pool().host_accessible(),
             "ExpertCache: an upstream tier's slots must be host memory");
  }
  store_->limit_expert_bytes(pool_->slot_bytes());
  size_t n_keys = (size_t)store_->n_layers() * store_->n_experts();
  slots_.resize(pool_->n_slots());
  slot_of_.assign(n_keys, -1);
  freq_.assign(n_keys, 0);
  for (int s = (int)slots_.size() - 1; s >= 0; --s) free_.push_back(s);
  stats_.resize(store_->n_layers());
  staged_ = pool_->wants_staging();
  // Room for the aligned spans of O_DIRECT reads (up to one block more at each end of a range).
  buf_bytes_ = std::max(store_->staging_bytes(), store_->max_expert_bytes());
  bool bounce = !staged_ && !upstream_ && store_->mode() == ReadMode::Direct;
  try {
    if (staged_) {
      int n = std::max(4, 2 * n_readers);
      for (int i = 0; i < n; ++i)
        staging_.push_back(static_cast<uint8_t*>(pool_->alloc_staging(buf_bytes_)));
      staging_free_ = staging_;
    }
    if (bounce) {
      for (int i = 0; i < n_readers; ++i) {
        void* b = std::aligned_alloc(ExpertStore::kAlign,
                                     (buf_bytes_ + ExpertStore::kAlign - 1) / ExpertStore::kAlign *
                                         ExpertStore::kAlign);
        if (!b) throw std::bad_alloc();
        bounce_.push_back(static_cast<uint8_t*>(b));
      }
    }
  } catch (...) {
    for (auto* b : staging_) pool_->free_staging(b);
    for (auto* b : bounce_) std::free(b);
    throw;
  }
  for (int i = 0; i < n_readers; ++i) readers_.emplace_back([this, i] { reader_main(i); });
  if (staged_) completer_ = std::thread([this] { completer_main(); });
}

ExpertCache::~ExpertCache() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (auto& t : readers_) t.join();
  {
    std::lock_guard<std::mutex> lk(mu_);
    readers_done_ = true;
  }
  copy_cv_.notify_all();
  if (completer_.joinable()) completer_.join();
  for (auto* b : staging_) pool_->free_staging(b);
  for (auto* b : bounce_) std::free(b);
}

void ExpertCache::check_ids(int layer, const std::vector<int>& ids) const {
  KR_CHECK(layer >= 0 && layer < store_->n_layers(),
           "ExpertCache: layer " + std::to_string(layer) + " out of range");
  for (int e : ids) {
    KR_CHECK(e >= 0 && e < store_->n_experts(),
             "ExpertCache: expert " + std::to_string(e) + " out of range [0, " +
                 std::to_string(store_->n_experts()) + ")");
    KR_CHECK(store_->has(layer, e), "ExpertCache: layer " + std::to_string(layer) + " expert " +
                                        std::to_string(e) + " has no bytes in the store");
  }
}

void ExpertCache::make_evictable(int s) {
  Slot& sl = slots_[s];
  size_t k = key(sl.layer, sl.expert);
  // LRU: oldest tick first. LFU: fewest accesses first, then oldest.
  sl.ekey = policy_ == EvictPolicy::LRU ? std::make_tuple(tick_, (uint64_t)0, s)
                                        : std::make_tuple((uint64_t)freq_[k], tick_, s);
  evictable_.insert(sl.ekey);
  sl.evictable = true;
}

void ExpertCache::make_unevictable(int s) {
  Slot& sl = slots_[s];
  if (!sl.evictable) return;
  evictable_.erase(sl.ekey);
  sl.evictable = false;
}

void ExpertCache::free_slot(int s) {
  Slot& sl = slots_[s];
  make_unevictable(s);
  slot_of_[key(sl.layer, sl.expert)] = -1;
  sl = Slot{};
  free_.push_back(s);
}

int ExpertCache::take_slot() {
  if (free_.empty()) {
    KR_CHECK(!evictable_.empty(), "ExpertCache: internal error: no slot to evict");
    int victim = std::get<2>(*evictable_.begin());
    stats_[slots_[victim].layer].evictions++;
    free_slot(victim);
  }
  int s = free_.back();
  free_.pop_back();
  return s;
}

void ExpertCache::unpin(int s) {
  Slot& sl = slots_[s];
  if (--sl.pins > 0) return;
  if (sl.state == State::Ready)
    make_evictable(s);
  else if (sl.state == State::Failed)
    free_slot(s);
}

std::vector<int> ExpertCache::acquire(int layer, const std::vector<int>& ids) {
  std::vector<int> slots = acquire_nowait(layer, ids, false);
  wait_loaded(layer, slots);
  return slots;
}

std::vector<int> ExpertCache::acquire_nowait(int layer, const std::vector<int>& ids,
                                             bool cancel_stale) {
  check_ids(layer, ids);
  std::vector<int> uniq;
  uniq.reserve(ids.size());
  for (int e : ids)
    if (std::find(uniq.begin(), uniq.end(), e) == uniq.end()) uniq.push_back(e);
  KR_CHECK(uniq.size() <= slots_.size(),
           "ExpertCache.acquire: " + std::to_string(uniq.size()) +
               " distinct experts requested but the cache has only " +
               std::to_string(slots_.size()) + " slots");

  std::unique_lock<std::mutex> lk(mu_);
  if (cancel_stale) {
    // Guesses for this layer that its real routing did not pick and no reader has started: reading
    // them now would only delay this call's misses on a busy disk.
    CacheStats& st = stats_[layer];
    for (auto it = queue_.begin(); it != queue_.end();) {
      Slot& sl = slots_[it->slot];
      if (it->layer == layer && sl.prefetched && sl.pins == 0 &&
          std::find(uniq.begin(), uniq.end(), it->expert) == uniq.end()) {
        loading_--;
        st.prefetch_cancelled++;
        free_slot(it->slot);
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
  }
  auto deadline = std::chrono::steady_clock::now() + timeout_;
  size_t need = 0;
  // Misses must fit in free + evictable slots, not counting evictable slots this call will pin.
  auto fits = [&] {
    size_t own = 0;
    need = 0;
    for (int e : uniq) {
      int s = slot_of_[key(layer, e)];
      if (s < 0)
        need++;
      else
        own += slots_[s].evictable;
    }
    return need <= free_.size() + evictable_.size() - own;
  };
  while (!fits()) {
    // Slots come back when other callers release or when prefetch loads finish.
    if (state_cv_.wait_until(lk, deadline) == std::cv_status::timeout && !fits()) {
      throw std::runtime_error(
          "ExpertCache.acquire: timed out waiting for " + std::to_string(need) +
          " free slots; " + std::to_string(count_pinned()) + " of " +
          std::to_string(slots_.size()) +
          " slots are pinned (release experts you no longer use, or enlarge the cache)");
    }
  }

  CacheStats& st = stats_[layer];
  // Hits are pinned before any eviction so a miss can never evict an expert this call needs.
  std::vector<int> out(ids.size(), -1);
  for (int e : uniq) {
    int s = slot_of_[key(layer, e)];
    if (s < 0) continue;
    Slot& sl = slots_[s];
    st.hits++;
    if (sl.prefetched) {
      st.prefetch_hits++;
      sl.prefetched = false;
    }
    make_unevictable(s);
  }
  for (int e : uniq) {
    if (slot_of_[key(layer, e)] >= 0) continue;
    st.misses++;
    int s = take_slot();
    Slot& sl = slots_[s];
    sl.layer = layer;
    sl.expert = e;
    sl.state = State::Loading;
    slot_of_[key(layer, e)] = s;
    loading_++;
    queue_.push_front(Job{s, layer, e});  // demand loads jump ahead of prefetches
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    size_t k = key(layer, ids[i]);
    out[i] = slot_of_[k];
    slots_[out[i]].pins++;
    freq_[k]++;
  }
  tick_++;
  work_cv_.notify_all();
  if (upstream_) {
    // Start every upstream read now instead of one per reader of this tier.
    std::vector<int> up;
    for (const Job& j : queue_)
      if (j.layer == layer && std::find(uniq.begin(), uniq.end(), j.expert) != uniq.end())
        up.push_back(j.expert);
    lk.unlock();
    if (!up.empty()) upstream_->prefetch(layer, up);
    lk.lock();
  }
  return out;
}

void ExpertCache::wait_loaded(int layer, const std::vector<int>& out) {
  KR_CHECK(layer >= 0 && layer < store_->n_layers(), "ExpertCache.wait_loaded: layer out of range");
  std::unique_lock<std::mutex> lk(mu_);
  for (int s : out)
    KR_CHECK(s >= 0 && s < (int)slots_.size() && slots_[s].pins > 0,
             "ExpertCache.wait_loaded: slot " + std::to_string(s) + " is not pinned");
  CacheStats& st = stats_[layer];
  auto all_loaded = [&] {
    for (int s : out)
      if (slots_[s].state == State::Loading) return false;
    return true;
  };
  if (!all_loaded()) {
    auto t0 = std::chrono::steady_clock::now();
    state_cv_.wait(lk, all_loaded);
    st.stall_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  std::string err;
  for (int s : out)
    if (slots_[s].state == State::Failed && err.empty()) err = slots_[s].error;
  if (!err.empty()) {
    for (int s : out) unpin(s);
    state_cv_.notify_all();
    throw std::runtime_error("ExpertCache.acquire: load failed: " + err);
  }
}

void ExpertCache::release(int layer, const std::vector<int>& ids) {
  check_ids(layer, ids);
  std::lock_guard<std::mutex> lk(mu_);
  // Validate the whole call first so a bad id leaves every pin untouched.
  std::unordered_map<int, int> count;
  for (int e : ids) count[e]++;
  for (const auto& kv : count) {
    int s = slot_of_[key(layer, kv.first)];
    KR_CHECK(s >= 0 && slots_[s].pins >= kv.second,
             "ExpertCache.release: layer " + std::to_string(layer) + " expert " +
                 std::to_string(kv.first) + " released more often than acquired");
  }
  tick_++;
  for (int e : ids) unpin(slot_of_[key(layer, e)]);
  state_cv_.notify_all();
}

int ExpertCache::prefetch(int layer, const std::vector<int>& ids) {
  check_ids(layer, ids);
  std::vector<int> queued;
  {
    std::lock_guard<std::mutex> lk(mu_);
    CacheStats& st = stats_[layer];
    tick_++;
    for (int e : ids) {
      int s = slot_of_[key(layer, e)];
      if (s >= 0) {
        // Already here: refresh its recency so the eviction order reflects the coming use.
        if (slots_[s].evictable) {
          make_unevictable(s);
          make_evictable(s);
        }
        continue;
      }
      if (free_.empty() && evictable_.empty()) {
        st.prefetch_dropped++;
        continue;
      }
      s = take_slot();
      Slot& sl = slots_[s];
      sl.layer = layer;
      sl.expert = e;
      sl.state = State::Loading;
      sl.prefetched = true;
      slot_of_[key(layer, e)] = s;
      loading_++;
      st.prefetches++;
      queue_.push_back(Job{s, layer, e});
      queued.push_back(e);
    }
  }
  if (!queued.empty()) work_cv_.notify_all();
  if (upstream_ && !queued.empty()) upstream_->prefetch(layer, queued);
  else
    for (int e : queued) store_->advise_willneed(layer, e);
  return (int)queued.size();
}

void ExpertCache::wait_idle() {
  std::unique_lock<std::mutex> lk(mu_);
  state_cv_.wait(lk, [&] { return loading_ == 0; });
}

void ExpertCache::complete(const Job& job, bool ok, const std::string& err, double seconds) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    Slot& sl = slots_[job.slot];
    CacheStats& st = stats_[job.layer];
    loading_--;
    st.read_seconds += seconds;
    if (ok) {
      sl.state = State::Ready;
      st.loads++;
      st.bytes_loaded += store_->expert_bytes(job.layer, job.expert);
      if (sl.pins == 0) make_evictable(job.slot);
    } else {
      // Nothing of a failed load is ever served: the slot goes back to the free list once unpinned.
      sl.state = State::Failed;
      sl.error = err;
      st.read_errors++;
      if (sl.pins == 0) free_slot(job.slot);
    }
  }
  state_cv_.notify_all();
}

uint8_t* ExpertCache::take_staging() {
  std::unique_lock<std::mutex> lk(mu_);
  staging_cv_.wait(lk, [&] { return !staging_free_.empty(); });
  uint8_t* b = staging_free_.back();
  staging_free_.pop_back();
  return b;
}

void ExpertCache::give_staging(uint8_t* b) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    staging_free_.push_back(b);
  }
  staging_cv_.notify_one();
}

std::vector<uint64_t> ExpertCache::fill(const Job& job, uint8_t* buf, uint64_t cap) {
  std::vector<uint64_t> tickets;
  if (upstream_) {
    std::vector<int> one{job.expert};
    std::vector<int> s = upstream_->acquire(job.layer, one);
    try {
      const uint8_t* src = reinterpret_cast<const uint8_t*>(upstream_->pool().address(s[0]));
      uint64_t n = store_->expert_bytes(job.layer, job.expert);
      if (staged_) {
        std::memcpy(buf, src, n);  // the upstream slot is free again as soon as this returns
        src = buf;
      }
      tickets.push_back(pool_->begin_copy(job.slot, 0, src, n));
      if (!staged_) pool_->wait_copy(tickets.back());
    } catch (...) {
      upstream_->release(job.layer, one);
      throw;
    }
    upstream_->release(job.layer, one);
    return tickets;
  }
  const ByteRange* r = store_->ranges(job.layer, job.expert);
  const bool direct = store_->mode() == ReadMode::Direct;
  uint64_t at = 0, used = 0;
  try {
    for (int k = 0; k < 3; ++k) {
      // Each range at an aligned place in buf, so O_DIRECT can read straight into it.
      const uint8_t* src = store_->read_range(r[k], buf + used, cap - used, staged_);
      used += direct ? ExpertStore::aligned_span(r[k]) : r[k].nbytes;
      tickets.push_back(pool_->begin_copy(job.slot, at, src, r[k].nbytes));
      at += r[k].nbytes;
    }
  } catch (...) {
    // A later range failed: the copies already started still read buf, which must not be handed
    // to another load before they end (the slot itself is discarded).
    for (uint64_t t : tickets) {
      try {
        pool_->wait_copy(t);
      } catch (...) {
      }
    }
    throw;
  }
  return tickets;
}

void ExpertCache::load(const Job& job, int id) {
  auto t0 = std::chrono::steady_clock::now();
  auto since = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  uint8_t* buf = nullptr;
  try {
    if (staged_) {
      buf = take_staging();
      Copy c;
      c.tickets = fill(job, buf, buf_bytes_);
      c.job = job;
      c.buf = buf;
      c.t0 = t0;
      {
        std::lock_guard<std::mutex> lk(mu_);
        copies_.push_back(std::move(c));
      }
      copy_cv_.notify_one();
      return;
    }
    if (!bounce_.empty()) {
      for (uint64_t t : fill(job, bounce_[id], buf_bytes_)) pool_->wait_copy(t);
    } else if (upstream_) {
      fill(job, nullptr, 0);
    } else {
      store_->read_expert(job.layer, job.expert,
                          reinterpret_cast<uint8_t*>(pool_->address(job.slot)));
    }
    complete(job, true, "", since());
  } catch (const std::exception& e) {
    if (buf) give_staging(buf);
    complete(job, false, e.what(), since());
  }
}

void ExpertCache::reader_main(int id) {
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> lk(mu_);
      work_cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) break;  // stopping, nothing left to load
      job = queue_.front();
      queue_.pop_front();
    }
    load(job, id);
  }
}

// Marks each staged load ready as soon as its copy finishes, whatever the readers are doing.
void ExpertCache::completer_main() {
  for (;;) {
    Copy c;
    {
      std::unique_lock<std::mutex> lk(mu_);
      copy_cv_.wait(lk, [&] { return readers_done_ || !copies_.empty(); });
      if (copies_.empty()) break;
      c = std::move(copies_.front());
      copies_.pop_front();
    }
    bool ok = true;
    std::string err;
    for (uint64_t t : c.tickets) {
      try {
        pool_->wait_copy(t);
      } catch (const std::exception& e) {
        if (ok) err = e.what();
        ok = false;
      }
    }
    give_staging(c.buf);
    complete(c.job, ok, err,
             std::chrono::duration<double>(std::chrono::steady_clock::now() - c.t0).count());
  }
}

bool ExpertCache::contains(int layer, int expert) const {
  check_ids(layer, {expert});
  std::lock_guard<std::mutex> lk(mu_);
  int s = slot_of_[key(layer, expert)];
  return s >= 0 && slots_[s].state == State::Ready;
}

CacheStats ExpertCache::stats(int layer) const {
  KR_CHECK(layer >= 0 && layer < store_->n_layers(), "ExpertCache.stats: layer out of range");
  std::lock_guard<std::mutex> lk(mu_);
  return stats_[layer];
}

CacheStats ExpertCache::total_stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  CacheStats t;
  for (const auto& s : stats_) t.add(s);
  return t;
}

void ExpertCache::reset_stats() {
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& s : stats_) s = CacheStats{};
}

int ExpertCache::pinned_slots() const {
  std::lock_guard<std::mutex> lk(mu_);
  return count_pinned();
}

int ExpertCache::count_pinned() const {
  int n = 0;
  for (const auto& s : slots_) n += s.pins > 0;
  return n;
}

std::vector<std::tuple<int, int, int, int>> ExpertCache::resident() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<std::tuple<int, int, int, int>> out;
  for (size_t s = 0; s < slots_.size(); ++s)
    if (slots_[s].state == State::Ready)
      out.emplace_back(slots_[s].layer, slots_[s].expert, (int)s, slots_[s].pins);
  return out;
}

}  // namespace kr
