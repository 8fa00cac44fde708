/* Weighted pooling (see the header).
 *
 * Parallelisation: a block of 32x8 threads per (image, 32 channels). The 32
 * x-threads take consecutive channels, so each warp reads 128 contiguous
 * bytes of a pixel row; the 8 y-threads split the positions. Every thread
 * also sums the weights of its positions (a broadcast load within the
 * warp), which saves a separate reduction of m. The 8 partial sums per
 * channel meet in shared memory. With OSM groups of 128 channels at
 * 28x28, a batch of 1 gives 4 blocks per group: the backend should pool
 * all groups of a level in one launch (ld_x = D, ch = D) to fill the chip. */
#include <math.h>

#include "common.cuh"
#include "pool.cuh"

#define GL__K_POOL_EPS 1e-6f
#define GL__K_GEM_CLAMP 1e-6f
#define GL__K_POOL_X 32
#define GL__K_POOL_Y 8

namespace {

/* mode: 0 weighted mean, 1..3 GeM with that integer p, 4 GeM with powf. */
__global__ void __launch_bounds__(GL__K_POOL_X *GL__K_POOL_Y)
    gl__k_pool_kernel(const float *__restrict__ x, const float *__restrict__ m,
                      float *__restrict__ out, size_t hw, uint32_t ch, size_t ld_x, size_t ld_out,
                      int mode, float p, float inv_p) {
  __shared__ float acc_s[GL__K_POOL_Y][GL__K_POOL_X + 1];
  __shared__ float msum_s[GL__K_POOL_Y][GL__K_POOL_X + 1];
  const uint32_t b = blockIdx.y;
  const uint32_t c = blockIdx.x * GL__K_POOL_X + threadIdx.x;
  const float *xb = x + (size_t)b * hw * ld_x;
  const float *mb = m + (size_t)b * hw;
  float acc = 0, msum = 0;
  for (size_t pos = threadIdx.y; pos < hw; pos += GL__K_POOL_Y) {
    const float w = mb[pos];
    msum += w;
    if (c < ch) {
      float v = xb[pos * ld_x + c];
      if (mode != 0) {
        v = fmaxf(v, GL__K_GEM_CLAMP);
        v = mode == 1 ? v : mode == 2 ? v * v : mode == 3 ? v * v * v : powf(v, p);
      }
      acc = fmaf(w, v, acc);
    }
  }
  acc_s[threadIdx.y][threadIdx.x] = acc;
  msum_s[threadIdx.y][threadIdx.x] = msum;
  __syncthreads();
  if (threadIdx.y == 0 && c < ch) {
    float a = 0, s = 0;
    for (int k = 0; k < GL__K_POOL_Y; k++) {
      a += acc_s[k][threadIdx.x];
      s += msum_s[k][threadIdx.x];
    }
    float v = __fdiv_rn(a, s + GL__K_POOL_EPS);
    if (mode != 0)
      v = powf(v, inv_p);
    out[(size_t)b * ld_out + c] = v;
  }
}

cudaError_t gl__k_pool(const float *x, const float *m, float *out, uint32_t batch, size_t hw,
                       uint32_t ch, size_t ld_x, size_t ld_out, int mode, double p,
                       cudaStream_t stream) {
  if (batch == 0 || batch > GL__K_MAX_BLOCKS || hw == 0 || ch == 0 || ld_x < ch || ld_out < ch ||
      !x || !m || !out)
    return cudaErrorInvalidValue;
  const dim3 block(GL__K_POOL_X, GL__K_POOL_Y);
  const dim3 grid((ch + GL__K_POOL_X - 1) / GL__K_POOL_X, batch);
  gl__k_pool_kernel<<<grid, block, 0, stream>>>(x, m, out, hw, ch, ld_x, ld_out, mode, (float)p,
                                                (float)(1.0 / p));
  return gl__k_launched();
}

} // namespace

extern "C" cudaError_t gl__k_weighted_mean_pool(const float *x, const float *m, float *out,
                                                uint32_t batch, size_t hw, uint32_t ch,
                                                size_t ld_x, size_t ld_out, cudaStream_t stream) {
  return gl__k_pool(x, m, out, batch, hw, ch, ld_x, ld_out, 0, 1.0, stream);
}

extern "C" cudaError_t gl__k_weighted_gem_pool(const float *x, const float *m, float *out,
                                               uint32_t batch, size_t hw, uint32_t ch,
                                               size_t ld_x, size_t ld_out, double p,
                                               cudaStream_t stream) {
  if (!(p > 0))
    return cudaErrorInvalidValue;
  const int mode = p == 1.0 ? 1 : p == 2.0 ? 2 : p == 3.0 ? 3 : 4;
  return gl__k_pool(x, m, out, batch, hw, ch, ld_x, ld_out, mode, p, stream);
}
