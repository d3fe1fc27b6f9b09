
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * The Redis store: jobs outlive their instance and any instance sharing
 * the Redis server can follow them.
 *
 * hiredis has no nginx event adapter and resolves host names with a
 * blocking getaddrinfo(), so Redis is only ever spoken to from a thread:
 * per worker and store, one long-lived task in a thread pool owns a
 * synchronous connection.  The event loop hands it operations (a batch of
 * writes, a read, a cancel request) on a list under the channel mutex and
 * gets the answers back through the worker's channel.  Like the engine,
 * the task returns when it has been idle for a while or the worker exits,
 * and is posted again when work comes.
 *
 * Keys, all with the job id as hash tag so that a job stays in one slot
 * of a Redis Cluster, all expiring "ttl" after the job's last write:
 *
 *     PREFIX{ID}:job      HASH    state created updated finished watched
 *                                 owner background cancel finish in out
 *                                 code message nevents textlen
 *     PREFIX{ID}:text     STRING  the job's text
 *     PREFIX{ID}:events   STREAM  entry "SEQ-0" (SEQ: 1-based event number)
 *                                 with fields t (type), o (text offset)
 *                                 and l (length); capped by MAXLEN ~
 *
 * Saves are not written at once: a per-worker timer sends what every
 * changed job gained since its last successful write, all jobs in one
 * pipelined round trip, each job in a MULTI/EXEC so that a reader (whose
 * reads are one MULTI/EXEC too) never sees half a write.  Every write is
 * idempotent (SETRANGE at the text offset, XADD with the event's own id),
 * so a write whose answer was lost is simply sent again.  A job's marks
 * (saved_events, saved_text) only move when Redis has confirmed.
 *
 * While Redis cannot be reached, writes fail at once and are tried again
 * with a growing delay (up to 5 s), reads answer NGX_ERROR; a job that
 * Redis lost meanwhile (a restart without persistence) is written again
 * from its start, from the copy the worker has.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <hiredis/hiredis.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_store.h"


#define NGX_HTTP_LLM_REDIS_PREFIX      "llm:"
#define NGX_HTTP_LLM_REDIS_PREFIX_MAX  128
#define NGX_HTTP_LLM_REDIS_FLUSH       100
#define NGX_HTTP_LLM_REDIS_POLL_MIN    100
#define NGX_HTTP_LLM_REDIS_MAXLEN      "100000"

#define NGX_HTTP_LLM_REDIS_CONNECT_MS  1000
#define NGX_HTTP_LLM_REDIS_TIMEOUT_MS  2000
#define NGX_HTTP_LLM_REDIS_BACKOFF_MIN 100
#define NGX_HTTP_LLM_REDIS_BACKOFF_MAX 5000
#define NGX_HTTP_LLM_REDIS_WAIT_MS     250
#define NGX_HTTP_LLM_REDIS_LINGER_MS   2000

/* the longest command is the job's HSET: 28 arguments, about 300 bytes */
#define NGX_HTTP_LLM_REDIS_ARGS        28
#define NGX_HTTP_LLM_REDIS_BUF         1024


/*
 * Sets a field of an existing hash only: the readers' "watched" and the
 * cancel requests must not create a job that has expired or never was.
 */
#define NGX_HTTP_LLM_REDIS_HSETXX                                            \
    "if redis.call('exists', KEYS[1]) == 1 then "                            \
    "return redis.call('hset', KEYS[1], ARGV[1], ARGV[2]) end "              \
    "return -1"


typedef struct ngx_http_llm_redis_s        ngx_http_llm_redis_t;
typedef struct ngx_http_llm_redis_write_s  ngx_http_llm_redis_write_t;
typedef struct ngx_http_llm_redis_op_s     ngx_http_llm_redis_op_t;


typedef struct {
    ngx_str_t                      host;        /* NUL-terminated */
    int                            port;
    ngx_str_t                      path;        /* unix socket, or empty */
    ngx_str_t                      user;
    ngx_str_t                      password;
    ngx_int_t                      db;          /* -1: none */
    ngx_str_t                      prefix;
    ngx_msec_t                     flush;
    ngx_msec_t                     ttl;
    ngx_str_t                      name;        /* for the log */
    ngx_str_t                      pool_name;
    ngx_thread_pool_t             *pool;
    ngx_http_llm_redis_t          *rd;          /* the worker's */
} ngx_http_llm_redis_conf_t;


/* the store's side of a job it saves: event loop only */
typedef struct {
    ngx_http_llm_job_t            *job;         /* NULL: released */
    ngx_queue_t                    queue;       /* in rd->dirty or clean */
    ngx_http_llm_redis_write_t    *write;       /* in flight */
    unsigned                       dirty:1;
    unsigned                       known:1;     /* Redis has the hash */
    unsigned                       rewrite:1;   /* Redis lost it */
    unsigned                       rewriting:1; /* the write in flight */
} ngx_http_llm_redis_job_t;


/* one job's write: a copy of the job, from where to write, the answer */
struct ngx_http_llm_redis_write_s {
    ngx_queue_t                    queue;       /* in a batch or orphans */
    ngx_http_llm_redis_job_t      *rj;          /* NULL: job released */
    u_char                         id[NGX_HTTP_LLM_JOB_ID_LEN];

    /* rec.events and rec.text start at rec.from_event and rec.from_text */
    ngx_http_llm_record_t          rec;
    ngx_uint_t                     from_event;
    size_t                         from_text;

    unsigned                       known:1;
    unsigned                       rewrite:1;   /* delete, write anew */

    /* the answer */
    unsigned                       ok:1;
    unsigned                       lost:1;      /* Redis lost the job */
    unsigned                       cancel:1;
    int64_t                        watched;

    /* the store thread's: where the answers are in the transaction */
    ngx_uint_t                     ncmds;
    ngx_uint_t                     xadd;
    ngx_uint_t                     nxadd;
    ngx_uint_t                     hset;
    ngx_uint_t                     hmget;
};


typedef enum {
    NGX_HTTP_LLM_REDIS_BATCH = 0,
    NGX_HTTP_LLM_REDIS_FETCH,
    NGX_HTTP_LLM_REDIS_CANCEL
} ngx_http_llm_redis_op_e;


/* work for the store thread: owned by whoever holds it on its lists */
struct ngx_http_llm_redis_op_s {
    ngx_http_llm_redis_op_e        type;
    ngx_http_llm_redis_op_t       *next;

    /* a batch */
    ngx_queue_t                    writes;

    /* NGX_OK: answered (a batch: the round trip was made) */
    ngx_int_t                      rc;

    /* a fetch or a cancel */
    u_char                         id[NGX_HTTP_LLM_JOB_ID_LEN];
    ngx_uint_t                     from_event;
    size_t                         from_text;
    int64_t                        now;
    ngx_http_llm_fetch_pt          handler;
    void                          *data;
    ngx_http_llm_record_t          rec;
};


/* per worker and store */
struct ngx_http_llm_redis_s {
    ngx_http_llm_redis_conf_t     *conf;
    ngx_thread_task_t             *task;
    ngx_log_t                     *log;
    pthread_cond_t                 cond;

    /* shared, under the channel mutex */
    ngx_http_llm_redis_op_t       *pending;
    ngx_http_llm_redis_op_t      **pending_last;
    ngx_http_llm_redis_op_t       *done;
    ngx_http_llm_redis_op_t      **done_last;
    ngx_http_llm_chan_item_t       item;
    unsigned                       running:1;

    /* event loop only */
    ngx_event_t                    timer;
    ngx_queue_t                    dirty;       /* ngx_http_llm_redis_job_t */
    ngx_queue_t                    clean;
    ngx_queue_t                    orphans;     /* writes of freed jobs */
    ngx_http_llm_redis_op_t        batch;
    ngx_msec_t                     retry;
    unsigned                       flushing:1;
    unsigned                       given_up:1;
    unsigned                       posted:1;
    unsigned                       repost:1;

    /* the store thread only */
    redisContext                  *ctx;
    ngx_msec_t                     next_connect;
    ngx_msec_t                     backoff;
    ngx_uint_t                     replies;     /* in this round trip */
    unsigned                       up:1;
    unsigned                       down:1;      /* failure logged */
    unsigned                       quiet:1;
    unsigned                       erred:1;
    unsigned                       errors:1;    /* in this round trip */
    unsigned                       nomem:1;
};


/* a command being built: arguments with lengths, numbers in buf */
typedef struct {
    int                            argc;
    const char                    *argv[NGX_HTTP_LLM_REDIS_ARGS];
    size_t                         argvlen[NGX_HTTP_LLM_REDIS_ARGS];
    u_char                        *last;
    u_char                         buf[NGX_HTTP_LLM_REDIS_BUF];
} ngx_http_llm_redis_cmd_t;


static ngx_int_t ngx_http_llm_redis_url(ngx_conf_t *cf,
    ngx_http_llm_redis_conf_t *rc, ngx_str_t *url);
static ngx_int_t ngx_http_llm_redis_init_process(ngx_http_llm_store_t *st,
    ngx_cycle_t *cycle);
static void ngx_http_llm_redis_exit_process(ngx_http_llm_store_t *st,
    ngx_cycle_t *cycle);
static void ngx_http_llm_redis_save(ngx_http_llm_store_t *st,
    ngx_http_llm_job_t *job);
static void ngx_http_llm_redis_release(ngx_http_llm_store_t *st,
    ngx_http_llm_job_t *job);
static ngx_int_t ngx_http_llm_redis_fetch(ngx_http_llm_store_t *st,
    u_char *id, ngx_uint_t from_event, size_t from_text,
    ngx_http_llm_fetch_pt handler, void *data);
static ngx_int_t ngx_http_llm_redis_cancel(ngx_http_llm_store_t *st,
    u_char *id);

static ngx_http_llm_redis_write_t *ngx_http_llm_redis_write_new(
    ngx_http_llm_job_t *job, ngx_uint_t from_event, size_t from_text);
static void ngx_http_llm_redis_write_free(ngx_http_llm_redis_write_t *w);
static void ngx_http_llm_redis_dirty(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_job_t *rj);
static void ngx_http_llm_redis_arm(ngx_http_llm_redis_t *rd);
static void ngx_http_llm_redis_flush(ngx_event_t *ev);
static void ngx_http_llm_redis_written(ngx_http_llm_redis_t *rd);
static void ngx_http_llm_redis_job_written(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w);
static void ngx_http_llm_redis_orphan_written(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w);
static void ngx_http_llm_redis_submit(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op);
static void ngx_http_llm_redis_post(ngx_http_llm_redis_t *rd);
static void ngx_http_llm_redis_completed(ngx_event_t *ev);
static void ngx_http_llm_redis_answer(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *ops);
static void ngx_http_llm_redis_done(ngx_http_llm_chan_item_t *item);
static void ngx_http_llm_redis_op_free(ngx_http_llm_redis_op_t *op);

static void ngx_http_llm_redis_thread(void *data, ngx_log_t *log);
static void ngx_http_llm_redis_run(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *ops);
static void ngx_http_llm_redis_round(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *ops);
static ngx_int_t ngx_http_llm_redis_connect(ngx_http_llm_redis_t *rd);
static void ngx_http_llm_redis_broken(ngx_http_llm_redis_t *rd,
    const char *what, const char *err);
static ngx_int_t ngx_http_llm_redis_reply(ngx_http_llm_redis_t *rd,
    redisReply **reply);
static void ngx_http_llm_redis_error(ngx_http_llm_redis_t *rd, u_char *id,
    redisReply *r);
static void ngx_http_llm_redis_send_write(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w);
static void ngx_http_llm_redis_read_write(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w);
static ngx_int_t ngx_http_llm_redis_check_write(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w, redisReply *exec);
static void ngx_http_llm_redis_send_fetch(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op);
static void ngx_http_llm_redis_read_fetch(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op);
static ngx_int_t ngx_http_llm_redis_record(ngx_http_llm_redis_op_t *op,
    redisReply *hash, redisReply *events, redisReply *text);
static ngx_int_t ngx_http_llm_redis_record_events(ngx_http_llm_record_t *rec,
    ngx_uint_t from_event, redisReply *xr);
static void ngx_http_llm_redis_send_cancel(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op);
static void ngx_http_llm_redis_read_cancel(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op);

static void ngx_http_llm_redis_cmd(ngx_http_llm_redis_cmd_t *cmd,
    const char *name);
static void ngx_http_llm_redis_arg(ngx_http_llm_redis_cmd_t *cmd,
    const void *p, size_t len);
static void ngx_http_llm_redis_lit(ngx_http_llm_redis_cmd_t *cmd,
    const char *s);
static void ngx_http_llm_redis_argf(ngx_http_llm_redis_cmd_t *cmd,
    const char *fmt, ...);
static void ngx_http_llm_redis_key(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_cmd_t *cmd, u_char *id, const char *type);
static void ngx_http_llm_redis_send(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_cmd_t *cmd);
static ngx_int_t ngx_http_llm_redis_is(redisReply *r, const char *s);
static int64_t ngx_http_llm_redis_int(redisReply *r);
static ngx_msec_t ngx_http_llm_redis_now(void);


const ngx_http_llm_store_ops_t  ngx_http_llm_store_redis = {
    "redis",
    ngx_http_llm_redis_init_process,
    ngx_http_llm_redis_exit_process,
    ngx_http_llm_redis_save,
    ngx_http_llm_redis_release,
    ngx_http_llm_redis_fetch,
    ngx_http_llm_redis_cancel
};


static const char  *ngx_http_llm_redis_states[] = {
    "running", "completed", "failed", "cancelled"
};


/* timers log their connection's fd in debug builds: give them one */
static ngx_connection_t  ngx_http_llm_redis_conn = { .fd = -1 };


/*
 * llm_store redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] [OPTIONS];
 * llm_store unix:PATH [OPTIONS];
 *
 * OPTIONS: prefix=STR flush=TIME thread_pool=NAME db=N password=STR
 * (ttl= is the store layer's).
 */

char *
ngx_http_llm_store_redis_conf(ngx_conf_t *cf, ngx_http_llm_store_t *st,
    ngx_str_t *args, ngx_uint_t nargs)
{
    u_char                     *p;
    ngx_str_t                   v;
    ngx_uint_t                  i;
    ngx_http_llm_redis_conf_t  *rc;

    rc = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_redis_conf_t));
    if (rc == NULL) {
        return NGX_CONF_ERROR;
    }

    rc->db = -1;
    rc->flush = NGX_HTTP_LLM_REDIS_FLUSH;
    ngx_str_set(&rc->prefix, NGX_HTTP_LLM_REDIS_PREFIX);
    ngx_str_set(&rc->pool_name, "default");

    if (ngx_strncmp(args[0].data, "unix:", 5) == 0) {
        rc->path.len = args[0].len - 5;

        if (rc->path.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "no socket path in \"llm_store\"");
            return NGX_CONF_ERROR;
        }

        rc->path.data = ngx_pnalloc(cf->pool, rc->path.len + 1);
        if (rc->path.data == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memcpy(rc->path.data, args[0].data + 5, rc->path.len);
        rc->path.data[rc->path.len] = '\0';

        rc->name = args[0];

    } else if (ngx_http_llm_redis_url(cf, rc, &args[0]) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    for (i = 1; i < nargs; i++) {
        v = args[i];

        if (ngx_strncmp(v.data, "ttl=", 4) == 0) {
            continue;
        }

        if (ngx_strncmp(v.data, "prefix=", 7) == 0) {
            rc->prefix.data = v.data + 7;
            rc->prefix.len = v.len - 7;

            /* a brace would move the hash tag off the job id */

            if (rc->prefix.len > NGX_HTTP_LLM_REDIS_PREFIX_MAX
                || ngx_strlchr(rc->prefix.data,
                               rc->prefix.data + rc->prefix.len, '{')
                || ngx_strlchr(rc->prefix.data,
                               rc->prefix.data + rc->prefix.len, '}'))
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid prefix \"%V\" in \"llm_store\": "
                                   "at most %d characters, no braces",
                                   &rc->prefix,
                                   NGX_HTTP_LLM_REDIS_PREFIX_MAX);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(v.data, "flush=", 6) == 0) {
            v.data += 6;
            v.len -= 6;

            rc->flush = ngx_parse_time(&v, 0);

            if (rc->flush == (ngx_msec_t) NGX_ERROR || rc->flush == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid flush \"%V\" in \"llm_store\"",
                                   &v);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(v.data, "thread_pool=", 12) == 0) {
            rc->pool_name.data = v.data + 12;
            rc->pool_name.len = v.len - 12;

            if (rc->pool_name.len == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "empty thread_pool in \"llm_store\"");
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(v.data, "db=", 3) == 0) {
            v.data += 3;
            v.len -= 3;

            rc->db = ngx_atoi(v.data, v.len);

            if (rc->db == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid db \"%V\" in \"llm_store\"", &v);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(v.data, "password=", 9) == 0) {
            rc->password.data = v.data + 9;
            rc->password.len = v.len - 9;
            continue;
        }

        /* never repeat a parameter back: it may hold a password */

        p = ngx_strlchr(v.data, v.data + v.len, '=');

        if (p) {
            v.len = p - v.data;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\" in \"llm_store\"", &v);
        return NGX_CONF_ERROR;
    }

    /* an unknown pool is reported by the thread pool module, by name */

    rc->pool = ngx_thread_pool_add(cf, &rc->pool_name);
    if (rc->pool == NULL) {
        return NGX_CONF_ERROR;
    }

    rc->ttl = st->ttl;

    st->data = rc;
    st->poll = ngx_max(rc->flush, NGX_HTTP_LLM_REDIS_POLL_MIN);

    return NGX_CONF_OK;
}


/* redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], HOST may be [IPv6] */

static ngx_int_t
ngx_http_llm_redis_url(ngx_conf_t *cf, ngx_http_llm_redis_conf_t *rc,
    ngx_str_t *url)
{
    u_char     *p, *last, *host, *host_end, *colon;
    ngx_str_t   s;
    ngx_int_t   n;

    p = url->data + 8;
    last = url->data + url->len;

    /* the password may hold anything but the last "@" */

    for (host = last; host > p; host--) {
        if (host[-1] == '@') {
            break;
        }
    }

    if (host > p) {
        colon = ngx_strlchr(p, host - 1, ':');

        if (colon == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid URL in \"llm_store\": "
                               "[USER]:PASSWORD@ expected before the host");
            return NGX_ERROR;
        }

        rc->user.data = p;
        rc->user.len = colon - p;
        rc->password.data = colon + 1;
        rc->password.len = host - 1 - (colon + 1);

    } else {
        host = p;
    }

    p = ngx_strlchr(host, last, '/');

    if (p) {
        s.data = p + 1;
        s.len = last - s.data;
        last = p;

        rc->db = ngx_atoi(s.data, s.len);

        if (rc->db == NGX_ERROR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid database \"%V\" in \"llm_store\"",
                               &s);
            return NGX_ERROR;
        }
    }

    if (host < last && *host == '[') {
        host_end = ngx_strlchr(host, last, ']');

        if (host_end == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid IPv6 address in \"llm_store\"");
            return NGX_ERROR;
        }

        p = host_end + 1;
        host++;

    } else {
        host_end = ngx_strlchr(host, last, ':');

        if (host_end == NULL) {
            host_end = last;
        }

        p = host_end;
    }

    if (host_end == host) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "no host in \"llm_store\" URL");
        return NGX_ERROR;
    }

    rc->port = 6379;

    if (p < last) {
        s.data = p + 1;
        s.len = last - s.data;

        n = (*p == ':') ? ngx_atoi(s.data, s.len) : NGX_ERROR;

        if (n < 1 || n > 65535) {
            s.data = p;
            s.len = last - p;
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid port \"%V\" in \"llm_store\"", &s);
            return NGX_ERROR;
        }

        rc->port = (int) n;
    }

    rc->host.len = host_end - host;
    rc->host.data = ngx_pnalloc(cf->pool, rc->host.len + 1);
    if (rc->host.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(rc->host.data, host, rc->host.len);
    rc->host.data[rc->host.len] = '\0';

    /* the log names the server, never the password */

    rc->name.data = ngx_pnalloc(cf->pool, rc->host.len + sizeof("[]:65535"));
    if (rc->name.data == NULL) {
        return NGX_ERROR;
    }

    rc->name.len = ngx_sprintf(rc->name.data,
                               *(host - 1) == '[' ? "[%V]:%d" : "%V:%d",
                               &rc->host, rc->port)
                   - rc->name.data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_redis_init_process(ngx_http_llm_store_t *st, ngx_cycle_t *cycle)
{
    int                         err;
    pthread_condattr_t          attr;
    ngx_http_llm_redis_t       *rd;
    ngx_http_llm_redis_conf_t  *rc;

    rc = st->data;

    rd = ngx_calloc(sizeof(ngx_http_llm_redis_t), cycle->log);
    if (rd == NULL) {
        return NGX_ERROR;
    }

    /* the store thread waits with timeouts: not on the wall clock */

    err = pthread_condattr_init(&attr);

    if (err == 0) {
        err = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);

        if (err == 0) {
            err = pthread_cond_init(&rd->cond, &attr);
        }

        (void) pthread_condattr_destroy(&attr);
    }

    if (err != 0) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, err,
                      "llm: redis store: pthread_cond_init() failed");
        ngx_free(rd);
        return NGX_ERROR;
    }

    rd->task = ngx_thread_task_alloc(cycle->pool, 0);
    if (rd->task == NULL) {
        (void) pthread_cond_destroy(&rd->cond);
        ngx_free(rd);
        return NGX_ERROR;
    }

    rd->conf = rc;
    rd->log = cycle->log;

    rd->task->ctx = rd;
    rd->task->handler = ngx_http_llm_redis_thread;
    rd->task->event.handler = ngx_http_llm_redis_completed;
    rd->task->event.data = rd;

    rd->pending_last = &rd->pending;
    rd->done_last = &rd->done;
    rd->item.handler = ngx_http_llm_redis_done;

    rd->timer.handler = ngx_http_llm_redis_flush;
    rd->timer.data = &ngx_http_llm_redis_conn;
    rd->timer.log = cycle->log;

    ngx_queue_init(&rd->dirty);
    ngx_queue_init(&rd->clean);
    ngx_queue_init(&rd->orphans);
    ngx_queue_init(&rd->batch.writes);
    rd->batch.type = NGX_HTTP_LLM_REDIS_BATCH;

    rc->rd = rd;

    return NGX_OK;
}


/* the thread pools have been joined: the store thread has returned */

static void
ngx_http_llm_redis_exit_process(ngx_http_llm_store_t *st, ngx_cycle_t *cycle)
{
    ngx_uint_t                   lost;
    ngx_queue_t                 *q;
    ngx_http_llm_redis_t        *rd;
    ngx_http_llm_redis_op_t     *op, *next;
    ngx_http_llm_redis_job_t    *rj;
    ngx_http_llm_redis_conf_t   *rc;
    ngx_http_llm_redis_write_t  *w;

    rc = st->data;
    rd = rc->rd;

    if (rd == NULL) {
        return;
    }

    /* jobs still alive are not saved any more: release() does nothing */

    rc->rd = NULL;
    lost = 0;

    while (!ngx_queue_empty(&rd->batch.writes)) {
        q = ngx_queue_head(&rd->batch.writes);
        ngx_queue_remove(q);
        w = ngx_queue_data(q, ngx_http_llm_redis_write_t, queue);

        /* a released job's own; a live job's goes with the lists below */
        if (w->rj && w->rj->job == NULL) {
            ngx_free(w->rj);
        }

        /* the answer may have been there, not taken */
        if (!w->ok) {
            lost++;
        }

        ngx_http_llm_redis_write_free(w);
    }

    while (!ngx_queue_empty(&rd->dirty)) {
        q = ngx_queue_head(&rd->dirty);
        ngx_queue_remove(q);
        rj = ngx_queue_data(q, ngx_http_llm_redis_job_t, queue);
        rj->job->store_data = NULL;
        ngx_free(rj);
        lost++;
    }

    while (!ngx_queue_empty(&rd->clean)) {
        q = ngx_queue_head(&rd->clean);
        ngx_queue_remove(q);
        rj = ngx_queue_data(q, ngx_http_llm_redis_job_t, queue);
        rj->job->store_data = NULL;
        ngx_free(rj);
    }

    while (!ngx_queue_empty(&rd->orphans)) {
        q = ngx_queue_head(&rd->orphans);
        ngx_queue_remove(q);
        w = ngx_queue_data(q, ngx_http_llm_redis_write_t, queue);
        ngx_http_llm_redis_write_free(w);
        lost++;
    }

    /* answers nobody took, work nobody did */

    for (op = rd->done; op; op = next) {
        next = op->next;
        ngx_http_llm_redis_op_free(op);
    }

    for (op = rd->pending; op; op = next) {
        next = op->next;
        ngx_http_llm_redis_op_free(op);
    }


    if (lost) {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "llm: redis store: %V: %ui jobs were not saved "
                      "before exit", &rc->name, lost);
    }

    if (rd->ctx) {
        redisFree(rd->ctx);
    }

    (void) pthread_cond_destroy(&rd->cond);
    ngx_free(rd);
}


/* event loop: the job changed; it is written with the next flush */

static void
ngx_http_llm_redis_save(ngx_http_llm_store_t *st, ngx_http_llm_job_t *job)
{
    ngx_http_llm_redis_t       *rd;
    ngx_http_llm_redis_job_t   *rj;
    ngx_http_llm_redis_conf_t  *rc;

    rc = st->data;
    rd = rc->rd;

    if (rd == NULL || job->mirror) {
        return;
    }

    rj = job->store_data;

    if (rj == NULL) {
        rj = ngx_calloc(sizeof(ngx_http_llm_redis_job_t), job->log);
        if (rj == NULL) {
            /* the next save tries again */
            return;
        }

        rj->job = job;
        job->store_data = rj;
        ngx_queue_insert_tail(&rd->clean, &rj->queue);
    }

    ngx_http_llm_redis_dirty(rd, rj);
    ngx_http_llm_redis_arm(rd);
}


/*
 * Event loop: the job is about to be freed.  What Redis has not confirmed
 * yet goes with a copy of the whole job, so that it can still be written
 * in full if Redis turns out to have lost it.
 */

static void
ngx_http_llm_redis_release(ngx_http_llm_store_t *st, ngx_http_llm_job_t *job)
{
    ngx_http_llm_redis_t        *rd;
    ngx_http_llm_redis_job_t    *rj;
    ngx_http_llm_redis_conf_t   *rc;
    ngx_http_llm_redis_write_t  *w;

    rc = st->data;
    rd = rc->rd;

    if (rd == NULL || job->mirror) {
        return;
    }

    rj = job->store_data;

    if (rj == NULL) {
        /* never saved: not meant to be kept */
        return;
    }

    job->store_data = NULL;

    if (rj->dirty || rj->write || rj->rewrite
        || job->saved_events < job->nevents
        || job->saved_text < job->text_len)
    {
        w = ngx_http_llm_redis_write_new(job, 0, 0);

        if (w == NULL) {
            ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                          "llm: redis store: job %s not saved: "
                          "out of memory", job->id);

        } else {
            w->from_event = job->saved_events;
            w->from_text = job->saved_text;
            w->known = rj->known;
            w->rewrite = rj->rewrite || rj->rewriting;

            ngx_queue_insert_tail(&rd->orphans, &w->queue);
            ngx_http_llm_redis_arm(rd);
        }
    }

    ngx_queue_remove(&rj->queue);

    if (rj->write) {
        /* freed when its write comes back */
        rj->job = NULL;
        return;
    }

    ngx_free(rj);
}


/*
 * Event loop.  Reads are sent at once, and go with whatever else the
 * store thread sends in its next round trip.  If the stream was trimmed
 * (MAXLEN) past "from_event", the record starts at the oldest event left:
 * rec->from_event says where.
 */

static ngx_int_t
ngx_http_llm_redis_fetch(ngx_http_llm_store_t *st, u_char *id,
    ngx_uint_t from_event, size_t from_text, ngx_http_llm_fetch_pt handler,
    void *data)
{
    ngx_http_llm_redis_t       *rd;
    ngx_http_llm_redis_op_t    *op;
    ngx_http_llm_redis_conf_t  *rc;

    rc = st->data;
    rd = rc->rd;

    if (rd == NULL) {
        return NGX_ERROR;
    }

    op = ngx_calloc(sizeof(ngx_http_llm_redis_op_t), rd->log);
    if (op == NULL) {
        return NGX_ERROR;
    }

    op->type = NGX_HTTP_LLM_REDIS_FETCH;
    op->rc = NGX_ERROR;
    ngx_memcpy(op->id, id, NGX_HTTP_LLM_JOB_ID_LEN);
    op->from_event = from_event;
    op->from_text = from_text;
    op->now = ngx_http_llm_now_ms();
    op->handler = handler;
    op->data = data;

    ngx_http_llm_redis_submit(rd, op);

    return NGX_OK;
}


/* event loop: the worker running the job sees it with its next write */

static ngx_int_t
ngx_http_llm_redis_cancel(ngx_http_llm_store_t *st, u_char *id)
{
    ngx_http_llm_redis_t       *rd;
    ngx_http_llm_redis_op_t    *op;
    ngx_http_llm_redis_conf_t  *rc;

    rc = st->data;
    rd = rc->rd;

    if (rd == NULL) {
        return NGX_ERROR;
    }

    op = ngx_calloc(sizeof(ngx_http_llm_redis_op_t), rd->log);
    if (op == NULL) {
        return NGX_ERROR;
    }

    op->type = NGX_HTTP_LLM_REDIS_CANCEL;
    op->rc = NGX_ERROR;
    ngx_memcpy(op->id, id, NGX_HTTP_LLM_JOB_ID_LEN);

    ngx_http_llm_redis_submit(rd, op);

    return NGX_OK;
}


/* a copy of the job from an event and a text offset on, in heap memory */

static ngx_http_llm_redis_write_t *
ngx_http_llm_redis_write_new(ngx_http_llm_job_t *job, ngx_uint_t from_event,
    size_t from_text)
{
    ngx_uint_t                   n;
    ngx_http_llm_record_t       *rec;
    ngx_http_llm_redis_write_t  *w;

    w = ngx_calloc(sizeof(ngx_http_llm_redis_write_t), job->log);
    if (w == NULL) {
        return NULL;
    }

    ngx_memcpy(w->id, job->id, NGX_HTTP_LLM_JOB_ID_LEN);
    w->from_event = from_event;
    w->from_text = from_text;

    rec = &w->rec;

    rec->state = job->state;
    rec->created = job->created;
    rec->updated = job->updated;
    rec->finished = job->finished;
    ngx_memcpy(rec->owner, job->owner, NGX_HTTP_LLM_OWNER_LEN);
    rec->has_owner = job->has_owner;
    rec->background = job->background;
    ngx_memcpy(rec->finish, job->finish, job->finish_len);
    rec->finish_len = job->finish_len;
    rec->input_tokens = job->input_tokens;
    rec->output_tokens = job->output_tokens;
    ngx_memcpy(rec->code, job->code, job->code_len);
    rec->code_len = job->code_len;

    rec->nevents = job->nevents;
    rec->from_event = from_event;
    rec->text_len = job->text_len;
    rec->from_text = from_text;

    if (job->message_len) {
        rec->message = ngx_alloc(job->message_len, job->log);
        if (rec->message == NULL) {
            goto failed;
        }

        ngx_memcpy(rec->message, job->message, job->message_len);
        rec->message_len = job->message_len;
    }

    n = job->nevents - from_event;

    if (n) {
        rec->events = ngx_alloc(n * sizeof(ngx_http_llm_event_t), job->log);
        if (rec->events == NULL) {
            goto failed;
        }

        ngx_memcpy(rec->events, job->events + from_event,
                   n * sizeof(ngx_http_llm_event_t));
    }

    n = job->text_len - from_text;

    if (n) {
        rec->text = ngx_alloc(n, job->log);
        if (rec->text == NULL) {
            goto failed;
        }

        ngx_memcpy(rec->text, job->text + from_text, n);
    }

    return w;

failed:

    ngx_http_llm_redis_write_free(w);

    return NULL;
}


static void
ngx_http_llm_redis_write_free(ngx_http_llm_redis_write_t *w)
{
    ngx_http_llm_record_free(&w->rec);
    ngx_free(w);
}


static void
ngx_http_llm_redis_dirty(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_job_t *rj)
{
    if (!rj->dirty) {
        rj->dirty = 1;
        ngx_queue_remove(&rj->queue);
        ngx_queue_insert_tail(&rd->dirty, &rj->queue);
    }
}


/*
 * While there is something to write or a batch in flight, the flush timer
 * is set and holds the worker open on a graceful exit, unless Redis
 * failed meanwhile.
 */

static void
ngx_http_llm_redis_arm(ngx_http_llm_redis_t *rd)
{
    ngx_msec_t  delay;

    /* an exiting worker does not back off: it tries again, then lets go */

    if (ngx_exiting || ngx_quit) {
        delay = rd->conf->flush;

    } else if (rd->timer.timer_set) {
        return;

    } else {
        delay = rd->retry ? rd->retry : rd->conf->flush;
    }

    rd->timer.cancelable = rd->given_up;
    ngx_add_timer(&rd->timer, delay);
}


/* event loop: one batch for every job that changed since the last one */

static void
ngx_http_llm_redis_flush(ngx_event_t *ev)
{
    ngx_queue_t                 *q;
    ngx_http_llm_job_t          *job;
    ngx_http_llm_redis_t        *rd;
    ngx_http_llm_redis_job_t    *rj;
    ngx_http_llm_redis_write_t  *w;

    rd = (ngx_http_llm_redis_t *) ((u_char *) ev
                                   - offsetof(ngx_http_llm_redis_t, timer));

    if (rd->flushing) {
        /* a worker exiting waits for the batch in flight */
        ngx_http_llm_redis_arm(rd);
        return;
    }

    while (!ngx_queue_empty(&rd->dirty)) {
        q = ngx_queue_head(&rd->dirty);
        rj = ngx_queue_data(q, ngx_http_llm_redis_job_t, queue);
        job = rj->job;

        w = ngx_http_llm_redis_write_new(job, job->saved_events,
                                         job->saved_text);
        if (w == NULL) {
            ngx_http_llm_redis_arm(rd);
            break;
        }

        w->rj = rj;
        w->known = rj->known;
        w->rewrite = rj->rewrite;

        rj->write = w;
        rj->rewriting = rj->rewrite;
        rj->rewrite = 0;
        rj->dirty = 0;
        ngx_queue_remove(q);
        ngx_queue_insert_tail(&rd->clean, q);

        ngx_queue_insert_tail(&rd->batch.writes, &w->queue);
    }

    if (!ngx_queue_empty(&rd->orphans)) {
        ngx_queue_add(&rd->batch.writes, &rd->orphans);
        ngx_queue_init(&rd->orphans);
    }

    if (ngx_queue_empty(&rd->batch.writes)) {
        return;
    }

    /* an orphan may come back from a batch with its answer */

    for (q = ngx_queue_head(&rd->batch.writes);
         q != ngx_queue_sentinel(&rd->batch.writes);
         q = ngx_queue_next(q))
    {
        w = ngx_queue_data(q, ngx_http_llm_redis_write_t, queue);
        w->ok = 0;
        w->lost = 0;
        w->cancel = 0;
    }

    rd->batch.rc = NGX_ERROR;

    rd->flushing = 1;
    ngx_http_llm_redis_submit(rd, &rd->batch);

    ngx_http_llm_redis_arm(rd);
}


/* event loop: the batch is back */

static void
ngx_http_llm_redis_written(ngx_http_llm_redis_t *rd)
{
    ngx_queue_t                 *q;
    ngx_http_llm_redis_write_t  *w;

    while (!ngx_queue_empty(&rd->batch.writes)) {
        q = ngx_queue_head(&rd->batch.writes);
        ngx_queue_remove(q);
        w = ngx_queue_data(q, ngx_http_llm_redis_write_t, queue);

        if (w->rj) {
            ngx_http_llm_redis_job_written(rd, w);

        } else {
            ngx_http_llm_redis_orphan_written(rd, w);
        }
    }

    rd->flushing = 0;

    /*
     * Redis was not reached: the store thread backs off, so does the
     * loop, not to copy the jobs for nothing.  A job Redis refused is
     * tried again with the next batch.
     */

    if (rd->batch.rc != NGX_OK) {
        rd->retry = ngx_max(rd->retry * 2, rd->conf->flush);
        rd->retry = ngx_min(rd->retry, NGX_HTTP_LLM_REDIS_BACKOFF_MAX);

        if (ngx_exiting || ngx_quit) {
            /* the rest is tried while the worker exits, not waited for */
            rd->given_up = 1;
        }

    } else {
        rd->retry = 0;
    }

    if (!ngx_queue_empty(&rd->dirty) || !ngx_queue_empty(&rd->orphans)) {
        ngx_http_llm_redis_arm(rd);
    }
}


static void
ngx_http_llm_redis_job_written(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w)
{
    ngx_http_llm_job_t        *job;
    ngx_http_llm_redis_job_t  *rj;

    rj = w->rj;
    job = rj->job;

    rj->write = NULL;
    rj->rewriting = 0;

    if (job == NULL) {
        /* released meanwhile: its own write follows this one */
        ngx_free(rj);

    } else if (!w->ok) {
        /* the marks stay: the next batch starts from them again */

        if (w->rewrite) {
            rj->rewrite = 1;
        }

        ngx_http_llm_redis_dirty(rd, rj);

    } else if (w->lost) {
        ngx_log_error(NGX_LOG_WARN, rd->log, 0,
                      "llm: redis store: %V lost job %s, writing it again",
                      &rd->conf->name, job->id);

        rj->known = 0;
        rj->rewrite = 1;
        job->saved_events = 0;
        job->saved_text = 0;
        ngx_http_llm_redis_dirty(rd, rj);

    } else {
        rj->known = 1;
        job->saved_events = ngx_max(job->saved_events, w->rec.nevents);
        job->saved_text = ngx_max(job->saved_text, w->rec.text_len);
        job->watched = w->watched;

        if (w->cancel) {
            ngx_http_llm_job_cancel_requested(job);
        }
    }

    ngx_http_llm_redis_write_free(w);
}


static void
ngx_http_llm_redis_orphan_written(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w)
{
    if (w->ok && !w->lost) {
        ngx_http_llm_redis_write_free(w);
        return;
    }

    if (w->ok) {
        ngx_log_error(NGX_LOG_WARN, rd->log, 0,
                      "llm: redis store: %V lost job %s, writing it again",
                      &rd->conf->name, w->id);

        /* the write has the whole job */
        w->known = 0;
        w->rewrite = 1;
        w->from_event = 0;
        w->from_text = 0;

    } else if (ngx_http_llm_now_ms() - w->rec.updated
               >= (int64_t) rd->conf->ttl)
    {
        /* it would have expired by now */

        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "llm: redis store: job %s not saved: %V unavailable "
                      "for longer than the ttl", w->id, &rd->conf->name);

        ngx_http_llm_redis_write_free(w);
        return;
    }

    ngx_queue_insert_tail(&rd->orphans, &w->queue);
}


/* event loop: hand work to the store thread, starting it if needed */

static void
ngx_http_llm_redis_submit(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op)
{
    ngx_uint_t               start;
    ngx_http_llm_channel_t  *ch;

    ch = &ngx_http_llm_channel;

    op->next = NULL;

    (void) ngx_thread_mutex_lock(&ch->mutex, rd->log);

    *rd->pending_last = op;
    rd->pending_last = &op->next;

    start = !rd->running;
    rd->running = 1;

    if (!start) {
        (void) pthread_cond_signal(&rd->cond);
    }

    (void) ngx_thread_mutex_unlock(&ch->mutex, rd->log);

    if (!start) {
        return;
    }

    if (rd->posted) {
        /* the previous run has returned, its completion is on its way */
        rd->repost = 1;
        return;
    }

    ngx_http_llm_redis_post(rd);
}


static void
ngx_http_llm_redis_post(ngx_http_llm_redis_t *rd)
{
    ngx_http_llm_redis_op_t  *ops;
    ngx_http_llm_channel_t   *ch;

    if (ngx_thread_task_post(rd->conf->pool, rd->task) == NGX_OK) {
        rd->posted = 1;
        return;
    }

    ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                  "llm: redis store: thread pool \"%V\" queue is full: "
                  "writes are delayed, reads fail", &rd->conf->pool_name);

    /* everything fails now and is answered through the channel */

    ch = &ngx_http_llm_channel;

    (void) ngx_thread_mutex_lock(&ch->mutex, rd->log);

    ops = rd->pending;
    rd->pending = NULL;
    rd->pending_last = &rd->pending;
    rd->running = 0;

    (void) ngx_thread_mutex_unlock(&ch->mutex, rd->log);

    ngx_http_llm_redis_answer(rd, ops);
}


/* event loop: the store task has returned */

static void
ngx_http_llm_redis_completed(ngx_event_t *ev)
{
    ngx_http_llm_redis_t  *rd = ev->data;

    rd->posted = 0;

    if (!rd->repost) {
        return;
    }

    rd->repost = 0;

    ngx_http_llm_redis_post(rd);
}


/*
 * Store thread, or the loop when the thread cannot start: pass the answers
 * to the loop.  A cancel request has no answer: it is done with here.
 */

static void
ngx_http_llm_redis_answer(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *ops)
{
    ngx_uint_t                wake;
    ngx_http_llm_redis_op_t  *op, *next, *done, **last;
    ngx_http_llm_channel_t   *ch;

    ch = &ngx_http_llm_channel;
    done = NULL;
    last = &done;

    for (op = ops; op; op = next) {
        next = op->next;

        if (op->type == NGX_HTTP_LLM_REDIS_CANCEL) {

            if (op->rc == NGX_ERROR) {
                ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                              "llm: redis store: cancel of job %*s lost: "
                              "%V unavailable",
                              (size_t) NGX_HTTP_LLM_JOB_ID_LEN, op->id,
                              &rd->conf->name);
            }

            ngx_http_llm_redis_op_free(op);
            continue;
        }

        op->next = NULL;
        *last = op;
        last = &op->next;
    }

    if (done == NULL) {
        return;
    }

    (void) ngx_thread_mutex_lock(&ch->mutex, rd->log);

    *rd->done_last = done;
    rd->done_last = last;

    wake = ngx_http_llm_channel_queue(&rd->item);

    (void) ngx_thread_mutex_unlock(&ch->mutex, rd->log);

    if (wake) {
        ngx_http_llm_channel_wake();
    }
}


/* event loop: the store thread's answers */

static void
ngx_http_llm_redis_done(ngx_http_llm_chan_item_t *item)
{
    ngx_http_llm_redis_t     *rd;
    ngx_http_llm_redis_op_t  *op, *next;
    ngx_http_llm_channel_t   *ch;

    ch = &ngx_http_llm_channel;
    rd = (ngx_http_llm_redis_t *) ((u_char *) item
                                   - offsetof(ngx_http_llm_redis_t, item));

    (void) ngx_thread_mutex_lock(&ch->mutex, rd->log);

    op = rd->done;
    rd->done = NULL;
    rd->done_last = &rd->done;

    (void) ngx_thread_mutex_unlock(&ch->mutex, rd->log);

    for ( /* void */ ; op; op = next) {
        next = op->next;

        if (op->type == NGX_HTTP_LLM_REDIS_BATCH) {
            ngx_http_llm_redis_written(rd);
            continue;
        }

        op->handler(op->data, op->rc, op->rc == NGX_OK ? &op->rec : NULL);
        ngx_http_llm_redis_op_free(op);
    }
}


static void
ngx_http_llm_redis_op_free(ngx_http_llm_redis_op_t *op)
{
    /* the batch is the worker's own and is emptied elsewhere */

    if (op->type != NGX_HTTP_LLM_REDIS_BATCH) {
        ngx_http_llm_record_free(&op->rec);
        ngx_free(op);
    }
}


/*
 * The store thread: takes everything queued, sends it in one round trip,
 * answers, and returns when idle for a while or when the worker exits
 * (after what was queued was sent: the final writes of a graceful exit).
 */

static void
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
 * Store thread.  A connection kept from an earlier round may have been
 * closed meanwhile (Redis restarted, or dropped it when idle): if it fails
 * before the first answer, the round is sent again on a new connection,
 * and only a failure of that one is logged.  Every command of a round can
 * be sent twice.
 */

static void
ngx_http_llm_redis_run(ngx_http_llm_redis_t *rd, ngx_http_llm_redis_op_t *ops)
{
    ngx_uint_t  kept;

    kept = (rd->ctx != NULL);
    rd->quiet = kept;

    ngx_http_llm_redis_round(rd, ops);

    rd->quiet = 0;

    if (kept && rd->ctx == NULL && rd->replies == 0) {
        ngx_http_llm_redis_round(rd, ops);
    }

    ngx_http_llm_redis_answer(rd, ops);
}


/* store thread: one pipelined round trip for everything taken */

static void
ngx_http_llm_redis_round(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *ops)
{
    ngx_queue_t                 *q;
    ngx_http_llm_redis_op_t     *op;
    ngx_http_llm_redis_write_t  *w;

    rd->nomem = 0;
    rd->errors = 0;
    rd->replies = 0;

    if (ngx_http_llm_redis_connect(rd) != NGX_OK) {
        return;
    }

    for (op = ops; op; op = op->next) {

        switch (op->type) {

        case NGX_HTTP_LLM_REDIS_BATCH:
            for (q = ngx_queue_head(&op->writes);
                 q != ngx_queue_sentinel(&op->writes);
                 q = ngx_queue_next(q))
            {
                w = ngx_queue_data(q, ngx_http_llm_redis_write_t, queue);
                ngx_http_llm_redis_send_write(rd, w);
            }
            break;

        case NGX_HTTP_LLM_REDIS_FETCH:
            ngx_http_llm_redis_send_fetch(rd, op);
            break;

        default: /* NGX_HTTP_LLM_REDIS_CANCEL */
            ngx_http_llm_redis_send_cancel(rd, op);
        }
    }

    /* some commands did not make it to the buffer: the pipeline is lost */

    if (rd->nomem) {
        ngx_http_llm_redis_broken(rd, "cannot send", "out of memory");
        return;
    }

    /* a broken connection leaves the rest unanswered: failed */

    for (op = ops; op && rd->ctx; op = op->next) {

        switch (op->type) {

        case NGX_HTTP_LLM_REDIS_BATCH:
            for (q = ngx_queue_head(&op->writes);
                 q != ngx_queue_sentinel(&op->writes) && rd->ctx;
                 q = ngx_queue_next(q))
            {
                w = ngx_queue_data(q, ngx_http_llm_redis_write_t, queue);
                ngx_http_llm_redis_read_write(rd, w);
            }
            break;

        case NGX_HTTP_LLM_REDIS_FETCH:
            ngx_http_llm_redis_read_fetch(rd, op);
            break;

        default: /* NGX_HTTP_LLM_REDIS_CANCEL */
            ngx_http_llm_redis_read_cancel(rd, op);
        }
    }

    if (rd->ctx) {
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
    ngx_uint_t                  i, n;
    ngx_msec_t                  now;
    redisReply                 *r;
    struct timeval              tv;
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

    tv.tv_sec = NGX_HTTP_LLM_REDIS_CONNECT_MS / 1000;
    tv.tv_usec = (NGX_HTTP_LLM_REDIS_CONNECT_MS % 1000) * 1000;

    if (rc->path.len) {
        c = redisConnectUnixWithTimeout((char *) rc->path.data, tv);

    } else {
        c = redisConnectWithTimeout((char *) rc->host.data, rc->port, tv);
    }

    if (c == NULL || c->err) {
        ngx_http_llm_redis_broken(rd, "cannot connect",
                                  c ? c->errstr : "out of memory");
        if (c) {
            redisFree(c);
        }

        return NGX_ERROR;
    }

    rd->ctx = c;

    /* a dead server never holds the thread for long */

    tv.tv_sec = NGX_HTTP_LLM_REDIS_TIMEOUT_MS / 1000;
    tv.tv_usec = (NGX_HTTP_LLM_REDIS_TIMEOUT_MS % 1000) * 1000;

    if (redisSetTimeout(c, tv) != REDIS_OK) {
        ngx_http_llm_redis_broken(rd, "cannot set the timeout", c->errstr);
        return NGX_ERROR;
    }

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
        if (ngx_http_llm_redis_reply(rd, &r) != NGX_OK) {
            return NGX_ERROR;
        }

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
 * Store thread: the connection failed or broke.  Logged once until it
 * works again; a connection that worked is tried again at once, one that
 * cannot be made (or set up: AUTH, SELECT) with a growing delay.
 */

static void
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


static ngx_int_t
ngx_http_llm_redis_reply(ngx_http_llm_redis_t *rd, redisReply **reply)
{
    void  *r;

    if (redisGetReply(rd->ctx, &r) != REDIS_OK || r == NULL) {
        ngx_http_llm_redis_broken(rd, "connection lost",
                                  rd->ctx->err ? rd->ctx->errstr
                                               : "no reply");
        return NGX_ERROR;
    }

    *reply = r;
    rd->replies++;

    return NGX_OK;
}


/* a command refused by the server: logged once while it goes on */

static void
ngx_http_llm_redis_error(ngx_http_llm_redis_t *rd, u_char *id,
    redisReply *r)
{
    rd->errors = 1;

    if (rd->erred) {
        return;
    }

    rd->erred = 1;

    if (r->type != REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "llm: redis store: %V: job %*s: unexpected reply "
                      "of type %d", &rd->conf->name,
                      (size_t) NGX_HTTP_LLM_JOB_ID_LEN, id, r->type);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                  "llm: redis store: %V: job %*s: %*s", &rd->conf->name,
                  (size_t) NGX_HTTP_LLM_JOB_ID_LEN, id, r->len, r->str);
}


/*
 * Store thread: one job's write, as one transaction:
 *
 *     MULTI
 *     [DEL job text events]                     Redis lost the job
 *     [SETRANGE text OFFSET NEW_TEXT]           new text
 *     [XADD events MAXLEN ~ N SEQ-0 t T o O l L]...  one per new event
 *     HSET job state .. created .. (13 fields)
 *     [HSETNX job cancel 0, HSETNX job watched 0]    first write
 *     PEXPIRE job|text|events TTL               3 commands
 *     HMGET job cancel watched
 *     EXEC
 *
 * SETRANGE rather than APPEND, and events with their own ids, so that
 * writing the same thing twice changes nothing.
 */

static void
ngx_http_llm_redis_send_write(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w)
{
    u_char                    hex[NGX_HTTP_LLM_OWNER_LEN * 2];
    size_t                    off;
    ngx_uint_t                i, n;
    ngx_http_llm_event_t     *ev;
    ngx_http_llm_record_t    *rec;
    ngx_http_llm_redis_cmd_t  cmd;

    rec = &w->rec;
    n = 0;

    ngx_http_llm_redis_cmd(&cmd, "MULTI");
    ngx_http_llm_redis_send(rd, &cmd);

    if (w->rewrite) {
        ngx_http_llm_redis_cmd(&cmd, "DEL");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "job");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "text");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "events");
        ngx_http_llm_redis_send(rd, &cmd);
        n++;
    }

    if (w->from_text < rec->text_len) {
        off = w->from_text - rec->from_text;

        ngx_http_llm_redis_cmd(&cmd, "SETRANGE");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "text");
        ngx_http_llm_redis_argf(&cmd, "%uz", w->from_text);
        ngx_http_llm_redis_arg(&cmd, rec->text + off,
                               rec->text_len - w->from_text);
        ngx_http_llm_redis_send(rd, &cmd);
        n++;
    }

    w->xadd = n;

    for (i = w->from_event; i < rec->nevents; i++) {
        ev = &rec->events[i - rec->from_event];

        ngx_http_llm_redis_cmd(&cmd, "XADD");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "events");
        ngx_http_llm_redis_lit(&cmd, "MAXLEN");
        ngx_http_llm_redis_lit(&cmd, "~");
        ngx_http_llm_redis_lit(&cmd, NGX_HTTP_LLM_REDIS_MAXLEN);
        ngx_http_llm_redis_argf(&cmd, "%ui-0", i + 1);
        ngx_http_llm_redis_lit(&cmd, "t");
        ngx_http_llm_redis_argf(&cmd, "%d", (int) ev->type);
        ngx_http_llm_redis_lit(&cmd, "o");
        ngx_http_llm_redis_argf(&cmd, "%uz", ev->off);
        ngx_http_llm_redis_lit(&cmd, "l");
        ngx_http_llm_redis_argf(&cmd, "%uD", ev->len);
        ngx_http_llm_redis_send(rd, &cmd);
        n++;
    }

    w->nxadd = n - w->xadd;
    w->hset = n;

    if (rec->has_owner) {
        ngx_hex_dump(hex, rec->owner, NGX_HTTP_LLM_OWNER_LEN);
    }

    ngx_http_llm_redis_cmd(&cmd, "HSET");
    ngx_http_llm_redis_key(rd, &cmd, w->id, "job");
    ngx_http_llm_redis_lit(&cmd, "state");
    ngx_http_llm_redis_lit(&cmd, ngx_http_llm_redis_states[rec->state]);
    ngx_http_llm_redis_lit(&cmd, "created");
    ngx_http_llm_redis_argf(&cmd, "%L", rec->created);
    ngx_http_llm_redis_lit(&cmd, "updated");
    ngx_http_llm_redis_argf(&cmd, "%L", rec->updated);
    ngx_http_llm_redis_lit(&cmd, "finished");
    ngx_http_llm_redis_argf(&cmd, "%L", rec->finished);
    ngx_http_llm_redis_lit(&cmd, "owner");
    ngx_http_llm_redis_arg(&cmd, hex, rec->has_owner ? sizeof(hex) : 0);
    ngx_http_llm_redis_lit(&cmd, "background");
    ngx_http_llm_redis_argf(&cmd, "%d", rec->background ? 1 : 0);
    ngx_http_llm_redis_lit(&cmd, "finish");
    ngx_http_llm_redis_arg(&cmd, rec->finish, rec->finish_len);
    ngx_http_llm_redis_lit(&cmd, "in");
    ngx_http_llm_redis_argf(&cmd, "%i", rec->input_tokens);
    ngx_http_llm_redis_lit(&cmd, "out");
    ngx_http_llm_redis_argf(&cmd, "%i", rec->output_tokens);
    ngx_http_llm_redis_lit(&cmd, "code");
    ngx_http_llm_redis_arg(&cmd, rec->code, rec->code_len);
    ngx_http_llm_redis_lit(&cmd, "message");
    ngx_http_llm_redis_arg(&cmd, rec->message, rec->message_len);
    ngx_http_llm_redis_lit(&cmd, "nevents");
    ngx_http_llm_redis_argf(&cmd, "%ui", rec->nevents);
    ngx_http_llm_redis_lit(&cmd, "textlen");
    ngx_http_llm_redis_argf(&cmd, "%uz", rec->text_len);
    ngx_http_llm_redis_send(rd, &cmd);
    n++;

    /* never over a cancel request or a reader's mark: only if missing */

    if (!w->known) {
        ngx_http_llm_redis_cmd(&cmd, "HSETNX");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "job");
        ngx_http_llm_redis_lit(&cmd, "cancel");
        ngx_http_llm_redis_lit(&cmd, "0");
        ngx_http_llm_redis_send(rd, &cmd);

        ngx_http_llm_redis_cmd(&cmd, "HSETNX");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "job");
        ngx_http_llm_redis_lit(&cmd, "watched");
        ngx_http_llm_redis_lit(&cmd, "0");
        ngx_http_llm_redis_send(rd, &cmd);
        n += 2;
    }

    ngx_http_llm_redis_cmd(&cmd, "PEXPIRE");
    ngx_http_llm_redis_key(rd, &cmd, w->id, "job");
    ngx_http_llm_redis_argf(&cmd, "%M", rd->conf->ttl);
    ngx_http_llm_redis_send(rd, &cmd);

    ngx_http_llm_redis_cmd(&cmd, "PEXPIRE");
    ngx_http_llm_redis_key(rd, &cmd, w->id, "text");
    ngx_http_llm_redis_argf(&cmd, "%M", rd->conf->ttl);
    ngx_http_llm_redis_send(rd, &cmd);

    ngx_http_llm_redis_cmd(&cmd, "PEXPIRE");
    ngx_http_llm_redis_key(rd, &cmd, w->id, "events");
    ngx_http_llm_redis_argf(&cmd, "%M", rd->conf->ttl);
    ngx_http_llm_redis_send(rd, &cmd);
    n += 3;

    w->hmget = n;

    ngx_http_llm_redis_cmd(&cmd, "HMGET");
    ngx_http_llm_redis_key(rd, &cmd, w->id, "job");
    ngx_http_llm_redis_lit(&cmd, "cancel");
    ngx_http_llm_redis_lit(&cmd, "watched");
    ngx_http_llm_redis_send(rd, &cmd);
    n++;

    ngx_http_llm_redis_cmd(&cmd, "EXEC");
    ngx_http_llm_redis_send(rd, &cmd);

    w->ncmds = n;
}


/* store thread: "+OK", a "+QUEUED" per command, then EXEC's array */

static void
ngx_http_llm_redis_read_write(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w)
{
    ngx_uint_t   i, queued;
    redisReply  *r;

    queued = 1;

    for (i = 0; i < w->ncmds + 1; i++) {
        if (ngx_http_llm_redis_reply(rd, &r) != NGX_OK) {
            return;
        }

        if (r->type == REDIS_REPLY_ERROR) {
            /* EXEC then fails with EXECABORT: log the real cause */
            ngx_http_llm_redis_error(rd, w->id, r);
            queued = 0;
        }

        freeReplyObject(r);
    }

    if (ngx_http_llm_redis_reply(rd, &r) != NGX_OK) {
        return;
    }

    if (!queued) {
        /* logged */

    } else if (r->type != REDIS_REPLY_ARRAY || r->elements != w->ncmds) {
        ngx_http_llm_redis_error(rd, w->id, r);

    } else if (ngx_http_llm_redis_check_write(rd, w, r) == NGX_OK) {
        w->ok = 1;
    }

    freeReplyObject(r);
}


static ngx_int_t
ngx_http_llm_redis_check_write(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w, redisReply *exec)
{
    ngx_uint_t   i;
    redisReply  *r;

    for (i = 0; i < w->ncmds; i++) {
        r = exec->element[i];

        if (r->type != REDIS_REPLY_ERROR) {
            continue;
        }

        /* an event written before, by a write whose answer was lost */

        if (i >= w->xadd && i < w->xadd + w->nxadd
            && ngx_strstr(r->str, "equal or smaller"))
        {
            continue;
        }

        ngx_http_llm_redis_error(rd, w->id, r);
        return NGX_ERROR;
    }

    /* every field was there before unless Redis lost the job */

    r = exec->element[w->hset];

    if (w->known && !w->rewrite
        && r->type == REDIS_REPLY_INTEGER && r->integer > 0)
    {
        w->lost = 1;
    }

    r = exec->element[w->hmget];

    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
        w->cancel = ngx_http_llm_redis_is(r->element[0], "1");
        w->watched = ngx_http_llm_redis_int(r->element[1]);
    }

    return NGX_OK;
}


/*
 * Store thread: a read, as one transaction so that it sees whole writes:
 *
 *     MULTI
 *     HGETALL job
 *     XRANGE events FROM_EVENT+1-0 +
 *     GETRANGE text FROM_TEXT -1
 *     EVAL HSETXX 1 job watched NOW
 *     EXEC
 */

static void
ngx_http_llm_redis_send_fetch(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op)
{
    ngx_http_llm_redis_cmd_t  cmd;

    ngx_http_llm_redis_cmd(&cmd, "MULTI");
    ngx_http_llm_redis_send(rd, &cmd);

    ngx_http_llm_redis_cmd(&cmd, "HGETALL");
    ngx_http_llm_redis_key(rd, &cmd, op->id, "job");
    ngx_http_llm_redis_send(rd, &cmd);

    ngx_http_llm_redis_cmd(&cmd, "XRANGE");
    ngx_http_llm_redis_key(rd, &cmd, op->id, "events");
    ngx_http_llm_redis_argf(&cmd, "%ui-0", op->from_event + 1);
    ngx_http_llm_redis_lit(&cmd, "+");
    ngx_http_llm_redis_send(rd, &cmd);

    ngx_http_llm_redis_cmd(&cmd, "GETRANGE");
    ngx_http_llm_redis_key(rd, &cmd, op->id, "text");
    ngx_http_llm_redis_argf(&cmd, "%uz", op->from_text);
    ngx_http_llm_redis_lit(&cmd, "-1");
    ngx_http_llm_redis_send(rd, &cmd);

    ngx_http_llm_redis_cmd(&cmd, "EVAL");
    ngx_http_llm_redis_lit(&cmd, NGX_HTTP_LLM_REDIS_HSETXX);
    ngx_http_llm_redis_lit(&cmd, "1");
    ngx_http_llm_redis_key(rd, &cmd, op->id, "job");
    ngx_http_llm_redis_lit(&cmd, "watched");
    ngx_http_llm_redis_argf(&cmd, "%L", op->now);
    ngx_http_llm_redis_send(rd, &cmd);

    ngx_http_llm_redis_cmd(&cmd, "EXEC");
    ngx_http_llm_redis_send(rd, &cmd);
}


static void
ngx_http_llm_redis_read_fetch(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op)
{
    ngx_uint_t   i, queued;
    redisReply  *r;

    queued = 1;

    for (i = 0; i < 5; i++) {
        if (ngx_http_llm_redis_reply(rd, &r) != NGX_OK) {
            return;
        }

        if (r->type == REDIS_REPLY_ERROR) {
            ngx_http_llm_redis_error(rd, op->id, r);
            queued = 0;
        }

        freeReplyObject(r);
    }

    if (ngx_http_llm_redis_reply(rd, &r) != NGX_OK) {
        return;
    }

    if (!queued) {
        /* logged */

    } else if (r->type != REDIS_REPLY_ARRAY || r->elements != 4) {
        ngx_http_llm_redis_error(rd, op->id, r);

    } else {
        op->rc = ngx_http_llm_redis_record(op, r->element[0], r->element[1],
                                           r->element[2]);
    }

    freeReplyObject(r);
}


static ngx_int_t
ngx_http_llm_redis_record(ngx_http_llm_redis_op_t *op, redisReply *hash,
    redisReply *events, redisReply *text)
{
    u_char                  *p;
    size_t                   len;
    ngx_int_t                n, b;
    ngx_uint_t               i, state;
    redisReply              *f, *v;
    ngx_http_llm_record_t   *rec;

    rec = &op->rec;
    rec->input_tokens = -1;
    rec->output_tokens = -1;
    state = 0;

    if (hash->type != REDIS_REPLY_ARRAY) {
        return NGX_ERROR;
    }

    for (i = 0; i + 1 < hash->elements; i += 2) {
        f = hash->element[i];
        v = hash->element[i + 1];

        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) {
            continue;
        }

        if (ngx_http_llm_redis_is(f, "state")) {
            for (n = 0; n < 4; n++) {
                if (ngx_http_llm_redis_is(v, ngx_http_llm_redis_states[n])) {
                    rec->state = n;
                    state = 1;
                }
            }

        } else if (ngx_http_llm_redis_is(f, "created")) {
            rec->created = ngx_http_llm_redis_int(v);

        } else if (ngx_http_llm_redis_is(f, "updated")) {
            rec->updated = ngx_http_llm_redis_int(v);

        } else if (ngx_http_llm_redis_is(f, "finished")) {
            rec->finished = ngx_http_llm_redis_int(v);

        } else if (ngx_http_llm_redis_is(f, "watched")) {
            rec->watched = ngx_http_llm_redis_int(v);

        } else if (ngx_http_llm_redis_is(f, "owner")) {
            if (v->len != NGX_HTTP_LLM_OWNER_LEN * 2) {
                continue;
            }

            p = (u_char *) v->str;

            for (n = 0; n < NGX_HTTP_LLM_OWNER_LEN; n++) {
                b = ngx_hextoi(p + n * 2, 2);

                if (b == NGX_ERROR) {
                    break;
                }

                rec->owner[n] = (u_char) b;
            }

            rec->has_owner = (n == NGX_HTTP_LLM_OWNER_LEN);

        } else if (ngx_http_llm_redis_is(f, "background")) {
            rec->background = ngx_http_llm_redis_is(v, "1");

        } else if (ngx_http_llm_redis_is(f, "cancel")) {
            rec->cancel = ngx_http_llm_redis_is(v, "1");

        } else if (ngx_http_llm_redis_is(f, "finish")) {
            rec->finish_len = ngx_min(v->len, sizeof(rec->finish));
            ngx_memcpy(rec->finish, v->str, rec->finish_len);

        } else if (ngx_http_llm_redis_is(f, "in")) {
            rec->input_tokens = ngx_http_llm_redis_int(v);

        } else if (ngx_http_llm_redis_is(f, "out")) {
            rec->output_tokens = ngx_http_llm_redis_int(v);

        } else if (ngx_http_llm_redis_is(f, "code")) {
            rec->code_len = ngx_min(v->len, sizeof(rec->code));
            ngx_memcpy(rec->code, v->str, rec->code_len);

        } else if (ngx_http_llm_redis_is(f, "message") && v->len) {
            rec->message = malloc(v->len);
            if (rec->message == NULL) {
                return NGX_ERROR;
            }

            ngx_memcpy(rec->message, v->str, v->len);
            rec->message_len = v->len;
        }
    }

    /* no hash: expired or never was; no state: only a stray field */

    if (!state) {
        return NGX_DECLINED;
    }

    if (ngx_http_llm_redis_record_events(rec, op->from_event, events)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    len = (text->type == REDIS_REPLY_STRING) ? text->len : 0;

    rec->from_text = op->from_text;
    rec->text_len = op->from_text + len;

    if (len) {
        rec->text = malloc(len);
        if (rec->text == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(rec->text, text->str, len);
    }

    return NGX_OK;
}


/*
 * The events from "from_event" on, or from the oldest one left when
 * MAXLEN trimmed the stream; they stop at a gap, so that the record is
 * one run of events.
 */

static ngx_int_t
ngx_http_llm_redis_record_events(ngx_http_llm_record_t *rec,
    ngx_uint_t from_event, redisReply *xr)
{
    int64_t                seq, first;
    ngx_uint_t             i, j, n;
    redisReply            *e, *id, *fv, *f, *v;
    ngx_http_llm_event_t  *ev;

    rec->from_event = from_event;
    rec->nevents = from_event;

    if (xr->type != REDIS_REPLY_ARRAY || xr->elements == 0) {
        return NGX_OK;
    }

    rec->events = malloc(xr->elements * sizeof(ngx_http_llm_event_t));
    if (rec->events == NULL) {
        return NGX_ERROR;
    }

    first = 0;
    n = 0;

    for (i = 0; i < xr->elements; i++) {
        e = xr->element[i];

        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2) {
            break;
        }

        id = e->element[0];
        fv = e->element[1];

        if (id->type != REDIS_REPLY_STRING || fv->type != REDIS_REPLY_ARRAY) {
            break;
        }

        /* "SEQ-0": the number stops at the dash */
        seq = ngx_http_llm_redis_int(id);

        if (n == 0) {
            if (seq <= (int64_t) from_event) {
                break;
            }

            first = seq;

        } else if (seq != first + (int64_t) n) {
            break;
        }

        ev = &rec->events[n];
        ngx_memzero(ev, sizeof(ngx_http_llm_event_t));

        for (j = 0; j + 1 < fv->elements; j += 2) {
            f = fv->element[j];
            v = fv->element[j + 1];

            if (ngx_http_llm_redis_is(f, "t")) {
                ev->type = ngx_http_llm_redis_int(v);

                if (ev->type > NGX_HTTP_LLM_EV_ERROR) {
                    goto done;
                }

            } else if (ngx_http_llm_redis_is(f, "o")) {
                ev->off = ngx_http_llm_redis_int(v);

            } else if (ngx_http_llm_redis_is(f, "l")) {
                ev->len = ngx_http_llm_redis_int(v);
            }
        }

        n++;
    }

done:

    if (n) {
        rec->from_event = first - 1;
        rec->nevents = rec->from_event + n;
    }

    return NGX_OK;
}


/* store thread: EVAL HSETXX 1 job cancel 1 */

static void
ngx_http_llm_redis_send_cancel(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op)
{
    ngx_http_llm_redis_cmd_t  cmd;

    ngx_http_llm_redis_cmd(&cmd, "EVAL");
    ngx_http_llm_redis_lit(&cmd, NGX_HTTP_LLM_REDIS_HSETXX);
    ngx_http_llm_redis_lit(&cmd, "1");
    ngx_http_llm_redis_key(rd, &cmd, op->id, "job");
    ngx_http_llm_redis_lit(&cmd, "cancel");
    ngx_http_llm_redis_lit(&cmd, "1");
    ngx_http_llm_redis_send(rd, &cmd);
}


static void
ngx_http_llm_redis_read_cancel(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op)
{
    redisReply  *r;

    if (ngx_http_llm_redis_reply(rd, &r) != NGX_OK) {
        return;
    }

    if (r->type == REDIS_REPLY_ERROR) {
        ngx_http_llm_redis_error(rd, op->id, r);

    } else {
        op->rc = NGX_OK;

        if (r->type == REDIS_REPLY_INTEGER && r->integer < 0) {
            ngx_log_error(NGX_LOG_INFO, rd->log, 0,
                          "llm: redis store: cancel of unknown job %*s",
                          (size_t) NGX_HTTP_LLM_JOB_ID_LEN, op->id);
        }
    }

    freeReplyObject(r);
}


static void
ngx_http_llm_redis_cmd(ngx_http_llm_redis_cmd_t *cmd, const char *name)
{
    cmd->argc = 0;
    cmd->last = cmd->buf;

    ngx_http_llm_redis_lit(cmd, name);
}


/* the arguments are copied when the command is sent */

static void
ngx_http_llm_redis_arg(ngx_http_llm_redis_cmd_t *cmd, const void *p,
    size_t len)
{
    /* an empty field may have no memory behind it */
    cmd->argv[cmd->argc] = p ? p : "";
    cmd->argvlen[cmd->argc] = len;
    cmd->argc++;
}


static void
ngx_http_llm_redis_lit(ngx_http_llm_redis_cmd_t *cmd, const char *s)
{
    ngx_http_llm_redis_arg(cmd, s, ngx_strlen(s));
}


static void
ngx_http_llm_redis_argf(ngx_http_llm_redis_cmd_t *cmd, const char *fmt, ...)
{
    u_char   *p;
    va_list   args;

    va_start(args, fmt);
    p = ngx_vslprintf(cmd->last, cmd->buf + sizeof(cmd->buf), fmt, args);
    va_end(args);

    ngx_http_llm_redis_arg(cmd, cmd->last, p - cmd->last);
    cmd->last = p;
}


static void
ngx_http_llm_redis_key(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_cmd_t *cmd, u_char *id, const char *type)
{
    ngx_http_llm_redis_argf(cmd, "%V{%*s}:%s", &rd->conf->prefix,
                            (size_t) NGX_HTTP_LLM_JOB_ID_LEN, id, type);
}


static void
ngx_http_llm_redis_send(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_cmd_t *cmd)
{
    if (redisAppendCommandArgv(rd->ctx, cmd->argc, cmd->argv, cmd->argvlen)
        != REDIS_OK)
    {
        rd->nomem = 1;
    }
}


static ngx_int_t
ngx_http_llm_redis_is(redisReply *r, const char *s)
{
    size_t  len;

    len = ngx_strlen(s);

    return r->type == REDIS_REPLY_STRING && r->len == len
           && ngx_memcmp(r->str, s, len) == 0;
}


/* a decimal string, with a sign, up to the first other character */

static int64_t
ngx_http_llm_redis_int(redisReply *r)
{
    size_t    i;
    int64_t   v, sign;

    if (r->type != REDIS_REPLY_STRING) {
        return 0;
    }

    i = 0;
    sign = 1;

    if (r->len && r->str[0] == '-') {
        sign = -1;
        i++;
    }

    for (v = 0; i < r->len && r->str[i] >= '0' && r->str[i] <= '9'; i++) {
        v = v * 10 + (r->str[i] - '0');
    }

    return sign * v;
}


static ngx_msec_t
ngx_http_llm_redis_now(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (ngx_msec_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
