
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * The Redis store behind Redis Sentinel: which server is the primary is
 * asked of the sentinels, as their client protocol says
 * (https://redis.io/docs/reference/sentinel-clients/):
 *
 *   - the sentinels are asked in turn, from the one that answered last,
 *     "SENTINEL get-master-addr-by-name NAME", until one gives an address;
 *   - the server at that address must say it is a master (ROLE): a
 *     sentinel may not know yet of a failover, or the server of its end;
 *   - the primary is asked for again on every new connection, so after a
 *     lost connection (the sentinels disconnect the clients of a server
 *     they reconfigure) or a READONLY or MASTERDOWN reply (the thread then
 *     drops the connection).
 *
 * All of it runs on the store thread, which owns the connections: a
 * sentinel's name is resolved there, never on the event loop.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_store_redis.h"


#define NGX_HTTP_LLM_SENTINEL_PORT     26379
#define NGX_HTTP_LLM_SENTINEL_SCHEME   "redis-sentinel://"
#define NGX_HTTP_LLM_SENTINEL_ERR      256


static ngx_int_t ngx_http_llm_redis_sentinel_addr(ngx_conf_t *cf,
    ngx_http_llm_redis_conf_t *rc, u_char *p, u_char *last);
static ngx_int_t ngx_http_llm_redis_sentinel_ask(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_addr_t *a, u_char *err, size_t size);


/*
 * redis-sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/NAME
 *
 * USER and PASSWORD are the primary's; the sentinels' are options
 * (sentinel_user=, sentinel_password=).  HOST may be [IPv6].
 */

ngx_int_t
ngx_http_llm_redis_sentinel_conf(ngx_conf_t *cf,
    ngx_http_llm_redis_conf_t *rc, ngx_str_t *url)
{
    u_char                     *p, *last, *host, *colon, *comma, *n;
    ngx_uint_t                  i;
    ngx_http_llm_redis_addr_t  *a;

    p = url->data + sizeof(NGX_HTTP_LLM_SENTINEL_SCHEME) - 1;
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
                               "[USER]:PASSWORD@ expected before the "
                               "sentinels");
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

    if (p == NULL || p + 1 == last) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "no master name in \"llm_store\": "
                           "redis-sentinel://HOST:PORT[,HOST:PORT...]/NAME "
                           "expected");
        return NGX_ERROR;
    }

    rc->master.data = p + 1;
    rc->master.len = last - rc->master.data;

    for (n = rc->master.data; n < last; n++) {
        if (*n <= ' ' || *n == '/' || *n == '@' || *n == ',') {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid master name \"%V\" in "
                               "\"llm_store\"", &rc->master);
            return NGX_ERROR;
        }
    }

    last = p;

    rc->sentinels = ngx_array_create(cf->pool, 3,
                                     sizeof(ngx_http_llm_redis_addr_t));
    if (rc->sentinels == NULL) {
        return NGX_ERROR;
    }

    for (p = host; p <= last; p = comma + 1) {
        comma = ngx_strlchr(p, last, ',');

        if (comma == NULL) {
            comma = last;
        }

        if (ngx_http_llm_redis_sentinel_addr(cf, rc, p, comma) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    /* the log names the sentinels and the master, never the password */

    rc->name.len = sizeof(NGX_HTTP_LLM_SENTINEL_SCHEME) - 1 + rc->master.len
                   + 1;
    a = rc->sentinels->elts;

    for (i = 0; i < rc->sentinels->nelts; i++) {
        rc->name.len += a[i].host.len + sizeof("[]:65535,") - 1;
    }

    rc->name.data = ngx_pnalloc(cf->pool, rc->name.len);
    if (rc->name.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(rc->name.data, NGX_HTTP_LLM_SENTINEL_SCHEME,
                   sizeof(NGX_HTTP_LLM_SENTINEL_SCHEME) - 1);

    for (i = 0; i < rc->sentinels->nelts; i++) {
        p = ngx_sprintf(p, ngx_strlchr(a[i].host.data,
                                       a[i].host.data + a[i].host.len, ':')
                           ? "%s[%V]:%d" : "%s%V:%d",
                        i ? "," : "", &a[i].host, a[i].port);
    }

    p = ngx_sprintf(p, "/%V", &rc->master);
    rc->name.len = p - rc->name.data;

    return NGX_OK;
}


/* one sentinel: HOST[:PORT], HOST may be [IPv6] */

static ngx_int_t
ngx_http_llm_redis_sentinel_addr(ngx_conf_t *cf,
    ngx_http_llm_redis_conf_t *rc, u_char *p, u_char *last)
{
    u_char                     *host, *host_end;
    ngx_str_t                   s;
    ngx_int_t                   port;
    ngx_http_llm_redis_addr_t  *a;

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
                           "no sentinel host in \"llm_store\" URL");
        return NGX_ERROR;
    }

    if (host_end - host >= NGX_HTTP_LLM_REDIS_HOST_LEN) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "sentinel host name too long in \"llm_store\"");
        return NGX_ERROR;
    }

    port = NGX_HTTP_LLM_SENTINEL_PORT;

    if (p < last) {
        s.data = p + 1;
        s.len = last - s.data;

        port = (*p == ':') ? ngx_atoi(s.data, s.len) : NGX_ERROR;

        if (port < 1 || port > 65535) {
            s.data = p;
            s.len = last - p;
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid sentinel port \"%V\" in "
                               "\"llm_store\"", &s);
            return NGX_ERROR;
        }
    }

    a = ngx_array_push(rc->sentinels);
    if (a == NULL) {
        return NGX_ERROR;
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


/*
 * Store thread: the primary's address, from the first sentinel that
 * knows it, into rd->primary and rd->primary_port.  The one that answered
 * is asked first next time; a failure of them all is the connection's.
 */

ngx_int_t
ngx_http_llm_redis_sentinel_primary(ngx_http_llm_redis_t *rd)
{
    u_char                      err[NGX_HTTP_LLM_SENTINEL_ERR];
    ngx_uint_t                  i, k, n;
    ngx_http_llm_redis_addr_t  *a;

    a = rd->conf->sentinels->elts;
    n = rd->conf->sentinels->nelts;

    for (i = 0; i < n; i++) {
        k = (rd->sentinel + i) % n;

        if (ngx_http_llm_redis_sentinel_ask(rd, &a[k], err, sizeof(err))
            == NGX_OK)
        {
            rd->sentinel = k;
            return NGX_OK;
        }
    }

    ngx_http_llm_redis_broken(rd, "no sentinel gives the primary",
                              (char *) err);

    return NGX_ERROR;
}


/* store thread: one sentinel; err, NUL-terminated, says why not */

static ngx_int_t
ngx_http_llm_redis_sentinel_ask(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_addr_t *a, u_char *err, size_t size)
{
    int                         argc, port;
    u_char                     *last;
    ngx_int_t                   rc;
    const char                 *argv[4];
    size_t                      argvlen[4];
    redisReply                 *r;
    redisContext               *c;
    ngx_http_llm_redis_conf_t  *conf;

    conf = rd->conf;
    last = err + size - 1;
    r = NULL;
    rc = NGX_ERROR;

    c = ngx_http_llm_redis_open(rd, (char *) a->host.data, a->port);

    if (c == NULL || c->err) {
        *ngx_slprintf(err, last, "%V:%d: %s", &a->host, a->port,
                      c ? c->errstr : "out of memory") = '\0';
        goto done;
    }

    if (conf->sentinel_password.len) {
        argc = 0;
        argv[argc] = "AUTH";
        argvlen[argc++] = 4;

        if (conf->sentinel_user.len) {
            argv[argc] = (char *) conf->sentinel_user.data;
            argvlen[argc++] = conf->sentinel_user.len;
        }

        argv[argc] = (char *) conf->sentinel_password.data;
        argvlen[argc++] = conf->sentinel_password.len;

        r = redisCommandArgv(c, argc, argv, argvlen);

        /* the server's message names the failure, not the password */

        if (r == NULL || r->type == REDIS_REPLY_ERROR) {
            *ngx_slprintf(err, last, "%V:%d: AUTH failed: %s",
                          &a->host, a->port,
                          r ? r->str : c->errstr) = '\0';
            goto done;
        }

        freeReplyObject(r);
    }

    argv[0] = "SENTINEL";
    argvlen[0] = 8;
    argv[1] = "get-master-addr-by-name";
    argvlen[1] = 23;
    argv[2] = (char *) conf->master.data;
    argvlen[2] = conf->master.len;

    r = redisCommandArgv(c, 3, argv, argvlen);

    if (r == NULL) {
        *ngx_slprintf(err, last, "%V:%d: %s", &a->host, a->port,
                      c->errstr) = '\0';
        goto done;
    }

    if (r->type == REDIS_REPLY_ERROR) {
        *ngx_slprintf(err, last, "%V:%d: %s", &a->host, a->port,
                      r->str) = '\0';
        goto done;
    }

    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
        *ngx_slprintf(err, last, "%V:%d: no master \"%V\"",
                      &a->host, a->port, &conf->master) = '\0';
        goto done;
    }

    port = (r->element[1]->type == REDIS_REPLY_STRING)
           ? ngx_atoi((u_char *) r->element[1]->str, r->element[1]->len)
           : NGX_ERROR;

    if (r->element[0]->type != REDIS_REPLY_STRING
        || r->element[0]->len == 0
        || r->element[0]->len >= NGX_HTTP_LLM_REDIS_HOST_LEN
        || port < 1 || port > 65535)
    {
        *ngx_slprintf(err, last, "%V:%d: invalid address of \"%V\"",
                      &a->host, a->port, &conf->master) = '\0';
        goto done;
    }

    if (ngx_strcmp(rd->primary, r->element[0]->str) != 0
        || rd->primary_port != port)
    {
        ngx_log_error(NGX_LOG_NOTICE, rd->log, 0,
                      "llm: redis store: %V: the primary is %s:%d "
                      "(from %V:%d)", &conf->name, r->element[0]->str,
                      port, &a->host, a->port);

        ngx_memcpy(rd->primary, r->element[0]->str, r->element[0]->len + 1);
        rd->primary_port = port;
    }

    rc = NGX_OK;

done:

    if (r) {
        freeReplyObject(r);
    }

    if (c) {
        redisFree(c);
    }

    return rc;
}


/*
 * Store thread: the primary's ROLE, on the connection just made.  A
 * sentinel can name a server that is not the primary (yet, or any more):
 * the connection is dropped and the sentinels are asked again after a
 * delay.
 */

ngx_int_t
ngx_http_llm_redis_sentinel_role(ngx_http_llm_redis_t *rd)
{
    redisReply    *r, *role;
    redisContext  *c;

    c = rd->ctx;

    r = redisCommand(c, "ROLE");

    if (r == NULL) {
        ngx_http_llm_redis_broken(rd, "connection lost", c->errstr);
        return NGX_ERROR;
    }

    role = (r->type == REDIS_REPLY_ARRAY && r->elements > 0)
           ? r->element[0] : NULL;

    if (role && role->type == REDIS_REPLY_STRING
        && role->len == 6 && ngx_strncmp(role->str, "master", 6) == 0)
    {
        freeReplyObject(r);
        return NGX_OK;
    }

    freeReplyObject(r);

    rd->up = 0;
    ngx_http_llm_redis_broken(rd, "not the primary", rd->primary);

    return NGX_ERROR;
}
