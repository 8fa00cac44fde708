/* Feeding an autopilot from `geoloc query` and `geoloc bridge`: the MAVLink
 * options, the fix each answer stands for, and the link that carries the
 * GPS_INPUT packets (src/client/mavlink.h). */
#ifndef GL_TOOLS_AUTOPILOT_H
#define GL_TOOLS_AUTOPILOT_H

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>

#include "client/mavlink.h"
#include "stream.h"

/* Options of query and bridge (values 1300..1307), for getopt_long. */
// clang-format off
#define GL_CLI_MAVLINK_OPTIONS                                                                 \
  {"mavlink", required_argument, NULL, 1300}, {"mavlink-sysid", required_argument, NULL, 1301}, \
  {"mavlink-compid", required_argument, NULL, 1302}, {"gps-id", required_argument, NULL, 1303}, \
  {"min-confidence", required_argument, NULL, 1304},                                           \
  {"satellites", required_argument, NULL, 1305}, {"hdop", required_argument, NULL, 1306},      \
  {"no-heartbeat", no_argument, NULL, 1307}
// clang-format on
#define GL_CLI_MAVLINK_USAGE                                                                       \
  "  --mavlink LINK      also send each answer to an autopilot as a MAVLink v2\n"                  \
  "                      GPS_INPUT packet, and a HEARTBEAT a second: LINK is\n"                    \
  "                      udp:HOST:PORT or serial:/dev/ttyX[:BAUD] (default 57600)\n"               \
  "  --mavlink-sysid N   system id of the packets (default 1, the vehicle's)\n"                    \
  "  --mavlink-compid N  component id (default 191, MAV_COMP_ID_ONBOARD_COMPUTER)\n"               \
  "  --gps-id N          the autopilot's GPS to feed (default 0: the first)\n"                     \
  "  --min-confidence C  below it a position is sent as a 2D fix, which autopilots show\n"         \
  "                      but do not navigate on (default 0.5); no fix while a track is\n"          \
  "                      ACQUIRING or LOST\n"                                                      \
  "  --satellites N      satellites_visible to claim (default 0, the truth)\n"                     \
  "  --hdop X            HDOP to claim (default: unknown, flagged as ignored)\n"                   \
  "  --no-heartbeat      send GPS_INPUT only\n"

struct gl_cli_mavlink {
  const char *link; /* --mavlink, NULL: none */
  struct gl_mavlink_opts opts;
  bool no_heartbeat;
};

/* The defaults (no link, gl_mavlink_opts_default). */
void gl_cli_mavlink_init(struct gl_cli_mavlink *m);

/* Applies one of GL_CLI_MAVLINK_OPTIONS, as a gl_cli_apply_fn does:
 * GL_EINVAL after printing why. */
int gl_cli_mavlink_option(int o, const char *flag, const char *arg, struct gl_cli_mavlink *m);

/* The fix an answer stands for: a tracked frame's track, else its best
 * candidate (none: no position); vn, ve: the velocity the frame was sent
 * with (NaN: none). */
void gl_cli_answer_fix(const struct gl_cli_answer *a, double vn, double ve,
                       struct gl_mavlink_fix *f);

/* The packets' way to the autopilot. */
struct gl_cli_autopilot {
  const char *prog;
  struct gl_mavlink_out *out; /* NULL: no --mavlink */
  struct gl_mavlink stream;
  bool heartbeat;
  uint64_t next_heartbeat_us; /* monotonic */
  bool down;                  /* the link failed and has not carried a packet since */
  uint64_t sent, dropped;
};

/* Makes the link of m (nothing without --mavlink) and opens it. When it
 * cannot be opened now: with must_open, prints why and returns the error;
 * else prints a warning and leaves it to be opened again by a later send
 * (a serial adapter that is not plugged in yet). GL_EINVAL for a bad LINK. */
int gl_cli_autopilot_open(struct gl_cli_autopilot *ap, const char *prog,
                          const struct gl_cli_mavlink *m, bool must_open);

/* Sends a HEARTBEAT when one is due, then the fix's GPS_INPUT. A link that
 * is down drops the packet, saying so once until it is back. */
void gl_cli_autopilot_send(struct gl_cli_autopilot *ap, const struct gl_mavlink_fix *f);

/* Sends a HEARTBEAT when one is due (once a second); for loops that wait. */
void gl_cli_autopilot_tick(struct gl_cli_autopilot *ap);

/* Closes the link, saying how many packets were dropped if any. */
void gl_cli_autopilot_close(struct gl_cli_autopilot *ap);

#endif
