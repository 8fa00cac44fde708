#include "client/nmea.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

uint8_t gl_nmea_checksum(const char *s) {
  uint8_t x = 0;
  if (*s == '$')
    s++;
  for (; *s && *s != '*'; s++)
    x ^= (uint8_t)*s;
  return x;
}

/* Formats one coordinate as NMEA's [d]ddmm.mmmm plus hemisphere. The minutes
 * are rounded in integer units of 1e-4 minute so that 59.99996' carries
 * into the degrees instead of printing as 60.0000'. */
static void gl__nmea_coord(char *out, size_t len, double v, int deg_digits, char pos, char neg) {
  long long units = llround(fabs(v) * 60.0 * 10000.0);
  long long deg = units / (60 * 10000);
  long long rem = units % (60 * 10000);
  snprintf(out, len, "%0*lld%02lld.%04lld,%c", deg_digits, deg, rem / 10000, rem % 10000,
           v < 0 ? neg : pos);
}

/* Body between '$' and '*' is in buf+1; appends the checksum and CRLF. */
static size_t gl__nmea_finish(char *buf, size_t len, int n) {
  if (n < 0 || (size_t)n + 6 > len)
    return 0;
  int m = snprintf(buf + n, len - (size_t)n, "*%02X\r\n", gl_nmea_checksum(buf));
  return (size_t)n + (size_t)m;
}

static int gl__nmea_prepare(uint64_t time_us, double lat, double lon, struct tm *tm,
                            unsigned *centis, char *la, char *lo) {
  if (!(lat >= -90.0 && lat <= 90.0 && lon >= -180.0 && lon <= 180.0))
    return -1;
  time_t t = (time_t)(time_us / 1000000u);
  if (!gmtime_r(&t, tm))
    return -1;
  *centis = (unsigned)(time_us % 1000000u / 10000u);
  gl__nmea_coord(la, 32, lat, 2, 'N', 'S');
  gl__nmea_coord(lo, 32, lon, 3, 'E', 'W');
  return 0;
}

size_t gl_nmea_gga(char *buf, size_t len, uint64_t time_us, double lat, double lon) {
  struct tm tm;
  unsigned cs;
  char la[32], lo[32];
  if (gl__nmea_prepare(time_us, lat, lon, &tm, &cs, la, lo) != 0)
    return 0;
  /* time, lat, lon, quality 6, 0 satellites, no HDOP/altitude/geoid data */
  int n = snprintf(buf, len, "$GPGGA,%02d%02d%02d.%02u,%s,%s,6,00,,,M,,M,,", tm.tm_hour,
                   tm.tm_min, tm.tm_sec, cs, la, lo);
  return n < 0 || (size_t)n >= len ? 0 : gl__nmea_finish(buf, len, n);
}

size_t gl_nmea_rmc(char *buf, size_t len, uint64_t time_us, double lat, double lon) {
  struct tm tm;
  unsigned cs;
  char la[32], lo[32];
  if (gl__nmea_prepare(time_us, lat, lon, &tm, &cs, la, lo) != 0)
    return 0;
  int n = snprintf(buf, len, "$GPRMC,%02d%02d%02d.%02u,A,%s,%s,,,%02d%02d%02d,,,E", tm.tm_hour,
                   tm.tm_min, tm.tm_sec, cs, la, lo, tm.tm_mday, tm.tm_mon + 1,
                   tm.tm_year % 100);
  return n < 0 || (size_t)n >= len ? 0 : gl__nmea_finish(buf, len, n);
}
