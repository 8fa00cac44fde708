// A photo's EXIF and XMP through libexiv2 (Debian: libexiv2-dev), behind
// the C interface of photo_meta.h. DJI drones write their flight state as
// XMP in the namespace http://www.dji.com/drone-dji/1.0/ (prefix
// drone-dji): RelativeAltitude, GimbalYawDegree, FlightYawDegree,
// GimbalPitchDegree, as signed decimal strings ("+99.80", "-90.00").
#include "photo_meta.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include <exiv2/exiv2.hpp>

extern "C" {
#include "core/err.h"
}

namespace {

const char kDjiNs[] = "http://www.dji.com/drone-dji/1.0/";

// A decimal number, all of the string (spaces around allowed).
bool parse_number(const std::string &s, double *out) {
  const char *p = s.c_str();
  char *end;
  errno = 0;
  double v = std::strtod(p, &end);
  if (end == p || errno != 0 || !std::isfinite(v))
    return false;
  while (*end == ' ')
    end++;
  if (*end)
    return false;
  *out = v;
  return true;
}

// degrees, minutes, seconds (three rationals) and a reference letter.
bool gps_coordinate(const Exiv2::ExifData &exif, const char *key, const char *ref_key,
                    char negative, double *out) {
  auto it = exif.findKey(Exiv2::ExifKey(key));
  auto ref = exif.findKey(Exiv2::ExifKey(ref_key));
  if (it == exif.end() || ref == exif.end() || it->count() < 3)
    return false;
  double v = 0, scale = 1;
  for (long i = 0; i < 3; i++, scale *= 60) {
    float part = it->toFloat(i);
    if (!std::isfinite(part))
      return false;
    v += part / scale;
  }
  std::string r = ref->toString();
  *out = !r.empty() && r[0] == negative ? -v : v;
  return true;
}

void read_xmp(const Exiv2::XmpData &xmp, gl_photo_meta *m) {
  bool gimbal_yaw = false;
  for (const auto &d : xmp) {
    std::string prefix = d.groupName();
    std::string ns;
    try {
      ns = Exiv2::XmpProperties::ns(prefix);
    } catch (const std::exception &) {
    }
    if (prefix != "drone-dji" && ns != kDjiNs)
      continue;
    std::string tag = d.tagName();
    double v;
    if (!parse_number(d.toString(), &v))
      continue;
    if (tag == "RelativeAltitude") {
      m->has_altitude = true;
      m->altitude_m = v;
    } else if (tag == "GimbalYawDegree") {
      m->has_yaw = gimbal_yaw = true;
      m->yaw_deg = v;
      m->yaw_tag = "drone-dji:GimbalYawDegree";
    } else if (tag == "FlightYawDegree" && !gimbal_yaw) {
      m->has_yaw = true;
      m->yaw_deg = v;
      m->yaw_tag = "drone-dji:FlightYawDegree";
    } else if (tag == "GimbalPitchDegree") {
      m->has_pitch = true;
      m->pitch_deg = v;
    }
  }
}

void read_exif(const Exiv2::ExifData &exif, gl_photo_meta *m) {
  auto o = exif.findKey(Exiv2::ExifKey("Exif.Image.Orientation"));
  if (o != exif.end() && o->count() >= 1) {
    long v = o->toLong();
    if (v >= 1 && v <= 8)
      m->orientation = (unsigned)v;
  }
  auto f = exif.findKey(Exiv2::ExifKey("Exif.Photo.FocalLengthIn35mmFilm"));
  if (f != exif.end() && f->count() >= 1 && f->toLong() > 0) {
    m->has_focal35 = true;
    m->focal35_mm = (double)f->toLong();
  }
  double lat, lon;
  if (gps_coordinate(exif, "Exif.GPSInfo.GPSLatitude", "Exif.GPSInfo.GPSLatitudeRef", 'S', &lat) &&
      gps_coordinate(exif, "Exif.GPSInfo.GPSLongitude", "Exif.GPSInfo.GPSLongitudeRef", 'W',
                     &lon) &&
      std::fabs(lat) <= 90 && std::fabs(lon) <= 180) {
    m->has_gps = true;
    m->lat = lat;
    m->lon = lon;
  }
}

} // namespace

extern "C" int gl_photo_meta_read(const char *path, struct gl_photo_meta *m, char *err,
                                  size_t errlen) {
  *m = gl_photo_meta{};
  m->orientation = 1;
  // exiv2 reports what it skips on stderr by default; its exceptions say
  // what matters here.
  Exiv2::LogMsg::setLevel(Exiv2::LogMsg::mute);
  try {
    auto img = Exiv2::ImageFactory::open(path); // a std::auto_ptr in exiv2 0.27
    img->readMetadata();
    m->width = (unsigned)img->pixelWidth();
    m->height = (unsigned)img->pixelHeight();
    read_exif(img->exifData(), m);
    read_xmp(img->xmpData(), m);
  } catch (const std::exception &e) {
    *m = gl_photo_meta{};
    m->orientation = 1;
    return gl_fail(err, errlen, GL_EFORMAT, "cannot read its metadata: %s", e.what());
  }
  return GL_OK;
}
