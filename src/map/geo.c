/* Geodesy on the WGS84 ellipsoid through PROJ's geodesic routines (Karney's
 * algorithms): exact to nanometres, where a spherical haversine is off by
 * up to 0.5 %, which at a 1 km prior radius is a 5 m error on the edge. */
#include <math.h>
#include <pthread.h>

#include <geodesic.h>

#include "map/map.h"
#include "map/map_internal.h"

static struct geod_geodesic gl__wgs84;
static pthread_once_t gl__wgs84_once = PTHREAD_ONCE_INIT;

static void gl__wgs84_init(void) { geod_init(&gl__wgs84, 6378137.0, 1.0 / 298.257223563); }

static const struct geod_geodesic *gl__geod(void) {
  pthread_once(&gl__wgs84_once, gl__wgs84_init);
  return &gl__wgs84;
}

double gl_map_distance_m(double lat1, double lon1, double lat2, double lon2) {
  double s12 = 0;
  geod_inverse(gl__geod(), lat1, lon1, lat2, lon2, &s12, NULL, NULL);
  return s12;
}

int gl__map_circle_boxes(double lat, double lon, double radius_m, double box[2][4]) {
  const struct geod_geodesic *g = gl__geod();
  /* A circle that reaches a pole, or one so large that the sampling below
   * could miss its extent, is answered with whole bands of the globe: the
   * boxes only preselect, the exact distance test comes after. */
  bool north_pole = gl_map_distance_m(lat, lon, 90.0, 0.0) <= radius_m;
  bool south_pole = gl_map_distance_m(lat, lon, -90.0, 0.0) <= radius_m;
  if (north_pole || south_pole || radius_m > 2.0e6) {
    double lo = -90.0, hi = 90.0;
    if (!south_pole && radius_m <= 2.0e6) {
      double l2, o2;
      geod_direct(g, lat, lon, 180.0, radius_m, &l2, &o2, NULL);
      lo = l2;
    }
    if (!north_pole && radius_m <= 2.0e6) {
      double l2, o2;
      geod_direct(g, lat, lon, 0.0, radius_m, &l2, &o2, NULL);
      hi = l2;
    }
    box[0][0] = fmax(-90.0, lo - 1e-6);
    box[0][1] = fmin(90.0, hi + 1e-6);
    box[0][2] = -180.0;
    box[0][3] = 180.0;
    return 1;
  }
  /* The extremes of latitude lie at azimuths 0 and 180; those of longitude
   * lie near, but not exactly at, 90 and 270. Sampling the boundary every
   * degree and widening by 1 % of the extent (far more than the sampling
   * error of a circle this small) gives boxes that contain the circle. */
  double lat_lo = lat, lat_hi = lat, dlon_lo = 0, dlon_hi = 0;
  for (int az = 0; az < 360; az++) {
    double l2, o2;
    geod_direct(g, lat, lon, (double)az, radius_m, &l2, &o2, NULL);
    double d = remainder(o2 - lon, 360.0);
    lat_lo = fmin(lat_lo, l2);
    lat_hi = fmax(lat_hi, l2);
    dlon_lo = fmin(dlon_lo, d);
    dlon_hi = fmax(dlon_hi, d);
  }
  double pad_lat = (lat_hi - lat_lo) * 0.01 + 1e-9, pad_lon = (dlon_hi - dlon_lo) * 0.01 + 1e-9;
  double min_lat = fmax(-90.0, lat_lo - pad_lat), max_lat = fmin(90.0, lat_hi + pad_lat);
  double min_lon = lon + dlon_lo - pad_lon, max_lon = lon + dlon_hi + pad_lon;
  if (max_lon - min_lon >= 360.0) {
    min_lon = -180.0;
    max_lon = 180.0;
  }
  box[0][0] = min_lat;
  box[0][1] = max_lat;
  if (min_lon < -180.0) {
    /* Split at the antimeridian into [min+360, 180] and [-180, max]. */
    box[0][2] = min_lon + 360.0;
    box[0][3] = 180.0;
    box[1][0] = min_lat;
    box[1][1] = max_lat;
    box[1][2] = -180.0;
    box[1][3] = max_lon;
    return 2;
  }
  if (max_lon > 180.0) {
    box[0][2] = min_lon;
    box[0][3] = 180.0;
    box[1][0] = min_lat;
    box[1][1] = max_lat;
    box[1][2] = -180.0;
    box[1][3] = max_lon - 360.0;
    return 2;
  }
  box[0][2] = min_lon;
  box[0][3] = max_lon;
  return 1;
}
