// Persistent pool: workers sleep on a condition variable between jobs; the caller works too, so a
// job on an N-thread pool wakes N-1 workers. Decode issues many small back-to-back jobs.
#include "cpu/threadpool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace kr {
namespace {

thread_local bool t_in_task = false;  // set while a thread runs pool tasks

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
    quit_ = false;
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
    if (workers_.empty() || n_tasks == 1) {
      t_in_task = true;
      struct Reset { ~Reset() { t_in_task = false; } } reset;
      for (size_t i = 0; i < n_tasks; ++i) fn(i, 0);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      n_tasks_ = n_tasks;
      next_.store(0);
      active_.store((int)workers_.size());
      error_ = nullptr;
      ++generation_;
    }
    cv_.notify_all();
    drain(0);
    while (active_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void drain(int thread) {
    t_in_task = true;
    struct Reset { ~Reset() { t_in_task = false; } } reset;
    for (;;) {
      size_t i = next_.fetch_add(1, std::memory_order_relaxed);
      if (i >= n_tasks_) break;
      try {
        (*fn_)(i, thread);
      } catch (...) {
        std::lock_guard<std::mutex> lk(err_mu_);
        if (!error_) error_ = std::current_exception();
        next_.store(n_tasks_);
      }
    }
  }

  void worker(int t) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return quit_ || generation_ != seen; });
        if (quit_) return;
        seen = generation_;
      }
      drain(t);
      active_.fetch_sub(1, std::memory_order_release);
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  std::mutex call_mu_;  // one job at a time
  std::mutex mu_;
  std::mutex err_mu_;
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
  const std::function<void(size_t, int)>* fn_ = nullptr;
  size_t n_tasks_ = 0;
  std::atomic<size_t> next_{0};
  std::atomic<int> active_{0};
  std::atomic<bool> started_{false};
  std::exception_ptr error_;
  uint64_t generation_ = 0;
  bool quit_ = false;
  int target_ = 0;
};

Pool& pool() {
  static Pool p;
  return p;
}

}  // namespace

void parallel_for(size_t n_tasks, const std::function<void(size_t, int)>& fn) { pool().run(n_tasks, fn); }

int num_threads() {
  return pool().size();
}

void set_num_threads(int n) { pool().resize(n); }

}  // namespace kr
