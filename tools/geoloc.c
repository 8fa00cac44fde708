/* geoloc: the command-line tool of geoloc. */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "core/omp.h"
#include "gl_build_config.h"

static int cmd_version(int argc, char **argv) {
  (void)argc;
  (void)argv;
  printf("geoloc %s (protocol %d)\n", GL_VERSION, GL_PROTOCOL_VERSION);
  return 0;
}

static const struct {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *help;
} commands[] = {
    {"bench", gl_cmd_bench, "load geolocd with concurrent clients, check every frame is answered"},
    {"bridge", gl_cmd_bridge, "stream a camera to geolocd, its fixes to an autopilot (MAVLink)"},
    {"encode", gl_cmd_encode, "print the descriptor of each image (JSON arrays)"},
    {"eval", gl_cmd_eval, "measure accuracy (R@k, error, success@m) on labelled frames"},
    {"inspect", gl_cmd_inspect, "print a model's or a map pack's summary"},
    {"locate", gl_cmd_locate, "localize images against a map pack in this process"},
    {"map", gl_cmd_map, "build (or inspect) a map pack from orthophotos"},
    {"ping", gl_cmd_ping, "handshake with geolocd, then measure round trips"},
    {"query", gl_cmd_query, "stream images to geolocd and print the estimates"},
    {"token", gl_cmd_token, "print the configuration line of a client token (token hash)"},
    {"version", cmd_version, "print the version"},
};

static void usage(FILE *f) {
  fprintf(f, "usage: geoloc <command> [options]   (geoloc <command> --help for its options)\n\n"
             "commands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv) {
  gl_omp_wait_passive(argv);
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0) {
    usage(stdout);
    return 0;
  }
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (strcmp(argv[1], commands[i].name) == 0)
      return commands[i].run(argc - 1, argv + 1);
  fprintf(stderr, "geoloc: unknown command '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}
