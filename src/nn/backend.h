/* Backends execute a planned graph (graph.h) on a device.
 *
 * A backend is a vtable beside a context pointer (docs/ARCHITECTURE.md
 * section 3), so the graph and the engine never include a device's headers.
 * Beyond the eight entries docs/ARCHITECTURE.md section 6 names, `plan`
 * lets a backend build its per-op state (oneDNN primitives, reordered
 * weights, CUDA graphs) once, before any encode, and `destroy` releases the
 * context. */
#ifndef GL_NN_BACKEND_H
#define GL_NN_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nn/graph.h"
#include "nn/nn.h"

/* One input image of a pass: its pixels at off bytes into the IMAGES buffer. */
struct gl__nn_image_ref {
  size_t off;
  uint32_t width, height;
};

struct gl_nn_backend_i {
  const char *name;
  /* Device memory for the arena; *out is what upload/download/compute see. */
  int (*alloc)(void *ctx, size_t bytes, void **out);
  int (*upload)(void *ctx, void *dst, const void *src, size_t bytes);
  int (*download)(void *ctx, void *dst, const void *src, size_t bytes);
  bool (*supports_op)(void *ctx, const struct gl__nn_op *op);
  /* Called once, after the arena is allocated: creates whatever each op
   * needs for every batch size in g->pass_sizes. */
  int (*plan)(void *ctx, struct gl__nn_graph *g, char *err, size_t errlen);
  /* Runs every op of g on the first `batch` images (batch is one of
   * g->pass_sizes), whose pixels are already uploaded. */
  int (*compute)(void *ctx, const struct gl__nn_graph *g, uint32_t batch,
                 const struct gl__nn_image_ref *images);
  /* Waits until queued work is done (a no-op where compute is synchronous). */
  int (*synchronize)(void *ctx);
  void (*free)(void *ctx, void *ptr);
  void (*destroy)(void *ctx);
};

struct gl__nn_backend {
  const struct gl_nn_backend_i *i;
  void *ctx;
};

/* The CPU backend (cpu/): oneDNN for convolutions, OpenBLAS for GEMMs. */
int gl__nn_cpu_backend_create(const struct gl_nn_engine_opts *opts, struct gl__nn_backend *out,
                              char *err, size_t errlen);

#endif
