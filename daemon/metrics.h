/* Metrics, liveness and readiness of geolocd over HTTP.
 *
 * A small registry of counters, gauges and histograms that any thread of the
 * daemon updates without locks (C11 atomics, relaxed order: each value is
 * exact on its own, a scrape is not a snapshot across values), and an HTTP
 * server on a separate local port run by libmicrohttpd on its own thread, so
 * a scrape never runs on, nor waits for, the libuv loop. It serves:
 *
 *   GET /metrics  Prometheus text exposition format 0.0.4
 *   GET /healthz  200 "ok\n" while the event loop calls gl_metrics_heartbeat()
 *                 often enough, 503 "event loop stalled\n" once the last call
 *                 is older than the stall timeout (default 5 s)
 *   GET /readyz   200 "ready\n" after gl_metrics_set_ready(m, true),
 *                 503 "not ready\n" before and after gl_metrics_set_ready(m, false)
 *
 * HEAD works wherever GET does; any other method is answered 405, any other
 * path 404.
 *
 * Every update function accepts m == NULL and then does nothing, so that call
 * sites need no check when the metrics endpoint is switched off. */
#ifndef GL_DAEMON_METRICS_H
#define GL_DAEMON_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct gl_metrics;

/* How a frame was answered: the "status" label of geoloc_frames_total. */
enum gl_metrics_status {
  GL_METRICS_FRAME_OK,            /* "ok": estimates sent */
  GL_METRICS_FRAME_NO_MATCH,      /* "no_match": processed, nothing matched */
  GL_METRICS_FRAME_DROPPED_STALE, /* "dropped_stale": waited past stale_after_ms */
  GL_METRICS_FRAME_BUSY,          /* "busy": queue full or too many in flight */
  GL_METRICS_FRAME_BAD_IMAGE,     /* "bad_image": undecodable or over the limits */
  GL_METRICS_FRAME_UNAVAILABLE,   /* "unavailable": no model or map to answer with */
  GL_METRICS_FRAME_ERROR,         /* "error": anything else (a GPU error...) */
  GL_METRICS_FRAME_ABANDONED,     /* "abandoned": its client left before it was decoded */
  GL_METRICS_FRAME__COUNT
};

/* The latency histograms, each observed once per frame, in microseconds. */
enum gl_metrics_hist {
  GL_METRICS_QUEUE,  /* geoloc_queue_seconds: decoded to picked by the batcher */
  GL_METRICS_INFER,  /* geoloc_infer_seconds: the batch that carried the frame */
  GL_METRICS_SEARCH, /* geoloc_search_seconds: map search and clustering */
  GL_METRICS_DECODE, /* geoloc_decode_seconds: decoding and preprocessing */
  GL_METRICS_HIST__COUNT
};

/* Buckets of the latency histograms: upper bounds in microseconds, 100 us to
 * 10 s in 1-2.5-5 steps, then +Inf. */
#define GL_METRICS_LATENCY_BUCKETS 16
extern const uint64_t gl_metrics_latency_bounds_us[GL_METRICS_LATENCY_BUCKETS];

/* Buckets of geoloc_batch_size: 1, 2, 4, ..., 256, then +Inf. */
#define GL_METRICS_BATCH_BUCKETS 9

/* Default of gl_metrics_set_stall_timeout. */
#define GL_METRICS_STALL_MS_DEFAULT 5000u
/* How often the daemon should call gl_metrics_heartbeat(): well inside the
 * stall timeout, so that one late timer never reads as a stall. */
#define GL_METRICS_HEARTBEAT_MS 1000u

/* Creates the registry and, when listen_addr is neither NULL nor empty,
 * starts the HTTP server on it.
 *
 * listen_addr: numeric "IPv4:port" or "[IPv6]:port" (gl_addr_parse); host
 *   names are refused. Whether a non-loopback address is allowed is the
 *   caller's policy, checked before this call.
 * out: set to the new object on success, NULL on failure.
 * err, errlen: receives the reason on failure ("127.0.0.1:9100: Address
 *   already in use").
 *
 * The registry starts with every value 0, backend "none", not ready, and a
 * heartbeat taken now. Returns 0, GL_EADDR (unparsable address, or it cannot
 * be bound), GL_ENOMEM or GL_EIO (the HTTP server did not start). */
int gl_metrics_create(const char *listen_addr, struct gl_metrics **out, char *err, size_t errlen);

/* Stops the HTTP server (waiting for its thread, closing its socket) and
 * frees m. No other thread may use m during or after the call. NULL is
 * allowed. */
void gl_metrics_destroy(struct gl_metrics *m);

/* The bound port in host order, 0 when no server runs (or m is NULL). */
uint16_t gl_metrics_port(const struct gl_metrics *m);

/* Counts one answered frame. Out-of-range status counts as "error". */
void gl_metrics_frame(struct gl_metrics *m, enum gl_metrics_status status);

/* Records one duration of histogram h, in microseconds. */
void gl_metrics_observe(struct gl_metrics *m, enum gl_metrics_hist h, uint64_t us);

/* Records the size of one inference batch (0 is recorded as 1). */
void gl_metrics_batch(struct gl_metrics *m, uint32_t n);

/* geoloc_clients: connections holding a client slot. */
void gl_metrics_set_clients(struct gl_metrics *m, uint64_t n);

/* geoloc_frames_in_flight += delta (received, not yet answered). */
void gl_metrics_add_in_flight(struct gl_metrics *m, int64_t delta);

/* geoloc_maps: maps loaded and searchable. */
void gl_metrics_set_maps(struct gl_metrics *m, uint64_t n);

/* The "backend" label of geoloc_backend_info: "cpu-onednn", "cuda" or
 * "none" (NULL means "none"). The text is copied (at most 63 bytes kept) and
 * escaped when rendered. Takes a mutex: call it when the backend changes,
 * not per frame. */
void gl_metrics_set_backend(struct gl_metrics *m, const char *name);

/* Marks the event loop alive now. Call it from a repeating uv_timer_t on the
 * loop (every GL_METRICS_HEARTBEAT_MS), never from another thread, or
 * /healthz would vouch for a loop that is stuck. */
void gl_metrics_heartbeat(struct gl_metrics *m);

/* /healthz answers 503 once the last heartbeat is more than ms old
 * (0 restores GL_METRICS_STALL_MS_DEFAULT). */
void gl_metrics_set_stall_timeout(struct gl_metrics *m, uint32_t ms);

/* What /readyz answers: true once serving, false while starting, draining,
 * or after a reload left the daemon without a usable model or map. */
void gl_metrics_set_ready(struct gl_metrics *m, bool ready);

/* Renders the exposition text that GET /metrics serves into a malloc'ed,
 * NUL-terminated string (*len bytes, not counting the NUL), for tests and
 * for logging on exit. Returns 0 or GL_ENOMEM (*out is then NULL). */
int gl_metrics_render(struct gl_metrics *m, char **out, size_t *len);

#endif
