// GEMV kernels of the i-quant and ternary formats (the other group is gemv_kq.cu).
#include "cuda/kernels/gemv_kernel.cuh"
#include "cuda/ops.h"

namespace kr::cuda {

cudaError_t launch_gemv_iq(int32_t type, const gk::GemvArgs& a, cudaStream_t s) {
  switch (static_cast<GgmlType>(type)) {
    KR_GEMV_CASE(IQ2_XXS) KR_GEMV_CASE(IQ2_XS) KR_GEMV_CASE(IQ2_S) KR_GEMV_CASE(IQ3_XXS) KR_GEMV_CASE(IQ3_S)
    KR_GEMV_CASE(IQ1_S) KR_GEMV_CASE(IQ1_M) KR_GEMV_CASE(IQ4_XS) KR_GEMV_CASE(TQ1_0) KR_GEMV_CASE(TQ2_0)
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace kr::cuda
