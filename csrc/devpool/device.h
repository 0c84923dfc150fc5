// The device a VRAM slot pool drives, reduced to what the pool's protocol needs: device and pinned
// allocations, streams, events and asynchronous host-to-device copies, with CUDA's semantics
// (work on one stream runs in order; wait_event makes a stream wait for the event's latest
// record at the time of the call; an event never recorded counts as complete). Implemented once
// over CUDA (csrc/cuda/vram_pool.cu) and once as an emulated device (emu_device.h) whose copies
// complete later, on their own thread, so the protocol is tested on a machine without a GPU.
#pragma once
#include <cstddef>
#include <cstdint>

namespace kr::devpool {

class Device {
 public:
  virtual ~Device() = default;
  virtual uint8_t* alloc_device(size_t n) = 0;
  virtual void free_device(uint8_t* p) = 0;
  virtual uint8_t* alloc_pinned(size_t n) = 0;
  virtual void free_pinned(uint8_t* p) = 0;
  virtual int new_stream() = 0;  // handles are small integers owned by the device
  virtual int new_event() = 0;
  virtual void copy_h2d(uint8_t* dst, const uint8_t* src, size_t n, int stream) = 0;
  virtual void record(int event, int stream) = 0;
  virtual void wait_event(int stream, int event) = 0;
  virtual void sync_event(int event) = 0;   // host blocks until the event's latest record completed
  virtual bool query_event(int event) = 0;  // true when complete
  virtual void sync_stream(int stream) = 0;
  // Called first on every thread the pool starts (CUDA: cudaSetDevice, since the runtime's
  // current device is per thread).
  virtual void bind_thread() = 0;
  // A stream handed in from outside (torch's current stream), registered as a handle.
  virtual int import_stream(uintptr_t native) = 0;
};

}  // namespace kr::devpool
