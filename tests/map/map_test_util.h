/* Helpers shared by the map tests: temporary directories, directory
 * listings, and counting entries of a naming pattern. */
#ifndef GL_MAP_TEST_UTIL_H
#define GL_MAP_TEST_UTIL_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "map/map_internal.h"

/* A fresh directory under $TMPDIR (or /tmp); the caller removes it. */
static inline char *mt_tmpdir(const char *tag) {
  const char *base = getenv("TMPDIR");
  char *p = NULL;
  if (asprintf(&p, "%s/gl-%s-XXXXXX", base && *base ? base : "/tmp", tag) < 0)
    return NULL;
  if (!mkdtemp(p)) {
    free(p);
    return NULL;
  }
  return p;
}

static inline char *mt_join(const char *a, const char *b) {
  char *p = NULL;
  return asprintf(&p, "%s/%s", a, b) < 0 ? NULL : p;
}

static inline bool mt_exists(const char *path) {
  struct stat st;
  return lstat(path, &st) == 0;
}

/* Entries of dir whose name contains needle. */
static inline int mt_count_entries(const char *dir, const char *needle) {
  DIR *d = opendir(dir);
  if (!d)
    return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strstr(e->d_name, needle))
      n++;
  closedir(d);
  return n;
}

/* Copies a regular file. Returns 0 on success. */
static inline int mt_copy_file(const char *from, const char *to) {
  FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
  int rc = -1;
  if (a && b) {
    char buf[65536];
    size_t n;
    rc = 0;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0)
      if (fwrite(buf, 1, n, b) != n)
        rc = -1;
  }
  if (a)
    fclose(a);
  if (b && fclose(b) != 0)
    rc = -1;
  return rc;
}

/* Copies a pack directory (its three files) to a new directory. */
static inline int mt_copy_pack(const char *from, const char *to) {
  static const char *files[] = {"manifest.json", "tiles.sqlite", "index.faiss"};
  if (mkdir(to, 0755) != 0)
    return -1;
  for (int i = 0; i < 3; i++) {
    char *a = mt_join(from, files[i]), *b = mt_join(to, files[i]);
    int rc = a && b ? mt_copy_file(a, b) : -1;
    free(a);
    free(b);
    if (rc)
      return rc;
  }
  return 0;
}

/* XORs one byte of a file at offset (negative: from the end). */
static inline int mt_flip_byte(const char *path, long offset) {
  FILE *f = fopen(path, "r+b");
  if (!f)
    return -1;
  int rc = -1;
  if (fseek(f, offset, offset < 0 ? SEEK_END : SEEK_SET) == 0) {
    long pos = ftell(f);
    int c = fgetc(f);
    if (c != EOF && fseek(f, pos, SEEK_SET) == 0 && fputc(c ^ 0x5a, f) != EOF)
      rc = 0;
  }
  if (fclose(f) != 0)
    rc = -1;
  return rc;
}

#endif
