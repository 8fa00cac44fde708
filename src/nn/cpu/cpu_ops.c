/* The CPU backend's own kernels (everything but convolutions), written to
 * follow OPS.md op by op: same formulas, same float32 rounding points
 * where PyTorch's are known (resize weights, normalisation), so that the
 * results match the reference to within summation order. */
#include "nn/cpu/cpu_ops.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#define GL__POOL_EPS 1e-6f
#define GL__GEM_CLAMP 1e-6f
#define GL__L2_EPS 1e-12

static float gl__sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

void gl__cpu_axis_init(uint32_t in, uint32_t out, struct gl__cpu_axis *a) {
  /* PyTorch's compute_indices_weights_linear, as the reference (Debian's
   * torch 1.13) really computes it: the scale is float32, but the source
   * index is evaluated in float64 and only the weight is rounded to
   * float32. OPS.md says float32 throughout; that would shift the weights
   * by up to ~1e-7 (measured with impulse inputs). */
  const double scale = (double)((float)in / (float)out);
  for (uint32_t o = 0; o < out; o++) {
    double src = scale * ((double)o + 0.5) - 0.5;
    if (src < 0)
      src = 0;
    uint32_t i0 = (uint32_t)src;
    if (i0 > in - 1)
      i0 = in - 1;
    double l1 = src - (double)i0;
    l1 = l1 < 0 ? 0 : l1 > 1 ? 1 : l1;
    a->i0[o] = i0;
    a->i1[o] = i0 < in - 1 ? i0 + 1 : i0;
    a->l1[o] = (float)l1;
    a->l0[o] = 1.0f - a->l1[o];
  }
}

/* The order of PyTorch's generic kernel: width within each of the two rows,
 * then height. (Its AVX2 build also contracts some of these into FMAs,
 * which no plain C order reproduces exactly: results differ by an ulp.) */
static inline float gl__bilerp(float x00, float x01, float x10, float x11, float l0w, float l1w,
                               float l0h, float l1h) {
  return (x00 * l0w + x01 * l1w) * l0h + (x10 * l0w + x11 * l1w) * l1h;
}

void gl__cpu_resize(struct gl__cpu_pre *s, const uint8_t *rgb, uint32_t width, uint32_t height,
                    float *dst) {
  const uint32_t h = s->h, w = s->w;
  const struct gl__cpu_axis *ah = &s->ax_h, *aw = &s->ax_w;
  gl__cpu_axis_init(height, h, &s->ax_h);
  gl__cpu_axis_init(width, w, &s->ax_w);
  const size_t stride = (size_t)width * 3;
  if (width == w && height == h) {
    /* The identity: weights are exactly 1 and 0, so the interpolation
     * below would give the table values bit for bit. */
    for (size_t i = 0; i < (size_t)h * w * 3; i += 3) {
      dst[i] = s->lut[0][rgb[i]];
      dst[i + 1] = s->lut[1][rgb[i + 1]];
      dst[i + 2] = s->lut[2][rgb[i + 2]];
    }
    return;
  }
#pragma omp parallel for schedule(static)
  for (uint32_t oy = 0; oy < h; oy++) {
    const uint8_t *r0 = rgb + ah->i0[oy] * stride, *r1 = rgb + ah->i1[oy] * stride;
    float l0h = ah->l0[oy], l1h = ah->l1[oy];
    float *out = dst + (size_t)oy * w * 3;
    for (uint32_t ox = 0; ox < w; ox++) {
      size_t c0 = (size_t)aw->i0[ox] * 3, c1 = (size_t)aw->i1[ox] * 3;
      for (int c = 0; c < 3; c++) {
        const float *lut = s->lut[c];
        out[ox * 3 + c] = gl__bilerp(lut[r0[c0 + c]], lut[r0[c1 + c]], lut[r1[c0 + c]],
                                     lut[r1[c1 + c]], aw->l0[ox], aw->l1[ox], l0h, l1h);
      }
    }
  }
}

/* The distinct input indices an axis reads, in increasing order, and for
 * each output its two indices into that list. */
static uint32_t gl__grid_axis(const struct gl__cpu_axis *a, uint32_t out, uint32_t *list,
                              uint32_t *g0, uint32_t *g1) {
  uint32_t n = 0;
  for (uint32_t o = 0; o < out; o++) {
    /* i0 never decreases and i1 is i0 or i0 + 1, so a value not above the
     * last one listed is already listed. */
    if (n == 0 || a->i0[o] > list[n - 1])
      list[n++] = a->i0[o];
    g0[o] = n - 1;
    while (list[g0[o]] != a->i0[o])
      g0[o]--;
    if (a->i1[o] > list[n - 1])
      list[n++] = a->i1[o];
    g1[o] = a->i1[o] == a->i0[o] ? g0[o] : g0[o] + 1;
  }
  return n;
}

void gl__cpu_resizer_stem(struct gl__cpu_pre *s, const uint8_t *rgb, uint32_t width,
                          uint32_t height, const struct gl__nn_op *op, float *dst) {
  const uint32_t h = s->h, w = s->w, C = s->c;
  gl__cpu_axis_init(height, h, &s->ax_h);
  gl__cpu_axis_init(width, w, &s->ax_w);
  uint32_t nr = gl__grid_axis(&s->ax_h, h, s->rows, s->g0h, s->g1h);
  uint32_t nc = gl__grid_axis(&s->ax_w, w, s->cols, s->g0w, s->g1w);
  const float *bias = op->p.stem.b;

  /* relu(conv3x3) with torch padding (1 on each side, zeros after
   * normalisation), at the grid positions only. */
#pragma omp parallel for schedule(static)
  for (uint32_t r = 0; r < nr; r++) {
    float col[27];
    float acc[64];
    uint32_t y = s->rows[r];
    for (uint32_t q = 0; q < nc; q++) {
      uint32_t x = s->cols[q];
      for (int ci = 0; ci < 3; ci++)
        for (int ky = 0; ky < 3; ky++)
          for (int kx = 0; kx < 3; kx++) {
            long yy = (long)y + ky - 1, xx = (long)x + kx - 1;
            col[ci * 9 + ky * 3 + kx] =
                yy < 0 || xx < 0 || yy >= (long)height || xx >= (long)width
                    ? 0.0f
                    : s->lut[ci][rgb[((size_t)yy * width + (size_t)xx) * 3 + (size_t)ci]];
          }
      float *out = s->grid + ((size_t)r * nc + q) * C;
      for (uint32_t c0 = 0; c0 < C; c0 += 64) {
        uint32_t n = C - c0 < 64 ? C - c0 : 64;
        for (uint32_t o = 0; o < n; o++)
          acc[o] = 0;
        for (int k = 0; k < 27; k++) {
          const float *wk = s->stem_wt + (size_t)k * C + c0;
          for (uint32_t o = 0; o < n; o++)
            acc[o] += col[k] * wk[o];
        }
        for (uint32_t o = 0; o < n; o++) {
          float v = acc[o] + bias[c0 + o];
          out[c0 + o] = v > 0 ? v : 0;
        }
      }
    }
  }

  const struct gl__cpu_axis *ah = &s->ax_h, *aw = &s->ax_w;
#pragma omp parallel for schedule(static)
  for (uint32_t oy = 0; oy < h; oy++) {
    const float *r0 = s->grid + (size_t)s->g0h[oy] * nc * C;
    const float *r1 = s->grid + (size_t)s->g1h[oy] * nc * C;
    float *out = dst + (size_t)oy * w * C;
    for (uint32_t ox = 0; ox < w; ox++) {
      size_t a = (size_t)s->g0w[ox] * C, b = (size_t)s->g1w[ox] * C;
      for (uint32_t c = 0; c < C; c++)
        out[(size_t)ox * C + c] = gl__bilerp(r0[a + c], r0[b + c], r1[a + c], r1[b + c], aw->l0[ox],
                                             aw->l1[ox], ah->l0[oy], ah->l1[oy]);
    }
  }
}

/* mean over hw of each channel; summed in double so that the result does
 * not depend on the order (the reference sums in float32 pairwise). */
static void gl__channel_mean(const float *x, size_t hw, uint32_t c, size_t pixel_stride,
                             float *out) {
  for (uint32_t k = 0; k < c; k++) {
    double acc = 0;
    for (size_t i = 0; i < hw; i++)
      acc += x[i * pixel_stride + k];
    out[k] = (float)(acc / (double)hw);
  }
}

/* y = W x + b, W [out, in] row-major. */
static void gl__linear(const float *W, const float *b, const float *x, uint32_t in, uint32_t out,
                       float *y) {
  memcpy(y, b, out * sizeof *y);
  cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)out, (int)in, 1.0f, W, (int)in, x, 1, 1.0f, y, 1);
}

void gl__cpu_se(float *x, size_t hw, uint32_t c, size_t pixel_stride, uint32_t hidden,
                const float *fc1_w, const float *fc1_b, const float *fc2_w, const float *fc2_b,
                float *tmp) {
  float *s = tmp, *e = tmp + c, *z = tmp + 2 * (size_t)c;
  gl__channel_mean(x, hw, c, pixel_stride, s);
  gl__linear(fc1_w, fc1_b, s, c, hidden, z);
  for (uint32_t j = 0; j < hidden; j++)
    z[j] = z[j] > 0 ? z[j] : 0;
  gl__linear(fc2_w, fc2_b, z, hidden, c, e);
  for (uint32_t k = 0; k < c; k++)
    e[k] = gl__sigmoid(e[k]);
#pragma omp parallel for schedule(static) if (hw > 1024)
  for (size_t i = 0; i < hw; i++)
    for (uint32_t k = 0; k < c; k++)
      x[i * pixel_stride + k] *= e[k];
}

void gl__cpu_sk_mix(const struct gl__nn_op *op, const float *u0, const float *u1, float *dst,
                    size_t hw, uint32_t c, float *tmp) {
  uint32_t z = op->p.sk.hidden;
  float *s = tmp, *a = tmp + c, *hz = tmp + 3 * (size_t)c;
  /* global_avg_pool(u0 + u1): the sum is rounded to float first. */
  for (uint32_t k = 0; k < c; k++) {
    double acc = 0;
    for (size_t i = 0; i < hw; i++)
      acc += (double)(u0[i * c + k] + u1[i * c + k]);
    s[k] = (float)(acc / (double)hw);
  }
  gl__linear(op->p.sk.fc_w, op->p.sk.fc_b, s, c, z, hz);
  for (uint32_t j = 0; j < z; j++)
    hz[j] = hz[j] > 0 ? hz[j] : 0;
  gl__linear(op->p.sk.sel_w, op->p.sk.sel_b, hz, z, 2 * c, a);
  /* Softmax over the two branches, per channel. */
  for (uint32_t k = 0; k < c; k++) {
    float m = fmaxf(a[k], a[c + k]);
    float e0 = expf(a[k] - m), e1 = expf(a[c + k] - m), sum = e0 + e1;
    a[k] = e0 / sum;
    a[c + k] = e1 / sum;
  }
#pragma omp parallel for schedule(static) if (hw > 1024)
  for (size_t i = 0; i < hw; i++)
    for (uint32_t k = 0; k < c; k++)
      dst[i * c + k] = u0[i * c + k] * a[k] + u1[i * c + k] * a[c + k];
}

static void gl__trace(const struct gl__nn_graph *g, const char *name, uint32_t n, const float *p,
                      uint32_t h, uint32_t w, uint32_t c, size_t stride) {
  if (g->trace)
    g->trace(g->trace_ud, name, g->trace_first + n, p, h, w, c, stride);
}

static void gl__l2_normalize(const float *x, uint32_t n, float *y) {
  double ss = 0;
  for (uint32_t i = 0; i < n; i++)
    ss += (double)x[i] * x[i];
  float norm = (float)sqrt(ss);
  float den = norm > (float)GL__L2_EPS ? norm : (float)GL__L2_EPS;
  for (uint32_t i = 0; i < n; i++)
    y[i] = x[i] / den;
}

/* Row softmax of S [n, n] after dividing by scale (the reference divides
 * the scores by sqrt(d), then takes softmax over the keys). */
static void gl__softmax_rows(float *S, size_t n, float scale) {
#pragma omp parallel for schedule(static) if (n > 64)
  for (size_t i = 0; i < n; i++) {
    float *r = S + i * n;
    float mx = -INFINITY;
    for (size_t j = 0; j < n; j++) {
      r[j] /= scale;
      mx = r[j] > mx ? r[j] : mx;
    }
    float sum = 0;
    for (size_t j = 0; j < n; j++) {
      r[j] = expf(r[j] - mx);
      sum += r[j];
    }
    for (size_t j = 0; j < n; j++)
      r[j] /= sum;
  }
}

/* out = X W^T + b for X [n, d] (rows ldx apart), W [d_out, d]. */
static void gl__conv1x1(const float *X, size_t n, uint32_t d, size_t ldx, const float *W,
                        const float *b, uint32_t d_out, float *out, size_t ldo) {
  for (size_t i = 0; i < n; i++)
    memcpy(out + i * ldo, b, d_out * sizeof *out);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)d_out, (int)d, 1.0f, X,
              (int)ldx, W, (int)d, 1.0f, out, (int)ldo);
}

/* One (image, group) subspace of an OSM (OPS.md 3.3): attention with its
 * residual, SE, overlap map, weighted pooling into v [d]. */
static void gl__osm_group(const struct gl__nn_graph *g, const struct gl__nn_op *op, uint32_t n,
                          uint32_t gi, float *P, float *v, const struct gl__cpu_osm_thread *t) {
  const uint32_t D = op->p.osm.dim, d = D / op->p.osm.groups, L = op->p.osm.level;
  const size_t hw = (size_t)op->src.h * op->src.w;
  const struct gl__nn_osm_group *pg = &op->p.osm.g[gi];
  const float scale = (float)sqrt((double)d);
  char name[64];
  float *X = P + (size_t)gi * d; /* channels [g*d, (g+1)*d), rows D apart */

  gl__conv1x1(X, hw, d, D, pg->q_w, pg->q_b, d, t->q, d);
  gl__conv1x1(X, hw, d, D, pg->k_w, pg->k_b, d, t->k, d);
  gl__conv1x1(X, hw, d, D, pg->v_w, pg->v_b, d, t->v, d);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)hw, (int)hw, (int)d, 1.0f, t->q, (int)d,
              t->k, (int)d, 0.0f, t->s, (int)hw);
  gl__softmax_rows(t->s, hw, scale);
  /* X += A V, written in place: the residual is free in the GEMM. */
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)hw, (int)d, (int)hw, 1.0f, t->s,
              (int)hw, t->v, (int)d, 1.0f, X, (int)D);
  if (g->trace) {
    snprintf(name, sizeof name, "osm.%u.groups.%u.attention", L, gi);
    gl__trace(g, name, n, X, op->src.h, op->src.w, d, D);
  }
  gl__cpu_se(X, hw, d, D, op->p.osm.se_hidden, pg->fc1_w, pg->fc1_b, pg->fc2_w, pg->fc2_b, t->tmp);
  if (g->trace) {
    snprintf(name, sizeof name, "osm.%u.groups.%u.se", L, gi);
    gl__trace(g, name, n, X, op->src.h, op->src.w, d, D);
  }
  /* Overlap map m = sigmoid(conv1x1(X)) and its sum. */
  for (size_t i = 0; i < hw; i++)
    t->m[i] = pg->ov_b[0];
  cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)hw, (int)d, 1.0f, X, (int)D, pg->ov_w, 1, 1.0f,
              t->m, 1);
  double msum = 0;
  for (size_t i = 0; i < hw; i++) {
    t->m[i] = gl__sigmoid(t->m[i]);
    msum += t->m[i];
  }
  if (g->trace) {
    snprintf(name, sizeof name, "osm.%u.groups.%u.overlap", L, gi);
    gl__trace(g, name, n, t->m, op->src.h, op->src.w, 1, 1);
  }
  /* Weighted pooling: sum_n m[n] x[n] / (sum_n m[n] + eps); GeM pools
   * max(x, eps)^p instead of x (into q, free by now), then takes the 1/p
   * power. */
  const float *src = X;
  size_t ld = D;
  const double p = op->p.osm.gem_p;
  if (op->p.osm.pool == GL__NN_POOL_GEM) {
    for (size_t i = 0; i < hw; i++)
      for (uint32_t c = 0; c < d; c++) {
        float x = fmaxf(X[i * D + c], GL__GEM_CLAMP);
        /* PyTorch's pow special-cases these exponents. */
        t->q[i * d + c] = p == 3.0   ? x * x * x
                          : p == 2.0 ? x * x
                          : p == 1.0 ? x
                                     : powf(x, (float)p);
      }
    src = t->q;
    ld = d;
  }
  cblas_sgemv(CblasRowMajor, CblasTrans, (int)hw, (int)d, 1.0f, src, (int)ld, t->m, 1, 0.0f, v, 1);
  float den = (float)msum + GL__POOL_EPS;
  for (uint32_t c = 0; c < d; c++) {
    v[c] /= den;
    if (op->p.osm.pool == GL__NN_POOL_GEM)
      v[c] = powf(v[c], (float)(1.0 / p));
  }
  if (g->trace) {
    snprintf(name, sizeof name, "osm.%u.groups.%u.pooled", L, gi);
    gl__trace(g, name, n, v, 1, 1, d, d);
  }
}

void gl__cpu_osm(const struct gl__nn_graph *g, const struct gl__nn_op *op, uint32_t batch,
                 struct gl__cpu_osm_scratch *s) {
  const uint32_t D = op->p.osm.dim, G = op->p.osm.groups, L = op->p.osm.level;
  const size_t hw = (size_t)op->src.h * op->src.w, rows = hw * batch, cin = op->src.c;
  const float *F = gl__nn_tensor_at(g, &op->src, 0);
  char name[64];

  /* proj: a 1x1 conv in NHWC is a GEMM over all pixels of the batch, split
   * into one row block per thread. */
  const size_t nt = s->threads, chunk = (rows + nt - 1) / nt;
#pragma omp parallel for schedule(static) if (nt > 1 && rows * cin * D > (1u << 20))
  for (size_t t = 0; t < nt; t++) {
    size_t r0 = t * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
    if (r0 < r1)
      gl__conv1x1(F + r0 * cin, r1 - r0, (uint32_t)cin, cin, op->p.osm.proj_w, op->p.osm.proj_b, D,
                  s->p + r0 * D, D);
  }
  for (uint32_t n = 0; n < batch && g->trace; n++) {
    snprintf(name, sizeof name, "osm.%u.proj", L);
    gl__trace(g, name, n, s->p + n * hw * D, op->src.h, op->src.w, D, D);
  }

  /* The subspaces are independent: one (image, group) per thread. Tracing
   * runs them in order, so that callbacks never run concurrently. */
  const int jobs = (int)(batch * G);
#pragma omp parallel for schedule(dynamic) if (nt > 1 && !g->trace)
  for (int j = 0; j < jobs; j++) {
    uint32_t n = (uint32_t)j / G, gi = (uint32_t)j % G;
    const struct gl__cpu_osm_thread *t = &s->thr[omp_get_thread_num() % (int)nt];
    gl__osm_group(g, op, n, gi, s->p + n * hw * D, s->cat + (size_t)n * D + (size_t)gi * (D / G),
                  t);
  }

  for (uint32_t n = 0; n < batch; n++) {
    gl__linear(op->p.osm.embed_w, op->p.osm.embed_b, s->cat + (size_t)n * D, D, op->p.osm.out_dim,
               s->emb);
    if (g->trace) {
      snprintf(name, sizeof name, "osm.%u.embed", L);
      gl__trace(g, name, n, s->emb, 1, 1, op->p.osm.out_dim, op->p.osm.out_dim);
    }
    float *out = gl__nn_tensor_at(g, &op->dst, n);
    gl__l2_normalize(s->emb, op->p.osm.out_dim, out);
    if (op->trace[0])
      gl__trace(g, op->trace, n, out, 1, 1, op->p.osm.out_dim, op->p.osm.out_dim);
  }
}

void gl__cpu_fuse(const struct gl__nn_graph *g, const struct gl__nn_op *op, uint32_t batch,
                  float *tmp) {
  const uint32_t dim = op->dst.c, L = op->p.fuse.levels;
  for (uint32_t n = 0; n < batch; n++) {
    const float *d = gl__nn_tensor_at(g, &op->src, n); /* [L, dim] */
    for (uint32_t k = 0; k < dim; k++) {
      float acc = op->p.fuse.w[0] * d[k];
      for (uint32_t l = 1; l < L; l++)
        acc += op->p.fuse.w[l] * d[(size_t)l * dim + k];
      tmp[k] = acc;
    }
    gl__trace(g, "fusion", n, tmp, 1, 1, dim, dim);
    float *out = gl__nn_tensor_at(g, &op->dst, n);
    gl__l2_normalize(tmp, dim, out);
    gl__trace(g, op->trace, n, out, 1, 1, dim, dim);
  }
}
