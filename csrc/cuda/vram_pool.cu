// CUDA backend of the device slot pool (csrc/devpool): the arena is one cudaMalloc, staging is
// cudaHostAlloc'd (pinned), streams are non-blocking, events carry no timing. Every call selects
// the pool's device first: the runtime's current device is per thread, and readers, the Python
// thread and torch all call in.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cache/store.h"
#include "common.h"
#include "cuda/runtime.cuh"
#include "devpool/device.h"
#include "devpool/pool.h"

namespace py = pybind11;

namespace kr::cuda {

class CudaDevice : public devpool::Device {
 public:
  explicit CudaDevice(int dev) : dev_(dev) {
    int n = 0;
    check_cuda(cudaGetDeviceCount(&n), "cudaGetDeviceCount");
    KR_CHECK(dev >= 0 && dev < n, "CUDA device " + std::to_string(dev) + " does not exist");
  }
  ~CudaDevice() override {
    cudaSetDevice(dev_);
    for (size_t i = 0; i < streams_.size(); ++i)
      if (owned_[i]) cudaStreamDestroy(streams_[i]);
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }
  uint8_t* alloc_device(size_t n) override {
    set();
    void* p = nullptr;
    check_cuda(cudaMalloc(&p, n), "cudaMalloc(" + std::to_string(n) + " bytes) for the slot arena");
    return static_cast<uint8_t*>(p);
  }
  void free_device(uint8_t* p) override {
    set();
    cudaFree(p);
  }
  uint8_t* alloc_pinned(size_t n) override {
    set();
    void* p = nullptr;
    check_cuda(cudaHostAlloc(&p, n, cudaHostAllocPortable), "cudaHostAlloc(" + std::to_string(n) + ")");
    return static_cast<uint8_t*>(p);
  }
  void free_pinned(uint8_t* p) override { cudaFreeHost(p); }
  int new_stream() override {
    set();
    cudaStream_t s;
    check_cuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
    std::lock_guard<std::mutex> lk(mu_);
    streams_.push_back(s);
    owned_.push_back(true);
    return (int)streams_.size() - 1;
  }
  int import_stream(uintptr_t native) override {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = imported_.find(native);
    if (it != imported_.end()) return it->second;
    streams_.push_back(reinterpret_cast<cudaStream_t>(native));
    owned_.push_back(false);
    imported_[native] = (int)streams_.size() - 1;
    return (int)streams_.size() - 1;
  }
  int new_event() override {
    set();
    cudaEvent_t e;
    check_cuda(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
    std::lock_guard<std::mutex> lk(mu_);
    events_.push_back(e);
    return (int)events_.size() - 1;
  }
  void copy_h2d(uint8_t* dst, const uint8_t* src, size_t n, int stream) override {
    set();
    check_cuda(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, S(stream)), "cudaMemcpyAsync");
  }
  void record(int event, int stream) override {
    set();
    check_cuda(cudaEventRecord(E(event), S(stream)), "cudaEventRecord");
  }
  void wait_event(int stream, int event) override {
    set();
    check_cuda(cudaStreamWaitEvent(S(stream), E(event), 0), "cudaStreamWaitEvent");
  }
  void sync_event(int event) override {
    set();
    check_cuda(cudaEventSynchronize(E(event)), "cudaEventSynchronize");
  }
  bool query_event(int event) override {
    set();
    const cudaError_t e = cudaEventQuery(E(event));
    if (e == cudaErrorNotReady) return false;
    check_cuda(e, "cudaEventQuery");
    return true;
  }
  void sync_stream(int stream) override {
    set();
    check_cuda(cudaStreamSynchronize(S(stream)), "cudaStreamSynchronize");
  }
  void bind_thread() override { set(); }
  int device() const { return dev_; }

 private:
  void set() { check_cuda(cudaSetDevice(dev_), "cudaSetDevice(" + std::to_string(dev_) + ")"); }
  cudaStream_t S(int i) {
    std::lock_guard<std::mutex> lk(mu_);
    KR_CHECK(i >= 0 && i < (int)streams_.size(), "bad stream handle");
    return streams_[(size_t)i];
  }
  cudaEvent_t E(int i) {
    std::lock_guard<std::mutex> lk(mu_);
    KR_CHECK(i >= 0 && i < (int)events_.size(), "bad event handle");
    return events_[(size_t)i];
  }
  int dev_;
  std::mutex mu_;
  std::vector<cudaStream_t> streams_;
  std::vector<bool> owned_;
  std::map<uintptr_t, int> imported_;
  std::vector<cudaEvent_t> events_;
};

namespace {
struct CudaPool {
  std::shared_ptr<CudaDevice> dev;
  std::unique_ptr<devpool::DevicePool> pool;
};
}  // namespace

}  // namespace kr::cuda

void register_cuda_devpool(py::module_& m) {
  using kr::cuda::CudaPool;
  m.def("read_device", [](uintptr_t ptr, size_t n, uintptr_t stream) {
        // Test probe: n bytes at a device address, read in `stream` order (after its earlier work).
        KR_CHECK(ptr != 0, "null device pointer");
        std::string out(n, '\0');
        {
          py::gil_scoped_release nogil;
          kr::cuda::DeviceGuard g(-1, reinterpret_cast<const void*>(ptr));
          const cudaStream_t s = kr::cuda::as_stream(stream);
          kr::cuda::check_cuda(cudaMemcpyAsync(&out[0], reinterpret_cast<const void*>(ptr), n,
                                               cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync D2H");
          kr::cuda::check_cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize");
        }
        return py::bytes(out);
      }, py::arg("ptr"), py::arg("n"), py::arg("stream") = 0);
  py::class_<CudaPool>(m, "VramSlotPool",
                       "Expert slots in VRAM: pinned staging ring, copy stream, ready / last-use events.")
      .def(py::init([](std::shared_ptr<kr::ExpertStore> store, int n_slots, int device, int n_staging,
                       int n_readers) {
             kr::cuda::DeviceGuard g(device, nullptr);
             auto p = new CudaPool();
             p->dev = std::make_shared<kr::cuda::CudaDevice>(device);
             p->pool = std::make_unique<kr::devpool::DevicePool>(p->dev, store, store->max_expert_bytes(), n_slots,
                                                                 n_staging, n_readers);
             return p;
           }),
           py::arg("store"), py::arg("n_slots"), py::arg("device") = 0, py::arg("n_staging") = 4,
           py::arg("n_readers") = 2)
      .def("acquire", [](CudaPool& p, int layer, const std::vector<int>& ids, uintptr_t stream) {
             kr::cuda::DeviceGuard g(p.dev->device(), nullptr);
             const int s = p.dev->import_stream(stream);
             std::vector<int> slots = p.pool->acquire(layer, ids, s);
             std::vector<uintptr_t> addr;
             for (int x : slots) addr.push_back(reinterpret_cast<uintptr_t>(p.pool->address(x)));
             return addr;
           }, py::arg("layer"), py::arg("ids"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
           "Pins the experts and orders `stream` (torch's cuda_stream) after their loads; returns device addresses.")
      .def("release", [](CudaPool& p, int layer, const std::vector<int>& ids, uintptr_t stream) {
             kr::cuda::DeviceGuard g(p.dev->device(), nullptr);
             p.pool->release(layer, ids, p.dev->import_stream(stream));
           }, py::arg("layer"), py::arg("ids"), py::arg("stream"))
      .def("prefetch", [](CudaPool& p, int layer, const std::vector<int>& ids) {
             kr::cuda::DeviceGuard g(p.dev->device(), nullptr);
             return p.pool->prefetch(layer, ids);
           },
           py::arg("layer"), py::arg("ids"))
      .def("wait_idle", [](CudaPool& p) {
             kr::cuda::DeviceGuard g(p.dev->device(), nullptr);
             p.pool->wait_idle();
           }, py::call_guard<py::gil_scoped_release>())
      .def("contains", [](CudaPool& p, int l, int e) { return p.pool->contains(l, e); })
      .def("address", [](CudaPool& p, int s) { return reinterpret_cast<uintptr_t>(p.pool->address(s)); })
      .def_property_readonly("capacity", [](CudaPool& p) { return p.pool->capacity(); })
      .def_property_readonly("slot_bytes", [](CudaPool& p) { return p.pool->slot_bytes(); })
      .def("pinned_slots", [](CudaPool& p) { return p.pool->pinned_slots(); })
      .def("resident", [](CudaPool& p) { return p.pool->resident(); })
      .def("stats", [](CudaPool& p) {
        const auto s = p.pool->stats();
        py::dict d;
        d["hits"] = s.hits;
        d["misses"] = s.misses;
        d["prefetches"] = s.prefetches;
        d["loads"] = s.loads;
        d["evictions"] = s.evictions;
        d["bytes_loaded"] = s.bytes_loaded;
        d["host_waits"] = s.host_waits;
        d["host_wait_seconds"] = s.host_wait_seconds;
        return d;
      });
}
