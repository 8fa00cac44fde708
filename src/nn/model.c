/* Loading a model: the file's metadata, config and tensor set are checked
 * against each other, then batch-norm is folded into the convolutions. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "nn/model.h"
#include "nn/nn_internal.h"

#define GL__FORMAT "geoloc-model"
#define GL__FORMAT_VERSION "1"

static void gl__shape_str(char *buf, size_t len, uint32_t ndim, const uint64_t *shape) {
  size_t used = 0;
  used += (size_t)snprintf(buf, len, "[");
  for (uint32_t i = 0; i < ndim && used < len; i++)
    used += (size_t)snprintf(buf + used, len - used, "%s%llu", i ? ", " : "",
                             (unsigned long long)shape[i]);
  if (used < len)
    snprintf(buf + used, len - used, "]");
}

static int gl__spec_cmp(const void *a, const void *b) {
  return strcmp(((const struct gl__nn_tensor_spec *)a)->name,
                ((const struct gl__nn_tensor_spec *)b)->name);
}

/* The file must hold exactly the tensors of the config, with their shapes. */
static int gl__check_tensor_set(const struct gl_nn_model *m, char *err, size_t errlen) {
  struct gl__nn_tensor_spec *spec = NULL;
  size_t n = 0;
  /* A config that implies far more tensors than the file holds is refused
   * before its whole list is made: osm_groups alone can ask for millions
   * (36 million, 3.7 GB and half a minute for a config of 66 bytes, found
   * by fuzz_model_config). Within the margin the usual message counts what
   * is missing. */
  size_t max = 2 * m->st.n_tensors + 1024;
  int rc = gl__nn_expected_tensors(&m->cfg, max, &spec, &n);
  if (rc == GL_ETOOBIG)
    return gl_fail(err, errlen, GL_EFORMAT,
                   "tensors do not match the config: it needs more than %zu tensors, the file "
                   "holds %zu",
                   max, m->st.n_tensors);
  if (rc)
    return rc;
  qsort(spec, n, sizeof *spec, gl__spec_cmp);
  size_t missing = 0, extra = 0;
  const char *first_missing = NULL, *first_extra = NULL;
  for (size_t i = 0; i < n; i++) {
    if (!gl__st_find(&m->st, spec[i].name) && missing++ == 0)
      first_missing = spec[i].name;
  }
  for (size_t i = 0; i < m->st.n_tensors; i++) {
    struct gl__nn_tensor_spec key;
    snprintf(key.name, sizeof key.name, "%s", m->st.tensors[i].name);
    bool long_name = strlen(m->st.tensors[i].name) >= sizeof key.name;
    if ((long_name || !bsearch(&key, spec, n, sizeof *spec, gl__spec_cmp)) && extra++ == 0)
      first_extra = m->st.tensors[i].name;
  }
  if (missing || extra) {
    char a[160] = "none", b[160] = "none";
    if (missing)
      snprintf(a, sizeof a, "'%s'%s", first_missing, missing > 1 ? " and more" : "");
    if (extra)
      snprintf(b, sizeof b, "'%s'%s", first_extra, extra > 1 ? " and more" : "");
    rc = gl_fail(err, errlen, GL_EFORMAT,
                     "tensors do not match the config: %zu missing (%s), %zu unexpected (%s)",
                     missing, a, extra, b);
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    const struct gl__st_tensor *t = gl__st_find(&m->st, spec[i].name);
    bool same = t->ndim == spec[i].ndim;
    for (uint32_t k = 0; same && k < t->ndim; k++)
      same = t->shape[k] == spec[i].shape[k];
    if (!same) {
      char have[96], want[96];
      gl__shape_str(have, sizeof have, t->ndim, t->shape);
      gl__shape_str(want, sizeof want, spec[i].ndim, spec[i].shape);
      rc = gl_fail(err, errlen, GL_EFORMAT, "tensor '%s' has shape %s, the config needs %s",
                       t->name, have, want);
      goto out;
    }
  }
out:
  free(spec);
  return rc;
}

/* Conv units (model.ConvUnit) are the tensors named "<prefix>.conv.weight". */
static int gl__fold_units(struct gl_nn_model *m) {
  size_t n = 0, floats = 0;
  for (size_t i = 0; i < m->st.n_tensors; i++) {
    const struct gl__st_tensor *t = &m->st.tensors[i];
    size_t len = strlen(t->name);
    if (len > 12 && strcmp(t->name + len - 12, ".conv.weight") == 0) {
      n++;
      floats += t->numel + t->shape[0];
    }
  }
  if (!(m->units = calloc(n ? n : 1, sizeof *m->units)))
    return GL_ENOMEM;
  if (m->cfg.bn && !(m->folded = gl__nn_alloc(floats * sizeof(float))))
    return GL_ENOMEM;
  float *next = m->folded;
  for (size_t i = 0; i < m->st.n_tensors; i++) {
    const struct gl__st_tensor *t = &m->st.tensors[i];
    size_t len = strlen(t->name);
    if (!(len > 12 && strcmp(t->name + len - 12, ".conv.weight") == 0))
      continue;
    struct gl__nn_unit *u = &m->units[m->n_units++];
    snprintf(u->prefix, sizeof u->prefix, "%.*s", (int)(len - 12), t->name);
    char name[96];
    snprintf(name, sizeof name, "%s.conv.bias", u->prefix);
    const float *bias = gl__nn_model_tensor(m, name);
    if (bias) { /* no BN (bn: false, or a resizer unit): used as stored */
      u->w = t->data;
      u->b = bias;
      continue;
    }
    /* As model.fold_batch_norm: s = gamma / sqrt(var + eps) in float64,
     * w' = w * s, b' = beta - mean * s, each rounded once to float32. */
    const float *bn[4];
    static const char *const what[4] = {"weight", "bias", "running_mean", "running_var"};
    for (int k = 0; k < 4; k++) {
      snprintf(name, sizeof name, "%s.bn.%s", u->prefix, what[k]);
      bn[k] = gl__nn_model_tensor(m, name);
      if (!bn[k])
        return GL_EINTERNAL; /* ruled out by the tensor-set check */
    }
    uint64_t out = t->shape[0], per = t->numel / out;
    float *w = next, *b = next + t->numel;
    next += t->numel + out;
    for (uint64_t o = 0; o < out; o++) {
      double s = (double)bn[0][o] / sqrt((double)bn[3][o] + m->cfg.bn_eps);
      for (uint64_t k = 0; k < per; k++)
        w[o * per + k] = (float)((double)t->data[o * per + k] * s);
      b[o] = (float)((double)bn[1][o] - (double)bn[2][o] * s);
    }
    u->w = w;
    u->b = b;
  }
  return 0;
}

int gl_nn_model_load(const char *path, struct gl_nn_model **out, char *err, size_t errlen) {
  int rc;
  struct gl_nn_model *m = calloc(1, sizeof *m);
  if (!m)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  if ((rc = gl__st_read(path, &m->st, err, errlen)))
    goto fail;
  const struct gl__st *st = &m->st;
  if (!st->format || strcmp(st->format, GL__FORMAT) != 0) {
    rc = gl_fail(err, errlen, GL_EFORMAT, "__metadata__ format is %s%s%s, not '" GL__FORMAT "'",
                     st->format ? "'" : "", st->format ? st->format : "missing",
                     st->format ? "'" : "");
    goto fail_prefixed;
  }
  if (!st->format_version || strcmp(st->format_version, GL__FORMAT_VERSION) != 0) {
    rc = gl_fail(err, errlen, GL_EFORMAT,
                     "unsupported format_version %s%s%s (this code reads '" GL__FORMAT_VERSION "')",
                     st->format_version ? "'" : "",
                     st->format_version ? st->format_version : "missing",
                     st->format_version ? "'" : "");
    goto fail_prefixed;
  }
  if (!st->config) {
    rc = gl_fail(err, errlen, GL_EFORMAT, "__metadata__ has no 'config'");
    goto fail_prefixed;
  }
  if ((rc = gl__nn_config_parse(st->config, &m->cfg, err, errlen)))
    goto fail_prefixed;
  gl__nn_arch_init(&m->cfg, &m->arch);
  if ((rc = gl__check_tensor_set(m, err, errlen)))
    goto fail_prefixed;
  for (size_t i = 0; i < st->n_tensors; i++)
    m->params += st->tensors[i].numel;
  if ((rc = gl__fold_units(m))) {
    gl_fail(err, errlen, rc, "%s", rc == GL_ENOMEM ? "out of memory" : "internal error");
    goto fail_prefixed;
  }
  *out = m;
  return 0;
fail_prefixed:
  gl_err_prefix(err, errlen, path);
fail:
  gl_nn_model_destroy(m);
  return rc;
}

void gl_nn_model_destroy(struct gl_nn_model *m) {
  if (!m)
    return;
  free(m->folded);
  free(m->units);
  gl__st_fini(&m->st);
  free(m);
}

const char *gl_nn_model_config_json(const struct gl_nn_model *m) { return m->st.config; }

uint64_t gl_nn_model_param_count(const struct gl_nn_model *m) { return m->params; }

uint32_t gl_nn_model_descriptor_dim(const struct gl_nn_model *m) {
  return m->cfg.descriptor ? m->cfg.descriptor_dim : 0;
}

uint32_t gl_nn_model_ref_rotations(const struct gl_nn_model *m) { return m->cfg.ref_rotations; }

const char *gl_nn_model_sha256(const struct gl_nn_model *m) { return m->st.sha256; }

uint32_t gl_nn_model_input_size(const struct gl_nn_model *m) { return m->cfg.input_w; }

uint32_t gl_nn_model_fine_size(const struct gl_nn_model *m, uint32_t layer) {
  if (layer != m->cfg.dh_layer)
    return m->cfg.input_w;
  const uint32_t s = m->cfg.dh_size ? m->cfg.dh_size : m->cfg.input_w;
  return m->cfg.dh_fuse_layer ? s * (gl__nn_feature_stride(m, m->cfg.dh_fuse_layer) /
                                     gl__nn_feature_stride(m, layer))
                              : s;
}

uint32_t gl_nn_model_dense_layer(const struct gl_nn_model *m) {
  return m->cfg.dh_layer ? m->cfg.dh_layer : 6;
}

uint32_t gl_nn_model_feature_margin(const struct gl_nn_model *m, uint32_t layer) {
  if (layer == 0 || layer >= GL__NN_LAST_FEATURE)
    return 0;
  uint32_t rf = 1, jump = 1; /* features 0..17: one 3x3 conv each (stem, depthwise) */
  for (uint32_t f = 0; f <= layer; f++) {
    rf += 2 * jump;
    jump *= m->arch.stride[f];
  }
  uint32_t reach = (rf - 1) / 2 + jump, margin = (reach + jump - 1) / jump * jump;
  return margin < 64 ? 64 : margin;
}

void gl_nn_model_input_dims(const struct gl_nn_model *m, uint32_t *width, uint32_t *height) {
  *width = m->cfg.input_w;
  *height = m->cfg.input_h;
}

uint32_t gl__nn_arch_stride(const struct gl__nn_arch *a, uint32_t layer) {
  uint32_t s = 1;
  for (uint32_t f = 0; f <= layer && f < GL__NN_FEATURES; f++)
    s *= a->stride[f];
  return s;
}

uint32_t gl__nn_feature_stride(const struct gl_nn_model *m, uint32_t layer) {
  return gl__nn_arch_stride(&m->arch, layer);
}

int gl_nn_model_feature_shape(const struct gl_nn_model *m, uint32_t layer, uint32_t *stride,
                              uint32_t *channels) {
  if (layer == 0 || layer >= GL__NN_LAST_FEATURE)
    return GL_EINVAL;
  *stride = gl__nn_feature_stride(m, layer);
  *channels = layer == m->cfg.dh_layer ? m->cfg.dh_dim : m->arch.cout[layer];
  return 0;
}

const float *gl__nn_model_tensor(const struct gl_nn_model *m, const char *name) {
  const struct gl__st_tensor *t = gl__st_find(&m->st, name);
  return t ? t->data : NULL;
}

const struct gl__nn_unit *gl__nn_model_unit(const struct gl_nn_model *m, const char *prefix) {
  for (size_t i = 0; i < m->n_units; i++)
    if (strcmp(m->units[i].prefix, prefix) == 0)
      return &m->units[i];
  return NULL;
}
