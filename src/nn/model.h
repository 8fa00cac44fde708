/* Model internals: the architecture config (python/geoloc_train/config.py),
 * the tensor set it implies (OPS.md section 4), and the loaded model with
 * batch-norm folded into its convolutions. */
#ifndef GL_NN_MODEL_H
#define GL_NN_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nn/nn.h"
#include "nn/safetensors.h"

#define GL__NN_FEATURES 19 /* MobileNetV2 features 0..18 */
#define GL__NN_LAST_FEATURE 18
#define GL__NN_MAX_LEVELS 3

enum gl__nn_act { GL__NN_ACT_NONE = 0, GL__NN_ACT_RELU = 1, GL__NN_ACT_RELU6 = 2 };
enum gl__nn_pad { GL__NN_PAD_TF_SAME = 0, GL__NN_PAD_TORCH = 1 };
enum gl__nn_pool { GL__NN_POOL_MEAN = 0, GL__NN_POOL_GEM = 1 };

/* Every field of config.py's ModelConfig, with the same defaults. */
struct gl__nn_config {
  double width_mult;
  enum gl__nn_act activation;
  bool bn;
  double bn_eps;
  enum gl__nn_pad padding;
  uint32_t input_h, input_w;
  /* Kept in float32 because the reference normalises with float32 tensors. */
  float mean[3], std[3];
  bool resizer;
  uint32_t resizer_channels, resizer_reduction;
  uint32_t num_classes;
  bool descriptor;
  uint32_t n_levels, levels[GL__NN_MAX_LEVELS];
  bool has_fusion_init;
  double fusion_init[GL__NN_MAX_LEVELS];
  uint32_t osm_dim, osm_groups, osm_se_reduction;
  enum gl__nn_pool pool;
  double gem_p;
  uint32_t descriptor_dim;
  uint32_t ref_rotations; /* headings the map encodes each tile at: 1, 2 or 4 */
  /* The dense head (config dense_head; OPS.md): on backbone block dh_layer,
   * dh_dim output channels, dh_hidden in its residual branch, the fine
   * stage's input dh_size pixels (0: input_w). dh_layer 0: no head.
   * dh_fuse_layer: a block whose raw cells join the head's with weight
   * dh_fuse_weight (gl_nn_cells), 0 for none. */
  uint32_t dh_layer, dh_dim, dh_hidden, dh_size, dh_fuse_layer;
  double dh_fuse_weight;
};

/* The MobileNetV2 shape that a config implies (model.py's MobileNetV2). */
struct gl__nn_arch {
  uint32_t cout[GL__NN_FEATURES];   /* output channels of each feature */
  uint32_t cin[GL__NN_FEATURES];    /* input channels (3 for feature 0) */
  uint32_t hidden[GL__NN_FEATURES]; /* expanded channels of blocks 1..17 */
  uint32_t stride[GL__NN_FEATURES];
  bool expand[GL__NN_FEATURES];   /* block has an expand unit (t != 1) */
  bool residual[GL__NN_FEATURES]; /* block adds its input */
  uint32_t resizer_hidden;        /* Z = max(C / r, 4) */
  uint32_t osm_se_hidden;         /* max(d / r, 1) */
};

/* Parses a config JSON object; fields left out take config.py's defaults,
 * unknown fields are refused. GL_EFORMAT with err naming the field. */
int gl__nn_config_parse(const char *json, struct gl__nn_config *cfg, char *err, size_t errlen);
void gl__nn_arch_init(const struct gl__nn_config *cfg, struct gl__nn_arch *arch);
/* config.fusion_weights(): the initial fusion weights per level. */
void gl__nn_fusion_init(const struct gl__nn_config *cfg, double w[GL__NN_MAX_LEVELS]);

struct gl__nn_tensor_spec {
  char name[80];
  uint32_t ndim;
  uint64_t shape[4];
};

/* The tensors a model file with this config holds, in no particular order
 * (*out is malloc'ed). Returns 0, GL_ENOMEM, or GL_ETOOBIG (nothing in
 * *out) as soon as there are more than max: a config of a few bytes can
 * imply millions of tensors (osm_groups), which no file holds. */
int gl__nn_expected_tensors(const struct gl__nn_config *cfg, size_t max,
                            struct gl__nn_tensor_spec **out, size_t *n);

/* A conv unit with batch-norm folded in: weight OIHW and bias [O]. */
struct gl__nn_unit {
  char prefix[48];
  const float *w, *b;
};

struct gl_nn_model {
  struct gl__st st;
  struct gl__nn_config cfg;
  struct gl__nn_arch arch;
  uint64_t params;
  struct gl__nn_unit *units;
  size_t n_units;
  float *folded; /* folded weights and biases of all bn units */
};

/* A tensor of the file by name; NULL when absent (which a loaded model's
 * validation rules out for every name gl__nn_expected_tensors gives). */
const float *gl__nn_model_tensor(const struct gl_nn_model *m, const char *name);
/* The folded conv unit with this prefix ("backbone.features.3.dw"), or NULL. */
const struct gl__nn_unit *gl__nn_model_unit(const struct gl_nn_model *m, const char *prefix);
/* Total stride of backbone block `layer` (product of the strides up to it),
 * of an architecture and of a loaded model. */
uint32_t gl__nn_arch_stride(const struct gl__nn_arch *a, uint32_t layer);
uint32_t gl__nn_feature_stride(const struct gl_nn_model *m, uint32_t layer);

#endif
