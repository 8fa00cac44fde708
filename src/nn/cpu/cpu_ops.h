/* The CPU backend's own kernels: every op that is not a convolution.
 * Tensors are NHWC float32 (one image at a time unless stated). */
#ifndef GL_NN_CPU_OPS_H
#define GL_NN_CPU_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "nn/graph.h"

/* One axis of a bilinear resize (OPS.md resize_bilinear): output o reads
 * inputs i0[o], i1[o] with weights l0[o], l1[o]. */
struct gl__cpu_axis {
  uint32_t *i0, *i1;
  float *l0, *l1;
};

void gl__cpu_axis_init(uint32_t in, uint32_t out, struct gl__cpu_axis *a);

/* Scratch of the preprocessing ops, sized at plan time for the network
 * input (h, w), resizer channels c and images up to max_pixels. */
struct gl__cpu_pre {
  uint32_t h, w, c;
  float lut[3][256];              /* normalised value of each channel value */
  float *stem_wt;                 /* stem weights as [27][c], bias separate */
  struct gl__cpu_axis ax_h, ax_w; /* input -> network input, per image */
  /* The resizer stem runs only at the input rows and columns the bilinear
   * resize reads: at most 2h x 2w positions, whatever the input size. */
  uint32_t *rows, *cols;           /* input row/column of each grid row/column */
  uint32_t *g0h, *g1h, *g0w, *g1w; /* grid indices of i0/i1 per output row/column */
  float *grid;                     /* [rows, cols, c] stem output */
};

/* images -> dst [h, w, 3]: normalize (through a per-value table, which gives
 * the same floats as computing (x - mean) / std each time) and resize. */
void gl__cpu_resize(struct gl__cpu_pre *s, const uint8_t *rgb, uint32_t width, uint32_t height,
                    float *dst);

/* images -> dst [h, w, c]: resize(relu(conv3x3(normalize(image)))). */
void gl__cpu_resizer_stem(struct gl__cpu_pre *s, const uint8_t *rgb, uint32_t width,
                          uint32_t height, const struct gl__nn_op *op, float *dst);

/* Squeeze-excitation in place on x [hw, c] with rows pixel_stride apart;
 * tmp holds at least 2 * c + hidden floats. */
void gl__cpu_se(float *x, size_t hw, uint32_t c, size_t pixel_stride, uint32_t hidden,
                const float *fc1_w, const float *fc1_b, const float *fc2_w, const float *fc2_b,
                float *tmp);

/* Selective-kernel mixing of u0, u1 [hw, c] into dst; tmp as for SE. */
void gl__cpu_sk_mix(const struct gl__nn_op *op, const float *u0, const float *u1, float *dst,
                    size_t hw, uint32_t c, float *tmp);

/* Per-thread scratch of the OSM: (image, group) pairs run in parallel, one
 * per thread, each with single-threaded GEMMs. */
struct gl__cpu_osm_thread {
  float *q, *k, *v; /* [hw, d] */
  float *s;         /* [hw, hw] attention */
  float *m;         /* [hw] overlap map */
  float *tmp;       /* SE vectors */
};

/* Scratch of the OSM levels (sized for the largest). */
struct gl__cpu_osm_scratch {
  float *p;   /* [batch, hw, D] projection */
  float *cat; /* [batch, D] pooled groups, concatenated */
  float *emb; /* [out_dim] */
  struct gl__cpu_osm_thread *thr;
  uint32_t threads;
};

/* One OSM level over `batch` images of op->src; descriptors to op->dst. */
void gl__cpu_osm(const struct gl__nn_graph *g, const struct gl__nn_op *op, uint32_t batch,
                 struct gl__cpu_osm_scratch *s);

/* Weighted sum of the per-level descriptors, l2-normalised. */
void gl__cpu_fuse(const struct gl__nn_graph *g, const struct gl__nn_op *op, uint32_t batch,
                  float *tmp);

#endif
