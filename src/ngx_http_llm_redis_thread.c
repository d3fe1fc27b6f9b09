
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * The Redis store's thread: per worker and store, a task in a thread pool
 * that owns a synchronous hiredis connection.  It takes the operations the
 * event loop queued, sends them in one pipelined round trip (the commands
 * and their replies are ngx_http_llm_redis_cmd.c's), and hands the answers
 * back through the worker's channel (ngx_http_llm_redis_answer()).  It
 * connects, reconnects and backs off on its own.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_store_redis.h"


#define NGX_HTTP_LLM_REDIS_CONNECT_MS  1000
#define NGX_HTTP_LLM_REDIS_TIMEOUT_MS  2000
#define NGX_HTTP_LLM_REDIS_BACKOFF_MIN 100
#define NGX_HTTP_LLM_REDIS_WAIT_MS     250
#define NGX_HTTP_LLM_REDIS_LINGER_MS   2000


static void ngx_http_llm_redis_run(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *ops);
static void ngx_http_llm_redis_round(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *ops);
static ngx_int_t ngx_http_llm_redis_connect(ngx_http_llm_redis_t *rd);
static ngx_msec_t ngx_http_llm_redis_now(void);


/*
 * The store thread: takes everything queued, sends it in one round trip,
 * answers, and returns when idle for a while or when the worker exits
 * (after what was queued was sent: the final writes of a graceful exit).
 */

void
ngx_http_llm_redis_thread(void *data, ngx_log_t *log)
{
    ngx_http_llm_redis_t *rd = data;

    ngx_msec_t                idle_since;
    struct timespec           ts;
    ngx_http_llm_redis_op_t  *ops;
    ngx_http_llm_channel_t   *ch;

    ch = &ngx_http_llm_channel;
    idle_since = ngx_http_llm_redis_now();

    (void) ngx_thread_mutex_lock(&ch->mutex, log);

    for ( ;; ) {
        ops = rd->pending;

        if (ops) {
            rd->pending = NULL;
            rd->pending_last = &rd->pending;

            (void) ngx_thread_mutex_unlock(&ch->mutex, log);

            ngx_http_llm_redis_run(rd, ops);
            idle_since = ngx_http_llm_redis_now();

            (void) ngx_thread_mutex_lock(&ch->mutex, log);
            continue;
        }

        if (ngx_terminate || ngx_quit || ngx_exiting
            || ngx_http_llm_redis_now() - idle_since
               >= NGX_HTTP_LLM_REDIS_LINGER_MS)
        {
            rd->running = 0;
            break;
        }

        /* short waits: the exit flags are not signalled */

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += NGX_HTTP_LLM_REDIS_WAIT_MS * 1000000;

        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }

        (void) pthread_cond_timedwait(&rd->cond, &ch->mutex, &ts);
    }

    (void) ngx_thread_mutex_unlock(&ch->mutex, log);

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, log, 0,
                   "llm redis: idle, returns");
}


/*
 * Store thread, or the loop when the thread cannot start: pass the answers
 * to the loop.
 */

void
ngx_http_llm_redis_answer(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *ops)
{
    ngx_uint_t                wake;
    ngx_http_llm_redis_op_t  *last;
    ngx_http_llm_channel_t   *ch;

    if (ops == NULL) {
        return;
    }

    ch = &ngx_http_llm_channel;

    for (last = ops; last->next; last = last->next) { /* void */ }

    (void) ngx_thread_mutex_lock(&ch->mutex, rd->log);

    *rd->done_last = ops;
    rd->done_last = &last->next;

    wake = ngx_http_llm_channel_queue(&rd->item);

    (void) ngx_thread_mutex_unlock(&ch->mutex, rd->log);

    if (wake) {
        ngx_http_llm_channel_wake();
    }
}


/*
 * Store thread.  A connection kept from an earlier round may have been
 * closed meanwhile (Redis restarted, or dropped it when idle): if it fails
 * before the first answer, the round is sent again on a new connection,
 * and only a failure of that one is logged.  Every command of a round can
 * be sent twice.
 */

static void
ngx_http_llm_redis_run(ngx_http_llm_redis_t *rd, ngx_http_llm_redis_op_t *ops)
{
    if (rd->cluster) {
        ngx_http_llm_redis_cluster_run(rd, ops);

    } else {
        ngx_http_llm_redis_run_on(rd, ops);
    }

    ngx_http_llm_redis_answer(rd, ops);
}


/* store thread: a round trip on the connection (a cluster: a node's) */

void
ngx_http_llm_redis_run_on(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *ops)
{
    ngx_uint_t  kept;

    kept = (rd->ctx != NULL);
    rd->quiet = kept;

    ngx_http_llm_redis_round(rd, ops);

    rd->quiet = 0;

    if (kept && rd->ctx == NULL && rd->replies == 0) {
        ngx_http_llm_redis_round(rd, ops);
    }
}


/*
 * Store thread: one pipelined round trip for everything taken (on a
 * cluster: for what goes to the node in use, see "mine")
 */

static void
ngx_http_llm_redis_round(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *ops)
{
    ngx_uint_t                   writes, replicated;
    ngx_queue_t                 *q;
    ngx_http_llm_redis_op_t     *op;
    ngx_http_llm_redis_write_t  *w;

    rd->nomem = 0;
    rd->lost = 0;
    rd->errors = 0;
    rd->demoted = 0;
    rd->replies = 0;

    if (ngx_http_llm_redis_connect(rd) != NGX_OK) {
        return;
    }

    writes = 0;

    for (op = ops; op; op = op->next) {

        if (op->type == NGX_HTTP_LLM_REDIS_BATCH) {
            for (q = ngx_queue_head(&op->writes);
                 q != ngx_queue_sentinel(&op->writes);
                 q = ngx_queue_next(q))
            {
                w = ngx_queue_data(q, ngx_http_llm_redis_write_t, queue);

                if (!ngx_http_llm_redis_cluster_mine(rd, w->node)) {
                    continue;
                }

                if (w->ask) {
                    ngx_http_llm_redis_send_asking(rd);
                }

                ngx_http_llm_redis_send_write(rd, w);
                w->waited = (rd->conf->replicas != 0);
                writes = 1;
            }

            continue;
        }

        if (!ngx_http_llm_redis_cluster_mine(rd, op->node)) {
            continue;
        }

        if (op->ask) {
            ngx_http_llm_redis_send_asking(rd);
        }

        switch (op->type) {

        case NGX_HTTP_LLM_REDIS_FETCH:
            ngx_http_llm_redis_send_fetch(rd, op);
            break;

        case NGX_HTTP_LLM_REDIS_CLAIM:
            ngx_http_llm_redis_send_claim(rd, op);
            break;

        default: /* NGX_HTTP_LLM_REDIS_CONTROL */
            ngx_http_llm_redis_send_control(rd, op);
        }
    }

    /* the writes are confirmed once on as many replicas (replicas=) */

    if (writes && rd->conf->replicas) {
        ngx_http_llm_redis_send_wait(rd);
    }

    /* some commands did not make it to the buffer: the pipeline is lost */

    if (rd->nomem) {
        ngx_http_llm_redis_broken(rd, "cannot send", "out of memory");
        return;
    }

    /* a broken connection leaves the rest unanswered: failed */

    for (op = ops; op && !rd->lost; op = op->next) {

        if (op->type == NGX_HTTP_LLM_REDIS_BATCH) {
            for (q = ngx_queue_head(&op->writes);
                 q != ngx_queue_sentinel(&op->writes) && !rd->lost;
                 q = ngx_queue_next(q))
            {
                w = ngx_queue_data(q, ngx_http_llm_redis_write_t, queue);

                if (!ngx_http_llm_redis_cluster_mine(rd, w->node)) {
                    continue;
                }

                if (w->ask) {
                    ngx_http_llm_redis_read_asking(rd);
                }

                ngx_http_llm_redis_read_write(rd, w);
                ngx_http_llm_redis_cluster_answered(rd, &w->node, &w->ask);
            }

            continue;
        }

        if (!ngx_http_llm_redis_cluster_mine(rd, op->node)) {
            continue;
        }

        if (op->ask) {
            ngx_http_llm_redis_read_asking(rd);
        }

        switch (op->type) {

        case NGX_HTTP_LLM_REDIS_FETCH:
            ngx_http_llm_redis_read_fetch(rd, op);
            break;

        case NGX_HTTP_LLM_REDIS_CLAIM:
            ngx_http_llm_redis_read_claim(rd, op);
            break;

        default: /* NGX_HTTP_LLM_REDIS_CONTROL */
            ngx_http_llm_redis_read_control(rd, op);
        }

        ngx_http_llm_redis_cluster_answered(rd, &op->node, &op->ask);
    }

    /*
     * Writes that are not on enough replicas are not confirmed: their jobs
     * keep their marks, and the loop backs off as if Redis were down.
     */

    replicated = 1;

    if (writes && rd->conf->replicas) {
        replicated = !rd->lost && ngx_http_llm_redis_read_wait(rd) == NGX_OK;

        for (op = ops; op; op = op->next) {
            if (op->type != NGX_HTTP_LLM_REDIS_BATCH) {
                continue;
            }

            for (q = ngx_queue_head(&op->writes);
                 q != ngx_queue_sentinel(&op->writes);
                 q = ngx_queue_next(q))
            {
                w = ngx_queue_data(q, ngx_http_llm_redis_write_t, queue);

                if (w->waited && !replicated) {
                    w->ok = 0;
                    w->lost = 0;
                }

                w->waited = 0;
            }
        }
    }

    if (rd->lost) {
        ngx_http_llm_redis_broken(rd, "connection lost",
                                  rd->ctx->err ? rd->ctx->errstr
                                               : "no reply");

    } else if (rd->demoted && rd->conf->master.len) {
        /* a failover: the sentinels are asked for the new primary */
        ngx_http_llm_redis_broken(rd, "the primary is a replica now",
                                  rd->primary);
    }

    if (rd->ctx && replicated) {
        for (op = ops; op; op = op->next) {
            if (op->type == NGX_HTTP_LLM_REDIS_BATCH) {
                op->rc = NGX_OK;
            }
        }

        /* a refusal is logged again only after a round trip without */

        if (!rd->errors) {
            rd->erred = 0;
        }
    }
}


/* store thread */

static ngx_int_t
ngx_http_llm_redis_connect(ngx_http_llm_redis_t *rd)
{
    int                         port;
    char                       *host;
    u_char                      err[NGX_HTTP_LLM_REDIS_HOST_LEN + 128];
    void                       *reply;
    ngx_uint_t                  i, n;
    ngx_msec_t                  now;
    redisReply                 *r;
    redisContext               *c;
    ngx_http_llm_redis_cmd_t    cmd;
    ngx_http_llm_redis_conf_t  *rc;

    if (rd->ctx) {
        return NGX_OK;
    }

    now = ngx_http_llm_redis_now();

    /* fail fast while backing off, but try the final writes of an exit */

    if ((ngx_msec_int_t) (rd->next_connect - now) > 0
        && !ngx_exiting && !ngx_quit)
    {
        return NGX_ERROR;
    }

    rc = rd->conf;

    if (rc->master.len) {
        if (ngx_http_llm_redis_sentinel_primary(rd) != NGX_OK) {
            return NGX_ERROR;
        }

        host = rd->primary;
        port = rd->primary_port;

    } else if (rd->cluster) {
        ngx_http_llm_redis_cluster_node(rd, &host, &port);

    } else if (rc->path.len) {
        host = (char *) rc->path.data;
        port = 0;

    } else {
        host = (char *) rc->host.data;
        port = rc->port;
    }

    c = ngx_http_llm_redis_open(rd, host, port);

    if (c == NULL || c->err) {
        if (rc->servers) {
            /* which primary or node, the name being the URL's */
            *ngx_slprintf(err, err + sizeof(err) - 1, "%s:%d: %s", host,
                          port, c ? c->errstr : "out of memory") = '\0';
        }

        ngx_http_llm_redis_broken(rd, "cannot connect",
                                  rc->servers ? (char *) err
                                  : c ? c->errstr : "out of memory");
        if (c) {
            redisFree(c);
        }

        return NGX_ERROR;
    }

    rd->ctx = c;

    n = 0;

    if (rc->password.len) {
        ngx_http_llm_redis_cmd(&cmd, "AUTH");

        if (rc->user.len) {
            ngx_http_llm_redis_arg(&cmd, rc->user.data, rc->user.len);
        }

        ngx_http_llm_redis_arg(&cmd, rc->password.data, rc->password.len);
        ngx_http_llm_redis_send(rd, &cmd);
        n++;
    }

    if (rc->db >= 0) {
        ngx_http_llm_redis_cmd(&cmd, "SELECT");
        ngx_http_llm_redis_argf(&cmd, "%i", rc->db);
        ngx_http_llm_redis_send(rd, &cmd);
        n++;
    }

    if (rd->nomem) {
        ngx_http_llm_redis_broken(rd, "cannot connect", "out of memory");
        return NGX_ERROR;
    }

    for (i = 0; i < n; i++) {
        if (redisGetReply(c, &reply) != REDIS_OK || reply == NULL) {
            ngx_http_llm_redis_broken(rd, "connection lost",
                                      c->err ? c->errstr : "no reply");
            return NGX_ERROR;
        }

        r = reply;

        /* the server's message names the failure, not the password */

        if (r->type == REDIS_REPLY_ERROR) {
            ngx_http_llm_redis_broken(rd, (i == 0 && rc->password.len)
                                          ? "AUTH failed" : "SELECT failed",
                                      r->str);
            freeReplyObject(r);
            return NGX_ERROR;
        }

        freeReplyObject(r);
    }

    if (rc->master.len && ngx_http_llm_redis_sentinel_role(rd) != NGX_OK) {
        return NGX_ERROR;
    }

    if (rd->down) {
        ngx_log_error(NGX_LOG_NOTICE, rd->log, 0,
                      "llm: redis store: connected to %V", &rc->name);
    }

    rd->up = 1;
    rd->down = 0;
    rd->backoff = 0;

    return NGX_OK;
}


/*
 * Store thread: a connection to a server, or a unix socket (port 0), with
 * its timeouts set; NULL, or c->err set: it failed.  A dead server never
 * holds the thread for long, nor does a WAIT for replicas.
 */

redisContext *
ngx_http_llm_redis_open(ngx_http_llm_redis_t *rd, const char *host, int port)
{
    ngx_msec_t       ms;
    struct timeval   tv;
    redisContext    *c;

    tv.tv_sec = NGX_HTTP_LLM_REDIS_CONNECT_MS / 1000;
    tv.tv_usec = (NGX_HTTP_LLM_REDIS_CONNECT_MS % 1000) * 1000;

    if (port == 0) {
        c = redisConnectUnixWithTimeout(host, tv);

    } else {
        c = redisConnectWithTimeout(host, port, tv);
    }

    if (c == NULL || c->err) {
        return c;
    }

    ms = NGX_HTTP_LLM_REDIS_TIMEOUT_MS + rd->conf->replicas_timeout;

    tv.tv_sec = ms / 1000;
    tv.tv_usec = (ms % 1000) * 1000;

    (void) redisSetTimeout(c, tv);

    return c;
}


/*
 * Store thread: the connection failed or broke.  Logged once until it
 * works again; a connection that worked is tried again at once, one that
 * cannot be made (or set up: AUTH, SELECT) with a growing delay.
 */

void
ngx_http_llm_redis_broken(ngx_http_llm_redis_t *rd, const char *what,
    const char *err)
{
    if (!rd->down && !rd->quiet) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "llm: redis store: %V: %s: %s",
                      &rd->conf->name, what, err);
        rd->down = 1;
    }

    if (rd->ctx) {
        redisFree(rd->ctx);
        rd->ctx = NULL;
    }

    if (rd->up) {
        rd->up = 0;
        rd->next_connect = ngx_http_llm_redis_now();
        return;
    }

    rd->backoff = rd->backoff ? ngx_min(rd->backoff * 2,
                                        NGX_HTTP_LLM_REDIS_BACKOFF_MAX)
                              : NGX_HTTP_LLM_REDIS_BACKOFF_MIN;

    rd->next_connect = ngx_http_llm_redis_now() + rd->backoff;
}


static ngx_msec_t
ngx_http_llm_redis_now(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (ngx_msec_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
