/* The CPU backend: oneDNN convolutions in NHWC with fused post-ops, OpenBLAS
 * GEMMs for the attention and linear layers, own kernels (cpu_ops.c) for
 * the rest.
 *
 * Everything is created at plan time: one oneDNN primitive per (conv op,
 * planned batch size) with its memory objects bound to the arena, weights
 * reordered once into the layout the primitive wants, and one user-managed
 * scratchpad shared by all primitives (they run one after the other). The
 * compute path only executes. */
#include <cblas.h>
#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "nn/backend.h"
#include "nn/cpu/cpu_ops.h"
#include "nn/nn_internal.h"

#define GL__MAX_WFMT 4

struct gl__cpu_conv {
  dnnl_primitive_desc_t pd;
  dnnl_primitive_t prim;
  dnnl_memory_t mem[5];
  dnnl_exec_arg_t args[5];
  int nargs;
};

/* Weights of one conv op in one oneDNN layout (usually one per op: the
 * layout rarely depends on the batch size). */
struct gl__cpu_wfmt {
  dnnl_memory_desc_t md;
  void *data;
  bool owned;
};

struct gl__cpu_ctx {
  uint32_t threads;
  dnnl_engine_t eng;
  dnnl_stream_t stream;
  size_t n_ops, n_sizes;
  struct gl__cpu_conv *conv; /* [n_sizes][n_ops]; pd NULL for other ops */
  struct gl__cpu_wfmt (*wf)[GL__MAX_WFMT];
  void *scratchpad;
  struct gl__cpu_pre pre;
  struct gl__cpu_osm_scratch osm;
  float *tmp;
  void *own; /* one allocation behind pre, osm and tmp */
};

/* --- vtable: memory --------------------------------------------------- */

static int gl__cpu_alloc(void *ctx, size_t bytes, void **out) {
  (void)ctx;
  void *p = gl__nn_alloc(bytes);
  if (!p)
    return GL_ENOMEM;
  /* Buffers are only read after being written, but zeroing here costs
   * nothing per encode and keeps sanitizers and debuggers quiet. */
  memset(p, 0, bytes);
  *out = p;
  return 0;
}

static int gl__cpu_copy(void *ctx, void *dst, const void *src, size_t bytes) {
  (void)ctx;
  memcpy(dst, src, bytes);
  return 0;
}

static void gl__cpu_free(void *ctx, void *ptr) {
  (void)ctx;
  free(ptr);
}

static int gl__cpu_synchronize(void *ctx) {
  struct gl__cpu_ctx *c = ctx;
  return dnnl_stream_wait(c->stream) == dnnl_success ? 0 : GL_EINTERNAL;
}

static bool gl__cpu_supports_op(void *ctx, const struct gl__nn_op *op) {
  (void)ctx;
  switch (op->kind) {
  case GL__NN_OP_RESIZE:
  case GL__NN_OP_RESIZER_STEM:
  case GL__NN_OP_CONV:
  case GL__NN_OP_SK_MIX:
  case GL__NN_OP_SE:
  case GL__NN_OP_ADD:
  case GL__NN_OP_OSM:
  case GL__NN_OP_FUSE:
  case GL__NN_OP_L2NORM:
    return true;
  }
  return false;
}

/* --- plan ------------------------------------------------------------- */

#define GL__DNNL(call, what)                                                                       \
  do {                                                                                             \
    dnnl_status_t st_ = (call);                                                                    \
    if (st_ != dnnl_success) {                                                                     \
      rc = gl_fail(err, errlen, GL_EINTERNAL, "oneDNN: %s failed for '%s' (status %d)", what,  \
                       op->name, (int)st_);                                                        \
      goto out;                                                                                    \
    }                                                                                              \
  } while (0)

static void gl__conv_dims(const struct gl__nn_op *op, dnnl_dims_t wd, int *wnd) {
  uint32_t g = op->p.conv.groups, k = op->p.conv.k;
  if (g > 1) { /* grouped (depthwise): goihw */
    wd[0] = g;
    wd[1] = op->dst.c / g;
    wd[2] = op->src.c / g;
    wd[3] = k;
    wd[4] = k;
    *wnd = 5;
  } else {
    wd[0] = op->dst.c;
    wd[1] = op->src.c;
    wd[2] = k;
    wd[3] = k;
    *wnd = 4;
  }
}

/* Creates the primitive descriptor of a conv op for batch n. */
static int gl__conv_pd(struct gl__cpu_ctx *c, const struct gl__nn_op *op, uint32_t n,
                       dnnl_primitive_desc_t *pd, char *err, size_t errlen) {
  int rc = 0;
  dnnl_post_ops_t po = NULL;
  dnnl_primitive_attr_t attr = NULL;
  dnnl_memory_desc_t src, wei, bias, dst;
  dnnl_dims_t sd = {n, op->src.c, op->src.h, op->src.w};
  dnnl_dims_t dd = {n, op->dst.c, op->dst.h, op->dst.w};
  dnnl_dims_t bd = {op->dst.c};
  dnnl_dims_t wd;
  int wnd;
  gl__conv_dims(op, wd, &wnd);
  GL__DNNL(dnnl_memory_desc_init_by_tag(&src, 4, sd, dnnl_f32, dnnl_nhwc), "src desc");
  GL__DNNL(dnnl_memory_desc_init_by_tag(&dst, 4, dd, dnnl_f32, dnnl_nhwc), "dst desc");
  GL__DNNL(dnnl_memory_desc_init_by_tag(&bias, 1, bd, dnnl_f32, dnnl_x), "bias desc");
  GL__DNNL(dnnl_memory_desc_init_by_tag(&wei, wnd, wd, dnnl_f32, dnnl_format_tag_any),
           "weights desc");
  dnnl_dims_t strides = {op->p.conv.stride, op->p.conv.stride};
  /* oneDNN counts dilation from 0 (0 = dense), PyTorch from 1. */
  dnnl_dims_t dil = {op->p.conv.dilation - 1, op->p.conv.dilation - 1};
  dnnl_dims_t pl = {op->p.conv.pad_t, op->p.conv.pad_l};
  dnnl_dims_t pr = {op->p.conv.pad_b, op->p.conv.pad_r};
  dnnl_convolution_desc_t desc;
  GL__DNNL(dnnl_dilated_convolution_forward_desc_init(&desc, dnnl_forward_inference,
                                                      dnnl_convolution_direct, &src, &wei, &bias,
                                                      &dst, strides, dil, pl, pr),
           "convolution desc");

  /* Post-ops in the reference's order: the residual add (a project conv
   * has no activation), then the activation. */
  GL__DNNL(dnnl_post_ops_create(&po), "post-ops");
  if (op->p.conv.residual)
    GL__DNNL(dnnl_post_ops_append_sum(po, 1.0f), "sum post-op");
  if (op->p.conv.act == GL__NN_ACT_RELU)
    GL__DNNL(dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_relu, 0.0f, 0.0f), "relu");
  else if (op->p.conv.act == GL__NN_ACT_RELU6)
    GL__DNNL(dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_clip, 0.0f, 6.0f), "relu6");
  GL__DNNL(dnnl_primitive_attr_create(&attr), "attr");
  GL__DNNL(dnnl_primitive_attr_set_post_ops(attr, po), "attr post-ops");
  GL__DNNL(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user),
           "scratchpad mode");
  GL__DNNL(dnnl_primitive_desc_create(pd, &desc, attr, c->eng, NULL), "primitive desc");
out:
  if (attr)
    dnnl_primitive_attr_destroy(attr);
  if (po)
    dnnl_post_ops_destroy(po);
  return rc;
}

/* The op's weights in the layout `want`: the model's own array when the
 * layout is plain, else a reordered copy made once and shared by every
 * batch size that wants the same layout. */
static int gl__weights(struct gl__cpu_ctx *c, size_t i, const struct gl__nn_op *op,
                       const dnnl_memory_desc_t *want, void **out, char *err, size_t errlen) {
  int rc = 0;
  dnnl_memory_t from = NULL, to = NULL;
  dnnl_primitive_desc_t rpd = NULL;
  dnnl_primitive_t reorder = NULL;
  struct gl__cpu_wfmt *wf = c->wf[i];
  int k = 0;
  for (; k < GL__MAX_WFMT && wf[k].data; k++) {
    if (dnnl_memory_desc_equal(&wf[k].md, want)) {
      *out = wf[k].data;
      return 0;
    }
  }
  if (k == GL__MAX_WFMT)
    return gl_fail(err, errlen, GL_EINTERNAL, "oneDNN: too many weight layouts for '%s'",
                       op->name);
  dnnl_memory_desc_t user;
  dnnl_dims_t wd;
  int wnd;
  gl__conv_dims(op, wd, &wnd);
  GL__DNNL(
      dnnl_memory_desc_init_by_tag(&user, wnd, wd, dnnl_f32, wnd == 5 ? dnnl_goihw : dnnl_oihw),
      "user weights desc");
  wf[k].md = *want;
  if (dnnl_memory_desc_equal(&user, want)) {
    /* oneDNN only reads weights; the cast drops const for its API. */
    wf[k].data = (void *)(uintptr_t)op->p.conv.w;
    *out = wf[k].data;
    return 0;
  }
  if (!(wf[k].data = gl__nn_alloc(dnnl_memory_desc_get_size(want))))
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  wf[k].owned = true;
  GL__DNNL(dnnl_memory_create(&from, &user, c->eng, (void *)(uintptr_t)op->p.conv.w),
           "weights memory");
  GL__DNNL(dnnl_memory_create(&to, want, c->eng, wf[k].data), "weights memory");
  GL__DNNL(dnnl_reorder_primitive_desc_create(&rpd, &user, c->eng, want, c->eng, NULL),
           "weights reorder desc");
  GL__DNNL(dnnl_primitive_create(&reorder, rpd), "weights reorder");
  dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
  GL__DNNL(dnnl_primitive_execute(reorder, c->stream, 2, args), "weights reorder");
  GL__DNNL(dnnl_stream_wait(c->stream), "weights reorder");
  *out = wf[k].data;
out:
  if (reorder)
    dnnl_primitive_destroy(reorder);
  if (rpd)
    dnnl_primitive_desc_destroy(rpd);
  if (to)
    dnnl_memory_destroy(to);
  if (from)
    dnnl_memory_destroy(from);
  return rc;
}

/* Binds a planned conv to the arena, its weights and the scratchpad. */
static int gl__conv_bind(struct gl__cpu_ctx *c, const struct gl__nn_graph *g, size_t i,
                         struct gl__cpu_conv *cv, char *err, size_t errlen) {
  int rc = 0;
  const struct gl__nn_op *op = &g->ops[i];
  const dnnl_query_t q[4] = {dnnl_query_src_md, dnnl_query_weights_md, dnnl_query_weights_md,
                             dnnl_query_dst_md};
  const int qi[4] = {0, 0, 1, 0}; /* bias is weights md #1 */
  const int arg[4] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_BIAS, DNNL_ARG_DST};
  void *wdata = NULL;
  const dnnl_memory_desc_t *wmd = dnnl_primitive_desc_query_md(cv->pd, dnnl_query_weights_md, 0);
  if ((rc = gl__weights(c, i, op, wmd, &wdata, err, errlen)))
    return rc;
  void *handles[4] = {gl__nn_tensor_at(g, &op->src, 0), wdata, (void *)(uintptr_t)op->p.conv.b,
                      gl__nn_tensor_at(g, &op->dst, 0)};
  for (int k = 0; k < 4; k++) {
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(cv->pd, q[k], qi[k]);
    GL__DNNL(dnnl_memory_create(&cv->mem[k], md, c->eng, handles[k]), "memory");
    cv->args[k] = (dnnl_exec_arg_t){arg[k], cv->mem[k]};
  }
  const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(cv->pd, dnnl_query_scratchpad_md, 0);
  GL__DNNL(dnnl_memory_create(&cv->mem[4], smd, c->eng, c->scratchpad), "scratchpad memory");
  cv->args[4] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, cv->mem[4]};
  cv->nargs = 5;
  GL__DNNL(dnnl_primitive_create(&cv->prim, cv->pd), "primitive");
out:
  return rc;
}

/* Carves the own kernels' scratch out of base, or with base NULL only
 * counts the floats it needs. Pieces are 64-byte aligned. */
static size_t gl__own_layout(struct gl__cpu_ctx *c, const struct gl__nn_graph *g, float *base) {
  const struct gl__nn_config *cfg = &g->model->cfg;
  /* The network input: the model's input size, or a feature graph's own. */
  const uint32_t h = g->ops[0].dst.h, w = g->ops[0].dst.w;
  const uint32_t C = cfg->resizer ? cfg->resizer_channels : 0;
  size_t off = 0;
#define GL__TAKE(ptr, type, n)                                                                     \
  do {                                                                                             \
    if (base)                                                                                      \
      (ptr) = (type *)(void *)(base + off);                                                        \
    off += ((size_t)(n) + 15) / 16 * 16;                                                           \
  } while (0)
  struct gl__cpu_pre *p = &c->pre;
  GL__TAKE(p->ax_h.i0, uint32_t, h);
  GL__TAKE(p->ax_h.i1, uint32_t, h);
  GL__TAKE(p->ax_h.l0, float, h);
  GL__TAKE(p->ax_h.l1, float, h);
  GL__TAKE(p->ax_w.i0, uint32_t, w);
  GL__TAKE(p->ax_w.i1, uint32_t, w);
  GL__TAKE(p->ax_w.l0, float, w);
  GL__TAKE(p->ax_w.l1, float, w);
  if (C) {
    /* The stem grid has at most 2 rows per output row and never more rows
     * than the input; likewise for columns. */
    size_t grid = (size_t)2 * h * 2 * w;
    if (grid > g->max_pixels)
      grid = g->max_pixels;
    GL__TAKE(p->rows, uint32_t, 2 * (size_t)h);
    GL__TAKE(p->cols, uint32_t, 2 * (size_t)w);
    GL__TAKE(p->g0h, uint32_t, h);
    GL__TAKE(p->g1h, uint32_t, h);
    GL__TAKE(p->g0w, uint32_t, w);
    GL__TAKE(p->g1w, uint32_t, w);
    GL__TAKE(p->grid, float, grid *C);
    GL__TAKE(p->stem_wt, float, 27 * (size_t)C);
  }
  size_t hw = 0, d = 0, D = 0, out = 0, proj = 0;
  for (size_t i = 0; i < g->n_ops; i++) {
    const struct gl__nn_op *op = &g->ops[i];
    if (op->kind != GL__NN_OP_OSM)
      continue;
    size_t n = (size_t)op->src.h * op->src.w;
    hw = n > hw ? n : hw;
    proj = n * op->p.osm.dim > proj ? n * op->p.osm.dim : proj;
    D = op->p.osm.dim;
    d = D / op->p.osm.groups;
    out = op->p.osm.out_dim;
  }
  /* SE and SK vectors: 3 * channels + hidden at most; fusion: one descriptor. */
  size_t tmp = 4 * (size_t)(D > C ? D : C) + 64;
  tmp = tmp > out ? tmp : out;
  GL__TAKE(c->tmp, float, tmp);
  GL__TAKE(c->osm.p, float, proj * g->max_batch);
  GL__TAKE(c->osm.cat, float, D * g->max_batch);
  GL__TAKE(c->osm.emb, float, out);
  for (uint32_t t = 0; t < c->threads && hw; t++) {
    struct gl__cpu_osm_thread *th = base ? &c->osm.thr[t] : NULL;
    struct gl__cpu_osm_thread dummy;
    if (!th)
      th = &dummy;
    GL__TAKE(th->q, float, hw *d);
    GL__TAKE(th->k, float, hw *d);
    GL__TAKE(th->v, float, hw *d);
    GL__TAKE(th->s, float, hw *hw);
    GL__TAKE(th->m, float, hw);
    GL__TAKE(th->tmp, float, tmp);
  }
#undef GL__TAKE
  return off;
}

static int gl__own_scratch(struct gl__cpu_ctx *c, const struct gl__nn_graph *g, char *err,
                           size_t errlen) {
  const struct gl__nn_config *cfg = &g->model->cfg;
  if (!(c->osm.thr = calloc(c->threads, sizeof *c->osm.thr)))
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  c->osm.threads = c->threads;
  size_t total = gl__own_layout(c, g, NULL);
  float *base = c->own = gl__nn_alloc(total * sizeof(float));
  if (!base)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory for %zu bytes of scratch",
                       total * sizeof(float));
  memset(base, 0, total * sizeof(float));
  gl__own_layout(c, g, base);
  struct gl__cpu_pre *p = &c->pre;
  p->h = g->ops[0].dst.h;
  p->w = g->ops[0].dst.w;
  p->c = cfg->resizer ? cfg->resizer_channels : 0;
  for (int ch = 0; ch < 3; ch++)
    for (int v = 0; v < 256; v++)
      p->lut[ch][v] = ((float)v - cfg->mean[ch]) / cfg->std[ch];
  for (size_t i = 0; i < g->n_ops; i++) {
    const struct gl__nn_op *op = &g->ops[i];
    if (op->kind != GL__NN_OP_RESIZER_STEM)
      continue;
    /* [C][27] -> [27][C], so that the inner loop runs over channels. */
    for (uint32_t o = 0; o < p->c; o++)
      for (int k = 0; k < 27; k++)
        p->stem_wt[(size_t)k * p->c + o] = op->p.stem.w[(size_t)o * 27 + (size_t)k];
  }
  return 0;
}

static int gl__cpu_plan(void *ctx, struct gl__nn_graph *g, char *err, size_t errlen) {
  struct gl__cpu_ctx *c = ctx;
  int rc = 0;
  const struct gl__nn_op *op = NULL; /* named by GL__DNNL's messages */
  omp_set_num_threads((int)c->threads);
  openblas_set_num_threads(1);
  c->n_ops = g->n_ops;
  c->n_sizes = g->n_pass_sizes;
  if (!(c->conv = calloc(c->n_ops * c->n_sizes, sizeof *c->conv)) ||
      !(c->wf = calloc(c->n_ops, sizeof *c->wf)))
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");

  size_t scratch = 0;
  for (size_t s = 0; s < c->n_sizes; s++) {
    for (size_t i = 0; i < g->n_ops; i++) {
      op = &g->ops[i];
      if (op->kind != GL__NN_OP_CONV)
        continue;
      struct gl__cpu_conv *cv = &c->conv[s * c->n_ops + i];
      if ((rc = gl__conv_pd(c, op, g->pass_sizes[s], &cv->pd, err, errlen)))
        return rc;
      size_t sb = dnnl_memory_desc_get_size(
          dnnl_primitive_desc_query_md(cv->pd, dnnl_query_scratchpad_md, 0));
      scratch = sb > scratch ? sb : scratch;
    }
  }
  if (!(c->scratchpad = gl__nn_alloc(scratch ? scratch : 64)))
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory for the oneDNN scratchpad");
  for (size_t s = 0; s < c->n_sizes; s++)
    for (size_t i = 0; i < g->n_ops; i++)
      if (c->conv[s * c->n_ops + i].pd &&
          (rc = gl__conv_bind(c, g, i, &c->conv[s * c->n_ops + i], err, errlen)))
        return rc;
  return gl__own_scratch(c, g, err, errlen);
}

/* --- compute ---------------------------------------------------------- */

static int gl__cpu_compute(void *ctx, const struct gl__nn_graph *g, uint32_t batch,
                           const struct gl__nn_image_ref *images) {
  struct gl__cpu_ctx *c = ctx;
  size_t si = 0;
  while (si < c->n_sizes && g->pass_sizes[si] != batch)
    si++;
  if (si == c->n_sizes)
    return GL_EINVAL;
  /* The OpenMP thread count belongs to the calling thread, so it is set on
   * every call. OpenBLAS runs single-threaded: its own pthreads busy-wait
   * between calls and then compete for the cores with oneDNN's OpenMP
   * threads (measured: 2 threads 25x slower than 1 on 2 cores). GEMMs are
   * parallel one level up instead (cpu_ops.c: OSM row blocks, groups).
   * The setting is global to the process, hence also set on every call. */
  omp_set_num_threads((int)c->threads);
  openblas_set_num_threads(1);
  const uint8_t *pixels = g->arena + g->buf_off[GL__NN_BUF_IMAGES];

  for (size_t i = 0; i < g->n_ops; i++) {
    const struct gl__nn_op *op = &g->ops[i];
    size_t hw = (size_t)op->dst.h * op->dst.w;
    switch (op->kind) {
    case GL__NN_OP_RESIZE:
      for (uint32_t n = 0; n < batch; n++)
        gl__cpu_resize(&c->pre, pixels + images[n].off, images[n].width, images[n].height,
                       gl__nn_tensor_at(g, &op->dst, n));
      break;
    case GL__NN_OP_RESIZER_STEM:
      for (uint32_t n = 0; n < batch; n++)
        gl__cpu_resizer_stem(&c->pre, pixels + images[n].off, images[n].width, images[n].height, op,
                             gl__nn_tensor_at(g, &op->dst, n));
      break;
    case GL__NN_OP_CONV: {
      const struct gl__cpu_conv *cv = &c->conv[si * c->n_ops + i];
      if (dnnl_primitive_execute(cv->prim, c->stream, cv->nargs, cv->args) != dnnl_success)
        return GL_EINTERNAL;
      break;
    }
    case GL__NN_OP_SK_MIX:
      for (uint32_t n = 0; n < batch; n++)
        gl__cpu_sk_mix(op, gl__nn_tensor_at(g, &op->src, n), gl__nn_tensor_at(g, &op->src2, n),
                       gl__nn_tensor_at(g, &op->dst, n), hw, op->dst.c, c->tmp);
      break;
    case GL__NN_OP_SE:
      for (uint32_t n = 0; n < batch; n++)
        gl__cpu_se(gl__nn_tensor_at(g, &op->dst, n), hw, op->dst.c, op->dst.c, op->p.se.hidden,
                   op->p.se.fc1_w, op->p.se.fc1_b, op->p.se.fc2_w, op->p.se.fc2_b, c->tmp);
      break;
    case GL__NN_OP_ADD:
      for (uint32_t n = 0; n < batch; n++) {
        const float *a = gl__nn_tensor_at(g, &op->src, n);
        float *d = gl__nn_tensor_at(g, &op->dst, n);
        /* base + r, in the reference's operand order (it is exact anyway). */
        for (size_t k = 0; k < hw * op->dst.c; k++)
          d[k] = d[k] + a[k];
      }
      break;
    case GL__NN_OP_OSM:
      gl__cpu_osm(g, op, batch, &c->osm);
      continue; /* traces its own points */
    case GL__NN_OP_FUSE:
      gl__cpu_fuse(g, op, batch, c->tmp);
      continue;
    case GL__NN_OP_L2NORM:
      for (uint32_t n = 0; n < batch; n++) {
        float *d = gl__nn_tensor_at(g, &op->dst, n);
        for (size_t k = 0; k < hw; k++) {
          float *v = d + k * op->dst.c;
          double ss = 0;
          for (uint32_t ch = 0; ch < op->dst.c; ch++)
            ss += (double)v[ch] * v[ch];
          /* As ops.l2_normalize: x / max(||x||, 1e-12). */
          float inv = (float)(1.0 / fmax(sqrt(ss), 1e-12));
          for (uint32_t ch = 0; ch < op->dst.c; ch++)
            v[ch] *= inv;
        }
      }
      break;
    }
    if (g->trace && op->trace[0]) {
      if (dnnl_stream_wait(c->stream) != dnnl_success)
        return GL_EINTERNAL;
      for (uint32_t n = 0; n < batch; n++)
        g->trace(g->trace_ud, op->trace, g->trace_first + n, gl__nn_tensor_at(g, &op->dst, n),
                 op->dst.h, op->dst.w, op->dst.c, op->dst.c);
    }
  }
  return dnnl_stream_wait(c->stream) == dnnl_success ? 0 : GL_EINTERNAL;
}

/* --- lifetime --------------------------------------------------------- */

static void gl__cpu_destroy(void *ctx) {
  struct gl__cpu_ctx *c = ctx;
  if (!c)
    return;
  for (size_t k = 0; c->conv && k < c->n_ops * c->n_sizes; k++) {
    struct gl__cpu_conv *cv = &c->conv[k];
    if (cv->prim)
      dnnl_primitive_destroy(cv->prim);
    for (int m = 0; m < 5; m++)
      if (cv->mem[m])
        dnnl_memory_destroy(cv->mem[m]);
    if (cv->pd)
      dnnl_primitive_desc_destroy(cv->pd);
  }
  for (size_t i = 0; c->wf && i < c->n_ops; i++)
    for (int k = 0; k < GL__MAX_WFMT; k++)
      if (c->wf[i][k].owned)
        free(c->wf[i][k].data);
  free(c->conv);
  free(c->wf);
  free(c->scratchpad);
  free(c->own);
  free(c->osm.thr);
  if (c->stream)
    dnnl_stream_destroy(c->stream);
  if (c->eng)
    dnnl_engine_destroy(c->eng);
  free(c);
}

static const struct gl_nn_backend_i gl__cpu_backend = {
    .name = "cpu-onednn",
    .alloc = gl__cpu_alloc,
    .upload = gl__cpu_copy,
    .download = gl__cpu_copy,
    .supports_op = gl__cpu_supports_op,
    .plan = gl__cpu_plan,
    .compute = gl__cpu_compute,
    .synchronize = gl__cpu_synchronize,
    .free = gl__cpu_free,
    .destroy = gl__cpu_destroy,
};

int gl__nn_cpu_backend_create(const struct gl_nn_engine_opts *opts, struct gl__nn_backend *out,
                              char *err, size_t errlen) {
  struct gl__cpu_ctx *c = calloc(1, sizeof *c);
  if (!c)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  int procs = omp_get_num_procs();
  c->threads = opts->threads ? opts->threads : (uint32_t)(procs > 0 ? procs : 1);
  /* Each thread gets its own OSM scratch; a typo must not allocate gigabytes. */
  if (c->threads > 1024) {
    free(c);
    return gl_fail(err, errlen, GL_EINVAL, "threads %u is more than 1024", opts->threads);
  }
  if (dnnl_engine_create(&c->eng, dnnl_cpu, 0) != dnnl_success ||
      dnnl_stream_create(&c->stream, c->eng, dnnl_stream_default_flags) != dnnl_success) {
    gl__cpu_destroy(c);
    return gl_fail(err, errlen, GL_EINTERNAL, "oneDNN: cannot create the CPU engine");
  }
  out->i = &gl__cpu_backend;
  out->ctx = c;
  return 0;
}
