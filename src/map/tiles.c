/* tiles.sqlite: its schema and every statement run on it (map_internal.h).
 *
 * Tables: sources (one row per source raster, id = its position in the
 * manifest's list + 1), tiles (one row per tile id: centre and bounds in
 * WGS84, centre in the grid CRS, metres per model pixel, the first source
 * covering it) and tiles_rtree (the tiles' WGS84 bounds, for the search
 * region of a prior). The builder writes it with synchronous=OFF: the
 * pack's rename is the commit point, and the builder fsyncs the file. */
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

#include "core/err.h"
#include "map/map.h"
#include "map/map_internal.h"

static const char gl__schema[] =
    "PRAGMA journal_mode=OFF;"
    "PRAGMA synchronous=OFF;"
    "PRAGMA application_id=1196444493;" /* 'GLMM' */
    "PRAGMA user_version=1;"
    "CREATE TABLE sources("
    "  id INTEGER PRIMARY KEY,"
    "  file TEXT NOT NULL,"
    "  path TEXT NOT NULL,"
    "  sha256 TEXT NOT NULL,"
    "  crs TEXT NOT NULL,"
    "  capture_date TEXT);"
    "CREATE TABLE tiles("
    "  id INTEGER PRIMARY KEY,"
    "  lat REAL NOT NULL, lon REAL NOT NULL,"
    "  min_lat REAL NOT NULL, max_lat REAL NOT NULL,"
    "  min_lon REAL NOT NULL, max_lon REAL NOT NULL,"
    "  grid_x REAL NOT NULL, grid_y REAL NOT NULL,"
    "  m_per_px REAL NOT NULL,"
    "  source_id INTEGER NOT NULL REFERENCES sources(id),"
    "  source TEXT NOT NULL,"
    "  capture_date TEXT);"
    "CREATE VIRTUAL TABLE tiles_rtree USING rtree(id, min_lat, max_lat, min_lon, max_lon);"
    "BEGIN;";

static int gl__sql_fail(sqlite3 *db, char *err, size_t errlen, const char *what) {
  return gl_fail(err, errlen, GL_EIO, "tiles.sqlite: %s: %s", what,
                 db ? sqlite3_errmsg(db) : "cannot allocate");
}

static void gl__bind_text_or_null(sqlite3_stmt *st, int i, const char *s) {
  if (s && *s)
    sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
  else
    sqlite3_bind_null(st, i);
}

static int gl__step_done(struct gl__tiles *t, sqlite3_stmt *st, const char *what, char *err,
                         size_t errlen) {
  int r = sqlite3_step(st);
  sqlite3_reset(st);
  return r == SQLITE_DONE ? 0 : gl__sql_fail(t->db, err, errlen, what);
}

int gl__tiles_create(struct gl__tiles *t, const char *path, char *err, size_t errlen) {
  memset(t, 0, sizeof *t);
  if (sqlite3_open_v2(path, &t->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
      SQLITE_OK)
    return gl__sql_fail(t->db, err, errlen, "create");
  char *msg = NULL;
  if (sqlite3_exec(t->db, gl__schema, NULL, NULL, &msg) != SQLITE_OK) {
    int rc = gl_fail(err, errlen, GL_EIO, "tiles.sqlite: schema: %s", msg ? msg : "?");
    sqlite3_free(msg);
    return rc;
  }
  if (sqlite3_prepare_v2(t->db,
                         "INSERT INTO sources(id, file, path, sha256, crs, capture_date) "
                         "VALUES(?,?,?,?,?,?)",
                         -1, &t->ins_source, NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(t->db,
                         "INSERT INTO tiles(id, lat, lon, min_lat, max_lat, min_lon, max_lon, "
                         "grid_x, grid_y, m_per_px, source_id, source, capture_date) "
                         "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)",
                         -1, &t->ins_tile, NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(t->db, "INSERT INTO tiles_rtree VALUES(?,?,?,?,?)", -1, &t->ins_rtree,
                         NULL) != SQLITE_OK)
    return gl__sql_fail(t->db, err, errlen, "prepare");
  return 0;
}

int gl__tiles_add_source(struct gl__tiles *t, int64_t id, const char *file, const char *path,
                         const char *sha256, const char *crs, const char *date, char *err,
                         size_t errlen) {
  sqlite3_stmt *st = t->ins_source;
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_text(st, 2, file, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 3, path, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 4, sha256, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 5, crs, -1, SQLITE_TRANSIENT);
  gl__bind_text_or_null(st, 6, date);
  return gl__step_done(t, st, "insert source", err, errlen);
}

int gl__tiles_add(struct gl__tiles *t, int64_t id, const struct gl__tile_row *r, char *err,
                  size_t errlen) {
  sqlite3_stmt *st = t->ins_tile;
  const double v[] = {r->lat,     r->lon,     r->min_lat, r->max_lat, r->min_lon,
                      r->max_lon, r->grid_x, r->grid_y, r->m_per_px};
  sqlite3_bind_int64(st, 1, id);
  for (int i = 0; i < 9; i++)
    sqlite3_bind_double(st, i + 2, v[i]);
  sqlite3_bind_int64(st, 11, r->source_id);
  sqlite3_bind_text(st, 12, r->source, -1, SQLITE_TRANSIENT);
  gl__bind_text_or_null(st, 13, r->capture_date);
  int rc = gl__step_done(t, st, "insert tile", err, errlen);
  if (rc)
    return rc;
  st = t->ins_rtree;
  const double box[] = {r->min_lat, r->max_lat, r->min_lon, r->max_lon};
  sqlite3_bind_int64(st, 1, id);
  for (int i = 0; i < 4; i++)
    sqlite3_bind_double(st, i + 2, box[i]);
  return gl__step_done(t, st, "insert rtree", err, errlen);
}

int gl__tiles_commit(struct gl__tiles *t, char *err, size_t errlen) {
  char *msg = NULL;
  if (sqlite3_exec(t->db, "COMMIT;", NULL, NULL, &msg) != SQLITE_OK) {
    int rc = gl_fail(err, errlen, GL_EIO, "tiles.sqlite: commit: %s", msg ? msg : "?");
    sqlite3_free(msg);
    return rc;
  }
  sqlite3_finalize(t->ins_source);
  sqlite3_finalize(t->ins_tile);
  sqlite3_finalize(t->ins_rtree);
  t->ins_source = t->ins_tile = t->ins_rtree = NULL;
  if (sqlite3_close(t->db) != SQLITE_OK)
    return gl__sql_fail(t->db, err, errlen, "close");
  t->db = NULL;
  return 0;
}

int gl__tiles_open(struct gl__tiles *t, const char *path, char *err, size_t errlen) {
  memset(t, 0, sizeof *t);
  if (sqlite3_open_v2(path, &t->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
          SQLITE_OK ||
      sqlite3_prepare_v2(t->db,
                         "SELECT id FROM tiles_rtree WHERE max_lat >= ?1 AND min_lat <= ?2 AND "
                         "max_lon >= ?3 AND min_lon <= ?4",
                         -1, &t->q_box, NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(t->db,
                         "SELECT lat, lon, min_lat, max_lat, min_lon, max_lon, m_per_px, source, "
                         "capture_date FROM tiles WHERE id = ?1",
                         -1, &t->q_tile, NULL) != SQLITE_OK)
    return gl__sql_fail(t->db, err, errlen, "open");
  return 0;
}

int gl__tiles_count(struct gl__tiles *t, uint64_t *n, char *err, size_t errlen) {
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(t->db, "SELECT count(*) FROM tiles", -1, &st, NULL) != SQLITE_OK)
    return gl__sql_fail(t->db, err, errlen, "prepare");
  int rc = 0;
  if (sqlite3_step(st) == SQLITE_ROW)
    *n = (uint64_t)sqlite3_column_int64(st, 0);
  else
    rc = gl__sql_fail(t->db, err, errlen, "count");
  sqlite3_finalize(st);
  return rc;
}

int gl__tiles_centres(struct gl__tiles *t, uint64_t n, double *lat, double *lon, double *gx,
                      double *gy, char *err, size_t errlen) {
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(t->db, "SELECT id, lat, lon, grid_x, grid_y FROM tiles ORDER BY id", -1,
                         &st, NULL) != SQLITE_OK)
    return gl__sql_fail(t->db, err, errlen, "prepare");
  uint64_t i = 0;
  int r, rc = 0;
  while ((r = sqlite3_step(st)) == SQLITE_ROW) {
    if (i >= n || sqlite3_column_int64(st, 0) != (int64_t)(i + 1)) {
      rc = gl_fail(err, errlen, GL_EFORMAT,
                   "tiles.sqlite: tile ids are not 1..%llu as the manifest says",
                   (unsigned long long)n);
      break;
    }
    lat[i] = sqlite3_column_double(st, 1);
    lon[i] = sqlite3_column_double(st, 2);
    gx[i] = sqlite3_column_double(st, 3);
    gy[i] = sqlite3_column_double(st, 4);
    i++;
  }
  if (!rc && r != SQLITE_DONE)
    rc = gl__sql_fail(t->db, err, errlen, "read");
  else if (!rc && i != n)
    rc = gl_fail(err, errlen, GL_EFORMAT, "tiles.sqlite holds %llu tiles, the manifest says %llu",
                 (unsigned long long)i, (unsigned long long)n);
  sqlite3_finalize(st);
  return rc;
}

int gl__tiles_get(struct gl__tiles *t, int64_t id, struct gl_map_tile *out) {
  int rc = GL_EIO;
  sqlite3_stmt *st = t->q_tile;
  sqlite3_bind_int64(st, 1, id);
  if (sqlite3_step(st) == SQLITE_ROW) {
    double *v[] = {&out->lat,     &out->lon,     &out->min_lat, &out->max_lat,
                   &out->min_lon, &out->max_lon, &out->m_per_px};
    out->id = id;
    for (int i = 0; i < 7; i++)
      *v[i] = sqlite3_column_double(st, i);
    const unsigned char *s = sqlite3_column_text(st, 7);
    snprintf(out->source, sizeof out->source, "%s", s ? (const char *)s : "");
    const unsigned char *d = sqlite3_column_text(st, 8);
    snprintf(out->capture_date, sizeof out->capture_date, "%s", d ? (const char *)d : "");
    rc = 0;
  }
  sqlite3_reset(st);
  return rc;
}

int gl__tiles_box(struct gl__tiles *t, const double box[4], int (*fn)(void *ctx, int64_t id),
                  void *ctx, char *err, size_t errlen) {
  sqlite3_stmt *st = t->q_box;
  for (int i = 0; i < 4; i++)
    sqlite3_bind_double(st, i + 1, box[i]);
  int r, rc = 0;
  while (!rc && (r = sqlite3_step(st)) == SQLITE_ROW)
    rc = fn(ctx, sqlite3_column_int64(st, 0));
  if (!rc && r != SQLITE_DONE)
    rc = gl__sql_fail(t->db, err, errlen, "rtree");
  sqlite3_reset(st);
  return rc;
}

void gl__tiles_close(struct gl__tiles *t) {
  sqlite3_finalize(t->ins_source);
  sqlite3_finalize(t->ins_tile);
  sqlite3_finalize(t->ins_rtree);
  sqlite3_finalize(t->q_box);
  sqlite3_finalize(t->q_tile);
  if (t->db)
    sqlite3_close(t->db);
  memset(t, 0, sizeof *t);
}
