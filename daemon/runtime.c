#include "runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "map/dense.h"

static void gl__runtime_free(struct gl_runtime *rt) {
  for (uint32_t i = 0; i < rt->n_maps; i++) {
    gl_map_close(rt->maps[i].map);
    free(rt->maps[i].name);
  }
  gl_loc_fine_frame_destroy(rt->fine);
  gl_nn_engine_destroy(rt->engine);
  gl_nn_model_destroy(rt->model);
  free(rt);
}

/* The fine stage for the maps that have a dense layer: planned for the
 * first one's layer; a map with another layer is served without it. */
static int gl__runtime_fine(struct gl_runtime *rt, const struct gl_config *cfg, char *err,
                            size_t errlen) {
  struct gl_loc_fine_params fp;
  gl_loc_fine_params_init(&fp);
  fp.top_k = cfg->fine_top_k;
  fp.radius_cells = cfg->fine_radius_cells;
  fp.step_deg = cfg->heading_step_deg;
  fp.tolerance_deg = cfg->heading_tolerance_deg;
  int rc = gl_loc_fine_params_check(&fp, err, errlen);
  if (rc || !cfg->fine)
    return rc;
  for (uint32_t i = 0; i < rt->n_maps; i++) {
    const struct gl_map_dense *d = gl_map_dense(rt->maps[i].map);
    if (!d) {
      GL_LOG_I("map %s: no dense layer; its frames get the global stage only",
               rt->maps[i].name);
      continue;
    }
    if (!rt->fine && (rc = gl_loc_fine_frame_create(rt->model, d->layer, &fp,
                                                     cfg->model_threads, &rt->fine, err, errlen)))
      return rc;
    if (d->layer != gl_loc_fine_frame_layer(rt->fine) || d->input_px != rt->input_size) {
      GL_LOG_W("map %s: dense layer of block %u at %u px, not the fine stage's block %u at %u "
               "px; its frames get the global stage only",
               rt->maps[i].name, d->layer, d->input_px, gl_loc_fine_frame_layer(rt->fine),
               rt->input_size);
      continue;
    }
    rt->maps[i].fine = true;
  }
  return 0;
}

static int gl__runtime_engine(struct gl_runtime *rt, const struct gl_config *cfg, char *err,
                              size_t errlen) {
  struct gl_nn_engine_opts o = {
      .max_batch = cfg->max_batch,
      .threads = cfg->model_threads,
      .max_input_pixels = cfg->max_decoded_pixels,
  };
  int rc = GL_ENOTSUP;
  if (cfg->backend != GL_CONFIG_BACKEND_CPU) {
    o.backend = GL_NN_BACKEND_CUDA;
    rc = gl_nn_engine_create(rt->model, &o, &rt->engine, err, errlen);
    if (rc == GL_OK || cfg->backend == GL_CONFIG_BACKEND_CUDA)
      return rc;
    /* auto: no usable GPU here, which is a normal way to run. */
    GL_LOG_N("[model] backend auto: no CUDA backend (%s), using the CPU", err);
  }
  o.backend = GL_NN_BACKEND_CPU;
  return gl_nn_engine_create(rt->model, &o, &rt->engine, err, errlen);
}

int gl_runtime_load(const struct gl_config *cfg, struct gl_runtime **out, char *err,
                    size_t errlen) {
  char why[512];
  int rc;
  *out = NULL;
  struct gl_runtime *rt = calloc(1, sizeof *rt);
  if (!rt)
    return GL_ENOMEM;
  rt->refs = 1;
  rt->max_batch = cfg->max_batch;
  rt->batch_window_us = cfg->batch_window_us;
  rt->stale_after_ms = cfg->stale_after_ms;
  rt->search_tiles = cfg->search_tiles;
  rt->bandwidth_m = cfg->bandwidth_m;
  rc = gl_nn_model_load(cfg->model_path, &rt->model, why, sizeof why);
  if (rc != GL_OK) {
    snprintf(err, errlen, "[model] path %s: %s", cfg->model_path, why);
    goto fail;
  }
  rt->dim = gl_nn_model_descriptor_dim(rt->model);
  if (rt->dim == 0) {
    snprintf(err, errlen, "[model] path %s: the model has no descriptor head", cfg->model_path);
    rc = GL_EINVAL;
    goto fail;
  }
  rc = gl__runtime_engine(rt, cfg, why, sizeof why);
  if (rc != GL_OK) {
    snprintf(err, errlen, "[model] backend: %s", why);
    goto fail;
  }
  for (uint32_t i = 0; i < cfg->n_maps; i++) {
    struct gl_runtime_map *m = &rt->maps[i];
    rc = gl_map_open(cfg->maps[i].path, gl_nn_model_sha256(rt->model), &m->map, why, sizeof why);
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
  rc = gl__runtime_fine(rt, cfg, why, sizeof why);
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
