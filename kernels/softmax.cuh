/* softmax over the rows of a matrix (OPS.md softmax, spatial_attention).
 * Declarations usable from C. */
#ifndef GL_KERNELS_SOFTMAX_CUH
#define GL_KERNELS_SOFTMAX_CUH

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* For each of `rows` rows of n floats: s = x / scale (a division, as the
 * reference divides the attention scores by sqrt(d); pass 1 for a plain
 * softmax), y = exp(s - max s) / sum exp(s - max s). Rows are ld_x (ld_y)
 * floats apart; device pointers, x == y allowed. Returns
 * cudaErrorInvalidValue for a bad shape, else the launch error. */
cudaError_t gl__k_softmax_rows(const float *x, float *y, uint32_t rows, uint32_t n, size_t ld_x,
                               size_t ld_y, float scale, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
