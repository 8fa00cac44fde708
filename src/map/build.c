/* Building map packs: tile the sources, encode the tiles, write the tiles
 * table, the FAISS index and the manifest into a temporary directory beside
 * the target, make it durable, and rename it into place.
 *
 * Crash safety. The temporary directory is ".NAME.tmp-SUFFIX" next to
 * NAME; a lock file ".NAME.tmp-SUFFIX.lock" beside it is flock()ed for as
 * long as the build runs. The kernel drops the lock when the process dies,
 * however it dies, so a later build of the same target knows that a
 * temporary directory whose lock it can take is stale and removes it. The
 * lock file lives outside the directory because the directory itself
 * becomes the pack. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <omp.h>
#include <cpl_error.h>
#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/MetaIndexes_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>

#include "core/err.h"
#include "gl_build_config.h"
#include "map/map.h"
#include "map/map_internal.h"

/* --- paths and temporary directories ---------------------------------------- */

struct gl__paths {
  char *dir;    /* parent directory of the target */
  char *base;   /* target's last component */
  char *target; /* dir/base */
  char *tmp;    /* dir/.base.tmp-SUFFIX */
  char *lock;   /* dir/.base.tmp-SUFFIX.lock */
  char *old;    /* dir/.base.old-SUFFIX (fallback replace only) */
  int lock_fd;
};

static char *gl__strdupf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *gl__strdupf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *s = NULL;
  if (vasprintf(&s, fmt, ap) < 0)
    s = NULL;
  va_end(ap);
  return s;
}

static double gl__now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int gl__split_target(const char *out, struct gl__paths *p, char *err, size_t errlen) {
  size_t n = strlen(out);
  while (n > 1 && out[n - 1] == '/')
    n--;
  char *t = strndup(out, n);
  if (!t)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  char *slash = strrchr(t, '/');
  if (slash) {
    p->base = strdup(slash + 1);
    p->dir = slash == t ? strdup("/") : strndup(t, (size_t)(slash - t));
  } else {
    p->base = strdup(t);
    p->dir = strdup(".");
  }
  p->target = t;
  if (!p->base || !p->dir)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  if (!*p->base || strcmp(p->base, ".") == 0 || strcmp(p->base, "..") == 0 || strlen(p->base) > 200)
    return gl_fail(err, errlen, GL_EINVAL, "'%s' is not a usable pack name", out);
  struct stat st;
  if (stat(p->dir, &st) != 0 || !S_ISDIR(st.st_mode))
    return gl_fail(err, errlen, GL_ENOENT, "%s: the directory for the pack does not exist",
                        p->dir);
  return 0;
}

static void gl__paths_fini(struct gl__paths *p) {
  free(p->dir);
  free(p->base);
  free(p->target);
  free(p->tmp);
  free(p->lock);
  free(p->old);
  if (p->lock_fd >= 0)
    close(p->lock_fd);
}

/* Length of a temporary-name suffix at s ("<pid>-<12 hex digits>", as
 * gl__make_tmp makes them), or 0 when s does not start with one: only our
 * own names are ever removed, never a user's directory that happens to
 * share the prefix. */
static size_t gl__suffix_len(const char *s) {
  size_t i = 0;
  while (s[i] >= '0' && s[i] <= '9')
    i++;
  if (i == 0 || s[i] != '-')
    return 0;
  i++;
  for (int k = 0; k < 12; k++, i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return 0;
  return i;
}

/* Removes what killed builds of this target left: for every lock file of
 * our naming pattern that no live process holds, its temporary directory,
 * its ".old" directory (put back in place when the target is missing: the
 * build died between moving the old pack aside and moving the new one in)
 * and the lock file; and temporary directories without a lock file (their
 * build died after removing the lock, or never got one). Errors are not
 * fatal: the new build does not need the space. */
static void gl__clean_stale(const struct gl__paths *p) {
  DIR *d = opendir(p->dir);
  if (!d)
    return;
  char *prefix = gl__strdupf(".%s.tmp-", p->base);
  char *lkprefix = gl__strdupf(".%s.lk-", p->base);
  char *oldprefix = gl__strdupf(".%s.old-", p->base);
  if (!prefix || !lkprefix || !oldprefix)
    goto cleanup;
  size_t plen = strlen(prefix), lklen = strlen(lkprefix);
  struct dirent *e;
  while ((e = readdir(d))) {
    const char *name = e->d_name;
    bool is_tmp = strncmp(name, prefix, plen) == 0;
    bool is_lk = strncmp(name, lkprefix, lklen) == 0;
    size_t slen = is_tmp ? gl__suffix_len(name + plen) : is_lk ? gl__suffix_len(name + lklen) : 0;
    if (!slen)
      continue; /* ".old-" entries are handled through their lock file */
    const char *rest = name + (is_tmp ? plen : lklen) + slen;
    bool is_lock = is_tmp && strcmp(rest, ".lock") == 0;
    if (*rest && !is_lock)
      continue;
    size_t nlen = strlen(name);
    char *path = gl__strdupf("%s/%s", p->dir, name);
    if (!path)
      continue;
    if (is_lock || is_lk) {
      int fd = open(path, O_RDWR | O_CLOEXEC);
      if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0) {
        if (is_lock) {
          char *suffix = strndup(name + plen, nlen - plen - 5);
          char *tmp = suffix ? gl__strdupf("%s/%s%s", p->dir, prefix, suffix) : NULL;
          char *old = suffix ? gl__strdupf("%s/%s%s", p->dir, oldprefix, suffix) : NULL;
          struct stat st;
          if (old && lstat(old, &st) == 0) {
            if (lstat(p->target, &st) != 0 && errno == ENOENT)
              rename(old, p->target);
            else
              gl__map_rmtree(old);
          }
          if (tmp)
            gl__map_rmtree(tmp);
          free(suffix);
          free(tmp);
          free(old);
        }
        unlink(path);
      }
      if (fd >= 0)
        close(fd);
    } else if (is_tmp) {
      char *lock = gl__strdupf("%s.lock", path);
      struct stat st;
      if (lock && lstat(lock, &st) != 0 && errno == ENOENT)
        gl__map_rmtree(path);
      free(lock);
    }
    free(path);
  }
cleanup:
  free(prefix);
  free(lkprefix);
  free(oldprefix);
  closedir(d);
}

/* Creates and locks the lock file, then the temporary directory. The lock
 * file is created under a name the cleaner only removes when unlocked
 * (".lk-"), locked, and then renamed to its ".tmp-SUFFIX.lock" name: so a
 * concurrent build's cleaner never sees an unlocked ".lock" of a live
 * build. */
static int gl__make_tmp(struct gl__paths *p, char *err, size_t errlen) {
  for (int attempt = 0; attempt < 100; attempt++) {
    unsigned char rnd[6];
    int ufd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (ufd < 0 || read(ufd, rnd, sizeof rnd) != (ssize_t)sizeof rnd) {
      if (ufd >= 0)
        close(ufd);
      return gl_fail(err, errlen, GL_EIO, "cannot read /dev/urandom");
    }
    close(ufd);
    char suffix[32];
    snprintf(suffix, sizeof suffix, "%ld-%02x%02x%02x%02x%02x%02x", (long)getpid(), rnd[0], rnd[1],
             rnd[2], rnd[3], rnd[4], rnd[5]);
    char *lk = gl__strdupf("%s/.%s.lk-%s", p->dir, p->base, suffix);
    free(p->tmp);
    free(p->lock);
    free(p->old);
    p->tmp = gl__strdupf("%s/.%s.tmp-%s", p->dir, p->base, suffix);
    p->lock = gl__strdupf("%s.lock", p->tmp ? p->tmp : "");
    p->old = gl__strdupf("%s/.%s.old-%s", p->dir, p->base, suffix);
    if (!lk || !p->tmp || !p->lock || !p->old) {
      free(lk);
      return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
    }
    int fd = open(lk, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno == EEXIST) {
      free(lk);
      continue;
    }
    if (fd < 0) {
      int e = errno;
      free(lk);
      return gl_fail(err, errlen, GL_EIO, "cannot create a lock file in %s: %s", p->dir,
                          strerror(e));
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0 || rename(lk, p->lock) != 0) {
      int e = errno;
      unlink(lk);
      close(fd);
      free(lk);
      return gl_fail(err, errlen, GL_EIO, "cannot lock %s: %s", p->lock, strerror(e));
    }
    free(lk);
    p->lock_fd = fd;
    if (mkdir(p->tmp, 0755) != 0) {
      int e = errno;
      return gl_fail(err, errlen, GL_EIO, "cannot create %s: %s", p->tmp, strerror(e));
    }
    return 0;
  }
  return gl_fail(err, errlen, GL_EIO, "cannot find a free temporary name in %s", p->dir);
}

/* Moves the finished temporary directory onto the target. */
static int gl__install(struct gl__paths *p, char *err, size_t errlen) {
  struct stat st;
  if (lstat(p->target, &st) != 0) {
    if (errno != ENOENT)
      return gl_fail(err, errlen, GL_EIO, "%s: %s", p->target, strerror(errno));
    if (rename(p->tmp, p->target) != 0)
      return gl_fail(err, errlen, GL_EIO, "cannot rename %s to %s: %s", p->tmp, p->target,
                          strerror(errno));
  } else {
    /* Replacing: only a pack is ever replaced. renameat2(RENAME_EXCHANGE)
     * swaps both names in one step, so the target always names a whole
     * pack; the old one then sits at the temporary name and is removed. */
    if (renameat2(AT_FDCWD, p->tmp, AT_FDCWD, p->target, RENAME_EXCHANGE) == 0) {
      gl__map_rmtree(p->tmp);
    } else if (errno == EINVAL || errno == ENOSYS || errno == ENOTSUP) {
      /* Filesystems without exchange (some network and FUSE ones): move
       * the old pack aside, the new in, and put the old back on failure.
       * A crash between the two renames leaves the old pack at ".old-",
       * which the next build's cleaner restores. */
      if (rename(p->target, p->old) != 0)
        return gl_fail(err, errlen, GL_EIO, "cannot move the old pack %s aside: %s",
                            p->target, strerror(errno));
      if (rename(p->tmp, p->target) != 0) {
        int e = errno;
        rename(p->old, p->target);
        return gl_fail(err, errlen, GL_EIO, "cannot rename %s to %s: %s", p->tmp, p->target,
                            strerror(e));
      }
      gl__map_rmtree(p->old);
    } else {
      return gl_fail(err, errlen, GL_EIO, "cannot replace %s: %s", p->target,
                          strerror(errno));
    }
  }
  if (gl__map_fsync_path(p->dir) != 0)
    return gl_fail(err, errlen, GL_EIO, "cannot fsync %s", p->dir);
  return 0;
}

/* The target may be replaced only when it is a pack (a directory with a
 * manifest): a typo in --out must never delete someone's directory. */
static int gl__check_target(const struct gl__paths *p, char *err, size_t errlen) {
  struct stat st;
  if (lstat(p->target, &st) != 0)
    return errno == ENOENT ? 0 : gl_fail(err, errlen, GL_EIO, "%s: %s", p->target,
                                              strerror(errno));
  if (!S_ISDIR(st.st_mode) || !gl_map_is_pack(p->target))
    return gl_fail(err, errlen, GL_EINVAL,
                        "%s exists and is not a map pack (no manifest.json); not replacing it",
                        p->target);
  return 0;
}

/* --- the tiles table ------------------------------------------------------------ */

struct gl__tile_meta {
  double lat, lon, min_lat, max_lat, min_lon, max_lon, gx, gy;
  uint32_t source;
};

/* Tile centre and bounds in WGS84: the bounds come from the four corners
 * and the four edge midpoints (the footprint of a square in UTM is not a
 * lat/lon rectangle). */
static int gl__tile_meta(const struct gl__map_grid *g, double x0, double y0, uint32_t source,
                         struct gl__tile_meta *t) {
  double s = g->tile_m;
  t->gx = x0 + s / 2;
  t->gy = y0 + s / 2;
  t->source = source;
  if (gl__map_grid_to_wgs84(g, t->gx, t->gy, &t->lat, &t->lon) != 0)
    return GL_EINTERNAL;
  t->min_lat = t->max_lat = t->lat;
  t->min_lon = t->max_lon = t->lon;
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 3; j++) {
      if (i == 1 && j == 1)
        continue;
      double la, lo;
      if (gl__map_grid_to_wgs84(g, x0 + s * i / 2, y0 + s * j / 2, &la, &lo) != 0)
        return GL_EINTERNAL;
      t->min_lat = fmin(t->min_lat, la);
      t->max_lat = fmax(t->max_lat, la);
      t->min_lon = fmin(t->min_lon, lo);
      t->max_lon = fmax(t->max_lon, lo);
    }
  return 0;
}

/* Whether the tile with lower-left corner (x0, y0) is inside o->bbox: its
 * centre is converted exactly as gl__tile_meta converts it, so a tile is
 * kept if and only if the centre written to tiles.sqlite is in the box.
 * *lat and *lon receive that centre. */
static int gl__tile_in_bbox(const struct gl_map_build_opts *o, const struct gl__map_grid *g,
                            double x0, double y0, bool *in, double *lat, double *lon) {
  if (gl__map_grid_to_wgs84(g, x0 + g->tile_m / 2, y0 + g->tile_m / 2, lat, lon) != 0)
    return GL_EINTERNAL;
  *in = *lon >= o->bbox[0] && *lat >= o->bbox[1] && *lon <= o->bbox[2] && *lat <= o->bbox[3];
  return 0;
}

/* --- the build -------------------------------------------------------------------- */

struct gl__build {
  const struct gl_map_build_opts *o;
  const struct gl_map_encoder *enc;
  struct gl__paths paths;
  struct gl__map_grid grid;
  struct gl__map_source *src;
  uint32_t n_src;
  /* Per source: places it covered with valid pixels, and places inside its
   * extent (and the bbox) where it holds nodata. */
  uint64_t *src_places, *src_skipped;
  struct gl__tiles tiles;
  uint32_t rot;      /* headings: each source's view of a place turned to rot headings */
  uint32_t years;    /* sources whose descriptors every tile holds: n_src */
  uint32_t per_tile; /* descriptors per tile: rot * years */
  /* n_tiles * per_tile * dim: tile id t, source y, heading r at row
   * (t - 1) * per_tile + y * rot + r. */
  float *desc;
  /* n_tiles * years: have[(t - 1) * years + y] when source y covered tile t
   * with valid pixels (its rows hold its own descriptors, not copies). */
  uint8_t *have;
  uint64_t n_tiles, cap_tiles;
  struct gl_map_progress prog;
  double t0, last_cb;
  FaissIndex *index;
  char index_sha[65], tiles_sha[65];
  uint64_t index_bytes, tiles_bytes;
  size_t nprobe;
  char index_type[512]; /* the index_factory string used */
  double ext[4];        /* grid-CRS bounds of the tiles: xmin, ymin, xmax, ymax */
  bool has_dense;       /* the encoder has a dense layer, described by: */
  struct gl__manifest_dense dense;
};

static void gl__progress(struct gl__build *b, const char *stage, bool force) {
  if (!b->o->progress_cb)
    return;
  double now = gl__now();
  b->prog.stage = stage;
  b->prog.elapsed_s = now - b->t0;
  /* At most ten calls a second: a progress line per batch would flood a
   * log when batches are fast. */
  if (!force && now - b->last_cb < 0.1)
    return;
  b->last_cb = now;
  b->o->progress_cb(b->o->progress_ctx, &b->prog);
}

static int gl__open_db(struct gl__build *b, char *err, size_t errlen) {
  char *path = gl__strdupf("%s/" GL__MAP_TILES, b->paths.tmp);
  if (!path)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  int rc = gl__tiles_create(&b->tiles, path, err, errlen);
  free(path);
  for (uint32_t i = 0; i < b->n_src && !rc; i++) {
    const struct gl__map_source *s = &b->src[i];
    char *abs = realpath(s->path, NULL);
    rc = gl__tiles_add_source(&b->tiles, i + 1, basename(s->path), abs ? abs : s->path,
                              s->sha256, s->crs_name, s->date, err, errlen);
    free(abs);
  }
  return rc;
}

static int gl__insert_tile(struct gl__build *b, int64_t id, const struct gl__tile_meta *t,
                           char *err, size_t errlen) {
  const struct gl__map_source *s = &b->src[t->source];
  const struct gl__tile_row row = {
      .lat = t->lat,
      .lon = t->lon,
      .min_lat = t->min_lat,
      .max_lat = t->max_lat,
      .min_lon = t->min_lon,
      .max_lon = t->max_lon,
      .grid_x = t->gx,
      .grid_y = t->gy,
      .m_per_px = b->grid.tile_m / b->enc->width,
      .source_id = t->source + 1,
      .source = basename(s->path),
      .capture_date = s->date,
  };
  return gl__tiles_add(&b->tiles, id, &row, err, errlen);
}

/* dst = the square s x s RGB8 image src turned to heading 90 k degrees
 * (counter-clockwise quarter turns: what was east is at the top for k = 1),
 * as numpy's rot90(src, k) on (row, column); training turns its reference
 * tiles the same way. */
static void gl__rot90(const uint8_t *src, uint8_t *dst, uint32_t s, uint32_t k) {
  for (uint32_t i = 0; i < s; i++)
    for (uint32_t j = 0; j < s; j++) {
      uint32_t si = k == 1 ? j : k == 2 ? s - 1 - i : s - 1 - j;
      uint32_t sj = k == 1 ? s - 1 - i : k == 2 ? s - 1 - j : i;
      memcpy(dst + ((size_t)i * s + j) * 3, src + ((size_t)si * s + sj) * 3, 3);
    }
}

/* One source's view of one place, waiting in a batch: its rot images are
 * encoded into the rows of tile `tile`, source `year`. */
struct gl__unit {
  uint64_t tile;
  uint32_t year;
};

/* Makes room in desc and have for one more tile. */
static int gl__grow(struct gl__build *b, char *err, size_t errlen) {
  if (b->n_tiles < b->cap_tiles)
    return 0;
  uint64_t cap = b->cap_tiles ? b->cap_tiles * 2 : 1024;
  size_t floats = (size_t)b->enc->dim * b->per_tile;
  if (cap > SIZE_MAX / sizeof(float) / floats)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory for %llu tiles",
                   (unsigned long long)cap);
  float *d = realloc(b->desc, (size_t)cap * floats * sizeof(float));
  if (d)
    b->desc = d;
  uint8_t *h = d ? realloc(b->have, (size_t)cap * b->years) : NULL;
  if (!h)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory for %llu descriptors",
                   (unsigned long long)cap * b->per_tile);
  memset(h + (size_t)b->cap_tiles * b->years, 0, (size_t)(cap - b->cap_tiles) * b->years);
  b->have = h;
  b->cap_tiles = cap;
  return 0;
}

/* Encodes one batch of n units (n * rot images, each unit's headings
 * together) into the rows of their tiles. out has room for the batch. */
static int gl__flush(struct gl__build *b, struct gl_image *imgs, const struct gl__unit *units,
                     uint32_t n, float *out, char *err, size_t errlen) {
  if (n == 0)
    return 0;
  uint32_t dim = b->enc->dim;
  size_t per_unit = (size_t)dim * b->rot; /* floats */
  int rc = b->enc->encode(b->enc->ctx, imgs, n * b->rot, out);
  if (rc)
    return gl_fail(err, errlen, rc, "encoding a batch of %u tiles failed: %s", n,
                        gl_strerror(rc));
  for (uint32_t i = 0; i < n * b->rot; i++) {
    /* The index scores by inner product, which is the cosine only for
     * unit vectors: a model that does not normalise must not build a pack
     * whose scores silently mean something else. */
    double ss = 0;
    for (uint32_t j = 0; j < dim; j++)
      ss += (double)out[(size_t)i * dim + j] * out[(size_t)i * dim + j];
    if (!(fabs(ss - 1.0) < 1e-3))
      return gl_fail(err, errlen, GL_EFORMAT,
                          "the encoder returned a descriptor of norm %g; descriptors must be "
                          "L2-normalised",
                          sqrt(ss));
  }
  for (uint32_t i = 0; i < n; i++) {
    size_t row = (size_t)(units[i].tile - 1) * b->per_tile + (size_t)units[i].year * b->rot;
    memcpy(b->desc + row * dim, out + i * per_unit, per_unit * sizeof(float));
  }
  return 0;
}

/* Whether the tile range of s holds the place at (row, col). */
static bool gl__covers(const struct gl__map_source *s, int64_t row, int64_t col) {
  return s->ncols > 0 && s->nrows > 0 && col >= s->col0 && col < s->col0 + s->ncols &&
         row <= s->row_top && row > s->row_top - s->nrows;
}

/* Places in grid order: rows north to south, columns west to east, over
 * the union of the sources' tile ranges (the grid is shared, so the same
 * place of two sources is the same (row, col)). Moves *row, *col to the
 * first place at or after them that at least one source's range holds,
 * skipping rows and column gaps that none does (sources far apart must not
 * cost a walk over the empty grid between them). Returns false past the
 * last place. */
static bool gl__place_seek(const struct gl__build *b, int64_t *row, int64_t *col) {
  for (;;) {
    int64_t next_col = INT64_MAX, next_row = INT64_MIN;
    for (uint32_t i = 0; i < b->n_src; i++) {
      const struct gl__map_source *s = &b->src[i];
      if (s->ncols <= 0 || s->nrows <= 0)
        continue;
      int64_t bottom = s->row_top - s->nrows + 1;
      if (*row >= bottom && *row <= s->row_top && s->col0 + s->ncols - 1 >= *col) {
        int64_t c = s->col0 > *col ? s->col0 : *col;
        next_col = c < next_col ? c : next_col;
      }
      if (bottom < *row) {
        int64_t r = s->row_top < *row - 1 ? s->row_top : *row - 1;
        next_row = r > next_row ? r : next_row;
      }
    }
    if (next_col != INT64_MAX) {
      *col = next_col;
      return true;
    }
    if (next_row == INT64_MIN)
      return false;
    *row = next_row;
    *col = INT64_MIN;
  }
}

/* The first place (see gl__place_seek). */
static bool gl__place_first(const struct gl__build *b, int64_t *row, int64_t *col) {
  *row = INT64_MIN;
  *col = INT64_MIN;
  for (uint32_t i = 0; i < b->n_src; i++)
    if (b->src[i].ncols > 0 && b->src[i].nrows > 0 && b->src[i].row_top > *row)
      *row = b->src[i].row_top;
  return *row != INT64_MIN && gl__place_seek(b, row, col);
}

/* Sources that covered none of a tile's place (outside their range, or
 * nodata there) get copies of the first covering source's descriptors, so
 * that every tile holds per_tile vectors: a copy scores exactly what the
 * tile's real year scores, so it never changes a tile's best. */
static void gl__fill_years(struct gl__build *b) {
  size_t per_unit = (size_t)b->enc->dim * b->rot;
  for (uint64_t t = 0; t < b->n_tiles && b->years > 1; t++) {
    const uint8_t *h = b->have + (size_t)t * b->years;
    float *d = b->desc + (size_t)t * b->per_tile * b->enc->dim;
    uint32_t first = 0;
    while (!h[first])
      first++; /* a tile exists because some source covered it */
    for (uint32_t y = 0; y < b->years; y++)
      if (!h[y])
        memcpy(d + y * per_unit, d + first * per_unit, per_unit * sizeof(float));
  }
}

/* Reads every place from every source that covers it, in grid order. A
 * place becomes a tile (the next id) when its first source with valid
 * pixels is read; each valid source's view is queued as a unit of rot
 * images, and full batches are encoded. */
static int gl__cut_and_encode(struct gl__build *b, char *err, size_t errlen) {
  int rc = 0;
  const struct gl_map_encoder *enc = b->enc;
  size_t px = (size_t)enc->width * enc->height;
  uint32_t per_batch = enc->max_batch / b->rot; /* units */
  uint8_t *pixels = malloc(px * 3 * enc->max_batch);
  uint8_t *mask = malloc(px);
  struct gl_image *imgs = calloc(enc->max_batch, sizeof *imgs);
  struct gl__unit *units = calloc(per_batch, sizeof *units);
  float *out = malloc((size_t)enc->max_batch * enc->dim * sizeof *out);
  if (!pixels || !mask || !imgs || !units || !out) {
    rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
    goto cleanup;
  }
  uint32_t n = 0;
  int64_t row, col;
  for (bool more = gl__place_first(b, &row, &col); more;
       col++, more = gl__place_seek(b, &row, &col)) {
    double x0 = (double)col * b->grid.stride_m;
    double y0 = (double)row * b->grid.stride_m;
    bool in = true;
    double lat, lon;
    if (b->o->has_bbox && (rc = gl__tile_in_bbox(b->o, &b->grid, x0, y0, &in, &lat, &lon))) {
      rc = gl_fail(err, errlen, rc, "PROJ cannot convert %.3f,%.3f (%s) to WGS84", x0, y0,
                   b->grid.name);
      goto cleanup;
    }
    if (!in)
      continue; /* outside the bbox: not read, not counted */
    uint64_t id = 0; /* the place's tile id, once a source covers it */
    for (uint32_t y = 0; y < b->years; y++) {
      if (!gl__covers(&b->src[y], row, col))
        continue;
      struct gl_image *im = imgs + (size_t)n * b->rot;
      for (uint32_t k = 0; k < b->rot; k++)
        im[k] = (struct gl_image){pixels + px * 3 * (n * b->rot + k), enc->width, enc->height};
      bool valid;
      if ((rc = gl__map_source_read_tile(&b->src[y], &b->grid, x0, y0, enc->width, enc->height,
                                         im[0].rgb, mask, &valid, err, errlen)))
        goto cleanup;
      if (!valid) {
        b->src_skipped[y]++;
        continue;
      }
      if (!id) {
        /* The first source with valid pixels names the tile in
         * tiles.sqlite (source, capture date). */
        struct gl__tile_meta meta;
        if ((rc = gl__tile_meta(&b->grid, x0, y0, y, &meta))) {
          rc = gl_fail(err, errlen, rc, "PROJ cannot convert %.3f,%.3f (%s) to WGS84", x0,
                       y0, b->grid.name);
          goto cleanup;
        }
        if ((rc = gl__grow(b, err, errlen)) ||
            (rc = gl__insert_tile(b, (int64_t)b->n_tiles + 1, &meta, err, errlen)))
          goto cleanup;
        id = ++b->n_tiles;
        b->ext[0] = fmin(b->ext[0], x0);
        b->ext[1] = fmin(b->ext[1], y0);
        b->ext[2] = fmax(b->ext[2], x0 + b->grid.tile_m);
        b->ext[3] = fmax(b->ext[3], y0 + b->grid.tile_m);
      }
      b->have[(size_t)(id - 1) * b->years + y] = 1;
      b->src_places[y]++;
      for (uint32_t k = 1; k < b->rot; k++)
        gl__rot90(im[0].rgb, im[k].rgb, enc->width, k * 4 / b->rot);
      units[n] = (struct gl__unit){id, y};
      if (++n == per_batch) {
        if ((rc = gl__flush(b, imgs, units, n, out, err, errlen)))
          goto cleanup;
        n = 0;
        gl__progress(b, "tiles", false);
      }
    }
    b->prog.done++;
    if (!id)
      b->prog.skipped++; /* nodata in every source that covers it */
  }
  if ((rc = gl__flush(b, imgs, units, n, out, err, errlen)))
    goto cleanup;
  gl__fill_years(b);
  gl__progress(b, "tiles", true);
cleanup:
  free(out);
  free(units);
  free(imgs);
  free(mask);
  free(pixels);
  return rc;
}

static int gl__faiss_fail(char *err, size_t errlen, const char *what) {
  const char *m = faiss_get_last_error();
  return gl_fail(err, errlen, GL_EINTERNAL, "FAISS: %s: %s", what, m ? m : "unknown error");
}

/* The index_factory string actually used: each product-quantizer
 * component "PQ<M>" or "PQ<M>x<bits>" gets the "np" suffix. Without it
 * FAISS runs polysemous training, which only serves Hamming-filtered
 * search (polysemous_ht), which the C API cannot switch on: pure cost, and
 * a large one (measured on 2 cores: 7 s per sub-quantizer, so 7 minutes
 * for PQ64, against 0.2 s for all of PQ16np). */
static void gl__factory_string(const char *in, char *out, size_t n) {
  size_t o = 0;
  for (const char *p = in; *p && o + 1 < n;) {
    bool start = p == in || p[-1] == ',';
    size_t len = 0;
    if (start && p[0] == 'P' && p[1] == 'Q') {
      len = 2;
      while (p[len] >= '0' && p[len] <= '9')
        len++;
      if (len > 2 && p[len] == 'x') {
        size_t l2 = len + 1;
        while (p[l2] >= '0' && p[l2] <= '9')
          l2++;
        len = l2 > len + 1 ? l2 : 0;
      }
      if (len <= 2 || (p[len] != ',' && p[len] != 0))
        len = 0; /* not a plain PQ component (np, fs, ... already given) */
    }
    if (len && o + len + 3 < n) {
      memcpy(out + o, p, len);
      memcpy(out + o + len, "np", 2);
      o += len + 2;
      p += len;
    } else {
      out[o++] = *p++;
    }
  }
  out[o] = 0;
}

static int gl__build_index(struct gl__build *b, char *err, size_t errlen) {
  const char *type = b->index_type;
  FaissIndex *sub = NULL;
  FaissIndexIDMap *map = NULL;
  idx_t *ids = NULL;
  int rc = 0;
  /* FAISS's own OpenMP threads are limited to one while it trains and
   * adds. Its heavy work is BLAS (OpenBLAS runs its own threads), and
   * OpenMP workers spinning beside OpenBLAS's threads oversubscribe the
   * cores: k-means for IVF256,PQ32 on 20000 vectors took 77 s with the
   * default and 14 s with one OpenMP thread (2 cores). The setting is per
   * calling thread and restored after. */
  int omp_threads = omp_get_max_threads();
  omp_set_num_threads(1);
  uint64_t nv = b->n_tiles * b->per_tile; /* vector id v: tile (v - 1) / per_tile + 1 */
  if (faiss_index_factory(&sub, (int)b->enc->dim, type, METRIC_INNER_PRODUCT) != 0) {
    rc = gl__faiss_fail(err, errlen, type);
    goto fail;
  }
  if (!faiss_Index_is_trained(sub) && faiss_Index_train(sub, (idx_t)nv, b->desc) != 0) {
    rc = gl__faiss_fail(err, errlen, "training the index");
    char tmp[640];
    snprintf(tmp, sizeof tmp, "index type '%s' on %llu tiles", type,
             (unsigned long long)b->n_tiles);
    gl_err_prefix(err, errlen, tmp);
    goto fail;
  }
  if (faiss_IndexIDMap_new(&map, sub) != 0) {
    rc = gl__faiss_fail(err, errlen, "IndexIDMap");
    goto fail;
  }
  faiss_IndexIDMap_set_own_fields(map, 1);
  sub = NULL;
  if (!(ids = malloc(nv * sizeof *ids))) {
    rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
    goto fail;
  }
  for (uint64_t i = 0; i < nv; i++)
    ids[i] = (idx_t)(i + 1);
  if (faiss_Index_add_with_ids(map, (idx_t)nv, b->desc, ids) != 0) {
    rc = gl__faiss_fail(err, errlen, "adding the descriptors");
    goto fail;
  }
  FaissIndexIVF *ivf = faiss_IndexIVF_cast(faiss_IndexIDMap_sub_index(map));
  if (ivf) {
    /* nprobe 1 (FAISS's default) misses neighbours that fall just across
     * a cell boundary; probing a few cells costs little on maps this size. */
    size_t nlist = faiss_IndexIVF_nlist(ivf);
    b->nprobe = nlist < 32 ? nlist : 32;
  }
  free(ids);
  b->index = map;
  omp_set_num_threads(omp_threads);
  return 0;
fail:
  omp_set_num_threads(omp_threads);
  free(ids);
  if (map)
    faiss_Index_free(map);
  if (sub)
    faiss_Index_free(sub);
  return rc;
}

static int gl__write_index(struct gl__build *b, char *err, size_t errlen) {
  char *path = gl__strdupf("%s/" GL__MAP_INDEX, b->paths.tmp);
  if (!path)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  int rc = 0;
  FILE *f = fopen(path, "wb");
  if (!f) {
    rc = gl_fail(err, errlen, GL_EIO, "%s: %s", path, strerror(errno));
    goto cleanup;
  }
  if (faiss_write_index(b->index, f) != 0) {
    rc = gl__faiss_fail(err, errlen, "writing index.faiss");
    fclose(f);
    goto cleanup;
  }
  if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
    rc = gl_fail(err, errlen, GL_EIO, "%s: %s", path, strerror(errno));
    fclose(f);
    goto cleanup;
  }
  if (fclose(f) != 0) {
    rc = gl_fail(err, errlen, GL_EIO, "%s: %s", path, strerror(errno));
    goto cleanup;
  }
  if ((rc = gl__map_sha256_file(path, b->index_sha, &b->index_bytes)))
    gl_fail(err, errlen, rc, "cannot checksum %s", path);
cleanup:
  free(path);
  return rc;
}

static int gl__close_db(struct gl__build *b, char *err, size_t errlen) {
  int rc = gl__tiles_commit(&b->tiles, err, errlen);
  if (rc)
    return rc;
  char *path = gl__strdupf("%s/" GL__MAP_TILES, b->paths.tmp);
  if (!path)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  /* The database ran with synchronous=OFF (the rename is the commit
   * point), so this fsync is what makes it durable. */
  rc = gl__map_fsync_path(path);
  if (!rc)
    rc = gl__map_sha256_file(path, b->tiles_sha, &b->tiles_bytes);
  if (rc)
    gl_fail(err, errlen, rc, "%s: cannot fsync or checksum it", path);
  free(path);
  return rc;
}

static int gl__write_manifest(struct gl__build *b, char *err, size_t errlen) {
  const struct gl_map_encoder *enc = b->enc;
  char created[32];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", &tm);
  struct gl__manifest m = {
      .format = GL__MAP_FORMAT_NAME,
      .format_version = GL_MAP_FORMAT_VERSION,
      .generator = "geoloc " GL_VERSION,
      .created = created,
      .descriptor_dim = enc->dim,
      .metric = "inner_product",
      .index_type = b->index_type,
      .index_nprobe = b->nprobe,
      .tiling = {.crs = b->grid.name,
                 .crs_wkt = b->grid.wkt,
                 .tile_m = b->grid.tile_m,
                 .stride_m = b->grid.stride_m,
                 .tile_px = {enc->width, enc->height},
                 .m_per_px = b->grid.tile_m / enc->width,
                 .resampling = "bilinear",
                 .rotations = b->rot,
                 .years = b->years,
                 .has_bbox = b->o->has_bbox},
      .n_sources = b->n_src,
      .sources = calloc(b->n_src ? b->n_src : 1, sizeof *m.sources),
      .counts = {.tiles = b->n_tiles, .sources = b->n_src, .skipped = b->prog.skipped},
      .has_dense = b->has_dense,
      .dense = b->dense,
  };
  snprintf(m.model_sha256, sizeof m.model_sha256, "%s", enc->model_sha256);
  memcpy(m.tiling.bbox, b->o->bbox, sizeof m.tiling.bbox);
  snprintf(m.files[0].sha256, sizeof m.files[0].sha256, "%s", b->tiles_sha);
  m.files[0].bytes = b->tiles_bytes;
  snprintf(m.files[1].sha256, sizeof m.files[1].sha256, "%s", b->index_sha);
  m.files[1].bytes = b->index_bytes;
  char **abs = calloc(b->n_src ? b->n_src : 1, sizeof *abs);
  char *path = gl__strdupf("%s/" GL__MAP_MANIFEST, b->paths.tmp);
  int rc = 0;
  if (!m.sources || !abs || !path) {
    rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory writing the manifest");
    goto cleanup;
  }
  for (uint32_t i = 0; i < b->n_src; i++) {
    const struct gl__map_source *s = &b->src[i];
    struct gl__manifest_source *j = &m.sources[i];
    j->file = basename(s->path);
    /* Where the raster was when the pack was built (as in tiles.sqlite):
     * what draws the map's background, e.g. `geoloc eval --report`. */
    abs[i] = realpath(s->path, NULL);
    j->path = abs[i] ? abs[i] : s->path;
    snprintf(j->sha256, sizeof j->sha256, "%s", s->sha256);
    j->bytes = s->bytes;
    j->crs = s->crs_name;
    j->warped = s->warped;
    j->capture_date = s->date[0] ? s->date : NULL;
    j->places = b->src_places[i];
    j->skipped = b->src_skipped[i];
  }
  rc = gl__manifest_write(path, &m, err, errlen);
cleanup:
  for (uint32_t i = 0; abs && i < b->n_src; i++)
    free(abs[i]);
  free(abs);
  free(m.sources);
  free(path);
  return rc;
}

/* Descriptors per tile the encoder asks for (its rotations; 0 means 1). */
static uint32_t gl__enc_rotations(const struct gl_map_encoder *enc) {
  return enc->rotations ? enc->rotations : 1;
}

static int gl__check_opts(const struct gl_map_build_opts *o, const struct gl_map_encoder *enc,
                          char *err, size_t errlen) {
  if (!o || !enc || !o->out || !o->orthos || o->n_orthos == 0)
    return gl_fail(err, errlen, GL_EINVAL, "a pack needs --out and at least one --ortho");
  if (o->n_orthos > GL__MAP_MAX_YEARS)
    return gl_fail(err, errlen, GL_EINVAL,
                   "%u source rasters; a pack holds at most %u (every tile stores each one's "
                   "descriptors)",
                   o->n_orthos, GL__MAP_MAX_YEARS);
  for (uint32_t i = 0; i < o->n_orthos; i++)
    if (!o->orthos[i])
      return gl_fail(err, errlen, GL_EINVAL, "source raster %u is NULL", i);
  if (!(o->tile_m > 0 && o->tile_m <= 1e6 && o->stride_m > 0 && o->stride_m <= 1e6))
    return gl_fail(err, errlen, GL_EINVAL,
                        "tile size and stride must be positive metres (got %g and %g)", o->tile_m,
                        o->stride_m);
  if (!enc->encode || enc->width == 0 || enc->height == 0 || enc->dim == 0 ||
      enc->max_batch == 0 || (uint64_t)enc->width * enc->height > (1u << 26) ||
      enc->dim > 65536 || enc->max_batch > 4096)
    return gl_fail(err, errlen, GL_EINVAL, "unusable encoder (size %ux%u, dim %u, batch %u)",
                        enc->width, enc->height, enc->dim, enc->max_batch);
  uint32_t rot = gl__enc_rotations(enc);
  if ((rot != 1 && rot != 2 && rot != 4) || (rot > 1 && enc->width != enc->height) ||
      enc->max_batch < rot)
    return gl_fail(err, errlen, GL_EINVAL,
                   "unusable encoder: %u rotations of %ux%u tiles in batches of %u (1, 2 or 4 "
                   "rotations of square tiles, a batch holding them all)",
                   rot, enc->width, enc->height, enc->max_batch);
  if (strlen(enc->model_sha256) != 64 ||
      strspn(enc->model_sha256, "0123456789abcdef") != 64)
    return gl_fail(err, errlen, GL_EINVAL, "the encoder's model sha256 is not 64 hex digits");
  if (o->has_bbox) {
    const double *x = o->bbox;
    for (int i = 0; i < 4; i++)
      if (!isfinite(x[i]))
        return gl_fail(err, errlen, GL_EINVAL, "bbox: %s is not a number",
                       (const char *[]){"west", "south", "east", "north"}[i]);
    if (!(x[0] >= -180 && x[2] <= 180 && x[1] >= -90 && x[3] <= 90))
      return gl_fail(err, errlen, GL_EINVAL,
                     "bbox %.7g,%.7g,%.7g,%.7g is out of range: longitudes must lie in "
                     "[-180, 180] and latitudes in [-90, 90] (order west,south,east,north)",
                     x[0], x[1], x[2], x[3]);
    if (!(x[0] < x[2] && x[1] < x[3]))
      return gl_fail(err, errlen, GL_EINVAL,
                     "bbox %.7g,%.7g,%.7g,%.7g is empty: it needs west < east and south < north "
                     "(order west,south,east,north)",
                     x[0], x[1], x[2], x[3]);
  }
  const char *type = o->index_type ? o->index_type : "Flat";
  /* We wrap the index in an IndexIDMap ourselves; an "IDMap" prefix would
   * nest two and break the id checks on open. */
  if (!*type || strlen(type) > 200 || strncmp(type, "IDMap", 5) == 0)
    return gl_fail(err, errlen, GL_EINVAL, "unusable index type '%s'", type);
  return 0;
}

/* Counts the places the build will read into the progress total: every
 * place some source's range holds, once however many sources hold it, and
 * with a bbox only those whose centre is inside. */
static int gl__count_places(struct gl__build *b, char *err, size_t errlen) {
  int64_t row, col;
  for (bool more = gl__place_first(b, &row, &col); more;
       col++, more = gl__place_seek(b, &row, &col)) {
    bool in = true;
    if (b->o->has_bbox) {
      double x0 = (double)col * b->grid.stride_m, y0 = (double)row * b->grid.stride_m;
      double lat, lon;
      if (gl__tile_in_bbox(b->o, &b->grid, x0, y0, &in, &lat, &lon))
        return gl_fail(err, errlen, GL_EINTERNAL, "PROJ cannot convert %.3f,%.3f (%s) to WGS84",
                       x0, y0, b->grid.name);
    }
    b->prog.total += in;
  }
  return 0;
}

int gl_map_build(const struct gl_map_build_opts *o, const struct gl_map_encoder *enc,
                 struct gl_map_build_stats *stats, char *err, size_t errlen) {
  int rc;
  struct gl__build b = {.o = o,
                        .enc = enc,
                        .paths = {.lock_fd = -1},
                        .ext = {INFINITY, INFINITY, -INFINITY, -INFINITY}};
  if ((rc = gl__check_opts(o, enc, err, errlen)))
    return rc;
  b.rot = gl__enc_rotations(enc);
  b.years = o->n_orthos;
  b.per_tile = b.rot * b.years;
  b.t0 = gl__now();
  gl__factory_string(o->index_type ? o->index_type : "Flat", b.index_type, sizeof b.index_type);
  gl__map_gdal_init();
  /* GDAL's default handler prints to stderr; a library reports through
   * err instead (messages are picked up with CPLGetLastErrorMsg). */
  CPLPushErrorHandler(CPLQuietErrorHandler);
  if ((rc = gl__split_target(o->out, &b.paths, err, errlen)))
    goto cleanup;
  gl__clean_stale(&b.paths);
  if ((rc = gl__check_target(&b.paths, err, errlen)))
    goto cleanup;

  b.n_src = o->n_orthos;
  b.src = calloc(b.n_src, sizeof *b.src);
  b.src_places = calloc(b.n_src, sizeof *b.src_places);
  b.src_skipped = calloc(b.n_src, sizeof *b.src_skipped);
  if (!b.src || !b.src_places || !b.src_skipped) {
    rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
    goto cleanup;
  }
  /* The grid CRS comes from the first raster, so it is opened on its own
   * first; every source (the first included) is then opened against it. */
  {
    struct stat st;
    if (stat(o->orthos[0], &st) != 0) {
      rc = gl_fail(err, errlen, errno == ENOENT ? GL_ENOENT : GL_EIO, "%s: %s",
                        o->orthos[0], strerror(errno));
      goto cleanup;
    }
    GDALDatasetH first = GDALOpenEx(o->orthos[0], GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL,
                                    NULL);
    if (!first) {
      rc = gl_fail(err, errlen, GL_EFORMAT, "%s: not a raster GDAL can read: %s",
                        o->orthos[0], CPLGetLastErrorMsg());
      goto cleanup;
    }
    rc = gl__map_grid_init(&b.grid, first, o->tile_m, o->stride_m, err, errlen);
    GDALClose(first);
    if (rc)
      goto cleanup;
  }
  for (uint32_t i = 0; i < b.n_src; i++)
    if ((rc = gl__map_source_open(&b.src[i], o->orthos[i], &b.grid, err, errlen)))
      goto cleanup;
  if ((rc = gl__count_places(&b, err, errlen)))
    goto cleanup;
  if (o->has_bbox && b.prog.total == 0) {
    rc = gl_fail(err, errlen, GL_EINVAL,
                 "no tile centre lies inside the bbox %.7g,%.7g,%.7g,%.7g (west,south,east,north)",
                 o->bbox[0], o->bbox[1], o->bbox[2], o->bbox[3]);
    goto cleanup;
  }
  if (b.prog.total == 0) {
    rc = gl_fail(err, errlen, GL_EINVAL, "no %g m tile fits inside the source raster(s)",
                      o->tile_m);
    goto cleanup;
  }

  if ((rc = gl__make_tmp(&b.paths, err, errlen)))
    goto cleanup;
  if ((rc = gl__open_db(&b, err, errlen)))
    goto cleanup;
  gl__progress(&b, "tiles", true);
  if ((rc = gl__cut_and_encode(&b, err, errlen)))
    goto cleanup;
  if (b.n_tiles == 0) {
    rc = gl_fail(err, errlen, GL_EINVAL,
                 "all %llu places hold nodata pixels in every source that covers them",
                 (unsigned long long)b.prog.total);
    goto cleanup;
  }
  if (enc->dense_layer) {
    gl__progress(&b, "dense", true);
    b.has_dense = true;
    if ((rc = gl__map_dense_write(&b.grid, b.src, b.n_src, enc, b.ext, b.paths.tmp, &b.dense, err,
                                  errlen)))
      goto cleanup;
  }
  gl__progress(&b, "index", true);
  if ((rc = gl__build_index(&b, err, errlen)))
    goto cleanup;
  gl__progress(&b, "write", true);
  if ((rc = gl__write_index(&b, err, errlen)) || (rc = gl__close_db(&b, err, errlen)) ||
      (rc = gl__write_manifest(&b, err, errlen)))
    goto cleanup;
  if (gl__map_fsync_path(b.paths.tmp) != 0) {
    rc = gl_fail(err, errlen, GL_EIO, "cannot fsync %s", b.paths.tmp);
    goto cleanup;
  }
  /* Checked again right before the rename: the target may have appeared
   * while we encoded. */
  if ((rc = gl__check_target(&b.paths, err, errlen)) || (rc = gl__install(&b.paths, err, errlen)))
    goto cleanup;
  gl__progress(&b, "done", true);
  if (stats) {
    stats->tiles = b.n_tiles;
    stats->skipped = b.prog.skipped;
    stats->seconds = gl__now() - b.t0;
  }
cleanup:
  free(b.dense.layers);
  if (b.index)
    faiss_Index_free(b.index);
  gl__tiles_close(&b.tiles);
  /* A failed build removes its own temporary directory (a killed one is
   * left to the next build's cleaner); after a successful rename there is
   * nothing left at the temporary name. */
  if (b.paths.tmp)
    gl__map_rmtree(b.paths.tmp);
  if (b.paths.lock_fd >= 0 && b.paths.lock)
    unlink(b.paths.lock);
  for (uint32_t i = 0; b.src && i < b.n_src; i++)
    gl__map_source_close(&b.src[i]);
  free(b.src);
  free(b.src_places);
  free(b.src_skipped);
  free(b.desc);
  free(b.have);
  gl__map_grid_fini(&b.grid);
  gl__paths_fini(&b.paths);
  CPLPopErrorHandler();
  return rc;
}
