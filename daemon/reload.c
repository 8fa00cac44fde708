/* Signals and systemd: SIGHUP reloads the configuration, the TLS context
 * and the runtime (the model and maps load on libuv's thread pool while the
 * old ones serve; everything switches at once on the loop thread);
 * SIGTERM/SIGINT drain (listeners closed, frames in flight answered,
 * SHUTTING_DOWN to every client, the rest cut after drain_timeout_ms);
 * sd_notify's status lines and the watchdog. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "metrics.h"
#include "runtime.h"
#include "sd.h"
#include "server_internal.h"
#include "tls.h"

/* ---- status, watchdog, stop -------------------------------------------- */

void gl__notify_status(struct gl_server *srv, const char *prefix) {
  gl_sd_notifyf("%sSTATUS=%s: %u client(s), %d listener(s)", prefix,
                srv->stopping ? "draining" : "serving", srv->n_admitted, srv->n_listeners);
}

static void gl__on_watchdog(uv_timer_t *t) {
  struct gl_server *srv = t->data;
  gl__notify_status(srv, "WATCHDOG=1\n");
}

static void gl__on_server_handle_closed(uv_handle_t *h) { (void)h; }

void gl__srv_maybe_done(struct gl_server *srv) {
  if (!srv->stopping || srv->conns || srv->finished)
    return;
  srv->finished = true;
  gl_pipeline_stop(srv->pipe); /* nothing is pending: no connection is left */
  uv_close((uv_handle_t *)&srv->sig_term, gl__on_server_handle_closed);
  uv_close((uv_handle_t *)&srv->sig_int, gl__on_server_handle_closed);
  uv_close((uv_handle_t *)&srv->sig_hup, gl__on_server_handle_closed);
  uv_close((uv_handle_t *)&srv->watchdog, gl__on_server_handle_closed);
  uv_close((uv_handle_t *)&srv->drain, gl__on_server_handle_closed);
  uv_close((uv_handle_t *)&srv->heartbeat, gl__on_server_handle_closed);
}

static void gl__on_drain_timeout(uv_timer_t *t) {
  struct gl_server *srv = t->data;
  GL_LOG_W("drain timeout: closing %u remaining connection(s)", srv->n_conns);
  for (struct gl_conn *c = srv->conns; c; c = c->next)
    gl__conn_close(c);
}

static void gl__srv_stop(struct gl_server *srv, int signum);

static void gl__on_stop_delay(uv_timer_t *t) {
  gl__srv_stop(t->data, SIGTERM);
}

static void gl__srv_stop(struct gl_server *srv, int signum) {
  if (srv->stopping)
    return;
  if (!srv->unready && srv->cfg.stop_delay_ms) {
    /* Out of the proxy's rotation first (its health check sees /readyz
     * fail), still serving whoever comes meanwhile; then the drain. A
     * second signal drains at once. */
    srv->unready = true;
    gl_metrics_set_ready(srv->metrics, false);
    GL_LOG_N("%s: not ready; draining in %u ms", strsignal(signum), srv->cfg.stop_delay_ms);
    gl_sd_notify("STATUS=not ready, draining soon");
    uv_timer_start(&srv->drain, gl__on_stop_delay, srv->cfg.stop_delay_ms, 0);
    return;
  }
  uv_timer_stop(&srv->drain);
  srv->stopping = true;
  GL_LOG_N("%s: draining %u connection(s)", strsignal(signum), srv->n_conns);
  gl__notify_status(srv, "STOPPING=1\n");
  gl_metrics_set_ready(srv->metrics, false);
  gl__close_listeners(srv);
  for (struct gl_conn *c = srv->conns, *next; c; c = next) {
    next = c->next; /* closing may unlink c */
    if (c->state == GL_CONN_CLOSING)
      continue;
    if (!gl_transport_ready(&c->tp)) /* cannot be told yet: TLS handshake under way */
      gl__conn_close(c);
    else
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__SHUTTING_DOWN, NULL, true,
                     "server is shutting down");
  }
  if (srv->cfg.drain_timeout_ms)
    uv_timer_start(&srv->drain, gl__on_drain_timeout, srv->cfg.drain_timeout_ms, 0);
  else
    gl__on_drain_timeout(&srv->drain);
  gl__srv_maybe_done(srv);
}

/* ---- reload ------------------------------------------------------------ */

static bool gl__str_differs(const char *a, const char *b) {
  return (a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0);
}

static void gl__swap_str(char **a, char **b) {
  char *t = *a;
  *a = *b;
  *b = t;
}

static void gl__srv_reload(struct gl_server *srv);

/* Adopts a reloaded configuration, its TLS context and runtime (NULL when
 * it has no [model]): everything changes at once, on the loop thread. */
static void gl__srv_apply(struct gl_server *srv, struct gl_config *nc, struct gl_tls_ctx *ctx,
                          struct gl_runtime *rt) {
  if (!srv->activated &&
      (gl__str_differs(nc->tcp, srv->cfg.tcp) ||
       gl__str_differs(nc->unix_path, srv->cfg.unix_path) ||
       gl__str_differs(nc->tls, srv->cfg.tls) || nc->unix_mode != srv->cfg.unix_mode ||
       gl__str_differs(nc->unix_group, srv->cfg.unix_group)))
    GL_LOG_W("[listen] changed: the new addresses take effect at the next restart");
  if (nc->decode_threads != srv->cfg.decode_threads)
    GL_LOG_W("decode_threads changed: the new number takes effect at the next restart");
  if (ctx) {
    gl_tls_ctx_release(srv->tls_ctx); /* open connections keep their reference */
    srv->tls_ctx = ctx;
  }
  /* Frames in flight keep the runtime they were accepted with. */
  gl_runtime_unref(srv->rt);
  srv->rt = rt;
  gl__report_runtime(srv);
  /* The listeners in use stay recorded as they were opened: swap their
   * addresses into nc, free the rest of the old config, adopt nc. */
  gl__swap_str(&nc->tcp, &srv->cfg.tcp);
  gl__swap_str(&nc->unix_path, &srv->cfg.unix_path);
  gl__swap_str(&nc->tls, &srv->cfg.tls);
  gl_config_fini(&srv->cfg);
  srv->cfg = *nc;
  gl_config_defaults(nc);
  /* Open connections keep the message limit their Welcome announced. */
  gl_log_init(srv->cfg.log_level);
  GL_LOG_N("configuration reloaded%s", rt ? " with its model and maps" : "");
  gl__notify_status(srv, "READY=1\n");
}

static void gl__reload_work(uv_work_t *w) {
  struct gl_server *srv = w->data;
  srv->reload_rc = gl_runtime_load(&srv->reload_cfg, srv->search_threads, &srv->reload_rt,
                                   srv->reload_err, sizeof srv->reload_err);
}

static void gl__reload_done(uv_work_t *w, int status) {
  struct gl_server *srv = w->data;
  struct gl_tls_ctx *ctx = srv->reload_ctx;
  srv->reloading = false;
  srv->reload_ctx = NULL;
  if (status == 0 && srv->reload_rc == GL_OK && !srv->stopping) {
    gl__srv_apply(srv, &srv->reload_cfg, ctx, srv->reload_rt);
  } else {
    if (!srv->stopping) {
      GL_LOG_E("reload failed, keeping the running model, maps and configuration: %s",
               status == 0 ? srv->reload_err : uv_strerror(status));
      gl_sd_notify("READY=1\nSTATUS=serving; last reload failed, see the log");
    }
    gl_runtime_unref(srv->reload_rt);
    gl_tls_ctx_release(ctx);
    gl_config_fini(&srv->reload_cfg);
  }
  srv->reload_rt = NULL;
  if (srv->reload_again && !srv->stopping) {
    srv->reload_again = false;
    gl__srv_reload(srv);
  }
}

static void gl__srv_reload(struct gl_server *srv) {
  struct gl_config nc;
  struct gl_tls_ctx *ctx = NULL;
  char err[512];
  if (srv->reloading) {
    srv->reload_again = true; /* after the model being loaded now */
    return;
  }
  gl_sd_notify("RELOADING=1");
  GL_LOG_N("SIGHUP: reloading %s", srv->cfg.path);
  int rc = gl_config_load(srv->cfg.path, &nc, err, sizeof err);
  if (rc != GL_OK)
    goto fail;
  if (nc.search_threads != srv->cfg.search_threads) {
    GL_LOG_W("[search] threads changed: the new number takes effect at the next restart");
    nc.search_threads = srv->cfg.search_threads; /* the pipeline's threads stay */
  }
  if (gl__has_tls_listener(srv)) {
    if (!nc.tls_cert || !nc.tls_key) {
      snprintf(err, sizeof err, "%s: [tls] cert and key are required while a TLS listener is open",
               nc.path);
      gl_config_fini(&nc);
      goto fail;
    }
    if (gl_tls_ctx_create(&nc, &ctx, err, sizeof err) != GL_OK) {
      gl_config_fini(&nc);
      goto fail;
    }
  }
  if (!nc.model_path) {
    gl__srv_apply(srv, &nc, ctx, NULL);
    return;
  }
  /* Loading a model and maps takes seconds: off the loop, while the old
   * ones keep serving. */
  srv->reloading = true;
  srv->reload_cfg = nc;
  srv->reload_ctx = ctx;
  srv->reload_work.data = srv;
  rc = uv_queue_work(srv->loop, &srv->reload_work, gl__reload_work, gl__reload_done);
  if (rc < 0) {
    srv->reloading = false;
    snprintf(err, sizeof err, "cannot queue the model load: %s", uv_strerror(rc));
    gl_tls_ctx_release(ctx);
    gl_config_fini(&srv->reload_cfg);
    goto fail;
  }
  return;
fail:
  GL_LOG_E("reload failed, keeping the running configuration: %s", err);
  gl_sd_notify("READY=1\nSTATUS=serving; last reload failed, see the log");
}

static void gl__on_signal(uv_signal_t *h, int signum) {
  struct gl_server *srv = h->data;
  if (signum == SIGHUP)
    gl__srv_reload(srv);
  else
    gl__srv_stop(srv, signum);
}

void gl__srv_signals_start(struct gl_server *srv) {
  uv_signal_start(&srv->sig_term, gl__on_signal, SIGTERM);
  uv_signal_start(&srv->sig_int, gl__on_signal, SIGINT);
  uv_signal_start(&srv->sig_hup, gl__on_signal, SIGHUP);
  uint64_t wd = gl_sd_watchdog_usec();
  if (wd) {
    /* Ping at half the interval, as sd_watchdog_enabled(3) advises. */
    srv->watchdog_ms = wd / 2000 ? wd / 2000 : 1;
    uv_timer_start(&srv->watchdog, gl__on_watchdog, srv->watchdog_ms, srv->watchdog_ms);
  }
}
