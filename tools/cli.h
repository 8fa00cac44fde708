/* Helpers shared by the CLI commands that stream images to geolocd. */
#ifndef GL_TOOLS_CLI_H
#define GL_TOOLS_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "client/client.h"
#include "proto/wire.h"

/* The TLS options of every command that connects to geolocd, for its
 * getopt_long table; their values are 'a', 'e', 'K' and 's'. */
#define GL_CLI_TLS_OPTIONS                                                                     \
  {"tls-ca", required_argument, NULL, 'a'}, {"tls-cert", required_argument, NULL, 'e'},        \
      {"tls-key", required_argument, NULL, 'K'}, {"server-name", required_argument, NULL, 's'}

/* Applies one of GL_CLI_TLS_OPTIONS (o is its value) to co. */
void gl_cli_tls_option(int o, const char *arg, struct gl_client_opts *co);

/* The fine stage's options of locate and eval (option values 1000..1005). */
#define GL_CLI_FINE_OPTIONS                                                                    \
  {"no-fine", no_argument, NULL, 1000}, {"fine-top-k", required_argument, NULL, 1001},          \
      {"fine-radius", required_argument, NULL, 1002},                                          \
      {"heading-step", required_argument, NULL, 1003},                                         \
      {"heading-tolerance", required_argument, NULL, 1004},                                    \
      {"fine-full-scan", required_argument, NULL, 1005}
#define GL_CLI_FINE_USAGE                                                                      \
  "  --no-fine           rank the global matches only (no fine stage)\n"                       \
  "  --fine-top-k K      global candidates the fine stage re-scores (default 50)\n"            \
  "  --fine-radius R     shift radius around each, in cells (default 2)\n"                     \
  "  --heading-step D    heading step of the fine stage, degrees (default 10)\n"               \
  "  --heading-tolerance D  with a compass heading, scan +-D degrees (default 20)\n"       \
  "  --fine-full-scan N  scan every placement of a map of at most N cells\n"

/* Applies one of GL_CLI_FINE_OPTIONS to p (*off for --no-fine). Returns false
 * for a value that does not parse or is out of range (after printing why). */
struct gl_loc_fine_params;
bool gl_cli_fine_option(const char *prog, int o, const char *arg, struct gl_loc_fine_params *p,
                        bool *off);

/* Parses "LAT,LON,RADIUS_M" (degrees, metres > 0). Returns 0 or GL_EINVAL. */
int gl_cli_parse_prior(const char *arg, double *lat, double *lon, double *radius_m);

/* Microseconds on clock id. */
uint64_t gl_cli_clock_us(clockid_t id);

/* Appends path to *list, or for a directory its .jpg/.jpeg/.png files in
 * name order. Prints what went wrong and returns a GL_E* code on failure. */
int gl_cli_add_path(const char *path, char ***list, size_t *n);

/* Reads a whole file into a new buffer. */
int gl_cli_read_file(const char *path, uint8_t **data, size_t *len);

/* JPEG or PNG from the magic bytes; unspecified for anything else. */
Geoloc__V1__ImageFormat gl_cli_sniff_format(const uint8_t *d, size_t n);

/* Names of protocol enum values ("UNAVAILABLE", "BUSY"). */
const char *gl_cli_error_name(int code);
const char *gl_cli_status_name(int status);

#endif
