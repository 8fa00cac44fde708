/* NMEA 0183 sentences from position estimates, so that geoloc can feed gpsd
 * or an autopilot as if it were a GPS receiver. */
#ifndef GL_CLIENT_NMEA_H
#define GL_CLIENT_NMEA_H

#include <stddef.h>
#include <stdint.h>

/* Writes "$GPGGA,...*hh\r\n" for (lat, lon) at time_us (microseconds since
 * the Unix epoch, UTC). The fix quality is 6 ("estimated"): the position did
 * not come from satellites, and a consumer must be able to tell. Returns the
 * length, or 0 when buf (at least 96 bytes are enough) is too small or the
 * coordinates are out of range. */
size_t gl_nmea_gga(char *buf, size_t len, uint64_t time_us, double lat, double lon);

/* Writes "$GPRMC,...*hh\r\n" with status A and the NMEA 2.3 mode indicator E
 * (estimated); speed and course are left empty. Same returns as gl_nmea_gga. */
size_t gl_nmea_rmc(char *buf, size_t len, uint64_t time_us, double lat, double lon);

/* The checksum of a sentence: XOR of the bytes between '$' and '*'. */
uint8_t gl_nmea_checksum(const char *sentence);

#endif
