/* systemd integration: readiness and status notification, the watchdog and
 * socket activation. Every function is a harmless no-op when geolocd is not
 * run by systemd or was built without libsystemd. */
#ifndef GL_DAEMON_SD_H
#define GL_DAEMON_SD_H

#include <stdint.h>

/* Sends a state string such as "READY=1\nSTATUS=serving" to the manager. */
void gl_sd_notify(const char *state);
void gl_sd_notifyf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The watchdog interval the manager expects, in microseconds; 0 when off. */
uint64_t gl_sd_watchdog_usec(void);

/* Sockets passed by socket activation: returns their count (fds start at 3)
 * and their FileDescriptorName= values in *names (free with
 * gl_sd_free_names); 0 when none; a negative GL_E* code on error. */
int gl_sd_listen_fds(char ***names);
void gl_sd_free_names(char **names);

#endif
