/* Reader of safetensors files (layout and rules: python/geoloc_train/safetensors.py).
 *
 * The whole file is read once into memory; tensors point into that copy.
 * Every rule of the Python reader is enforced, each failure with its own
 * message naming the tensor or field, and only F32 tensors are accepted
 * (geoloc model files hold nothing else). */
#ifndef GL_NN_SAFETENSORS_H
#define GL_NN_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

/* A header larger than this is certainly not one of ours (same limit as the
 * Python reader); refusing it early keeps a corrupt size field from making
 * us allocate gigabytes. */
#define GL__ST_MAX_HEADER_BYTES (100u * 1024u * 1024u)
#define GL__ST_MAX_DIMS 8

struct gl__st_tensor {
  char *name;
  uint32_t ndim;
  uint64_t shape[GL__ST_MAX_DIMS];
  uint64_t numel;
  uint64_t begin, end; /* byte offsets in the data section */
  const float *data;   /* 4-byte aligned, little-endian host floats */
};

struct gl__st {
  void *mem;     /* the allocation holding file */
  uint8_t *file; /* the whole file */
  size_t size;
  const uint8_t *data; /* data section inside file */
  size_t data_size;
  struct gl__st_tensor *tensors; /* sorted by name */
  size_t n_tensors;
  /* __metadata__ values (owned copies); NULL when the key is absent. */
  char *format, *format_version, *config;
  char sha256[65]; /* of the whole file, lowercase hex */
};

/* Reads and validates path into *st (zeroed first). Returns 0, GL_ENOENT,
 * GL_EIO, GL_ENOMEM or GL_EFORMAT, with err saying what is wrong (prefixed
 * by the path). */
int gl__st_read(const char *path, struct gl__st *st, char *err, size_t errlen);

/* Releases everything gl__st_read filled in; safe on a zeroed struct. */
void gl__st_fini(struct gl__st *st);

/* The tensor called name, or NULL. */
const struct gl__st_tensor *gl__st_find(const struct gl__st *st, const char *name);

#endif
