/* The neural engine: geoloc models (safetensors with an architecture config,
 * see python/geoloc_train/OPS.md) turned into descriptors.
 *
 * A model is loaded once and is immutable; an engine plans its memory for a
 * backend and a maximum batch once, at creation, and encoding allocates
 * nothing. One engine is used by one thread at a time; a model can back
 * several engines. */
#ifndef GL_NN_NN_H
#define GL_NN_NN_H

#include <stddef.h>
#include <stdint.h>

#include "img/img.h"

struct gl_nn_model;
struct gl_nn_engine;

/* Loads and validates a model file: header, JSON, dtypes, shapes against the
 * config, offsets inside the file, no overlaps. A bad file is GL_EFORMAT with
 * err saying what is wrong; an unreadable one GL_ENOENT or GL_EIO. Batch-norm
 * is folded into the convolutions here. */
int gl_nn_model_load(const char *path, struct gl_nn_model **out, char *err, size_t errlen);
void gl_nn_model_destroy(struct gl_nn_model *m);

/* The architecture config as stored in the file (JSON text). */
const char *gl_nn_model_config_json(const struct gl_nn_model *m);
/* Number of scalar parameters in the file. */
uint64_t gl_nn_model_param_count(const struct gl_nn_model *m);
/* Floats per descriptor (0 for a model without a descriptor head). */
uint32_t gl_nn_model_descriptor_dim(const struct gl_nn_model *m);
/* Headings the map builder encodes each reference tile at (config
 * ref_rotations: 1, 2 or 4, quarter turns apart for 4). */
uint32_t gl_nn_model_ref_rotations(const struct gl_nn_model *m);
/* SHA-256 of the model file, as 64 lowercase hex digits. */
const char *gl_nn_model_sha256(const struct gl_nn_model *m);
/* The network input in pixels, config input_size ([height, width], or one
 * side for a square; 224 when absent). */
void gl_nn_model_input_dims(const struct gl_nn_model *m, uint32_t *width, uint32_t *height);
/* Its width: the side of the square input the fine stage, the daemon and
 * the map builder's dense layer take. */
uint32_t gl_nn_model_input_size(const struct gl_nn_model *m);
/* The side of the square input the fine stage runs backbone block `layer`
 * on (queries, and the map's dense layer at tile_m / that metres a pixel):
 * the dense head's size (config dense_head.size) when the head reads that
 * block and has one, else gl_nn_model_input_size. */
uint32_t gl_nn_model_fine_size(const struct gl_nn_model *m, uint32_t layer);
/* The block the fine stage reads by default: the dense head's (config
 * dense_head.layer), else 6. */
uint32_t gl_nn_model_dense_layer(const struct gl_nn_model *m);
/* Context in pixels on each side of a block in a tiled pass over block
 * `layer` (gl_nn_engine_features_tiled) so that blocks join exactly: the
 * block's reach ((receptive field - 1) / 2) plus one cell for a dense
 * head's 3x3, rounded up to a multiple of its stride, and at least 64 (64
 * for blocks 1-6, 112 for block 10; fine.py layer_margin). 0 for a layer
 * outside 1..17. */
uint32_t gl_nn_model_feature_margin(const struct gl_nn_model *m, uint32_t layer);
/* Total stride (pixels per cell) and channels of backbone block `layer`
 * (1..17); for the block the model's dense head reads (config dense_head),
 * the head's output channels, which a feature engine of that block
 * computes. Returns 0 or GL_EINVAL. */
int gl_nn_model_feature_shape(const struct gl_nn_model *m, uint32_t layer, uint32_t *stride,
                              uint32_t *channels);

enum gl_nn_backend_kind {
  GL_NN_BACKEND_CPU = 0,
  GL_NN_BACKEND_CUDA = 1,
};

struct gl_nn_engine_opts {
  enum gl_nn_backend_kind backend;
  uint32_t max_batch;  /* images per gl_nn_engine_encode call; 0 means 1 */
  uint32_t threads;    /* CPU backend threads; 0 means all cores */
  /* Largest input image in pixels (width*height) the engine accepts; it
   * sizes the buffers of ops that run at the input's own resolution. 0 means
   * 1920*1080. */
  uint64_t max_input_pixels;
  /* 0: the engine computes descriptors (gl_nn_engine_encode). L in 1..17:
   * it computes the feature map of backbone block L instead
   * (gl_nn_engine_features), on images of exactly input_w x input_h pixels
   * (0: the model's input size), which must be multiples of the layer's
   * stride; max_input_pixels is then that size. */
  uint32_t feature_layer;
  uint32_t input_w, input_h;
};

/* Plans the graph of m on a backend. Returns GL_ENOTSUP for a backend this
 * build or machine lacks (the caller may fall back to the CPU). */
int gl_nn_engine_create(const struct gl_nn_model *m, const struct gl_nn_engine_opts *opts,
                        struct gl_nn_engine **out, char *err, size_t errlen);
void gl_nn_engine_destroy(struct gl_nn_engine *e);

/* Computes the descriptors of n images (n <= max_batch, each of any size up
 * to max_input_pixels) into out, n * descriptor_dim floats, L2-normalised.
 * Returns 0, GL_EINVAL (bad n or image size) or GL_EGPU. */
int gl_nn_engine_encode(struct gl_nn_engine *e, const struct gl_image *images, uint32_t n,
                        float *out);

/* Computes the feature maps of n images (n <= max_batch, each exactly the
 * engine's input size) into out: n * rows * cols * channels floats, cells
 * row-major, channels innermost, every cell L2-normalised (a zero cell
 * stays zero). Only for an engine created with feature_layer. Returns 0,
 * GL_EINVAL or GL_EGPU. */
int gl_nn_engine_features(struct gl_nn_engine *e, const struct gl_image *images, uint32_t n,
                          float *out);
/* Shape of one image's feature map of a feature engine, and the layer's
 * stride in pixels (zeros for a descriptor engine). */
void gl_nn_engine_feature_shape(const struct gl_nn_engine *e, uint32_t *rows, uint32_t *cols,
                                uint32_t *channels, uint32_t *stride);

/* Dense features of an image of any size whose sides are multiples of the
 * layer's stride s (a map's reference raster): the image is cut into blocks
 * of (N - 2 margin) pixels, N the feature engine's square input, each run
 * with `margin` pixels of context on every side (pixels outside the image
 * are reflected into it, the edge pixel not repeated), and each block keeps
 * the cells of its own pixels. With a margin of at least half the layer's
 * receptive field the blocks join as one pass over the whole image would.
 * scratch holds N * N * 3 bytes plus (N/s)^2 * C floats
 * (gl_nn_tiled_scratch_bytes); out gets (H/s) * (W/s) * C floats, cells
 * L2-normalised. Returns 0, GL_EINVAL (sizes) or the engine's error. */
size_t gl_nn_tiled_scratch_bytes(const struct gl_nn_engine *e);
int gl_nn_engine_features_tiled(struct gl_nn_engine *e, uint32_t margin,
                                const struct gl_image *image, void *scratch, float *out);

/* The backend in use ("cpu-onednn", "cuda"). */
const char *gl_nn_engine_backend_name(const struct gl_nn_engine *e);
/* The most images one call takes: the max_batch it was created with. */
uint32_t gl_nn_engine_max_batch(const struct gl_nn_engine *e);

#endif
