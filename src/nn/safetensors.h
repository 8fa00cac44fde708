/* Reader of safetensors files (layout and rules: python/geoloc_train/safetensors.py).
 *
 * The whole file is read once into memory. Every rule of the Python reader
 * is enforced, each failure with its own message naming the tensor or
 * field. Only F32 and F16 tensors are accepted (geoloc model files hold
 * nothing else; F16 halves the shipped file): F32 tensors point into the
 * file's copy, F16 ones are converted once to float32 into a buffer of
 * their own, so users of the tensors only ever see floats. */
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
  const char *dtype;   /* as stored in the file: "F32" or "F16" */
  uint32_t elem_size;  /* bytes per element in the file: 4 or 2 */
  const float *data;   /* 4-byte aligned host floats (F16 already converted) */
};

struct gl__st {
  void *mem;     /* the allocation holding file */
  uint8_t *file; /* the whole file */
  size_t size;
  const uint8_t *data; /* data section inside file */
  size_t data_size;
  float *wide;                   /* the F16 tensors converted to float; NULL if none */
  struct gl__st_tensor *tensors; /* sorted by name */
  size_t n_tensors;
  /* __metadata__ values (owned copies); NULL when the key is absent. */
  char *format, *format_version, *config;
  char sha256[65]; /* of the whole file as stored (F16 or not), lowercase hex */
};

/* Reads and validates path into *st (zeroed first). Returns 0, GL_ENOENT,
 * GL_EIO, GL_ENOMEM or GL_EFORMAT, with err saying what is wrong (prefixed
 * by the path). */
int gl__st_read(const char *path, struct gl__st *st, char *err, size_t errlen);

/* Releases everything gl__st_read filled in; safe on a zeroed struct. */
void gl__st_fini(struct gl__st *st);

/* The float32 value of an IEEE 754 binary16 (F16) element: exact for
 * every input, subnormals, infinities and NaNs (made quiet) included. */
float gl__st_f16_to_f32(uint16_t h);

/* The tensor called name, or NULL. */
const struct gl__st_tensor *gl__st_find(const struct gl__st *st, const char *name);

#endif
