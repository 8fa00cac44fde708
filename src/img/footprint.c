/* The camera's ground footprint and the crop to one map tile (footprint.h
 * has the equations; python/geoloc_train/footprint.py is the reference).
 * Like the rest of the img module it needs nothing but libc (the fuzz
 * target compiles the module's sources alone). */
#include "img/footprint.h"

#include <math.h>

#include "core/err.h"
#include "img/img_internal.h"

int gl_img_camera_check(unsigned given, const struct gl_img_camera *cam, const char *const names[3],
                        char *err, size_t errlen) {
  static const char *const plain[3] = {"altitude", "hfov", "tilt"};
  const char *const *n = names ? names : plain;
  given &= GL_IMG_CAMERA_ALL;
  if (given == 0)
    return GL_OK;
  if (given != GL_IMG_CAMERA_ALL) {
    const char *missing[3];
    int k = 0;
    for (int i = 0; i < 3; i++)
      if (!(given & (1u << i)))
        missing[k++] = n[i];
    return gl__img_err(GL_EINVAL, err, errlen,
                       "the camera's %s, %s and %s go together (all three or none): %s%s%s %s "
                       "missing",
                       n[0], n[1], n[2], missing[0], k > 1 ? " and " : "", k > 1 ? missing[1] : "",
                       k > 1 ? "are" : "is");
  }
  if (!(cam->altitude_m > 0 && cam->altitude_m <= GL_IMG_CAMERA_MAX_ALTITUDE_M))
    return gl__img_err(GL_EINVAL, err, errlen,
                       "%s %g is not a height above the ground in metres, (0, %g]", n[0],
                       cam->altitude_m, GL_IMG_CAMERA_MAX_ALTITUDE_M);
  if (!(cam->hfov_deg >= GL_IMG_CAMERA_MIN_HFOV_DEG && cam->hfov_deg <= GL_IMG_CAMERA_MAX_HFOV_DEG))
    return gl__img_err(GL_EINVAL, err, errlen,
                       "%s %g is not a horizontal field of view in degrees, [%g, %g]", n[1],
                       cam->hfov_deg, GL_IMG_CAMERA_MIN_HFOV_DEG, GL_IMG_CAMERA_MAX_HFOV_DEG);
  if (!(cam->tilt_deg >= 0 && cam->tilt_deg <= GL_IMG_CAMERA_MAX_TILT_DEG))
    return gl__img_err(GL_EINVAL, err, errlen,
                       "%s %g is not a tilt from nadir in degrees, [0, %g] (0 looks straight down)",
                       n[2], cam->tilt_deg, GL_IMG_CAMERA_MAX_TILT_DEG);
  return GL_OK;
}

/* Samples per output pixel along an axis the crop shrinks by s: ceil(s),
 * with a margin for rounding (a crop of 500.0000001 pixels into 500 is not
 * a shrink). */
static uint32_t gl__aa(double s) {
  if (!(s > 1 + 1e-6))
    return 1;
  double n = ceil(s - 1e-6);
  return n > GL_IMG_FOOTPRINT_MAX_AA ? GL_IMG_FOOTPRINT_MAX_AA : (uint32_t)n;
}

int gl_img_footprint(uint32_t width, uint32_t height, const struct gl_img_camera *cam,
                     double tile_m, uint32_t min_side, uint32_t max_side,
                     struct gl_img_footprint *fp, char *err, size_t errlen) {
  if (width == 0 || height == 0 || !(tile_m > 0) || max_side == 0)
    return gl__img_err(GL_EINVAL, err, errlen, "footprint of a %ux%u frame on %g m tiles",
                       (unsigned)width, (unsigned)height, tile_m);
  int rc = gl_img_camera_check(GL_IMG_CAMERA_ALL, cam, NULL, err, errlen);
  if (rc != GL_OK)
    return rc;
  const double deg = M_PI / 180.0;
  const double f = (width / 2.0) / tan(cam->hfov_deg * deg / 2.0);
  const double ct = cos(cam->tilt_deg * deg);
  fp->width = width;
  fp->height = height;
  fp->gsd_x = cam->altitude_m / (f * ct);
  fp->gsd_y = cam->altitude_m / (f * ct * ct);
  fp->ground_w = width * fp->gsd_x;
  fp->ground_h = height * fp->gsd_y;
  fp->crop_w = tile_m / fp->gsd_x;
  fp->crop_h = tile_m / fp->gsd_y;
  const double least = fmin(fp->ground_w, fp->ground_h);
  if (least < GL_IMG_FOOTPRINT_MIN_COVER * tile_m)
    return gl__img_err(GL_EINVAL, err, errlen,
                       "the camera sees %.0f x %.0f m of ground at the frame's centre (altitude %g "
                       "m, hfov %g deg, tilt %g deg), too little for the map's %g m tiles (at "
                       "least %g of a tile each way): fly higher, widen the view, or use a map "
                       "with tiles of at most %.0f m",
                       fp->ground_w, fp->ground_h, cam->altitude_m, cam->hfov_deg, cam->tilt_deg,
                       tile_m, GL_IMG_FOOTPRINT_MIN_COVER,
                       floor(least / GL_IMG_FOOTPRINT_MIN_COVER));
  if (fp->crop_h < min_side) /* crop_h <= crop_w */
    return gl__img_err(
        GL_EINVAL, err, errlen,
        "the map's %g m tiles span only %.0f x %.0f pixels of the frame (%.2f x %.2f "
        "m a pixel at its centre; the camera sees %.0f x %.0f m), fewer than %u, "
        "half the model's input: use a map with tiles of at least %.0f m, fly "
        "lower, or send a larger frame",
        tile_m, fp->crop_w, fp->crop_h, fp->gsd_x, fp->gsd_y, fp->ground_w, fp->ground_h,
        (unsigned)min_side, ceil(min_side * fp->gsd_y));
  double n = floor(fp->crop_w + 0.5);
  fp->side = n >= max_side ? max_side : n < 1 ? 1 : (uint32_t)n;
  fp->aa_x = gl__aa(fp->crop_w / fp->side);
  fp->aa_y = gl__aa(fp->crop_h / fp->side);
  return GL_OK;
}

_Static_assert(GL_IMG_FOOTPRINT_MAX_AA <= GL__IMG_MAX_SAMPLES,
               "the crop samples more than gl__img_resample can");

void gl_img_footprint_crop(const struct gl_image *src, const struct gl_img_footprint *fp,
                           uint8_t *out) {
  const uint32_t n = fp->side;
  const double sx = fp->crop_w / n, sy = fp->crop_h / n;
  gl__img_resample(src, 1.0, 0.0, src->width / (2.0 * sx), src->height / (2.0 * sy), sx, sy,
                   fp->aa_x, fp->aa_y, n, n, out);
}
