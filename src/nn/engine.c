/* The engine: a graph planned on a backend, and the encode path, which
 * allocates nothing: it uploads pixels into the arena, runs passes of the
 * planned batch sizes and downloads the descriptors. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "nn/backend.h"
#include "nn/graph.h"
#include "nn/nn.h"
#include "nn/nn_internal.h"

#define GL__DEFAULT_MAX_PIXELS (1920ull * 1080ull)
/* Far above any real batch; keeps the arena size arithmetic from overflowing. */
#define GL__MAX_BATCH 1024u

struct gl_nn_engine {
  const struct gl_nn_model *model;
  struct gl__nn_backend be;
  struct gl__nn_graph graph;
  void *arena;
  struct gl__nn_image_ref *refs; /* [max_batch], reused by every call */
};

int gl_nn_engine_create(const struct gl_nn_model *m, const struct gl_nn_engine_opts *opts,
                        struct gl_nn_engine **out, char *err, size_t errlen) {
  int rc;
  struct gl_nn_engine_opts o = opts ? *opts : (struct gl_nn_engine_opts){0};
  if (!o.max_batch)
    o.max_batch = 1;
  if (!o.max_input_pixels)
    o.max_input_pixels = GL__DEFAULT_MAX_PIXELS;
  if (o.max_batch > GL__MAX_BATCH || o.max_input_pixels > (1ull << 32))
    return gl_fail(err, errlen, GL_EINVAL, "max_batch %u or max_input_pixels %llu too large",
                       o.max_batch, (unsigned long long)o.max_input_pixels);
  if (o.backend == GL_NN_BACKEND_CUDA)
    return gl_fail(err, errlen, GL_ENOTSUP, "this build has no CUDA backend");
  if (o.backend != GL_NN_BACKEND_CPU)
    return gl_fail(err, errlen, GL_EINVAL, "unknown backend %d", (int)o.backend);

  struct gl_nn_engine *e = calloc(1, sizeof *e);
  if (!e)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  e->model = m;
  if (o.feature_layer && !o.input_w && !o.input_h)
    o.input_w = o.input_h = m->cfg.input_w;
  /* A feature engine takes images of exactly its input size. */
  if (o.feature_layer)
    o.max_input_pixels = (uint64_t)o.input_w * o.input_h;
  if ((rc = gl__nn_graph_build(m, o.max_batch, o.max_input_pixels, o.feature_layer, o.input_w,
                               o.input_h, &e->graph, err, errlen)))
    goto fail;
  if (!(e->refs = calloc(o.max_batch, sizeof *e->refs))) {
    rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
    goto fail;
  }
  if ((rc = gl__nn_cpu_backend_create(&o, &e->be, err, errlen)))
    goto fail;
  for (size_t i = 0; i < e->graph.n_ops; i++) {
    if (!e->be.i->supports_op(e->be.ctx, &e->graph.ops[i])) {
      rc = gl_fail(err, errlen, GL_ENOTSUP, "backend %s cannot run op '%s'", e->be.i->name,
                       e->graph.ops[i].name);
      goto fail;
    }
  }
  if ((rc = e->be.i->alloc(e->be.ctx, e->graph.arena_bytes, &e->arena))) {
    gl_fail(err, errlen, rc, "cannot allocate %zu bytes of activations", e->graph.arena_bytes);
    goto fail;
  }
  e->graph.arena = e->arena;
  if ((rc = e->be.i->plan(e->be.ctx, &e->graph, err, errlen)))
    goto fail;
  *out = e;
  return 0;
fail:
  gl_nn_engine_destroy(e);
  return rc;
}

void gl_nn_engine_destroy(struct gl_nn_engine *e) {
  if (!e)
    return;
  if (e->be.i) {
    if (e->arena)
      e->be.i->free(e->be.ctx, e->arena);
    e->be.i->destroy(e->be.ctx);
  }
  gl__nn_graph_fini(&e->graph);
  free(e->refs);
  free(e);
}

/* Runs the graph over n images in passes of the planned batch sizes and
 * downloads each pass's `res` tensor (dim floats an image, contiguous) into
 * out. */
static int gl__run(struct gl_nn_engine *e, const struct gl_image *images, uint32_t n,
                   const struct gl__nn_tensor *res, size_t dim, float *out) {
  struct gl__nn_graph *g = &e->graph;
  const struct gl_nn_backend_i *be = e->be.i;
  if (n == 0 || n > g->max_batch || !images || !out)
    return GL_EINVAL;
  for (uint32_t i = 0; i < n; i++) {
    const struct gl_image *im = &images[i];
    if (!im->rgb || !im->width || !im->height || (uint64_t)im->width * im->height > g->max_pixels)
      return GL_EINVAL;
    if (g->feature_layer && (im->width != g->ops[0].dst.w || im->height != g->ops[0].dst.h))
      return GL_EINVAL;
  }
  int rc = 0;
  uint32_t done = 0;
  while (done < n) {
    uint32_t batch = 0;
    for (uint32_t k = 0; k < g->n_pass_sizes && !batch; k++)
      if (g->pass_sizes[k] <= n - done)
        batch = g->pass_sizes[k];
    /* Images are packed one after another: a pass never holds more pixels
     * than batch * max_pixels, which the IMAGES buffer is sized for. */
    size_t off = 0;
    for (uint32_t k = 0; k < batch; k++) {
      const struct gl_image *im = &images[done + k];
      size_t bytes = (size_t)im->width * im->height * 3;
      e->refs[k] = (struct gl__nn_image_ref){.off = off, .width = im->width, .height = im->height};
      if ((rc = be->upload(e->be.ctx, g->arena + g->buf_off[GL__NN_BUF_IMAGES] + off, im->rgb,
                           bytes)))
        return rc;
      off += bytes;
    }
    g->trace_first = done;
    if ((rc = be->compute(e->be.ctx, g, batch, e->refs)))
      return rc;
    if ((rc = be->download(e->be.ctx, out + (size_t)done * dim, gl__nn_tensor_at(g, res, 0),
                           (size_t)batch * dim * sizeof(float))))
      return rc;
    done += batch;
  }
  return be->synchronize(e->be.ctx);
}

int gl_nn_engine_encode(struct gl_nn_engine *e, const struct gl_image *images, uint32_t n,
                        float *out) {
  struct gl__nn_graph *g = &e->graph;
  if (g->feature_layer)
    return GL_EINVAL;
  struct gl__nn_tensor res = {.buf = GL__NN_BUF_OUT};
  return gl__run(e, images, n, &res, g->model->cfg.descriptor_dim, out);
}

int gl_nn_engine_features(struct gl_nn_engine *e, const struct gl_image *images, uint32_t n,
                          float *out) {
  const struct gl__nn_tensor *t = &e->graph.feat;
  if (!e->graph.feature_layer || t->image_stride != (size_t)t->h * t->w * t->c)
    return GL_EINVAL;
  int rc = gl__run(e, images, n, t, t->image_stride, out);
  if (rc)
    return rc;
  for (size_t i = 0; i < (size_t)n * t->h * t->w; i++) {
    float *v = out + i * t->c;
    double ss = 0;
    for (uint32_t k = 0; k < t->c; k++)
      ss += (double)v[k] * v[k];
    /* The reference's l2_normalize divides by max(norm, eps). */
    float inv = (float)(1.0 / fmax(sqrt(ss), 1e-12));
    for (uint32_t k = 0; k < t->c; k++)
      v[k] *= inv;
  }
  return 0;
}

void gl_nn_engine_feature_shape(const struct gl_nn_engine *e, uint32_t *rows, uint32_t *cols,
                                uint32_t *channels, uint32_t *stride) {
  const struct gl__nn_tensor *t = &e->graph.feat;
  bool f = e->graph.feature_layer != 0;
  *rows = f ? t->h : 0;
  *cols = f ? t->w : 0;
  *channels = f ? t->c : 0;
  *stride = f ? gl__nn_feature_stride(e->model, e->graph.feature_layer) : 0;
}

const char *gl_nn_engine_backend_name(const struct gl_nn_engine *e) { return e->be.i->name; }

uint32_t gl_nn_engine_max_batch(const struct gl_nn_engine *e) { return e->graph.max_batch; }

void gl__nn_engine_set_trace(struct gl_nn_engine *e, gl__nn_trace_cb cb, void *ud) {
  e->graph.trace = cb;
  e->graph.trace_ud = ud;
}
