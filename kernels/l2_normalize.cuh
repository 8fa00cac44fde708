/* l2_normalize over the rows of a matrix (OPS.md). Declarations usable from C. */
#ifndef GL_KERNELS_L2_NORMALIZE_CUH
#define GL_KERNELS_L2_NORMALIZE_CUH

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* y[r] = x[r] / max(||x[r]||_2, 1e-12) for each of `rows` rows of `dim`
 * floats; rows are ld_x (ld_y) floats apart. x and y are device pointers
 * and may be equal (in place). Returns cudaErrorInvalidValue for a bad
 * shape, else the launch error. */
cudaError_t gl__k_l2_normalize(const float *x, float *y, uint32_t rows, uint32_t dim, size_t ld_x,
                               size_t ld_y, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
