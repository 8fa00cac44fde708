/* The camera of a frame from the options and the photo (camera.h). */
#include "camera.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core/err.h"
#include "map/map.h"

int gl_cli_camera_option(int o, const char *flag, const char *arg, struct gl_cli_camera *c) {
  int rc;
  switch (o) {
  case 1100:
    rc = gl_cli_positive(flag, arg, GL_IMG_CAMERA_MAX_ALTITUDE_M, &c->cam.altitude_m);
    break;
  case 1101:
    rc = gl_cli_double(flag, arg, GL_IMG_CAMERA_MIN_HFOV_DEG, GL_IMG_CAMERA_MAX_HFOV_DEG,
                       &c->cam.hfov_deg);
    break;
  case 1102:
    rc = gl_cli_double(flag, arg, 0, GL_IMG_CAMERA_MAX_TILT_DEG, &c->cam.tilt_deg);
    break;
  case 1103:
    c->show_meta = true;
    return GL_OK;
  case 1104:
    c->no_meta = true;
    return GL_OK;
  default:
    return GL_EINVAL;
  }
  if (rc == GL_OK)
    c->given |= 1u << (o - 1100);
  return rc;
}

/* The photo's heading turned with its orientation: the yaw is where the
 * stored image's top looks; shown upright, that top is on the right (6),
 * the left (8) or the bottom (3). A mirrored image (2, 4, 5, 7) has no
 * compass heading. NaN when there is none. */
static double gl__photo_heading(const struct gl_photo_meta *m, unsigned orientation) {
  static const double turn[9] = {[1] = 0, [3] = 180, [6] = -90, [8] = 90};
  if (!m->has_yaw ||
      !(orientation == 1 || orientation == 3 || orientation == 6 || orientation == 8))
    return NAN;
  double h = fmod(m->yaw_deg + turn[orientation], 360.0);
  return h < 0 ? h + 360.0 : h;
}

static void gl__show_meta(const char *prog, const char *path, const struct gl_photo_meta *m) {
  fprintf(stderr, "%s: %s: meta orientation=%u", prog, path, m->orientation);
  if (m->width && m->height)
    fprintf(stderr, " size=%ux%u", m->width, m->height);
  if (m->has_altitude)
    fprintf(stderr, " altitude_m=%g", m->altitude_m);
  if (m->has_yaw)
    fprintf(stderr, " yaw_deg=%g (%s)", m->yaw_deg, m->yaw_tag);
  if (m->has_pitch)
    fprintf(stderr, " pitch_deg=%g", m->pitch_deg);
  if (m->has_focal35)
    fprintf(stderr, " focal35_mm=%g", m->focal35_mm);
  if (m->has_gps)
    fprintf(stderr, " gps=%.7f,%.7f", m->lat, m->lon);
  fputc('\n', stderr);
}

int gl_cli_photo_resolve(const char *prog, const char *path, const struct gl_cli_camera *opt,
                         double heading_deg, struct gl_cli_photo *out) {
  char err[512];
  memset(out, 0, sizeof *out);
  out->meta.orientation = out->orientation = 1;
  out->heading_deg = heading_deg;
  if (!opt->no_meta && gl_photo_meta_read(path, &out->meta, err, sizeof err) != GL_OK &&
      opt->show_meta)
    fprintf(stderr, "%s: %s: %s\n", prog, path, err);
  const struct gl_photo_meta *m = &out->meta;
  if (opt->show_meta && !opt->no_meta)
    gl__show_meta(prog, path, m);
  out->orientation = m->orientation;
  const bool sideways = m->orientation >= 5 && m->orientation <= 8;
  const char *note = NULL;

  /* What the photo says of the camera, for the upright image. */
  unsigned photo = 0;
  struct gl_img_camera pc = {0, 0, 0};
  if (m->has_altitude) {
    pc.altitude_m = m->altitude_m;
    photo |= GL_IMG_CAMERA_ALTITUDE;
  }
  if (m->has_focal35) {
    /* 36 mm is the film frame's width, the stored image's; the focal
     * length in pixels is the same both ways, so upright the width seen
     * is the stored height. */
    double t = 36.0 / (2.0 * m->focal35_mm);
    if (sideways && m->width && m->height)
      t *= (double)m->height / m->width;
    if (!sideways || (m->width && m->height)) {
      pc.hfov_deg = 2.0 * atan(t) * (180.0 / M_PI);
      photo |= GL_IMG_CAMERA_HFOV;
    }
  }
  if (m->has_pitch) {
    /* Gimbals report a little past nadir (-90.3) as often as short of it. */
    double t = 90.0 + m->pitch_deg;
    pc.tilt_deg = t < 0 && t >= -1.0 ? 0.0 : t;
    if (sideways && pc.tilt_deg > 1.0)
      note = "a tilted photo stored on its side (the footprint's tilt runs along the "
             "upright image's height): its tilt is not used";
    else
      photo |= GL_IMG_CAMERA_TILT;
  }
  if (isnan(out->heading_deg))
    out->heading_deg = gl__photo_heading(m, m->orientation);

  /* The options first, the photo for the rest; the photo alone only when
   * it gives all three. */
  unsigned given = opt->given;
  struct gl_img_camera cam = opt->cam;
  unsigned from_photo = 0;
  if (given || photo == GL_IMG_CAMERA_ALL) {
    from_photo = photo & ~given;
    if (from_photo & GL_IMG_CAMERA_ALTITUDE)
      cam.altitude_m = pc.altitude_m;
    if (from_photo & GL_IMG_CAMERA_HFOV)
      cam.hfov_deg = pc.hfov_deg;
    if (from_photo & GL_IMG_CAMERA_TILT)
      cam.tilt_deg = pc.tilt_deg;
    given |= from_photo;
  } else if (photo && opt->show_meta) {
    note = note ? note
                : "the photo's camera is incomplete (altitude, hfov and tilt go together): "
                  "not used";
  }
  if (note && opt->show_meta)
    fprintf(stderr, "%s: %s: %s\n", prog, path, note);
  static const char *const names[3] = {"--altitude", "--hfov", "--tilt"};
  if (gl_img_camera_check(given, &cam, names, err, sizeof err) != GL_OK) {
    fprintf(stderr, "%s: %s: %s%s\n", prog, path, err,
            from_photo ? " (some read from the photo's metadata; --no-meta ignores it)"
            : given != GL_IMG_CAMERA_ALL ? " (not in the options nor the photo's metadata)"
                                         : "");
    out->refused = true;
    return GL_EINVAL;
  }
  out->has_camera = given == GL_IMG_CAMERA_ALL;
  out->camera = cam;
  if (opt->show_meta) {
    fprintf(stderr, "%s: %s: using orientation=%u", prog, path, out->orientation);
    if (!isnan(out->heading_deg))
      fprintf(stderr, " heading_deg=%g", out->heading_deg);
    if (out->has_camera)
      fprintf(stderr, " altitude_m=%g hfov_deg=%g tilt_deg=%g", cam.altitude_m, cam.hfov_deg,
              cam.tilt_deg);
    const char *src[4] = {isnan(heading_deg) && !isnan(out->heading_deg) ? "heading" : NULL,
                          from_photo & GL_IMG_CAMERA_ALTITUDE ? "altitude" : NULL,
                          from_photo & GL_IMG_CAMERA_HFOV ? "hfov" : NULL,
                          from_photo & GL_IMG_CAMERA_TILT ? "tilt" : NULL};
    bool any = false;
    for (int i = 0; i < 4; i++)
      if (src[i]) {
        fprintf(stderr, "%s%s", any ? ", " : " (from the photo: ", src[i]);
        any = true;
      }
    fprintf(stderr, "%s\n", any ? ")" : "");
  }
  return GL_OK;
}

void gl_cli_photo_compare(const char *prog, const char *path, const struct gl_cli_photo *ph,
                          double lat, double lon) {
  if (!ph->meta.has_gps)
    return;
  fprintf(stderr, "%s: %s: the photo's GPS %.7f,%.7f is %.0f m from the estimate\n", prog, path,
          ph->meta.lat, ph->meta.lon, gl_map_distance_m(ph->meta.lat, ph->meta.lon, lat, lon));
}
