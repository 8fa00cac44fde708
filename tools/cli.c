/* Helpers shared by the CLI commands that stream images to geolocd. */
#include "cli.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
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
  case 'T':
    co->token = arg;
    break;
  }
}

int gl_cli_fine_option(int o, const char *flag, const char *arg, struct gl_loc_fine_params *p,
                       bool *off) {
  char err[256];
  int rc = GL_OK;
  switch (o) {
  case 1000:
    *off = true;
    return GL_OK;
  case 1001:
    rc = gl_cli_u32(flag, arg, 1, 1024, &p->top_k);
    break;
  case 1002:
    rc = gl_cli_u32(flag, arg, 0, 16, &p->radius_cells);
    break;
  case 1003:
    rc = gl_cli_double(flag, arg, 1, 180, &p->step_deg);
    break;
  case 1004:
    rc = gl_cli_double(flag, arg, 0, 180, &p->tolerance_deg);
    break;
  case 1005:
    rc = gl_cli_u32(flag, arg, 0, 1000000, &p->full_scan_cells);
    break;
  }
  /* What a range cannot say: the heading step must divide 360. */
  if (rc == GL_OK && (rc = gl_loc_fine_params_check(p, err, sizeof err)) != GL_OK)
    fprintf(stderr, "geoloc: %s: %s\n", flag, err);
  return rc;
}

int gl_cli_parse_prior(const char *arg, double *lat, double *lon, double *radius_m) {
  double v[3];
  size_t n;
  if (gl_cli_doubles(arg, v, 3, &n) != GL_OK || n != 3 ||
      !(v[0] >= -90 && v[0] <= 90 && v[1] >= -180 && v[1] <= 180 && v[2] > 0 && v[2] <= 2e7))
    return GL_EINVAL;
  *lat = v[0];
  *lon = v[1];
  *radius_m = v[2];
  return GL_OK;
}

/* --- options ------------------------------------------------------------------ */

/* The whole of s as decimal digits; strtoull alone would take a sign,
 * leading space and trailing junk, and turn "-1" into a huge value. */
static int gl__cli_digits(const char *s, uint64_t *out) {
  char *end;
  if (!s || !isdigit((unsigned char)*s))
    return GL_EINVAL;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno == ERANGE || *end)
    return GL_EINVAL;
  *out = v;
  return GL_OK;
}

/* A finite number at the start of s, ending at *end; no leading space
 * (strtod would skip it), no "nan" or "inf". */
static int gl__cli_number(const char *s, char **end, double *out) {
  if (!s || !*s || isspace((unsigned char)*s))
    return GL_EINVAL;
  double v = strtod(s, end);
  if (*end == s || !isfinite(v))
    return GL_EINVAL;
  *out = v;
  return GL_OK;
}

int gl_cli_u64(const char *flag, const char *s, uint64_t min, uint64_t max, uint64_t *out) {
  uint64_t v;
  if (gl__cli_digits(s, &v) != GL_OK || v < min || v > max) {
    fprintf(stderr, "geoloc: %s: \"%s\" is not an integer in %llu..%llu\n", flag, s ? s : "",
            (unsigned long long)min, (unsigned long long)max);
    return GL_EINVAL;
  }
  *out = v;
  return GL_OK;
}

int gl_cli_u32(const char *flag, const char *s, uint32_t min, uint32_t max, uint32_t *out) {
  uint64_t v;
  int rc = gl_cli_u64(flag, s, min, max, &v);
  if (rc == GL_OK)
    *out = (uint32_t)v;
  return rc;
}

/* [min, max], or (0, max] when open. */
static int gl__cli_real(const char *flag, const char *s, bool open, double min, double max,
                        double *out) {
  char *end = NULL;
  double v;
  if (gl__cli_number(s, &end, &v) != GL_OK || *end || !(open ? v > min : v >= min) || !(v <= max)) {
    fprintf(stderr, "geoloc: %s: \"%s\" is not a number in %s%g, %g]\n", flag, s ? s : "",
            open ? "(" : "[", min, max);
    return GL_EINVAL;
  }
  *out = v;
  return GL_OK;
}

int gl_cli_double(const char *flag, const char *s, double min, double max, double *out) {
  return gl__cli_real(flag, s, false, min, max, out);
}

int gl_cli_positive(const char *flag, const char *s, double max, double *out) {
  return gl__cli_real(flag, s, true, 0, max, out);
}

int gl_cli_doubles(const char *s, double *out, size_t max_n, size_t *n) {
  size_t k = 0;
  for (;;) {
    char *end;
    double v;
    if (k == max_n || gl__cli_number(s, &end, &v) != GL_OK || (*end && *end != ','))
      return GL_EINVAL;
    out[k++] = v;
    if (!*end)
      break;
    s = end + 1;
  }
  *n = k;
  return GL_OK;
}

/* "--name" of option value o, for messages. */
static const char *gl__cli_flag(const struct option *longopts, int o, char *buf, size_t len) {
  for (const struct option *p = longopts; p->name; p++)
    if (!p->flag && p->val == o) {
      snprintf(buf, len, "--%s", p->name);
      return buf;
    }
  snprintf(buf, len, "-%c", o);
  return buf;
}

int gl_cli_getopt(int argc, char **argv, const char *shortopts, const struct option *longopts,
                  gl_cli_apply_fn apply, void *opts, void (*usage)(FILE *)) {
  char flag[64];
  int o;
  while ((o = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1) {
    if (o == 'h') {
      usage(stdout);
      return 0;
    }
    if (o == '?' || o == ':') {
      usage(stderr);
      return 2;
    }
    if (apply(opts, o, gl__cli_flag(longopts, o, flag, sizeof flag), optarg) != GL_OK)
      return 2;
  }
  return GL_CLI_RUN;
}
