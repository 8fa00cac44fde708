/* Driver of bench/cpu_engine.py: frames per second of the C engine on the
 * CPU backend, at one batch size, on synthetic 224x224 frames.
 *
 *   cpu_engine MODEL.safetensors BATCH THREADS SECONDS
 *
 * Prints one JSON line: {"batch": B, "threads": T, "frames_per_s": F, ...}.
 * Run through bench/cpu_engine.py, which measures PyTorch alongside. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/err.h"
#include "nn/nn.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s MODEL BATCH THREADS SECONDS\n", argv[0]);
    return 2;
  }
  const uint32_t batch = (uint32_t)atoi(argv[2]), threads = (uint32_t)atoi(argv[3]);
  const double seconds = atof(argv[4]);
  const uint32_t w = 224, h = 224;
  char err[512];
  struct gl_nn_model *m = NULL;
  struct gl_nn_engine *e = NULL;
  int rc = gl_nn_model_load(argv[1], &m, err, sizeof err);
  if (rc) {
    fprintf(stderr, "%s: %s\n", gl_err_name(rc), err);
    return 1;
  }
  struct gl_nn_engine_opts o = {.backend = GL_NN_BACKEND_CPU,
                                .max_batch = batch,
                                .threads = threads,
                                .max_input_pixels = (uint64_t)w * h};
  double t0 = now_s();
  if ((rc = gl_nn_engine_create(m, &o, &e, err, sizeof err))) {
    fprintf(stderr, "%s: %s\n", gl_err_name(rc), err);
    return 1;
  }
  double plan_s = now_s() - t0;
  uint32_t dim = gl_nn_model_descriptor_dim(m);
  struct gl_image *imgs = calloc(batch, sizeof *imgs);
  float *out = calloc((size_t)batch * dim, sizeof *out);
  uint8_t *px = malloc((size_t)w * h * 3);
  if (!imgs || !out || !px)
    return 1;
  for (size_t i = 0; i < (size_t)w * h * 3; i++)
    px[i] = (uint8_t)((i * 2654435761u) >> 24);
  for (uint32_t i = 0; i < batch; i++)
    imgs[i] = (struct gl_image){px, w, h};

  /* Warm-up: first runs page in weights and spin up thread pools. */
  for (int i = 0; i < 3; i++)
    if ((rc = gl_nn_engine_encode(e, imgs, batch, out))) {
      fprintf(stderr, "encode: %s\n", gl_err_name(rc));
      return 1;
    }
  long iters = 0;
  t0 = now_s();
  double t;
  do {
    if ((rc = gl_nn_engine_encode(e, imgs, batch, out))) {
      fprintf(stderr, "encode: %s\n", gl_err_name(rc));
      return 1;
    }
    iters++;
    t = now_s() - t0;
  } while (t < seconds || iters < 5);
  printf("{\"batch\": %u, \"threads\": %u, \"frames_per_s\": %.3f, \"ms_per_call\": %.3f, "
         "\"iterations\": %ld, \"plan_s\": %.3f, \"backend\": \"%s\"}\n",
         batch, threads, (double)iters * batch / t, t / (double)iters * 1e3, iters, plan_s,
         gl_nn_engine_backend_name(e));
  free(px);
  free(out);
  free(imgs);
  gl_nn_engine_destroy(e);
  gl_nn_model_destroy(m);
  return 0;
}
