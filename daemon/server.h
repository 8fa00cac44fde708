/* The geolocd server: listeners, connections and the protocol state machine
 * on one libuv loop. */
#ifndef GL_DAEMON_SERVER_H
#define GL_DAEMON_SERVER_H

#include <uv.h>

#include "core/config.h"

struct gl_server;

/* Takes ownership of cfg (loaded and validated). Builds the TLS context and
 * opens the listeners (sockets passed by systemd replace the configured
 * addresses). Writes the reason to err and returns a GL_E* code when it
 * cannot serve. */
int gl_server_create(uv_loop_t *loop, struct gl_config *cfg, struct gl_server **out, char *err,
                     size_t errlen);

/* Reports readiness and runs the loop until SIGTERM/SIGINT has drained
 * every connection. Returns 0. */
int gl_server_run(struct gl_server *srv);

void gl_server_destroy(struct gl_server *srv);

#endif
