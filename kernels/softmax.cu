/* softmax_rows (see the header).
 *
 * Parallelisation: one warp per row, eight rows per 256-thread block. The
 * attention rows are at most 784 floats (28x28 positions), about 25 per
 * lane, so a warp per row keeps every reduction in shuffles with no
 * shared memory or block barrier, and a 784-row matrix still gives 98
 * blocks. Pass 1 reads the row once with the online (max, sum) update;
 * pass 2 reads it again (from L1/L2) and writes exp(s - max) / sum.
 * Fusing this into the attention GEMMs (flash-attention style) is left to
 * the backend: this kernel serves the unfused cuBLAS path. */
#include <math.h>

#include "common.cuh"
#include "softmax.cuh"

#define GL__K_SM_THREADS 256

namespace {

/* Merges the running (max, sum) of another lane into (m, s). */
__device__ __forceinline__ void gl__k_sm_merge(float &m, float &s, float m2, float s2) {
  if (m2 == -INFINITY)
    return;
  if (m == -INFINITY) {
    m = m2;
    s = s2;
  } else if (m2 > m) {
    s = s * expf(m - m2) + s2;
    m = m2;
  } else {
    s = s + s2 * expf(m2 - m);
  }
}

__global__ void __launch_bounds__(GL__K_SM_THREADS)
    gl__k_softmax_kernel(const float *x, float *y, uint32_t rows, uint32_t n, size_t ld_x,
                         size_t ld_y, float scale) {
  const uint32_t lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  for (uint32_t r = blockIdx.x * warps + (threadIdx.x >> 5); r < rows; r += gridDim.x * warps) {
    const float *xr = x + (size_t)r * ld_x;
    float *yr = y + (size_t)r * ld_y;
    float m = -INFINITY, s = 0;
    for (uint32_t j = lane; j < n; j += 32)
      gl__k_sm_merge(m, s, __fdiv_rn(xr[j], scale), 1.0f);
    for (int o = 16; o > 0; o >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
      const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
      gl__k_sm_merge(m, s, m2, s2);
    }
    /* Every lane has read its elements of the row: in place is safe. */
    __syncwarp();
    for (uint32_t j = lane; j < n; j += 32)
      yr[j] = __fdiv_rn(expf(__fdiv_rn(xr[j], scale) - m), s);
  }
}

} // namespace

extern "C" cudaError_t gl__k_softmax_rows(const float *x, float *y, uint32_t rows, uint32_t n,
                                          size_t ld_x, size_t ld_y, float scale,
                                          cudaStream_t stream) {
  if (rows == 0 || n == 0 || ld_x < n || ld_y < n || !x || !y || !(scale != 0.0f))
    return cudaErrorInvalidValue;
  const unsigned per_block = GL__K_SM_THREADS / 32;
  const size_t blocks = ((size_t)rows + per_block - 1) / per_block;
  const unsigned grid = blocks > GL__K_MAX_BLOCKS ? GL__K_MAX_BLOCKS : (unsigned)blocks;
  gl__k_softmax_kernel<<<grid, GL__K_SM_THREADS, 0, stream>>>(x, y, rows, n, ld_x, ld_y, scale);
  return gl__k_launched();
}
