/* Helpers shared by the CLI commands that stream images to geolocd. */
#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "core/err.h"
#include "loc/fine.h"

uint64_t gl_cli_clock_us(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int has_image_ext(const char *name) {
  const char *dot = strrchr(name, '.');
  return dot && (strcasecmp(dot, ".jpg") == 0 || strcasecmp(dot, ".jpeg") == 0 ||
                 strcasecmp(dot, ".png") == 0);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Appends path, or a directory's image files in name order, to the list. */
int gl_cli_add_path(const char *path, char ***list, size_t *n) {
  struct stat st;
  if (stat(path, &st) != 0) {
    fprintf(stderr, "geoloc: %s: %s\n", path, strerror(errno));
    return GL_ENOENT;
  }
  size_t first = *n;
  if (S_ISDIR(st.st_mode)) {
    DIR *d = opendir(path);
    struct dirent *e;
    if (!d) {
      fprintf(stderr, "geoloc: %s: %s\n", path, strerror(errno));
      return GL_EIO;
    }
    while ((e = readdir(d))) {
      if (e->d_name[0] == '.' || !has_image_ext(e->d_name))
        continue;
      char **l = realloc(*list, (*n + 1) * sizeof **list);
      if (!l || asprintf(&l[*n], "%s/%s", path, e->d_name) < 0) {
        *list = l ? l : *list;
        closedir(d);
        return GL_ENOMEM;
      }
      *list = l;
      (*n)++;
    }
    closedir(d);
    qsort(*list + first, *n - first, sizeof **list, cmp_str);
    return GL_OK;
  }
  char **l = realloc(*list, (*n + 1) * sizeof **list);
  if (!l || !(l[*n] = strdup(path))) {
    *list = l ? l : *list;
    return GL_ENOMEM;
  }
  *list = l;
  (*n)++;
  return GL_OK;
}

int gl_cli_read_file(const char *path, uint8_t **data, size_t *len) {
  FILE *f = fopen(path, "rb");
  long size;
  *data = NULL;
  if (!f)
    return GL_ENOENT;
  if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0 ||
      !(*data = malloc((size_t)size + 1)) || fread(*data, 1, (size_t)size, f) != (size_t)size) {
    free(*data);
    *data = NULL;
    fclose(f);
    return GL_EIO;
  }
  fclose(f);
  *len = (size_t)size;
  return GL_OK;
}

Geoloc__V1__ImageFormat gl_cli_sniff_format(const uint8_t *d, size_t n) {
  if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF)
    return GEOLOC__V1__IMAGE_FORMAT__JPEG;
  if (n >= 8 && memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0)
    return GEOLOC__V1__IMAGE_FORMAT__PNG;
  return GEOLOC__V1__IMAGE_FORMAT__IMAGE_FORMAT_UNSPECIFIED;
}

const char *gl_cli_error_name(int code) {
  const ProtobufCEnumValue *v =
      protobuf_c_enum_descriptor_get_value(&geoloc__v1__error__code__descriptor, code);
  return v ? v->name : "ERROR";
}

const char *gl_cli_status_name(int status) {
  const ProtobufCEnumValue *v =
      protobuf_c_enum_descriptor_get_value(&geoloc__v1__estimate__status__descriptor, status);
  return v ? v->name : "UNKNOWN";
}


void gl_cli_tls_option(int o, const char *arg, struct gl_client_opts *co) {
  switch (o) {
  case 'a':
    co->tls_ca = arg;
    co->tls = true; /* a CA to verify the server with means TLS */
    break;
  case 'e':
    co->tls_cert = arg;
    break;
  case 'K':
    co->tls_key = arg;
    break;
  case 's':
    co->server_name = arg;
    break;
  }
}

bool gl_cli_fine_option(const char *prog, int o, const char *arg, struct gl_loc_fine_params *p,
                        bool *off) {
  char *end = NULL, err[256];
  double v = arg ? strtod(arg, &end) : 0;
  if (arg && (end == arg || *end)) {
    fprintf(stderr, "%s: '%s' is not a number\n", prog, arg);
    return false;
  }
  switch (o) {
  case 1000:
    *off = true;
    return true;
  case 1001:
    p->top_k = v >= 1 && v <= 1024 ? (uint32_t)v : 0;
    break;
  case 1002:
    p->radius_cells = v >= 0 && v <= 16 ? (uint32_t)v : 99;
    break;
  case 1003:
    p->step_deg = v;
    break;
  case 1004:
    p->tolerance_deg = v;
    break;
  case 1005:
    p->full_scan_cells = v >= 0 && v <= 1e7 ? (uint32_t)v : 0;
    break;
  }
  if (gl_loc_fine_params_check(p, err, sizeof err) != 0) {
    fprintf(stderr, "%s: %s\n", prog, err);
    return false;
  }
  return true;
}

int gl_cli_parse_prior(const char *arg, double *lat, double *lon, double *radius_m) {
  if (sscanf(arg, "%lf,%lf,%lf", lat, lon, radius_m) != 3 ||
      !(*lat >= -90 && *lat <= 90 && *lon >= -180 && *lon <= 180 && *radius_m > 0))
    return GL_EINVAL;
  return GL_OK;
}
