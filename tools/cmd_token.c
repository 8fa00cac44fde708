/* geoloc token hash: the [token NAME] hash line of geolocd's configuration
 * for a client token (core/auth.h). The token is read from stdin, never
 * from argv (where ps would show it), or made with --new. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "core/auth.h"
#include "core/err.h"

#define GL__NEW_TOKEN_BYTES 32

static void usage(FILE *f) {
  fprintf(f, "usage: geoloc token hash [--new]\n"
             "\n"
             "Prints the line 'hash = sha256:SALT:HASH' of a [token NAME] section of\n"
             "geolocd.conf, with a fresh random salt. The token is the first line of\n"
             "stdin; with --new, a random one (32 bytes, base64url) is made and printed\n"
             "on the line before. Clients send it with --token or $GEOLOC_TOKEN.\n");
}

static int token_option(void *opts, int o, const char *flag, const char *arg) {
  (void)flag;
  (void)arg;
  if (o != 'n')
    return GL_EINVAL;
  *(int *)opts = 1;
  return GL_OK;
}

/* base64url without padding: a token that needs no quoting anywhere. */
static void base64url(const unsigned char *in, size_t n, char *out) {
  static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n; i++) {
    acc = acc << 8 | in[i];
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      *out++ = a[(acc >> bits) & 63];
    }
  }
  if (bits > 0)
    *out++ = a[(acc << (6 - bits)) & 63];
  *out = '\0';
}

/* The first line of stdin, without its line end, into buf. */
static int read_token(char *buf, size_t cap) {
  if (!fgets(buf, (int)cap, stdin)) {
    fprintf(stderr, "geoloc: no token on stdin\n");
    return GL_EINVAL;
  }
  size_t n = strlen(buf);
  if (n == cap - 1 && buf[n - 1] != '\n') {
    fprintf(stderr, "geoloc: token longer than %d bytes\n", GL_AUTH_MAX_TOKEN);
    return GL_EINVAL;
  }
  buf[strcspn(buf, "\r\n")] = '\0';
  if (!buf[0]) {
    fprintf(stderr, "geoloc: empty token\n");
    return GL_EINVAL;
  }
  return GL_OK;
}

int gl_cmd_token(int argc, char **argv) {
  static const struct option opts[] = {
      {"new", no_argument, NULL, 'n'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  if (argc < 2 || strcmp(argv[1], "hash") != 0) {
    if (argc >= 2 && strcmp(argv[1], "--help") == 0) {
      usage(stdout);
      return 0;
    }
    usage(stderr);
    return 2;
  }
  int new_token = 0;
  int st = gl_cli_getopt(argc - 1, argv + 1, "", opts, token_option, &new_token, usage);
  if (st != GL_CLI_RUN)
    return st;
  if (optind != argc - 1) {
    usage(stderr);
    return 2;
  }
  char token[GL_AUTH_MAX_TOKEN + 2];
  int status = 1, rc;
  if (new_token) {
    unsigned char raw[GL__NEW_TOKEN_BYTES];
    rc = gl_auth_random(raw, sizeof raw);
    base64url(raw, sizeof raw, token);
    explicit_bzero(raw, sizeof raw);
  } else {
    rc = read_token(token, sizeof token);
    if (rc != GL_OK)
      goto done;
  }
  struct gl_auth_hash h;
  if (rc == GL_OK)
    rc = gl_auth_make(token, strlen(token), &h);
  if (rc != GL_OK) {
    fprintf(stderr, "geoloc: cannot hash the token: %s\n", gl_strerror(rc));
    goto done;
  }
  char text[GL_AUTH_TEXT_LEN];
  gl_auth_format(&h, text);
  if (new_token)
    printf("%s\n", token);
  printf("hash = %s\n", text);
  status = fflush(stdout) == 0 ? 0 : 1;
done:
  explicit_bzero(token, sizeof token);
  return status;
}
