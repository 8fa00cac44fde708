/* The architecture config (python/geoloc_train/config.py) and the tensor set
 * it implies (OPS.md section 4). Field names, defaults and validation rules
 * follow config.py; a difference would let the two sides disagree on which
 * files are valid. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "nn/model.h"
#include "nn/nn_internal.h"

static const struct gl__nn_config gl__config_defaults = {
    .width_mult = 1.0,
    .activation = GL__NN_ACT_RELU6,
    .bn = true,
    .bn_eps = 1e-5,
    .padding = GL__NN_PAD_TF_SAME,
    .input_h = 224,
    .input_w = 224,
    .mean = {127.5f, 127.5f, 127.5f},
    .std = {127.5f, 127.5f, 127.5f},
    .resizer = false,
    .resizer_channels = 16,
    .resizer_reduction = 4,
    .num_classes = 0,
    .descriptor = true,
    .n_levels = 1,
    .levels = {GL__NN_LAST_FEATURE},
    .has_fusion_init = false,
    .osm_dim = 512,
    .osm_groups = 4,
    .osm_se_reduction = 4,
    .pool = GL__NN_POOL_MEAN,
    .gem_p = 3.0,
    .descriptor_dim = 512,
    .ref_rotations = 1,
};

/* Every known field; parsing visits them in this order so that an error in
 * several fields always names the same one. */
static const char *const gl__config_fields[] = {
    "backbone",    "width_mult",     "activation",       "bn",
    "bn_eps",      "padding",        "input_size",       "mean",
    "std",         "resizer",        "resizer_channels", "resizer_reduction",
    "num_classes", "descriptor",     "levels",           "fusion_init",
    "osm_dim",     "osm_groups",     "osm_se_reduction", "pool",
    "gem_p",       "descriptor_dim", "branches",         "ref_rotations",
    "dense_head",
};
#define GL__N_FIELDS (sizeof gl__config_fields / sizeof *gl__config_fields)

/* Booleans are refused where numbers are expected: JSON keeps them apart,
 * and `"osm_dim": true` is a mistake, not 1. */
static bool gl__num(const cJSON *j, double *v) {
  if (!cJSON_IsNumber(j))
    return false;
  *v = j->valuedouble;
  return true;
}

static bool gl__int(const cJSON *j, long long *v) {
  double d;
  if (!gl__num(j, &d) || d != floor(d) || fabs(d) > 1e15)
    return false;
  *v = (long long)d;
  return true;
}

static int gl__bad(char *err, size_t errlen, const char *field, const char *why, const cJSON *got) {
  char *text = got ? cJSON_PrintUnformatted(got) : NULL;
  gl_fail(err, errlen, GL_EFORMAT, "config field '%s': %s (got %s)", field, why,
              text ? text : "?");
  free(text);
  return GL_EFORMAT;
}

static int gl__pos_u32(const cJSON *j, const char *name, uint32_t *out, char *err, size_t errlen) {
  long long v;
  if (!gl__int(j, &v) || v < 1 || v > 1000000)
    return gl__bad(err, errlen, name, "must be a positive integer", j);
  *out = (uint32_t)v;
  return 0;
}

static int gl__field(struct gl__nn_config *c, const char *name, const cJSON *j, char *err,
                     size_t errlen) {
  long long iv;
  double dv;
  if (strcmp(name, "backbone") == 0) {
    if (!cJSON_IsString(j) || strcmp(j->valuestring, "mobilenet_v2") != 0)
      return gl__bad(err, errlen, name, "only 'mobilenet_v2' is supported", j);
  } else if (strcmp(name, "width_mult") == 0) {
    /* The upper bound only keeps channel arithmetic far from overflow. */
    if (!gl__num(j, &c->width_mult) || !(c->width_mult > 0 && c->width_mult <= 16))
      return gl__bad(err, errlen, name, "must be a positive number (at most 16)", j);
  } else if (strcmp(name, "activation") == 0) {
    if (cJSON_IsString(j) && strcmp(j->valuestring, "relu6") == 0)
      c->activation = GL__NN_ACT_RELU6;
    else if (cJSON_IsString(j) && strcmp(j->valuestring, "relu") == 0)
      c->activation = GL__NN_ACT_RELU;
    else
      return gl__bad(err, errlen, name, "must be 'relu6' or 'relu'", j);
  } else if (strcmp(name, "bn") == 0 || strcmp(name, "resizer") == 0 ||
             strcmp(name, "descriptor") == 0) {
    if (!cJSON_IsBool(j))
      return gl__bad(err, errlen, name, "must be true or false", j);
    bool v = cJSON_IsTrue(j);
    *(name[0] == 'b' ? &c->bn : name[0] == 'r' ? &c->resizer : &c->descriptor) = v;
  } else if (strcmp(name, "bn_eps") == 0) {
    if (!gl__num(j, &c->bn_eps) || !(c->bn_eps > 0))
      return gl__bad(err, errlen, name, "must be a positive number", j);
  } else if (strcmp(name, "padding") == 0) {
    if (cJSON_IsString(j) && strcmp(j->valuestring, "tf_same") == 0)
      c->padding = GL__NN_PAD_TF_SAME;
    else if (cJSON_IsString(j) && strcmp(j->valuestring, "torch") == 0)
      c->padding = GL__NN_PAD_TORCH;
    else
      return gl__bad(err, errlen, name, "must be 'tf_same' or 'torch'", j);
  } else if (strcmp(name, "input_size") == 0) {
    /* 224 is shorthand for [224, 224], as in config.py. */
    long long hw[2];
    bool ok;
    if (cJSON_IsNumber(j)) {
      ok = gl__int(j, &hw[0]);
      hw[1] = hw[0];
    } else {
      ok = cJSON_IsArray(j) && cJSON_GetArraySize(j) == 2 &&
           gl__int(cJSON_GetArrayItem(j, 0), &hw[0]) && gl__int(cJSON_GetArrayItem(j, 1), &hw[1]);
    }
    if (!ok || hw[0] < 32 || hw[1] < 32 || hw[0] > 8192 || hw[1] > 8192)
      return gl__bad(err, errlen, name, "must be [height, width], integers in 32..8192", j);
    c->input_h = (uint32_t)hw[0];
    c->input_w = (uint32_t)hw[1];
  } else if (strcmp(name, "mean") == 0 || strcmp(name, "std") == 0) {
    float *dst = name[0] == 'm' ? c->mean : c->std;
    if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) != 3)
      return gl__bad(err, errlen, name, "must be a list of 3 numbers (R, G, B)", j);
    for (int i = 0; i < 3; i++) {
      if (!gl__num(cJSON_GetArrayItem(j, i), &dv))
        return gl__bad(err, errlen, name, "must be a list of 3 numbers (R, G, B)", j);
      if (name[0] == 's' && !(dv > 0))
        return gl__bad(err, errlen, name, "entries must be positive", j);
      dst[i] = (float)dv;
    }
  } else if (strcmp(name, "resizer_channels") == 0) {
    return gl__pos_u32(j, name, &c->resizer_channels, err, errlen);
  } else if (strcmp(name, "resizer_reduction") == 0) {
    return gl__pos_u32(j, name, &c->resizer_reduction, err, errlen);
  } else if (strcmp(name, "osm_dim") == 0) {
    return gl__pos_u32(j, name, &c->osm_dim, err, errlen);
  } else if (strcmp(name, "osm_groups") == 0) {
    return gl__pos_u32(j, name, &c->osm_groups, err, errlen);
  } else if (strcmp(name, "osm_se_reduction") == 0) {
    return gl__pos_u32(j, name, &c->osm_se_reduction, err, errlen);
  } else if (strcmp(name, "descriptor_dim") == 0) {
    return gl__pos_u32(j, name, &c->descriptor_dim, err, errlen);
  } else if (strcmp(name, "num_classes") == 0) {
    if (!gl__int(j, &iv) || iv < 0 || iv > 1000000)
      return gl__bad(err, errlen, name, "must be a non-negative integer", j);
    c->num_classes = (uint32_t)iv;
  } else if (strcmp(name, "levels") == 0) {
    int n = cJSON_IsArray(j) ? cJSON_GetArraySize(j) : 0;
    if (n < 1 || n > GL__NN_MAX_LEVELS)
      goto bad_levels;
    for (int i = 0; i < n; i++) {
      if (!gl__int(cJSON_GetArrayItem(j, i), &iv) || iv < 0 || iv > GL__NN_LAST_FEATURE ||
          (i > 0 && iv <= (long long)c->levels[i - 1]))
        goto bad_levels;
      c->levels[i] = (uint32_t)iv;
    }
    c->n_levels = (uint32_t)n;
  } else if (strcmp(name, "fusion_init") == 0) {
    c->has_fusion_init = !cJSON_IsNull(j);
    if (c->has_fusion_init) {
      int n = cJSON_IsArray(j) ? cJSON_GetArraySize(j) : 0;
      if (n < 1 || n > GL__NN_MAX_LEVELS)
        return gl__bad(err, errlen, name, "must be null or one number per level", j);
      for (int i = 0; i < n; i++)
        if (!gl__num(cJSON_GetArrayItem(j, i), &c->fusion_init[i]))
          return gl__bad(err, errlen, name, "must be null or one number per level", j);
    }
  } else if (strcmp(name, "pool") == 0) {
    if (cJSON_IsString(j) && strcmp(j->valuestring, "mean") == 0)
      c->pool = GL__NN_POOL_MEAN;
    else if (cJSON_IsString(j) && strcmp(j->valuestring, "gem") == 0)
      c->pool = GL__NN_POOL_GEM;
    else
      return gl__bad(err, errlen, name, "must be 'mean' or 'gem'", j);
  } else if (strcmp(name, "gem_p") == 0) {
    if (!gl__num(j, &c->gem_p) || !(c->gem_p > 0))
      return gl__bad(err, errlen, name, "must be a positive number", j);
  } else if (strcmp(name, "ref_rotations") == 0) {
    if (!gl__int(j, &iv) || (iv != 1 && iv != 2 && iv != 4))
      return gl__bad(err, errlen, name, "must be 1, 2 or 4", j);
    c->ref_rotations = (uint32_t)iv;
  } else if (strcmp(name, "dense_head") == 0) {
    /* null, or {"layer": L, "dim": D, "hidden": H, "size": S, "fuse_layer": B,
     * "fuse_weight": W}; absent keys take 6, 64 and 56 (config.py's
     * defaults), no size the input's, no fuse_layer no fused block. */
    c->dh_layer = 0;
    c->dh_size = 0;
    c->dh_fuse_layer = 0;
    c->dh_fuse_weight = 0;
    if (cJSON_IsNull(j))
      return 0;
    if (!cJSON_IsObject(j))
      return gl__bad(err, errlen, name,
                     "must be null or {layer, dim, hidden[, size][, fuse_layer, fuse_weight]}", j);
    static const char *const keys[] = {"layer", "dim", "hidden", "size", "fuse_layer"};
    uint32_t *dst[] = {&c->dh_layer, &c->dh_dim, &c->dh_hidden, &c->dh_size, &c->dh_fuse_layer};
    const uint32_t def[] = {6, 64, 56, 0, 0},
                   min[] = {1, 1, 1, 16, 1},
                   max[] = {GL__NN_LAST_FEATURE - 1, 4096, 4096, 1024, GL__NN_LAST_FEATURE - 1};
    const cJSON *k;
    cJSON_ArrayForEach(k, j) {
      bool known = strcmp(k->string, "fuse_weight") == 0;
      for (int i = 0; i < 5; i++)
        known |= strcmp(k->string, keys[i]) == 0;
      if (!known)
        return gl__bad(err, errlen, name,
                       "has a key other than layer, dim, hidden, size, fuse_layer and fuse_weight",
                       j);
    }
    for (int i = 0; i < 5; i++) {
      const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, keys[i]);
      *dst[i] = def[i];
      if (v && (!gl__int(v, &iv) || iv < min[i] || iv > max[i]))
        return gl__bad(err, errlen, name,
                       "layer and fuse_layer must be 1..17, dim and hidden positive, size 16..1024",
                       j);
      if (v)
        *dst[i] = (uint32_t)iv;
    }
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(j, "fuse_weight");
    if (!w != !c->dh_fuse_layer)
      return gl__bad(err, errlen, name, "fuse_layer and fuse_weight go together", j);
    if (w && (!gl__num(w, &c->dh_fuse_weight) || !(c->dh_fuse_weight > 0) ||
              !(c->dh_fuse_weight < 1)))
      return gl__bad(err, errlen, name, "fuse_weight must be a number strictly between 0 and 1", j);
  } else if (strcmp(name, "branches") == 0) {
    if (!cJSON_IsString(j) || strcmp(j->valuestring, "shared") != 0)
      return gl__bad(err, errlen, name, "only 'shared' is implemented", j);
  }
  return 0;
bad_levels:
  return gl__bad(err, errlen, name, "must be 1 to 3 increasing feature indices in 0..18", j);
}

int gl__nn_config_parse(const char *json, struct gl__nn_config *cfg, char *err, size_t errlen) {
  int rc = 0;
  *cfg = gl__config_defaults;
  cJSON *root = cJSON_Parse(json);
  if (!root)
    return gl_fail(err, errlen, GL_EFORMAT, "config is not valid JSON");
  if (!cJSON_IsObject(root)) {
    rc = gl_fail(err, errlen, GL_EFORMAT, "config must be a JSON object");
    goto out;
  }
  /* All unknown fields in one message, as config.py reports them. */
  char unknown[256] = "";
  size_t used = 0;
  const cJSON *f;
  cJSON_ArrayForEach(f, root) {
    bool known = false;
    for (size_t i = 0; i < GL__N_FIELDS; i++)
      known |= strcmp(f->string, gl__config_fields[i]) == 0;
    if (!known && used < sizeof unknown) {
      int n = snprintf(unknown + used, sizeof unknown - used, "%s%s", used ? ", " : "", f->string);
      used += n > 0 ? (size_t)n : 0;
    }
  }
  if (used) {
    rc = gl_fail(err, errlen, GL_EFORMAT, "unknown config field(s): %s", unknown);
    goto out;
  }
  for (size_t i = 0; i < GL__N_FIELDS; i++) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, gl__config_fields[i]);
    if (j && (rc = gl__field(cfg, gl__config_fields[i], j, err, errlen)))
      goto out;
  }
  /* Rules that span fields (config.py's validate). */
  if (!cfg->descriptor && cfg->num_classes == 0) {
    rc = gl__bad(err, errlen, "descriptor", "a model needs a descriptor head or a classifier",
                 cJSON_GetObjectItemCaseSensitive(root, "descriptor"));
    goto out;
  }
  const cJSON *fi = cJSON_GetObjectItemCaseSensitive(root, "fusion_init");
  if (cfg->has_fusion_init && (uint32_t)cJSON_GetArraySize(fi) != cfg->n_levels) {
    rc = gl__bad(err, errlen, "fusion_init", "must be null or one number per level", fi);
    goto out;
  }
  if (cfg->ref_rotations > 1 && cfg->input_h != cfg->input_w) {
    rc = gl__bad(err, errlen, "ref_rotations", "needs a square input_size",
                 cJSON_GetObjectItemCaseSensitive(root, "ref_rotations"));
    goto out;
  }
  if (cfg->dh_layer) {
    struct gl__nn_arch a;
    gl__nn_arch_init(cfg, &a);
    if (cfg->dh_dim < a.cout[cfg->dh_layer]) {
      rc = gl_fail(err, errlen, GL_EFORMAT,
                   "config field 'dense_head': dim %u is below block %u's %u channels",
                   cfg->dh_dim, cfg->dh_layer, a.cout[cfg->dh_layer]);
      goto out;
    }
    const uint32_t stride = gl__nn_arch_stride(&a, cfg->dh_layer);
    if (cfg->dh_size % stride) {
      rc = gl_fail(err, errlen, GL_EFORMAT,
                   "config field 'dense_head': size %u is not a multiple of block %u's stride %u",
                   cfg->dh_size, cfg->dh_layer, stride);
      goto out;
    }
    /* A fused block must give the head's grid at an integer scale: its
     * stride a multiple of the head block's (gl_nn_cells, nn.h). */
    const uint32_t fl = cfg->dh_fuse_layer;
    if (fl) {
      const uint32_t fs = gl__nn_arch_stride(&a, fl);
      const uint32_t size = (cfg->dh_size ? cfg->dh_size : cfg->input_w) * (fs / stride);
      if (cfg->dh_dim + a.cout[fl] > 4096) {
        rc = gl_fail(err, errlen, GL_EFORMAT,
                     "config field 'dense_head': dim %u and block %u's %u channels are more "
                     "than 4096 a cell",
                     cfg->dh_dim, fl, a.cout[fl]);
        goto out;
      }
      if (fl == cfg->dh_layer || fs % stride || size > 1024) {
        rc = gl_fail(err, errlen, GL_EFORMAT,
                     "config field 'dense_head': fuse_layer %u must be another block whose stride "
                     "(%u) is a multiple of block %u's (%u), the fused input at most 1024 "
                     "pixels (%u)",
                     fl, fs, cfg->dh_layer, stride, size);
        goto out;
      }
    }
  }
  if (cfg->osm_dim % cfg->osm_groups) {
    rc = gl_fail(err, errlen, GL_EFORMAT,
                     "config field 'osm_groups': must divide osm_dim=%u (got %u)", cfg->osm_dim,
                     cfg->osm_groups);
    goto out;
  }
out:
  cJSON_Delete(root);
  return rc;
}

/* TF-slim's _make_divisible, as model.make_divisible. */
static uint32_t gl__make_divisible(double v) {
  const int d = 8;
  int n = (int)(v + d / 2.0) / d * d;
  if (n < d)
    n = d;
  if (n < 0.9 * v) /* never round down by more than 10% */
    n += d;
  return (uint32_t)n;
}

void gl__nn_arch_init(const struct gl__nn_config *cfg, struct gl__nn_arch *a) {
  /* (expansion t, channels c, repeats n, first stride s) of the stages. */
  static const int stages[7][4] = {{1, 16, 1, 1}, {6, 24, 2, 2},  {6, 32, 3, 2}, {6, 64, 4, 2},
                                   {6, 96, 3, 1}, {6, 160, 3, 2}, {6, 320, 1, 1}};
  memset(a, 0, sizeof *a);
  uint32_t cin = gl__make_divisible(32 * cfg->width_mult);
  a->cin[0] = 3;
  a->cout[0] = cin;
  a->stride[0] = 2;
  int f = 1;
  for (int s = 0; s < 7; s++) {
    uint32_t cout = gl__make_divisible(stages[s][1] * cfg->width_mult);
    for (int i = 0; i < stages[s][2]; i++, f++) {
      a->cin[f] = cin;
      a->cout[f] = cout;
      a->stride[f] = i == 0 ? (uint32_t)stages[s][3] : 1;
      a->hidden[f] = cin * (uint32_t)stages[s][0];
      a->expand[f] = stages[s][0] != 1;
      a->residual[f] = a->stride[f] == 1 && cin == cout;
      cin = cout;
    }
  }
  a->cin[GL__NN_LAST_FEATURE] = cin;
  a->cout[GL__NN_LAST_FEATURE] = gl__make_divisible(1280 * fmax(1.0, cfg->width_mult));
  a->stride[GL__NN_LAST_FEATURE] = 1;
  uint32_t z = cfg->resizer_channels / cfg->resizer_reduction;
  a->resizer_hidden = z > 4 ? z : 4;
  uint32_t d = cfg->osm_dim / cfg->osm_groups, h = d / cfg->osm_se_reduction;
  a->osm_se_hidden = h > 1 ? h : 1;
}

void gl__nn_fusion_init(const struct gl__nn_config *cfg, double w[GL__NN_MAX_LEVELS]) {
  static const double two[2] = {0.4, 0.6}, three[3] = {0.1, 0.4, 0.5};
  for (uint32_t i = 0; i < cfg->n_levels; i++)
    w[i] = cfg->has_fusion_init ? cfg->fusion_init[i]
           : cfg->n_levels == 1 ? 1.0
           : cfg->n_levels == 2 ? two[i]
                                : three[i];
}

/* --- the tensor set ----------------------------------------------------- */

struct gl__spec_list {
  struct gl__nn_tensor_spec *v;
  size_t n, cap, max;
  bool oom, over; /* over: more than max tensors (the loops stop early) */
};

static void gl__add(struct gl__spec_list *l, const char *name, uint32_t ndim, uint64_t d0,
                    uint64_t d1, uint64_t d2, uint64_t d3) {
  if (l->oom || l->over)
    return;
  if (l->n == l->max) {
    l->over = true;
    return;
  }
  if (l->n == l->cap) {
    size_t cap = l->cap ? 2 * l->cap : 256;
    void *p = realloc(l->v, cap * sizeof *l->v);
    if (!p) {
      l->oom = true;
      return;
    }
    l->v = p;
    l->cap = cap;
  }
  struct gl__nn_tensor_spec *s = &l->v[l->n++];
  snprintf(s->name, sizeof s->name, "%s", name);
  s->ndim = ndim;
  s->shape[0] = d0;
  s->shape[1] = d1;
  s->shape[2] = d2;
  s->shape[3] = d3;
}

/* A conv unit (model.ConvUnit): conv weight, then a conv bias or BN. */
static void gl__add_unit(struct gl__spec_list *l, const char *prefix, uint32_t cout,
                         uint32_t cin_per_group, uint32_t k, bool bn) {
  static const char *const bn_names[] = {"weight", "bias", "running_mean", "running_var"};
  char name[96];
  snprintf(name, sizeof name, "%s.conv.weight", prefix);
  gl__add(l, name, 4, cout, cin_per_group, k, k);
  if (!bn) {
    snprintf(name, sizeof name, "%s.conv.bias", prefix);
    gl__add(l, name, 1, cout, 0, 0, 0);
    return;
  }
  for (int i = 0; i < 4; i++) {
    snprintf(name, sizeof name, "%s.bn.%s", prefix, bn_names[i]);
    gl__add(l, name, 1, cout, 0, 0, 0);
  }
}

/* A linear layer (nn.Linear): weight [out, in], bias [out]. */
static void gl__add_linear(struct gl__spec_list *l, const char *prefix, uint32_t out, uint32_t in) {
  char name[96];
  snprintf(name, sizeof name, "%s.weight", prefix);
  gl__add(l, name, 2, out, in, 0, 0);
  snprintf(name, sizeof name, "%s.bias", prefix);
  gl__add(l, name, 1, out, 0, 0, 0);
}

/* A k x k nn.Conv2d with bias (the OSM's and the dense head's convs). */
static void gl__add_conv(struct gl__spec_list *l, const char *prefix, uint32_t out, uint32_t in,
                         uint32_t k) {
  char name[96];
  snprintf(name, sizeof name, "%s.weight", prefix);
  gl__add(l, name, 4, out, in, k, k);
  snprintf(name, sizeof name, "%s.bias", prefix);
  gl__add(l, name, 1, out, 0, 0, 0);
}

int gl__nn_expected_tensors(const struct gl__nn_config *cfg, size_t max,
                            struct gl__nn_tensor_spec **out, size_t *n) {
  struct gl__spec_list l = {.max = max};
  struct gl__nn_arch a;
  char p[96];
  gl__nn_arch_init(cfg, &a);

  gl__add_unit(&l, "backbone.features.0", a.cout[0], 3, 3, cfg->bn);
  for (int f = 1; f < GL__NN_LAST_FEATURE; f++) {
    if (a.expand[f]) {
      snprintf(p, sizeof p, "backbone.features.%d.expand", f);
      gl__add_unit(&l, p, a.hidden[f], a.cin[f], 1, cfg->bn);
    }
    snprintf(p, sizeof p, "backbone.features.%d.dw", f);
    gl__add_unit(&l, p, a.hidden[f], 1, 3, cfg->bn);
    snprintf(p, sizeof p, "backbone.features.%d.project", f);
    gl__add_unit(&l, p, a.cout[f], a.hidden[f], 1, cfg->bn);
  }
  gl__add_unit(&l, "backbone.features.18", a.cout[18], a.cin[18], 1, cfg->bn);
  if (cfg->num_classes)
    gl__add_linear(&l, "classifier", cfg->num_classes, a.cout[18]);

  if (cfg->descriptor) {
    uint32_t D = cfg->osm_dim, d = D / cfg->osm_groups, h = a.osm_se_hidden;
    for (uint32_t i = 0; i < cfg->n_levels; i++) {
      snprintf(p, sizeof p, "osm.%u.proj", i);
      gl__add_conv(&l, p, D, a.cout[cfg->levels[i]], 1);
      /* Up to 10^6 groups of 12 tensors each a level: stop once over max. */
      for (uint32_t g = 0; g < cfg->osm_groups && !l.over && !l.oom; g++) {
        static const char *const qkv[3] = {"q", "k", "v"};
        for (int k = 0; k < 3; k++) {
          snprintf(p, sizeof p, "osm.%u.groups.%u.%s", i, g, qkv[k]);
          gl__add_conv(&l, p, d, d, 1);
        }
        snprintf(p, sizeof p, "osm.%u.groups.%u.se.fc1", i, g);
        gl__add_linear(&l, p, h, d);
        snprintf(p, sizeof p, "osm.%u.groups.%u.se.fc2", i, g);
        gl__add_linear(&l, p, d, h);
        snprintf(p, sizeof p, "osm.%u.groups.%u.overlap", i, g);
        gl__add_conv(&l, p, 1, d, 1);
      }
      snprintf(p, sizeof p, "osm.%u.embed", i);
      gl__add_linear(&l, p, cfg->descriptor_dim, D);
    }
    if (cfg->n_levels > 1)
      gl__add(&l, "fusion.weight", 1, cfg->n_levels, 0, 0, 0);
  }

  if (cfg->dh_layer) {
    uint32_t c = a.cout[cfg->dh_layer], d = cfg->dh_dim, h = cfg->dh_hidden;
    gl__add_conv(&l, "dense_head.proj", d, c, 1);
    gl__add_conv(&l, "dense_head.b1", h, c, 1);
    gl__add_conv(&l, "dense_head.b2", h, h, 3);
    gl__add_conv(&l, "dense_head.b3", d, h, 1);
  }
  if (cfg->resizer) {
    uint32_t c = cfg->resizer_channels, z = a.resizer_hidden;
    gl__add_unit(&l, "resizer.stem", c, 3, 3, false);
    gl__add_unit(&l, "resizer.sk.branch0", c, c, 3, false);
    gl__add_unit(&l, "resizer.sk.branch1", c, c, 3, false);
    gl__add_linear(&l, "resizer.sk.fc", z, c);
    gl__add_linear(&l, "resizer.sk.select", 2 * c, z);
    gl__add_linear(&l, "resizer.se.fc1", z, c);
    gl__add_linear(&l, "resizer.se.fc2", c, z);
    gl__add_unit(&l, "resizer.out", 3, c, 3, false);
  }
  if (l.oom || l.over) {
    free(l.v);
    return l.oom ? GL_ENOMEM : GL_ETOOBIG;
  }
  *out = l.v;
  *n = l.n;
  return 0;
}
