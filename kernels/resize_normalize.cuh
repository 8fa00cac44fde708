/* resize_normalize: an RGB image to the network input (OPS.md normalize,
 * then resize_bilinear). Declarations usable from C. */
#ifndef GL_KERNELS_RESIZE_NORMALIZE_CUH
#define GL_KERNELS_RESIZE_NORMALIZE_CUH

#include <cuda_runtime_api.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Per-channel normalisation constants, (x - mean[c]) / std[c]. */
struct gl__k_norm {
  float mean[3];
  float std[3];
};

/* rgb: device pointer to a packed uint8 RGB image [height, width, 3] (rows
 * width * 3 bytes apart), width, height >= 1. dst: device pointer to float
 * [out_h, out_w, 3] (NHWC, one image; offset it for an image of a batch).
 * Normalises then resizes bilinearly with align_corners=False, exactly as
 * OPS.md and gl__cpu_resize compute it (bit for bit). norm is read on the
 * host at launch. Returns cudaErrorInvalidValue for empty sizes, else the
 * launch error. */
cudaError_t gl__k_resize_normalize(const uint8_t *rgb, uint32_t width, uint32_t height,
                                   const struct gl__k_norm *norm, uint32_t out_h, uint32_t out_w,
                                   float *dst, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
