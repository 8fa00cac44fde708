/* The fine stage (fine.h): placements, the cell products, scores, and
 * estimates. */
#include "loc/fine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "core/err.h"
#include "loc/locate.h"
#include "map/dense.h"
#include "nn/nn.h"

/* The query grid is at most this many cells a side (an S = 512 input at
 * stride 8); the shipped model's is 8. */
#define GL__MAX_QSIDE 64u
/* Placements scored by one matrix product in gl__score_gathered: their
 * gathered cells, GL__CHUNK rows of |K_q| * C floats (426 KiB for the
 * shipped model), stay in the cache while every heading is multiplied
 * against them. */
#define GL__CHUNK 32u
/* What gathering one float costs, in multiply-adds (gl__score's choice;
 * set from bench/fine_scan's table in bench/README.md). */
#define GL__GATHER_COST 10.0

void gl_loc_fine_params_init(struct gl_loc_fine_params *p) {
  *p = (struct gl_loc_fine_params){
      .top_k = 50,
      .radius_cells = 2,
      .step_deg = 10,
      .tolerance_deg = 20,
      .nms_m = 80,
      .temperature = 0.02,
      .full_scan_cells = 0,
      .centering = 0.5,
  };
}

int gl_loc_fine_params_check(const struct gl_loc_fine_params *p, char *err, size_t errlen) {
  if (p->top_k < 1 || p->top_k > 1024)
    return gl_fail(err, errlen, GL_EINVAL, "fine top_k %u is not in 1..1024", p->top_k);
  if (p->radius_cells > 16)
    return gl_fail(err, errlen, GL_EINVAL, "fine radius %u cells is not in 0..16", p->radius_cells);
  if (!(p->step_deg >= 1 && p->step_deg <= 180) ||
      fabs(360.0 / p->step_deg - round(360.0 / p->step_deg)) > 1e-9)
    return gl_fail(err, errlen, GL_EINVAL, "fine heading step %g must divide 360 (1..180)",
                   p->step_deg);
  if (!(p->tolerance_deg >= 0 && p->tolerance_deg <= 180))
    return gl_fail(err, errlen, GL_EINVAL, "heading tolerance %g is not in 0..180",
                   p->tolerance_deg);
  if (!(p->centering >= 0 && p->centering <= 1))
    return gl_fail(err, errlen, GL_EINVAL, "fine centering %g is not in 0..1", p->centering);
  if (!(p->nms_m >= 0 && p->nms_m <= 1e5) || !(p->temperature > 0 && p->temperature <= 10))
    return gl_fail(err, errlen, GL_EINVAL, "fine nms_m %g or temperature %g out of range", p->nms_m,
                   p->temperature);
  if (p->scoring != GL_LOC_FINE_SCORE_AUTO && p->scoring != GL_LOC_FINE_SCORE_GATHER &&
      p->scoring != GL_LOC_FINE_SCORE_CORRELATE)
    return gl_fail(err, errlen, GL_EINVAL, "fine scoring %d is not a gl_loc_fine_scoring",
                   (int)p->scoring);
  return 0;
}

uint32_t gl_loc_fine_headings(const struct gl_loc_fine_params *p, double heading_deg, float *out,
                              uint32_t max) {
  uint32_t n = 0;
  if (isnan(heading_deg)) {
    uint32_t k = (uint32_t)lround(360.0 / p->step_deg);
    for (uint32_t i = 0; i < k && n < max; i++)
      out[n++] = (float)(i * p->step_deg);
    return n;
  }
  int32_t k = (int32_t)floor(p->tolerance_deg / p->step_deg + 1e-9);
  for (int32_t i = -k; i <= k && n < max; i++) {
    double h = fmod(heading_deg + i * p->step_deg, 360.0);
    out[n++] = (float)(h < 0 ? h + 360.0 : h);
  }
  return n;
}

struct gl_loc_fine {
  struct gl_loc_fine_params p;
  uint32_t max_h, side, ch, nk;
  int32_t kr[GL__MAX_QSIDE * GL__MAX_QSIDE], kc[GL__MAX_QSIDE * GL__MAX_QSIDE];
  float *q; /* [max_h + 1][nk][ch]: the masked query cells of the headings
               scored, then (when centring) their mean over every heading */
  /* Sized to the largest map seen (grown, never per frame). */
  size_t grid_cap;  /* cells of that map */
  uint32_t *stamp;  /* per reference cell: frame stamp when in reach */
  int32_t *cidx;    /* its column in the product when stamped */
  uint32_t *pstamp; /* per placement (top-left cell): frame stamp */
  int32_t *pidx;    /* its index in the placement list when stamped */
  uint32_t frame;
  size_t last_p;       /* placements scored by the last run or scan */
  uint32_t last_h;     /* and its headings */
  /* The last gl_loc_fine_run's scores, on map run_d, are still in score[]
   * (nothing since: its stamp is still frame, its P and H last_p and
   * last_h). */
  bool run_valid;
  const struct gl_map_dense *run_d;
  size_t cap_p, cap_c; /* placements and cells in reach */
  int32_t *pr, *pq;    /* placements */
  int64_t *ptile;      /* the candidate tile a placement came from */
  int32_t *pk;         /* [nk][P]: product column of placement p's cell k */
  size_t *cell;        /* [C_reach]: the reference cell of each product column */
  float *score;        /* [P][H] */
  float *ymean;        /* [years][P]: centring's term, per source (reach) */
  size_t ymean_cap;
  float *acc;          /* [P] */
  float *dsub;         /* [years * C_reach][ch] gathered reference cells */
  float *prod;         /* [nk][years * C_reach]: one heading's products */
  size_t dsub_cap, prod_cap;
  float *patch; /* [GL__CHUNK][nk * ch]: gathered placements' cells */
  float *gprod; /* [max_h + 1][GL__CHUNK]: their scores */
  float *best;       /* [P] best over headings */
  uint32_t *besth;   /* [P] */
  uint8_t *taken;    /* [P] */
  int64_t *esupport; /* [max_out]: one supporting tile per estimate */
  size_t esupport_cap;
};

int gl_loc_fine_create(const struct gl_loc_fine_params *p, uint32_t max_headings, uint32_t side,
                       uint32_t channels, struct gl_loc_fine **out, char *err, size_t errlen) {
  *out = NULL;
  int rc = gl_loc_fine_params_check(p, err, errlen);
  if (rc)
    return rc;
  if (!max_headings || max_headings > 360 || !side || side > GL__MAX_QSIDE || !channels ||
      channels > 4096)
    return gl_fail(err, errlen, GL_EINVAL, "fine stage: %u headings of %ux%u cells of %u",
                   max_headings, side, side, channels);
  struct gl_loc_fine *f = calloc(1, sizeof *f);
  if (!f)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  f->p = *p;
  f->max_h = max_headings;
  f->side = side;
  f->ch = channels;
  /* The disc of cells whose centre is within side/2 cells of the centre. */
  for (uint32_t a = 0; a < side; a++)
    for (uint32_t b = 0; b < side; b++) {
      double dy = a + 0.5 - side / 2.0, dx = b + 0.5 - side / 2.0;
      if (dx * dx + dy * dy <= side * side / 4.0) {
        f->kr[f->nk] = (int32_t)a;
        f->kc[f->nk] = (int32_t)b;
        f->nk++;
      }
    }
  /* Placements: the top K's windows (or a prior's circle, bounded the same
   * way: at most as many as K windows hold). */
  uint32_t win = 2 * p->radius_cells + 1;
  f->cap_p = (size_t)p->top_k * win * win;
  if (f->cap_p < 4096)
    f->cap_p = 4096;
  if (f->cap_p < p->full_scan_cells)
    f->cap_p = p->full_scan_cells;
  f->cap_c = f->cap_p + (size_t)p->top_k * (side + win) * (side + win);
  if (f->cap_c < (size_t)(64 + side) * (64 + side)) /* a 64 x 64 scan (gl_loc_fine_scan) */
    f->cap_c = (size_t)(64 + side) * (64 + side);
  if (!(f->q = malloc((size_t)(max_headings + 1) * f->nk * channels * sizeof(float))) ||
      !(f->pr = malloc(f->cap_p * sizeof(int32_t))) ||
      !(f->pq = malloc(f->cap_p * sizeof(int32_t))) ||
      !(f->ptile = malloc(f->cap_p * sizeof(int64_t))) ||
      !(f->pk = malloc(f->cap_p * f->nk * sizeof(int32_t))) ||
      !(f->cell = malloc(f->cap_c * sizeof(size_t))) ||
      !(f->patch = malloc((size_t)GL__CHUNK * f->nk * channels * sizeof(float))) ||
      !(f->gprod = malloc((size_t)(max_headings + 1) * GL__CHUNK * sizeof(float))) ||
      !(f->score = malloc(f->cap_p * max_headings * sizeof(float))) ||
      !(f->acc = malloc(f->cap_p * sizeof(float))) ||
      !(f->best = malloc(f->cap_p * sizeof(float))) ||
      !(f->besth = malloc(f->cap_p * sizeof(uint32_t))) || !(f->taken = malloc(f->cap_p))) {
    gl_loc_fine_destroy(f);
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  }
  *out = f;
  return 0;
}

void gl_loc_fine_destroy(struct gl_loc_fine *f) {
  if (!f)
    return;
  free(f->q);
  free(f->stamp);
  free(f->cidx);
  free(f->pstamp);
  free(f->pidx);
  free(f->pr);
  free(f->pq);
  free(f->ptile);
  free(f->pk);
  free(f->cell);
  free(f->patch);
  free(f->gprod);
  free(f->score);
  free(f->ymean);
  free(f->acc);
  free(f->dsub);
  free(f->prod);
  free(f->best);
  free(f->besth);
  free(f->taken);
  free(f->esupport);
  free(f);
}

/* Grows the per-map scratch for map d (once per map size, not per frame). */
static int gl__fit_map(struct gl_loc_fine *f, const struct gl_map_dense *d, size_t max_out) {
  size_t cells = (size_t)d->rows * d->cols;
  if (cells > f->grid_cap) {
    free(f->stamp);
    free(f->cidx);
    free(f->pstamp);
    free(f->pidx);
    f->stamp = calloc(cells, sizeof *f->stamp);
    f->cidx = malloc(cells * sizeof *f->cidx);
    f->pstamp = calloc(cells, sizeof *f->pstamp);
    f->pidx = malloc(cells * sizeof *f->pidx);
    f->grid_cap = f->stamp && f->cidx && f->pstamp && f->pidx ? cells : 0;
    f->frame = 0;
    if (!f->grid_cap)
      return GL_ENOMEM;
  }
  size_t need = (size_t)d->years * f->cap_c;
  size_t dsub_n = need * d->channels, prod_n = (size_t)f->nk * need;
  if (dsub_n > f->dsub_cap) {
    free(f->dsub);
    f->dsub_cap = (f->dsub = malloc(dsub_n * sizeof(float))) ? dsub_n : 0;
    if (!f->dsub_cap)
      return GL_ENOMEM;
  }
  if (prod_n > f->prod_cap) {
    free(f->prod);
    f->prod_cap = (f->prod = malloc(prod_n * sizeof(float))) ? prod_n : 0;
    if (!f->prod_cap)
      return GL_ENOMEM;
  }
  if (need > f->ymean_cap) { /* years * cap_p <= years * cap_c */
    free(f->ymean);
    f->ymean_cap = (f->ymean = malloc(need * sizeof(float))) ? need : 0;
    if (!f->ymean_cap)
      return GL_ENOMEM;
  }
  if (max_out > f->esupport_cap) {
    int64_t *e = realloc(f->esupport, max_out * sizeof *e);
    if (!e)
      return GL_ENOMEM;
    f->esupport = e;
    f->esupport_cap = max_out;
  }
  return 0;
}

/* Adds placement (r, q) from candidate tile `tile` unless it is off the map
 * or already there. Returns false when the list is full. */
static bool gl__add(struct gl_loc_fine *f, size_t *P, uint32_t PR, uint32_t PC, int64_t r,
                    int64_t q, int64_t tile) {
  if (r < 0 || q < 0 || r >= PR || q >= PC)
    return true;
  size_t i = (size_t)r * PC + (size_t)q;
  if (f->pstamp[i] == f->frame)
    return true;
  if (*P == f->cap_p)
    return false;
  f->pstamp[i] = f->frame;
  f->pidx[i] = (int32_t)*P;
  f->pr[*P] = (int32_t)r;
  f->pq[*P] = (int32_t)q;
  f->ptile[*P] = tile;
  (*P)++;
  return true;
}

/* Index of placement (r, q) among this frame's first P, or -1. */
static int32_t gl__placement(const struct gl_loc_fine *f, uint32_t PR, uint32_t PC, size_t P,
                             int64_t r, int64_t q) {
  if (r < 0 || q < 0 || r >= PR || q >= PC)
    return -1;
  size_t i = (size_t)r * PC + (size_t)q;
  return f->pstamp[i] == f->frame && (size_t)f->pidx[i] < P ? f->pidx[i] : -1;
}

/* The vertex offset of the parabola through (-1, a), (0, b), (1, c), when b
 * is a peak; 0 otherwise. Clamped to +-1/2. */
static double gl__parabola(double a, double b, double c) {
  double den = a - 2 * b + c;
  if (!(den < 0))
    return 0;
  double d = (a - c) / (2 * den);
  return d < -0.5 ? -0.5 : d > 0.5 ? 0.5 : d;
}

/* Step 4 by correlation: for each query row (a heading, or centring's
 * mean row, first), its query cells against every cell in reach (one GEMM
 * per year: prod[k][y * cap_c + c]), then the scores as sums along the
 * product's diagonals. A row at a time keeps the product small enough for
 * the cache. H headings, then the mean row when cw > 0. */
static void gl__score_reach(struct gl_loc_fine *f, const struct gl_map_dense *d, uint32_t H,
                            double cw, size_t P, size_t NC) {
  const uint32_t nk = f->nk, C = f->ch, rows = H + (cw > 0);
  for (uint32_t y = 0; y < d->years; y++)
    for (size_t i = 0; i < NC; i++)
      memcpy(f->dsub + ((size_t)y * f->cap_c + i) * C,
             d->cells + ((size_t)y * d->rows * d->cols + f->cell[i]) * C, C * sizeof(float));
  const size_t ld = (size_t)d->years * f->cap_c;
  const float inv = 1.0f / (float)nk;
  for (uint32_t j = 0; j < rows; j++) {
    const uint32_t h = cw > 0 ? (j == 0 ? H : j - 1) : j;
    for (uint32_t y = 0; y < d->years; y++)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nk, (int)NC, (int)C, 1.0f,
                  f->q + (size_t)h * nk * C, (int)C, f->dsub + (size_t)y * f->cap_c * C, (int)C,
                  0.0f, f->prod + (size_t)y * f->cap_c, (int)ld);
    for (uint32_t y = 0; y < d->years; y++) {
      float *ym = f->ymean + (size_t)y * P;
      memset(f->acc, 0, P * sizeof(float));
      for (uint32_t k = 0; k < nk; k++) {
        const float *row = f->prod + (size_t)k * ld + (size_t)y * f->cap_c;
        const int32_t *idx = f->pk + (size_t)k * f->cap_p;
        for (size_t p = 0; p < P; p++)
          f->acc[p] += row[idx[p]];
      }
      if (h == H) {
        for (size_t p = 0; p < P; p++)
          ym[p] = (float)cw * f->acc[p] * inv;
        continue;
      }
      for (size_t p = 0; p < P; p++) {
        float v = f->acc[p] * inv - (cw > 0 ? ym[p] : 0.0f);
        if (v > f->score[p * H + h])
          f->score[p * H + h] = v;
      }
    }
  }
}

/* Step 4 by gathering: a placement's score at heading h is one dot product
 * of the heading's query cells (|K_q| * C floats, f->q) with the cells
 * under the placement, gathered in the same order; GL__CHUNK placements are
 * gathered at a time and one GEMM scores them at every heading (and at the
 * mean row when cw > 0). It multiplies only the pairs a score needs, but
 * copies each cell once for every placement over it. */
static void gl__score_gathered(struct gl_loc_fine *f, const struct gl_map_dense *d, uint32_t H,
                               double cw, size_t P) {
  const uint32_t nk = f->nk, C = f->ch, rows = H + (cw > 0);
  const size_t row = (size_t)nk * C;
  const int32_t *cidx = f->pk; /* [nk][P]: product columns, f->cell their cells */
  for (size_t p0 = 0; p0 < P; p0 += GL__CHUNK) {
    const size_t m = P - p0 < GL__CHUNK ? P - p0 : GL__CHUNK;
    for (uint32_t y = 0; y < d->years; y++) {
      const float *cells = d->cells + (size_t)y * d->rows * d->cols * C;
      for (size_t i = 0; i < m; i++)
        for (uint32_t k = 0; k < nk; k++)
          memcpy(f->patch + i * row + (size_t)k * C,
                 cells + f->cell[cidx[(size_t)k * f->cap_p + p0 + i]] * C, C * sizeof(float));
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)m, (int)row,
                  1.0f / (float)nk, f->q, (int)row, f->patch, (int)row, 0.0f, f->gprod,
                  (int)GL__CHUNK);
      for (size_t i = 0; i < m; i++) { /* centred, best year */
        const float mean = cw > 0 ? (float)cw * f->gprod[(size_t)H * GL__CHUNK + i] : 0.0f;
        for (uint32_t h = 0; h < H; h++) {
          float v = f->gprod[(size_t)h * GL__CHUNK + i] - mean, *sc = &f->score[(p0 + i) * H + h];
          if (v > *sc)
            *sc = v;
        }
      }
    }
  }
}

/* Steps 2-4 for the first P placements of f's list, at S of the frame's H
 * headings (sel: their indices; NULL: all, S = H): gathers the reference
 * cells they cover, scores every (heading, placement) the cheaper of two
 * ways, centring when the H headings span the circle, and leaves each
 * placement's best score and heading (an index into sel) in best/besth.
 * Returns the number of placements scored (fewer than P when the cells in
 * reach outgrow the scratch; the rest are dropped). */
static size_t gl__score(struct gl_loc_fine *f, const struct gl_map_dense *d, const float *qfeat,
                        uint32_t H, const uint32_t *sel, uint32_t S, size_t P) {
  const uint32_t n = f->side, nk = f->nk, C = f->ch;
  f->last_h = S;
  /* 2. The reference cells those placements cover: product columns. */
  size_t NC = 0;
  for (size_t p = 0; p < P; p++) {
    for (uint32_t k = 0; k < nk; k++) {
      size_t c = (size_t)(f->pr[p] + f->kr[k]) * d->cols + (size_t)(f->pq[p] + f->kc[k]);
      if (f->stamp[c] != f->frame) {
        if (NC == f->cap_c) { /* bounded work: the rest of the region is dropped */
          P = p;
          goto gathered;
        }
        f->stamp[c] = f->frame;
        f->cidx[c] = (int32_t)NC;
        f->cell[NC++] = c;
      }
      f->pk[(size_t)k * f->cap_p + p] = f->cidx[c];
    }
  }
gathered:
  if (P == 0)
    return 0;
  /* The query rows: the S headings scored, then, when centring, the mean
   * of every heading's cells, whose score is the mean score over headings
   * (the score is linear in the query cells). */
  const bool circle = fabs(H * f->p.step_deg - 360.0) < 1e-6;
  const double cw = circle ? f->p.centering : 0;
  for (uint32_t j = 0; j < S; j++)
    for (uint32_t k = 0; k < nk; k++)
      memcpy(f->q + ((size_t)j * nk + k) * C,
             qfeat + ((((size_t)(sel ? sel[j] : j)) * n + (size_t)f->kr[k]) * n +
                      (size_t)f->kc[k]) * C,
             C * sizeof(float));
  if (cw > 0) {
    float *restrict mq = f->q + (size_t)S * nk * C;
    memset(mq, 0, (size_t)nk * C * sizeof(float));
    for (uint32_t h = 0; h < H; h++)
      for (uint32_t k = 0; k < nk; k++) {
        const float *restrict src =
            qfeat + (((size_t)h * n + (size_t)f->kr[k]) * n + (size_t)f->kc[k]) * C;
#pragma omp simd
        for (uint32_t c = 0; c < C; c++)
          mq[(size_t)k * C + c] += src[c];
      }
    const float inv = 1.0f / (float)H;
#pragma omp simd
    for (size_t i = 0; i < (size_t)nk * C; i++)
      mq[i] *= inv;
  }
  for (size_t i = 0; i < P * S; i++)
    f->score[i] = -INFINITY;
  /* 3-4. The correlation multiplies R * NC * |K_q| * C, R the query rows;
   * gathering R * P * |K_q| * C and copies P * |K_q| * C floats. Few
   * placements next to the cells they cover (the candidates' windows, a
   * tracking box) or many headings favour gathering; a dense region (a
   * prior's circle) with a compass favours the correlation. */
  const double R = S + (cw > 0);
  bool gather = (double)P * (R + GL__GATHER_COST) < R * (double)NC;
  if (f->p.scoring != GL_LOC_FINE_SCORE_AUTO)
    gather = f->p.scoring == GL_LOC_FINE_SCORE_GATHER;
  if (gather)
    gl__score_gathered(f, d, S, cw, P);
  else
    gl__score_reach(f, d, S, cw, P, NC);
  for (size_t p = 0; p < P; p++) {
    uint32_t bh = 0;
    for (uint32_t h = 1; h < S; h++)
      if (f->score[p * S + h] > f->score[p * S + bh])
        bh = h;
    f->best[p] = f->score[p * S + bh];
    f->besth[p] = bh;
    f->taken[p] = 0;
  }
  return P;
}

/* Starts a frame's placement list on map d: scratch fitted, stamps renewed. */
static int gl__begin(struct gl_loc_fine *f, const struct gl_map_dense *d, size_t max_out) {
  if (gl__fit_map(f, d, max_out))
    return GL_ENOMEM;
  if (++f->frame == 0) { /* the stamps wrapped: start them over */
    memset(f->stamp, 0, f->grid_cap * sizeof *f->stamp);
    memset(f->pstamp, 0, f->grid_cap * sizeof *f->pstamp);
    f->frame = 1;
  }
  f->last_p = 0;
  f->run_valid = false;
  return 0;
}

int gl_loc_fine_scan(struct gl_loc_fine *f, struct gl_map *map, const float *qfeat,
                     const float *headings, uint32_t H, const uint32_t *sel, uint32_t S,
                     bool same_query, int32_t r0, int32_t q0, uint32_t rows, uint32_t cols,
                     float *score, float *heading, char *err, size_t errlen) {
  const struct gl_map_dense *d = gl_map_dense(map);
  if (!d || d->channels != f->ch || H == 0 || H > f->max_h || !qfeat || !headings)
    return gl_fail(err, errlen, GL_EINVAL, "fine scan: no dense layer or a mismatched query");
  if (!sel)
    S = H;
  for (uint32_t j = 0; sel && j < S; j++)
    if (sel[j] >= H)
      return gl_fail(err, errlen, GL_EINVAL, "fine scan: heading %u of %u", sel[j], H);
  if (S == 0 || S > H)
    return gl_fail(err, errlen, GL_EINVAL, "fine scan: %u of %u headings", S, H);
  if ((size_t)rows * cols > f->cap_p || (size_t)(rows + f->side) * (cols + f->side) > f->cap_c)
    return gl_fail(err, errlen, GL_EINVAL, "fine scan: %ux%u placements exceed the stage's %zu",
                   rows, cols, f->cap_p);
  for (size_t i = 0; i < (size_t)rows * cols; i++)
    score[i] = heading[i] = NAN;
  if (d->rows < f->side || d->cols < f->side)
    return gl__begin(f, d, 1) ? gl_fail(err, errlen, GL_ENOMEM, "out of memory") : 0;
  const uint32_t PR = d->rows - f->side + 1, PC = d->cols - f->side + 1;
  /* The placements the last run of this query scored (the candidates'
   * windows often overlap the track's box) are taken from its scores: the
   * same numbers (to float rounding: the run may have taken the other way
   * of scoring), not computed twice. */
  const bool reuse = same_query && f->run_valid && f->run_d == d && f->last_h == H;
  for (int64_t r = r0; reuse && r < (int64_t)r0 + rows; r++)
    for (int64_t q = q0; q < (int64_t)q0 + cols; q++) {
      const int32_t k = gl__placement(f, PR, PC, f->last_p, r, q);
      if (k < 0)
        continue;
      const float *sc = f->score + (size_t)k * H;
      uint32_t bh = sel ? sel[0] : 0;
      for (uint32_t j = 1; j < S; j++)
        if (sc[sel ? sel[j] : j] > sc[bh])
          bh = sel ? sel[j] : j;
      size_t i = (size_t)(r - r0) * cols + (size_t)(q - q0);
      score[i] = sc[bh];
      heading[i] = headings[bh];
    }
  if (gl__begin(f, d, 1))
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory for the fine stage");
  size_t P = 0;
  for (int64_t r = r0; r < (int64_t)r0 + rows; r++)
    for (int64_t q = q0; q < (int64_t)q0 + cols; q++)
      if (isnan(score[(size_t)(r - r0) * cols + (size_t)(q - q0)])) /* not taken from the run */
        gl__add(f, &P, PR, PC, r, q, -1);
  P = gl__score(f, d, qfeat, H, sel, S, P);
  for (size_t p = 0; p < P; p++) {
    size_t i = (size_t)(f->pr[p] - r0) * cols + (size_t)(f->pq[p] - q0);
    score[i] = f->best[p];
    heading[i] = headings[sel ? sel[f->besth[p]] : f->besth[p]];
  }
  f->last_p = P;
  return 0;
}

size_t gl_loc_fine_scores(const struct gl_loc_fine *f, const int32_t **r, const int32_t **q,
                          const float **score, uint32_t *H) {
  *r = f->pr;
  *q = f->pq;
  *score = f->score;
  *H = f->last_h;
  return f->last_p;
}

int gl_loc_fine_run(struct gl_loc_fine *f, struct gl_map *map, const float *qfeat,
                    const float *headings, uint32_t H, const struct gl_map_hit *cand,
                    uint32_t n_cand, const struct gl_map_prior *prior, struct gl_loc_estimate *out,
                    size_t max_out, size_t *n_out, char *err, size_t errlen) {
  *n_out = 0;
  const struct gl_map_dense *d = gl_map_dense(map);
  if (!d)
    return gl_fail(err, errlen, GL_EINVAL, "the map has no dense layer");
  if (d->channels != f->ch || H == 0 || H > f->max_h || !qfeat || !headings)
    return gl_fail(err, errlen, GL_EINVAL,
                   "fine stage: %u headings of %u channels for a stage sized for %u of %u", H,
                   d->channels, f->max_h, f->ch);
  if (gl__begin(f, d, max_out))
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory for the fine stage");
  const uint32_t n = f->side;
  if (d->rows < n || d->cols < n || max_out == 0)
    return 0;
  const uint32_t PR = d->rows - n + 1, PC = d->cols - n + 1;
  const double cell = d->cell_m, half = n / 2.0;

  /* 1. Placements: the prior's circle, or windows around the candidates. */
  size_t P = 0;
  if (prior && prior->radius_m > 0) {
    double px, py;
    if (gl_map_wgs84_to_xy(map, prior->lat, prior->lon, &px, &py))
      return gl_fail(err, errlen, GL_EINVAL, "the prior %.7f,%.7f is off the map's grid",
                     prior->lat, prior->lon);
    double rad = prior->radius_m / cell;
    double cq = (px - d->x0) / cell - half, cr = (d->y0 - py) / cell - half;
    /* The circle's bounding box, clamped to the map (a prior may be far
     * larger than the map, or lie off it). */
    double r0 = fmax(0, floor(cr - rad)), r1 = fmin(PR - 1.0, ceil(cr + rad));
    double q0 = fmax(0, floor(cq - rad)), q1 = fmin(PC - 1.0, ceil(cq + rad));
    bool room = true;
    for (int64_t r = (int64_t)r0; r <= (int64_t)r1 && room; r++)
      for (int64_t q = (int64_t)q0; q <= (int64_t)q1 && room; q++)
        if ((r - cr) * (r - cr) + (q - cq) * (q - cq) <= rad * rad)
          room = gl__add(f, &P, PR, PC, r, q, -1);
  } else if ((size_t)d->rows * d->cols <= f->p.full_scan_cells) {
    /* A small map: every placement, whatever the global stage thinks. */
    for (int64_t r = 0; r < PR; r++)
      for (int64_t q = 0; q < PC; q++)
        gl__add(f, &P, PR, PC, r, q, -1);
  } else {
    int64_t R = f->p.radius_cells;
    uint32_t k = n_cand < f->p.top_k ? n_cand : f->p.top_k;
    for (uint32_t c = 0; c < k; c++) {
      double tx, ty;
      if (cand[c].tile_id < 0 || gl_map_tile_xy(map, cand[c].tile_id, &tx, &ty))
        continue;
      int64_t r0 = llround((d->y0 - ty) / cell - half), q0 = llround((tx - d->x0) / cell - half);
      for (int64_t dr = -R; dr <= R; dr++)
        for (int64_t dq = -R; dq <= R; dq++)
          gl__add(f, &P, PR, PC, r0 + dr, q0 + dq, cand[c].tile_id);
    }
  }

  if ((f->last_p = P = gl__score(f, d, qfeat, H, NULL, H, P)) == 0)
    return 0;
  f->run_valid = true;
  f->run_d = d;
  const bool circle = fabs(H * f->p.step_deg - 360.0) < 1e-6;

  /* 5. Estimates: the best placement, then the best one far enough from
   * those taken, each refined between cells and headings. */
  const double nms_c = f->p.nms_m / cell;
  size_t ne = 0;
  double smax = -INFINITY;
  while (ne < max_out) {
    int64_t bp = -1;
    for (size_t p = 0; p < P; p++) {
      if (f->taken[p] || (bp >= 0 && f->best[p] <= f->best[bp]))
        continue;
      bool near = false;
      for (size_t e = 0; e < ne && !near; e++) {
        double dr = f->pr[p] - (f->pr[f->esupport[e]]), dq = f->pq[p] - f->pq[f->esupport[e]];
        near = dr * dr + dq * dq < nms_c * nms_c;
      }
      if (near)
        f->taken[p] = 1;
      else
        bp = (int64_t)p;
    }
    if (bp < 0)
      break;
    f->taken[bp] = 1;
    const uint32_t h = f->besth[bp];
    const int32_t r = f->pr[bp], q = f->pq[bp];
    const double s0 = f->best[bp];
    double dr = 0, dq = 0, dh = 0;
    int32_t a = gl__placement(f, PR, PC, P, r - 1, q), b = gl__placement(f, PR, PC, P, r + 1, q);
    if (a >= 0 && b >= 0)
      dr = gl__parabola(f->score[(size_t)a * H + h], s0, f->score[(size_t)b * H + h]);
    a = gl__placement(f, PR, PC, P, r, q - 1);
    b = gl__placement(f, PR, PC, P, r, q + 1);
    if (a >= 0 && b >= 0)
      dq = gl__parabola(f->score[(size_t)a * H + h], s0, f->score[(size_t)b * H + h]);
    if (H >= 3 && (circle || (h > 0 && h + 1 < H))) {
      uint32_t hm = h ? h - 1 : H - 1, hp = h + 1 < H ? h + 1 : 0;
      dh = gl__parabola(f->score[(size_t)bp * H + hm], s0, f->score[(size_t)bp * H + hp]);
    }
    double x = d->x0 + (q + half + dq) * cell, yv = d->y0 - (r + half + dr) * cell;
    double lat, lon;
    if (gl_map_xy_to_wgs84(map, x, yv, &lat, &lon))
      return gl_fail(err, errlen, GL_EINTERNAL, "PROJ cannot convert a fine estimate to WGS84");
    double hd = fmod(headings[h] + dh * f->p.step_deg, 360.0);
    int64_t tile = gl_map_tile_near(map, x, yv);
    f->esupport[ne] = bp; /* the placement until the loop ends, then the tile */
    out[ne] = (struct gl_loc_estimate){
        .lat = lat,
        .lon = lon,
        .score = s0,
        .best_score = s0,
        .heading_deg = hd < 0 ? hd + 360 : hd,
        .tile_id = tile >= 0 ? tile : f->ptile[bp],
        .n_support = 1,
    };
    if (s0 > smax)
      smax = s0;
    ne++;
  }
  /* Confidence: softmax of score / T over the estimates; the radius grows
   * from half a cell as the confidence falls. */
  double z = 0;
  for (size_t e = 0; e < ne; e++)
    z += exp((out[e].score - smax) / f->p.temperature);
  for (size_t e = 0; e < ne; e++) {
    out[e].confidence = exp((out[e].score - smax) / f->p.temperature) / z;
    out[e].radius_m = cell / 2 / sqrt(out[e].confidence);
    f->esupport[e] = out[e].tile_id;
    out[e].support = &f->esupport[e];
  }
  *n_out = ne;
  return 0;
}

/* --- one frame, end to end ----------------------------------------------------- */

void gl_loc_fine_warp(const struct gl_image *frame, const float *headings, uint32_t H, uint32_t S,
                      uint8_t *base, const struct gl_image *out) {
  /* The frame is resized (antialiased) to 2S x 2S once; each heading turns
   * that, with 2 x 2 samples a pixel. */
  struct gl_image b = {base, 2 * S, 2 * S};
  gl_img_warp(frame, 0, b.width, b.height, base);
#pragma omp parallel for schedule(static)
  for (uint32_t h = 0; h < H; h++)
    gl_img_warp(&b, headings[h], S, S, out[h].rgb);
}

struct gl_loc_fine_frame {
  struct gl_nn_cells *cells; /* the fine stage's cells of S x S inputs */
  struct gl_loc_fine *fine;
  struct gl_loc_fine_params p;
  uint32_t layer, S, max_h;
  uint8_t *pix;          /* [max_h][S][S][3] */
  uint8_t *base;         /* [2S][2S][3]: the frame resized once */
  struct gl_image *imgs; /* [max_h] */
  float *headings;       /* [max_h] */
  float *qfeat;          /* [max_h][side][side][C] */
  uint32_t H;            /* headings of the last frame */
  uint32_t *sel;         /* [max_h]: the headings the last scan scored, */
  float *sel_deg;        /* [max_h]  and their degrees */
};

int gl_loc_fine_frame_create(const struct gl_nn_model *model, uint32_t layer,
                             const struct gl_loc_fine_params *p, uint32_t threads,
                             struct gl_loc_fine_frame **out, char *err, size_t errlen) {
  *out = NULL;
  int rc = gl_loc_fine_params_check(p, err, errlen);
  if (rc)
    return rc;
  struct gl_loc_fine_frame *ff = calloc(1, sizeof *ff);
  if (!ff)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  ff->p = *p;
  ff->layer = layer;
  ff->max_h = (uint32_t)lround(360.0 / p->step_deg);
  uint32_t k = (uint32_t)floor(p->tolerance_deg / p->step_deg + 1e-9);
  if (2 * k + 1 > ff->max_h)
    ff->max_h = 2 * k + 1;
  uint32_t side, ch, stride;
  if ((rc = gl_nn_cells_create(model, layer, ff->max_h, threads, &ff->cells, err, errlen)))
    goto fail;
  gl_nn_cells_shape(ff->cells, &ff->S, &side, &ch, &stride);
  size_t S = ff->S;
  if (!(ff->pix = malloc((size_t)ff->max_h * S * S * 3)) || !(ff->base = malloc(4 * S * S * 3)) ||
      !(ff->imgs = calloc(ff->max_h, sizeof *ff->imgs)) ||
      !(ff->headings = malloc(ff->max_h * sizeof(float))) ||
      !(ff->sel = malloc(ff->max_h * sizeof(uint32_t))) ||
      !(ff->sel_deg = malloc(ff->max_h * sizeof(float))) ||
      !(ff->qfeat = malloc((size_t)ff->max_h * side * side * ch * sizeof(float)))) {
    rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
    goto fail;
  }
  for (uint32_t h = 0; h < ff->max_h; h++)
    ff->imgs[h] = (struct gl_image){ff->pix + h * S * S * 3, ff->S, ff->S};
  if ((rc = gl_loc_fine_create(p, ff->max_h, side, ch, &ff->fine, err, errlen)))
    goto fail;
  *out = ff;
  return 0;
fail:
  gl_loc_fine_frame_destroy(ff);
  return rc;
}

void gl_loc_fine_frame_destroy(struct gl_loc_fine_frame *ff) {
  if (!ff)
    return;
  gl_nn_cells_destroy(ff->cells);
  gl_loc_fine_destroy(ff->fine);
  free(ff->pix);
  free(ff->base);
  free(ff->imgs);
  free(ff->headings);
  free(ff->sel);
  free(ff->sel_deg);
  free(ff->qfeat);
  free(ff);
}

uint32_t gl_loc_fine_frame_layer(const struct gl_loc_fine_frame *ff) { return ff->layer; }

uint32_t gl_loc_fine_frame_side(const struct gl_loc_fine_frame *ff) { return ff->fine->side; }

int gl_loc_fine_frame(struct gl_loc_fine_frame *ff, struct gl_map *map,
                      const struct gl_image *frame, double heading_deg,
                      const struct gl_map_hit *hits, uint32_t n_hits,
                      const struct gl_map_prior *prior, struct gl_loc_estimate *out, size_t max_out,
                      size_t *n_out, char *err, size_t errlen) {
  *n_out = 0;
  const struct gl_map_dense *d = gl_map_dense(map);
  if (!d || d->layer != ff->layer || d->input_px != ff->S)
    return gl_fail(err, errlen, GL_EINVAL,
                   "the map's dense layer (block %u at %u px) is not this stage's (block %u at "
                   "%u px)",
                   d ? d->layer : 0, d ? d->input_px : 0, ff->layer, ff->S);
  ff->fine->run_valid = false; /* a new query: the last run's scores are not its */
  uint32_t H = ff->H = gl_loc_fine_headings(&ff->p, heading_deg, ff->headings, ff->max_h);
  memcpy(ff->sel_deg, ff->headings, H * sizeof(float)); /* the run scores every heading */
  gl_loc_fine_warp(frame, ff->headings, H, ff->S, ff->base, ff->imgs);
  int rc = gl_nn_cells_compute(ff->cells, ff->imgs, H, ff->qfeat);
  if (rc)
    return gl_fail(err, errlen, rc, "fine stage features: %s", gl_strerror(rc));
  return gl_loc_fine_run(ff->fine, map, ff->qfeat, ff->headings, H, hits, n_hits, prior, out,
                         max_out, n_out, err, errlen);
}

/* The absolute difference of two headings, degrees, 0..180. */
static double gl__angle(double a, double b) { return fabs(fmod(a - b + 540.0, 360.0) - 180.0); }

int gl_loc_fine_frame_scan(struct gl_loc_fine_frame *ff, struct gl_map *map, int32_t r0, int32_t q0,
                           uint32_t rows, uint32_t cols, double hc, double tol, float *score,
                           float *heading, char *err, size_t errlen) {
  if (!ff->H)
    return gl_fail(err, errlen, GL_EINVAL, "fine scan before any frame");
  uint32_t S = 0;
  for (uint32_t h = 0; h < ff->H && !isnan(hc); h++)
    if (gl__angle(ff->headings[h], hc) <= tol)
      ff->sel[S++] = h;
  if (S == 0) /* no heading that close, or none given: every heading */
    for (; S < ff->H; S++)
      ff->sel[S] = S;
  int rc = gl_loc_fine_scan(ff->fine, map, ff->qfeat, ff->headings, ff->H, ff->sel, S, true, r0,
                            q0, rows, cols, score, heading, err, errlen);
  for (uint32_t j = 0; !rc && j < S; j++) /* (a refused scan leaves the run's scores) */
    ff->sel_deg[j] = ff->headings[ff->sel[j]];
  return rc;
}

size_t gl_loc_fine_frame_scores(const struct gl_loc_fine_frame *ff, const int32_t **r,
                                const int32_t **q, const float **score, const float **headings,
                                uint32_t *H) {
  *headings = ff->sel_deg;
  return gl_loc_fine_scores(ff->fine, r, q, score, H);
}
