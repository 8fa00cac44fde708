/* libFuzzer target: the map pack opener. The input is a pack's
 * manifest.json; the other files are those of a small real pack (the
 * fixture tests/fuzz/pack/, written by make_pack_fixture: two years, a
 * Flat index, a dense layer), copied once into a scratch directory beside
 * which each input is written as the manifest. The seed
 * corpus/pack/valid is that pack's own manifest, so mutations start from a
 * pack that opens: counts, tiling, years, sources and the dense layer can
 * disagree with the files in every way, while the checksums still match.
 *
 * Each input goes through gl_map_inspect (`geoloc inspect`: the manifest
 * read, printed, then gl_map_open) and, when that verifies, gl_map_open
 * again with the pack then used as the daemon uses it: tiles, a search with
 * and without a prior, the dense layer's lookups. Errors must be the
 * documented codes; a pack that opens must answer consistently. */
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "map/dense.h"
#include "map/map.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define REQUIRE(cond)                                                                              \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #cond);                                   \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

static char dir[256], manifest[300];
static FILE *devnull;

static void copy_file(const char *from, const char *to) {
  FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
  if (!a || !b) {
    fprintf(stderr, "fuzz_pack: cannot copy %s to %s\n", from, to);
    abort();
  }
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, a)) > 0)
    REQUIRE(fwrite(buf, 1, n, b) == n);
  fclose(a);
  REQUIRE(fclose(b) == 0);
}

static void write_manifest(const uint8_t *data, size_t size) {
  int fd = open(manifest, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  REQUIRE(fd >= 0);
  REQUIRE(write(fd, data, size) == (ssize_t)size);
  REQUIRE(close(fd) == 0);
}

static void rmdir_fixture(void) {
  static const char *const files[] = {"manifest.json", "tiles.sqlite", "index.faiss", "dense-0.i8",
                                      "dense-1.i8"};
  char p[400];
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, files[i]);
    unlink(p);
  }
  rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  const char *tmp = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%s/fuzz_pack-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  REQUIRE(mkdtemp(dir));
  snprintf(manifest, sizeof manifest, "%s/manifest.json", dir);
  static const char *const files[] = {"tiles.sqlite", "index.faiss", "dense-0.i8", "dense-1.i8"};
  char a[600], b[400];
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    snprintf(a, sizeof a, "%s/%s", GL_FUZZ_PACK_FIXTURE, files[i]);
    snprintf(b, sizeof b, "%s/%s", dir, files[i]);
    copy_file(a, b);
  }
  atexit(rmdir_fixture);
  REQUIRE((devnull = fopen("/dev/null", "w")));

  /* The seed must still open: otherwise the fixture is stale (the pack
   * format changed) and the fuzzer would never get past the checksums. */
  copy_file(GL_FUZZ_PACK_SEED, manifest);
  struct gl_map *m = NULL;
  char err[512];
  if (gl_map_open(dir, NULL, &m, err, sizeof err) != 0) {
    fprintf(stderr,
            "fuzz_pack: the fixture pack does not open with its seed manifest (%s): "
            "regenerate both (tests/fuzz/make_pack_fixture.c)\n",
            err);
    abort();
  }
  gl_map_close(m);
  return 0;
}

/* Uses an opened pack as the daemon would. */
static void exercise(struct gl_map *m) {
  uint64_t n = gl_map_tile_count(m);
  uint32_t dim = gl_map_descriptor_dim(m);
  REQUIRE(dim >= 1 && gl_map_rotations(m) >= 1 && gl_map_years(m) >= 1);
  REQUIRE(strlen(gl_map_model_sha256(m)) == 64);

  struct gl_map_tile t;
  REQUIRE(gl_map_tile_get(m, 0, &t) == GL_EINVAL);
  REQUIRE(gl_map_tile_get(m, (int64_t)n + 1, &t) == GL_EINVAL);
  for (uint64_t id = 1; id <= n && id <= 16; id++) {
    int rc = gl_map_tile_get(m, (int64_t)id, &t);
    REQUIRE(rc == 0 || rc == GL_EIO);
    if (rc == 0)
      REQUIRE(t.id == (int64_t)id && memchr(t.source, 0, sizeof t.source) &&
              memchr(t.capture_date, 0, sizeof t.capture_date));
  }

  float *q = calloc(dim, sizeof *q);
  REQUIRE(q);
  q[0] = 1;
  enum { K = 3 };
  struct gl_map_hit hits[K];
  uint32_t count = 0;
  char err[512];
  int rc = gl_map_search(m, q, 1, K, NULL, hits, &count, err, sizeof err);
  REQUIRE(rc == 0);
  REQUIRE(count <= K && count <= n);
  for (uint32_t i = 0; i < count; i++)
    REQUIRE(hits[i].tile_id >= 1 && (uint64_t)hits[i].tile_id <= n);
  if (n > 0) {
    struct gl_map_prior p = {hits[0].lat, hits[0].lon, 5000};
    if (count == 0)
      gl_map_tile_get(m, 1, &t), p.lat = t.lat, p.lon = t.lon;
    rc = gl_map_search(m, q, 1, K, &p, hits, &count, err, sizeof err);
    REQUIRE(rc == 0 || rc == GL_ENOTSUP);
    for (uint32_t i = 0; rc == 0 && i < count; i++)
      REQUIRE(hits[i].tile_id >= 1 && (uint64_t)hits[i].tile_id <= n);
  }
  free(q);

  const struct gl_map_dense *d = gl_map_dense(m);
  if (d) {
    REQUIRE(d->rows >= 1 && d->cols >= 1 && d->channels >= 1 && d->years >= 1 && d->cells);
    volatile float sink = d->cells[0];
    sink = d->cells[(size_t)d->years * d->rows * d->cols * d->channels - 1];
    (void)sink;
    for (uint64_t id = 1; id <= n && id <= 16; id++) {
      double x, y, lat, lon;
      REQUIRE(gl_map_tile_xy(m, (int64_t)id, &x, &y) == 0);
      int64_t near = gl_map_tile_near(m, x, y);
      REQUIRE(near >= 1 && (uint64_t)near <= n);
      rc = gl_map_xy_to_wgs84(m, x, y, &lat, &lon);
      if (rc == 0)
        gl_map_wgs84_to_xy(m, lat, lon, &x, &y);
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  write_manifest(data, size);
  REQUIRE(gl_map_is_pack(dir));

  char err[512];
  err[0] = 0;
  int rc = gl_map_inspect(dir, devnull, err, sizeof err);
  if (rc != 0) {
    REQUIRE(rc == GL_EFORMAT || rc == GL_ENOENT || rc == GL_EIO);
    REQUIRE(err[0] != 0);
    return 0;
  }
  struct gl_map *m = NULL;
  REQUIRE(gl_map_open(dir, NULL, &m, err, sizeof err) == 0);
  exercise(m);
  /* Bound to another model: refused before anything else is read. */
  struct gl_map *other = NULL;
  char sha[65];
  snprintf(sha, sizeof sha, "%s", gl_map_model_sha256(m));
  sha[0] = sha[0] == '0' ? '1' : '0';
  REQUIRE(gl_map_open(dir, sha, &other, err, sizeof err) == GL_EINVAL && !other);
  gl_map_close(m);
  return 0;
}
