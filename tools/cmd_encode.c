/* geoloc encode: descriptors of image files, computed on the CPU by the C
 * engine; one JSON array per image and line, like `python -m geoloc_train
 * encode` (the parity test compares the two). */
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "core/err.h"
#include "img/img.h"
#include "loc/fine.h"
#include "nn/nn.h"

#define DEFAULT_BATCH 8u
#define DEFAULT_MAX_PIXELS (64ull << 20)
/* The engine is planned for at least a full-HD frame, and re-planned only
 * when an image is larger than everything so far. */
#define ENGINE_MIN_PIXELS (1920ull * 1080ull)
#define ENGINE_MAX_PIXELS (1ull << 32)
#define ENCODE_MAX_HEADINGS 360

static void usage(FILE *f) {
  fprintf(f, "usage: geoloc encode --model M.safetensors [options] IMAGE...\n"
             "\n"
             "Prints the descriptor of each JPEG or PNG image as a JSON array of floats,\n"
             "one line per image, in the order given.\n"
             "\n"
             "  --model FILE       model file (safetensors, see python/geoloc_train)\n"
             "  --threads N        CPU threads (default: all cores)\n"
             "  --batch N          images per engine call (default 8)\n"
             "  --max-pixels N     refuse images with more pixels (default 67108864)\n"
             "\n"
             "       geoloc encode --model M.safetensors --dense L --out F.f32 [--heading H,...] IMAGE\n"
             "\n"
             "Writes the L2-normalised feature cells of backbone block L as raw float32 to\n"
             "F.f32 and their shape to stdout: with --heading, the image warped north-up at each\n"
             "heading (the fine stage's query, [headings][rows][cols][channels]); without, the\n"
             "whole image as a map canvas in 512-pixel blocks with the block's context\n"
             "([rows][cols][channels]; sides multiples of the cells' stride), as the map\n"
             "builder computes a pack's dense layer.\n");
}

/* %.9g round-trips a float; non-finite values are spelled as Python's
 * json.dumps spells them. */
static void print_vector(const float *v, uint32_t n) {
  putchar('[');
  for (uint32_t i = 0; i < n; i++) {
    if (i)
      fputs(", ", stdout);
    if (isnan(v[i]))
      fputs("NaN", stdout);
    else if (isinf(v[i]))
      fputs(v[i] > 0 ? "Infinity" : "-Infinity", stdout);
    else
      printf("%.9g", (double)v[i]);
  }
  fputs("]\n", stdout);
}

/* Prints err, naming path unless the message already does. */
static void report(const char *path, const char *err) {
  if (strstr(err, path))
    fprintf(stderr, "geoloc encode: %s\n", err);
  else
    fprintf(stderr, "geoloc encode: %s: %s\n", path, err);
}

/* --dense: the fine stage's features of one image (see usage). */
static int encode_dense(const struct gl_nn_model *model, uint32_t layer, const double *headings,
                        uint32_t nh, uint32_t threads, const char *path, const char *out_path) {
  char err[512];
  struct gl_image img = {0};
  struct gl_nn_cells *e = NULL;
  float hd[ENCODE_MAX_HEADINGS], *out = NULL;
  uint8_t *pix = NULL, *base = NULL;
  struct gl_image warped[ENCODE_MAX_HEADINGS];
  uint32_t S, side, ch, stride;
  int status = 1;
  for (uint32_t h = 0; h < nh; h++)
    hd[h] = (float)headings[h];
  if (gl_img_load(path, DEFAULT_MAX_PIXELS, &img, err, sizeof err) != GL_OK) {
    report(path, err);
    return 1;
  }
  if (gl_nn_cells_create(model, layer, nh, threads, &e, err, sizeof err) != GL_OK) {
    fprintf(stderr, "geoloc encode: %s\n", err);
    goto done;
  }
  gl_nn_cells_shape(e, &S, &side, &ch, &stride);
  size_t n_out = nh ? (size_t)nh * side * side * ch
                    : (size_t)(img.height / stride) * (img.width / stride) * ch;
  int rc;
  if (!(out = malloc(n_out * sizeof *out)) || !(pix = malloc((size_t)(nh ? nh : 1) * S * S * 3)) ||
      !(base = malloc((size_t)4 * S * S * 3))) {
    fprintf(stderr, "geoloc encode: out of memory\n");
    goto done;
  }
  if (nh) {
    for (uint32_t h = 0; h < nh; h++)
      warped[h] = (struct gl_image){pix + (size_t)h * S * S * 3, S, S};
    gl_loc_fine_warp(&img, hd, nh, S, base, warped);
    rc = gl_nn_cells_compute(e, warped, nh, out);
  } else {
    rc = gl_nn_cells_tiled(e, &img, out);
  }
  if (rc != GL_OK) {
    report(path, rc == GL_EINVAL ? "the image's sides must be multiples of the cells' stride"
                                 : gl_strerror(rc));
    goto done;
  }
  if (nh)
    printf("%u %u %u %u\n", nh, side, side, ch);
  else
    printf("%u %u %u\n", img.height / stride, img.width / stride, ch);
  FILE *f = fopen(out_path, "wb");
  if (!f || fwrite(out, sizeof *out, n_out, f) != n_out) {
    fprintf(stderr, "geoloc encode: %s: cannot write it\n", out_path);
    if (f)
      fclose(f);
    goto done;
  }
  status = fclose(f) == 0 ? 0 : 1;
done:
  free(base);
  free(pix);
  free(out);
  gl_nn_cells_destroy(e);
  gl_img_free(&img);
  return status;
}

struct encode_opts {
  const char *model_path, *out_path;
  uint32_t threads, batch, dense;
  uint64_t max_pixels;
  double headings[ENCODE_MAX_HEADINGS]; /* --heading: the fine stage's query */
  size_t n_headings;
  char **paths;
  uint32_t n_paths;
};

static int encode_option(void *opts, int o, const char *flag, const char *arg) {
  struct encode_opts *cfg = opts;
  switch (o) {
  case 'm':
    cfg->model_path = arg;
    return GL_OK;
  case 't':
    return gl_cli_u32(flag, arg, 0, GL_CLI_MAX_THREADS, &cfg->threads);
  case 'b':
    return gl_cli_u32(flag, arg, 1, 1024, &cfg->batch);
  case 'p':
    return gl_cli_u64(flag, arg, 1, ENGINE_MAX_PIXELS, &cfg->max_pixels);
  case 'd':
    return gl_cli_u32(flag, arg, 1, 17, &cfg->dense);
  case 'H':
    if (gl_cli_doubles(arg, cfg->headings, ENCODE_MAX_HEADINGS, &cfg->n_headings) != GL_OK) {
      fprintf(stderr, "geoloc encode: --heading wants degrees, comma-separated (at most %d)\n",
              ENCODE_MAX_HEADINGS);
      return GL_EINVAL;
    }
    return GL_OK;
  case 'o':
    cfg->out_path = arg;
    return GL_OK;
  }
  return GL_EINVAL;
}

static int encode_parse(int argc, char **argv, struct encode_opts *cfg) {
  static const struct option opts[] = {
      {"model", required_argument, NULL, 'm'}, {"threads", required_argument, NULL, 't'},
      {"batch", required_argument, NULL, 'b'}, {"max-pixels", required_argument, NULL, 'p'},
      {"dense", required_argument, NULL, 'd'}, {"heading", required_argument, NULL, 'H'},
      {"out", required_argument, NULL, 'o'},   {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  *cfg = (struct encode_opts){.batch = DEFAULT_BATCH, .max_pixels = DEFAULT_MAX_PIXELS};
  int st = gl_cli_getopt(argc, argv, "m:", opts, encode_option, cfg, usage);
  if (st != GL_CLI_RUN)
    return st;
  bool dense = cfg->dense || cfg->n_headings || cfg->out_path;
  if (!cfg->model_path || optind >= argc ||
      (dense && (!cfg->dense || !cfg->out_path || optind + 1 != argc))) {
    usage(stderr);
    return 2;
  }
  cfg->paths = argv + optind;
  cfg->n_paths = (uint32_t)(argc - optind);
  if (cfg->n_paths < cfg->batch)
    cfg->batch = cfg->n_paths;
  return GL_CLI_RUN;
}

static int encode_run(const struct encode_opts *cfg) {
  char *const *paths = cfg->paths;
  const uint32_t n_paths = cfg->n_paths, batch = cfg->batch, threads = cfg->threads;
  const char *model_path = cfg->model_path;
  char err[512];
  int status = 1, rc;
  struct gl_nn_model *model = NULL;
  struct gl_nn_engine *engine = NULL;
  uint64_t engine_pixels = 0;
  struct gl_image *imgs = NULL;
  float *out = NULL;

  rc = gl_nn_model_load(model_path, &model, err, sizeof err);
  if (rc != GL_OK) {
    report(model_path, err[0] ? err : gl_strerror(rc));
    return 1;
  }
  if (cfg->dense) {
    status = encode_dense(model, cfg->dense, cfg->headings, (uint32_t)cfg->n_headings, threads,
                          paths[0], cfg->out_path);
    gl_nn_model_destroy(model);
    return status;
  }
  uint32_t dim = gl_nn_model_descriptor_dim(model);
  if (dim == 0) {
    report(model_path, "the model has no descriptor head");
    goto done;
  }
  imgs = calloc(batch, sizeof *imgs);
  out = malloc((size_t)batch * dim * sizeof *out);
  if (!imgs || !out) {
    fprintf(stderr, "geoloc encode: out of memory\n");
    goto done;
  }

  for (uint32_t first = 0; first < n_paths; first += batch) {
    uint32_t n = n_paths - first < batch ? n_paths - first : batch;
    uint64_t need = 0;
    /* On a bad image, the ones before it are still encoded and printed (as
     * the Python command does), then the command fails. */
    const char *bad_path = NULL;
    char img_err[512];
    for (uint32_t k = 0; k < n; k++) {
      rc = gl_img_load(paths[first + k], cfg->max_pixels, &imgs[k], img_err, sizeof img_err);
      if (rc != GL_OK) {
        if (!img_err[0])
          snprintf(img_err, sizeof img_err, "%s", gl_strerror(rc));
        bad_path = paths[first + k];
        n = k;
        break;
      }
      uint64_t px = (uint64_t)imgs[k].width * imgs[k].height;
      if (px > need)
        need = px;
    }
    if (n > 0 && (!engine || need > engine_pixels)) {
      gl_nn_engine_destroy(engine);
      engine = NULL;
      engine_pixels = need > ENGINE_MIN_PIXELS ? need : ENGINE_MIN_PIXELS;
      struct gl_nn_engine_opts eo = {
          .backend = GL_NN_BACKEND_CPU,
          .max_batch = batch,
          .threads = threads,
          .max_input_pixels = engine_pixels,
      };
      err[0] = '\0';
      rc = gl_nn_engine_create(model, &eo, &engine, err, sizeof err);
      if (rc != GL_OK) {
        fprintf(stderr, "geoloc encode: cannot create the CPU engine: %s\n",
                err[0] ? err : gl_strerror(rc));
        engine = NULL;
        goto free_batch;
      }
    }
    if (n > 0) {
      rc = gl_nn_engine_encode(engine, imgs, n, out);
      if (rc != GL_OK) {
        fprintf(stderr, "geoloc encode: encoding %s%s failed: %s\n", paths[first],
                n > 1 ? " and the rest of its batch" : "", gl_strerror(rc));
        goto free_batch;
      }
    }
    for (uint32_t k = 0; k < n; k++) {
      print_vector(out + (size_t)k * dim, dim);
      gl_img_free(&imgs[k]);
    }
    if (bad_path) {
      fflush(stdout);
      report(bad_path, img_err);
      goto free_batch;
    }
  }
  if (fflush(stdout) != 0 || ferror(stdout)) {
    fprintf(stderr, "geoloc encode: cannot write the output\n");
    goto done;
  }
  status = 0;
  goto done;

free_batch:
  for (uint32_t k = 0; k < batch; k++)
    gl_img_free(&imgs[k]);
done:
  free(out);
  free(imgs);
  gl_nn_engine_destroy(engine);
  gl_nn_model_destroy(model);
  return status;
}

int gl_cmd_encode(int argc, char **argv) {
  struct encode_opts cfg;
  int st = encode_parse(argc, argv, &cfg);
  return st == GL_CLI_RUN ? encode_run(&cfg) : st;
}
