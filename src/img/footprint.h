/* The camera's ground footprint: cropping a camera frame to one map tile.
 *
 * The model sees one map tile per image: tile_m metres of ground (T below),
 * resized to its S x S input. A drone camera sees whatever its altitude and
 * lens give (100-200 m from 60-120 m up), so a frame is cropped to T metres
 * of ground around its centre before anything else looks at it. The camera
 * is a pinhole at altitude A (metres above flat ground) with a horizontal
 * field of view hfov, tilted by t from nadir towards the image's top (0:
 * looking straight down). For a W x H frame:
 *
 *   f     = (W / 2) / tan(hfov / 2)   focal length, pixels
 *   gsd_x = A / (f cos t)             metres per pixel across, at the centre
 *   gsd_y = A / (f cos^2 t)           metres per pixel along the tilt
 *
 * (the centre ray is A / cos t long, a pixel subtends 1/f radians, and along
 * the tilt the ground is seen at the grazing angle 90 - t: one more 1/cos t;
 * gsd_y >= gsd_x). At the centre's scale the frame covers
 *
 *   ground_w = W gsd_x,  ground_h = H gsd_y   metres
 *
 * and the crop is the centred rectangle that spans T metres both ways,
 *
 *   w = T / gsd_x,  h = T / gsd_y   frame pixels (w >= h),
 *
 * resampled into a square image of side n = min(round(w), max_side): the
 * scale of the frame's finer axis, never more than max_side (callers pass
 * gl_loc_crop_side: twice the largest input of the two stages, the most
 * either uses, since the fine stage first resizes the frame to twice its
 * input). Only the centre's scale is used: a tilted frame's
 * far half is coarser and its near half finer (a trapezoid), which the
 * model's training views (views.py, tilts to 30 degrees) include.
 *
 * Resampling (gl_img_warp's sampling with heading 0): output pixel (i, j)
 * with centre offset (u, v) = (j + 1/2 - n/2, i + 1/2 - n/2) samples the
 * frame at
 *
 *   x = (W / (2 sx) + u) sx - 1/2,   y = (H / (2 sy) + v) sy - 1/2,
 *   sx = w / n,  sy = h / n          (frame pixel centres at integers),
 *
 * bilinearly, coordinates outside the frame reflected into it (x -> -x,
 * x -> 2(W-1) - x). When shrinking (sx or sy > 1) each output pixel
 * averages nx x ny such samples at offsets ((b + 1/2)/nx - 1/2) of u and
 * ((a + 1/2)/ny - 1/2) of v, nx = min(ceil(sx), 16), ny = min(ceil(sy),
 * 16) (with a margin for rounding: 1 up to 1 + 1e-6, then the ceiling of
 * s - 1e-6): a box filter over the pixel's footprint in which, up to 16x, every
 * frame pixel counts. Computed in double precision, rounded to nearest
 * (floor(v + 1/2)). python/geoloc_train/footprint.py is the reference.
 *
 * Limits. A camera is altitude in (0, 10000] m, hfov in [1, 170] degrees and
 * tilt in [0, 60] degrees, all three given or none. A footprint is refused
 * when min(ground_w, ground_h) < 0.8 T (the crop would need ground the
 * camera did not see; from 0.8 T to T the missing border is reflected) or
 * when min(w, h) < min_side (callers pass S/2: the tile would be enlarged
 * more than 2x to the model's input). Nothing here allocates. */
#ifndef GL_IMG_FOOTPRINT_H
#define GL_IMG_FOOTPRINT_H

#include <stddef.h>
#include <stdint.h>

#include "img/img.h"

#define GL_IMG_CAMERA_MAX_ALTITUDE_M 10000.0
#define GL_IMG_CAMERA_MIN_HFOV_DEG 1.0
#define GL_IMG_CAMERA_MAX_HFOV_DEG 170.0
#define GL_IMG_CAMERA_MAX_TILT_DEG 60.0
/* The least part of a tile the frame must cover, each way. */
#define GL_IMG_FOOTPRINT_MIN_COVER 0.8
/* The most samples a crop averages per output pixel along one axis. */
#define GL_IMG_FOOTPRINT_MAX_AA 16

/* The fields of a camera, for gl_img_camera_check's `given` mask. */
enum {
  GL_IMG_CAMERA_ALTITUDE = 1,
  GL_IMG_CAMERA_HFOV = 2,
  GL_IMG_CAMERA_TILT = 4,
  GL_IMG_CAMERA_ALL = 7,
};

struct gl_img_camera {
  double altitude_m; /* height above the ground, metres */
  double hfov_deg;   /* horizontal field of view of the frame, degrees */
  double tilt_deg;   /* from nadir towards the image's top, degrees */
};

/* A frame's footprint and its crop (see the top of this file). */
struct gl_img_footprint {
  uint32_t width, height;    /* the frame */
  double gsd_x, gsd_y;       /* metres per frame pixel at the centre */
  double ground_w, ground_h; /* the frame's ground extent at that scale, metres */
  double crop_w, crop_h;     /* the crop, frame pixels (w, h above) */
  uint32_t side;             /* the output's side, n */
  uint32_t aa_x, aa_y;       /* samples per output pixel along each axis */
};

/* Checks a camera whose fields in the `given` mask (GL_IMG_CAMERA_*) were
 * given: all three or none, each in range (NaN is out of range). names
 * gives the three fields' names for the message, in the order altitude,
 * hfov, tilt (NULL: "altitude", "hfov", "tilt"). Returns 0 (also for none
 * given) or GL_EINVAL with err saying which field and why. */
int gl_img_camera_check(unsigned given, const struct gl_img_camera *cam, const char *const names[3],
                        char *err, size_t errlen);

/* Plans the crop of a width x height frame seen by cam (a checked camera)
 * to tile_m metres, output side at most max_side, crop at least min_side
 * frame pixels. Returns 0 with *fp filled, or GL_EINVAL when the footprint
 * is refused (see Limits) with err giving the frame's ground size and the
 * tile's in metres and what would fit. */
int gl_img_footprint(uint32_t width, uint32_t height, const struct gl_img_camera *cam,
                     double tile_m, uint32_t min_side, uint32_t max_side,
                     struct gl_img_footprint *fp, char *err, size_t errlen);

/* Resamples src (the frame fp was planned for) into out, fp->side x
 * fp->side RGB8 pixels the caller provides. */
void gl_img_footprint_crop(const struct gl_image *src, const struct gl_img_footprint *fp,
                           uint8_t *out);

#endif
