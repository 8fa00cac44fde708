/* manifest.json through its one reader and writer (src/map/manifest.c):
 *   - a manifest with every field set survives a write and a read field by
 *     field (every row of the key tables binds to its own field);
 *   - optional keys left out on writing (no bbox, no IVF nprobe, no dense
 *     layer, a null capture date) read back as absent;
 *   - each required key, removed from a written manifest, is named in the
 *     error; a number out of its bounds names the key and the bounds. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "map/map.h"
#include "map_test_util.h"
#include "test.h"

static char *g_dir;

static void fill(struct gl__manifest *m, struct gl__manifest_source src[2],
                 struct gl__manifest_layer layers[2]) {
  memset(m, 0, sizeof *m);
  m->format = "geoloc-map";
  m->format_version = GL_MAP_FORMAT_VERSION;
  m->generator = "geoloc test";
  m->created = "2026-01-02T03:04:05Z";
  memset(m->model_sha256, 'a', 64);
  m->descriptor_dim = 512;
  m->metric = "inner_product";
  m->index_type = "IVF16,Flat";
  m->index_nprobe = 8;
  m->tiling = (struct gl__manifest_tiling){
      .crs = "EPSG:26914",
      .crs_wkt = "PROJCRS[\"x\"]",
      .tile_m = 320,
      .stride_m = 80,
      .m_per_px = 5,
      .tile_px = {64, 64},
      .resampling = "bilinear",
      .rotations = 4,
      .years = 2,
      .has_bbox = true,
      .bbox = {-99.2, 47.0, -99.1, 47.1},
  };
  for (int i = 0; i < 2; i++) {
    src[i] = (struct gl__manifest_source){.file = i ? "b.tif" : "a.tif",
                                          .path = i ? "/data/b.tif" : "/data/a.tif",
                                          .crs = "EPSG:26914",
                                          .capture_date = i ? NULL : "2020-08-31",
                                          .bytes = 1000u + i,
                                          .places = 90u + i,
                                          .skipped = 3u + i,
                                          .warped = i == 1};
    memset(src[i].sha256, i ? 'b' : 'c', 64);
    layers[i] = (struct gl__manifest_layer){.source = (uint32_t)i, .bytes = 4096, .valid_cells = 60};
    snprintf(layers[i].file, sizeof layers[i].file, "dense-%d.i8", i);
    memset(layers[i].sha256, 'd' + i, 64);
  }
  m->n_sources = 2;
  m->sources = src;
  m->counts = (struct gl__manifest_counts){.tiles = 91, .sources = 2, .skipped = 7};
  m->has_dense = true;
  m->dense = (struct gl__manifest_dense){.layer = 6,
                                         .stride_px = 8,
                                         .channels = 64,
                                         .input_px = 64,
                                         .m_per_px = 5,
                                         .cell_m = 40,
                                         .rows = 8,
                                         .cols = 8,
                                         .geotransform = {480000, 40, 0, 5210000, 0, -40},
                                         .encoding = "int8",
                                         .block_px = 512,
                                         .margin_px = 64,
                                         .n_layers = 2,
                                         .layers = layers};
  for (int i = 0; i < GL__MAP_N_FILES; i++) {
    memset(m->files[i].sha256, 'e' + i, 64);
    m->files[i].bytes = 100u + (uint64_t)i;
  }
}

static int write_to(const char *name, const struct gl__manifest *m, char **pack) {
  char err[256];
  *pack = mt_join(g_dir, name);
  mkdir(*pack, 0755);
  char *f = mt_join(*pack, "manifest.json");
  int rc = gl__manifest_write(f, m, err, sizeof err);
  free(f);
  return rc;
}

static void test_round_trip(void) {
  struct gl__manifest w, r;
  struct gl__manifest_source src[2];
  struct gl__manifest_layer layers[2];
  fill(&w, src, layers);
  char *pack, err[256];
  CHECK_EQ_INT(write_to("full.map", &w, &pack), 0);
  if (!CHECK_EQ_INT(gl__manifest_read(pack, &r, err, sizeof err), 0)) {
    fprintf(stderr, "  %s\n", err);
    free(pack);
    return;
  }
  CHECK_EQ_STR(r.generator, w.generator);
  CHECK_EQ_STR(r.created, w.created);
  CHECK_EQ_STR(r.model_sha256, w.model_sha256);
  CHECK_EQ_INT(r.descriptor_dim, 512);
  CHECK_EQ_STR(r.index_type, w.index_type);
  CHECK_EQ_U64(r.index_nprobe, 8);
  CHECK_EQ_STR(r.tiling.crs, w.tiling.crs);
  CHECK_EQ_STR(r.tiling.crs_wkt, w.tiling.crs_wkt);
  CHECK(r.tiling.tile_m == 320 && r.tiling.stride_m == 80 && r.tiling.m_per_px == 5);
  CHECK(r.tiling.tile_px[0] == 64 && r.tiling.tile_px[1] == 64);
  CHECK_EQ_STR(r.tiling.resampling, "bilinear");
  CHECK_EQ_INT(r.tiling.rotations, 4);
  CHECK_EQ_INT(r.tiling.years, 2);
  CHECK(r.tiling.has_bbox && memcmp(r.tiling.bbox, w.tiling.bbox, sizeof r.tiling.bbox) == 0);
  if (CHECK_EQ_INT(r.n_sources, 2))
    for (int i = 0; i < 2; i++) {
      CHECK_EQ_STR(r.sources[i].file, src[i].file);
      CHECK_EQ_STR(r.sources[i].path, src[i].path);
      CHECK_EQ_STR(r.sources[i].sha256, src[i].sha256);
      CHECK_EQ_STR(r.sources[i].crs, src[i].crs);
      CHECK(i ? r.sources[i].capture_date == NULL
              : strcmp(r.sources[i].capture_date, "2020-08-31") == 0);
      CHECK_EQ_U64(r.sources[i].bytes, src[i].bytes);
      CHECK_EQ_U64(r.sources[i].places, src[i].places);
      CHECK_EQ_U64(r.sources[i].skipped, src[i].skipped);
      CHECK_EQ_INT(r.sources[i].warped, src[i].warped);
    }
  CHECK(r.counts.tiles == 91 && r.counts.sources == 2 && r.counts.skipped == 7);
  CHECK(r.has_dense);
  CHECK(r.dense.layer == 6 && r.dense.stride_px == 8 && r.dense.channels == 64 &&
        r.dense.input_px == 64 && r.dense.rows == 8 && r.dense.cols == 8);
  CHECK(r.dense.m_per_px == 5 && r.dense.cell_m == 40 && r.dense.block_px == 512 &&
        r.dense.margin_px == 64);
  CHECK(memcmp(r.dense.geotransform, w.dense.geotransform, sizeof r.dense.geotransform) == 0);
  CHECK_EQ_STR(r.dense.encoding, "int8");
  if (CHECK_EQ_INT(r.dense.n_layers, 2))
    for (int i = 0; i < 2; i++) {
      CHECK_EQ_INT(r.dense.layers[i].source, i);
      CHECK_EQ_STR(r.dense.layers[i].file, layers[i].file);
      CHECK_EQ_STR(r.dense.layers[i].sha256, layers[i].sha256);
      CHECK_EQ_U64(r.dense.layers[i].bytes, 4096);
      CHECK_EQ_U64(r.dense.layers[i].valid_cells, 60);
    }
  for (int i = 0; i < GL__MAP_N_FILES; i++) {
    CHECK_EQ_STR(r.files[i].sha256, w.files[i].sha256);
    CHECK_EQ_U64(r.files[i].bytes, w.files[i].bytes);
  }
  gl__manifest_free(&r);
  free(pack);

  /* Optional parts left out. */
  w.tiling.has_bbox = false;
  w.index_nprobe = 0;
  w.has_dense = false;
  CHECK_EQ_INT(write_to("lean.map", &w, &pack), 0);
  if (CHECK_EQ_INT(gl__manifest_read(pack, &r, err, sizeof err), 0)) {
    CHECK(!r.tiling.has_bbox);
    CHECK_EQ_U64(r.index_nprobe, 0);
    CHECK(!r.has_dense && r.dense.n_layers == 0);
    gl__manifest_free(&r);
  }
  free(pack);
}

/* Rewrites pack's manifest with edit applied to its JSON. */
static void edit(const char *pack, void (*fn)(cJSON *root, const void *arg), const void *arg) {
  char *f = mt_join(pack, "manifest.json"), *text = NULL;
  size_t len;
  if (gl__map_read_file(f, 1 << 20, &text, &len) == 0) {
    cJSON *root = cJSON_Parse(text);
    fn(root, arg);
    char *out = cJSON_Print(root);
    gl__map_write_file(f, out, strlen(out));
    cJSON_free(out);
    cJSON_Delete(root);
  }
  free(text);
  free(f);
}

/* path: "key", "obj.key", "arr[1].key", "obj.arr[1].key": the object that
 * holds the last key, which goes to *key. */
static cJSON *parent_of(cJSON *root, const char *path, const char **key) {
  char buf[128];
  snprintf(buf, sizeof buf, "%s", path);
  const char *dot = strrchr(path, '.');
  *key = dot ? dot + 1 : path;
  cJSON *o = root;
  char *save = NULL;
  buf[dot ? dot - path : 0] = 0;
  for (char *seg = strtok_r(buf, ".", &save); seg && o; seg = strtok_r(NULL, ".", &save)) {
    char *br = strchr(seg, '[');
    if (br)
      *br = 0;
    o = cJSON_GetObjectItemCaseSensitive(o, seg);
    if (br)
      o = cJSON_GetArrayItem(o, atoi(br + 1));
  }
  return o;
}

static void del_key(cJSON *root, const void *arg) {
  const char *key;
  cJSON *p = parent_of(root, arg, &key);
  cJSON_DeleteItemFromObjectCaseSensitive(p, key);
}

static void del_index_file(cJSON *root, const void *arg) {
  cJSON_DeleteItemFromObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "files"),
                                          "index.faiss");
}

static void set_huge(cJSON *root, const void *arg) {
  const char *key;
  cJSON *p = parent_of(root, arg, &key);
  cJSON_ReplaceItemInObjectCaseSensitive(p, key, cJSON_CreateNumber(1e12));
}

static void test_required(void) {
  static const char *const required[] = {
      "model_sha256",        "descriptor_dim",      "metric",           "index_type",
      "tiling.tile_m",       "tiling.stride_m",     "tiling.tile_px",   "tiling.m_per_px",
      "counts.tiles",        "sources[1].file",     "sources[0].sha256", "dense.layer",
      "dense.rows",          "dense.geotransform",  "dense.layers[1].sha256",
  };
  struct gl__manifest w, r;
  struct gl__manifest_source src[2];
  struct gl__manifest_layer layers[2];
  fill(&w, src, layers);
  char err[256];
  for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
    char *pack, name[64];
    snprintf(name, sizeof name, "req%zu.map", i);
    CHECK_EQ_INT(write_to(name, &w, &pack), 0);
    edit(pack, del_key, required[i]);
    CHECK_EQ_INT(gl__manifest_read(pack, &r, err, sizeof err), GL_EFORMAT);
    const char *dot = strrchr(required[i], '.');
    CHECK_CONTAINS(err, dot ? dot + 1 : required[i]);
    free(pack);
  }
  char *pack;
  /* A file entry: its name has a dot of its own. */
  CHECK_EQ_INT(write_to("nofile.map", &w, &pack), 0);
  edit(pack, del_index_file, NULL);
  CHECK_EQ_INT(gl__manifest_read(pack, &r, err, sizeof err), GL_EFORMAT);
  CHECK_CONTAINS(err, "files.index.faiss is missing");
  free(pack);
  CHECK_EQ_INT(write_to("range.map", &w, &pack), 0);
  edit(pack, set_huge, "dense.channels");
  CHECK_EQ_INT(gl__manifest_read(pack, &r, err, sizeof err), GL_EFORMAT);
  CHECK_CONTAINS(err, "dense.channels must be an integer from 1 to 4096");
  free(pack);
}

int main(void) {
  g_dir = mt_tmpdir("manifest");
  if (!g_dir)
    return 1;
  RUN(test_round_trip);
  RUN(test_required);
  gl__map_rmtree(g_dir);
  free(g_dir);
  return TEST_END();
}
