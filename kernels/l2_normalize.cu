/* l2_normalize (see the header).
 *
 * Parallelisation: one 256-thread block per row. Rows are descriptors
 * (a few hundred to a few thousand floats, a handful of rows per pass), so
 * a block per row already covers them; each thread sums the squares of a
 * strided slice (coalesced), warps reduce by shuffles and the eight warp
 * sums meet in shared memory. Every thread then scales its own slice, so
 * in-place use is safe: no element is written before the sum is final. */
#include "common.cuh"
#include "l2_normalize.cuh"

#define GL__K_L2_THREADS 256
#define GL__K_L2_EPS 1e-12f

namespace {

__global__ void __launch_bounds__(GL__K_L2_THREADS)
    gl__k_l2_kernel(const float *x, float *y, uint32_t rows, uint32_t dim, size_t ld_x,
                    size_t ld_y) {
  __shared__ float warp_sum[GL__K_L2_THREADS / 32];
  __shared__ float den;
  for (uint32_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float *xr = x + (size_t)r * ld_x;
    float *yr = y + (size_t)r * ld_y;
    float ss = 0;
    for (uint32_t i = threadIdx.x; i < dim; i += blockDim.x)
      ss = fmaf(xr[i], xr[i], ss);
    ss = gl__k_warp_sum(ss);
    if ((threadIdx.x & 31) == 0)
      warp_sum[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
      float v = threadIdx.x < GL__K_L2_THREADS / 32 ? warp_sum[threadIdx.x] : 0.0f;
      v = gl__k_warp_sum(v);
      if (threadIdx.x == 0) {
        const float norm = sqrtf(v);
        den = norm > GL__K_L2_EPS ? norm : GL__K_L2_EPS;
      }
    }
    __syncthreads();
    const float d = den;
    for (uint32_t i = threadIdx.x; i < dim; i += blockDim.x)
      yr[i] = __fdiv_rn(xr[i], d);
    /* warp_sum and den are reused by the next row. */
    __syncthreads();
  }
}

} // namespace

extern "C" cudaError_t gl__k_l2_normalize(const float *x, float *y, uint32_t rows, uint32_t dim,
                                          size_t ld_x, size_t ld_y, cudaStream_t stream) {
  if (rows == 0 || dim == 0 || ld_x < dim || ld_y < dim || !x || !y)
    return cudaErrorInvalidValue;
  const unsigned grid = rows > GL__K_MAX_BLOCKS ? GL__K_MAX_BLOCKS : rows;
  gl__k_l2_kernel<<<grid, GL__K_L2_THREADS, 0, stream>>>(x, y, rows, dim, ld_x, ld_y);
  return gl__k_launched();
}
