/* geolocd configuration: an INI file read with libinih into a typed struct.
 *
 * Every key is documented in conf/geolocd.conf. Loading is strict: an
 * unknown section or key, a value that does not parse or is out of range, a
 * missing required key and an unsafe combination (a plaintext listener on a
 * non-loopback address without allow_remote_plaintext) are errors whose text
 * names the file, the line and the key. */
#ifndef GL_CORE_CONFIG_H
#define GL_CORE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/auth.h"

/* [model] backend */
enum gl_config_backend { GL_CONFIG_BACKEND_AUTO, GL_CONFIG_BACKEND_CUDA, GL_CONFIG_BACKEND_CPU };

/* One [map NAME] section. */
struct gl_config_map {
  char *name; /* letters, digits, '_', '-', '.'; 1..64 bytes */
  char *path; /* path: the map pack directory (required) */
  int line;   /* of the section header, for messages */
};

#define GL_CONFIG_MAX_MAPS 64
#define GL_CONFIG_MAX_SEARCH_THREADS 64

/* One [token NAME] section: a client token, as its salted hash, and the maps
 * it may use. */
struct gl_config_token {
  char *name;                /* as a map name; only for the log */
  struct gl_auth_hash hash;  /* hash: "sha256:SALT:HASH" (required) */
  char *maps[GL_CONFIG_MAX_MAPS]; /* maps: the [map NAME]s it may use */
  uint32_t n_maps;                /* 0: every map */
  bool has_hash;
  int line; /* of the section header, for messages */
};

#define GL_CONFIG_MAX_TOKENS 256

struct gl_config {
  char *path;

  /* [daemon] */
  int log_level;                 /* log_level: err|warning|notice|info|debug */
  uint32_t max_clients;          /* max_clients */
  uint32_t max_message_bytes;    /* max_message_bytes: largest accepted message */
  uint32_t handshake_timeout_ms; /* handshake_timeout_ms: connect to Hello */
  uint32_t idle_timeout_ms;      /* idle_timeout_ms: between messages, 0 = none */
  uint32_t drain_timeout_ms;     /* drain_timeout_ms: SIGTERM grace period */
  uint32_t stop_delay_ms;        /* stop_delay_ms: not ready, still serving, before draining */
  uint32_t decode_threads;       /* decode_threads: image decoding workers, 0 = cores */
  uint32_t max_frames_in_flight; /* max_frames_in_flight: per client */
  uint32_t queue_depth;          /* queue_depth: frames waiting for inference, all clients */
  uint32_t stale_after_ms;       /* stale_after_ms: answer DROPPED_STALE past this, 0 = never */
  uint32_t max_decoded_pixels;   /* max_decoded_pixels: width*height of a frame */
  uint32_t default_top_k;        /* default_top_k: estimates per frame when it does not say */
  /* max_clients_per_address: clients from one IP address, 0 = no limit */
  uint32_t max_clients_per_address;

  /* [model]; model_path NULL when the section is absent */
  char *model_path;                   /* path */
  enum gl_config_backend backend;     /* backend: auto|cuda|cpu */
  uint32_t max_batch;                 /* max_batch */
  uint32_t batch_window_us;           /* batch_window_us */
  uint32_t model_threads;             /* threads: CPU backend threads, 0 = cores */

  /* [search] */
  uint32_t search_tiles; /* tiles: nearest tiles clustered into estimates */
  uint32_t bandwidth_m;  /* bandwidth_m: clustering bandwidth, 0 = the map's tile size */
  uint32_t search_threads; /* threads: frames searched at once, 0 one per core (restart) */
  /* The fine stage (src/loc/fine.h), for maps with a dense layer. */
  bool fine;                   /* fine: on (default) or off */
  uint32_t fine_top_k;         /* fine_top_k: global candidates re-scored */
  uint32_t fine_radius_cells;  /* fine_radius_cells: shifts around each */
  uint32_t fine_full_scan_cells; /* fine_full_scan_cells: every placement of maps this small */
  uint32_t heading_step_deg;   /* heading_step_deg: divides 360 */
  uint32_t heading_tolerance_deg; /* heading_tolerance_deg: with a compass heading */

  /* [track]: tracking of streams that ask for it (src/track/track.h) */
  bool track;                    /* enabled */
  uint32_t track_max_speed_mps;  /* max_speed_mps: when the stream does not say */
  uint32_t track_window_cells;   /* window_cells: the filter's window side */

  /* [map NAME] sections, in file order */
  struct gl_config_map maps[GL_CONFIG_MAX_MAPS];
  uint32_t n_maps;

  /* [token NAME] sections, in file order; when there is one, every Hello
   * must carry one of these tokens */
  struct gl_config_token *tokens;
  uint32_t n_tokens;

  /* [metrics] */
  char *metrics_listen; /* listen: "IP:port" of /metrics, /healthz, /readyz, or NULL */

  /* [listen] */
  char *tcp;                   /* tcp: plaintext "IP:port" or NULL */
  char *unix_path;             /* unix: plaintext unix socket path or NULL */
  uint32_t unix_mode;          /* unix_mode: the socket file's permission bits (0660) */
  char *unix_group;            /* unix_group: the socket file's group name, or NULL */
  char *tls;                   /* tls: TLS "IP:port" or NULL */
  bool allow_remote_plaintext; /* allow_remote_plaintext */

  /* [tls] */
  char *tls_cert;           /* cert: PEM certificate chain */
  char *tls_key;            /* key: PEM private key */
  char *tls_ca;             /* ca: PEM CA bundle that client certificates must chain to */
  bool require_client_cert; /* require_client_cert */
  char *tls_ciphers;        /* ciphers: TLS 1.2 cipher list (OpenSSL syntax); NULL: AEAD only */
};

/* Fills cfg with the defaults of every key and no listener. */
void gl_config_defaults(struct gl_config *cfg);

/* Loads and validates path into cfg (which the caller then owns and releases
 * with gl_config_fini). On failure cfg is left empty, a message naming file,
 * line and key is written to err, and GL_ECONFIG (bad content) or GL_ENOENT
 * (unreadable file) is returned. */
int gl_config_load(const char *path, struct gl_config *cfg, char *err, size_t errlen);

void gl_config_fini(struct gl_config *cfg);

/* Whether token t may use the map called map. */
bool gl_config_token_allows(const struct gl_config_token *t, const char *map);

/* Looks up the group called name (getgrnam_r) into *gid. Returns 0, or
 * GL_ENOENT with a message in err ("no group named 'x'"). */
int gl_config_group(const char *name, gid_t *gid, char *err, size_t errlen);

#endif
