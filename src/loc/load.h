/* Loading what localizes frames: the model, its engine, the map packs built
 * with it and the fine stage. Written once for geolocd (daemon/runtime.c)
 * and for `geoloc locate` and `geoloc eval` (tools/inproc.c), so that both
 * refuse the same models and maps and give a map the fine stage on the same
 * terms. Each function writes why it failed to err; the caller says which
 * of its options or sections that was. */
#ifndef GL_LOC_LOAD_H
#define GL_LOC_LOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loc/fine.h"
#include "map/map.h"
#include "nn/nn.h"

/* Loads the model at path, which must have a descriptor head: without one
 * there is nothing to search a map with. */
int gl_loc_load_model(const char *path, struct gl_nn_model **out, char *err, size_t errlen);

/* Batch sizes engines plan for when asked for max_batch 0. An engine plans
 * memory for every batch size up to its largest: on the CPU a batch past 8
 * gains little throughput and costs start time and memory (the shipped
 * model: about 2.5 s and 470 MiB at 8, 11 s and 1.6 GiB at 32); a GPU wants
 * larger batches. */
#define GL_LOC_BATCH_CPU 8u
#define GL_LOC_BATCH_GPU 32u

/* Creates model's engine as o says (o->max_batch 0: the backend's default
 * above; gl_nn_engine_max_batch tells what was planned). With cpu_fallback,
 * when o asks for CUDA and it cannot be had, a CPU engine instead, with why
 * CUDA could not be written to note (otherwise note is ""): running on the
 * CPU is a normal way to run, which the caller may want to say. */
int gl_loc_load_engine(const struct gl_nn_model *model, const struct gl_nn_engine_opts *o,
                       bool cpu_fallback, struct gl_nn_engine **out, char *note, size_t notelen,
                       char *err, size_t errlen);

/* Opens the map pack at path, which must have been built with model. */
int gl_loc_load_map(const struct gl_nn_model *model, const char *path, struct gl_map **out,
                    char *err, size_t errlen);

/* The fine stage for map's frames. The stage is planned once, into *fine,
 * for the dense layer of the first map that has one; *used tells whether
 * map's frames get it: false, with why in err, when map has no dense layer
 * (gl_map_dense is NULL) or its layer is not the stage's (another backbone
 * block, or encoded at another input size than the model's). threads: the
 * stage's CPU threads (0: all cores). Returns 0, or the planning's error. */
int gl_loc_load_fine(const struct gl_nn_model *model, const struct gl_map *map,
                     const struct gl_loc_fine_params *p, uint32_t threads,
                     struct gl_loc_fine_frame **fine, bool *used, char *err, size_t errlen);

/* The most pixels a side a frame with a camera is cropped to (footprint.h):
 * twice the largest input a stage takes, the model's own (the global stage)
 * or the fine stage's for its dense layer (gl_nn_model_fine_size: 128 for
 * the shipped model's fused cells), since the fine stage warps from a
 * frame resized to twice its input. */
uint32_t gl_loc_crop_side(const struct gl_nn_model *model);

#endif
