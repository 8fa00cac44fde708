/* The CUDA kernels (kernels/) against CPU references on random inputs.
 *
 * resize_normalize is compared with the CPU backend's own gl__cpu_resize
 * (it should agree bit for bit); the other ops with plain C references
 * written after cpu_ops.c (whose versions are static) in float64. Errors
 * are ||gpu - ref|| / ||ref||. Outputs are poisoned with NaN before each
 * launch, so an unwritten element fails the check.
 *
 * Exits 77 (skip) when the machine has no usable CUDA device. The seed is
 * printed; GL_TEST_SEED=<n> replays a run. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>

#include "gating.cuh"
#include "l2_normalize.cuh"
#include "nn/cpu/cpu_ops.h"
#include "pool.cuh"
#include "resize_normalize.cuh"
#include "softmax.cuh"

static int failures;
static uint64_t rng_state;

static uint64_t rng_next(void) {
  /* xorshift64* */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 2685821657736338717ull;
}

/* Uniform in [lo, hi). */
static float rng_uniform(float lo, float hi) {
  return lo + (hi - lo) * (float)((double)(rng_next() >> 11) / 9007199254740992.0);
}

static void fill(float *p, size_t n, float lo, float hi) {
  for (size_t i = 0; i < n; i++)
    p[i] = rng_uniform(lo, hi);
}

#define CHECK_CUDA(call)                                                                           \
  do {                                                                                             \
    cudaError_t e_ = (call);                                                                       \
    if (e_ != cudaSuccess) {                                                                       \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));       \
      exit(1);                                                                                     \
    }                                                                                              \
  } while (0)

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) {
    fprintf(stderr, "out of memory\n");
    exit(1);
  }
  return p;
}

static void *dev_alloc(size_t bytes) {
  void *p = NULL;
  CHECK_CUDA(cudaMalloc(&p, bytes));
  CHECK_CUDA(cudaMemset(p, 0xff, bytes)); /* NaN for floats */
  return p;
}

static void *dev_from(const void *src, size_t bytes) {
  void *p = dev_alloc(bytes);
  CHECK_CUDA(cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice));
  return p;
}

/* Compares n floats of got (rows of `cols` floats, ld_got apart) with ref
 * (packed), reports and counts a failure above tol. NaN always fails. */
static void compare(const char *what, const float *got, size_t ld_got, const double *ref,
                    size_t rows, size_t cols, double tol) {
  double num = 0, den = 0, maxabs = 0;
  size_t bad = 0, diff = 0;
  for (size_t r = 0; r < rows; r++)
    for (size_t c = 0; c < cols; c++) {
      double g = got[r * ld_got + c], f = ref[r * cols + c];
      if (!isfinite(g))
        bad++;
      if ((float)f != (float)g)
        diff++;
      num += (g - f) * (g - f);
      den += f * f;
      maxabs = fabs(g - f) > maxabs ? fabs(g - f) : maxabs;
    }
  double err = den > 0 ? sqrt(num / den) : sqrt(num);
  int ok = bad == 0 && err <= tol;
  printf("%-4s %-44s rel err %.3e (tol %.0e), max abs %.3e, %zu/%zu differ from ref%s\n",
         ok ? "ok" : "FAIL", what, err, tol, maxabs, diff, rows * cols,
         bad ? ", non-finite outputs" : "");
  if (!ok)
    failures++;
}

/* --- resize_normalize against gl__cpu_resize ------------------------------ */

static void alloc_axis(struct gl__cpu_axis *a, uint32_t n) {
  a->i0 = xmalloc(n * sizeof *a->i0);
  a->i1 = xmalloc(n * sizeof *a->i1);
  a->l0 = xmalloc(n * sizeof *a->l0);
  a->l1 = xmalloc(n * sizeof *a->l1);
}

static void free_axis(struct gl__cpu_axis *a) {
  free(a->i0);
  free(a->i1);
  free(a->l0);
  free(a->l1);
}

static void test_resize(uint32_t width, uint32_t height, uint32_t oh, uint32_t ow,
                        const struct gl__k_norm *norm, cudaStream_t st) {
  size_t in_n = (size_t)width * height * 3, out_n = (size_t)oh * ow * 3;
  uint8_t *rgb = xmalloc(in_n);
  for (size_t i = 0; i < in_n; i++)
    rgb[i] = (uint8_t)(rng_next() >> 56);

  struct gl__cpu_pre pre;
  memset(&pre, 0, sizeof pre);
  pre.h = oh;
  pre.w = ow;
  for (int c = 0; c < 3; c++)
    for (int v = 0; v < 256; v++)
      pre.lut[c][v] = ((float)v - norm->mean[c]) / norm->std[c];
  alloc_axis(&pre.ax_h, oh);
  alloc_axis(&pre.ax_w, ow);
  float *ref = xmalloc(out_n * sizeof *ref);
  gl__cpu_resize(&pre, rgb, width, height, ref);
  double *refd = xmalloc(out_n * sizeof *refd);
  for (size_t i = 0; i < out_n; i++)
    refd[i] = ref[i];

  uint8_t *d_rgb = dev_from(rgb, in_n);
  float *d_out = dev_alloc(out_n * sizeof(float));
  CHECK_CUDA(gl__k_resize_normalize(d_rgb, width, height, norm, oh, ow, d_out, st));
  CHECK_CUDA(cudaStreamSynchronize(st));
  float *got = xmalloc(out_n * sizeof *got);
  CHECK_CUDA(cudaMemcpy(got, d_out, out_n * sizeof *got, cudaMemcpyDeviceToHost));

  char what[96];
  snprintf(what, sizeof what, "resize_normalize %ux%u -> %ux%u", width, height, ow, oh);
  /* Bit-exact by construction; the tolerance only keeps a one-ulp slip
   * (a contracted FMA) visible as "differ" without failing the suite. */
  compare(what, got, out_n, refd, 1, out_n, 1e-6);

  CHECK_CUDA(cudaFree(d_rgb));
  CHECK_CUDA(cudaFree(d_out));
  free_axis(&pre.ax_h);
  free_axis(&pre.ax_w);
  free(rgb);
  free(ref);
  free(refd);
  free(got);
}

/* --- l2_normalize --------------------------------------------------------- */

static void test_l2(uint32_t rows, uint32_t dim, size_t ld, cudaStream_t st) {
  float *x = xmalloc(rows * ld * sizeof *x);
  fill(x, rows * ld, -2, 2);
  if (rows > 1)
    memset(x, 0, dim * sizeof *x); /* the eps branch: 0 / 1e-12 = 0 */
  double *ref = xmalloc((size_t)rows * dim * sizeof *ref);
  for (uint32_t r = 0; r < rows; r++) {
    double ss = 0;
    for (uint32_t i = 0; i < dim; i++)
      ss += (double)x[r * ld + i] * x[r * ld + i];
    double den = fmax(sqrt(ss), 1e-12);
    for (uint32_t i = 0; i < dim; i++)
      ref[(size_t)r * dim + i] = x[r * ld + i] / den;
  }
  float *d_x = dev_from(x, rows * ld * sizeof *x);
  float *d_y = dev_alloc(rows * ld * sizeof *x);
  CHECK_CUDA(gl__k_l2_normalize(d_x, d_y, rows, dim, ld, ld, st));
  CHECK_CUDA(cudaStreamSynchronize(st));
  float *got = xmalloc(rows * ld * sizeof *got);
  CHECK_CUDA(cudaMemcpy(got, d_y, rows * ld * sizeof *got, cudaMemcpyDeviceToHost));
  char what[96];
  snprintf(what, sizeof what, "l2_normalize [%u, %u] ld %zu", rows, dim, ld);
  compare(what, got, ld, ref, rows, dim, 1e-6);
  /* In place. */
  CHECK_CUDA(gl__k_l2_normalize(d_x, d_x, rows, dim, ld, ld, st));
  CHECK_CUDA(cudaStreamSynchronize(st));
  CHECK_CUDA(cudaMemcpy(got, d_x, rows * ld * sizeof *got, cudaMemcpyDeviceToHost));
  snprintf(what, sizeof what, "l2_normalize [%u, %u] in place", rows, dim);
  compare(what, got, ld, ref, rows, dim, 1e-6);
  CHECK_CUDA(cudaFree(d_x));
  CHECK_CUDA(cudaFree(d_y));
  free(x);
  free(ref);
  free(got);
}

/* --- softmax_rows --------------------------------------------------------- */

static void test_softmax(uint32_t rows, uint32_t n, float scale, cudaStream_t st) {
  size_t total = (size_t)rows * n;
  float *x = xmalloc(total * sizeof *x);
  fill(x, total, -30, 30);
  double *ref = xmalloc(total * sizeof *ref);
  for (uint32_t r = 0; r < rows; r++) {
    const float *xr = x + (size_t)r * n;
    double mx = -INFINITY, sum = 0;
    for (uint32_t j = 0; j < n; j++)
      mx = fmax(mx, (double)(xr[j] / scale));
    for (uint32_t j = 0; j < n; j++)
      sum += exp((double)(xr[j] / scale) - mx);
    for (uint32_t j = 0; j < n; j++)
      ref[(size_t)r * n + j] = exp((double)(xr[j] / scale) - mx) / sum;
  }
  float *d_x = dev_from(x, total * sizeof *x);
  float *d_y = dev_alloc(total * sizeof *x);
  CHECK_CUDA(gl__k_softmax_rows(d_x, d_y, rows, n, n, n, scale, st));
  CHECK_CUDA(cudaStreamSynchronize(st));
  float *got = xmalloc(total * sizeof *got);
  CHECK_CUDA(cudaMemcpy(got, d_y, total * sizeof *got, cudaMemcpyDeviceToHost));
  char what[96];
  snprintf(what, sizeof what, "softmax_rows [%u, %u] / %g", rows, n, (double)scale);
  compare(what, got, n, ref, rows, n, 1e-5);
  CHECK_CUDA(cudaFree(d_x));
  CHECK_CUDA(cudaFree(d_y));
  free(x);
  free(ref);
  free(got);
}

/* --- sigmoid, mul_map, mul_channel ---------------------------------------- */

static double sigmoid_d(double v) { return 1.0 / (1.0 + exp(-v)); }

static void test_gating(uint32_t batch, uint32_t hw, uint32_t ch, size_t ld, cudaStream_t st) {
  size_t xn = (size_t)batch * hw * ld, rows = (size_t)batch * hw;
  float *x = xmalloc(xn * sizeof *x), *m = xmalloc(rows * sizeof *m);
  float *e = xmalloc((size_t)batch * ch * sizeof *e);
  fill(x, xn, -4, 4);
  fill(m, rows, -8, 8);
  fill(e, (size_t)batch * ch, -8, 8);
  double *ref = xmalloc(rows * ch * sizeof *ref);
  float *got = xmalloc(xn * sizeof *got);
  float *d_x = dev_from(x, xn * sizeof *x), *d_m = dev_from(m, rows * sizeof *m);
  float *d_e = dev_from(e, (size_t)batch * ch * sizeof *e);
  float *d_y = dev_alloc(xn * sizeof *x);
  char what[96];

  for (size_t i = 0; i < rows; i++)
    ref[i] = sigmoid_d(m[i]);
  CHECK_CUDA(gl__k_sigmoid(d_m, d_y, rows, st));
  CHECK_CUDA(cudaStreamSynchronize(st));
  CHECK_CUDA(cudaMemcpy(got, d_y, rows * sizeof *got, cudaMemcpyDeviceToHost));
  snprintf(what, sizeof what, "sigmoid [%zu]", rows);
  compare(what, got, rows, ref, 1, rows, 1e-6);

  for (int sig = 0; sig < 2; sig++) {
    for (size_t r = 0; r < rows; r++)
      for (uint32_t c = 0; c < ch; c++)
        ref[r * ch + c] = x[r * ld + c] * (sig ? sigmoid_d(m[r]) : m[r]);
    CHECK_CUDA(gl__k_mul_map(d_x, d_m, d_y, batch, hw, ch, ld, ld, sig, st));
    CHECK_CUDA(cudaStreamSynchronize(st));
    CHECK_CUDA(cudaMemcpy(got, d_y, xn * sizeof *got, cudaMemcpyDeviceToHost));
    snprintf(what, sizeof what, "mul_map%s [%u, %u, %u] ld %zu", sig ? "(sigmoid)" : "", batch,
             hw, ch, ld);
    compare(what, got, ld, ref, rows, ch, 1e-6);

    for (size_t r = 0; r < rows; r++)
      for (uint32_t c = 0; c < ch; c++) {
        double g = e[(r / hw) * ch + c];
        ref[r * ch + c] = x[r * ld + c] * (sig ? sigmoid_d(g) : g);
      }
    CHECK_CUDA(gl__k_mul_channel(d_x, d_e, d_y, batch, hw, ch, ld, ld, sig, st));
    CHECK_CUDA(cudaStreamSynchronize(st));
    CHECK_CUDA(cudaMemcpy(got, d_y, xn * sizeof *got, cudaMemcpyDeviceToHost));
    snprintf(what, sizeof what, "mul_channel%s [%u, %u, %u] ld %zu", sig ? "(sigmoid)" : "",
             batch, hw, ch, ld);
    compare(what, got, ld, ref, rows, ch, 1e-6);
  }

  CHECK_CUDA(cudaFree(d_x));
  CHECK_CUDA(cudaFree(d_m));
  CHECK_CUDA(cudaFree(d_e));
  CHECK_CUDA(cudaFree(d_y));
  free(x);
  free(m);
  free(e);
  free(ref);
  free(got);
}

/* --- weighted mean / GeM pooling ------------------------------------------ */

/* p = 0: weighted mean. */
static void test_pool(uint32_t batch, uint32_t hw, uint32_t ch, size_t ld, double p,
                      cudaStream_t st) {
  size_t xn = (size_t)batch * hw * ld, rows = (size_t)batch * hw;
  float *x = xmalloc(xn * sizeof *x), *m = xmalloc(rows * sizeof *m);
  fill(x, xn, p > 0 ? -0.5f : -3.0f, 3.0f); /* GeM: some negatives to clamp */
  for (size_t i = 0; i < rows; i++)
    m[i] = (float)sigmoid_d(rng_uniform(-6, 6));
  double *ref = xmalloc((size_t)batch * ch * sizeof *ref);
  for (uint32_t b = 0; b < batch; b++) {
    double msum = 0;
    for (uint32_t n = 0; n < hw; n++)
      msum += m[(size_t)b * hw + n];
    for (uint32_t c = 0; c < ch; c++) {
      double acc = 0;
      for (uint32_t n = 0; n < hw; n++) {
        double v = x[((size_t)b * hw + n) * ld + c];
        if (p > 0)
          v = pow(fmax(v, 1e-6), p);
        acc += m[(size_t)b * hw + n] * v;
      }
      double v = acc / (msum + 1e-6);
      ref[(size_t)b * ch + c] = p > 0 ? pow(v, 1.0 / p) : v;
    }
  }
  float *d_x = dev_from(x, xn * sizeof *x), *d_m = dev_from(m, rows * sizeof *m);
  float *d_o = dev_alloc((size_t)batch * ch * sizeof(float));
  if (p > 0)
    CHECK_CUDA(gl__k_weighted_gem_pool(d_x, d_m, d_o, batch, hw, ch, ld, ch, p, st));
  else
    CHECK_CUDA(gl__k_weighted_mean_pool(d_x, d_m, d_o, batch, hw, ch, ld, ch, st));
  CHECK_CUDA(cudaStreamSynchronize(st));
  float *got = xmalloc((size_t)batch * ch * sizeof *got);
  CHECK_CUDA(cudaMemcpy(got, d_o, (size_t)batch * ch * sizeof *got, cudaMemcpyDeviceToHost));
  char what[96];
  if (p > 0)
    snprintf(what, sizeof what, "weighted_gem_pool p=%g [%u, %u, %u] ld %zu", p, batch, hw, ch,
             ld);
  else
    snprintf(what, sizeof what, "weighted_mean_pool [%u, %u, %u] ld %zu", batch, hw, ch, ld);
  compare(what, got, ch, ref, batch, ch, 1e-5);
  CHECK_CUDA(cudaFree(d_x));
  CHECK_CUDA(cudaFree(d_m));
  CHECK_CUDA(cudaFree(d_o));
  free(x);
  free(m);
  free(ref);
  free(got);
}

int main(void) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    printf("SKIP: no CUDA device (%s)\n",
           err != cudaSuccess ? cudaGetErrorString(err) : "device count 0");
    return 77;
  }
  struct cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  printf("device 0: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);

  const char *seed_env = getenv("GL_TEST_SEED");
  uint64_t seed = seed_env ? strtoull(seed_env, NULL, 0) : (uint64_t)time(NULL);
  printf("seed %llu (GL_TEST_SEED replays it)\n", (unsigned long long)seed);
  rng_state = seed * 0x9E3779B97F4A7C15ull + 1;

  cudaStream_t st;
  CHECK_CUDA(cudaStreamCreate(&st));

  const struct gl__k_norm imagenet = {{123.675f, 116.28f, 103.53f}, {58.395f, 57.12f, 57.375f}};
  const struct gl__k_norm tflite = {{128, 128, 128}, {128, 128, 128}};
  test_resize(640, 480, 224, 224, &imagenet, st); /* downsampling */
  test_resize(100, 37, 224, 224, &imagenet, st);  /* upsampling */
  test_resize(224, 224, 224, 224, &tflite, st);   /* identity */
  test_resize(1, 1, 224, 224, &tflite, st);
  test_resize(1023, 767, 224, 320, &imagenet, st);
  test_resize(225, 223, 224, 224, &tflite, st);

  test_l2(4, 512, 512, st);
  test_l2(3, 1280, 1536, st);
  test_l2(1, 1, 1, st);

  test_softmax(784, 784, 8.0f, st); /* 28x28 attention, d = 64 */
  test_softmax(49, 49, 11.313708f, st);
  test_softmax(5, 1, 1.0f, st);
  test_softmax(3, 1000, 1.0f, st);

  test_gating(2, 784, 128, 512, st);
  test_gating(1, 49, 37, 37, st);

  test_pool(1, 784, 128, 512, 0, st);
  test_pool(2, 196, 100, 128, 0, st);
  test_pool(2, 784, 128, 512, 3.0, st);
  test_pool(1, 49, 96, 96, 2.5, st);

  CHECK_CUDA(cudaStreamDestroy(st));
  printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
  return failures ? 1 : 0;
}
