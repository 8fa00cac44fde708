/* geoloc inspect: what a model file holds (config, size, hash), or what a
 * map pack holds (a directory with a manifest.json: gl_map_inspect). Any
 * other path is read as a model and the loader's message says what is
 * wrong with it. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "core/err.h"
#include "map/map.h"
#include "nn/nn.h"

static void usage(FILE *f) {
  fprintf(f, "usage: geoloc inspect MODEL.safetensors|NAME.map\n"
             "\n"
             "For a model: its SHA-256, parameter count, descriptor size and its\n"
             "architecture config (JSON). For a map pack: its manifest summary (model,\n"
             "index, tiling, headings and years per tile, the source rasters with their\n"
             "capture dates and the places each covers) and whether its checksums verify.\n");
}

/* Skips a JSON string starting at its opening quote; returns the character
 * after the closing quote (or the terminating NUL of malformed text). */
static const char *skip_string(const char *p) {
  for (p++; *p && *p != '"'; p++)
    if (*p == '\\' && p[1])
      p++;
  return *p ? p + 1 : p;
}

/* Finds the bracket closing the container at p; *flat tells whether it holds
 * no nested container, *empty whether it holds nothing. NULL if unclosed. */
static const char *container_end(const char *p, bool *flat, bool *empty) {
  int depth = 0;
  *flat = true;
  *empty = true;
  while (*p) {
    if (*p == '"') {
      if (depth == 1)
        *empty = false;
      p = skip_string(p);
      continue;
    }
    if (*p == '{' || *p == '[') {
      if (depth >= 1) {
        *flat = false;
        *empty = false;
      }
      depth++;
    } else if (*p == '}' || *p == ']') {
      if (--depth == 0)
        return p;
    } else if (depth >= 1 && !strchr(" \t\r\n", *p)) {
      *empty = false;
    }
    p++;
  }
  return NULL;
}

static void indent(FILE *f, int depth) {
  fputc('\n', f);
  for (int i = 0; i < depth; i++)
    fputs("  ", f);
}

/* Re-indents JSON text two spaces a level; arrays of scalars (mean, std,
 * input_size) stay on one line. The text was validated by the loader; on
 * anything unexpected the rest is printed as it is. */
static void print_json(FILE *f, const char *p) {
  int depth = 0;
  const char *inline_end = NULL; /* inside a one-line array up to here */
  while (*p) {
    char c = *p;
    if (strchr(" \t\r\n", c)) {
      p++;
      continue;
    }
    if (c == '"') {
      const char *e = skip_string(p);
      fwrite(p, 1, (size_t)(e - p), f);
      p = e;
      continue;
    }
    if ((c == '{' || c == '[') && !inline_end) {
      bool flat, empty;
      const char *e = container_end(p, &flat, &empty);
      if (!e) {
        fputs(p, f);
        break;
      }
      if (empty) {
        fputc(c, f);
        fputc(*e, f);
        p = e + 1;
        continue;
      }
      fputc(c, f);
      if (c == '[' && flat) {
        inline_end = e;
      } else {
        indent(f, ++depth);
      }
      p++;
      continue;
    }
    if (c == '}' || c == ']') {
      if (inline_end == p) {
        inline_end = NULL;
      } else {
        indent(f, --depth < 0 ? 0 : depth);
      }
      fputc(c, f);
      p++;
      continue;
    }
    if (c == ',') {
      if (inline_end)
        fputs(", ", f);
      else {
        fputc(',', f);
        indent(f, depth);
      }
      p++;
      continue;
    }
    if (c == ':') {
      fputs(": ", f);
      p++;
      continue;
    }
    fputc(c, f);
    p++;
  }
  fputc('\n', f);
}

int gl_cmd_inspect(int argc, char **argv) {
  if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
    usage(stdout);
    return 0;
  }
  if (argc != 2 || argv[1][0] == '-') {
    usage(stderr);
    return 2;
  }
  const char *path = argv[1];
  char err[512] = "";
  if (gl_map_is_pack(path)) {
    if (gl_map_inspect(path, stdout, err, sizeof err) != GL_OK) {
      fprintf(stderr, "geoloc inspect: %s\n", err);
      return 1;
    }
    return 0;
  }
  struct gl_nn_model *m = NULL;
  int rc = gl_nn_model_load(path, &m, err, sizeof err);
  if (rc != GL_OK) {
    const char *msg = err[0] ? err : gl_strerror(rc);
    if (strstr(msg, path))
      fprintf(stderr, "geoloc inspect: %s\n", msg);
    else
      fprintf(stderr, "geoloc inspect: %s: %s\n", path, msg);
    return 1;
  }
  uint64_t params = gl_nn_model_param_count(m);
  uint32_t dim = gl_nn_model_descriptor_dim(m);
  printf("model:       %s\n", path);
  printf("sha256:      %s\n", gl_nn_model_sha256(m));
  printf("parameters:  %llu (%.2f M)\n", (unsigned long long)params, (double)params / 1e6);
  if (dim)
    printf("descriptor:  %u floats\n", (unsigned)dim);
  else
    printf("descriptor:  none (no descriptor head)\n");
  printf("config:      ");
  const char *cfg = gl_nn_model_config_json(m);
  print_json(stdout, cfg ? cfg : "null");
  gl_nn_model_destroy(m);
  if (fflush(stdout) != 0 || ferror(stdout)) {
    fprintf(stderr, "geoloc inspect: cannot write the output\n");
    return 1;
  }
  return 0;
}
