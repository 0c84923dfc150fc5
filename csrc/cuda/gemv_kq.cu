// GEMV kernels of the legacy and k-quant formats (the other group is gemv_iq.cu).
#include "cuda/kernels/gemv_kernel.cuh"
#include "cuda/ops.h"

namespace kr::cuda {

cudaError_t launch_gemv_kq(int32_t type, const gk::GemvArgs& a, cudaStream_t s) {
  switch (static_cast<GgmlType>(type)) {
    KR_GEMV_CASE(Q4_0) KR_GEMV_CASE(Q8_0) KR_GEMV_CASE(Q2_K) KR_GEMV_CASE(Q3_K) KR_GEMV_CASE(Q4_K)
    KR_GEMV_CASE(Q5_K) KR_GEMV_CASE(Q6_K)
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace kr::cuda
