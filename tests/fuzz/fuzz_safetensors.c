/* libFuzzer target: model files. The input is a whole file, written to a
 * memfd and read through /proc/self/fd/N, first by the safetensors reader
 * (gl__st_read), then by the model loader (gl_nn_model_load: the reader,
 * then __metadata__, the architecture config, the tensor set and the
 * batch-norm folding), both by path as the daemon and the CLI read them.
 *
 * What the reader accepts must hold what its header promises: tensors
 * sorted by unique names, each inside the data section, with a float
 * pointer to numel readable floats, laid out without overlaps. A refusal
 * is GL_EFORMAT (GL_ENOMEM cannot happen at these sizes) with a message. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/err.h"
#include "nn/nn.h"
#include "nn/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(cond)                                                                              \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #cond);                                   \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

static int fd = -1;
static char path[64];

static void check_st(const struct gl__st *st, size_t size) {
  REQUIRE(st->size == size);
  REQUIRE(st->data >= st->file && st->data + st->data_size == st->file + st->size);
  REQUIRE(strlen(st->sha256) == 64);
  for (size_t i = 0; i < st->n_tensors; i++) {
    const struct gl__st_tensor *t = &st->tensors[i];
    REQUIRE(t->name);
    REQUIRE(i == 0 || strcmp(st->tensors[i - 1].name, t->name) < 0);
    REQUIRE(gl__st_find(st, t->name) == t);
    REQUIRE(t->ndim <= GL__ST_MAX_DIMS);
    uint64_t numel = 1;
    for (uint32_t k = 0; k < t->ndim; k++)
      numel *= t->shape[k];
    REQUIRE(numel == t->numel);
    REQUIRE(t->elem_size == 2 || t->elem_size == 4);
    REQUIRE(t->begin <= t->end && t->end <= st->data_size);
    REQUIRE(t->end - t->begin == t->numel * t->elem_size);
    REQUIRE(t->data != NULL && (uintptr_t)t->data % sizeof(float) == 0);
    /* Every float must be readable (ASan checks the bounds). */
    volatile float sink = 0;
    for (uint64_t k = 0; k < t->numel; k++)
      sink += t->data[k];
    (void)sink;
    for (size_t j = 0; j < i; j++) {
      const struct gl__st_tensor *u = &st->tensors[j];
      if (t->begin != t->end && u->begin != u->end)
        REQUIRE(t->end <= u->begin || u->end <= t->begin);
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (fd < 0) {
    fd = memfd_create("fuzz.safetensors", MFD_CLOEXEC);
    REQUIRE(fd >= 0);
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  }
  REQUIRE(ftruncate(fd, 0) == 0);
  REQUIRE(pwrite(fd, data, size, 0) == (ssize_t)size);

  char err[512];
  struct gl__st st;
  err[0] = 0;
  int rc = gl__st_read(path, &st, err, sizeof err);
  if (rc == 0) {
    check_st(&st, size);
    gl__st_fini(&st);
  } else {
    REQUIRE(rc == GL_EFORMAT);
    REQUIRE(err[0] != 0);
  }

  struct gl_nn_model *m = NULL;
  err[0] = 0;
  int mrc = gl_nn_model_load(path, &m, err, sizeof err);
  if (mrc == 0) {
    REQUIRE(rc == 0);
    REQUIRE(gl_nn_model_input_size(m) >= 32);
    REQUIRE(gl_nn_model_config_json(m) != NULL);
    gl_nn_model_destroy(m);
  } else {
    REQUIRE(mrc == GL_EFORMAT);
    REQUIRE(err[0] != 0);
    REQUIRE(m == NULL);
  }
  return 0;
}
