/* geoloc ping: handshake with geolocd and measure round trips. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "client/client.h"
#include "commands.h"
#include "core/err.h"

static void usage(FILE *f) {
  fprintf(f, "usage: geoloc ping --connect ADDR [--count N] [--token T] [TLS options]\n"
             "\n"
             "ADDR is HOST:PORT, [IPv6]:PORT or unix:PATH. TLS options:\n"
             "  --tls-ca FILE     CA that signed the server certificate (enables TLS)\n"
             "  --tls-cert FILE   client certificate\n"
             "  --tls-key FILE    client private key\n"
             "  --server-name N   name to verify in the server certificate\n"
             "  --token T         the server's client token (default: $GEOLOC_TOKEN)\n");
}

static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Prints a server Error and returns 1, or returns 0 for any other message. */
static int print_if_error(const gl_server_msg *m) {
  if (m->msg_case != GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR)
    return 0;
  const ProtobufCEnumValue *ev =
      protobuf_c_enum_descriptor_get_value(&geoloc__v1__error__code__descriptor, m->error->code);
  fprintf(stderr, "geoloc: server error %s: %s\n", ev ? ev->name : "?",
          m->error->message ? m->error->message : "");
  return 1;
}

struct ping_opts {
  struct gl_client_opts co;
  uint32_t count;
};

static int ping_option(void *opts, int o, const char *flag, const char *arg) {
  struct ping_opts *po = opts;
  switch (o) {
  case 'c':
    po->co.address = arg;
    return GL_OK;
  case 'n':
    return gl_cli_u32(flag, arg, 1, 1000000, &po->count);
  case 'a':
  case 'e':
  case 'K':
  case 's':
  case 'T':
    gl_cli_tls_option(o, arg, &po->co);
    return GL_OK;
  }
  return GL_EINVAL;
}

static int ping_parse(int argc, char **argv, struct ping_opts *po) {
  static const struct option opts[] = {
      {"connect", required_argument, NULL, 'c'},  {"count", required_argument, NULL, 'n'},
      GL_CLI_TLS_OPTIONS,
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  *po = (struct ping_opts){.count = 4};
  int st = gl_cli_getopt(argc, argv, "c:n:", opts, ping_option, po, usage);
  if (st != GL_CLI_RUN)
    return st;
  if (!po->co.address || optind != argc) {
    usage(stderr);
    return 2;
  }
  if ((po->co.tls_cert || po->co.tls_key) && !po->co.tls) {
    fprintf(stderr, "geoloc: --tls-cert/--tls-key need --tls-ca\n");
    return 2;
  }
  return GL_CLI_RUN;
}

static int ping_run(const struct ping_opts *po) {
  const struct gl_client_opts co = po->co;
  const long count = po->count;
  char err[256];
  struct gl_client *c;
  int rc = gl_client_connect(&co, &c, err, sizeof err);
  if (rc != GL_OK) {
    fprintf(stderr, "geoloc: %s\n", err);
    return 1;
  }
  gl_server_msg *m = NULL;
  int status = 1;
  rc = gl_client_hello(c, "geoloc ping", NULL, 0, 10000, &m);
  if (rc != GL_OK)
    goto io_error;
  if (print_if_error(m))
    goto done;
  printf("connected to %s: %s, protocol %u, session %llu\n", co.address,
         m->welcome->server ? m->welcome->server : "?", m->welcome->protocol_version,
         (unsigned long long)m->welcome->session_id);
  for (long i = 0; i < count; i++) {
    Geoloc__V1__Ping ping = GEOLOC__V1__PING__INIT;
    gl_client_msg cm = GEOLOC__V1__CLIENT_MESSAGE__INIT;
    uint64_t t0 = now_us();
    ping.has_nonce = 1;
    ping.nonce = (uint64_t)i;
    cm.msg_case = GEOLOC__V1__CLIENT_MESSAGE__MSG_PING;
    cm.ping = &ping;
    gl_wire_free(m);
    m = NULL;
    rc = gl_client_send(c, &cm);
    if (rc == GL_OK)
      rc = gl_client_recv(c, 10000, &m);
    if (rc != GL_OK)
      goto io_error;
    if (print_if_error(m))
      goto done;
    if (m->msg_case != GEOLOC__V1__SERVER_MESSAGE__MSG_PONG || m->pong->nonce != (uint64_t)i) {
      fprintf(stderr, "geoloc: unexpected answer to ping %ld\n", i);
      goto done;
    }
    printf("pong %ld: %.3f ms\n", i, (double)(now_us() - t0) / 1000.0);
  }
  status = 0;
  goto done;
io_error:
  fprintf(stderr, "geoloc: %s: %s\n", gl_strerror(rc), gl_client_last_error(c));
done:
  gl_wire_free(m);
  gl_client_destroy(c);
  return status;
}

int gl_cmd_ping(int argc, char **argv) {
  struct ping_opts po;
  int st = ping_parse(argc, argv, &po);
  return st == GL_CLI_RUN ? ping_run(&po) : st;
}
