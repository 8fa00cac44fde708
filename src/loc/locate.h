/* From a descriptor to ranked estimates on a map: search, then clustering.
 * The one place where the daemon and `geoloc locate` turn a frame's
 * descriptor into positions. */
#ifndef GL_LOC_LOCATE_H
#define GL_LOC_LOCATE_H

#include <stddef.h>
#include <stdint.h>

#include "loc/loc.h"
#include "map/map.h"

/* Scratch space sized once for up to max_tiles searched tiles a query (the
 * hits of a batch search grow with the batch); one per thread. */
struct gl_loc_locator;

int gl_loc_locator_create(uint32_t max_tiles, struct gl_loc_locator **out);
void gl_loc_locator_destroy(struct gl_loc_locator *l);

/* Searches map once for n descriptors (d: n * dim floats), the `tiles`
 * nearest tiles of each, into l, for gl_loc_locator_cluster(): one search
 * call for a batch of frames, where a matrix product serves all queries at
 * once. priors is NULL or n entries (a radius <= 0 meaning none). l's
 * scratch grows to the largest n * tiles asked, not per call. Returns 0,
 * GL_EINVAL (n 0, tiles 0 or above the locator's size), GL_ENOMEM or the
 * search's error (a failure of any query fails the call), with err
 * filled. */
int gl_loc_locator_search(struct gl_loc_locator *l, struct gl_map *map, const float *d, uint32_t n,
                          uint32_t tiles, const struct gl_map_prior *priors, char *err,
                          size_t errlen);

/* Clusters the matches of query i of the last gl_loc_locator_search() on l,
 * as gl_loc_locate() does (bandwidth_m 0 meaning the map's tile size),
 * into at most max_out estimates, best first; they point into l until its
 * next clustering. Returns 0, GL_EINVAL (no such query) or the clustering's
 * error, with err filled. */
int gl_loc_locator_cluster(struct gl_loc_locator *l, uint32_t i, double bandwidth_m,
                           struct gl_loc_estimate *out, size_t max_out, size_t *n_out, char *err,
                           size_t errlen);

/* The hits of query i of the last search (best first), *count of them;
 * NULL when there is no such query. */
const struct gl_map_hit *gl_loc_locator_hits(const struct gl_loc_locator *l, uint32_t i,
                                             uint32_t *count);

/* Searches map for the `tiles` tiles nearest to descriptor d (restricted to
 * prior when not NULL) and clusters them (bandwidth_m, 0 meaning the map's
 * tile size; radii at least half the map's stride) into at most max_out
 * estimates, best first. Zero estimates means nothing matched (e.g. no tile
 * inside the prior). Estimates point into l until its next use. Returns 0,
 * GL_EINVAL (tiles above the locator's size) or the search's error, with err
 * filled. */
int gl_loc_locate(struct gl_loc_locator *l, struct gl_map *map, const float *d, uint32_t tiles,
                  const struct gl_map_prior *prior, double bandwidth_m,
                  struct gl_loc_estimate *out, size_t max_out, size_t *n_out, char *err,
                  size_t errlen);

#endif
