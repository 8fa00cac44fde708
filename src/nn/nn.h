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
/* The side of the square input the fine stage's cells of backbone block
 * `layer` are computed from (queries, and the map's dense layer at tile_m /
 * that metres a pixel; gl_nn_cells): when the dense head reads that block,
 * its size (config dense_head.size, else gl_nn_model_input_size) times k
 * for a fused block (k below), else gl_nn_model_input_size. */
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

/* --- the fine stage's cells ------------------------------------------------ */

/* What the fine stage compares (src/loc/fine.h, steps 2-3): the
 * L2-normalised cells of backbone block `layer` (through the model's dense
 * head when the head reads that block) on a square input of
 * gl_nn_model_fine_size pixels. When the head fuses a second block (config
 * dense_head.fuse_layer B, fuse_weight w), the input is k times the head's
 * size, k = block B's stride / the head block's: the head sees the image
 * averaged over k x k pixels (each mean rounded half up), block B the image
 * itself, so both give one grid of cells, and a cell is the head's unit
 * cell times sqrt(1 - w) followed by block B's raw unit cell times sqrt(w):
 * still a unit vector, and the cosine of two such cells is (1 - w) times the
 * head's cosine plus w times block B's. fine.py's cells and dense_features
 * are the reference. */
struct gl_nn_cells;

/* The tiled pass's blocks: this many pixels of each engine's own input
 * (for a fused head's block, of the input's k x k means), with the
 * block's margin of context on every side. */
#define GL_NN_CELLS_BLOCK 512u

/* Cells of block `layer` of m: for batches of up to max_batch images
 * (gl_nn_cells_compute), or with max_batch 0 for the tiled pass over map
 * canvases (gl_nn_cells_tiled). threads: CPU threads (0: all cores).
 * Returns 0, GL_EINVAL (no such block, or an input that is not a multiple
 * of its cells' stride), GL_ENOMEM or the engine's error. */
int gl_nn_cells_create(const struct gl_nn_model *m, uint32_t layer, uint32_t max_batch,
                       uint32_t threads, struct gl_nn_cells **out, char *err, size_t errlen);
void gl_nn_cells_destroy(struct gl_nn_cells *c);
/* The input side in pixels, the cells a side of one input, floats per cell,
 * and input pixels per cell. */
void gl_nn_cells_shape(const struct gl_nn_cells *c, uint32_t *size, uint32_t *side,
                       uint32_t *channels, uint32_t *stride);
/* The most context, in input pixels, that the tiled pass reads around a
 * block (gl_nn_model_feature_margin, at the input's scale). */
uint32_t gl_nn_cells_margin(const struct gl_nn_cells *c);
/* The cells of n images of exactly size x size pixels (n <= max_batch):
 * n * side * side * channels floats. Allocates nothing. Returns 0,
 * GL_EINVAL or the engine's error. */
int gl_nn_cells_compute(struct gl_nn_cells *c, const struct gl_image *images, uint32_t n,
                        float *out);
/* The cells of a canvas whose sides are multiples of the stride, by
 * gl_nn_engine_features_tiled (blocks of 512 pixels with each block's
 * margin): (height / stride) * (width / stride) * channels floats. A fused
 * pass allocates a canvas's worth of buffers: for building maps, not for
 * serving. Returns 0, GL_EINVAL, GL_ENOMEM or the engine's error. */
int gl_nn_cells_tiled(struct gl_nn_cells *c, const struct gl_image *image, float *out);

/* The backend in use ("cpu-onednn", "cuda"). */
const char *gl_nn_engine_backend_name(const struct gl_nn_engine *e);
/* The most images one call takes: the max_batch it was created with. */
uint32_t gl_nn_engine_max_batch(const struct gl_nn_engine *e);

#endif
