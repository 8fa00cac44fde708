/* NMEA sentences: field layout, coordinate rounding and checksums. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/nmea.h"
#include "test.h"

/* 2026-11-22 10:05:07.25 UTC */
#define T_US 1795341907250000ull

/* Recomputes the checksum from the text and compares with the one printed. */
static int checksum_ok(const char *s) {
  const char *star = strchr(s, '*');
  if (!star || s[0] != '$')
    return 0;
  unsigned want = (unsigned)strtoul(star + 1, NULL, 16);
  uint8_t x = 0;
  for (const char *p = s + 1; p < star; p++)
    x ^= (uint8_t)*p;
  return x == want && strcmp(star + 3, "\r\n") == 0;
}

static void test_gga(void) {
  char b[128];
  size_t n = gl_nmea_gga(b, sizeof b, T_US, 47.0123456, -99.2);
  CHECK(n == strlen(b));
  char body[128];
  snprintf(body, sizeof body, "%.*s", (int)(strchr(b, '*') - b), b);
  CHECK_EQ_STR(body, "$GPGGA,100507.25,4700.7407,N,09912.0000,W,6,00,,,M,,M,,");
  CHECK(checksum_ok(b));
}

static void test_rmc(void) {
  char b[128];
  size_t n = gl_nmea_rmc(b, sizeof b, T_US, -33.5, 151.25);
  CHECK(n == strlen(b));
  CHECK(strncmp(b, "$GPRMC,100507.25,A,3330.0000,S,15115.0000,E,,,221126,,,E*", 57) == 0);
  CHECK(checksum_ok(b));
}

static void test_known_checksum(void) {
  /* The classic example sentence from the NMEA documentation. */
  CHECK_EQ_INT(gl_nmea_checksum("$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"),
               0x47);
}

static void test_rounding_and_limits(void) {
  char b[128];
  /* 0.99999999 degrees is 59.9999994' and must carry into 1 degree. */
  CHECK(gl_nmea_gga(b, sizeof b, T_US, 0.99999999, 0.0) > 0);
  CHECK(strstr(b, ",0100.0000,N,00000.0000,E,") != NULL);
  CHECK_EQ_INT(gl_nmea_gga(b, sizeof b, T_US, 91.0, 0.0), 0);
  CHECK_EQ_INT(gl_nmea_rmc(b, sizeof b, T_US, 0.0, -180.5), 0);
  CHECK_EQ_INT(gl_nmea_gga(b, 20, T_US, 1.0, 1.0), 0); /* too small a buffer */
}

int main(void) {
  RUN(test_gga);
  RUN(test_rmc);
  RUN(test_known_checksum);
  RUN(test_rounding_and_limits);
  return TEST_END();
}
