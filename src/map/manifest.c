/* manifest.json: its one reader and writer (format: map_internal.h,
 * struct gl__manifest).
 *
 * Every key of the format is one row of the tables below: its name, its
 * type, the field of struct gl__manifest it binds to, its bounds and
 * whether it is required. Reading and writing both walk the same rows, so a
 * key is spelled once. cJSON does the JSON; this file binds keys to fields
 * and checks what the rest of the map module relies on. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/err.h"
#include "map/map.h"
#include "map/map_internal.h"

enum gl__mt {
  GL__MT_STR,   /* const char *, pointing into the parsed document */
  GL__MT_SHA,   /* char[65]: 64 lowercase hex digits */
  GL__MT_NAME,  /* char[n]: a file name (no '/'), shorter than n */
  GL__MT_U32,   /* uint32_t, an integer within [lo, hi] */
  GL__MT_U64,   /* uint64_t, the same */
  GL__MT_F64,   /* double within [lo, hi] */
  GL__MT_BOOL,  /* bool */
  GL__MT_U32S,  /* uint32_t[n], each within [lo, hi] */
  GL__MT_F64S,  /* double[n], finite */
};

enum {
  GL__MF_REQ = 1,   /* reading fails without it */
  GL__MF_NULL = 2,  /* a NULL string is written as null (else left out) */
  GL__MF_OMIT0 = 4, /* a zero number is left out on writing */
};

struct gl__mrow {
  const char *key;
  uint8_t type, flags, n;
  size_t off;
  double lo, hi;
  /* Optional keys whose presence matters: offset + 1 of a bool set when
   * read, tested before writing (0: none). */
  size_t has;
};

#define ROW(T, k, ty, fl, field, l, h) {k, ty, fl, 0, offsetof(T, field), l, h, 0}
#define ROWN(T, k, ty, fl, n, field, l, h) {k, ty, fl, n, offsetof(T, field), l, h, 0}
#define ROWH(T, k, ty, fl, n, field, l, h, hasf)                                                   \
  {k, ty, fl, n, offsetof(T, field), l, h, offsetof(T, hasf) + 1}
#define U40 ((double)(1ull << 40))

/* The top level, in the order written; "tiling", "sources", "counts",
 * "dense" and "files" follow in that order (gl__manifest_write). */
static const struct gl__mrow gl__top[] = {
    ROW(struct gl__manifest, "format", GL__MT_STR, GL__MF_REQ, format, 0, 0),
    ROW(struct gl__manifest, "format_version", GL__MT_U32, GL__MF_REQ, format_version, 1, 1e6),
    ROW(struct gl__manifest, "generator", GL__MT_STR, 0, generator, 0, 0),
    ROW(struct gl__manifest, "created", GL__MT_STR, 0, created, 0, 0),
    ROW(struct gl__manifest, "model_sha256", GL__MT_SHA, GL__MF_REQ, model_sha256, 0, 0),
    ROW(struct gl__manifest, "descriptor_dim", GL__MT_U32, GL__MF_REQ, descriptor_dim, 1, 65536),
    ROW(struct gl__manifest, "metric", GL__MT_STR, GL__MF_REQ, metric, 0, 0),
    ROW(struct gl__manifest, "index_type", GL__MT_STR, GL__MF_REQ, index_type, 0, 0),
    ROW(struct gl__manifest, "index_nprobe", GL__MT_U64, GL__MF_OMIT0, index_nprobe, 1, 1 << 20),
};

/* "tiling": the grid. Descriptors per tile: every source ("year", in the
 * order of the sources list) at headings 0, 360/rotations, ...; the index
 * holds tile id t, source y, heading r as vector id
 * (t - 1) * rotations * years + y * rotations + r + 1. Packs written before
 * rotations or years were recorded hold one of each. */
static const struct gl__mrow gl__tiling[] = {
    ROW(struct gl__manifest_tiling, "crs", GL__MT_STR, 0, crs, 0, 0),
    ROW(struct gl__manifest_tiling, "crs_wkt", GL__MT_STR, 0, crs_wkt, 0, 0),
    ROW(struct gl__manifest_tiling, "tile_m", GL__MT_F64, GL__MF_REQ, tile_m, 1e-6, 1e7),
    ROW(struct gl__manifest_tiling, "stride_m", GL__MT_F64, GL__MF_REQ, stride_m, 1e-6, 1e7),
    ROWN(struct gl__manifest_tiling, "tile_px", GL__MT_U32S, GL__MF_REQ, 2, tile_px, 1, 65535),
    ROW(struct gl__manifest_tiling, "m_per_px", GL__MT_F64, GL__MF_REQ, m_per_px, 1e-9, 1e7),
    ROW(struct gl__manifest_tiling, "resampling", GL__MT_STR, 0, resampling, 0, 0),
    ROW(struct gl__manifest_tiling, "rotations", GL__MT_U32, 0, rotations, 1, 4),
    ROW(struct gl__manifest_tiling, "years", GL__MT_U32, 0, years, 1, GL__MAP_MAX_YEARS),
    /* west, south, east, north (WGS84 degrees), when the build had one */
    ROWH(struct gl__manifest_tiling, "bbox", GL__MT_F64S, 0, 4, bbox, 0, 0, has_bbox),
};

/* One element of "sources": a raster and what it gave. path is where the
 * raster was when the pack was built (what draws the map's background);
 * places: places it covered with valid pixels; skipped: places in its
 * range where it has nodata. */
static const struct gl__mrow gl__source[] = {
    ROW(struct gl__manifest_source, "file", GL__MT_STR, GL__MF_REQ, file, 0, 0),
    ROW(struct gl__manifest_source, "path", GL__MT_STR, 0, path, 0, 0),
    ROW(struct gl__manifest_source, "sha256", GL__MT_SHA, GL__MF_REQ, sha256, 0, 0),
    ROW(struct gl__manifest_source, "bytes", GL__MT_U64, 0, bytes, 0, 9e15),
    ROW(struct gl__manifest_source, "crs", GL__MT_STR, 0, crs, 0, 0),
    ROW(struct gl__manifest_source, "warped", GL__MT_BOOL, 0, warped, 0, 0),
    ROW(struct gl__manifest_source, "capture_date", GL__MT_STR, GL__MF_NULL, capture_date, 0, 0),
    ROW(struct gl__manifest_source, "places", GL__MT_U64, 0, places, 0, U40),
    ROW(struct gl__manifest_source, "skipped", GL__MT_U64, 0, skipped, 0, U40),
    /* Packs before multi-year ones counted each source's tiles instead. */
    ROW(struct gl__manifest_source, "tiles", GL__MT_U64, GL__MF_OMIT0, tiles, 0, U40),
};

static const struct gl__mrow gl__counts[] = {
    ROW(struct gl__manifest_counts, "tiles", GL__MT_U64, GL__MF_REQ, tiles, 0, U40),
    ROW(struct gl__manifest_counts, "sources", GL__MT_U64, 0, sources, 0, U40),
    ROW(struct gl__manifest_counts, "skipped", GL__MT_U64, 0, skipped, 0, U40),
};

/* "dense": the fine stage's layer (dense.h); "layers" follows, one per
 * source. geotransform is GDAL's, of the cell grid in the grid CRS. */
static const struct gl__mrow gl__dense[] = {
    ROW(struct gl__manifest_dense, "layer", GL__MT_U32, GL__MF_REQ, layer, 1, 17),
    ROW(struct gl__manifest_dense, "stride_px", GL__MT_U32, GL__MF_REQ, stride_px, 1, 64),
    ROW(struct gl__manifest_dense, "channels", GL__MT_U32, GL__MF_REQ, channels, 1, 4096),
    ROW(struct gl__manifest_dense, "input_px", GL__MT_U32, GL__MF_REQ, input_px, 1, 65535),
    ROW(struct gl__manifest_dense, "m_per_px", GL__MT_F64, GL__MF_REQ, m_per_px, 1e-6, 1e6),
    ROW(struct gl__manifest_dense, "cell_m", GL__MT_F64, GL__MF_REQ, cell_m, 1e-6, 1e7),
    ROW(struct gl__manifest_dense, "rows", GL__MT_U32, GL__MF_REQ, rows, 1, 1 << 20),
    ROW(struct gl__manifest_dense, "cols", GL__MT_U32, GL__MF_REQ, cols, 1, 1 << 20),
    ROWN(struct gl__manifest_dense, "geotransform", GL__MT_F64S, GL__MF_REQ, 6, geotransform, 0,
         0),
    ROW(struct gl__manifest_dense, "encoding", GL__MT_STR, 0, encoding, 0, 0),
    ROW(struct gl__manifest_dense, "block_px", GL__MT_U32, 0, block_px, 0, 1 << 20),
    ROW(struct gl__manifest_dense, "margin_px", GL__MT_U32, 0, margin_px, 0, 1 << 20),
};

static const struct gl__mrow gl__layer[] = {
    ROW(struct gl__manifest_layer, "source", GL__MT_U32, 0, source, 0, GL__MAP_MAX_YEARS),
    ROWN(struct gl__manifest_layer, "file", GL__MT_NAME, GL__MF_REQ, 32, file, 0, 0),
    ROW(struct gl__manifest_layer, "sha256", GL__MT_SHA, GL__MF_REQ, sha256, 0, 0),
    ROW(struct gl__manifest_layer, "bytes", GL__MT_U64, GL__MF_REQ, bytes, 0, 9e15),
    ROW(struct gl__manifest_layer, "valid_cells", GL__MT_U64, 0, valid_cells, 0, U40),
};

/* An element of "files", keyed by file name (gl__map_pack_files). */
static const struct gl__mrow gl__file[] = {
    ROW(struct gl__manifest_file, "sha256", GL__MT_SHA, GL__MF_REQ, sha256, 0, 0),
    ROW(struct gl__manifest_file, "bytes", GL__MT_U64, GL__MF_REQ, bytes, 0, 9e15),
};

#define N(a) (sizeof(a) / sizeof(a)[0])

const char *const gl__map_pack_files[GL__MAP_N_FILES] = {GL__MAP_TILES, GL__MAP_INDEX};

static bool gl__is_hex64(const char *s) {
  return s && strlen(s) == 64 && strspn(s, "0123456789abcdef") == 64;
}

static bool gl__int_in(const cJSON *j, double lo, double hi) {
  return cJSON_IsNumber(j) && j->valuedouble >= lo && j->valuedouble <= hi &&
         j->valuedouble == floor(j->valuedouble);
}

/* Binds the keys of obj named by rows into the struct at base. where names
 * the object in errors ("tiling.", "sources[2]."). */
static int gl__read_rows(const cJSON *obj, const struct gl__mrow *rows, size_t n, void *base,
                         const char *pack, const char *where, char *err, size_t errlen) {
  char *b = base;
  for (size_t i = 0; i < n; i++) {
    const struct gl__mrow *r = &rows[i];
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, r->key);
    if (!j || cJSON_IsNull(j)) {
      if (r->flags & GL__MF_REQ)
        return gl_fail(err, errlen, GL_EFORMAT, "%s: manifest.json: %s%s is missing", pack,
                       where, r->key);
      continue;
    }
    bool ok = true;
    void *f = b + r->off;
    switch (r->type) {
    case GL__MT_STR:
      ok = cJSON_IsString(j);
      if (ok)
        *(const char **)f = j->valuestring;
      break;
    case GL__MT_SHA:
      ok = cJSON_IsString(j) && gl__is_hex64(j->valuestring);
      if (ok)
        memcpy(f, j->valuestring, 65);
      break;
    case GL__MT_NAME:
      ok = cJSON_IsString(j) && strlen(j->valuestring) < r->n && !strchr(j->valuestring, '/');
      if (ok)
        strcpy(f, j->valuestring);
      break;
    case GL__MT_U32:
    case GL__MT_U64:
      ok = gl__int_in(j, r->lo, r->hi);
      if (ok && r->type == GL__MT_U32)
        *(uint32_t *)f = (uint32_t)j->valuedouble;
      else if (ok)
        *(uint64_t *)f = (uint64_t)j->valuedouble;
      break;
    case GL__MT_F64:
      ok = cJSON_IsNumber(j) && j->valuedouble >= r->lo && j->valuedouble <= r->hi;
      if (ok)
        *(double *)f = j->valuedouble;
      break;
    case GL__MT_BOOL:
      ok = cJSON_IsBool(j);
      if (ok)
        *(bool *)f = cJSON_IsTrue(j);
      break;
    case GL__MT_U32S:
    case GL__MT_F64S:
      ok = cJSON_IsArray(j) && cJSON_GetArraySize(j) == r->n;
      for (int k = 0; ok && k < r->n; k++) {
        const cJSON *e = cJSON_GetArrayItem(j, k);
        if (r->type == GL__MT_U32S) {
          ok = gl__int_in(e, r->lo, r->hi);
          if (ok)
            ((uint32_t *)f)[k] = (uint32_t)e->valuedouble;
        } else {
          ok = cJSON_IsNumber(e) && isfinite(e->valuedouble);
          if (ok)
            ((double *)f)[k] = e->valuedouble;
        }
      }
      break;
    }
    if (!ok && (r->type == GL__MT_U32 || r->type == GL__MT_U64 || r->type == GL__MT_F64))
      return gl_fail(err, errlen, GL_EFORMAT, "%s: manifest.json: %s%s must be %s from %.15g to "
                                              "%.15g",
                     pack, where, r->key, r->type == GL__MT_F64 ? "a number" : "an integer", r->lo,
                     r->hi);
    if (!ok)
      return gl_fail(err, errlen, GL_EFORMAT, "%s: manifest.json: %s%s is malformed", pack, where,
                     r->key);
    if (r->has)
      *(bool *)(b + r->has - 1) = true;
  }
  return 0;
}

/* Adds the fields of the struct at base named by rows to obj. Returns
 * false when out of memory. */
static bool gl__write_rows(cJSON *obj, const struct gl__mrow *rows, size_t n, const void *base) {
  const char *b = base;
  for (size_t i = 0; i < n; i++) {
    const struct gl__mrow *r = &rows[i];
    const void *f = b + r->off;
    if (r->has && !*(const bool *)(b + r->has - 1))
      continue;
    cJSON *j = NULL;
    switch (r->type) {
    case GL__MT_STR: {
      const char *s = *(const char *const *)f;
      if (!s && !(r->flags & GL__MF_NULL))
        continue;
      j = s ? cJSON_CreateString(s) : cJSON_CreateNull();
      break;
    }
    case GL__MT_SHA:
    case GL__MT_NAME:
      j = cJSON_CreateString(f);
      break;
    case GL__MT_U32:
    case GL__MT_U64:
    case GL__MT_F64: {
      double v = r->type == GL__MT_U32   ? *(const uint32_t *)f
                 : r->type == GL__MT_U64 ? (double)*(const uint64_t *)f
                                         : *(const double *)f;
      if (v == 0 && (r->flags & GL__MF_OMIT0))
        continue;
      j = cJSON_CreateNumber(v);
      break;
    }
    case GL__MT_BOOL:
      j = cJSON_CreateBool(*(const bool *)f);
      break;
    case GL__MT_U32S:
    case GL__MT_F64S:
      j = cJSON_CreateArray();
      for (int k = 0; j && k < r->n; k++) {
        double v = r->type == GL__MT_U32S ? ((const uint32_t *)f)[k] : ((const double *)f)[k];
        cJSON *e = cJSON_CreateNumber(v);
        if (!e || !cJSON_AddItemToArray(j, e)) {
          cJSON_Delete(e);
          cJSON_Delete(j);
          return false;
        }
      }
      break;
    }
    if (!j || !cJSON_AddItemToObject(obj, r->key, j)) {
      cJSON_Delete(j);
      return false;
    }
  }
  return true;
}

/* Reads the array at obj[key] of objects described by rows into a calloc'd
 * array of elements of size sz (*out, *count). */
static int gl__read_array(const cJSON *obj, const char *key, const struct gl__mrow *rows, size_t n,
                          size_t sz, void **out, uint32_t *count, const char *pack,
                          const char *where, char *err, size_t errlen) {
  const cJSON *a = cJSON_GetObjectItemCaseSensitive(obj, key), *e;
  if (!cJSON_IsArray(a))
    return gl_fail(err, errlen, GL_EFORMAT, "%s: manifest.json: %s%s is missing", pack, where,
                   key);
  int len = cJSON_GetArraySize(a);
  if (len > (int)GL__MAP_MAX_YEARS)
    return gl_fail(err, errlen, GL_EFORMAT, "%s: manifest.json: %s%s lists %d entries, at most %u",
                   pack, where, key, len, GL__MAP_MAX_YEARS);
  char *v = calloc(len ? (size_t)len : 1, sz);
  if (!v)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  *out = v;
  *count = (uint32_t)len;
  int i = 0, rc;
  cJSON_ArrayForEach(e, a) {
    char at[64];
    snprintf(at, sizeof at, "%s%s[%d].", where, key, i);
    if (!cJSON_IsObject(e))
      return gl_fail(err, errlen, GL_EFORMAT, "%s: manifest.json: %s is not an object", pack, at);
    if ((rc = gl__read_rows(e, rows, n, v + (size_t)i * sz, pack, at, err, errlen)))
      return rc;
    i++;
  }
  return 0;
}

static const cJSON *gl__object(const cJSON *root, const char *key) {
  const cJSON *o = cJSON_GetObjectItemCaseSensitive(root, key);
  return cJSON_IsObject(o) ? o : NULL;
}

int gl__manifest_read(const char *path, struct gl__manifest *m, char *err, size_t errlen) {
  memset(m, 0, sizeof *m);
  char *file = NULL, *text = NULL;
  size_t len = 0;
  int rc;
  struct stat st;
  if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
    return gl_fail(err, errlen, GL_ENOENT, "%s: no map pack there (not a directory)", path);
  if (asprintf(&file, "%s/" GL__MAP_MANIFEST, path) < 0)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  rc = gl__map_read_file(file, GL__MAP_MANIFEST_MAX, &text, &len);
  free(file);
  if (rc == GL_ENOENT)
    return gl_fail(err, errlen, rc, "%s: manifest.json is missing", path);
  if (rc == GL_ETOOBIG)
    return gl_fail(err, errlen, GL_EFORMAT, "%s: manifest.json is over %u bytes", path,
                   GL__MAP_MANIFEST_MAX);
  if (rc)
    return gl_fail(err, errlen, rc, "%s: cannot read manifest.json", path);
  m->root = cJSON_ParseWithLength(text, len);
  free(text);
#define BAD(...)                                                                                   \
  do {                                                                                             \
    rc = gl_fail(err, errlen, GL_EFORMAT, __VA_ARGS__);                                            \
    goto fail;                                                                                     \
  } while (0)
  if (!cJSON_IsObject(m->root))
    BAD("%s: manifest.json is not a JSON object", path);
  m->tiling.rotations = m->tiling.years = 1;
  const cJSON *t = gl__object(m->root, "tiling"), *c = gl__object(m->root, "counts");
  const cJSON *d = gl__object(m->root, "dense"), *files = gl__object(m->root, "files");
  /* The format's identity first (the first two rows): another file, or a
   * version this build does not read, says so rather than naming some
   * missing key. */
  if ((rc = gl__read_rows(m->root, gl__top, 1, m, path, "", err, errlen)))
    goto fail;
  if (strcmp(m->format, GL__MAP_FORMAT_NAME) != 0)
    BAD("%s: manifest.json: format is not \"" GL__MAP_FORMAT_NAME "\"", path);
  if ((rc = gl__read_rows(m->root, gl__top + 1, 1, m, path, "", err, errlen)))
    goto fail;
  if (m->format_version != GL_MAP_FORMAT_VERSION)
    BAD("%s: pack format version %u; this build reads version %d", path, m->format_version,
        GL_MAP_FORMAT_VERSION);
  if ((rc = gl__read_rows(m->root, gl__top + 2, N(gl__top) - 2, m, path, "", err, errlen)))
    goto fail;
  if (strcmp(m->metric, "inner_product") != 0)
    BAD("%s: manifest.json: metric is not \"inner_product\"", path);
  if (strlen(m->index_type) >= 512)
    BAD("%s: manifest.json: index_type is too long", path);
  if (!t || !c || !files)
    BAD("%s: manifest.json: %s is missing", path, !t ? "tiling" : !c ? "counts" : "files");
  if ((rc = gl__read_rows(t, gl__tiling, N(gl__tiling), &m->tiling, path, "tiling.", err,
                          errlen)) ||
      (rc = gl__read_rows(c, gl__counts, N(gl__counts), &m->counts, path, "counts.", err,
                          errlen)) ||
      (rc = gl__read_array(m->root, "sources", gl__source, N(gl__source), sizeof *m->sources,
                           (void **)&m->sources, &m->n_sources, path, "", err, errlen)))
    goto fail;
  if (m->tiling.rotations == 3)
    BAD("%s: manifest.json: tiling.rotations must be 1, 2 or 4", path);
  /* Packs written before years were recorded hold one source's descriptors
   * per tile (several sources gave separate tiles). Since, every source is a
   * year of every tile, in the order of the list. */
  if (cJSON_GetObjectItemCaseSensitive(t, "years") && m->tiling.years != m->n_sources)
    BAD("%s: manifest.json: tiling.years is %u but sources lists %u", path, m->tiling.years,
        m->n_sources);
  for (int i = 0; i < GL__MAP_N_FILES; i++) {
    char at[64];
    snprintf(at, sizeof at, "files.%s.", gl__map_pack_files[i]);
    const cJSON *f = gl__object(files, gl__map_pack_files[i]);
    if (!f)
      BAD("%s: manifest.json: files.%s is missing", path, gl__map_pack_files[i]);
    if ((rc = gl__read_rows(f, gl__file, N(gl__file), &m->files[i], path, at, err, errlen)))
      goto fail;
  }
  if (cJSON_GetArraySize(files) != GL__MAP_N_FILES)
    BAD("%s: manifest.json: files lists %d entries; format %d has exactly %s and %s", path,
        cJSON_GetArraySize(files), GL_MAP_FORMAT_VERSION, GL__MAP_TILES, GL__MAP_INDEX);
  if (d) {
    struct gl__manifest_dense *dn = &m->dense;
    m->has_dense = true;
    if ((rc = gl__read_rows(d, gl__dense, N(gl__dense), dn, path, "dense.", err, errlen)) ||
        (rc = gl__read_array(d, "layers", gl__layer, N(gl__layer), sizeof *dn->layers,
                             (void **)&dn->layers, &dn->n_layers, path, "dense.", err, errlen)))
      goto fail;
    if (dn->n_layers < 1)
      BAD("%s: manifest.json: dense.layers is empty", path);
    if (fabs(dn->geotransform[1] - dn->cell_m) > 1e-9 * dn->cell_m ||
        fabs(dn->geotransform[5] + dn->cell_m) > 1e-9 * dn->cell_m)
      BAD("%s: manifest.json: dense geotransform does not match cell_m", path);
  }
#undef BAD
  return 0;
fail:
  gl__manifest_free(m);
  return rc;
}

void gl__manifest_free(struct gl__manifest *m) {
  cJSON_Delete(m->root);
  free(m->sources);
  free(m->dense.layers);
  memset(m, 0, sizeof *m);
}

/* Adds an array of objects (count elements of size sz at v) as obj[key]. */
static bool gl__write_array(cJSON *obj, const char *key, const struct gl__mrow *rows, size_t n,
                            const void *v, size_t sz, uint32_t count) {
  cJSON *a = cJSON_AddArrayToObject(obj, key);
  for (uint32_t i = 0; a && i < count; i++) {
    cJSON *e = cJSON_CreateObject();
    if (!e || !cJSON_AddItemToArray(a, e) ||
        !gl__write_rows(e, rows, n, (const char *)v + (size_t)i * sz))
      return false;
  }
  return a != NULL;
}

int gl__manifest_write(const char *path, const struct gl__manifest *m, char *err, size_t errlen) {
  cJSON *root = cJSON_CreateObject(), *o;
  bool ok = root && gl__write_rows(root, gl__top, N(gl__top), m) &&
            (o = cJSON_AddObjectToObject(root, "tiling")) &&
            gl__write_rows(o, gl__tiling, N(gl__tiling), &m->tiling) &&
            gl__write_array(root, "sources", gl__source, N(gl__source), m->sources,
                            sizeof *m->sources, m->n_sources) &&
            (o = cJSON_AddObjectToObject(root, "counts")) &&
            gl__write_rows(o, gl__counts, N(gl__counts), &m->counts);
  if (ok && m->has_dense)
    ok = (o = cJSON_AddObjectToObject(root, "dense")) &&
         gl__write_rows(o, gl__dense, N(gl__dense), &m->dense) &&
         gl__write_array(o, "layers", gl__layer, N(gl__layer), m->dense.layers,
                         sizeof *m->dense.layers, m->dense.n_layers);
  cJSON *files = ok ? cJSON_AddObjectToObject(root, "files") : NULL;
  ok = files != NULL;
  for (int i = 0; ok && i < GL__MAP_N_FILES; i++)
    ok = (o = cJSON_AddObjectToObject(files, gl__map_pack_files[i])) &&
         gl__write_rows(o, gl__file, N(gl__file), &m->files[i]);
  char *text = ok ? cJSON_Print(root) : NULL;
  cJSON_Delete(root);
  if (!text)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory writing the manifest");
  size_t len = strlen(text);
  text[len] = '\n'; /* cJSON's terminator becomes the final newline */
  int rc = gl__map_write_file(path, text, len + 1);
  cJSON_free(text);
  if (rc)
    return gl_fail(err, errlen, rc, "%s: cannot write it", path);
  return 0;
}
