#include "client/report.h"

#include <math.h>
#include <string.h>

#include "client/nmea.h"
#include "core/err.h"

int gl_report_format_parse(const char *name, enum gl_report_format *out) {
  static const char *const names[] = {"table", "csv", "geojson", "nmea", "mavlink"};
  for (int i = 0; i < 5; i++) {
    if (strcmp(name, names[i]) == 0) {
      *out = (enum gl_report_format)i;
      return GL_OK;
    }
  }
  return GL_EINVAL;
}

void gl_report_csv_field(FILE *f, const char *s) {
  if (!strpbrk(s, ",\"\r\n")) {
    fputs(s, f);
    return;
  }
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"')
      fputc('"', f);
    fputc(*s, f);
  }
  fputc('"', f);
}

/* A JSON string (RFC 8259): quotes, backslashes and control bytes escaped;
 * other bytes pass through (file names are taken to be UTF-8). */
static void gl__json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      fprintf(f, "\\%c", ch);
    else if (ch < 0x20)
      fprintf(f, "\\u%04x", ch);
    else
      fputc(ch, f);
  }
  fputc('"', f);
}

void gl_report_begin(struct gl_report *r, FILE *f, enum gl_report_format fmt) {
  r->f = f;
  r->fmt = fmt;
  r->features = 0;
  gl_mavlink_opts_default(&r->mavlink.opts);
  r->mavlink.seq = 0;
  switch (fmt) {
  case GL_REPORT_TABLE:
    fprintf(f, "%-32s %4s %12s %13s %7s %6s %9s %7s %10s  %s\n", "image", "rank", "lat", "lon",
            "score", "conf", "radius_m", "heading", "latency_ms", "status");
    break;
  case GL_REPORT_CSV:
    fputs("image,rank,lat,lon,score,confidence,radius_m,tile_id,heading_deg,latency_ms,status\n",
          f);
    break;
  case GL_REPORT_GEOJSON:
    fputs("{\"type\":\"FeatureCollection\",\"features\":[", f);
    break;
  case GL_REPORT_NMEA:
  case GL_REPORT_MAVLINK:
    break;
  }
}

bool gl_report_track_only(enum gl_report_format fmt) {
  return fmt == GL_REPORT_NMEA || fmt == GL_REPORT_MAVLINK;
}

int gl_report_track_status(const char *name) {
  static const char *const names[] = {"ACQUIRING", "LOCKED", "LOST"};
  for (int i = 0; i < 3; i++)
    if (strcmp(name, names[i]) == 0)
      return i + 1;
  return 0;
}

/* Writes the GPS_INPUT packet of fix. */
static void gl__mavlink_write(struct gl_report *r, const struct gl_mavlink_fix *fix) {
  uint8_t pkt[GL_MAVLINK_PACKET_MAX];
  size_t n = gl_mavlink_pack_fix(&r->mavlink, fix, pkt);
  fwrite(pkt, 1, n, r->f);
}

void gl_report_frame(struct gl_report *r, const char *image, const char *status,
                     const struct gl_report_candidate *c, size_t n, uint64_t time_us,
                     double latency_ms) {
  FILE *f = r->f;
  switch (r->fmt) {
  case GL_REPORT_TABLE:
    if (n == 0)
      fprintf(f, "%-32s %4s %12s %13s %7s %6s %9s %7s %10.2f  %s\n", image, "-", "-", "-", "-",
              "-", "-", "-", latency_ms, status);
    for (size_t i = 0; i < n; i++) {
      char hd[16] = "-";
      if (!isnan(c[i].heading_deg))
        snprintf(hd, sizeof hd, "%.1f", (double)c[i].heading_deg);
      fprintf(f, "%-32s %4zu %12.7f %13.7f %7.4f %6.3f %9.1f %7s %10.2f  %s\n", image, i + 1,
              c[i].lat, c[i].lon, (double)c[i].score, (double)c[i].confidence,
              (double)c[i].radius_m, hd, latency_ms, status);
    }
    break;
  case GL_REPORT_CSV:
    if (n == 0) {
      gl_report_csv_field(f, image);
      fprintf(f, ",,,,,,,,,%.3f,%s\n", latency_ms, status);
    }
    for (size_t i = 0; i < n; i++) {
      gl_report_csv_field(f, image);
      fprintf(f, ",%zu,%.8f,%.8f,%.6f,%.6f,%.2f,%llu,", i + 1, c[i].lat, c[i].lon,
              (double)c[i].score, (double)c[i].confidence, (double)c[i].radius_m,
              (unsigned long long)c[i].tile_id);
      if (!isnan(c[i].heading_deg))
        fprintf(f, "%.2f", (double)c[i].heading_deg);
      fprintf(f, ",%.3f,%s\n", latency_ms, status);
    }
    break;
  case GL_REPORT_GEOJSON:
    for (size_t i = 0; i < n; i++) {
      fprintf(f,
              "%s\n{\"type\":\"Feature\",\"geometry\":{\"type\":\"Point\",\"coordinates\":[%.8f,"
              "%.8f]},\"properties\":{\"image\":",
              r->features++ ? "," : "", c[i].lon, c[i].lat);
      gl__json_string(f, image);
      fprintf(f,
              ",\"rank\":%zu,\"score\":%.6f,\"confidence\":%.6f,\"radius_m\":%.2f,"
              "\"tile_id\":%llu",
              i + 1, (double)c[i].score, (double)c[i].confidence, (double)c[i].radius_m,
              (unsigned long long)c[i].tile_id);
      if (!isnan(c[i].heading_deg))
        fprintf(f, ",\"heading_deg\":%.2f", (double)c[i].heading_deg);
      fputs("}}", f);
    }
    break;
  case GL_REPORT_NMEA:
    if (n > 0) {
      char s[128];
      if (gl_nmea_gga(s, sizeof s, time_us, c[0].lat, c[0].lon))
        fputs(s, f);
      if (gl_nmea_rmc(s, sizeof s, time_us, c[0].lat, c[0].lon))
        fputs(s, f);
    }
    break;
  case GL_REPORT_MAVLINK: {
    struct gl_mavlink_fix fix = {.time_us = time_us, .lat = NAN, .lon = NAN, .radius_m = NAN,
                                 .heading_deg = NAN, .vn = NAN, .ve = NAN};
    if (n > 0) {
      fix.lat = c[0].lat;
      fix.lon = c[0].lon;
      fix.radius_m = c[0].radius_m;
      fix.confidence = c[0].confidence;
      fix.heading_deg = c[0].heading_deg;
    }
    gl__mavlink_write(r, &fix);
    break;
  }
  }
  fflush(f); /* estimates stream: a reader sees each frame as it is answered */
}

void gl_report_track(struct gl_report *r, const char *image, const struct gl_report_track *t,
                     uint64_t time_us, double latency_ms) {
  FILE *f = r->f;
  char hd[16] = "-";
  if (!isnan(t->heading_deg))
    snprintf(hd, sizeof hd, "%.1f", (double)t->heading_deg);
  switch (r->fmt) {
  case GL_REPORT_TABLE:
    fprintf(f, "%-32s %5s %12.7f %13.7f %7s %6.3f %9.1f %7s %10.2f  %s\n", image, "track", t->lat,
            t->lon, "-", (double)t->confidence, (double)t->radius_m, hd, latency_ms, t->status);
    break;
  case GL_REPORT_CSV:
    gl_report_csv_field(f, image);
    fprintf(f, ",track,%.8f,%.8f,,%.6f,%.2f,,%s,%.3f,%s\n", t->lat, t->lon,
            (double)t->confidence, (double)t->radius_m, isnan(t->heading_deg) ? "" : hd,
            latency_ms, t->status);
    break;
  case GL_REPORT_GEOJSON:
    fprintf(f,
            "%s\n{\"type\":\"Feature\",\"geometry\":{\"type\":\"Point\",\"coordinates\":[%.8f,"
            "%.8f]},\"properties\":{\"image\":",
            r->features++ ? "," : "", t->lon, t->lat);
    gl__json_string(f, image);
    fprintf(f, ",\"track\":\"%s\",\"confidence\":%.6f,\"radius_m\":%.2f", t->status,
            (double)t->confidence, (double)t->radius_m);
    if (!isnan(t->heading_deg))
      fprintf(f, ",\"heading_deg\":%.2f", (double)t->heading_deg);
    fputs("}}", f);
    break;
  case GL_REPORT_NMEA:
    if (strcmp(t->status, "LOCKED") == 0) {
      char s[128];
      if (gl_nmea_gga(s, sizeof s, time_us, t->lat, t->lon))
        fputs(s, f);
      if (gl_nmea_rmc(s, sizeof s, time_us, t->lat, t->lon))
        fputs(s, f);
    }
    break;
  case GL_REPORT_MAVLINK: {
    struct gl_mavlink_fix fix = {.time_us = time_us,
                                 .track_status = gl_report_track_status(t->status),
                                 .lat = t->lat,
                                 .lon = t->lon,
                                 .radius_m = t->radius_m,
                                 .confidence = t->confidence,
                                 .heading_deg = t->heading_deg,
                                 .vn = NAN,
                                 .ve = NAN};
    gl__mavlink_write(r, &fix);
    break;
  }
  }
  fflush(f);
}

void gl_report_end(struct gl_report *r) {
  if (r->fmt == GL_REPORT_GEOJSON)
    fputs("\n]}\n", r->f);
  fflush(r->f);
}
