// DevicePool stress test on the emulated device; see stress.h.
#include "devpool/stress.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common.h"
#include "devpool/emu_device.h"
#include "devpool/pool.h"

namespace kr::devpool {

StressResult run_stress(std::shared_ptr<ExpertStore> store, const StressConfig& cfg) {
  KR_CHECK(cfg.n_threads >= 1 && cfg.k >= 1 && cfg.n_threads * cfg.k <= cfg.n_slots,
           "n_threads * k must fit in the slots (else acquires could wait on each other forever)");
  KR_CHECK(cfg.k <= store->n_experts(), "k exceeds the number of experts");
  auto dev = std::make_shared<EmuDevice>(cfg.seed, cfg.max_delay_us, 1024);
  StressResult res;
  std::atomic<uint64_t> computes{0}, early{0}, torn{0};
  std::atomic<int> max_pinned{0};
  std::atomic<bool> cap_ok{true};
  {
    DevicePool pool(dev, store, store->max_expert_bytes(), cfg.n_slots, cfg.n_staging, cfg.n_readers);
    pool.set_fault(cfg.skip_ready_wait, cfg.skip_last_use_wait);
    // Expected bytes per expert: the direct provider's read.
    const int L = store->n_layers(), E = store->n_experts();
    std::vector<std::vector<uint8_t>> want((size_t)L * E);
    for (int l = 0; l < L; ++l)
      for (int e = 0; e < E; ++e)
        if (store->has(l, e)) {
          want[(size_t)l * E + e].resize(store->expert_bytes(l, e));
          store->read_expert(l, e, want[(size_t)l * E + e].data());
        }
    std::vector<int> layers;
    for (int l = 0; l < L; ++l)
      if (store->has(l, 0)) layers.push_back(l);
    KR_CHECK(!layers.empty(), "store has no experts");

    auto work = [&](int tid) {
      std::mt19937 rng(cfg.seed * 7919u + (uint32_t)tid);
      const int stream = dev->new_stream();
      for (int it = 0; it < cfg.iters; ++it) {
        const int layer = layers[rng() % layers.size()];
        std::vector<int> ids;
        while ((int)ids.size() < cfg.k) {
          const int e = (int)(rng() % (uint32_t)E);
          bool dup = false;
          for (int x : ids) dup |= x == e;
          if (!dup) ids.push_back(e);
        }
        if (rng() % 3 == 0) {  // duplicate occurrence: pins twice, released twice
          ids.push_back(ids[0]);
        }
        const std::vector<int> slots = pool.acquire(layer, ids, stream);
        const int pinned = pool.pinned_slots();
        int prev = max_pinned.load();
        while (pinned > prev && !max_pinned.compare_exchange_weak(prev, pinned)) {}
        if (pinned > pool.capacity()) cap_ok = false;
        for (size_t j = 0; j < ids.size(); ++j) {
          const uint8_t* p = pool.address(slots[j]);
          const std::vector<uint8_t>* w = &want[(size_t)layer * E + ids[j]];
          const int us = (int)(rng() % (uint32_t)(cfg.max_delay_us + 1));
          dev->launch(stream, [&, p, w, us] {
            if (std::memcmp(p, w->data(), w->size()) != 0) early.fetch_add(1);
            std::this_thread::sleep_for(std::chrono::microseconds(us));
            if (std::memcmp(p, w->data(), w->size()) != 0) torn.fetch_add(1);
            computes.fetch_add(1);
          });
        }
        if (rng() % 2 == 0) {  // next-layer prefetch, as the engine does
          const int nl = layers[rng() % layers.size()];
          std::vector<int> pf{(int)(rng() % (uint32_t)E), (int)(rng() % (uint32_t)E)};
          pool.prefetch(nl, pf);
        }
        pool.release(layer, ids, stream);
        auto res_list = pool.resident();
        std::set<std::pair<int, int>> keys;
        for (auto& r : res_list) keys.emplace(std::get<0>(r), std::get<1>(r));
        if (keys.size() != res_list.size() || (int)res_list.size() > pool.capacity()) cap_ok = false;
      }
      dev->sync_stream(stream);
    };
    std::mutex err_mu;
    std::string err;
    auto worker = [&](int tid) {
      try {
        work(tid);
      } catch (const std::exception& e) {  // reported to the caller, not std::terminate
        std::lock_guard<std::mutex> lk(err_mu);
        err = e.what();
      }
    };
    std::vector<std::thread> th;
    for (int t = 0; t < cfg.n_threads; ++t) th.emplace_back(worker, t);
    for (auto& t : th) t.join();
    KR_CHECK(err.empty(), "stress worker failed: " + err);
    pool.wait_idle();
    const PoolStats st = pool.stats();
    res.loads = st.loads;
    res.hits = st.hits;
    res.misses = st.misses;
    res.evictions = st.evictions;
    res.prefetches = st.prefetches;
    res.host_waits = st.host_waits;
    if (pool.pinned_slots() != 0) cap_ok = false;
  }
  res.computes = computes.load();
  res.early_reads = early.load();
  res.torn_reads = torn.load();
  res.max_pinned = max_pinned.load();
  res.capacity_ok = cap_ok.load();
  res.bound_threads = dev->bound_threads();
  return res;
}

}  // namespace kr::devpool
