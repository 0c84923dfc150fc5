// Emulated device; see emu_device.h.
#include "devpool/emu_device.h"

#include <chrono>
#include <cstring>

#include "common.h"

namespace kr::devpool {

EmuDevice::EmuDevice(uint32_t seed, int max_delay_us, size_t chunk)
    : rng_(seed), max_delay_us_(max_delay_us), chunk_(chunk ? chunk : 4096) {}

EmuDevice::~EmuDevice() {
  {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] {
      for (auto& s : streams_)
        if (!s->q.empty() || s->busy) return false;
      return true;
    });
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& s : streams_) s->worker.join();
}

uint8_t* EmuDevice::alloc_device(size_t n) {
  std::lock_guard<std::mutex> lk(mu_);
  allocs_.emplace_back(new uint8_t[n ? n : 1]());
  return allocs_.back().get();
}

void EmuDevice::free_device(uint8_t* p) {
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& a : allocs_)
    if (a.get() == p) a.reset();
}

int EmuDevice::new_stream() {
  std::lock_guard<std::mutex> lk(mu_);
  const int id = (int)streams_.size();
  streams_.emplace_back(new Stream());
  streams_.back()->worker = std::thread([this, id] { worker_main(id); });
  return id;
}

int EmuDevice::new_event() {
  std::lock_guard<std::mutex> lk(mu_);
  events_.push_back(Event{});
  return (int)events_.size() - 1;
}

void EmuDevice::delay() {
  int us;
  {
    std::lock_guard<std::mutex> lk(rng_mu_);
    us = max_delay_us_ > 0 ? (int)(rng_() % (uint32_t)(max_delay_us_ + 1)) : 0;
  }
  if (us) std::this_thread::sleep_for(std::chrono::microseconds(us));
}

void EmuDevice::push(int stream, std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    KR_CHECK(stream >= 0 && stream < (int)streams_.size(), "bad stream handle");
    streams_[stream]->q.push_back(Op{std::move(fn)});
  }
  cv_.notify_all();
}

void EmuDevice::worker_main(int id) {
  Stream* s;
  {
    std::lock_guard<std::mutex> lk(mu_);
    s = streams_[id].get();
  }
  for (;;) {
    Op op;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !s->q.empty(); });
      if (s->q.empty()) return;
      op = std::move(s->q.front());
      s->q.pop_front();
      s->busy = true;
    }
    op.fn();
    {
      std::lock_guard<std::mutex> lk(mu_);
      s->busy = false;
    }
    cv_.notify_all();
  }
}

void EmuDevice::copy_h2d(uint8_t* dst, const uint8_t* src, size_t n, int stream) {
  push(stream, [this, dst, src, n] {
    for (size_t off = 0; off < n; off += chunk_) {  // torn on purpose: a racing reader sees it
      delay();
      std::memcpy(dst + off, src + off, n - off < chunk_ ? n - off : chunk_);
    }
    copies_.fetch_add(1);
  });
}

void EmuDevice::record(int event, int stream) {
  uint64_t gen;
  {
    std::lock_guard<std::mutex> lk(mu_);
    KR_CHECK(event >= 0 && event < (int)events_.size(), "bad event handle");
    gen = ++events_[event].recorded;
  }
  push(stream, [this, event, gen] {
    delay();
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (events_[event].completed < gen) events_[event].completed = gen;
    }
    cv_.notify_all();
  });
}

void EmuDevice::wait_event(int stream, int event) {
  uint64_t gen;
  {
    std::lock_guard<std::mutex> lk(mu_);
    KR_CHECK(event >= 0 && event < (int)events_.size(), "bad event handle");
    gen = events_[event].recorded;  // the latest record now, as cudaStreamWaitEvent
  }
  push(stream, [this, event, gen] {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return events_[event].completed >= gen; });
  });
}

void EmuDevice::sync_event(int event) {
  std::unique_lock<std::mutex> lk(mu_);
  KR_CHECK(event >= 0 && event < (int)events_.size(), "bad event handle");
  const uint64_t gen = events_[event].recorded;
  cv_.wait(lk, [&] { return events_[event].completed >= gen; });
}

bool EmuDevice::query_event(int event) {
  std::lock_guard<std::mutex> lk(mu_);
  return events_[event].completed >= events_[event].recorded;
}

void EmuDevice::sync_stream(int stream) {
  const int e = new_event();
  record(e, stream);
  sync_event(e);
}

void EmuDevice::launch(int stream, std::function<void()> fn) { push(stream, std::move(fn)); }

}  // namespace kr::devpool
