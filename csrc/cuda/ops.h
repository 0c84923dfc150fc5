// Launchers of the CUDA kernels (csrc/cuda/gemv.cu). They enqueue on the given stream and return
// the launch error; callers (the bindings) have selected the device and validated every size.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cpu/act_quant.h"
#include "cuda/kernels/moe.cuh"

namespace kr::cuda {

cudaError_t launch_act_quant(const float* x, int64_t n_blocks, block_q8a32* y, cudaStream_t s);
cudaError_t launch_gemv(int32_t type, const gk::GemvArgs& a, cudaStream_t s);
// The two format groups of launch_gemv (cudaErrorInvalidValue for a format of the other group).
cudaError_t launch_gemv_kq(int32_t type, const gk::GemvArgs& a, cudaStream_t s);
cudaError_t launch_gemv_iq(int32_t type, const gk::GemvArgs& a, cudaStream_t s);
// Needs a.x, a.xq, a.h, a.hq, a.y, a.out and a device copy of the route table in a.routes.
cudaError_t launch_moe(const gk::MoeArgs& a, cudaStream_t s);
cudaError_t launch_dequant_tile(int32_t type, const uint8_t* src, int64_t n_blocks, void* dst, int out_dtype,
                                cudaStream_t s);

}  // namespace kr::cuda
