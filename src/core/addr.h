/* Socket addresses as written in configs and on command lines. */
#ifndef GL_CORE_ADDR_H
#define GL_CORE_ADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

/* Parses a numeric "IPv4:port" or "[IPv6]:port" into *ss (port 1..65535).
 * Host names are refused: a daemon binds what the config says, without DNS.
 * Returns 0 or GL_EADDR. */
int gl_addr_parse(const char *text, struct sockaddr_storage *ss);

/* True when the address is in 127.0.0.0/8 or is ::1. */
bool gl_addr_is_loopback(const struct sockaddr_storage *ss);

/* Formats as "IPv4:port" or "[IPv6]:port" into buf (at least 64 bytes). */
const char *gl_addr_format(const struct sockaddr_storage *ss, char *buf, size_t len);

#endif
