#include "loc/locate.h"

#include <stdio.h>
#include <stdlib.h>

#include "core/err.h"

struct gl_loc_locator {
  uint32_t max_tiles;
  struct gl_loc_workspace *ws;
  struct gl_loc_match *matches;
  /* The last search: n queries of `tiles` hits each on map. hits and counts
   * grow to the largest n * tiles seen, never per call. */
  struct gl_map *map;
  uint32_t n, tiles;
  struct gl_map_hit *hits;
  uint32_t *counts;
  size_t hits_cap, counts_cap;
};

int gl_loc_locator_create(uint32_t max_tiles, struct gl_loc_locator **out) {
  struct gl_loc_locator *l = calloc(1, sizeof *l);
  *out = NULL;
  if (!l)
    return GL_ENOMEM;
  l->max_tiles = max_tiles;
  l->hits = calloc(max_tiles, sizeof *l->hits);
  l->counts = calloc(1, sizeof *l->counts);
  l->hits_cap = max_tiles;
  l->counts_cap = 1;
  l->matches = calloc(max_tiles, sizeof *l->matches);
  int rc =
      l->hits && l->counts && l->matches ? gl_loc_workspace_create(max_tiles, &l->ws) : GL_ENOMEM;
  if (rc != GL_OK) {
    gl_loc_locator_destroy(l);
    return rc;
  }
  *out = l;
  return GL_OK;
}

void gl_loc_locator_destroy(struct gl_loc_locator *l) {
  if (!l)
    return;
  gl_loc_workspace_destroy(l->ws);
  free(l->hits);
  free(l->counts);
  free(l->matches);
  free(l);
}

int gl_loc_locator_search(struct gl_loc_locator *l, struct gl_map *map, const float *d, uint32_t n,
                          uint32_t tiles, const struct gl_map_prior *priors, char *err,
                          size_t errlen) {
  l->n = 0;
  if (tiles == 0 || tiles > l->max_tiles) {
    snprintf(err, errlen, "%u tiles asked of a locator sized for %u", tiles, l->max_tiles);
    return GL_EINVAL;
  }
  if (n == 0) {
    snprintf(err, errlen, "no descriptor to search");
    return GL_EINVAL;
  }
  if ((size_t)n * tiles > l->hits_cap) {
    struct gl_map_hit *h = realloc(l->hits, (size_t)n * tiles * sizeof *h);
    if (!h) {
      snprintf(err, errlen, "out of memory");
      return GL_ENOMEM;
    }
    l->hits = h;
    l->hits_cap = (size_t)n * tiles;
  }
  if (n > l->counts_cap) {
    uint32_t *c = realloc(l->counts, n * sizeof *c);
    if (!c) {
      snprintf(err, errlen, "out of memory");
      return GL_ENOMEM;
    }
    l->counts = c;
    l->counts_cap = n;
  }
  int rc = gl_map_search(map, d, n, tiles, priors, l->hits, l->counts, err, errlen);
  if (rc != GL_OK)
    return rc;
  l->map = map;
  l->n = n;
  l->tiles = tiles;
  return GL_OK;
}

int gl_loc_locator_cluster(struct gl_loc_locator *l, uint32_t i, double bandwidth_m,
                           struct gl_loc_estimate *out, size_t max_out, size_t *n_out, char *err,
                           size_t errlen) {
  *n_out = 0;
  if (i >= l->n) {
    snprintf(err, errlen, "query %u of a search of %u", i, l->n);
    return GL_EINVAL;
  }
  const struct gl_map_hit *h = l->hits + (size_t)i * l->tiles;
  uint32_t found = l->counts[i];
  for (uint32_t j = 0; j < found; j++)
    l->matches[j] = (struct gl_loc_match){h[j].tile_id, h[j].lat, h[j].lon, h[j].score};
  struct gl_loc_params p;
  gl_loc_params_init(&p);
  p.bandwidth_m = bandwidth_m > 0 ? bandwidth_m : gl_map_tile_m(l->map);
  p.min_radius_m = gl_map_stride_m(l->map) / 2;
  int rc = gl_loc_cluster(l->ws, &p, l->matches, found, out, max_out, n_out);
  if (rc != GL_OK)
    snprintf(err, errlen, "clustering: %s", gl_strerror(rc));
  return rc;
}

const struct gl_map_hit *gl_loc_locator_hits(const struct gl_loc_locator *l, uint32_t i,
                                             uint32_t *count) {
  *count = 0;
  if (i >= l->n)
    return NULL;
  *count = l->counts[i];
  return l->hits + (size_t)i * l->tiles;
}

int gl_loc_locate(struct gl_loc_locator *l, struct gl_map *map, const float *d, uint32_t tiles,
                  const struct gl_map_prior *prior, double bandwidth_m, struct gl_loc_estimate *out,
                  size_t max_out, size_t *n_out, char *err, size_t errlen) {
  *n_out = 0;
  int rc = gl_loc_locator_search(l, map, d, 1, tiles, prior, err, errlen);
  if (rc != GL_OK)
    return rc;
  return gl_loc_locator_cluster(l, 0, bandwidth_m, out, max_out, n_out, err, errlen);
}
