/* Helpers shared by the kernels (CUDA only: C callers include the per-op
 * .cuh headers, never this one). */
#ifndef GL_KERNELS_COMMON_CUH
#define GL_KERNELS_COMMON_CUH

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

/* Launches never exceed this many blocks along x: the kernels loop over the
 * rest (grid-stride), so the grid stays valid for any problem size. */
#define GL__K_MAX_BLOCKS 65535u

static inline unsigned gl__k_blocks(size_t n, unsigned threads) {
  size_t b = (n + threads - 1) / threads;
  return b == 0 ? 1u : b > GL__K_MAX_BLOCKS ? GL__K_MAX_BLOCKS : (unsigned)b;
}

static __device__ __forceinline__ float gl__k_warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/* The OPS.md sigmoid, 1 / (1 + exp(-x)), with an IEEE division whatever
 * the compiler flags (--use_fast_math would otherwise approximate it). */
static __device__ __forceinline__ float gl__k_sigmoid(float x) {
  return __fdiv_rn(1.0f, 1.0f + expf(-x));
}

/* After a launch: the launch error, if any (asynchronous faults surface at
 * the caller's next synchronisation). */
static inline cudaError_t gl__k_launched(void) { return cudaGetLastError(); }

#endif
