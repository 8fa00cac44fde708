/* Weighted mean and weighted GeM pooling (OPS.md weighted_mean_pool,
 * weighted_gem_pool). Declarations usable from C. */
#ifndef GL_KERNELS_POOL_CUH
#define GL_KERNELS_POOL_CUH

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* x: NHWC device tensor, image b position p channel c at
 * x[(b*hw + p)*ld_x + c] (ld_x >= ch: a channel group of a wider tensor);
 * m: weights m[b*hw + p] (the overlap map, already through its sigmoid);
 * out[b*ld_out + c] = sum_p m*x / (sum_p m + 1e-6). */
cudaError_t gl__k_weighted_mean_pool(const float *x, const float *m, float *out, uint32_t batch,
                                     size_t hw, uint32_t ch, size_t ld_x, size_t ld_out,
                                     cudaStream_t stream);

/* The same pooling of max(x, 1e-6)^p, then the 1/p power (p > 0; p = 1, 2
 * and 3 are computed by multiplication, as PyTorch does). */
cudaError_t gl__k_weighted_gem_pool(const float *x, const float *m, float *out, uint32_t batch,
                                    size_t hw, uint32_t ch, size_t ld_x, size_t ld_out, double p,
                                    cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
