#include "pipeline.h"

#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/err.h"
#include "core/log.h"
#include "loc/locate.h"

#define GL__MAX_BATCH 1024
#define GL__MAX_TILES 1024
/* Frames searched with one call at most: enough for the matrix product of
 * a Flat map to pay off (from 8 queries on), and a bound on the hits
 * scratch (32 frames * 1024 tiles). */
#define GL__SEARCH_GROUP 32

/* A search thread and what only it touches. sdesc holds a search group's
 * descriptors side by side, grown to the largest group seen. */
struct gl__searcher {
  struct gl_pipeline *p;
  uint32_t w; /* its index: it runs the runtime's fine stage w */
  pthread_t thread;
  bool started;
  struct gl_loc_locator *loc;
  struct gl_loc_estimate est[GL_JOB_MAX_CANDIDATES];
  float *sdesc;
  size_t sdesc_cap;
  struct gl_map_prior sprior[GL__SEARCH_GROUP];
  struct gl_job *group[GL__SEARCH_GROUP];
};

struct gl_pipeline {
  uv_loop_t *loop;
  uv_async_t async;
  gl_job_done_cb done_cb;
  void *ud;
  /* Loop thread only: jobs submitted and not finished; the decode workers,
   * how many of them one client may hold, and how many are busy; the
   * clients with frames waiting for one, in turn (each goes to the back of
   * the turn when one of its frames is handed to a worker). */
  uint32_t pending;
  uint32_t decode_workers, decode_share, decoding;
  struct gl_decode_queue *turn_head, *turn_tail;

  pthread_t thread;
  bool thread_started;
  pthread_mutex_t mu;
  pthread_cond_t cv;        /* inference: work arrived or stop */
  pthread_cond_t search_cv; /* search: work arrived, a stream was let go, or stop */
  struct gl_job *search_head, *search_tail; /* inferred, to search; under mu */
  bool stop;                                /* the inference thread stops; under mu */
  bool search_stop;                         /* the search threads stop (after it); under mu */
  struct gl_job *in_head, *in_tail; /* decoded, waiting for inference; under mu */
  struct gl_job *done_head, *done_tail; /* finished, for the loop; under mu */

  struct gl__searcher search[GL_CONFIG_MAX_SEARCH_THREADS];
  uint32_t n_search;
  uint64_t scans; /* gl__take's scans of the queue; under mu */
  /* Inference thread only. Sized for the largest batch and descriptor seen:
   * they grow when a reloaded model needs more, never per frame. */
  float *desc;
  size_t desc_cap;
  struct gl_job *batch[GL__MAX_BATCH];
  struct gl_image images[GL__MAX_BATCH];
};

uint64_t gl_pipeline_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void gl_job_free(struct gl_job *job) {
  if (!job)
    return;
  gl_wire_free(job->msg);
  gl_img_free(&job->image);
  free(job->north.rgb);
  free(job);
}

static void gl__append(struct gl_job **head, struct gl_job **tail, struct gl_job *job) {
  job->next = NULL;
  if (*tail)
    (*tail)->next = job;
  else
    *head = job;
  *tail = job;
}

static void gl__finish_on_loop(struct gl_pipeline *p, struct gl_job *job) {
  job->t_done = gl_pipeline_now_us();
  p->pending--;
  p->done_cb(p->ud, job);
}

/* ---- decoding, on the libuv thread pool --------------------------------- */

/* A frame with a camera: the decoded frame is replaced by its crop to the
 * ground of one of the map's tiles (footprint.h), sized by the footprint
 * and never more than rt->crop_side pixels a side (gl_loc_crop_side: twice
 * the fine stage's input, 256 for the shipped model), so at most 3
 * crop_side^2 bytes a job besides the decoded frame. False when the
 * footprint is refused (BAD_REQUEST) or memory runs out; the job's result
 * and error say which. */
static bool gl__decode_crop(struct gl_job *job) {
  const struct gl_runtime *rt = job->rt;
  const uint32_t s = rt->input_size;
  struct gl_img_footprint fp;
  if (gl_img_footprint(job->image.width, job->image.height, &job->camera,
                       gl_map_tile_m(rt->maps[job->map].map), (s + 1) / 2, rt->crop_side, &fp,
                       job->error, sizeof job->error) != GL_OK) {
    job->result = GL_JOB_BAD_REQUEST;
    return false;
  }
  struct gl_image crop = {malloc((size_t)fp.side * fp.side * 3), fp.side, fp.side};
  if (!crop.rgb) {
    job->result = GL_JOB_FAILED;
    snprintf(job->error, sizeof job->error, "out of memory");
    return false;
  }
  gl_img_footprint_crop(&job->image, &fp, crop.rgb);
  gl_img_free(&job->image);
  job->image = crop;
  return true;
}

static void gl__decode_work(uv_work_t *w) {
  struct gl_job *job = w->data;
  const Geoloc__V1__Frame *f = job->msg->frame;
  uint64_t t0 = gl_pipeline_now_us();
  enum gl_img_format fmt = GL_IMG_AUTO;
  switch (f->format) {
  case GEOLOC__V1__IMAGE_FORMAT__JPEG:
    fmt = GL_IMG_JPEG;
    break;
  case GEOLOC__V1__IMAGE_FORMAT__PNG:
    fmt = GL_IMG_PNG;
    break;
  case GEOLOC__V1__IMAGE_FORMAT__RGB8:
    fmt = GL_IMG_RGB8;
    break;
  default:
    break;
  }
  int rc = gl_img_decode(f->image.data, f->image.len, fmt, f->width, f->height, job->max_pixels,
                         &job->image, job->error, sizeof job->error);
  if (rc != GL_OK) {
    job->result = GL_JOB_BAD_IMAGE;
    if (!job->error[0])
      snprintf(job->error, sizeof job->error, "%s", gl_strerror(rc));
  } else if (job->has_camera && !gl__decode_crop(job)) {
    /* refused or out of memory: the job's result says which */
  } else if (!isnan(job->heading_deg)) {
    /* A compass heading: the frame is encoded north-up, as the map is. */
    uint32_t s = job->rt->input_size;
    if (!(job->north.rgb = malloc((size_t)s * s * 3))) {
      job->result = GL_JOB_FAILED;
      snprintf(job->error, sizeof job->error, "out of memory");
    } else {
      job->north.width = job->north.height = s;
      gl_img_warp(&job->image, job->heading_deg, s, s, job->north.rgb);
    }
  }
  /* The encoded bytes are not needed any more: free them while the frame
   * waits for inference. */
  gl_wire_free(job->msg);
  job->msg = NULL;
  job->t_decoded = gl_pipeline_now_us();
  job->decode_us = (uint32_t)(job->t_decoded - t0);
}

/* A decoded job goes on to inference, a failed one is finished. */
static void gl__decoded(struct gl_pipeline *p, struct gl_job *job) {
  if (job->result != GL_JOB_OK) {
    gl__finish_on_loop(p, job);
    return;
  }
  pthread_mutex_lock(&p->mu);
  gl__append(&p->in_head, &p->in_tail, job);
  pthread_cond_signal(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

/* Passes job on, in its stream's order when the stream is tracked: held
 * until every earlier frame of the stream has passed (or failed). */
static void gl__release(struct gl_pipeline *p, struct gl_job *job) {
  struct gl_stream_track *t = job->trk;
  if (!t) {
    gl__decoded(p, job);
    return;
  }
  struct gl_job **at = &t->held;
  while (*at && (*at)->seq < job->seq)
    at = &(*at)->next;
  job->next = *at;
  *at = job;
  /* Take the frames that may go off t first: passing a failed one on
   * answers it at once, and when it was its connection's last frame and
   * the connection is closed, that frees the connection and t with it. */
  struct gl_job *go = NULL, **tail = &go;
  while (t->held && t->held->seq == t->release_seq) {
    struct gl_job *j = t->held;
    t->held = j->next;
    j->next = NULL;
    t->release_seq++;
    *tail = j;
    tail = &j->next;
  }
  while (go) {
    struct gl_job *j = go;
    go = j->next;
    j->next = NULL;
    gl__decoded(p, j);
  }
}

static void gl__turn_append(struct gl_pipeline *p, struct gl_decode_queue *q) {
  q->next = NULL;
  if (p->turn_tail)
    p->turn_tail->next = q;
  else
    p->turn_head = q;
  p->turn_tail = q;
}

static void gl__decode_done(uv_work_t *w, int status);

/* Hands frames to the free decode workers, one from each waiting client in
 * turn, skipping the clients that hold their share. Only as many frames as
 * there are workers are handed to libuv at once: its own queue is first
 * come first served. */
static void gl__decode_next(struct gl_pipeline *p) {
  while (p->decoding < p->decode_workers) {
    struct gl_decode_queue **at = &p->turn_head, *prev = NULL;
    while (*at && (*at)->decoding >= p->decode_share) {
      prev = *at;
      at = &prev->next;
    }
    struct gl_decode_queue *q = *at;
    if (!q)
      return;
    if (!(*at = q->next))
      p->turn_tail = prev;
    struct gl_job *job = q->head;
    if (!(q->head = job->next))
      q->tail = NULL;
    else
      gl__turn_append(p, q); /* its next frame waits for the others' */
    job->next = NULL;
    job->dq = q;
    q->decoding++;
    p->decoding++;
    int rc = uv_queue_work(p->loop, &job->work, gl__decode_work, gl__decode_done);
    if (rc < 0) {
      q->decoding--;
      p->decoding--;
      job->result = GL_JOB_FAILED;
      snprintf(job->error, sizeof job->error, "cannot queue the frame: %s", uv_strerror(rc));
      gl__release(p, job);
    }
  }
}

static void gl__decode_done(uv_work_t *w, int status) {
  struct gl_job *job = w->data;
  struct gl_pipeline *p = job->pipe;
  if (status == UV_ECANCELED && job->result == GL_JOB_OK) {
    job->result = GL_JOB_FAILED;
    snprintf(job->error, sizeof job->error, "decoding was cancelled");
  }
  job->dq->decoding--;
  p->decoding--;
  gl__release(p, job);
  gl__decode_next(p);
}

void gl_pipeline_submit(struct gl_pipeline *p, struct gl_decode_queue *q, struct gl_job *job) {
  job->pipe = p;
  job->work.data = job;
  job->next = NULL;
  p->pending++;
  if (q->tail) {
    q->tail->next = job;
  } else {
    q->head = job;
    gl__turn_append(p, q);
  }
  q->tail = job;
  gl__decode_next(p);
}

void gl_pipeline_abandon(struct gl_pipeline *p, struct gl_decode_queue *q) {
  struct gl_job *job = q->head;
  if (!job)
    return;
  struct gl_decode_queue **at = &p->turn_head, *prev = NULL;
  while (*at != q) { /* a queue with frames is in the turn */
    prev = *at;
    at = &prev->next;
  }
  if (!(*at = q->next))
    p->turn_tail = prev;
  q->head = q->tail = NULL;
  while (job) {
    struct gl_job *next = job->next;
    job->next = NULL;
    job->result = GL_JOB_ABANDONED;
    snprintf(job->error, sizeof job->error, "its client closed the connection");
    gl__release(p, job); /* a tracked stream's later frames are not held for it */
    job = next;
  }
}

uint32_t gl_pipeline_decode_workers(uint32_t decode_threads) {
  return (decode_threads ? decode_threads : uv_available_parallelism()) + 1;
}

uint32_t gl_pipeline_pending(const struct gl_pipeline *p) { return p->pending; }

/* ---- inference; search and clustering on a thread of their own --------- */

/* Steps the stream's filter with job's frame, just run by the fine stage
 * ff (best: its best estimate, or NULL). The filter is made for the map's
 * grid at the stream's first frame, and made again if a reload changed
 * the grid. */
static int gl__track(struct gl_job *job, struct gl_map *map, struct gl_loc_fine_frame *ff,
                     const struct gl_loc_estimate *best) {
  struct gl_stream_track *t = job->trk;
  uint32_t rows, cols;
  double cell;
  if (gl_track_grid(map, ff, &rows, &cols, &cell))
    return GL_OK; /* no dense grid: nothing to track on */
  if (t->filter && !gl_track_fits(t->filter, rows, cols, cell)) {
    gl_track_destroy(t->filter);
    t->filter = NULL;
  }
  if (!t->filter) {
    int rc = gl_track_create(&t->params, rows, cols, cell, &t->filter, job->error,
                             sizeof job->error);
    if (rc)
      return rc;
  }
  const double *v = isnan(job->vel[0]) ? NULL : job->vel;
  int rc = gl_track_frame(t->filter, ff, map, job->time_us, v, best ? best->lat : NAN,
                          best ? best->lon : NAN, best ? best->confidence : NAN, &job->fix,
                          job->error, sizeof job->error);
  job->has_fix = rc == GL_OK;
  if (rc == GL_EINTERNAL)
    t->n_ids = 0; /* the filter started afresh (gl_track_frame) */
  if (rc == GL_OK && t->params.fixed_lag) {
    /* The smoothed state is for the frame L frames back: the oldest id of
     * the ring once this one is in. */
    const uint32_t L = t->params.fixed_lag;
    t->ids[t->n_ids % (L + 1)] = job->frame_id;
    t->n_ids++;
    job->smoothed_id = t->ids[t->n_ids % (L + 1)];
  }
  return rc;
}

/* Turns the last search's query i into job's candidates: the fine stage
 * when its map has one, else clustering of the matched tiles. False when
 * the job failed (its error says why). */
static bool gl__cluster(struct gl__searcher *p, struct gl_job *job, uint32_t i) {
  uint32_t want = job->top_k < GL_JOB_MAX_CANDIDATES ? job->top_k : GL_JOB_MAX_CANDIDATES;
  size_t n_est = 0;
  const struct gl_runtime *rt = job->rt;
  int rc;
  if (rt->maps[job->map].fine) {
    uint32_t nh;
    const struct gl_map_hit *hits = gl_loc_locator_hits(p->loc, i, &nh);
    rc = gl_loc_fine_frame(rt->fine[p->w], rt->maps[job->map].map, &job->image, job->heading_deg,
                           hits, nh, job->has_prior ? &job->prior : NULL, p->est, want, &n_est,
                           job->error, sizeof job->error);
    gl_img_free(&job->image);
  } else {
    rc = gl_loc_locator_cluster(p->loc, i, rt->bandwidth_m, p->est, want, &n_est, job->error,
                                sizeof job->error);
  }
  if (rc == GL_OK && job->trk && rt->maps[job->map].fine)
    rc = gl__track(job, rt->maps[job->map].map, rt->fine[p->w], n_est ? &p->est[0] : NULL);
  if (rc != GL_OK) {
    job->result = GL_JOB_FAILED;
    return false;
  }
  for (size_t c = 0; c < n_est; c++)
    job->cand[c] = (struct gl_job_candidate){p->est[c].lat,
                                             p->est[c].lon,
                                             (float)p->est[c].best_score,
                                             (float)p->est[c].confidence,
                                             (float)p->est[c].radius_m,
                                             p->est[c].tile_id,
                                             (float)p->est[c].heading_deg};
  job->n_cand = (uint32_t)n_est;
  return true;
}

/* Search and clustering of one job on its own. */
static void gl__localize(struct gl__searcher *p, struct gl_job *job) {
  const struct gl_runtime *rt = job->rt;
  uint32_t k = rt->search_tiles < GL__MAX_TILES ? rt->search_tiles : GL__MAX_TILES;
  uint64_t t0 = gl_pipeline_now_us();
  if (gl_loc_locator_search(p->loc, rt->maps[job->map].map, job->desc, 1, k,
                            job->has_prior ? &job->prior : NULL, job->error,
                            sizeof job->error) != GL_OK) {
    job->result = GL_JOB_FAILED;
    return;
  }
  if (gl__cluster(p, job, 0))
    job->search_us = (uint32_t)(gl_pipeline_now_us() - t0);
}

/* Search and clustering of n jobs of one runtime and map: one search call
 * for all of them, then each is clustered. A job's search_us is its share
 * of the search plus its clustering. */
static void gl__localize_group(struct gl__searcher *p, struct gl_job **jobs, uint32_t n) {
  const struct gl_runtime *rt = jobs[0]->rt;
  uint32_t k = rt->search_tiles < GL__MAX_TILES ? rt->search_tiles : GL__MAX_TILES;
  size_t need = (size_t)n * rt->dim;
  char err[sizeof jobs[0]->error];
  uint64_t t0 = gl_pipeline_now_us();
  if (n == 1)
    goto alone;
  if (need > p->sdesc_cap) {
    float *d = realloc(p->sdesc, need * sizeof *d);
    if (!d)
      goto alone;
    p->sdesc = d;
    p->sdesc_cap = need;
  }
  for (uint32_t i = 0; i < n; i++) {
    memcpy(p->sdesc + (size_t)i * rt->dim, jobs[i]->desc, rt->dim * sizeof(float));
    p->sprior[i] = jobs[i]->has_prior ? jobs[i]->prior : (struct gl_map_prior){0, 0, 0};
  }
  /* A failure of one frame (a prior the map cannot serve) fails the call:
   * the frames are then searched alone, each with its own error. */
  if (gl_loc_locator_search(p->loc, rt->maps[jobs[0]->map].map, p->sdesc, n, k, p->sprior, err,
                            sizeof err) != GL_OK)
    goto alone;
  uint64_t share = (gl_pipeline_now_us() - t0) / n;
  for (uint32_t i = 0; i < n; i++) {
    uint64_t t1 = gl_pipeline_now_us();
    if (gl__cluster(p, jobs[i], i))
      jobs[i]->search_us = (uint32_t)(share + gl_pipeline_now_us() - t1);
  }
  return;
alone:
  for (uint32_t i = 0; i < n; i++)
    gl__localize(p, jobs[i]);
}

static void gl__run_batch(struct gl_pipeline *p, struct gl_job **jobs, uint32_t n) {
  const struct gl_runtime *rt = jobs[0]->rt;
  uint64_t now = gl_pipeline_now_us();
  uint32_t m = 0;
  for (uint32_t i = 0; i < n; i++) {
    struct gl_job *job = jobs[i];
    job->t_batched = now;
    if (rt->stale_after_ms && now - job->t_received > (uint64_t)rt->stale_after_ms * 1000u) {
      job->result = GL_JOB_STALE;
      continue;
    }
    p->batch[m] = job;
    p->images[m++] = job->north.rgb ? job->north : job->image;
  }
  if (m == 0)
    return;
  size_t need = (size_t)m * rt->dim;
  if (need > p->desc_cap) {
    float *d = realloc(p->desc, need * sizeof *d);
    if (!d) {
      for (uint32_t i = 0; i < m; i++) {
        p->batch[i]->result = GL_JOB_FAILED;
        snprintf(p->batch[i]->error, sizeof p->batch[i]->error, "out of memory");
      }
      return;
    }
    p->desc = d;
    p->desc_cap = need;
  }
  uint64_t t0 = gl_pipeline_now_us();
  int rc = gl_nn_engine_encode(rt->engine, p->images, m, p->desc);
  uint64_t t1 = gl_pipeline_now_us();
  for (uint32_t i = 0; i < m; i++) {
    struct gl_job *job = p->batch[i];
    /* The fine stage reads the frame again; the global stage is done. */
    if (!job->rt->maps[job->map].fine)
      gl_img_free(&job->image);
    free(job->north.rgb);
    job->north = (struct gl_image){0};
    job->t_inferred = t1;
    job->infer_us = (uint32_t)(t1 - t0);
    job->batch_size = m;
    job->batch_first = i == 0;
    if (rc != GL_OK) {
      job->result = GL_JOB_FAILED;
      snprintf(job->error, sizeof job->error, "inference failed: %s", gl_strerror(rc));
      continue;
    }
    memcpy(job->desc, p->desc + (size_t)i * rt->dim, rt->dim * sizeof(float));
  }
}

/* Jobs at the head of the queue that share the head's runtime: they are
 * the next batch (a reload makes batches end where the runtime changes). */
static uint32_t gl__ready(const struct gl_pipeline *p) {
  uint32_t n = 0;
  for (const struct gl_job *j = p->in_head; j && j->rt == p->in_head->rt; j = j->next)
    n++;
  return n;
}

static void *gl__infer_main(void *arg) {
  struct gl_pipeline *p = arg;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->stop && !p->in_head)
      pthread_cond_wait(&p->cv, &p->mu);
    if (!p->in_head)
      break; /* stopping with nothing queued */
    const struct gl_runtime *rt = p->in_head->rt;
    uint32_t max = rt->max_batch < GL__MAX_BATCH ? rt->max_batch : GL__MAX_BATCH;
    /* Dynamic batching: take the largest batch ready, waiting at most the
     * batch window after the oldest frame was decoded. */
    uint64_t deadline = p->in_head->t_decoded + rt->batch_window_us;
    while (!p->stop && gl__ready(p) < max) {
      uint64_t now = gl_pipeline_now_us();
      if (now >= deadline)
        break;
      struct timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      uint64_t ns = (uint64_t)ts.tv_nsec + (deadline - now) * 1000u;
      ts.tv_sec += (time_t)(ns / 1000000000u);
      ts.tv_nsec = (long)(ns % 1000000000u);
      pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    struct gl_job *jobs[GL__MAX_BATCH];
    uint32_t n = 0;
    while (n < max && p->in_head && p->in_head->rt == rt) {
      jobs[n++] = p->in_head;
      p->in_head = p->in_head->next;
    }
    if (!p->in_head)
      p->in_tail = NULL;
    pthread_mutex_unlock(&p->mu);

    gl__run_batch(p, jobs, n);

    pthread_mutex_lock(&p->mu);
    bool finished = false;
    for (uint32_t i = 0; i < n; i++) {
      if (jobs[i]->result == GL_JOB_OK) {
        gl__append(&p->search_head, &p->search_tail, jobs[i]);
      } else {
        gl__append(&p->done_head, &p->done_tail, jobs[i]);
        finished = true;
      }
    }
    pthread_cond_broadcast(&p->search_cv);
    if (finished)
      uv_async_send(&p->async);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

/* Takes into s->group the next jobs s may search (under mu): from the
 * queue's head, those of the first eligible job's runtime and map, up to a
 * group and at most the thread's share of the queue. A tracked stream's
 * frames must step its filter one at a time and in order, so a stream is
 * held by the thread that took one of its frames until that thread is done
 * with them: the others pass its frames by. Once one of a stream's frames
 * is passed by, so are its later ones in the same scan (a reload can put
 * one stream's frames in two runtimes). */
static uint32_t gl__take(struct gl_pipeline *p, struct gl__searcher *s) {
  uint32_t queued = 0;
  for (const struct gl_job *j = p->search_head; j && queued < GL__SEARCH_GROUP * p->n_search;
       j = j->next)
    queued++;
  const uint32_t max = (queued + p->n_search - 1) / p->n_search;
  const uint64_t scan = ++p->scans;
  uint32_t n = 0;
  struct gl_job *prev = NULL;
  for (struct gl_job *j = p->search_head; j && n < max;) {
    struct gl_job *next = j->next;
    bool mine =
        !j->trk || ((!j->trk->searcher || j->trk->searcher == s->w + 1) && j->trk->passed != scan);
    if (mine && (n == 0 || (j->rt == s->group[0]->rt && j->map == s->group[0]->map))) {
      if (prev)
        prev->next = next;
      else
        p->search_head = next;
      if (p->search_tail == j)
        p->search_tail = prev;
      j->next = NULL;
      if (j->trk)
        j->trk->searcher = s->w + 1;
      s->group[n++] = j;
    } else {
      if (j->trk)
        j->trk->passed = scan;
      prev = j;
    }
    j = next;
  }
  return n;
}

static void *gl__search_main(void *arg) {
  struct gl__searcher *s = arg;
  struct gl_pipeline *p = s->p;
  /* One query at a time needs no thread team: FAISS would otherwise open an
   * OpenMP parallel region per frame and wake threads that the engine is
   * using (OpenMP settings are per thread, so the inference engine keeps
   * its own; this thread's fine stage sets its share when it first runs). */
  omp_set_num_threads(1);
  pthread_mutex_lock(&p->mu);
  for (;;) {
    uint32_t n;
    while (!(n = gl__take(p, s)) && !(p->search_stop && !p->search_head))
      pthread_cond_wait(&p->search_cv, &p->mu);
    if (!n)
      break; /* stopping with nothing queued */
    pthread_mutex_unlock(&p->mu);
    /* The group's jobs are of one runtime and map, searched together (a
     * batch's frames are consecutive). */
    gl__localize_group(s, s->group, n);
    pthread_mutex_lock(&p->mu);
    bool let_go = false;
    for (uint32_t i = 0; i < n; i++) {
      struct gl_job *job = s->group[i];
      if (job->trk && job->trk->searcher) {
        job->trk->searcher = 0;
        let_go = true;
      }
      gl__append(&p->done_head, &p->done_tail, job);
    }
    if (let_go || p->search_head)
      pthread_cond_broadcast(&p->search_cv); /* frames passed by may be taken now */
    uv_async_send(&p->async);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

static void gl__on_async(uv_async_t *a) {
  struct gl_pipeline *p = a->data;
  pthread_mutex_lock(&p->mu);
  struct gl_job *job = p->done_head;
  p->done_head = p->done_tail = NULL;
  pthread_mutex_unlock(&p->mu);
  while (job) {
    struct gl_job *next = job->next;
    gl__finish_on_loop(p, job);
    job = next;
  }
}

int gl_pipeline_create(uv_loop_t *loop, uint32_t decode_threads, uint32_t search_threads,
                       gl_job_done_cb done_cb, void *ud, struct gl_pipeline **out, char *err,
                       size_t errlen) {
  struct gl_pipeline *p = calloc(1, sizeof *p);
  pthread_condattr_t ca;
  *out = NULL;
  if (!p)
    return GL_ENOMEM;
  p->loop = loop;
  p->decode_workers = gl_pipeline_decode_workers(decode_threads);
  p->decode_share = p->decode_workers - 1;
  p->done_cb = done_cb;
  p->ud = ud;
  pthread_mutex_init(&p->mu, NULL);
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* the batch window is monotonic time */
  pthread_cond_init(&p->cv, &ca);
  pthread_cond_init(&p->search_cv, NULL);
  pthread_condattr_destroy(&ca);
  int rc = GL_OK;
  p->n_search = search_threads < 1                              ? 1
                : search_threads > GL_CONFIG_MAX_SEARCH_THREADS ? GL_CONFIG_MAX_SEARCH_THREADS
                                                                : search_threads;
  /* The threads touch the async handle only for jobs, which come after
   * this function returns, so the handle is set up last: it is the one
   * step that needs the loop to undo. */
  for (uint32_t w = 0; w < p->n_search; w++) {
    struct gl__searcher *s = &p->search[w];
    s->p = p;
    s->w = w;
    if ((rc = gl_loc_locator_create(GL__MAX_TILES, &s->loc)) != GL_OK) {
      snprintf(err, errlen, "search workspace: %s", gl_strerror(rc));
      goto fail;
    }
    if (pthread_create(&s->thread, NULL, gl__search_main, s) != 0) {
      snprintf(err, errlen, "cannot start search thread %u", w + 1);
      rc = GL_ENOMEM;
      goto fail;
    }
    s->started = true;
  }
  if (pthread_create(&p->thread, NULL, gl__infer_main, p) != 0) {
    snprintf(err, errlen, "cannot start the inference thread");
    rc = GL_ENOMEM;
    goto fail;
  }
  p->thread_started = true;
  uv_async_init(loop, &p->async, gl__on_async);
  p->async.data = p;
  *out = p;
  return GL_OK;
fail:
  gl_pipeline_destroy(p);
  return rc;
}

/* Stops and joins the threads that were started: the inference thread
 * first, as it finishes what is queued for it and passes that on, then the
 * search threads, which finish what is queued for them. */
static void gl__join(struct gl_pipeline *p) {
  pthread_mutex_lock(&p->mu);
  p->stop = true;
  pthread_cond_signal(&p->cv);
  pthread_mutex_unlock(&p->mu);
  if (p->thread_started)
    pthread_join(p->thread, NULL);
  p->thread_started = false;
  pthread_mutex_lock(&p->mu);
  p->search_stop = true;
  pthread_cond_broadcast(&p->search_cv);
  pthread_mutex_unlock(&p->mu);
  for (uint32_t w = 0; w < p->n_search; w++) {
    if (p->search[w].started)
      pthread_join(p->search[w].thread, NULL);
    p->search[w].started = false;
  }
}

void gl_pipeline_stop(struct gl_pipeline *p) {
  if (!p || !p->thread_started)
    return;
  gl__join(p);
  uv_close((uv_handle_t *)&p->async, NULL);
}

void gl_pipeline_destroy(struct gl_pipeline *p) {
  if (!p)
    return;
  gl__join(p); /* only on a failed create: a started pipeline is stopped first */
  for (uint32_t w = 0; w < p->n_search; w++) {
    gl_loc_locator_destroy(p->search[w].loc);
    free(p->search[w].sdesc);
  }
  free(p->desc);
  pthread_cond_destroy(&p->search_cv);
  pthread_cond_destroy(&p->cv);
  pthread_mutex_destroy(&p->mu);
  free(p);
}
