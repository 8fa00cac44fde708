/* resize_normalize (see the header).
 *
 * Parallelisation: one thread per output pixel (all three channels), 32x8
 * blocks over (x, y), so a warp writes 32 consecutive pixels (384 bytes,
 * coalesced). The op is tiny (224x224x3 floats out) and memory-bound;
 * each thread recomputes its row and column source positions instead of
 * reading precomputed tables, which costs a handful of float64 operations
 * and no extra launch or buffer.
 *
 * Exactness: the reference (gl__cpu_resize, PyTorch 1.13) evaluates the
 * source position in float64 and the interpolation without fused
 * multiply-adds. nvcc contracts a*b+c into an FMA by default, which would
 * change the last bit, so every step uses the explicitly rounded
 * intrinsics (__dmul_rn, __fmul_rn, ...), which are never contracted. */
#include "common.cuh"
#include "resize_normalize.cuh"

namespace {

struct gl__k_tap {
  uint32_t i0, i1;
  float l0, l1;
};

/* gl__cpu_axis_init for one output index. */
__device__ __forceinline__ gl__k_tap gl__k_axis(uint32_t in, uint32_t out, uint32_t o) {
  const double scale = (double)__fdiv_rn((float)in, (float)out);
  double src = __dadd_rn(__dmul_rn(scale, (double)o + 0.5), -0.5);
  if (src < 0)
    src = 0;
  uint32_t i0 = (uint32_t)src;
  if (i0 > in - 1)
    i0 = in - 1;
  double l1 = src - (double)i0;
  l1 = l1 < 0 ? 0 : l1 > 1 ? 1 : l1;
  gl__k_tap t;
  t.i0 = i0;
  t.i1 = i0 < in - 1 ? i0 + 1 : i0;
  t.l1 = __double2float_rn(l1);
  t.l0 = 1.0f - t.l1;
  return t;
}

__device__ __forceinline__ float gl__k_norm1(uint8_t v, float mean, float std) {
  return __fdiv_rn(__fsub_rn((float)v, mean), std);
}

__global__ void gl__k_resize_normalize_kernel(const uint8_t *__restrict__ rgb, uint32_t width,
                                              uint32_t height, gl__k_norm norm, uint32_t out_h,
                                              uint32_t out_w, float *__restrict__ dst) {
  const uint32_t ox = blockIdx.x * blockDim.x + threadIdx.x;
  const uint32_t oy = blockIdx.y * blockDim.y + threadIdx.y;
  if (ox >= out_w || oy >= out_h)
    return;
  const gl__k_tap th = gl__k_axis(height, out_h, oy), tw = gl__k_axis(width, out_w, ox);
  const size_t stride = (size_t)width * 3;
  const uint8_t *r0 = rgb + th.i0 * stride, *r1 = rgb + th.i1 * stride;
  const size_t c0 = (size_t)tw.i0 * 3, c1 = (size_t)tw.i1 * 3;
  float *out = dst + ((size_t)oy * out_w + ox) * 3;
#pragma unroll
  for (int c = 0; c < 3; c++) {
    const float m = norm.mean[c], s = norm.std[c];
    const float x00 = gl__k_norm1(r0[c0 + c], m, s), x01 = gl__k_norm1(r0[c1 + c], m, s);
    const float x10 = gl__k_norm1(r1[c0 + c], m, s), x11 = gl__k_norm1(r1[c1 + c], m, s);
    /* (x00*l0w + x01*l1w)*l0h + (x10*l0w + x11*l1w)*l1h, the CPU's order. */
    const float top = __fadd_rn(__fmul_rn(x00, tw.l0), __fmul_rn(x01, tw.l1));
    const float bot = __fadd_rn(__fmul_rn(x10, tw.l0), __fmul_rn(x11, tw.l1));
    out[c] = __fadd_rn(__fmul_rn(top, th.l0), __fmul_rn(bot, th.l1));
  }
}

} // namespace

extern "C" cudaError_t gl__k_resize_normalize(const uint8_t *rgb, uint32_t width, uint32_t height,
                                              const struct gl__k_norm *norm, uint32_t out_h,
                                              uint32_t out_w, float *dst, cudaStream_t stream) {
  if (width == 0 || height == 0 || out_h == 0 || out_w == 0 || !rgb || !dst || !norm)
    return cudaErrorInvalidValue;
  const dim3 block(32, 8);
  const dim3 grid((out_w + block.x - 1) / block.x, (out_h + block.y - 1) / block.y);
  if (grid.y > GL__K_MAX_BLOCKS)
    return cudaErrorInvalidValue;
  gl__k_resize_normalize_kernel<<<grid, block, 0, stream>>>(rgb, width, height, *norm, out_h,
                                                            out_w, dst);
  return gl__k_launched();
}
