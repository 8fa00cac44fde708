/* What a geolocd localizes with: the model's engine and the map packs, loaded
 * and verified together from one configuration. A runtime never changes once
 * loaded; SIGHUP loads a new one beside it and swaps. Its reference count is
 * touched only on the event loop thread. */
#ifndef GL_DAEMON_RUNTIME_H
#define GL_DAEMON_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "loc/fine.h"
#include "loc/loc.h"
#include "map/map.h"
#include "nn/nn.h"

struct gl_runtime_map {
  char *name;
  struct gl_map *map;
  bool fine; /* its dense layer is the fine stage's: frames get the fine stage */
};

struct gl_runtime {
  int refs;
  struct gl_nn_model *model;
  struct gl_nn_engine *engine;
  uint32_t dim;
  struct gl_runtime_map maps[GL_CONFIG_MAX_MAPS];
  uint32_t n_maps;
  /* Snapshot of the settings the inference thread reads, so that a reload
   * of the configuration never races with it. */
  uint32_t max_batch, batch_window_us, stale_after_ms;
  uint32_t search_tiles;
  double bandwidth_m; /* 0: each map's tile size */
  uint32_t input_size; /* the model's input side: frames with a heading are warped to it */
  uint32_t crop_side;  /* the most a frame with a camera is cropped to (gl_loc_crop_side) */
  /* The fine stage, when [search] fine is on and a map has a dense layer
   * (the first such map's layer): one per search thread (fine[0] ..
   * fine[search_threads - 1]), each used by its thread only; none (NULL)
   * otherwise. */
  struct gl_loc_fine_frame *fine[GL_CONFIG_MAX_SEARCH_THREADS];
};

/* [search] threads: the search threads to run (0: one per CPU core, at
 * most GL_CONFIG_MAX_SEARCH_THREADS). A daemon resolves it once, at start:
 * its pipeline's threads and every runtime it loads use that number. */
uint32_t gl_runtime_search_threads(const struct gl_config *cfg);

/* Loads cfg's [model] and [map NAME] sections: the model, an engine on the
 * configured backend (auto: CUDA when available, else the CPU), and every
 * map, which must have been built with this model. Slow (seconds): call it
 * off the event loop once serving. Writes what failed to err. */
int gl_runtime_load(const struct gl_config *cfg, uint32_t search_threads, struct gl_runtime **out,
                    char *err, size_t errlen);

struct gl_runtime *gl_runtime_ref(struct gl_runtime *rt);
void gl_runtime_unref(struct gl_runtime *rt);

/* The map a Hello asks for: name, or the only map when name is empty.
 * Returns its index or -1. */
int gl_runtime_find_map(const struct gl_runtime *rt, const char *name);

#endif
