/* The op graph of a model (OPS.md section 3) and its memory plan.
 *
 * gl__nn_graph_build turns a config into a flat list of ops over a few
 * activation buffers; gl__nn_graph_plan sizes those buffers for the largest
 * batch once. Backends (backend.h) execute the list; nothing here knows how. */
#ifndef GL_NN_GRAPH_H
#define GL_NN_GRAPH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nn/model.h"

/* Activation buffers. Every tensor is NHWC float32 inside one of them, the
 * batch at offset 0. The backbone needs only three working buffers because
 * of how an inverted residual block uses them: expand A -> B, depthwise
 * B -> C, project C -> A (the residual add accumulates into A, which holds
 * the block input). Blocks run strictly in sequence, so role-based reuse is
 * as small as a liveness-based arena here and much easier to check. An OSM
 * runs right after its level's feature is produced, before a later block
 * overwrites it. */
enum gl__nn_buf {
  GL__NN_BUF_IMAGES, /* input pixels, uint8 RGB, packed image after image */
  GL__NN_BUF_X,      /* the backbone input [N, h, w, 3] */
  GL__NN_BUF_A,
  GL__NN_BUF_B,
  GL__NN_BUF_C,
  GL__NN_BUF_LEVELS, /* per-level descriptors [N, L, dim] before fusion */
  GL__NN_BUF_OUT,    /* descriptors [N, dim] */
  GL__NN_BUF_COUNT
};

struct gl__nn_tensor {
  enum gl__nn_buf buf;
  size_t off;          /* floats from the buffer start to image 0 */
  size_t image_stride; /* floats from one image to the next */
  uint32_t h, w, c;    /* pixels are contiguous, channels innermost */
};

enum gl__nn_op_kind {
  GL__NN_OP_RESIZE,       /* images -> dst: normalize, bilinear resize */
  GL__NN_OP_RESIZER_STEM, /* images -> dst: relu(stem conv) at input size, resized */
  GL__NN_OP_CONV,         /* src -> dst: conv + bias [+ dst] [+ activation] */
  GL__NN_OP_SK_MIX,       /* src, src2 -> dst: selective-kernel mixing */
  GL__NN_OP_SE,           /* dst *= squeeze-excitation(dst) */
  GL__NN_OP_ADD,          /* dst += src */
  GL__NN_OP_OSM,          /* src -> dst: one overlap scanning module */
  GL__NN_OP_FUSE,         /* src (per-level descriptors) -> dst */
  GL__NN_OP_L2NORM,       /* dst /= max(||dst||, eps) per pixel, in place */
};

struct gl__nn_osm_group {
  const float *q_w, *q_b, *k_w, *k_b, *v_w, *v_b; /* [d, d], [d] */
  const float *fc1_w, *fc1_b, *fc2_w, *fc2_b;     /* SE */
  const float *ov_w, *ov_b;                       /* overlap [1, d], [1] */
};

struct gl__nn_op {
  enum gl__nn_op_kind kind;
  char name[48]; /* the unit or module, for messages */
  /* Trace point of this op's output (OPS.md section 5), or "" for none. */
  char trace[48];
  struct gl__nn_tensor src, src2, dst;
  union {
    struct {
      uint32_t k, stride, dilation, groups;
      uint32_t pad_t, pad_b, pad_l, pad_r;
      enum gl__nn_act act;
      bool residual;      /* dst += conv(src): dst holds the block input */
      const float *w, *b; /* OIHW, [O] */
    } conv;
    struct {
      const float *mean, *std;
    } resize;
    struct {
      const float *mean, *std;
      const float *w, *b; /* [C, 3, 3, 3], [C]: 3x3, torch padding, relu */
    } stem;
    struct {
      uint32_t hidden;
      const float *fc_w, *fc_b, *sel_w, *sel_b;
    } sk;
    struct {
      uint32_t hidden;
      const float *fc1_w, *fc1_b, *fc2_w, *fc2_b;
    } se;
    struct {
      uint32_t level; /* index into config.levels, for trace names */
      uint32_t dim, groups, se_hidden, out_dim;
      enum gl__nn_pool pool;
      double gem_p;
      const float *proj_w, *proj_b;
      const struct gl__nn_osm_group *g; /* [groups] */
      const float *embed_w, *embed_b;
    } osm;
    struct {
      uint32_t levels;
      const float *w; /* fusion.weight [L] */
    } fuse;
  } p;
};

/* Called with an op's output for each image when tracing (tests only):
 * pixel (i, j) channel c is at data[(i * w + j) * pixel_stride + c]. */
typedef void (*gl__nn_trace_cb)(void *ud, const char *name, uint32_t image, const float *data,
                                uint32_t h, uint32_t w, uint32_t c, size_t pixel_stride);

#define GL__NN_MAX_PASS_SIZES 8

struct gl__nn_graph {
  const struct gl_nn_model *model;
  struct gl__nn_op *ops;
  size_t n_ops;
  struct gl__nn_osm_group *groups; /* storage for every OSM's groups */
  uint32_t max_batch;
  uint64_t max_pixels;
  /* Batch sizes the backend plans for: powers of two up to max_batch, in
   * decreasing order. A call with n images runs passes of these sizes
   * (n = 7 runs 4 + 2 + 1), so no work is done for images that are not
   * there and no primitive is created on the encode path. */
  uint32_t pass_sizes[GL__NN_MAX_PASS_SIZES];
  uint32_t n_pass_sizes;
  size_t buf_bytes[GL__NN_BUF_COUNT]; /* for max_batch images */
  size_t buf_off[GL__NN_BUF_COUNT];   /* inside the arena */
  size_t arena_bytes;
  uint8_t *arena; /* backend memory (host memory for the CPU backend) */
  gl__nn_trace_cb trace;
  void *trace_ud;
  uint32_t trace_first; /* index of the pass's first image in the call */
  /* A feature graph (feature_layer > 0) stops after that backbone block,
   * on inputs of exactly input_w x input_h pixels; feat is its output. */
  uint32_t feature_layer;
  struct gl__nn_tensor feat;
};

/* Builds the op list of m for images up to max_pixels and batches up to
 * max_batch, and sizes the buffers (arena not allocated). With
 * feature_layer > 0 the graph is the backbone up to that block, at an input
 * of in_w x in_h pixels (the images' own size: the resize op only
 * normalises); otherwise the descriptor graph at the model's input size. */
int gl__nn_graph_build(const struct gl_nn_model *m, uint32_t max_batch, uint64_t max_pixels,
                       uint32_t feature_layer, uint32_t in_w, uint32_t in_h,
                       struct gl__nn_graph *g, char *err, size_t errlen);
void gl__nn_graph_fini(struct gl__nn_graph *g);

/* Address of image n's tensor data inside the arena. */
static inline float *gl__nn_tensor_at(const struct gl__nn_graph *g, const struct gl__nn_tensor *t,
                                      uint32_t n) {
  return (float *)(void *)(g->arena + g->buf_off[t->buf]) + t->off + (size_t)n * t->image_stride;
}

/* Installs a trace callback on an engine (NULL to remove); tests use it to
 * compare intermediates with the PyTorch reference. */
struct gl_nn_engine;
void gl__nn_engine_set_trace(struct gl_nn_engine *e, gl__nn_trace_cb cb, void *ud);

#endif
