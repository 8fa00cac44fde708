/* Map packs built with the real engine and a small random model, and the
 * geoloc CLI.
 *
 * The model comes from the Python exporter at test time (a 64x64-input
 * MobileNetV2 at width 0.35 with 64-d descriptors, so that encoding a few
 * hundred tiles takes seconds); without torch under /usr/bin/python3 the
 * test is skipped (77). Checks:
 *   - the encoder takes its tile size, descriptor size and sha256 from the
 *     model; the pack records them; opening with another model is refused;
 *   - tiles re-read here with GDAL from their grid coordinates and encoded
 *     one by one find themselves first (so descriptors and tile rows were
 *     not mixed up by batching);
 *   - `geoloc map build` killed with SIGKILL mid-way leaves no pack, the
 *     next run cleans up and succeeds; `geoloc map inspect` verifies it.
 *
 * Arguments: NAIP_DIR GEOLOC_EXE PYTHON_DIR. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cpl_error.h>
#include <gdal.h>
#include <sqlite3.h>

#include "core/err.h"
#include "map/map.h"
#include "map/map_internal.h"
#include "map_test_util.h"
#include "test.h"

extern char **environ;

static const char *naip_dir, *geoloc_exe, *python_dir;
static char *tmp, *naip2020, *naip2009, *model1, *model2;

/* Runs argv with stdout/stderr to out_path (NULL: inherited) and extra
 * environment entry env1 (NULL: none); returns the exit status or -1. */
static int run_cmd(char *const argv[], const char *env1, const char *out_path) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (out_path) {
    posix_spawn_file_actions_addopen(&fa, 1, out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
  }
  size_t n = 0;
  while (environ[n])
    n++;
  char **env = calloc(n + 2, sizeof *env);
  memcpy(env, environ, n * sizeof *env);
  if (env1)
    env[n] = (char *)env1;
  pid_t pid;
  int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, env);
  posix_spawn_file_actions_destroy(&fa);
  free(env);
  if (rc != 0)
    return -1;
  int status;
  if (waitpid(pid, &status, 0) != pid)
    return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static bool have_torch(void) {
  char *argv[] = {"/usr/bin/python3", "-c", "import torch", NULL};
  char *sink = mt_join(tmp, "torch-probe.txt");
  bool ok = access(argv[0], X_OK) == 0 && run_cmd(argv, NULL, sink) == 0;
  free(sink);
  return ok;
}

static char *export_model(int seed) {
  char name[32], seed_s[16];
  snprintf(name, sizeof name, "m%d.safetensors", seed);
  snprintf(seed_s, sizeof seed_s, "%d", seed);
  char *cfg = mt_join(tmp, "cfg.json"), *out = mt_join(tmp, name), *log = mt_join(tmp, "py.log");
  const char *json = "{\"input_size\": [64, 64], \"width_mult\": 0.35, \"osm_dim\": 64, "
                     "\"osm_groups\": 4, \"descriptor_dim\": 64}";
  CHECK_EQ_INT(gl__map_write_file(cfg, json, strlen(json)), 0);
  char *pp = NULL;
  CHECK(asprintf(&pp, "PYTHONPATH=%s", python_dir) > 0);
  char *argv[] = {"/usr/bin/python3", "-m",   "geoloc_train", "export-random", "--config", cfg,
                  "--seed",           seed_s, "--out",        out,             NULL};
  int rc = run_cmd(argv, pp, log);
  if (!CHECK_EQ_INT(rc, 0)) {
    char *text = NULL;
    size_t len;
    if (gl__map_read_file(log, 1 << 20, &text, &len) == 0)
      fprintf(stderr, "%s\n", text);
    free(text);
  }
  free(pp);
  free(log);
  free(cfg);
  return out;
}

/* Reads the 320 m tile centred at (gx, gy) (EPSG:26914) from path with
 * GDAL: bilinear, floating-point window, 64 x 64 pixels. */
static int read_tile(const char *path, double gx, double gy, uint8_t *rgb) {
  GDALDatasetH ds = GDALOpen(path, GA_ReadOnly);
  if (!ds)
    return -1;
  double gt[6];
  GDALGetGeoTransform(ds, gt);
  GDALRasterIOExtraArg ex;
  INIT_RASTERIO_EXTRA_ARG(ex);
  ex.eResampleAlg = GRIORA_Bilinear;
  ex.bFloatingPointWindowValidity = TRUE;
  ex.dfXOff = (gx - 160 - gt[0]) / gt[1];
  ex.dfYOff = (gy + 160 - gt[3]) / gt[5];
  ex.dfXSize = 320 / gt[1];
  ex.dfYSize = 320 / -gt[5];
  int x0 = (int)floor(ex.dfXOff), y0 = (int)floor(ex.dfYOff);
  int x1 = (int)ceil(ex.dfXOff + ex.dfXSize), y1 = (int)ceil(ex.dfYOff + ex.dfYSize);
  int bands[3] = {1, 2, 3};
  CPLErr e = GDALDatasetRasterIOEx(ds, GF_Read, x0, y0, x1 - x0, y1 - y0, rgb, 64, 64, GDT_Byte, 3,
                                   bands, 3, 64 * 3, 1, &ex);
  GDALClose(ds);
  return e == CE_None ? 0 : -1;
}

static void test_library_build(void) {
  char err[1024] = "";
  struct gl_map_encoder enc;
  int rc = gl_map_encoder_init_model(&enc, model1, 0, 8, err, sizeof err);
  if (!CHECK_EQ_INT(rc, 0)) {
    fprintf(stderr, "  %s\n", err);
    return;
  }
  CHECK_EQ_INT(enc.width, 64);
  CHECK_EQ_INT(enc.height, 64);
  CHECK_EQ_INT(enc.dim, 64);
  char sha[65];
  CHECK_EQ_INT(gl__map_sha256_file(model1, sha, NULL), 0);
  CHECK_EQ_STR(enc.model_sha256, sha);

  char *out = mt_join(tmp, "lib.map");
  const char *orthos[] = {naip2020};
  struct gl_map_build_opts o = {.orthos = orthos, .n_orthos = 1, .tile_m = 320, .stride_m = 320,
                                .out = out};
  struct gl_map_build_stats st;
  rc = gl_map_build(&o, &enc, &st, err, sizeof err);
  if (!CHECK_EQ_INT(rc, 0)) {
    fprintf(stderr, "  %s\n", err);
    goto done;
  }
  CHECK_EQ_U64(st.tiles, 14 * 10); /* 320 m corners inside 485899..490569 x 5205631..5209246 */

  struct gl_map *m = NULL;
  CHECK_EQ_INT(gl_map_open(out, enc.model_sha256, &m, err, sizeof err), 0);
  if (!m)
    goto done;
  CHECK_EQ_INT(gl_map_descriptor_dim(m), 64);
  /* Every fifth tile, re-read and encoded alone, finds itself first. */
  char *dbp = mt_join(out, "tiles.sqlite");
  sqlite3 *db = NULL;
  sqlite3_stmt *q = NULL;
  CHECK_EQ_INT(sqlite3_open_v2(dbp, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
  CHECK_EQ_INT(sqlite3_prepare_v2(db, "SELECT id, grid_x, grid_y FROM tiles ORDER BY id", -1, &q,
                                  NULL),
               SQLITE_OK);
  uint8_t rgb[64 * 64 * 3];
  float d[64];
  int tried = 0, first = 0;
  double worst_self = 1, best_other = -1;
  while (sqlite3_step(q) == SQLITE_ROW) {
    int64_t id = sqlite3_column_int64(q, 0);
    if ((id - 1) % 5)
      continue;
    if (read_tile(naip2020, sqlite3_column_double(q, 1), sqlite3_column_double(q, 2), rgb) != 0)
      continue;
    struct gl_image im = {rgb, 64, 64};
    if (enc.encode(enc.ctx, &im, 1, d) != 0)
      continue;
    struct gl_map_hit h[2];
    uint32_t c = 0;
    if (gl_map_search(m, d, 1, 2, NULL, h, &c, err, sizeof err) != 0 || c != 2)
      continue;
    tried++;
    if (h[0].tile_id == id)
      first++;
    worst_self = fmin(worst_self, h[0].tile_id == id ? h[0].score : -1);
    best_other = fmax(best_other, h[1].score);
  }
  CHECK_EQ_INT(tried, (int)(st.tiles + 4) / 5);
  CHECK_EQ_INT(first, tried);
  CHECK(worst_self > 0.9999);
  fprintf(stderr, "  own tile first %d/%d, self score >= %.6f, best other %.6f\n", first, tried,
          worst_self, best_other);
  sqlite3_finalize(q);
  sqlite3_close(db);
  free(dbp);
  gl_map_close(m);

  /* A pack made with one model is refused for another. */
  struct gl_map_encoder enc2;
  if (CHECK_EQ_INT(gl_map_encoder_init_model(&enc2, model2, 1, 1, err, sizeof err), 0)) {
    CHECK(strcmp(enc2.model_sha256, enc.model_sha256) != 0);
    CHECK_EQ_INT(gl_map_open(out, enc2.model_sha256, &m, err, sizeof err), GL_EINVAL);
    CHECK_CONTAINS(err, enc.model_sha256);
    CHECK_CONTAINS(err, enc2.model_sha256);
    gl_map_encoder_fini(&enc2);
  }
done:
  free(out);
  gl_map_encoder_fini(&enc);
}

/* Starts `geoloc map build` on 4510 tiles and kills it with SIGKILL once it
 * is under way: its temporary directory and lock exist, and it has been
 * encoding for a moment (4510 tiles take seconds, so it is still far from
 * the rename). Waiting for a progress line instead would depend on the
 * machine's speed, since plain progress lines come every 2 s. */
static void test_cli_killed(void) {
  char *dir = mt_join(tmp, "cli");
  CHECK_EQ_INT(mkdir(dir, 0755), 0);
  char *out = mt_join(dir, "area.map");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  char *argv[] = {(char *)geoloc_exe, "map",       "build",      "--model",  model1,
                  "--ortho",          naip2020,    "--ortho",    naip2009,   "--tile-m",
                  "320",              "--stride-m", "80",         "--batch",  "4",
                  "--out",            out,         NULL};
  pid_t pid;
  CHECK_EQ_INT(posix_spawn(&pid, geoloc_exe, &fa, NULL, argv, environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  bool started = false;
  for (int i = 0; i < 30000 && !started; i++) {
    started = mt_count_entries(dir, ".area.map.tmp-") == 2;
    if (!started)
      usleep(1000);
  }
  CHECK(started);
  usleep(300000);
  CHECK_EQ_INT(kill(pid, SIGKILL), 0);
  int status = 0;
  CHECK_EQ_INT(waitpid(pid, &status, 0), pid);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  CHECK(!mt_exists(out));
  CHECK_EQ_INT(mt_count_entries(dir, ".area.map.tmp-"), 2);

  /* The next run cleans that up and writes the pack. */
  char *log = mt_join(tmp, "cli.log");
  char *argv2[] = {(char *)geoloc_exe, "map",   "build",      "--model", model1,   "--ortho",
                   naip2020,           "--out", out,          "--tile-m", "320",   "--stride-m",
                   "320",              "--index", "HNSW32",   NULL};
  CHECK_EQ_INT(run_cmd(argv2, NULL, log), 0);
  char *text = NULL;
  size_t len;
  CHECK_EQ_INT(gl__map_read_file(log, 1 << 20, &text, &len), 0);
  CHECK_CONTAINS(text, "wrote");
  CHECK_CONTAINS(text, "140 tiles");
  free(text);
  text = NULL;
  CHECK(mt_exists(out));
  CHECK_EQ_INT(mt_count_entries(dir, ""), 1);

  char *argv3[] = {(char *)geoloc_exe, "map", "inspect", out, NULL};
  CHECK_EQ_INT(run_cmd(argv3, NULL, log), 0);
  CHECK_EQ_INT(gl__map_read_file(log, 1 << 20, &text, &len), 0);
  CHECK_CONTAINS(text, "verify      ok");
  CHECK_CONTAINS(text, "HNSW32");
  CHECK_CONTAINS(text, "2020-08-31");
  free(text);
  /* Usage errors exit 2. */
  char *argv4[] = {(char *)geoloc_exe, "map", "build", "--out", out, NULL};
  CHECK_EQ_INT(run_cmd(argv4, NULL, log), 2);
  free(log);
  free(out);
  free(dir);
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: test_map_model NAIP_DIR GEOLOC_EXE PYTHON_DIR\n");
    return 1;
  }
  naip_dir = argv[1];
  geoloc_exe = argv[2];
  python_dir = argv[3];
  tmp = mt_tmpdir("map-model");
  if (!tmp)
    return 1;
  if (!have_torch()) {
    fprintf(stderr, "skipped: /usr/bin/python3 cannot import torch (needed to make a model)\n");
    gl__map_rmtree(tmp);
    free(tmp);
    return 77;
  }
  naip2020 = mt_join(naip_dir, "m_4709963_se_14_1_20200831.tif");
  naip2009 = mt_join(naip_dir, "m_4709963_se_14_1_20090818.tif");
  gl__map_gdal_init();
  CPLPushErrorHandler(CPLQuietErrorHandler);
  model1 = export_model(1);
  model2 = export_model(2);
  if (mt_exists(model1) && mt_exists(model2)) {
    /* The CLI test spawns processes; it runs before this process starts
     * the engine's OpenMP threads (posix_spawn is safe either way). */
    RUN(test_cli_killed);
    RUN(test_library_build);
  }
  CPLPopErrorHandler();
  if (!gl_test_failures)
    gl__map_rmtree(tmp);
  else
    fprintf(stderr, "left %s for inspection\n", tmp);
  free(model1);
  free(model2);
  free(naip2020);
  free(naip2009);
  free(tmp);
  return TEST_END();
}
