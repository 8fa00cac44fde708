/* The frame pipeline: decoding on the libuv thread pool, dynamic batching and
 * inference on one thread per device, then search and clustering (the fine
 * stage) on threads of their own ([search] threads), so that a batch is
 * searched while the next one is inferred; finished jobs come back to the
 * event loop through a uv_async_t. A search thread takes the queue's jobs
 * in order, a group at a time; the frames of a tracked stream are searched
 * by one thread at a time, in the order the stream sent them.
 *
 * Decoding is shared between clients: each client's frames wait in a queue
 * of its own, and the decode workers take the clients' frames in turn, one
 * at a time. A decode runs to its end (a 4096 x 4096 PNG takes ~0.5 s), so
 * one client may hold at most [daemon] decode_threads workers, and there is
 * one worker more: a client whose frames are slow to decode uses every
 * core while it is alone, and another client's frame still starts at once
 * rather than after one of them.
 *
 * Jobs are created and finished on the loop thread. Every submitted job is
 * finished exactly once, whatever happens to it (decoded or not, stale or
 * not), which is how every accepted frame gets exactly one answer. */
#ifndef GL_DAEMON_PIPELINE_H
#define GL_DAEMON_PIPELINE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "img/footprint.h"
#include "img/img.h"
#include "map/map.h"
#include "proto/wire.h"
#include "runtime.h"
#include "track/track.h"

#define GL_JOB_MAX_CANDIDATES 100

enum gl_job_result {
  GL_JOB_OK,        /* candidates filled (possibly none: no match) */
  GL_JOB_BAD_IMAGE, /* the image did not decode; error says why */
  GL_JOB_BAD_REQUEST, /* decoded, but the frame's camera footprint does not fit the map's
                         tiles (gl_img_footprint); error says why */
  GL_JOB_STALE,     /* waited longer than stale_after_ms */
  GL_JOB_FAILED,    /* inference or search failed; error says why */
  GL_JOB_ABANDONED, /* its client closed before it was decoded: never decoded */
};

struct gl_job_candidate {
  double lat, lon;
  float score, confidence, radius_m;
  int64_t tile_id;
  float heading_deg; /* estimated by the fine stage; NaN otherwise */
};

/* A tracked stream (StreamOptions.track): the order of its frames and its
 * filter. Owned by the connection, which outlives its jobs. */
struct gl_stream_track {
  /* Loop thread. Frames are decoded in parallel, but reach the batcher in
   * the order the stream sent them, so that the filter steps in time
   * order: a decoded frame waits in `held` (by seq) for the earlier ones. */
  uint64_t next_seq;    /* given to the next accepted frame */
  uint64_t release_seq; /* the next frame allowed past decoding */
  struct gl_job *held;
  uint64_t last_time_us; /* the last accepted frame's capture time */
  bool has_time;
  /* Under the pipeline's lock: 1 + the search thread holding the stream
   * (one of its frames is being searched), 0 when none; the last scan of
   * the search queue that passed one of its frames by. */
  uint32_t searcher;
  uint64_t passed;
  /* The search thread holding the stream only, after Hello: the filter,
   * for the grid of its map, and the ids of its last fixed_lag + 1 frames
   * (a ring, for smoothing). */
  struct gl_track *filter;
  struct gl_track_params params;
  uint64_t ids[GL_TRACK_MAX_LAG + 1];
  uint32_t n_ids;
};

/* One client's frames waiting for a decode worker, oldest first. Owned by
 * the connection, which outlives its jobs; zeroed before first use. Loop
 * thread only. */
struct gl_decode_queue {
  struct gl_job *head, *tail;
  struct gl_decode_queue *next; /* in the pipeline's turn, while it has frames */
  uint32_t decoding;            /* its frames on a worker now */
};

struct gl_job {
  struct gl_job *next;
  uv_work_t work;
  struct gl_pipeline *pipe;
  struct gl_decode_queue *dq; /* its client's, until it is decoded */
  void *owner; /* the connection, for the done callback */
  struct gl_runtime *rt;
  uint32_t map;
  /* The request: the unpacked Frame, owned by the job (its image bytes are
   * decoded in place, without a copy). */
  gl_client_msg *msg;
  uint64_t frame_id;
  uint32_t top_k;
  bool has_prior;
  struct gl_map_prior prior;
  double heading_deg; /* the frame's compass heading; NaN when it has none */
  /* Tracking: the stream (NULL when untracked), the frame's place in it,
   * its capture time and velocity {north, east} (NaN when not given), and
   * the track after it (has_fix). */
  struct gl_stream_track *trk;
  uint64_t seq;
  uint64_t time_us;
  double vel[2];
  bool has_fix;
  struct gl_track_fix fix;
  uint64_t smoothed_id; /* the frame fix's smoothed state is for */
  /* The camera (Frame altitude_m, hfov_deg, tilt_deg, checked): the
   * decoded frame is cropped to the ground of one of the map's tiles
   * before anything else sees it. */
  bool has_camera;
  struct gl_img_camera camera;
  uint64_t max_pixels;
  /* Progress, microseconds on CLOCK_MONOTONIC. */
  uint64_t t_received, t_decoded, t_batched, t_inferred, t_done;
  uint32_t decode_us, infer_us, search_us;
  uint32_t batch_size;
  bool batch_first; /* the first frame of its batch: counts the batch once */
  /* The decoded frame (kept until the fine stage has used it; with a
   * camera, its crop to one tile, at most 2 S pixels a side for the model's
   * input side S), and with a heading, the frame turned north-up at the
   * model's input size, which the global stage encodes instead. */
  struct gl_image image;
  struct gl_image north;
  /* The outcome. */
  enum gl_job_result result;
  char error[512];
  struct gl_job_candidate cand[GL_JOB_MAX_CANDIDATES];
  uint32_t n_cand;
  /* The frame's descriptor, between inference and search: the job is
   * allocated with gl_job_size(dim) bytes. */
  float desc[];
};

/* Bytes to allocate for a job whose model has dim-float descriptors. */
static inline size_t gl_job_size(uint32_t dim) {
  return sizeof(struct gl_job) + (size_t)dim * sizeof(float);
}

typedef void (*gl_job_done_cb)(void *ud, struct gl_job *job);

struct gl_pipeline;

/* The decode workers for [daemon] decode_threads (0: one per CPU core):
 * that many, and the one kept for the other clients. They are threads of
 * libuv's pool, which must have at least as many (UV_THREADPOOL_SIZE, read
 * at its first use): frames handed to it beyond its threads would wait
 * there, first come first served. */
uint32_t gl_pipeline_decode_workers(uint32_t decode_threads);

/* Starts the inference thread and search_threads search threads (1..
 * GL_CONFIG_MAX_SEARCH_THREADS; search thread w runs the fine stage
 * rt->fine[w] of its jobs' runtime). Frames are decoded on
 * gl_pipeline_decode_workers(decode_threads) workers. done_cb runs on the
 * loop thread for every finished job, which it then owns (free with
 * gl_job_free). */
int gl_pipeline_create(uv_loop_t *loop, uint32_t decode_threads, uint32_t search_threads,
                       gl_job_done_cb done_cb, void *ud, struct gl_pipeline **out, char *err,
                       size_t errlen);

/* Queues a job (on the loop thread) in its client's queue q: decoding
 * first, in turn with the other clients' frames, then inference. */
void gl_pipeline_submit(struct gl_pipeline *p, struct gl_decode_queue *q, struct gl_job *job);

/* Its client is gone: the frames of q still waiting for a decode worker
 * are finished at once (GL_JOB_ABANDONED) instead of decoded for nobody.
 * Frames already on a worker or past decoding go on. Loop thread. */
void gl_pipeline_abandon(struct gl_pipeline *p, struct gl_decode_queue *q);

/* Jobs submitted and not yet finished. */
uint32_t gl_pipeline_pending(const struct gl_pipeline *p);

/* Stops the thread and closes the async handle; call with nothing pending,
 * and gl_pipeline_destroy only after the loop has run the close. */
void gl_pipeline_stop(struct gl_pipeline *p);
void gl_pipeline_destroy(struct gl_pipeline *p);

uint64_t gl_pipeline_now_us(void);

void gl_job_free(struct gl_job *job);

#endif
