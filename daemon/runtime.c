#include "runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/err.h"
#include "core/log.h"
#include "loc/load.h"
#include "map/dense.h"

static void gl__runtime_free(struct gl_runtime *rt) {
  for (uint32_t i = 0; i < rt->n_maps; i++) {
    gl_map_close(rt->maps[i].map);
    free(rt->maps[i].name);
  }
  for (uint32_t w = 0; w < GL_CONFIG_MAX_SEARCH_THREADS; w++)
    gl_loc_fine_frame_destroy(rt->fine[w]);
  gl_nn_engine_destroy(rt->engine);
  gl_nn_model_destroy(rt->model);
  free(rt);
}

uint32_t gl_runtime_search_threads(const struct gl_config *cfg) {
  uint32_t n = cfg->search_threads ? cfg->search_threads : uv_available_parallelism();
  return n < 1 ? 1 : n > GL_CONFIG_MAX_SEARCH_THREADS ? GL_CONFIG_MAX_SEARCH_THREADS : n;
}

/* The fine stage for the maps that have a dense layer: planned for the
 * first one's layer; a map with another layer is served without it. */
static int gl__runtime_fine(struct gl_runtime *rt, const struct gl_config *cfg, uint32_t n,
                            char *err, size_t errlen) {
  struct gl_loc_fine_params fp;
  gl_loc_fine_params_init(&fp);
  fp.top_k = cfg->fine_top_k;
  fp.radius_cells = cfg->fine_radius_cells;
  fp.full_scan_cells = cfg->fine_full_scan_cells;
  fp.step_deg = cfg->heading_step_deg;
  fp.tolerance_deg = cfg->heading_tolerance_deg;
  int rc = gl_loc_fine_params_check(&fp, err, errlen);
  if (rc || !cfg->fine)
    return rc;
  /* The search threads share the CPU backend's threads ([model] threads, 0:
   * a thread per core): each thread's stage gets its share of them. */
  uint32_t threads = cfg->model_threads;
  if (n > 1) {
    uint32_t all = threads ? threads : uv_available_parallelism();
    threads = all > n ? all / n : 1;
  }
  for (uint32_t i = 0; i < rt->n_maps; i++) {
    struct gl_runtime_map *m = &rt->maps[i];
    char why[256];
    if ((rc = gl_loc_load_fine(rt->model, m->map, &fp, threads, &rt->fine[0], &m->fine, why,
                               sizeof why))) {
      snprintf(err, errlen, "%s", why);
      return rc;
    }
    /* Without a dense layer is a way to build a map; another layer is not. */
    const struct gl_map_dense *d = gl_map_dense(m->map);
    if (!m->fine) {
      gl_log(d ? GL_LOG_WARNING : GL_LOG_INFO, "map %s: %s; its frames get the global stage only",
             m->name, why);
    } else if ((size_t)d->rows * d->cols <= fp.full_scan_cells) {
      GL_LOG_I("map %s: fine stage on %ux%u cells, every placement scanned", m->name, d->rows,
               d->cols);
    } else {
      GL_LOG_I("map %s: fine stage on %ux%u cells, around the best %u global matches", m->name,
               d->rows, d->cols, fp.top_k);
    }
  }
  for (uint32_t w = 1; rt->fine[0] && w < n; w++)
    if ((rc = gl_loc_fine_frame_create(rt->model, gl_loc_fine_frame_layer(rt->fine[0]), &fp,
                                       threads, &rt->fine[w], err, errlen)))
      return rc;
  return 0;
}

static int gl__runtime_engine(struct gl_runtime *rt, const struct gl_config *cfg, char *err,
                              size_t errlen) {
  struct gl_nn_engine_opts o = {
      .max_batch = cfg->max_batch,
      .threads = cfg->model_threads,
      .max_input_pixels = cfg->max_decoded_pixels,
  };
  char note[512];
  o.backend = cfg->backend == GL_CONFIG_BACKEND_CPU ? GL_NN_BACKEND_CPU : GL_NN_BACKEND_CUDA;
  int rc = gl_loc_load_engine(rt->model, &o, cfg->backend == GL_CONFIG_BACKEND_AUTO, &rt->engine,
                              note, sizeof note, err, errlen);
  /* auto: no usable GPU here, which is a normal way to run. */
  if (rc == GL_OK && note[0])
    GL_LOG_N("[model] backend auto: no CUDA backend (%s), using the CPU", note);
  if (rc == GL_OK)
    rt->max_batch = gl_nn_engine_max_batch(rt->engine);
  return rc;
}

int gl_runtime_load(const struct gl_config *cfg, uint32_t search_threads, struct gl_runtime **out,
                    char *err, size_t errlen) {
  char why[512];
  int rc;
  *out = NULL;
  struct gl_runtime *rt = calloc(1, sizeof *rt);
  if (!rt)
    return GL_ENOMEM;
  rt->refs = 1;
  rt->batch_window_us = cfg->batch_window_us;
  rt->stale_after_ms = cfg->stale_after_ms;
  rt->search_tiles = cfg->search_tiles;
  rt->bandwidth_m = cfg->bandwidth_m;
  rc = gl_loc_load_model(cfg->model_path, &rt->model, why, sizeof why);
  if (rc != GL_OK) {
    snprintf(err, errlen, "[model] path %s: %s", cfg->model_path, why);
    goto fail;
  }
  rt->dim = gl_nn_model_descriptor_dim(rt->model);
  rc = gl__runtime_engine(rt, cfg, why, sizeof why);
  if (rc != GL_OK) {
    snprintf(err, errlen, "[model] backend: %s", why);
    goto fail;
  }
  for (uint32_t i = 0; i < cfg->n_maps; i++) {
    struct gl_runtime_map *m = &rt->maps[i];
    rc = gl_loc_load_map(rt->model, cfg->maps[i].path, &m->map, why, sizeof why);
    if (rc != GL_OK) {
      snprintf(err, errlen, "[map %s] path %s: %s", cfg->maps[i].name, cfg->maps[i].path, why);
      goto fail;
    }
    rt->n_maps++;
    m->name = strdup(cfg->maps[i].name);
    if (!m->name) {
      rc = GL_ENOMEM;
      goto fail;
    }
    GL_LOG_I("map %s: %llu tiles, %s index, %s", m->name,
             (unsigned long long)gl_map_tile_count(m->map), gl_map_index_type(m->map),
             cfg->maps[i].path);
  }
  rt->input_size = gl_nn_model_input_size(rt->model);
  rt->crop_side = gl_loc_crop_side(rt->model);
  rc = gl__runtime_fine(rt, cfg, search_threads, why, sizeof why);
  if (rc != GL_OK) {
    snprintf(err, errlen, "[search] fine stage: %s", why);
    goto fail;
  }
  GL_LOG_I("model %s: %u-d descriptors on %s, batches up to %u", cfg->model_path, rt->dim,
           gl_nn_engine_backend_name(rt->engine), rt->max_batch);
  *out = rt;
  return GL_OK;
fail:
  gl__runtime_free(rt);
  return rc;
}

struct gl_runtime *gl_runtime_ref(struct gl_runtime *rt) {
  if (rt)
    rt->refs++;
  return rt;
}

void gl_runtime_unref(struct gl_runtime *rt) {
  if (rt && --rt->refs == 0)
    gl__runtime_free(rt);
}

int gl_runtime_find_map(const struct gl_runtime *rt, const char *name) {
  if (!name || !*name)
    return rt->n_maps == 1 ? 0 : -1;
  for (uint32_t i = 0; i < rt->n_maps; i++)
    if (strcmp(rt->maps[i].name, name) == 0)
      return (int)i;
  return -1;
}
