/* From matched tiles to ranked position estimates (docs/ARCHITECTURE.md
 * section 8).
 *
 * The search returns the top-k tiles for a frame, each with its centre and a
 * cosine similarity. Neighbouring tiles overlap (a 320 m tile on an 80 m
 * stride), so the true position usually shows up as several good matches
 * close together, while false matches are scattered. gl_loc_cluster() groups
 * the matches with mean-shift in metres and turns every group into one
 * estimate: a score-weighted centre, a confidence and a radius.
 *
 * The method, step by step:
 *
 *  1. Weights. Match i gets w_i = exp((s_i - s_max) / T), where s_i is its
 *     score and T is params.temperature: the softmax over matches, left
 *     unnormalised. Read as a posterior over tiles, it makes the confidence of
 *     a cluster the posterior mass of its tiles (step 5). Clamping negative
 *     scores to zero instead would let a hundred weak matches outvote one
 *     strong match, which is the wrong way round for retrieval scores.
 *  2. Local frame. Every match is placed at east/north metres from the best
 *     match: geodesic distance and azimuth from PROJ's geod_inverse() on
 *     WGS84 (an azimuthal equidistant frame). This is exact for distances to
 *     the best match and holds across the antimeridian and at the poles,
 *     where latitude/longitude arithmetic breaks.
 *  3. Mean-shift. Seeds are the matches in descending score order; a match
 *     that lies within bandwidth/2 of a mode already found seeds nothing
 *     (it would climb to that mode anyway), which keeps the cost near
 *     O(clusters * n * iterations) instead of O(n^2 * iterations). From each
 *     seed, y <- sum K(|x_j - y|) w_j x_j / sum K(|x_j - y|) w_j until a step is
 *     shorter than tol_m. A mode closer than merge_m to an earlier one (which
 *     came from a better seed) is dropped. For the same reason as the seeds,
 *     a climb that comes within bandwidth/2 (merge_m/2 when that is smaller)
 *     of an earlier mode whose own climb converged stops there and is dropped
 *     too: scattered matches seed many climbs that all end on a few modes.
 *     Every match then joins its nearest mode.
 *  4. Each cluster. Its members are projected again, now about the cluster's
 *     own best match, so that a cluster far from the overall best match
 *     suffers no projection distortion (the frame of step 2 is only used to
 *     decide membership). Centre = the w-weighted mean of the members in
 *     that frame, mapped back to WGS84 with geod_direct(). Radius = the
 *     w-weighted RMS distance of the members from the centre, but at least
 *     params.min_radius_m: one match alone is not a position known to zero
 *     metres, it is known to about half a tile stride.
 *  5. Score and confidence. A cluster's score is the soft maximum of its
 *     member scores, score = T * log(sum over members of exp(s_i / T)): the
 *     best member's score when it dominates, plus up to T * log(k) for k
 *     members that agree. The confidence is the softmax of score / T over the
 *     returned estimates, i.e. each cluster's share of the weights of step 1,
 *     and sums to 1. Estimates are ranked by score (equivalently by
 *     confidence); ties go to the cluster whose best match came first in the
 *     input.
 *
 * Memory: gl_loc_cluster() allocates nothing. A gl_loc_workspace, created
 * once per worker thread for a maximum number of matches, holds every
 * scratch array and the supporting tile ids the estimates point into. A
 * workspace serves one call at a time. */
#ifndef GL_LOC_LOC_H
#define GL_LOC_LOC_H

#include <stddef.h>
#include <stdint.h>

/* The most matches one call may cluster (and a workspace may be sized for).
 * Top-k is normally 10 to 100. The bound caps the worst case of the
 * quadratic steps, when every match is its own cluster (4096 seeds, each
 * iteration over 4096 matches): about 0.07 s on one core, against 7 ms for
 * 4096 matches in 64 groups (tests/loc measures both). */
#define GL_LOC_MAX_MATCHES 4096

/* The kernel of the mean-shift. */
enum gl_loc_kernel {
  /* exp(-d^2 / (2 h^2)): smooth, so a tile just outside the bandwidth still
   * pulls a little and the result does not flip at d == h. The default. */
  GL_LOC_KERNEL_GAUSSIAN = 0,
  /* 1 when d <= h, else 0: the classic mean-shift; modes are plain weighted
   * means of the matches within h. */
  GL_LOC_KERNEL_FLAT = 1,
};

struct gl_loc_params {
  /* Kernel bandwidth h in metres, about one tile (default 320). > 0. */
  double bandwidth_m;
  /* Softmax temperature T for the match weights and the confidences, in
   * units of score (default 0.05). Smaller trusts the best score more. > 0.
   * Exponents are clamped, so even a tiny T never turns weights into 0 or
   * NaN. */
  double temperature;
  /* Floor of radius_m, about half the tile stride (default 40). >= 0. */
  double min_radius_m;
  /* Modes closer than this are one cluster; 0 means bandwidth_m. >= 0. */
  double merge_m;
  /* A mean-shift run stops when its step is shorter than this (default
   * 0.01 m) or after max_iter steps (default 100). tol_m > 0, max_iter >= 1. */
  double tol_m;
  int max_iter;
  enum gl_loc_kernel kernel;
};

/* One matched tile as the search returns it. */
struct gl_loc_match {
  int64_t tile_id;
  double lat;   /* WGS84 degrees, [-90, 90] */
  double lon;   /* WGS84 degrees, [-540, 540] (any wrap is accepted) */
  double score; /* cosine similarity, higher is better; must be finite */
};

/* One ranked estimate. */
struct gl_loc_estimate {
  double lat; /* score-weighted centre, WGS84 degrees */
  double lon; /* in [-180, 180] */
  /* Soft maximum of the member scores (step 5 above). It may exceed the
   * best member score by up to T * log(n_support). */
  double score;
  double best_score; /* the highest member score */
  double confidence; /* softmax of score / T over the returned estimates */
  double radius_m;   /* weighted RMS spread, at least params.min_radius_m */
  /* Heading of the frame's top, degrees clockwise from north, when the fine
   * stage estimated it (fine.h); NaN otherwise. */
  double heading_deg;
  int64_t tile_id;   /* the best member (== support[0]) */
  size_t n_support;  /* number of member matches, >= 1 */
  /* Tile ids of the members, best score first. Points into the workspace:
   * valid until the next gl_loc_cluster() on it or its destruction. */
  const int64_t *support;
};

/* Opaque scratch space for gl_loc_cluster(). */
struct gl_loc_workspace;

/* Fills *p with the defaults documented in struct gl_loc_params. */
void gl_loc_params_init(struct gl_loc_params *p);

/* Creates a workspace for calls with up to max_matches matches.
 * Returns 0 and sets *out; GL_EINVAL when out is NULL or max_matches is 0 or
 * above GL_LOC_MAX_MATCHES; GL_ENOMEM. About 140 bytes per match (0.55 MiB at the
 * limit). */
int gl_loc_workspace_create(size_t max_matches, struct gl_loc_workspace **out);

/* Frees a workspace; NULL is a no-op. Estimates pointing into it go stale. */
void gl_loc_workspace_destroy(struct gl_loc_workspace *ws);

/* Clusters n matches into at most max_out ranked estimates (see the top of
 * this file).
 *
 * ws: a workspace created for at least n matches.
 * p: parameters; NULL means the defaults.
 * m: the matches, in any order; may be NULL only when n is 0. Tile ids need
 *    not be unique.
 * out: room for max_out estimates; may be NULL only when max_out is 0. When
 *    there are more clusters than max_out, the best max_out are returned and
 *    their confidences are normalised over those.
 * n_out: set to the number of estimates written (0 when n is 0).
 *
 * Returns 0; GL_EINVAL when ws, n_out or a needed pointer is NULL, n exceeds
 * the workspace (or GL_LOC_MAX_MATCHES), a parameter is out of range, or a
 * match has a non-finite score or an out-of-range coordinate. On error
 * *n_out is 0 (when n_out is not NULL) and out is unspecified. */
int gl_loc_cluster(struct gl_loc_workspace *ws, const struct gl_loc_params *p,
                   const struct gl_loc_match *m, size_t n, struct gl_loc_estimate *out,
                   size_t max_out, size_t *n_out);

#endif
