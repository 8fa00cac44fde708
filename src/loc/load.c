/* Loading the model, its engine, the maps and the fine stage (load.h). */
#include "loc/load.h"

#include <stdio.h>

#include "core/err.h"
#include "map/dense.h"

int gl_loc_load_model(const char *path, struct gl_nn_model **out, char *err, size_t errlen) {
  int rc = gl_nn_model_load(path, out, err, errlen);
  if (rc != GL_OK)
    return rc;
  if (gl_nn_model_descriptor_dim(*out) == 0) {
    gl_nn_model_destroy(*out);
    *out = NULL;
    return gl_fail(err, errlen, GL_EINVAL, "the model has no descriptor head");
  }
  return GL_OK;
}

int gl_loc_load_engine(const struct gl_nn_model *model, const struct gl_nn_engine_opts *o,
                       bool cpu_fallback, struct gl_nn_engine **out, char *note, size_t notelen,
                       char *err, size_t errlen) {
  if (notelen)
    note[0] = '\0';
  struct gl_nn_engine_opts b = *o;
  if (!o->max_batch)
    b.max_batch = o->backend == GL_NN_BACKEND_CPU ? GL_LOC_BATCH_CPU : GL_LOC_BATCH_GPU;
  int rc = gl_nn_engine_create(model, &b, out, err, errlen);
  if (rc == GL_OK || !cpu_fallback || o->backend != GL_NN_BACKEND_CUDA)
    return rc;
  snprintf(note, notelen, "%s", err);
  b.backend = GL_NN_BACKEND_CPU;
  if (!o->max_batch)
    b.max_batch = GL_LOC_BATCH_CPU;
  return gl_nn_engine_create(model, &b, out, err, errlen);
}

int gl_loc_load_map(const struct gl_nn_model *model, const char *path, struct gl_map **out,
                    char *err, size_t errlen) {
  return gl_map_open(path, gl_nn_model_sha256(model), out, err, errlen);
}

uint32_t gl_loc_crop_side(const struct gl_nn_model *model) {
  const uint32_t s = gl_nn_model_input_size(model),
                 f = gl_nn_model_fine_size(model, gl_nn_model_dense_layer(model));
  return 2 * (s > f ? s : f);
}

int gl_loc_load_fine(const struct gl_nn_model *model, const struct gl_map *map,
                     const struct gl_loc_fine_params *p, uint32_t threads,
                     struct gl_loc_fine_frame **fine, bool *used, char *err, size_t errlen) {
  const struct gl_map_dense *d = gl_map_dense(map);
  *used = false;
  if (!d) {
    snprintf(err, errlen, "no dense layer");
    return GL_OK;
  }
  int rc;
  if (!*fine && (rc = gl_loc_fine_frame_create(model, d->layer, p, threads, fine, err, errlen)))
    return rc;
  /* The stage compares a frame's cells with the map's: both must come from
   * the same block at the same scale. */
  const uint32_t input = gl_nn_model_fine_size(model, gl_loc_fine_frame_layer(*fine));
  if (d->layer != gl_loc_fine_frame_layer(*fine) || d->input_px != input) {
    snprintf(err, errlen,
             "dense layer of block %u at %u px, not the fine stage's block %u at %u px", d->layer,
             d->input_px, gl_loc_fine_frame_layer(*fine), input);
    return GL_OK;
  }
  *used = true;
  return GL_OK;
}
