/* Helpers shared by the CLI commands: option parsing, and what the commands
 * that stream images to geolocd have in common. */
#ifndef GL_TOOLS_CLI_H
#define GL_TOOLS_CLI_H

#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include "client/client.h"
#include "proto/wire.h"

/* --- options ------------------------------------------------------------------ */

/* Option values are parsed one way: the whole string, in range. On failure
 * these print `geoloc: --threads: "abc" is not an integer in 0..1024` (flag
 * as given, "--threads") and return GL_EINVAL, leaving *out unchanged.
 * Integers are decimal digits only: no sign, space or empty string. */
int gl_cli_u32(const char *flag, const char *s, uint32_t min, uint32_t max, uint32_t *out);
int gl_cli_u64(const char *flag, const char *s, uint64_t min, uint64_t max, uint64_t *out);
/* A finite decimal number in [min, max]. */
int gl_cli_double(const char *flag, const char *s, double min, double max, double *out);
/* A finite decimal number in (0, max]: a size, a speed, a duration. */
int gl_cli_positive(const char *flag, const char *s, double max, double *out);
/* 1 to max_n comma-separated finite numbers ("1.5,-2,3"), *n of them; prints
 * nothing, since each caller says what the list means. GL_EINVAL. */
int gl_cli_doubles(const char *s, double *out, size_t max_n, size_t *n);

/* CPU threads of --threads: 0 means all cores. */
#define GL_CLI_MAX_THREADS 1024u

/* A command is parsed into its options struct, then run from it. Its parse
 * function returns GL_CLI_RUN when the struct is ready to run, else the
 * process's exit status (0 after --help, 2 for wrong usage). */
#define GL_CLI_RUN (-1)

/* Applies one option to a command's options struct: o is its getopt value,
 * flag its name ("--threads"), arg its argument (NULL for a flag without
 * one). Returns GL_OK, or GL_EINVAL after printing why. */
typedef int (*gl_cli_apply_fn)(void *opts, int o, const char *flag, const char *arg);

/* The option loop of every command: getopt_long over argv, each option
 * handed to apply. Returns GL_CLI_RUN with optind at the first operand; 0
 * for --help (value 'h'), after printing usage to stdout; 2 for an unknown
 * option (usage to stderr) or one that apply refused. */
int gl_cli_getopt(int argc, char **argv, const char *shortopts, const struct option *longopts,
                  gl_cli_apply_fn apply, void *opts, void (*usage)(FILE *));

/* The TLS options of every command that connects to geolocd, for its
 * getopt_long table; their values are 'a', 'e', 'K' and 's', and 'T' for
 * --token (Hello.token; without it, $GEOLOC_TOKEN). */
#define GL_CLI_TLS_OPTIONS                                                                     \
  {"tls-ca", required_argument, NULL, 'a'}, {"tls-cert", required_argument, NULL, 'e'},        \
      {"tls-key", required_argument, NULL, 'K'}, {"server-name", required_argument, NULL, 's'}, \
      {"token", required_argument, NULL, 'T'}
#define GL_CLI_TOKEN_USAGE                                                                     \
  "  --token T           the server's client token (default: $GEOLOC_TOKEN; the\n"            \
  "                      variable keeps it out of ps)\n"

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

/* Applies one of GL_CLI_FINE_OPTIONS to p (*off for --no-fine), as a
 * gl_cli_apply_fn does: GL_OK, or GL_EINVAL for a value that does not parse
 * or is out of range (after printing why). */
struct gl_loc_fine_params;
int gl_cli_fine_option(int o, const char *flag, const char *arg, struct gl_loc_fine_params *p,
                       bool *off);

/* Parses "LAT,LON,RADIUS_M" (degrees, metres in (0, 2e7]). Returns 0 or
 * GL_EINVAL; prints nothing. */
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
