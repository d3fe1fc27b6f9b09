
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
#define NGX_HTTP_LLM_SENTINEL_ERR      256


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
    u_char  *p;

    if (ngx_http_llm_redis_servers_conf(cf, rc, url,
                                        NGX_HTTP_LLM_SENTINEL_PORT,
                                        &rc->master)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (rc->master.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "no master name in \"llm_store\": "
                           "redis-sentinel://HOST:PORT[,HOST:PORT...]/NAME "
                           "expected");
        return NGX_ERROR;
    }

    for (p = rc->master.data; p < rc->master.data + rc->master.len; p++) {
        if (*p <= ' ' || *p == '/' || *p == '@' || *p == ',') {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid master name \"%V\" in "
                               "\"llm_store\"", &rc->master);
            return NGX_ERROR;
        }
    }

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

    a = rd->conf->servers->elts;
    n = rd->conf->servers->nelts;

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
