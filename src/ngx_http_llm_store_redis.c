
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
 * writes, a read, a control request) on a list under the channel mutex and
 * gets the answers back through the worker's channel.  Like the engine,
 * the task returns when it has been idle for a while or the worker exits,
 * and is posted again when work comes.
 *
 * Saves are not written at once: a per-worker timer sends what every
 * changed job gained since its last successful write, all jobs in one
 * pipelined round trip, each job in a MULTI/EXEC so that a reader (whose
 * reads are one MULTI/EXEC too) never sees half a write.  Every write is
 * idempotent (SETRANGE at the text offset, XADD with the event's own id),
 * so a write whose answer was lost is simply sent again.  A job's marks
 * (saved_events, saved_text) only move when Redis has confirmed: the
 * answer goes back to the job through the callback of its snapshot.
 *
 * While Redis cannot be reached, writes fail at once and are tried again
 * with a growing delay (up to 5 s), reads answer NGX_ERROR; a job that
 * Redis lost meanwhile (a restart without persistence) is written again
 * from its start, from the copy the worker has.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_store_redis.h"


#define NGX_HTTP_LLM_REDIS_PREFIX      "llm:"
#define NGX_HTTP_LLM_REDIS_PREFIX_MAX  128
#define NGX_HTTP_LLM_REDIS_FLUSH       100
#define NGX_HTTP_LLM_REDIS_POLL_MIN    100

/*
 * What a worker keeps of jobs that are gone but not written yet (Redis is
 * down): beyond it, a job is not saved, and the log says so.
 */
#define NGX_HTTP_LLM_REDIS_UNSAVED     (64 * 1024 * 1024)

/*
 * replicas=: a batch waits for its writes to reach that many replicas,
 * 100 ms by default and 10 s at most (the store thread is held that long)
 */
#define NGX_HTTP_LLM_REDIS_REPLICAS_MAX      16
#define NGX_HTTP_LLM_REDIS_REPLICAS_TIMEOUT  100
#define NGX_HTTP_LLM_REDIS_REPLICAS_WAIT     10000


/* the store's side of a job it saves: event loop only */
struct ngx_http_llm_redis_job_s {
    ngx_http_llm_snapshot_pt       snapshot;    /* the job's */
    ngx_http_llm_saved_pt          saved;
    void                          *data;        /* NULL: released */
    ngx_queue_t                    queue;       /* in rd->dirty or clean */
    ngx_http_llm_redis_write_t    *write;       /* in flight */
    unsigned                       dirty:1;
    unsigned                       known:1;     /* Redis has the hash */
    unsigned                       rewrite:1;   /* Redis lost it */
    unsigned                       rewriting:1; /* the write in flight */
    unsigned                       refused:1;   /* for good: not saved */
};


static ngx_int_t ngx_http_llm_redis_server(ngx_conf_t *cf,
    ngx_http_llm_redis_conf_t *rc, u_char *p, u_char *last, ngx_int_t port);
static ngx_int_t ngx_http_llm_redis_hostport(ngx_conf_t *cf, u_char *p,
    u_char *last, ngx_int_t port, const char *what,
    ngx_http_llm_redis_addr_t *a);
static u_char *ngx_http_llm_redis_userinfo(ngx_conf_t *cf,
    ngx_http_llm_redis_conf_t *rc, u_char *p, u_char *last);
static ngx_int_t ngx_http_llm_redis_url(ngx_conf_t *cf,
    ngx_http_llm_redis_conf_t *rc, ngx_str_t *url);
static ngx_int_t ngx_http_llm_redis_init_process(ngx_http_llm_store_t *st,
    ngx_cycle_t *cycle);
static void ngx_http_llm_redis_exit_process(ngx_http_llm_store_t *st,
    ngx_cycle_t *cycle);
static void ngx_http_llm_redis_save(ngx_http_llm_store_t *st,
    ngx_http_llm_snapshot_t *snap, ngx_http_llm_saved_t *res);
static void ngx_http_llm_redis_release(ngx_http_llm_store_t *st,
    ngx_http_llm_snapshot_t *snap);
static ngx_int_t ngx_http_llm_redis_fetch(ngx_http_llm_store_t *st,
    u_char *id, ngx_uint_t from_event, size_t from_text, size_t from_meta,
    ngx_http_llm_fetch_pt handler, void *data);
static ngx_int_t ngx_http_llm_redis_control(ngx_http_llm_store_t *st,
    u_char *id, ngx_http_llm_control_e what);
static ngx_int_t ngx_http_llm_redis_claim(ngx_http_llm_store_t *st,
    u_char *id, int64_t updated, ngx_http_llm_fetch_pt handler, void *data);
static ngx_http_llm_redis_op_t *ngx_http_llm_redis_op_new(
    ngx_http_llm_store_t *st, ngx_http_llm_redis_op_e type, u_char *id);

static ngx_http_llm_redis_write_t *ngx_http_llm_redis_write_new(
    ngx_http_llm_snapshot_t *snap, ngx_uint_t from_event, size_t from_text,
    size_t from_meta, ngx_uint_t state);
static void ngx_http_llm_redis_write_free(ngx_http_llm_redis_write_t *w);
static void ngx_http_llm_redis_dirty(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_job_t *rj);
static void ngx_http_llm_redis_arm(ngx_http_llm_redis_t *rd);
static void ngx_http_llm_redis_flush(ngx_event_t *ev);
static void ngx_http_llm_redis_written(ngx_http_llm_redis_t *rd);
static void ngx_http_llm_redis_job_written(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w);
static void ngx_http_llm_redis_orphan_lost(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w);
static void ngx_http_llm_redis_orphan_written(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w);
static void ngx_http_llm_redis_refused(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w);
static size_t ngx_http_llm_redis_write_size(ngx_http_llm_redis_write_t *w);
static void ngx_http_llm_redis_orphan_free(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w);
static void ngx_http_llm_redis_submit(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op);
static void ngx_http_llm_redis_post(ngx_http_llm_redis_t *rd);
static void ngx_http_llm_redis_completed(ngx_event_t *ev);
static void ngx_http_llm_redis_done(ngx_http_llm_chan_item_t *item);
static void ngx_http_llm_redis_op_free(ngx_http_llm_redis_op_t *op);


const ngx_http_llm_store_ops_t  ngx_http_llm_store_redis = {
    "redis",
    ngx_http_llm_redis_init_process,
    ngx_http_llm_redis_exit_process,
    ngx_http_llm_redis_save,
    ngx_http_llm_redis_release,
    ngx_http_llm_redis_fetch,
    ngx_http_llm_redis_control,
    ngx_http_llm_redis_claim
};


/* timers log their connection's fd in debug builds: give them one */
static ngx_connection_t  ngx_http_llm_redis_conn = { .fd = -1 };


/*
 * llm_store redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] [OPTIONS];
 * llm_store unix:PATH [OPTIONS];
 * llm_store redis-sentinel://[[USER]:PASSWORD@]HOST[:PORT][,...]/NAME
 *           [OPTIONS];
 * llm_store redis-cluster://[[USER]:PASSWORD@]HOST[:PORT][,...] [OPTIONS];
 *
 * OPTIONS: prefix=STR flush=TIME thread_pool=NAME db=N password=STR
 * unsaved=SIZE replicas=N replicas_timeout=TIME, and with sentinels
 * sentinel_user=STR sentinel_password=STR (a cluster: no db=)
 * (ttl= is the store layer's).
 */

char *
ngx_http_llm_store_redis_conf(ngx_conf_t *cf, ngx_http_llm_store_t *st,
    ngx_str_t *args, ngx_uint_t nargs)
{
    u_char                     *p;
    ngx_int_t                   n;
    ngx_str_t                   v;
    ngx_uint_t                  i;
    ngx_http_llm_redis_conf_t  *rc;

    rc = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_redis_conf_t));
    if (rc == NULL) {
        return NGX_CONF_ERROR;
    }

    rc->db = -1;
    rc->flush = NGX_HTTP_LLM_REDIS_FLUSH;
    rc->unsaved = NGX_HTTP_LLM_REDIS_UNSAVED;
    ngx_str_set(&rc->prefix, NGX_HTTP_LLM_REDIS_PREFIX);
    ngx_str_set(&rc->pool_name, "default");

    rc->replicas_timeout = NGX_HTTP_LLM_REDIS_REPLICAS_TIMEOUT;

    if (ngx_strncmp(args[0].data, "redis-sentinel://", 17) == 0) {
        if (ngx_http_llm_redis_sentinel_conf(cf, rc, &args[0]) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

    } else if (ngx_strncmp(args[0].data, "redis-cluster://", 16) == 0) {
        if (ngx_http_llm_redis_cluster_conf(cf, rc, &args[0]) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

    } else if (ngx_strncmp(args[0].data, "unix:", 5) == 0) {
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

        if (ngx_strncmp(v.data, "unsaved=", 8) == 0) {
            v.data += 8;
            v.len -= 8;

            rc->unsaved = ngx_parse_size(&v);

            if (rc->unsaved == (size_t) NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid unsaved \"%V\" in \"llm_store\"",
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

        if (ngx_strncmp(v.data, "db=", 3) == 0 && !rc->cluster) {
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

        if (ngx_strncmp(v.data, "replicas=", 9) == 0) {
            v.data += 9;
            v.len -= 9;

            n = ngx_atoi(v.data, v.len);

            if (n == NGX_ERROR || n > NGX_HTTP_LLM_REDIS_REPLICAS_MAX) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid replicas \"%V\" in "
                                   "\"llm_store\": 0 to %d", &v,
                                   NGX_HTTP_LLM_REDIS_REPLICAS_MAX);
                return NGX_CONF_ERROR;
            }

            rc->replicas = n;
            continue;
        }

        if (ngx_strncmp(v.data, "replicas_timeout=", 17) == 0) {
            v.data += 17;
            v.len -= 17;

            rc->replicas_timeout = ngx_parse_time(&v, 0);

            /* the store thread waits that long for each batch */

            if (rc->replicas_timeout == (ngx_msec_t) NGX_ERROR
                || rc->replicas_timeout == 0
                || rc->replicas_timeout > NGX_HTTP_LLM_REDIS_REPLICAS_WAIT)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid replicas_timeout \"%V\" in "
                                   "\"llm_store\": 1ms to %dms", &v,
                                   NGX_HTTP_LLM_REDIS_REPLICAS_WAIT);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (rc->master.len
            && ngx_strncmp(v.data, "sentinel_password=", 18) == 0)
        {
            rc->sentinel_password.data = v.data + 18;
            rc->sentinel_password.len = v.len - 18;
            continue;
        }

        if (rc->master.len && ngx_strncmp(v.data, "sentinel_user=", 14) == 0) {
            rc->sentinel_user.data = v.data + 14;
            rc->sentinel_user.len = v.len - 14;
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

    if (rc->sentinel_user.len && rc->sentinel_password.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "sentinel_user without sentinel_password in "
                           "\"llm_store\"");
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

    /* a first write goes at once, or after the batch in flight */
    st->window = 2 * rc->flush + 100;

    return NGX_CONF_OK;
}


/*
 * A URL's [[USER]:PASSWORD@] from p on: where the host starts, or NULL
 * (the error said, without the password).  The password may hold
 * anything but the last "@".
 */

static u_char *
ngx_http_llm_redis_userinfo(ngx_conf_t *cf, ngx_http_llm_redis_conf_t *rc,
    u_char *p, u_char *last)
{
    u_char  *host, *colon;

    for (host = last; host > p; host--) {
        if (host[-1] == '@') {
            break;
        }
    }

    if (host == p) {
        return p;
    }

    colon = ngx_strlchr(p, host - 1, ':');

    if (colon == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid URL in \"llm_store\": "
                           "[USER]:PASSWORD@ expected before the host");
        return NULL;
    }

    rc->user.data = p;
    rc->user.len = colon - p;
    rc->password.data = colon + 1;
    rc->password.len = host - 1 - (colon + 1);

    return host;
}


/* redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], HOST may be [IPv6] */

static ngx_int_t
ngx_http_llm_redis_url(ngx_conf_t *cf, ngx_http_llm_redis_conf_t *rc,
    ngx_str_t *url)
{
    u_char                     *p, *last, *host;
    ngx_str_t                   s;
    ngx_http_llm_redis_addr_t   addr;

    p = url->data + 8;
    last = url->data + url->len;

    host = ngx_http_llm_redis_userinfo(cf, rc, p, last);
    if (host == NULL) {
        return NGX_ERROR;
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

    if (ngx_http_llm_redis_hostport(cf, host, last, 6379, "", &addr)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    rc->host = addr.host;
    rc->port = addr.port;

    /* the log names the server, never the password */

    rc->name.data = ngx_pnalloc(cf->pool, rc->host.len + sizeof("[]:65535"));
    if (rc->name.data == NULL) {
        return NGX_ERROR;
    }

    rc->name.len = ngx_sprintf(rc->name.data,
                               *host == '[' ? "[%V]:%d" : "%V:%d",
                               &rc->host, rc->port)
                   - rc->name.data;

    return NGX_OK;
}



/*
 * SCHEME[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...][/REST]: the servers
 * (sentinels, a cluster's first nodes), HOST may be [IPv6]; REST is what
 * follows "/" (empty if nothing).  The log's name is the URL without the
 * password.
 */

ngx_int_t
ngx_http_llm_redis_servers_conf(ngx_conf_t *cf, ngx_http_llm_redis_conf_t *rc,
    ngx_str_t *url, ngx_int_t port, ngx_str_t *rest)
{
    u_char                     *p, *last, *host, *comma;
    size_t                      scheme;
    ngx_uint_t                  i;
    ngx_http_llm_redis_addr_t  *a;

    /* the caller knows there is one */
    scheme = ngx_strnstr(url->data, "://", url->len) + 3 - url->data;

    p = url->data + scheme;
    last = url->data + url->len;

    host = ngx_http_llm_redis_userinfo(cf, rc, p, last);
    if (host == NULL) {
        return NGX_ERROR;
    }

    p = ngx_strlchr(host, last, '/');

    if (p) {
        rest->data = p + 1;
        rest->len = last - rest->data;
        last = p;

    } else {
        ngx_str_null(rest);
    }

    rc->servers = ngx_array_create(cf->pool, 3,
                                   sizeof(ngx_http_llm_redis_addr_t));
    if (rc->servers == NULL) {
        return NGX_ERROR;
    }

    for (p = host; p <= last; p = comma + 1) {
        comma = ngx_strlchr(p, last, ',');

        if (comma == NULL) {
            comma = last;
        }

        if (ngx_http_llm_redis_server(cf, rc, p, comma, port) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    rc->name.len = scheme + 1 + rest->len;
    a = rc->servers->elts;

    for (i = 0; i < rc->servers->nelts; i++) {
        rc->name.len += a[i].host.len + sizeof("[]:65535,") - 1;
    }

    rc->name.data = ngx_pnalloc(cf->pool, rc->name.len);
    if (rc->name.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(rc->name.data, url->data, scheme);

    for (i = 0; i < rc->servers->nelts; i++) {
        p = ngx_sprintf(p, ngx_strlchr(a[i].host.data,
                                       a[i].host.data + a[i].host.len, ':')
                           ? "%s[%V]:%d" : "%s%V:%d",
                        i ? "," : "", &a[i].host, a[i].port);
    }

    if (rest->len) {
        p = ngx_sprintf(p, "/%V", rest);
    }

    rc->name.len = p - rc->name.data;

    return NGX_OK;
}


/* one of the servers: HOST[:PORT], HOST may be [IPv6] */

static ngx_int_t
ngx_http_llm_redis_server(ngx_conf_t *cf, ngx_http_llm_redis_conf_t *rc,
    u_char *p, u_char *last, ngx_int_t port)
{
    ngx_http_llm_redis_addr_t  *a;

    a = ngx_array_push(rc->servers);
    if (a == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_llm_redis_hostport(cf, p, last, port, "server ", a)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (a->host.len >= NGX_HTTP_LLM_REDIS_HOST_LEN) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "server host name too long in \"llm_store\"");
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * HOST[:PORT] from p to last, HOST may be [IPv6]: the host NUL-terminated
 * in the configuration's pool.  "what" names it in the errors.
 */

static ngx_int_t
ngx_http_llm_redis_hostport(ngx_conf_t *cf, u_char *p, u_char *last,
    ngx_int_t port, const char *what, ngx_http_llm_redis_addr_t *a)
{
    u_char     *host, *host_end;
    ngx_str_t   s;

    host = p;

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
                           "no %shost in \"llm_store\" URL", what);
        return NGX_ERROR;
    }

    if (p < last) {
        s.data = p + 1;
        s.len = last - s.data;

        port = (*p == ':') ? ngx_atoi(s.data, s.len) : NGX_ERROR;

        if (port < 1 || port > 65535) {
            s.data = p;
            s.len = last - p;
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid %sport \"%V\" in \"llm_store\"",
                               what, &s);
            return NGX_ERROR;
        }
    }

    a->port = (int) port;
    a->host.len = host_end - host;
    a->host.data = ngx_pnalloc(cf->pool, a->host.len + 1);
    if (a->host.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(a->host.data, host, a->host.len);
    a->host.data[a->host.len] = '\0';

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

    if (rc->cluster && ngx_http_llm_redis_cluster_init(rd) != NGX_OK) {
        (void) pthread_cond_destroy(&rd->cond);
        ngx_free(rd);
        return NGX_ERROR;
    }

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
    ngx_http_llm_redis_conf_t   *rc;
    ngx_http_llm_redis_write_t  *w;

    rc = st->data;
    rd = rc->rd;

    if (rd == NULL) {
        return;
    }

    /*
     * Jobs still alive are not saved any more: release() does nothing,
     * and their pointers to what is freed here are not used again.
     */

    rc->rd = NULL;
    lost = 0;

    while (!ngx_queue_empty(&rd->batch.writes)) {
        q = ngx_queue_head(&rd->batch.writes);
        ngx_queue_remove(q);
        w = ngx_queue_data(q, ngx_http_llm_redis_write_t, queue);

        /* a released job's own; a live job's goes with the lists below */
        if (w->rj && w->rj->data == NULL) {
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
        ngx_free(ngx_queue_data(q, ngx_http_llm_redis_job_t, queue));
        lost++;
    }

    while (!ngx_queue_empty(&rd->clean)) {
        q = ngx_queue_head(&rd->clean);
        ngx_queue_remove(q);
        ngx_free(ngx_queue_data(q, ngx_http_llm_redis_job_t, queue));
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

    if (rd->cluster) {
        ngx_http_llm_redis_cluster_free(rd);
    }

    (void) pthread_cond_destroy(&rd->cond);
    ngx_free(rd);
}


/* event loop: the job changed; it is written with the next flush */

static void
ngx_http_llm_redis_save(ngx_http_llm_store_t *st,
    ngx_http_llm_snapshot_t *snap, ngx_http_llm_saved_t *res)
{
    ngx_http_llm_redis_t       *rd;
    ngx_http_llm_redis_job_t   *rj;
    ngx_http_llm_redis_conf_t  *rc;

    rc = st->data;
    rd = rc->rd;

    if (rd == NULL) {
        return;
    }

    rj = snap->store_data;

    if (rj == NULL) {
        rj = ngx_calloc(sizeof(ngx_http_llm_redis_job_t), rd->log);
        if (rj == NULL) {
            /* the next save tries again */
            return;
        }

        rj->snapshot = snap->snapshot;
        rj->saved = snap->saved;
        rj->data = snap->data;
        res->store_data = rj;
        ngx_queue_insert_tail(&rd->clean, &rj->queue);
    }

    if (rj->refused) {
        /* said once: Redis would refuse it again */
        return;
    }

    ngx_http_llm_redis_dirty(rd, rj);

    /*
     * A job's first write (its id is out) and its last (its final event
     * waits for it) go with a batch of their own, now, unless one is in
     * flight or Redis is failing.
     */

    if ((snap->state != NGX_HTTP_LLM_RUNNING || !rj->known)
        && !rd->flushing && !rd->retry)
    {
        if (rd->timer.timer_set) {
            ngx_del_timer(&rd->timer);
        }

        rd->timer.cancelable = rd->given_up;
        ngx_add_timer(&rd->timer, 1);
        return;
    }

    ngx_http_llm_redis_arm(rd);
}


/*
 * Event loop: the job is about to be freed.  What Redis has not confirmed
 * yet goes with a copy of the whole job, so that it can still be written
 * in full if Redis turns out to have lost it.
 */

static void
ngx_http_llm_redis_release(ngx_http_llm_store_t *st,
    ngx_http_llm_snapshot_t *snap)
{
    size_t                       size;
    ngx_http_llm_redis_t        *rd;
    ngx_http_llm_redis_job_t    *rj;
    ngx_http_llm_redis_conf_t   *rc;
    ngx_http_llm_redis_write_t  *w;

    rc = st->data;
    rd = rc->rd;

    if (rd == NULL) {
        return;
    }

    rj = snap->store_data;

    if (rj == NULL) {
        /* never saved: not meant to be kept */
        return;
    }

    if (!rj->refused
        && (rj->dirty || rj->write || rj->rewrite
            || snap->saved_events < snap->nevents
            || snap->saved_text < snap->text_len
            || snap->saved_meta < snap->meta_len
            || snap->saved_state != snap->state_version))
    {
        size = snap->text_len + snap->outcome->message_len
               + snap->meta_len + snap->pipeline_state_len
               + snap->nevents * sizeof(ngx_http_llm_event_t);

        w = NULL;

        if (rd->orphans_size + size > rc->unsaved) {
            ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                          "llm: redis store: job %s not saved: the copies "
                          "of jobs not written yet to %V would exceed "
                          "unsaved=%uz", snap->id, &rc->name, rc->unsaved);

        } else {
            /* the state goes with it: writing it again changes nothing */
            w = ngx_http_llm_redis_write_new(snap, 0, 0, 0, 1);

            if (w == NULL) {
                ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                              "llm: redis store: job %s not saved: "
                              "out of memory", snap->id);
            }
        }

        if (w) {
            rd->orphans_size += ngx_http_llm_redis_write_size(w);

            w->from_event = snap->saved_events;
            w->from_text = snap->saved_text;
            w->from_meta = snap->saved_meta;
            w->known = rj->known;
            w->rewrite = rj->rewrite || rj->rewriting;

            ngx_queue_insert_tail(&rd->orphans, &w->queue);
            ngx_http_llm_metrics_orphan();
            ngx_http_llm_redis_arm(rd);
        }
    }

    ngx_queue_remove(&rj->queue);

    if (rj->write) {
        /* freed when its write comes back */
        rj->data = NULL;
        return;
    }

    ngx_free(rj);
}


/*
 * Event loop.  Reads are sent at once, and go with whatever else the
 * store thread sends in its next round trip.  If the stream was trimmed
 * past "from_event" (by an older version's MAXLEN, or by hand), the record
 * starts at the oldest event left: rec->from_event says where.
 */

static ngx_int_t
ngx_http_llm_redis_fetch(ngx_http_llm_store_t *st, u_char *id,
    ngx_uint_t from_event, size_t from_text, size_t from_meta,
    ngx_http_llm_fetch_pt handler, void *data)
{
    ngx_http_llm_redis_op_t  *op;

    op = ngx_http_llm_redis_op_new(st, NGX_HTTP_LLM_REDIS_FETCH, id);
    if (op == NULL) {
        return NGX_ERROR;
    }

    op->from_event = from_event;
    op->from_text = from_text;
    op->from_meta = from_meta;
    op->now = ngx_http_llm_now_ms();
    op->handler = handler;
    op->data = data;

    ngx_http_llm_redis_submit(((ngx_http_llm_redis_conf_t *) st->data)->rd,
                              op);

    return NGX_OK;
}


/* event loop: one EVAL that takes the job if it is as the reader saw it */

static ngx_int_t
ngx_http_llm_redis_claim(ngx_http_llm_store_t *st, u_char *id,
    int64_t updated, ngx_http_llm_fetch_pt handler, void *data)
{
    ngx_http_llm_redis_op_t  *op;

    op = ngx_http_llm_redis_op_new(st, NGX_HTTP_LLM_REDIS_CLAIM, id);
    if (op == NULL) {
        return NGX_ERROR;
    }

    op->updated = updated;
    op->now = ngx_http_llm_now_ms();
    op->handler = handler;
    op->data = data;

    ngx_http_llm_redis_submit(((ngx_http_llm_redis_conf_t *) st->data)->rd,
                              op);

    return NGX_OK;
}


/* event loop: the worker running the job sees it with its next write */

static ngx_int_t
ngx_http_llm_redis_control(ngx_http_llm_store_t *st, u_char *id,
    ngx_http_llm_control_e what)
{
    ngx_http_llm_redis_op_t  *op;

    op = ngx_http_llm_redis_op_new(st, NGX_HTTP_LLM_REDIS_CONTROL, id);
    if (op == NULL) {
        return NGX_ERROR;
    }

    op->control = what;

    ngx_http_llm_redis_submit(((ngx_http_llm_redis_conf_t *) st->data)->rd,
                              op);

    return NGX_OK;
}


/* a read or a control request for the store thread; NULL without one */

static ngx_http_llm_redis_op_t *
ngx_http_llm_redis_op_new(ngx_http_llm_store_t *st,
    ngx_http_llm_redis_op_e type, u_char *id)
{
    ngx_http_llm_redis_t       *rd;
    ngx_http_llm_redis_op_t    *op;
    ngx_http_llm_redis_conf_t  *rc;

    rc = st->data;
    rd = rc->rd;

    if (rd == NULL) {
        return NULL;
    }

    op = ngx_calloc(sizeof(ngx_http_llm_redis_op_t), rd->log);
    if (op == NULL) {
        return NULL;
    }

    op->type = type;
    op->rc = NGX_ERROR;
    ngx_memcpy(op->id, id, NGX_HTTP_LLM_JOB_ID_LEN);

    return op;
}


/*
 * A copy of the job from an event, a text and a meta offset on, and its
 * pipeline state if "state" says so, in heap memory.
 */

static ngx_http_llm_redis_write_t *
ngx_http_llm_redis_write_new(ngx_http_llm_snapshot_t *snap,
    ngx_uint_t from_event, size_t from_text, size_t from_meta,
    ngx_uint_t state)
{
    ngx_uint_t                   n;
    ngx_log_t                   *log;
    ngx_http_llm_record_t       *rec;
    ngx_http_llm_outcome_t      *oc;
    ngx_http_llm_redis_write_t  *w;

    log = ngx_cycle->log;
    oc = snap->outcome;

    w = ngx_calloc(sizeof(ngx_http_llm_redis_write_t), log);
    if (w == NULL) {
        return NULL;
    }

    ngx_memcpy(w->id, snap->id, NGX_HTTP_LLM_JOB_ID_LEN);
    w->from_event = from_event;
    w->from_text = from_text;
    w->from_meta = from_meta;

    rec = &w->rec;

    rec->state = snap->state;
    rec->created = snap->created;
    rec->updated = snap->updated;
    rec->finished = snap->finished;
    ngx_memcpy(rec->owner, snap->owner, NGX_HTTP_LLM_OWNER_LEN);
    rec->has_owner = snap->has_owner;
    rec->background = snap->background;
    rec->paused = snap->paused;
    ngx_memcpy(rec->outcome.finish, oc->finish, oc->finish_len);
    rec->outcome.finish_len = oc->finish_len;
    rec->outcome.input_tokens = oc->input_tokens;
    rec->outcome.output_tokens = oc->output_tokens;
    ngx_memcpy(rec->outcome.code, oc->code, oc->code_len);
    rec->outcome.code_len = oc->code_len;

    rec->nevents = snap->nevents;
    rec->from_event = from_event;
    rec->text_len = snap->text_len;
    rec->from_text = from_text;
    rec->meta_len = snap->meta_len;
    rec->from_meta = from_meta;
    rec->state_version = snap->state_version;

    if (oc->message_len) {
        rec->outcome.message = ngx_alloc(oc->message_len, log);
        if (rec->outcome.message == NULL) {
            goto failed;
        }

        ngx_memcpy(rec->outcome.message, oc->message, oc->message_len);
        rec->outcome.message_len = oc->message_len;
    }

    n = snap->nevents - from_event;

    if (n) {
        rec->events = ngx_alloc(n * sizeof(ngx_http_llm_event_t), log);
        if (rec->events == NULL) {
            goto failed;
        }

        ngx_memcpy(rec->events, snap->events + from_event,
                   n * sizeof(ngx_http_llm_event_t));
    }

    n = snap->text_len - from_text;

    if (n) {
        rec->text = ngx_alloc(n, log);
        if (rec->text == NULL) {
            goto failed;
        }

        ngx_memcpy(rec->text, snap->text + from_text, n);
    }

    n = snap->meta_len - from_meta;

    if (n) {
        rec->meta = ngx_alloc(n, log);
        if (rec->meta == NULL) {
            goto failed;
        }

        ngx_memcpy(rec->meta, snap->meta + from_meta, n);
    }

    if (state && snap->pipeline_state) {
        rec->pipeline_state = ngx_alloc(ngx_max(snap->pipeline_state_len, 1),
                                        log);
        if (rec->pipeline_state == NULL) {
            goto failed;
        }

        ngx_memcpy(rec->pipeline_state, snap->pipeline_state,
                   snap->pipeline_state_len);
        rec->pipeline_state_len = snap->pipeline_state_len;
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
    ngx_http_llm_redis_t        *rd;
    ngx_http_llm_snapshot_t      snap;
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
        rj->snapshot(rj->data, &snap);

        w = ngx_http_llm_redis_write_new(&snap, snap.saved_events,
                                         snap.saved_text, snap.saved_meta,
                                         snap.state_version
                                         != snap.saved_state);
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
        w->pause = 0;
        w->pause_seq = 0;
        w->refused = 0;
    }

    rd->batch.rc = NGX_ERROR;

    rd->flushing = 1;
    rd->flush_started = ngx_current_msec;
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
        ngx_http_llm_metrics_store_write(NGX_HTTP_LLM_METRICS_REDIS, w->ok);

        if (w->rj) {
            ngx_http_llm_redis_job_written(rd, w);

        } else {
            ngx_http_llm_redis_orphan_written(rd, w);
        }
    }

    rd->flushing = 0;
    ngx_http_llm_metrics_flush(rd->batch.rc == NGX_OK,
                               ngx_current_msec - rd->flush_started);

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
    ngx_http_llm_saved_t       res;
    ngx_http_llm_snapshot_t    snap;
    ngx_http_llm_redis_job_t  *rj;

    rj = w->rj;

    rj->write = NULL;
    rj->rewriting = 0;

    if (rj->data == NULL) {
        /* released meanwhile: its own write follows this one */

        if (w->refused) {
            ngx_http_llm_redis_refused(rd, w);

        } else if (w->ok && w->lost) {
            ngx_http_llm_redis_orphan_lost(rd, w);
        }

        ngx_free(rj);

    } else if (w->refused) {
        rj->refused = 1;
        ngx_http_llm_redis_refused(rd, w);

        /* saved again while the write was on its way */
        if (rj->dirty) {
            rj->dirty = 0;
            ngx_queue_remove(&rj->queue);
            ngx_queue_insert_tail(&rd->clean, &rj->queue);
        }

    } else if (!w->ok) {
        /* the marks stay: the next batch starts from them again */

        if (w->rewrite) {
            rj->rewrite = 1;
        }

        ngx_http_llm_redis_dirty(rd, rj);

    } else {
        /* the job moves its marks, and acts on a cancel, on its own */

        rj->snapshot(rj->data, &snap);
        ngx_http_llm_saved_init(&res, &snap);

        if (w->lost) {
            ngx_log_error(NGX_LOG_WARN, rd->log, 0,
                          "llm: redis store: %V lost job %*s, writing it "
                          "again", &rd->conf->name,
                          (size_t) NGX_HTTP_LLM_JOB_ID_LEN, w->id);

            rj->known = 0;
            rj->rewrite = 1;
            res.saved_events = 0;
            res.saved_text = 0;
            res.saved_meta = 0;
            res.saved_state = 0;
            ngx_http_llm_redis_dirty(rd, rj);

        } else {
            rj->known = 1;
            res.saved_events = ngx_max(snap.saved_events, w->rec.nevents);
            res.saved_text = ngx_max(snap.saved_text, w->rec.text_len);
            res.saved_meta = ngx_max(snap.saved_meta, w->rec.meta_len);

            if (w->rec.pipeline_state) {
                res.saved_state = w->rec.state_version;
            }
            res.watched = w->watched;
            res.cancel = w->cancel;
            res.pause = w->pause;
            res.pause_seq = w->pause_seq;
        }

        rj->saved(rj->data, &res);
    }

    ngx_http_llm_redis_write_free(w);
}


/*
 * Redis had lost a job whose last write, from its marks, has just put part
 * of it back; the job was released meanwhile, so its final write (which
 * holds the whole job) must write all of it again, not from the marks.
 */

static void
ngx_http_llm_redis_orphan_lost(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w)
{
    ngx_queue_t                 *q;
    ngx_http_llm_redis_write_t  *o;

    ngx_log_error(NGX_LOG_WARN, rd->log, 0,
                  "llm: redis store: %V lost job %*s, writing it again",
                  &rd->conf->name, (size_t) NGX_HTTP_LLM_JOB_ID_LEN, w->id);

    for (q = ngx_queue_head(&rd->orphans);
         q != ngx_queue_sentinel(&rd->orphans);
         q = ngx_queue_next(q))
    {
        o = ngx_queue_data(q, ngx_http_llm_redis_write_t, queue);

        if (ngx_memcmp(o->id, w->id, NGX_HTTP_LLM_JOB_ID_LEN) == 0) {
            o->known = 0;
            o->rewrite = 1;
            o->from_event = 0;
            o->from_text = 0;
            o->from_meta = 0;
        }
    }
}


/*
 * Redis refused a job's write for good: said once, with Redis's reply, and
 * the job is not written any more (its write of release included); the
 * other jobs go on.
 */

static void
ngx_http_llm_redis_refused(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w)
{
    ngx_uint_t                   i;
    ngx_queue_t                 *q, *next, *queues[2];
    ngx_http_llm_redis_write_t  *o;

    ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                  "llm: redis store: %V refused a write of job %*s, "
                  "the job is not saved any more: %*s", &rd->conf->name,
                  (size_t) NGX_HTTP_LLM_JOB_ID_LEN, w->id, w->reply_len,
                  w->reply);

    /* its write of release, waiting or in the same batch */

    queues[0] = &rd->orphans;
    queues[1] = &rd->batch.writes;

    for (i = 0; i < 2; i++) {
        for (q = ngx_queue_head(queues[i]);
             q != ngx_queue_sentinel(queues[i]);
             q = next)
        {
            next = ngx_queue_next(q);
            o = ngx_queue_data(q, ngx_http_llm_redis_write_t, queue);

            if (o != w && o->rj == NULL
                && ngx_memcmp(o->id, w->id, NGX_HTTP_LLM_JOB_ID_LEN) == 0)
            {
                ngx_queue_remove(q);
                ngx_http_llm_redis_orphan_free(rd, o);
            }
        }
    }
}


static void
ngx_http_llm_redis_orphan_written(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w)
{
    if (w->refused) {
        ngx_http_llm_redis_refused(rd, w);
        ngx_http_llm_redis_orphan_free(rd, w);
        return;
    }

    if (w->ok && !w->lost) {
        ngx_http_llm_redis_orphan_free(rd, w);
        return;
    }

    if (w->ok) {
        ngx_log_error(NGX_LOG_WARN, rd->log, 0,
                      "llm: redis store: %V lost job %*s, writing it again",
                      &rd->conf->name, (size_t) NGX_HTTP_LLM_JOB_ID_LEN,
                      w->id);

        /* the write has the whole job */
        w->known = 0;
        w->rewrite = 1;
        w->from_event = 0;
        w->from_text = 0;
        w->from_meta = 0;

    } else if (ngx_http_llm_now_ms() - w->rec.updated
               >= (int64_t) rd->conf->ttl)
    {
        /* it would have expired by now */

        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "llm: redis store: job %*s not saved: %V unavailable "
                      "for longer than the ttl",
                      (size_t) NGX_HTTP_LLM_JOB_ID_LEN, w->id,
                      &rd->conf->name);

        ngx_http_llm_redis_orphan_free(rd, w);
        return;
    }

    ngx_queue_insert_tail(&rd->orphans, &w->queue);
}


/* what an orphan holds: the whole job's copy, for the unsaved= bound */

static size_t
ngx_http_llm_redis_write_size(ngx_http_llm_redis_write_t *w)
{
    return w->rec.text_len - w->rec.from_text + w->rec.outcome.message_len
           + w->rec.meta_len - w->rec.from_meta + w->rec.pipeline_state_len
           + (w->rec.nevents - w->rec.from_event)
             * sizeof(ngx_http_llm_event_t);
}


static void
ngx_http_llm_redis_orphan_free(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w)
{
    rd->orphans_size -= ngx_http_llm_redis_write_size(w);
    ngx_http_llm_redis_write_free(w);
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

        /* a control request has no answer: it is done with here */

        if (op->type == NGX_HTTP_LLM_REDIS_CONTROL) {

            if (op->rc == NGX_ERROR) {
                ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                              "llm: redis store: request for job %*s lost: "
                              "%V unavailable",
                              (size_t) NGX_HTTP_LLM_JOB_ID_LEN, op->id,
                              &rd->conf->name);
            }

            ngx_http_llm_redis_op_free(op);
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
