/* The geoloc CLI's option parsing (tools/cli.c, built into this test): the
 * one strict way a number is read, the argv loop of every command, and,
 * given the geoloc binary as argv[1], that each command refuses a bad
 * number with exit status 2 and a message naming the option. */
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "core/err.h"
#include "loc/fine.h"
#include "test.h"

/* stderr of what runs between the two, so that messages can be checked. */
static FILE *cap_file;
static int cap_saved = -1;
static char cap_text[2048];

static void cap_begin(void) {
  fflush(stderr);
  cap_file = tmpfile();
  cap_saved = dup(STDERR_FILENO);
  if (cap_file)
    dup2(fileno(cap_file), STDERR_FILENO);
}

static const char *cap_end(void) {
  fflush(stderr);
  dup2(cap_saved, STDERR_FILENO);
  close(cap_saved);
  cap_text[0] = '\0';
  if (cap_file) {
    rewind(cap_file);
    cap_text[fread(cap_text, 1, sizeof cap_text - 1, cap_file)] = '\0';
    fclose(cap_file);
  }
  return cap_text;
}

static void test_u32(void) {
  uint32_t v = 7;
  CHECK_EQ_INT(gl_cli_u32("--threads", "0", 0, 1024, &v), GL_OK);
  CHECK_EQ_INT(v, 0);
  CHECK_EQ_INT(gl_cli_u32("--threads", "1024", 0, 1024, &v), GL_OK);
  CHECK_EQ_INT(v, 1024);
  CHECK_EQ_INT(gl_cli_u32("--threads", "007", 0, 1024, &v), GL_OK);
  CHECK_EQ_INT(v, 7);
  CHECK_EQ_INT(gl_cli_u32("--n", "4294967295", 0, UINT32_MAX, &v), GL_OK);
  CHECK_EQ_U64(v, 4294967295u);

  /* Not the whole string, a sign, space, another base, empty, too large:
   * refused, and *out untouched. */
  static const char *const bad[] = {"abc", "",     "-1",  "+1",  " 1",   "1 ",
                                    "1x",  "0x10", "1.0", "1e3", "1025", "99999999999999999999999"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    v = 42;
    cap_begin();
    int rc = gl_cli_u32("--threads", bad[i], 0, 1024, &v);
    const char *msg = cap_end();
    if (!CHECK_EQ_INT(rc, GL_EINVAL))
      fprintf(stderr, "  for \"%s\"\n", bad[i]);
    CHECK_EQ_INT(v, 42);
    CHECK_CONTAINS(msg, "--threads");
  }
  cap_begin();
  gl_cli_u32("--threads", "abc", 0, 1024, &v);
  CHECK_EQ_STR(cap_end(), "geoloc: --threads: \"abc\" is not an integer in 0..1024\n");
  cap_begin();
  CHECK_EQ_INT(gl_cli_u32("--n", "4294967296", 0, UINT32_MAX, &v), GL_EINVAL);
  CHECK_EQ_INT(gl_cli_u32("--top-k", "0", 1, 100, &v), GL_EINVAL);
  CHECK_CONTAINS(cap_end(), "--top-k: \"0\" is not an integer in 1..100");
}

static void test_u64(void) {
  uint64_t v = 0;
  CHECK_EQ_INT(gl_cli_u64("--max-pixels", "18446744073709551615", 1, UINT64_MAX, &v), GL_OK);
  CHECK_EQ_U64(v, UINT64_MAX);
  cap_begin();
  CHECK_EQ_INT(gl_cli_u64("--max-pixels", "18446744073709551616", 1, UINT64_MAX, &v), GL_EINVAL);
  CHECK_EQ_INT(gl_cli_u64("--max-pixels", "-1", 0, UINT64_MAX, &v), GL_EINVAL);
  cap_end();
  CHECK_EQ_U64(v, UINT64_MAX);
}

static void test_double(void) {
  double v = 0;
  CHECK_EQ_INT(gl_cli_double("--heading", "-360", -360, 720, &v), GL_OK);
  CHECK(v == -360);
  CHECK_EQ_INT(gl_cli_double("--heading", "720", -360, 720, &v), GL_OK);
  CHECK(v == 720);
  CHECK_EQ_INT(gl_cli_double("--heading", "1.5e2", -360, 720, &v), GL_OK);
  CHECK(v == 150);
  static const char *const bad[] = {"nan",  "inf", "-inf",  "",     " 1",    "1 ",
                                    "1.5x", "x",   "720.5", "-361", "1e999", "1,2"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    v = 42;
    cap_begin();
    int rc = gl_cli_double("--heading", bad[i], -360, 720, &v);
    const char *msg = cap_end();
    if (!CHECK_EQ_INT(rc, GL_EINVAL))
      fprintf(stderr, "  for \"%s\"\n", bad[i]);
    CHECK(v == 42);
    CHECK_CONTAINS(msg, "--heading");
  }
  cap_begin();
  gl_cli_double("--heading", "north", -360, 720, &v);
  CHECK_EQ_STR(cap_end(), "geoloc: --heading: \"north\" is not a number in [-360, 720]\n");

  /* (0, max]: zero is not a size. */
  CHECK_EQ_INT(gl_cli_positive("--tile-m", "1e-3", 1e6, &v), GL_OK);
  CHECK(v == 1e-3);
  CHECK_EQ_INT(gl_cli_positive("--tile-m", "1e6", 1e6, &v), GL_OK);
  cap_begin();
  CHECK_EQ_INT(gl_cli_positive("--tile-m", "0", 1e6, &v), GL_EINVAL);
  CHECK_EQ_STR(cap_end(), "geoloc: --tile-m: \"0\" is not a number in (0, 1e+06]\n");
  cap_begin();
  CHECK_EQ_INT(gl_cli_positive("--tile-m", "-5", 1e6, &v), GL_EINVAL);
  CHECK_EQ_INT(gl_cli_positive("--tile-m", "1000001", 1e6, &v), GL_EINVAL);
  cap_end();
}

static void test_doubles(void) {
  double v[4];
  size_t n = 0;
  CHECK_EQ_INT(gl_cli_doubles("1,-2.5,3e1", v, 4, &n), GL_OK);
  CHECK_EQ_INT(n, 3);
  CHECK(v[0] == 1 && v[1] == -2.5 && v[2] == 30);
  CHECK_EQ_INT(gl_cli_doubles("7", v, 4, &n), GL_OK);
  CHECK_EQ_INT(n, 1);
  static const char *const bad[] = {"",     ",",   "1,",    ",1",       "1,,2",
                                    "1, 2", "1;2", "nan,1", "1,2,3,4,5"};
  cap_begin();
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    if (!CHECK_EQ_INT(gl_cli_doubles(bad[i], v, 4, &n), GL_EINVAL))
      fprintf(stderr, "  for \"%s\"\n", bad[i]);
  /* Quiet: its callers say what the list means. */
  CHECK_EQ_STR(cap_end(), "");

  double lat, lon, r;
  CHECK_EQ_INT(gl_cli_parse_prior("47.1,-99.2,500", &lat, &lon, &r), GL_OK);
  CHECK(lat == 47.1 && lon == -99.2 && r == 500);
  CHECK_EQ_INT(gl_cli_parse_prior("91,0,1", &lat, &lon, &r), GL_EINVAL);
  CHECK_EQ_INT(gl_cli_parse_prior("0,181,1", &lat, &lon, &r), GL_EINVAL);
  CHECK_EQ_INT(gl_cli_parse_prior("0,0,0", &lat, &lon, &r), GL_EINVAL);
  CHECK_EQ_INT(gl_cli_parse_prior("1,2,3x", &lat, &lon, &r), GL_EINVAL);
  CHECK_EQ_INT(gl_cli_parse_prior("1,2", &lat, &lon, &r), GL_EINVAL);
}

static void test_fine_option(void) {
  struct gl_loc_fine_params p;
  bool off = false;
  gl_loc_fine_params_init(&p);
  CHECK_EQ_INT(gl_cli_fine_option(1001, "--fine-top-k", "7", &p, &off), GL_OK);
  CHECK_EQ_INT(p.top_k, 7);
  CHECK_EQ_INT(gl_cli_fine_option(1003, "--heading-step", "15", &p, &off), GL_OK);
  CHECK(p.step_deg == 15);
  cap_begin();
  CHECK_EQ_INT(gl_cli_fine_option(1001, "--fine-top-k", "0", &p, &off), GL_EINVAL);
  CHECK_EQ_INT(gl_cli_fine_option(1005, "--fine-full-scan", "lots", &p, &off), GL_EINVAL);
  CHECK_EQ_INT(p.top_k, 7);
  /* In range, but 7 does not divide 360. */
  CHECK_EQ_INT(gl_cli_fine_option(1003, "--heading-step", "7", &p, &off), GL_EINVAL);
  const char *msg = cap_end();
  CHECK_CONTAINS(msg, "--fine-top-k: \"0\"");
  CHECK_CONTAINS(msg, "--fine-full-scan: \"lots\"");
  CHECK_CONTAINS(msg, "--heading-step");
  CHECK_CONTAINS(msg, "divide 360");
  CHECK_EQ_INT(gl_cli_fine_option(1000, "--no-fine", NULL, &p, &off), GL_OK);
  CHECK(off);
}

/* --- the argv loop ---------------------------------------------------------- */

struct toy {
  uint32_t n;
  const char *name;
  int applied;
};

static int toy_apply(void *opts, int o, const char *flag, const char *arg) {
  struct toy *t = opts;
  t->applied++;
  if (o == 'n')
    return gl_cli_u32(flag, arg, 1, 10, &t->n);
  t->name = arg;
  return GL_OK;
}

static FILE *toy_usage_to;
static void toy_usage(FILE *f) { toy_usage_to = f; }

static int toy_parse(struct toy *t, int argc, const char **args) {
  static const struct option opts[] = {
      {"count", required_argument, NULL, 'n'},
      {"name", required_argument, NULL, 'x'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  char *argv[16];
  for (int i = 0; i < argc; i++)
    argv[i] = (char *)args[i];
  argv[argc] = NULL;
  *t = (struct toy){0};
  toy_usage_to = NULL;
  optind = 0; /* glibc: start over */
  opterr = 0; /* getopt's own complaints are not what is tested */
  return gl_cli_getopt(argc, argv, "n:", opts, toy_apply, t, toy_usage);
}

static void test_getopt(void) {
  struct toy t;
  CHECK_EQ_INT(toy_parse(&t, 5, (const char *[]){"toy", "--count", "3", "--name=a", "file"}),
               GL_CLI_RUN);
  CHECK_EQ_INT(t.n, 3);
  CHECK_EQ_STR(t.name, "a");
  CHECK_EQ_INT(optind, 4);
  CHECK(toy_usage_to == NULL);
  /* A short option is named by its long name. */
  cap_begin();
  CHECK_EQ_INT(toy_parse(&t, 3, (const char *[]){"toy", "-n", "11"}), 2);
  CHECK_EQ_STR(cap_end(), "geoloc: --count: \"11\" is not an integer in 1..10\n");
  CHECK(toy_usage_to == NULL);
  /* The loop stops at the first refused value. */
  cap_begin();
  CHECK_EQ_INT(toy_parse(&t, 5, (const char *[]){"toy", "--count", "x", "--name", "b"}), 2);
  cap_end();
  CHECK_EQ_INT(t.applied, 1);
  CHECK(t.name == NULL);
  CHECK_EQ_INT(toy_parse(&t, 4, (const char *[]){"toy", "--count", "2", "--help"}), 0);
  CHECK(toy_usage_to == stdout);
  CHECK_EQ_INT(toy_parse(&t, 2, (const char *[]){"toy", "--bogus"}), 2);
  CHECK(toy_usage_to == stderr);
  CHECK_EQ_INT(toy_parse(&t, 2, (const char *[]){"toy", "--count"}), 2);
  CHECK(toy_usage_to == stderr);
}

/* --- the commands ------------------------------------------------------------- */

/* Runs `geoloc ARGS 2>&1`; its exit status, its output in out. */
static int run_geoloc(const char *geoloc, const char *args, char *out, size_t outlen) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "'%s' %s 2>&1", geoloc, args);
  FILE *p = popen(cmd, "r");
  out[0] = '\0';
  if (!p)
    return -1;
  size_t n = fread(out, 1, outlen - 1, p);
  out[n] = '\0';
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static const char *geoloc_bin;

static void test_commands_refuse_bad_numbers(void) {
  if (!geoloc_bin)
    return;
  static const struct {
    const char *args, *needle;
  } bad[] = {
      /* The issue: this was silently 0, "all cores". */
      {"locate --model m --map p --threads abc x.png", "--threads: \"abc\" is not an integer"},
      {"locate --model m --map p --threads 1025 x.png", "--threads: \"1025\""},
      {"locate --model m --map p --threads -1 x.png", "--threads: \"-1\""},
      {"locate --model m --map p --top-k 101 x.png",
       "--top-k: \"101\" is not an integer in 1..100"},
      {"locate --model m --map p --tiles 5k x.png", "--tiles: \"5k\""},
      {"locate --model m --map p --heading east x.png", "--heading: \"east\""},
      {"locate --model m --map p --altitude 0 x.png", "--altitude: \"0\""},
      {"locate --model m --map p --fine-radius 17 x.png", "--fine-radius: \"17\""},
      {"eval --model m --map p --labels l.csv --threads abc", "--threads: \"abc\""},
      {"eval --model m --map p --labels l.csv --batch 65", "--batch: \"65\""},
      {"eval --model m --map p --labels l.csv --prior-m 0", "--prior-m: \"0\""},
      {"eval --model m --map p --labels l.csv --lock-frames 1x", "--lock-frames: \"1x\""},
      {"eval --model m --map p --labels l.csv --track-spread -1", "--track-spread: \"-1\""},
      {"eval --model m --map p --labels l.csv --velocity-sigma 101", "--velocity-sigma: \"101\""},
      {"encode --model m --batch 0 x.png", "--batch: \"0\""},
      {"encode --model m --threads 2.5 x.png", "--threads: \"2.5\""},
      {"map build --model m --ortho o.tif --out o.map --threads lots", "--threads: \"lots\""},
      {"map build --model m --ortho o.tif --out o.map --batch 9999", "--batch: \"9999\""},
      {"map build --model m --ortho o.tif --out o.map --stride-m -80", "--stride-m: \"-80\""},
      {"ping --connect 127.0.0.1:1 --count 0", "--count: \"0\""},
      {"bench --connect 127.0.0.1:1 --clients many --frames 10 x.png", "--clients: \"many\""},
      {"bench --connect 127.0.0.1:1 --clients 1 --frames 10 --rate fast x.png", "--rate: \"fast\""},
      {"query --connect 127.0.0.1:1 --window 0 x.png", "--window: \"0\""},
      {"query --connect 127.0.0.1:1 --top-k 3x x.png", "--top-k: \"3x\""},
      {"query --connect 127.0.0.1:1 --interval 0 --track x.png", "--interval: \"0\""},
  };
  char out[4096];
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int st = run_geoloc(geoloc_bin, bad[i].args, out, sizeof out);
    bool ok = CHECK_EQ_INT(st, 2);
    ok = CHECK_CONTAINS(out, bad[i].needle) && ok;
    if (!ok)
      fprintf(stderr, "  geoloc %s: %s\n", bad[i].args, out);
  }
}

static void test_commands_take_good_numbers(void) {
  if (!geoloc_bin)
    return;
  char out[4096];
  /* Parsed, then the missing model fails the run: status 1, not 2. */
  int st = run_geoloc(geoloc_bin,
                      "locate --model /nonexistent/m.safetensors --map /nonexistent/p.map "
                      "--threads 2 --top-k 100 --tiles 1024 --heading -12.5 --fine-top-k 8 "
                      "--prior 47.1,-99.2,500 x.png",
                      out, sizeof out);
  CHECK_EQ_INT(st, 1);
  CHECK_CONTAINS(out, "/nonexistent/m.safetensors");
  st = run_geoloc(geoloc_bin,
                  "eval --model /nonexistent/m.safetensors --map p --labels l.csv --threads 0 "
                  "--batch 64 --max-speed 30 --lock-confidence 0.9 --lost-confidence 0.85",
                  out, sizeof out);
  CHECK_EQ_INT(st, 1);
  CHECK_CONTAINS(out, "/nonexistent/m.safetensors");
  CHECK_EQ_INT(run_geoloc(geoloc_bin, "locate --help", out, sizeof out), 0);
  CHECK_CONTAINS(out, "--threads N");
}

int main(int argc, char **argv) {
  geoloc_bin = argc > 1 ? argv[1] : NULL;
  RUN(test_u32);
  RUN(test_u64);
  RUN(test_double);
  RUN(test_doubles);
  RUN(test_fine_option);
  RUN(test_getopt);
  RUN(test_commands_refuse_bad_numbers);
  RUN(test_commands_take_good_numbers);
  return TEST_END();
}
