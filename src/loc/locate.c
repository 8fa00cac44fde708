#include "loc/locate.h"

#include <stdio.h>
#include <stdlib.h>

#include "core/err.h"

struct gl_loc_locator {
  uint32_t max_tiles;
  struct gl_loc_workspace *ws;
  struct gl_map_hit *hits;
  struct gl_loc_match *matches;
};

int gl_loc_locator_create(uint32_t max_tiles, struct gl_loc_locator **out) {
  struct gl_loc_locator *l = calloc(1, sizeof *l);
  *out = NULL;
  if (!l)
    return GL_ENOMEM;
  l->max_tiles = max_tiles;
  l->hits = calloc(max_tiles, sizeof *l->hits);
  l->matches = calloc(max_tiles, sizeof *l->matches);
  int rc = l->hits && l->matches ? gl_loc_workspace_create(max_tiles, &l->ws) : GL_ENOMEM;
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
  free(l->matches);
  free(l);
}

int gl_loc_locate(struct gl_loc_locator *l, struct gl_map *map, const float *d, uint32_t tiles,
                  const struct gl_map_prior *prior, double bandwidth_m,
                  struct gl_loc_estimate *out, size_t max_out, size_t *n_out, char *err,
                  size_t errlen) {
  uint32_t found = 0;
  *n_out = 0;
  if (tiles == 0 || tiles > l->max_tiles) {
    snprintf(err, errlen, "%u tiles asked of a locator sized for %u", tiles, l->max_tiles);
    return GL_EINVAL;
  }
  int rc = gl_map_search(map, d, 1, tiles, prior, l->hits, &found, err, errlen);
  if (rc != GL_OK)
    return rc;
  for (uint32_t i = 0; i < found; i++)
    l->matches[i] = (struct gl_loc_match){l->hits[i].tile_id, l->hits[i].lat, l->hits[i].lon,
                                          l->hits[i].score};
  struct gl_loc_params p;
  gl_loc_params_init(&p);
  p.bandwidth_m = bandwidth_m > 0 ? bandwidth_m : gl_map_tile_m(map);
  p.min_radius_m = gl_map_stride_m(map) / 2;
  rc = gl_loc_cluster(l->ws, &p, l->matches, found, out, max_out, n_out);
  if (rc != GL_OK)
    snprintf(err, errlen, "clustering: %s", gl_strerror(rc));
  return rc;
}
