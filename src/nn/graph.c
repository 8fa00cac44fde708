/* Building the op list from the config (OPS.md section 3) and sizing the
 * activation buffers once for the largest batch. */
#include "nn/graph.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "nn/nn_internal.h"

/* Upper bound on the ops of any config: 19 features of at most 3 convs, the
 * resizer's 8 ops, 3 OSMs and a fusion. */
#define GL__MAX_OPS 96

struct gl__builder {
  struct gl__nn_graph *g;
  const struct gl_nn_model *m;
  char *err;
  size_t errlen;
  int rc;
};

static struct gl__nn_tensor gl__t(enum gl__nn_buf buf, uint32_t h, uint32_t w, uint32_t c) {
  return (struct gl__nn_tensor){
      .buf = buf, .off = 0, .image_stride = (size_t)h * w * c, .h = h, .w = w, .c = c};
}

static struct gl__nn_op *gl__op(struct gl__builder *b, enum gl__nn_op_kind kind, const char *name) {
  if (b->rc)
    return NULL;
  if (b->g->n_ops == GL__MAX_OPS) {
    b->rc = gl_fail(b->err, b->errlen, GL_EINTERNAL, "graph: too many ops");
    return NULL;
  }
  struct gl__nn_op *op = &b->g->ops[b->g->n_ops++];
  memset(op, 0, sizeof *op);
  op->kind = kind;
  snprintf(op->name, sizeof op->name, "%s", name);
  return op;
}

static const float *gl__tensor(struct gl__builder *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static const float *gl__tensor(struct gl__builder *b, const char *fmt, ...) {
  char name[96];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  const float *p = gl__nn_model_tensor(b->m, name);
  if (!p && !b->rc)
    b->rc = gl_fail(b->err, b->errlen, GL_EINTERNAL, "graph: no tensor '%s'", name);
  return p;
}

/* Padding of one axis (OPS.md "padding"): TensorFlow SAME splits the total
 * with the odd pixel after; torch pads d*(k-1)/2 on both sides. */
static void gl__pads(enum gl__nn_pad mode, uint32_t in, uint32_t k, uint32_t s, uint32_t d,
                     uint32_t *before, uint32_t *after) {
  if (mode == GL__NN_PAD_TORCH) {
    *before = *after = d * (k - 1) / 2;
    return;
  }
  long out = ((long)in + s - 1) / s;
  long total = (out - 1) * (long)s + (long)(d * (k - 1) + 1) - (long)in;
  if (total < 0)
    total = 0;
  *before = (uint32_t)(total / 2);
  *after = (uint32_t)(total - total / 2);
}

/* Adds a conv with weights w, b (OIHW, [O]) reading src into a tensor of
 * buffer dst_buf; returns it. */
static struct gl__nn_tensor gl__conv_wb(struct gl__builder *b, const char *name,
                                        struct gl__nn_tensor src, enum gl__nn_buf dst_buf,
                                        uint32_t cout, uint32_t k, uint32_t stride, uint32_t dil,
                                        uint32_t groups, enum gl__nn_pad pad, enum gl__nn_act act,
                                        bool residual, const float *w, const float *bias) {
  struct gl__nn_op *op = gl__op(b, GL__NN_OP_CONV, name);
  if (!op || !w || !bias) {
    if (!b->rc)
      b->rc = gl_fail(b->err, b->errlen, GL_EINTERNAL, "graph: no weights for conv '%s'", name);
    return src;
  }
  op->src = src;
  op->p.conv.k = k;
  op->p.conv.stride = stride;
  op->p.conv.dilation = dil;
  op->p.conv.groups = groups;
  gl__pads(pad, src.h, k, stride, dil, &op->p.conv.pad_t, &op->p.conv.pad_b);
  gl__pads(pad, src.w, k, stride, dil, &op->p.conv.pad_l, &op->p.conv.pad_r);
  op->p.conv.act = act;
  op->p.conv.residual = residual;
  op->p.conv.w = w;
  op->p.conv.b = bias;
  uint32_t keff = dil * (k - 1) + 1;
  uint32_t oh = (src.h + op->p.conv.pad_t + op->p.conv.pad_b - keff) / stride + 1;
  uint32_t ow = (src.w + op->p.conv.pad_l + op->p.conv.pad_r - keff) / stride + 1;
  op->dst = gl__t(dst_buf, oh, ow, cout);
  return op->dst;
}

/* A conv unit (folded conv + bias, model.ConvUnit) of the model. */
static struct gl__nn_tensor gl__conv(struct gl__builder *b, const char *unit,
                                     struct gl__nn_tensor src, enum gl__nn_buf dst_buf,
                                     uint32_t cout, uint32_t k, uint32_t stride, uint32_t dil,
                                     uint32_t groups, enum gl__nn_pad pad, enum gl__nn_act act,
                                     bool residual) {
  const struct gl__nn_unit *u = gl__nn_model_unit(b->m, unit);
  if (!u && !b->rc)
    b->rc = gl_fail(b->err, b->errlen, GL_EINTERNAL, "graph: no conv unit '%s'", unit);
  return gl__conv_wb(b, unit, src, dst_buf, cout, k, stride, dil, groups, pad, act, residual,
                     u ? u->w : NULL, u ? u->b : NULL);
}

/* The dense head (OPS.md) on the block output t (buffer A): per-pixel L2
 * norm in place, proj A -> C, b1 A -> B, b2 B -> A, C += b3(A). Returns the
 * head's output, in buffer C. */
static struct gl__nn_tensor gl__dense_head(struct gl__builder *b, struct gl__nn_tensor t) {
  const struct gl__nn_config *cfg = &b->m->cfg;
  struct gl__nn_op *op = gl__op(b, GL__NN_OP_L2NORM, "dense_head.l2norm");
  if (!op)
    return t;
  op->dst = t;
  uint32_t d = cfg->dh_dim, h = cfg->dh_hidden;
  const enum gl__nn_pad pt = GL__NN_PAD_TORCH;
#define GL__W(n) gl__tensor(b, "dense_head." n ".weight"), gl__tensor(b, "dense_head." n ".bias")
  struct gl__nn_tensor p = gl__conv_wb(b, "dense_head.proj", t, GL__NN_BUF_C, d, 1, 1, 1, 1, pt,
                                       GL__NN_ACT_NONE, false, GL__W("proj"));
  struct gl__nn_tensor x = gl__conv_wb(b, "dense_head.b1", t, GL__NN_BUF_B, h, 1, 1, 1, 1, pt,
                                       GL__NN_ACT_RELU, false, GL__W("b1"));
  x = gl__conv_wb(b, "dense_head.b2", x, GL__NN_BUF_A, h, 3, 1, 1, 1, pt, GL__NN_ACT_RELU, false,
                  GL__W("b2"));
  struct gl__nn_tensor out = gl__conv_wb(b, "dense_head.b3", x, GL__NN_BUF_C, d, 1, 1, 1, 1, pt,
                                         GL__NN_ACT_NONE, true, GL__W("b3"));
#undef GL__W
  if (!b->rc && (out.buf != p.buf || out.h != p.h || out.w != p.w || out.c != p.c))
    b->rc = gl_fail(b->err, b->errlen, GL_EINTERNAL, "graph: dense head residual mismatch");
  if (!b->rc)
    snprintf(b->g->ops[b->g->n_ops - 1].trace, sizeof op->trace, "dense_head");
  return out;
}

static void gl__resizer(struct gl__builder *b, struct gl__nn_tensor x) {
  const struct gl__nn_config *cfg = &b->m->cfg;
  uint32_t h = cfg->input_h, w = cfg->input_w, c = cfg->resizer_channels;
  const struct gl__nn_unit *stem = gl__nn_model_unit(b->m, "resizer.stem");
  struct gl__nn_op *op = gl__op(b, GL__NN_OP_RESIZE, "resize");
  if (!op || !stem) {
    if (!b->rc)
      b->rc = gl_fail(b->err, b->errlen, GL_EINTERNAL, "graph: no resizer.stem");
    return;
  }
  op->dst = x;
  op->p.resize.mean = cfg->mean;
  op->p.resize.std = cfg->std;

  struct gl__nn_tensor f = gl__t(GL__NN_BUF_B, h, w, c);
  if (!(op = gl__op(b, GL__NN_OP_RESIZER_STEM, "resizer.stem")))
    return;
  op->dst = f;
  snprintf(op->trace, sizeof op->trace, "resizer.features");
  op->p.stem.mean = cfg->mean;
  op->p.stem.std = cfg->std;
  op->p.stem.w = stem->w;
  op->p.stem.b = stem->b;

  /* The resizer's convs are stride 1, where both padding modes agree;
   * model.py builds them with torch padding. */
  struct gl__nn_tensor u0 = gl__conv(b, "resizer.sk.branch0", f, GL__NN_BUF_C, c, 3, 1, 1, 1,
                                     GL__NN_PAD_TORCH, GL__NN_ACT_RELU, false);
  struct gl__nn_tensor u1 = gl__conv(b, "resizer.sk.branch1", f, GL__NN_BUF_A, c, 3, 1, 2, 1,
                                     GL__NN_PAD_TORCH, GL__NN_ACT_RELU, false);
  if (!(op = gl__op(b, GL__NN_OP_SK_MIX, "resizer.sk")))
    return;
  op->src = u0;
  op->src2 = u1;
  op->dst = f;
  op->p.sk.hidden = b->m->arch.resizer_hidden;
  op->p.sk.fc_w = gl__tensor(b, "resizer.sk.fc.weight");
  op->p.sk.fc_b = gl__tensor(b, "resizer.sk.fc.bias");
  op->p.sk.sel_w = gl__tensor(b, "resizer.sk.select.weight");
  op->p.sk.sel_b = gl__tensor(b, "resizer.sk.select.bias");

  if (!(op = gl__op(b, GL__NN_OP_SE, "resizer.se")))
    return;
  op->dst = f;
  op->p.se.hidden = b->m->arch.resizer_hidden;
  op->p.se.fc1_w = gl__tensor(b, "resizer.se.fc1.weight");
  op->p.se.fc1_b = gl__tensor(b, "resizer.se.fc1.bias");
  op->p.se.fc2_w = gl__tensor(b, "resizer.se.fc2.weight");
  op->p.se.fc2_b = gl__tensor(b, "resizer.se.fc2.bias");

  /* The residual is kept apart from the base (not a fused sum) so that it
   * can be traced; the add costs h*w*3 floats. */
  struct gl__nn_tensor r = gl__conv(b, "resizer.out", f, GL__NN_BUF_C, 3, 3, 1, 1, 1,
                                    GL__NN_PAD_TORCH, GL__NN_ACT_NONE, false);
  if (b->rc)
    return;
  snprintf(b->g->ops[b->g->n_ops - 1].trace, sizeof op->trace, "resizer.residual");
  if (!(op = gl__op(b, GL__NN_OP_ADD, "resizer.add")))
    return;
  op->src = r;
  op->dst = x;
  snprintf(op->trace, sizeof op->trace, "preprocess");
}

static void gl__osm(struct gl__builder *b, uint32_t level, struct gl__nn_tensor feat,
                    struct gl__nn_osm_group *groups) {
  const struct gl__nn_config *cfg = &b->m->cfg;
  struct gl__nn_op *op = gl__op(b, GL__NN_OP_OSM, "osm");
  if (!op)
    return;
  op->src = feat;
  op->p.osm.level = level;
  op->p.osm.dim = cfg->osm_dim;
  op->p.osm.groups = cfg->osm_groups;
  op->p.osm.se_hidden = b->m->arch.osm_se_hidden;
  op->p.osm.out_dim = cfg->descriptor_dim;
  op->p.osm.pool = cfg->pool;
  op->p.osm.gem_p = cfg->gem_p;
  if (cfg->n_levels == 1) {
    op->dst = gl__t(GL__NN_BUF_OUT, 1, 1, cfg->descriptor_dim);
    snprintf(op->trace, sizeof op->trace, "descriptor");
  } else {
    op->dst = gl__t(GL__NN_BUF_LEVELS, 1, 1, cfg->descriptor_dim);
    op->dst.off = (size_t)level * cfg->descriptor_dim;
    op->dst.image_stride = (size_t)cfg->n_levels * cfg->descriptor_dim;
  }
  op->p.osm.proj_w = gl__tensor(b, "osm.%u.proj.weight", level);
  op->p.osm.proj_b = gl__tensor(b, "osm.%u.proj.bias", level);
  op->p.osm.embed_w = gl__tensor(b, "osm.%u.embed.weight", level);
  op->p.osm.embed_b = gl__tensor(b, "osm.%u.embed.bias", level);
  for (uint32_t i = 0; i < cfg->osm_groups; i++) {
    struct gl__nn_osm_group *g = &groups[i];
    g->q_w = gl__tensor(b, "osm.%u.groups.%u.q.weight", level, i);
    g->q_b = gl__tensor(b, "osm.%u.groups.%u.q.bias", level, i);
    g->k_w = gl__tensor(b, "osm.%u.groups.%u.k.weight", level, i);
    g->k_b = gl__tensor(b, "osm.%u.groups.%u.k.bias", level, i);
    g->v_w = gl__tensor(b, "osm.%u.groups.%u.v.weight", level, i);
    g->v_b = gl__tensor(b, "osm.%u.groups.%u.v.bias", level, i);
    g->fc1_w = gl__tensor(b, "osm.%u.groups.%u.se.fc1.weight", level, i);
    g->fc1_b = gl__tensor(b, "osm.%u.groups.%u.se.fc1.bias", level, i);
    g->fc2_w = gl__tensor(b, "osm.%u.groups.%u.se.fc2.weight", level, i);
    g->fc2_b = gl__tensor(b, "osm.%u.groups.%u.se.fc2.bias", level, i);
    g->ov_w = gl__tensor(b, "osm.%u.groups.%u.overlap.weight", level, i);
    g->ov_b = gl__tensor(b, "osm.%u.groups.%u.overlap.bias", level, i);
  }
  op->p.osm.g = groups;
}

int gl__nn_graph_build(const struct gl_nn_model *m, uint32_t max_batch, uint64_t max_pixels,
                       uint32_t feature_layer, uint32_t in_w, uint32_t in_h,
                       struct gl__nn_graph *g, char *err, size_t errlen) {
  const struct gl__nn_config *cfg = &m->cfg;
  const struct gl__nn_arch *a = &m->arch;
  memset(g, 0, sizeof *g);
  if (feature_layer) {
    if (feature_layer >= GL__NN_LAST_FEATURE)
      return gl_fail(err, errlen, GL_EINVAL, "feature layer %u is not a backbone block (1..%u)",
                     feature_layer, GL__NN_LAST_FEATURE - 1);
    if (cfg->resizer)
      return gl_fail(err, errlen, GL_ENOTSUP,
                     "dense features of a model with a learned resizer are not supported");
    uint32_t s = gl__nn_feature_stride(m, feature_layer);
    if (!in_w || !in_h || in_w % s || in_h % s || (uint64_t)in_w * in_h > max_pixels)
      return gl_fail(err, errlen, GL_EINVAL,
                     "feature input %ux%u must be a non-zero multiple of the layer's stride %u "
                     "and at most %llu pixels",
                     in_w, in_h, s, (unsigned long long)max_pixels);
  } else if (!cfg->descriptor)
    return gl_fail(err, errlen, GL_EINVAL,
                       "the model has no descriptor head (config descriptor=false)");
  g->model = m;
  g->max_batch = max_batch;
  g->max_pixels = max_pixels;
  for (uint32_t s = 1u << 30; s; s >>= 1)
    if (s <= max_batch && g->n_pass_sizes < GL__NN_MAX_PASS_SIZES)
      g->pass_sizes[g->n_pass_sizes++] = s;
  if (!(g->ops = calloc(GL__MAX_OPS, sizeof *g->ops)) ||
      !(g->groups = calloc((size_t)cfg->n_levels * cfg->osm_groups, sizeof *g->groups))) {
    gl__nn_graph_fini(g);
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  }
  struct gl__builder b = {.g = g, .m = m, .err = err, .errlen = errlen};

  /* Preprocessing: to the network input size, plain or learned. */
  g->feature_layer = feature_layer;
  struct gl__nn_tensor x = feature_layer ? gl__t(GL__NN_BUF_X, in_h, in_w, 3)
                                         : gl__t(GL__NN_BUF_X, cfg->input_h, cfg->input_w, 3);
  if (cfg->resizer) {
    gl__resizer(&b, x);
  } else {
    struct gl__nn_op *op = gl__op(&b, GL__NN_OP_RESIZE, "resize");
    if (op) {
      op->dst = x;
      op->p.resize.mean = cfg->mean;
      op->p.resize.std = cfg->std;
      snprintf(op->trace, sizeof op->trace, "preprocess");
    }
  }

  /* MobileNetV2 up to the last level, each level's OSM right after it. */
  uint32_t last = feature_layer ? feature_layer : cfg->levels[cfg->n_levels - 1], level = 0;
  enum gl__nn_pad pad = cfg->padding;
  enum gl__nn_act act = cfg->activation;
  struct gl__nn_tensor t = x;
  for (uint32_t f = 0; f <= last && !b.rc; f++) {
    char un[3][40];
    if (f == 0 || f == GL__NN_LAST_FEATURE) {
      snprintf(un[0], 40, "backbone.features.%u", f);
      t = gl__conv(&b, un[0], t, f == 0 ? GL__NN_BUF_A : GL__NN_BUF_B, a->cout[f], f ? 1 : 3,
                   a->stride[f], 1, 1, pad, act, false);
    } else {
      struct gl__nn_tensor in = t;
      if (a->expand[f]) {
        snprintf(un[0], 40, "backbone.features.%u.expand", f);
        t = gl__conv(&b, un[0], t, GL__NN_BUF_B, a->hidden[f], 1, 1, 1, 1, pad, act, false);
      }
      snprintf(un[1], 40, "backbone.features.%u.dw", f);
      t = gl__conv(&b, un[1], t, GL__NN_BUF_C, a->hidden[f], 3, a->stride[f], 1, a->hidden[f], pad,
                   act, false);
      snprintf(un[2], 40, "backbone.features.%u.project", f);
      t = gl__conv(&b, un[2], t, GL__NN_BUF_A, a->cout[f], 1, 1, 1, 1, pad, GL__NN_ACT_NONE,
                   a->residual[f]);
      if (a->residual[f] && !b.rc && in.buf != GL__NN_BUF_A)
        b.rc = gl_fail(err, errlen, GL_EINTERNAL, "graph: residual input not in buffer A");
    }
    if (b.rc)
      break;
    snprintf(g->ops[g->n_ops - 1].trace, sizeof g->ops->trace, "backbone.features.%u", f);
    if (feature_layer && feature_layer == f && cfg->dh_layer == f)
      t = gl__dense_head(&b, t);
    g->feat = t;
    if (!feature_layer && level < cfg->n_levels && cfg->levels[level] == f) {
      gl__osm(&b, level, t, &g->groups[(size_t)level * cfg->osm_groups]);
      level++;
    }
  }
  if (!feature_layer && cfg->n_levels > 1) {
    struct gl__nn_op *op = gl__op(&b, GL__NN_OP_FUSE, "fusion");
    if (op) {
      op->src = gl__t(GL__NN_BUF_LEVELS, 1, cfg->n_levels, cfg->descriptor_dim);
      op->dst = gl__t(GL__NN_BUF_OUT, 1, 1, cfg->descriptor_dim);
      op->p.fuse.levels = cfg->n_levels;
      op->p.fuse.w = gl__tensor(&b, "fusion.weight");
      snprintf(op->trace, sizeof op->trace, "descriptor");
    }
  }
  if (b.rc) {
    gl__nn_graph_fini(g);
    return b.rc;
  }

  /* Buffer sizes: the largest tensor each buffer ever holds, times the
   * batch; the arena lays them out one after the other, 64-byte aligned. */
  for (size_t i = 0; i < g->n_ops; i++) {
    const struct gl__nn_tensor *ts[3] = {&g->ops[i].src, &g->ops[i].src2, &g->ops[i].dst};
    for (int k = 0; k < 3; k++) {
      if (!ts[k]->c)
        continue;
      size_t bytes = (ts[k]->off + (size_t)ts[k]->image_stride * max_batch) * sizeof(float);
      if (bytes > g->buf_bytes[ts[k]->buf])
        g->buf_bytes[ts[k]->buf] = bytes;
    }
  }
  g->buf_bytes[GL__NN_BUF_IMAGES] = (size_t)max_pixels * 3 * max_batch;
  for (int i = 0; i < GL__NN_BUF_COUNT; i++) {
    g->buf_off[i] = g->arena_bytes;
    g->arena_bytes += (g->buf_bytes[i] + 63) / 64 * 64;
  }
  return 0;
}

void gl__nn_graph_fini(struct gl__nn_graph *g) {
  free(g->ops);
  free(g->groups);
  memset(g, 0, sizeof *g);
}
