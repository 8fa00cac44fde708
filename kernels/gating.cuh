/* Sigmoid gating (OPS.md sigmoid, mul_map, mul_channel): the overlap map
 * and squeeze-excitation products. Declarations usable from C. */
#ifndef GL_KERNELS_GATING_CUH
#define GL_KERNELS_GATING_CUH

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* y[i] = 1 / (1 + exp(-x[i])) for n floats (device pointers, x == y allowed). */
cudaError_t gl__k_sigmoid(const float *x, float *y, size_t n, cudaStream_t stream);

/* mul_map on NHWC tensors: for image b, position p < hw, channel c < ch,
 * y[(b*hw + p)*ld_y + c] = x[(b*hw + p)*ld_x + c] * g(m[b*hw + p]), where
 * g is sigmoid when apply_sigmoid is nonzero, else the identity. ld_x and
 * ld_y >= ch let x and y be a channel group inside a wider tensor.
 * Returns cudaErrorInvalidValue for a bad shape, else the launch error. */
cudaError_t gl__k_mul_map(const float *x, const float *m, float *y, uint32_t batch, size_t hw,
                          uint32_t ch, size_t ld_x, size_t ld_y, int apply_sigmoid,
                          cudaStream_t stream);

/* mul_channel, same layout: y[...c] = x[...c] * g(e[b*ch + c]). */
cudaError_t gl__k_mul_channel(const float *x, const float *e, float *y, uint32_t batch, size_t hw,
                              uint32_t ch, size_t ld_x, size_t ld_y, int apply_sigmoid,
                              cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
