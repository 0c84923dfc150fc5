// Emulated device: "device" memory is host memory, each stream is a FIFO executed by its own
// worker thread, copies run in chunks with random delays (so a copy that races a reader shows
// up as torn data), and events complete when their stream reaches them. Tests launch host
// functions on a stream (launch) to stand in for kernels.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "devpool/device.h"

namespace kr::devpool {

class EmuDevice : public Device {
 public:
  // max_delay_us: each copy chunk (and each event record) sleeps uniformly in [0, max_delay_us].
  explicit EmuDevice(uint32_t seed = 1, int max_delay_us = 200, size_t chunk = 4096);
  ~EmuDevice() override;

  uint8_t* alloc_device(size_t n) override;
  void free_device(uint8_t* p) override;
  uint8_t* alloc_pinned(size_t n) override { return alloc_device(n); }
  void free_pinned(uint8_t* p) override { free_device(p); }
  int new_stream() override;
  int new_event() override;
  void copy_h2d(uint8_t* dst, const uint8_t* src, size_t n, int stream) override;
  void record(int event, int stream) override;
  void wait_event(int stream, int event) override;
  void sync_event(int event) override;
  bool query_event(int event) override;
  void sync_stream(int stream) override;
  void bind_thread() override { bound_threads_.fetch_add(1); }
  int import_stream(uintptr_t) override { return new_stream(); }

  // Runs fn on the stream's worker, in stream order (an emulated kernel).
  void launch(int stream, std::function<void()> fn);
  int bound_threads() const { return bound_threads_.load(); }
  uint64_t copies() const { return copies_.load(); }

 private:
  struct Op {
    std::function<void()> fn;
  };
  struct Stream {
    std::deque<Op> q;
    std::thread worker;
    bool busy = false;
  };
  struct Event {
    uint64_t recorded = 0, completed = 0;
  };
  void push(int stream, std::function<void()> fn);
  void worker_main(int stream);
  void delay();

  std::mutex mu_;
  std::condition_variable cv_;  // queues changed or an event completed
  std::vector<std::unique_ptr<Stream>> streams_;
  std::vector<Event> events_;
  bool stop_ = false;
  std::mutex rng_mu_;
  std::mt19937 rng_;
  int max_delay_us_;
  size_t chunk_;
  std::atomic<int> bound_threads_{0};
  std::atomic<uint64_t> copies_{0};
  std::vector<std::unique_ptr<uint8_t[]>> allocs_;
};

}  // namespace kr::devpool
