#include "nn/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/err.h"
#include "nn/nn_internal.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "tensors are read in place as little-endian floats and halves"
#endif

#define GL__ST_ALIGN 8
/* Integers above this are not exactly representable in the doubles cJSON
 * parses numbers into, so no offset or dimension may exceed it. */
#define GL__ST_MAX_INT 9007199254740992.0

/* Known safetensors dtypes: an unknown one and a known one other than F32
 * and F16 get different messages, because the fix differs (corrupt file vs.
 * re-export). */
static const char *const gl__st_dtypes[] = {"F64", "F32", "F16", "BF16", "I64",
                                            "I32", "I16", "I8",  "U8",   "BOOL"};

/* Converted F16 tensors each start on a 64-byte boundary of their buffer,
 * as gl__nn_alloc'ed buffers do. */
#define GL__ST_WIDE_ALIGN 16 /* floats */

float gl__st_f16_to_f32(uint16_t h) {
  /* Bit manipulation rather than the compiler's _Float16: clang 14 (Debian
   * 12's) rejects _Float16 on x86-64, and gcc 12 accepts it only as an
   * extension that -pedantic warns about; F16C intrinsics would need
   * -mf16c. Every half is exactly a float, so this is exact. */
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    /* Inf keeps its sign; NaN keeps sign and payload and is made quiet, as
     * the hardware conversions (F16C, ARM FCVT) do. */
    bits = sign | 0x7f800000u | (mant ? 0x400000u | mant << 13 : 0);
  } else if (exp != 0) {
    bits = sign | (exp - 15 + 127) << 23 | mant << 13; /* normal: rebias */
  } else {
    /* Zero or subnormal, mant * 2^-24: a normal float (or zero), and both
     * the conversion of mant and the scaling by a power of two are exact. */
    float v = (float)mant * 0x1p-24f;
    memcpy(&bits, &v, sizeof bits);
    bits |= sign;
  }
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

static uint64_t gl__align_up_to(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

static uint64_t gl__align_up(uint64_t n) { return gl__align_up_to(n, GL__ST_ALIGN); }

/* RFC 3629 UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF
 * (what Python's strict decoder accepts). */
static bool gl__utf8_valid(const uint8_t *s, size_t n, size_t *bad) {
  size_t i = 0;
  while (i < n) {
    uint8_t c = s[i];
    size_t len;
    uint32_t cp, min;
    if (c < 0x80) {
      i++;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      len = 2, cp = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3, cp = c & 0x0f, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4, cp = c & 0x07, min = 0x10000;
    } else {
      goto fail;
    }
    if (n - i < len)
      goto fail;
    for (size_t k = 1; k < len; k++) {
      if ((s[i + k] & 0xc0) != 0x80)
        goto fail;
      cp = cp << 6 | (s[i + k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      goto fail;
    i += len;
  }
  return true;
fail:
  *bad = i;
  return false;
}

/* A JSON number that is an integer in [0, 2^53]. */
static bool gl__json_uint(const cJSON *j, uint64_t *out) {
  if (!cJSON_IsNumber(j))
    return false;
  double v = j->valuedouble;
  if (!(v >= 0 && v <= GL__ST_MAX_INT) || v != floor(v))
    return false;
  *out = (uint64_t)v;
  return true;
}

static int gl__name_cmp(const void *a, const void *b) {
  return strcmp(((const struct gl__st_tensor *)a)->name, ((const struct gl__st_tensor *)b)->name);
}

static int gl__offset_cmp(const void *a, const void *b) {
  const struct gl__st_tensor *x = *(const struct gl__st_tensor *const *)a;
  const struct gl__st_tensor *y = *(const struct gl__st_tensor *const *)b;
  if (x->begin != y->begin)
    return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end)
    return x->end < y->end ? -1 : 1;
  return 0;
}

static bool gl__all_zero(const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i])
      return false;
  return true;
}

static int gl__str_cmp(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int gl__parse_metadata(struct gl__st *st, const cJSON *meta, char *err, size_t errlen) {
  if (!cJSON_IsObject(meta))
    return gl_fail(err, errlen, GL_EFORMAT,
                       "__metadata__ must be an object mapping strings to strings");
  const cJSON *kv;
  /* cJSON keeps duplicate keys. Python's reader refuses them in every
   * object of the header, and here a second "config" would replace (and
   * leak) the first: refused like duplicate tensor names, after a sort so
   * that a header of many keys costs n log n. */
  size_t n = 0;
  cJSON_ArrayForEach(kv, meta) { n++; }
  if (n > 1) {
    const char **keys = malloc(n * sizeof *keys);
    if (!keys)
      return GL_ENOMEM;
    n = 0;
    cJSON_ArrayForEach(kv, meta) { keys[n++] = kv->string; }
    qsort(keys, n, sizeof *keys, gl__str_cmp);
    for (size_t i = 1; i < n; i++) {
      if (strcmp(keys[i - 1], keys[i]) == 0) {
        int rc =
            gl_fail(err, errlen, GL_EFORMAT, "header: duplicate key '%s' in __metadata__", keys[i]);
        free(keys);
        return rc;
      }
    }
    free(keys);
  }
  cJSON_ArrayForEach(kv, meta) {
    if (!cJSON_IsString(kv))
      return gl_fail(err, errlen, GL_EFORMAT,
                         "__metadata__ must be an object mapping strings to strings "
                         "(value of '%s' is not a string)",
                         kv->string);
    char **slot = strcmp(kv->string, "format") == 0           ? &st->format
                  : strcmp(kv->string, "format_version") == 0 ? &st->format_version
                  : strcmp(kv->string, "config") == 0         ? &st->config
                                                              : NULL;
    if (slot && !(*slot = strdup(kv->valuestring)))
      return GL_ENOMEM;
  }
  return 0;
}

/* Checks one header entry and fills t (name excepted). */
static int gl__parse_entry(const struct gl__st *st, const char *name, const cJSON *e,
                           struct gl__st_tensor *t, char *err, size_t errlen) {
  if (!cJSON_IsObject(e))
    return gl_fail(err, errlen, GL_EFORMAT, "tensor '%s': entry is not an object", name);
  const cJSON *dtype = NULL, *shape = NULL, *offs = NULL, *f;
  int nfields = 0;
  cJSON_ArrayForEach(f, e) {
    nfields++;
    if (strcmp(f->string, "dtype") == 0)
      dtype = f;
    else if (strcmp(f->string, "shape") == 0)
      shape = f;
    else if (strcmp(f->string, "data_offsets") == 0)
      offs = f;
  }
  if (nfields != 3 || !dtype || !shape || !offs)
    return gl_fail(err, errlen, GL_EFORMAT,
                       "tensor '%s': entry must have exactly dtype, shape, data_offsets", name);

  bool known = false;
  for (size_t i = 0; cJSON_IsString(dtype) && i < sizeof gl__st_dtypes / sizeof *gl__st_dtypes; i++)
    known |= strcmp(dtype->valuestring, gl__st_dtypes[i]) == 0;
  if (!known)
    return gl_fail(err, errlen, GL_EFORMAT, "tensor '%s': unknown dtype %s", name,
                       cJSON_IsString(dtype) ? dtype->valuestring : "(not a string)");
  /* F32 tensors are used in place; F16 ones (half-size model files) are
   * converted to float once the whole header is checked (gl__st_widen). */
  if (strcmp(dtype->valuestring, "F32") == 0)
    t->dtype = "F32", t->elem_size = 4;
  else if (strcmp(dtype->valuestring, "F16") == 0)
    t->dtype = "F16", t->elem_size = 2;
  else
    return gl_fail(err, errlen, GL_EFORMAT,
                       "tensor '%s': dtype %s is not supported (geoloc models are F32 or F16)",
                       name, dtype->valuestring);

  if (!cJSON_IsArray(shape))
    return gl_fail(err, errlen, GL_EFORMAT,
                       "tensor '%s': shape is not a list of non-negative integers", name);
  int nd = cJSON_GetArraySize(shape);
  if (nd > GL__ST_MAX_DIMS)
    return gl_fail(err, errlen, GL_EFORMAT, "tensor '%s': %d dimensions, at most %d supported",
                       name, nd, GL__ST_MAX_DIMS);
  t->ndim = (uint32_t)nd;
  t->numel = 1;
  bool overflow = false;
  int i = 0;
  cJSON_ArrayForEach(f, shape) {
    if (!gl__json_uint(f, &t->shape[i]))
      return gl_fail(err, errlen, GL_EFORMAT,
                         "tensor '%s': shape is not a list of non-negative integers", name);
    if (t->shape[i] && t->numel > UINT64_MAX / 4 / t->shape[i])
      overflow = true;
    t->numel *= t->shape[i];
    i++;
  }

  uint64_t begin, end;
  if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
      !gl__json_uint(cJSON_GetArrayItem(offs, 0), &begin) ||
      !gl__json_uint(cJSON_GetArrayItem(offs, 1), &end))
    return gl_fail(err, errlen, GL_EFORMAT,
                       "tensor '%s': data_offsets is not [begin, end] (non-negative integers)",
                       name);
  if (!(begin <= end && end <= st->data_size))
    return gl_fail(err, errlen, GL_EFORMAT,
                       "tensor '%s': data_offsets [%llu, %llu] out of range of the %zu-byte data "
                       "section",
                       name, (unsigned long long)begin, (unsigned long long)end, st->data_size);
  /* Without overflow set, numel * 4 fits in 64 bits, so numel * 2 does too. */
  uint64_t need = t->numel * t->elem_size;
  if (overflow || end - begin != need)
    return gl_fail(err, errlen, GL_EFORMAT,
                       "tensor '%s': %llu bytes at data_offsets but dtype %s and its shape need "
                       "%llu",
                       name, (unsigned long long)(end - begin), t->dtype,
                       (unsigned long long)need);
  if (begin % t->elem_size)
    return gl_fail(err, errlen, GL_EFORMAT,
                       "tensor '%s': offset %llu is not aligned to its %u-byte elements", name,
                       (unsigned long long)begin, t->elem_size);
  t->begin = begin;
  t->end = end;
  if (t->elem_size == 4)
    t->data = (const float *)(const void *)(st->data + begin);
  return 0;
}

/* Tensors must tile the data section in offset order: no overlap, and no
 * gap other than zero padding up to the next 8-byte boundary. */
static int gl__check_layout(const struct gl__st *st, char *err, size_t errlen) {
  int rc = 0;
  const struct gl__st_tensor **order = NULL;
  if (st->n_tensors && !(order = malloc(st->n_tensors * sizeof *order)))
    return GL_ENOMEM;
  for (size_t i = 0; i < st->n_tensors; i++)
    order[i] = &st->tensors[i];
  if (st->n_tensors)
    qsort(order, st->n_tensors, sizeof *order, gl__offset_cmp);
  uint64_t prev_end = 0;
  const char *prev_name = NULL;
  for (size_t i = 0; i < st->n_tensors; i++) {
    const struct gl__st_tensor *t = order[i];
    if (t->begin < prev_end) {
      rc = gl_fail(err, errlen, GL_EFORMAT, "tensor '%s' overlaps tensor '%s'", t->name,
                       prev_name);
      goto out;
    }
    if (t->begin != prev_end && t->begin != gl__align_up(prev_end)) {
      rc = gl_fail(err, errlen, GL_EFORMAT,
                       "tensor '%s' starts at %llu, leaving a gap after byte %llu that is not "
                       "alignment padding",
                       t->name, (unsigned long long)t->begin, (unsigned long long)prev_end);
      goto out;
    }
    if (!gl__all_zero(st->data + prev_end, t->begin - prev_end)) {
      rc = gl_fail(err, errlen, GL_EFORMAT, "non-zero padding bytes before tensor '%s'",
                       t->name);
      goto out;
    }
    prev_end = t->end;
    prev_name = t->name;
  }
  if (st->data_size != prev_end && st->data_size != gl__align_up(prev_end)) {
    rc = gl_fail(err, errlen, GL_EFORMAT,
                     "data section is %zu bytes but the tensors end at %llu: trailing bytes",
                     st->data_size, (unsigned long long)prev_end);
    goto out;
  }
  if (!gl__all_zero(st->data + prev_end, st->data_size - prev_end))
    rc = gl_fail(err, errlen, GL_EFORMAT, "non-zero padding bytes after the last tensor");
out:
  free(order);
  return rc;
}

/* Converts every F16 tensor to float32 into one buffer (st->wide) and
 * points its data there, so that everything downstream (batch-norm folding,
 * the graph, the backends) sees float tensors whatever the file stores.
 * Called once the layout is checked: offsets are in range. */
static int gl__st_widen(struct gl__st *st) {
  size_t floats = 0, n16 = 0;
  for (size_t i = 0; i < st->n_tensors; i++) {
    const struct gl__st_tensor *t = &st->tensors[i];
    if (t->elem_size == 2) {
      floats += (size_t)gl__align_up_to(t->numel, GL__ST_WIDE_ALIGN);
      n16++;
    }
  }
  if (!n16)
    return 0;
  /* Even an empty tensor gets a non-NULL pointer, as F32 ones do. */
  float *next = st->wide = gl__nn_alloc(floats * sizeof(float));
  if (!st->wide)
    return GL_ENOMEM;
  for (size_t i = 0; i < st->n_tensors; i++) {
    struct gl__st_tensor *t = &st->tensors[i];
    if (t->elem_size != 2)
      continue;
    const uint8_t *src = st->data + t->begin;
    for (uint64_t k = 0; k < t->numel; k++)
      next[k] = gl__st_f16_to_f32((uint16_t)(src[2 * k] | src[2 * k + 1] << 8));
    t->data = next;
    next += gl__align_up_to(t->numel, GL__ST_WIDE_ALIGN);
  }
  return 0;
}

/* Parses the header of st->file (already read) and fills st. */
static int gl__st_parse(struct gl__st *st, char *err, size_t errlen) {
  int rc = 0;
  char *text = NULL;
  cJSON *root = NULL;

  if (st->size < 8)
    return gl_fail(err, errlen, GL_EFORMAT,
                       "file is %zu bytes, shorter than the 8-byte header size field", st->size);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--)
    hlen = hlen << 8 | st->file[i];
  if (hlen < 2)
    return gl_fail(err, errlen, GL_EFORMAT, "header size %llu is too small for a JSON object",
                       (unsigned long long)hlen);
  if (hlen > GL__ST_MAX_HEADER_BYTES)
    return gl_fail(err, errlen, GL_EFORMAT, "header size %llu exceeds the limit of %u bytes",
                       (unsigned long long)hlen, GL__ST_MAX_HEADER_BYTES);
  if (8 + hlen > st->size)
    return gl_fail(err, errlen, GL_EFORMAT,
                       "header size %llu runs past the end of the file (%zu bytes)",
                       (unsigned long long)hlen, st->size);
  const uint8_t *raw = st->file + 8;
  st->data = raw + hlen;
  st->data_size = st->size - 8 - (size_t)hlen;

  size_t bad;
  if (!gl__utf8_valid(raw, (size_t)hlen, &bad))
    return gl_fail(err, errlen, GL_EFORMAT, "header is not UTF-8 (byte %zu)", bad);
  if (raw[0] != '{')
    return gl_fail(err, errlen, GL_EFORMAT, "header does not start with '{'");
  /* cJSON reads a C string: a NUL inside the header would silently cut it. */
  if (memchr(raw, 0, (size_t)hlen))
    return gl_fail(err, errlen, GL_EFORMAT, "header is not valid JSON: it contains a NUL byte");
  if (!(text = malloc((size_t)hlen + 1))) {
    rc = GL_ENOMEM;
    goto out;
  }
  memcpy(text, raw, (size_t)hlen);
  text[hlen] = 0;
  const char *end = NULL;
  root = cJSON_ParseWithOpts(text, &end, 1);
  if (!root) {
    rc = gl_fail(err, errlen, GL_EFORMAT, "header is not valid JSON (error at byte %ld)",
                     end ? (long)(end - text) : -1L);
    goto out;
  }
  if (!cJSON_IsObject(root)) {
    rc = gl_fail(err, errlen, GL_EFORMAT, "header is not a JSON object");
    goto out;
  }

  size_t n = 0;
  const cJSON *e;
  bool have_meta = false;
  cJSON_ArrayForEach(e, root) {
    if (strcmp(e->string, "__metadata__") == 0) {
      if (have_meta) {
        rc = gl_fail(err, errlen, GL_EFORMAT, "header: duplicate key '__metadata__'");
        goto out;
      }
      have_meta = true;
      if ((rc = gl__parse_metadata(st, e, err, errlen)))
        goto out;
    } else {
      n++;
    }
  }
  if (n && !(st->tensors = calloc(n, sizeof *st->tensors))) {
    rc = GL_ENOMEM;
    goto out;
  }
  cJSON_ArrayForEach(e, root) {
    if (strcmp(e->string, "__metadata__") == 0)
      continue;
    struct gl__st_tensor *t = &st->tensors[st->n_tensors];
    if (!(t->name = strdup(e->string))) {
      rc = GL_ENOMEM;
      goto out;
    }
    st->n_tensors++;
    if ((rc = gl__parse_entry(st, t->name, e, t, err, errlen)))
      goto out;
  }
  if (n)
    qsort(st->tensors, n, sizeof *st->tensors, gl__name_cmp);
  /* cJSON keeps duplicate keys; JSON readers disagree on which one wins, so
   * a file that has any is refused. */
  for (size_t i = 1; i < n; i++) {
    if (strcmp(st->tensors[i - 1].name, st->tensors[i].name) == 0) {
      rc = gl_fail(err, errlen, GL_EFORMAT, "header: duplicate key '%s'", st->tensors[i].name);
      goto out;
    }
  }
  if ((rc = gl__check_layout(st, err, errlen)))
    goto out;
  rc = gl__st_widen(st);
out:
  cJSON_Delete(root);
  free(text);
  return rc;
}

static int gl__sha256_hex(const uint8_t *p, size_t n, char out[65]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!EVP_Digest(p, n, md, &len, EVP_sha256(), NULL) || len != 32)
    return GL_EINTERNAL;
  for (unsigned i = 0; i < 32; i++)
    snprintf(out + 2 * i, 3, "%02x", md[i]);
  return 0;
}

int gl__st_read(const char *path, struct gl__st *st, char *err, size_t errlen) {
  int rc = 0;
  FILE *f = NULL;
  memset(st, 0, sizeof *st);

  if (!(f = fopen(path, "rb"))) {
    rc = gl_fail(err, errlen, errno == ENOENT ? GL_ENOENT : GL_EIO, "%s: cannot open: %s", path,
                     strerror(errno));
    goto fail;
  }
  struct stat sb;
  if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
    rc = gl_fail(err, errlen, GL_EIO, "%s: not a regular file", path);
    goto fail;
  }
  st->size = (size_t)sb.st_size;
  /* The data section starts at 8 + header size, which a valid file keeps
   * 8-aligned; placing the file at that alignment in memory lets tensors be
   * used in place as float arrays. A file whose header size breaks the
   * alignment is shifted so that its data section still lands aligned. */
  uint8_t head[8] = {0};
  size_t got = fread(head, 1, sizeof head, f);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--)
    hlen = hlen << 8 | head[i];
  size_t shift = got == 8 ? (size_t)((GL__ST_ALIGN - (8 + hlen) % GL__ST_ALIGN) % GL__ST_ALIGN) : 0;
  uint8_t *base = gl__nn_alloc(st->size + shift + 1);
  if (!base) {
    rc = gl_fail(err, errlen, GL_ENOMEM, "%s: out of memory for %zu bytes", path, st->size);
    goto fail;
  }
  st->mem = base;
  st->file = base + shift;
  if (fseek(f, 0, SEEK_SET) != 0 || fread(st->file, 1, st->size, f) != st->size) {
    rc = gl_fail(err, errlen, GL_EIO, "%s: read error", path);
    goto fail;
  }
  fclose(f);
  f = NULL;
  if ((rc = gl__sha256_hex(st->file, st->size, st->sha256))) {
    gl_fail(err, errlen, rc, "%s: SHA-256 failed", path);
    goto fail;
  }
  if ((rc = gl__st_parse(st, err, errlen))) {
    if (rc == GL_ENOMEM)
      gl_fail(err, errlen, rc, "out of memory");
    gl_err_prefix(err, errlen, path);
    goto fail;
  }
  return 0;
fail:
  if (f)
    fclose(f);
  gl__st_fini(st);
  return rc;
}

void gl__st_fini(struct gl__st *st) {
  if (!st)
    return;
  for (size_t i = 0; i < st->n_tensors; i++)
    free(st->tensors[i].name);
  free(st->tensors);
  free(st->mem);
  free(st->wide);
  free(st->format);
  free(st->format_version);
  free(st->config);
  memset(st, 0, sizeof *st);
}

const struct gl__st_tensor *gl__st_find(const struct gl__st *st, const char *name) {
  struct gl__st_tensor key = {.name = (char *)name};
  if (!st->n_tensors)
    return NULL;
  return bsearch(&key, st->tensors, st->n_tensors, sizeof key, gl__name_cmp);
}
