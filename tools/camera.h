/* The camera of a frame for `geoloc locate` and `geoloc query`: the
 * --altitude, --hfov and --tilt options, completed by what a photo's EXIF
 * and XMP say (photo_meta.h), with its orientation and heading. */
#ifndef GL_TOOLS_CAMERA_H
#define GL_TOOLS_CAMERA_H

#include <getopt.h>
#include <stdbool.h>

#include "img/footprint.h"
#include "photo_meta.h"

/* Options of locate and query (values 1100..1104), for getopt_long. */
// clang-format off
#define GL_CLI_CAMERA_OPTIONS                                                                  \
  {"altitude", required_argument, NULL, 1100}, {"hfov", required_argument, NULL, 1101},        \
  {"tilt", required_argument, NULL, 1102}, {"show-meta", no_argument, NULL, 1103},             \
  {"no-meta", no_argument, NULL, 1104}
// clang-format on
#define GL_CLI_CAMERA_USAGE                                                                        \
  "  --altitude M        the camera's height above the ground, metres\n"                           \
  "  --hfov DEG          its horizontal field of view, degrees\n"                                  \
  "  --tilt DEG          its tilt from nadir towards the image's top (0: straight down)\n"         \
  "                      With all three each frame is cropped to the ground of one map\n"          \
  "                      tile around its centre. Any not given is read from the photo:\n"          \
  "                      XMP drone-dji:RelativeAltitude, EXIF FocalLengthIn35mmFilm\n"             \
  "                      (hfov = 2 atan(36 / 2f)), 90 + drone-dji:GimbalPitchDegree;\n"            \
  "                      the photo's drone-dji:GimbalYawDegree (else FlightYawDegree) is\n"        \
  "                      its heading unless --heading is given, and its EXIF Orientation\n"        \
  "                      turns it upright.\n"                                                      \
  "  --show-meta         print what each photo's metadata says and what is used (stderr)\n"        \
  "  --no-meta           read no metadata: no orientation, heading or camera from photos\n"

struct gl_cli_camera {
  unsigned given;           /* GL_IMG_CAMERA_* given as options */
  struct gl_img_camera cam; /* their values */
  bool show_meta, no_meta;
};

/* Applies one of GL_CLI_CAMERA_OPTIONS (o its value, flag its name), as a
 * gl_cli_apply_fn does: GL_EINVAL, after printing why, for a number that
 * does not parse or is out of range. */
int gl_cli_camera_option(int o, const char *flag, const char *arg, struct gl_cli_camera *c);

/* What is used for one photo. */
struct gl_cli_photo {
  struct gl_photo_meta meta;   /* what the file says (nothing with --no-meta) */
  unsigned orientation;        /* EXIF orientation to apply to the pixels, 1: none */
  double heading_deg;          /* the frame's compass heading, NaN when unknown */
  bool has_camera;             /* the frame is to be cropped to its footprint */
  struct gl_img_camera camera; /* checked */
  bool refused;                /* the camera is incomplete or out of range: not localized */
};

/* Resolves path's camera: reads its metadata (unless --no-meta), and
 * completes the options with it; heading_deg is the --heading given (NaN:
 * none, the photo's is used). With --show-meta prints what was read and
 * what is used. Returns 0, or GL_EINVAL after printing why when the camera
 * is incomplete (some given as options, the rest not in the photo) or out
 * of range. */
int gl_cli_photo_resolve(const char *prog, const char *path, const struct gl_cli_camera *opt,
                         double heading_deg, struct gl_cli_photo *out);

/* Prints, when the photo carries a GPS position, how far the best estimate
 * is from it (stderr). */
void gl_cli_photo_compare(const char *prog, const char *path, const struct gl_cli_photo *ph,
                          double lat, double lon);

#endif
