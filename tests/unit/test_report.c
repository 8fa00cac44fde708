/* Estimate reports: CSV quoting, GeoJSON structure, NMEA lines, table rows. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/report.h"
#include "core/err.h"
#include "test.h"

static const struct gl_report_candidate cands[2] = {
    {47.0123, -99.2345, 0.91f, 0.75f, 40.0f, 17, NAN},
    {47.0200, -99.2000, 0.80f, 0.25f, 60.0f, 23, 212.5f},
};

/* Runs one report of two frames (one with candidates, one failed) into a
 * string the caller frees. */
static char *render(enum gl_report_format fmt) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  struct gl_report r;
  gl_report_begin(&r, f, fmt);
  gl_report_frame(&r, "dir/frame \"1\",a.jpg", "OK", cands, 2, 1795341907250000ull, 12.5);
  gl_report_frame(&r, "b.png", "BAD_IMAGE", NULL, 0, 1795341907250000ull, 1.0);
  gl_report_end(&r);
  fclose(f);
  return buf;
}

static void test_parse(void) {
  enum gl_report_format f;
  CHECK_EQ_INT(gl_report_format_parse("geojson", &f), GL_OK);
  CHECK_EQ_INT(f, GL_REPORT_GEOJSON);
  CHECK_EQ_INT(gl_report_format_parse("nmea", &f), GL_OK);
  CHECK_EQ_INT(f, GL_REPORT_NMEA);
  CHECK_EQ_INT(gl_report_format_parse("kml", &f), GL_EINVAL);
}

static void test_csv(void) {
  char *s = render(GL_REPORT_CSV);
  CHECK_EQ_STR(s, "image,rank,lat,lon,score,confidence,radius_m,tile_id,heading_deg,latency_ms,"
                  "status\n"
                  "\"dir/frame \"\"1\"\",a.jpg\",1,47.01230000,-99.23450000,0.910000,0.750000,"
                  "40.00,17,,12.500,OK\n"
                  "\"dir/frame \"\"1\"\",a.jpg\",2,47.02000000,-99.20000000,0.800000,0.250000,"
                  "60.00,23,212.50,12.500,OK\n"
                  "b.png,,,,,,,,,1.000,BAD_IMAGE\n");
  free(s);
}

static void test_geojson(void) {
  char *s = render(GL_REPORT_GEOJSON);
  CHECK_EQ_STR(s, "{\"type\":\"FeatureCollection\",\"features\":[\n"
                  "{\"type\":\"Feature\",\"geometry\":{\"type\":\"Point\",\"coordinates\":"
                  "[-99.23450000,47.01230000]},\"properties\":{\"image\":\"dir/frame "
                  "\\\"1\\\",a.jpg\",\"rank\":1,\"score\":0.910000,\"confidence\":0.750000,"
                  "\"radius_m\":40.00,\"tile_id\":17}},\n"
                  "{\"type\":\"Feature\",\"geometry\":{\"type\":\"Point\",\"coordinates\":"
                  "[-99.20000000,47.02000000]},\"properties\":{\"image\":\"dir/frame "
                  "\\\"1\\\",a.jpg\",\"rank\":2,\"score\":0.800000,\"confidence\":0.250000,"
                  "\"radius_m\":60.00,\"tile_id\":23,\"heading_deg\":212.50}}\n]}\n");
  free(s);
}

static void test_nmea(void) {
  char *s = render(GL_REPORT_NMEA);
  /* Only the best candidate of the first frame; nothing for the failed one. */
  CHECK(strncmp(s, "$GPGGA,100507.25,4700.7380,N,09914.0700,W,6,", 44) == 0);
  CHECK(strstr(s, "\r\n$GPRMC,100507.25,A,4700.7380,N,09914.0700,W,,,221126,,,E*") != NULL);
  size_t lines = 0;
  for (const char *p = s; (p = strstr(p, "\r\n")); p += 2)
    lines++;
  CHECK_EQ_INT(lines, 2);
  free(s);
}

static void test_table(void) {
  char *s = render(GL_REPORT_TABLE);
  size_t lines = 0;
  for (const char *p = s; (p = strchr(p, '\n')); p++)
    lines++;
  CHECK_EQ_INT(lines, 4); /* header, two candidates, one failed frame */
  CHECK(strstr(s, "  47.0123000   -99.2345000  0.9100") != NULL);
  CHECK(strstr(s, "BAD_IMAGE\n") != NULL);
  free(s);
}

int main(void) {
  RUN(test_parse);
  RUN(test_csv);
  RUN(test_geojson);
  RUN(test_nmea);
  RUN(test_table);
  return TEST_END();
}
