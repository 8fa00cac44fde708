/* What a photo's EXIF and XMP say about the camera that took it, read with
 * libexiv2 (photo_meta.cc; C++ behind this C interface). */
#ifndef GL_TOOLS_PHOTO_META_H
#define GL_TOOLS_PHOTO_META_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct gl_photo_meta {
  unsigned orientation;   /* EXIF Orientation, 1-8; 1 when absent or invalid */
  unsigned width, height; /* the stored image's size, 0 when unknown */
  bool has_altitude;      /* XMP drone-dji:RelativeAltitude (m above the take-off) */
  double altitude_m;
  bool has_yaw;        /* XMP drone-dji:GimbalYawDegree, else FlightYawDegree */
  double yaw_deg;      /* where the stored image's top looks, clockwise from north */
  const char *yaw_tag; /* the tag it came from (static string) */
  bool has_pitch;      /* XMP drone-dji:GimbalPitchDegree: -90 looks straight down */
  double pitch_deg;
  bool has_focal35; /* EXIF FocalLengthIn35mmFilm (0 means unknown: not set) */
  double focal35_mm;
  bool has_gps; /* EXIF GPSLatitude/GPSLongitude with their Ref */
  double lat, lon;
};

/* Reads path's EXIF and XMP into *m (zeroed first, orientation 1). A file
 * with no metadata is no error. Returns 0, or GL_EFORMAT / GL_EIO with err
 * when libexiv2 cannot read the file (m then holds nothing). */
int gl_photo_meta_read(const char *path, struct gl_photo_meta *m, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
