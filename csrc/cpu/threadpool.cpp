// Persistent pool. Decode issues ~50 small jobs per token, so two costs matter: waking workers
// (they spin briefly before sleeping) and waiting for a worker the OS has descheduled (the caller
// waits for the job's tasks to finish, not for every worker to check in; a late worker finds its
// job gone and goes back to sleep without touching the next one).
#include "cpu/threadpool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KR_PAUSE() _mm_pause()
#else
#define KR_PAUSE() std::this_thread::yield()
#endif

namespace kr {
namespace {

thread_local bool t_in_task = false;  // set while a thread runs pool tasks

// The task counter carries its job's generation in the high 32 bits, so a claim (a CAS) can only
// ever succeed on the job the claimer woke for.
constexpr uint64_t pack(uint64_t gen, uint64_t idx) { return (gen << 32) | idx; }
constexpr uint32_t gen_of(uint64_t v) { return (uint32_t)(v >> 32); }
constexpr uint32_t idx_of(uint64_t v) { return (uint32_t)v; }

constexpr int kSpinIters = 20000;  // ~50-100 us of pause before a worker sleeps

class Pool {
 public:
  ~Pool() { stop(); }

  int size() {
    if (!started_.load(std::memory_order_acquire)) resize(0);
    std::lock_guard<std::mutex> g(call_mu_);
    return target_;
  }

  void resize(int n) {
    std::lock_guard<std::mutex> g(call_mu_);
    if (n <= 0) n = (int)std::max(1u, std::thread::hardware_concurrency());
    if (n == target_ && started_.load()) return;
    stop();
    target_ = n;
    quit_.store(false);
    for (int t = 1; t < n; ++t) workers_.emplace_back([this, t] { worker(t); });
    started_.store(true, std::memory_order_release);
  }

  void run(size_t n_tasks, const std::function<void(size_t, int)>& fn) {
    if (n_tasks == 0) return;
    if (t_in_task) {  // nested call: the pool is busy with our caller's job
      for (size_t i = 0; i < n_tasks; ++i) fn(i, 0);
      return;
    }
    if (!started_.load(std::memory_order_acquire)) resize(0);  // lazily start at the default size
    std::lock_guard<std::mutex> g(call_mu_);
    if (workers_.empty() || n_tasks == 1 || n_tasks > UINT32_MAX) {
      t_in_task = true;
      struct Reset { ~Reset() { t_in_task = false; } } reset;
      for (size_t i = 0; i < n_tasks; ++i) fn(i, 0);
      return;
    }
    const uint32_t gen = gen_ + 1;
    gen_ = gen;
    fn_ = &fn;
    job_.store(pack(gen, n_tasks));
    done_.store(0);
    error_ = nullptr;
    {
      std::lock_guard<std::mutex> lk(mu_);
      counter_.store(pack(gen, 0));  // publishes the job; workers spinning see it at once
    }
    cv_.notify_all();
    drain(0, gen);
    while (done_.load() != n_tasks) KR_PAUSE();
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // Claims and runs tasks of job `gen` until none are left.
  void drain(int thread, uint32_t gen) {
    t_in_task = true;
    struct Reset { ~Reset() { t_in_task = false; } } reset;
    // The task count is read from job_, tagged like the counter: a worker that wakes after its job
    // ended sees another generation there and leaves without claiming anything.
    const uint64_t job = job_.load();
    if (gen_of(job) != gen) return;
    const uint32_t n = idx_of(job);
    uint64_t v = counter_.load();
    for (;;) {
      if (gen_of(v) != gen || idx_of(v) >= n) return;
      if (!counter_.compare_exchange_weak(v, v + 1)) continue;  // v reloaded on failure
      try {
        (*fn_)(idx_of(v), thread);
      } catch (...) {
        std::lock_guard<std::mutex> lk(err_mu_);
        if (!error_) error_ = std::current_exception();
      }
      done_.fetch_add(1);
      v = counter_.load();
    }
  }

  void worker(int t) {
    uint32_t seen = gen_of(counter_.load());
    for (;;) {
      uint32_t gen = gen_of(counter_.load());
      for (int i = 0; gen == seen && i < kSpinIters && !quit_.load(std::memory_order_relaxed); ++i) {
        KR_PAUSE();
        gen = gen_of(counter_.load(std::memory_order_relaxed));
      }
      if (gen == seen) {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return quit_.load() || gen_of(counter_.load()) != seen; });
        if (quit_.load()) return;
        gen = gen_of(counter_.load());
      }
      if (quit_.load()) return;
      seen = gen;
      drain(t, gen);
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      quit_.store(true);
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  std::mutex call_mu_;  // one job at a time
  std::mutex mu_;       // guards the sleep/wake handshake only
  std::mutex err_mu_;
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
  const std::function<void(size_t, int)>* fn_ = nullptr;
  std::atomic<uint64_t> job_{0};  // (generation, task count) of the current job
  uint32_t gen_ = 0;
  std::atomic<uint64_t> counter_{0};
  std::atomic<size_t> done_{0};
  std::exception_ptr error_;
  std::atomic<bool> quit_{false};
  std::atomic<bool> started_{false};
  int target_ = 0;
};

Pool& pool() {
  static Pool p;
  return p;
}

}  // namespace

void parallel_for(size_t n_tasks, const std::function<void(size_t, int)>& fn) { pool().run(n_tasks, fn); }

int num_threads() { return pool().size(); }

void set_num_threads(int n) { pool().resize(n); }

}  // namespace kr
