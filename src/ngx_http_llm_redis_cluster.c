
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * The Redis store on a Redis Cluster.  Every key of a job has the job id
 * as hash tag, so a job's write, read or control request is one
 * transaction or script on one node: the node of the id's slot.
 *
 * On the store thread, per worker: the slot map (CLUSTER SLOTS, asked of
 * the nodes named in the URL, then of any known node), a connection per
 * node, kept like the one of a single server (the thread's connection
 * state is swapped in and out, ngx_http_llm_redis_cluster_use()).  A round
 * trip becomes one pipeline per node; a reply that redirects (MOVED: the
 * slot has moved, the map is asked for again; ASK: the slot is moving,
 * this once to the node named, after ASKING) sends that part again to
 * the node named, up to NGX_HTTP_LLM_REDIS_HOPS times in one round trip.
 * A node that cannot be reached makes the map be asked for again, and
 * what it left unanswered goes to the node the map names now (after a
 * failover).  What is still not answered is answered as when Redis is
 * down: writes are sent again with the next flush, reads fail.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_store_redis.h"


#define NGX_HTTP_LLM_REDIS_CLUSTER_PORT    6379
#define NGX_HTTP_LLM_REDIS_HOPS            3


typedef struct {
    char                           host[NGX_HTTP_LLM_REDIS_HOST_LEN];
    int                            port;

    /* the thread's connection state while another node's is in use */
    redisContext                  *ctx;
    ngx_msec_t                     next_connect;
    ngx_msec_t                     backoff;
    unsigned                       up:1;
    unsigned                       down:1;
} ngx_http_llm_redis_node_t;


struct ngx_http_llm_redis_cluster_s {
    ngx_http_llm_redis_node_t      nodes[NGX_HTTP_LLM_REDIS_NODES];
    ngx_uint_t                     nnodes;
    ngx_uint_t                     node;        /* whose connection is used */

    /* node + 1 for each slot, 0: unknown */
    u_char                         slots[NGX_HTTP_LLM_REDIS_SLOTS];

    unsigned                       stale:1;     /* ask for the map */
    unsigned                       again:1;     /* redirected in this hop */
    unsigned                       unmapped:1;  /* logged */

    /* the redirection in the replies of the part being read */
    unsigned                       redirect:1;
    unsigned                       asking:1;
    ngx_int_t                      target;
};


typedef enum {
    NGX_HTTP_LLM_REDIS_ASSIGN = 0,
    NGX_HTTP_LLM_REDIS_COUNT,
    NGX_HTTP_LLM_REDIS_REASSIGN,
    NGX_HTTP_LLM_REDIS_DROP
} ngx_http_llm_redis_each_e;


static ngx_uint_t ngx_http_llm_redis_cluster_each(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *ops, ngx_http_llm_redis_each_e what,
    ngx_int_t node);
static ngx_int_t ngx_http_llm_redis_cluster_slot_node(
    ngx_http_llm_redis_cluster_t *cl, u_char *id);
static void ngx_http_llm_redis_cluster_use(ngx_http_llm_redis_t *rd,
    ngx_uint_t n);
static ngx_int_t ngx_http_llm_redis_cluster_map(ngx_http_llm_redis_t *rd);
static ngx_int_t ngx_http_llm_redis_cluster_slots(ngx_http_llm_redis_t *rd,
    const char *host, int port, u_char *slots, u_char *err, size_t size);
static ngx_int_t ngx_http_llm_redis_cluster_find(
    ngx_http_llm_redis_cluster_t *cl, const char *host, size_t len,
    int port);
static uint16_t ngx_http_llm_redis_crc16(u_char *p, size_t len);


/*
 * redis-cluster://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]: nodes to
 * ask for the slot map first; the others are learnt from it.
 */

ngx_int_t
ngx_http_llm_redis_cluster_conf(ngx_conf_t *cf,
    ngx_http_llm_redis_conf_t *rc, ngx_str_t *url)
{
    ngx_str_t  rest;

    if (ngx_http_llm_redis_servers_conf(cf, rc, url,
                                        NGX_HTTP_LLM_REDIS_CLUSTER_PORT,
                                        &rest)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (rest.len) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "no database in a \"redis-cluster://\" URL in "
                           "\"llm_store\": a cluster has only one");
        return NGX_ERROR;
    }

    rc->cluster = 1;

    return NGX_OK;
}


/* the worker's, at its start */

ngx_int_t
ngx_http_llm_redis_cluster_init(ngx_http_llm_redis_t *rd)
{
    rd->cluster = ngx_calloc(sizeof(ngx_http_llm_redis_cluster_t), rd->log);
    if (rd->cluster == NULL) {
        return NGX_ERROR;
    }

    rd->cluster->stale = 1;

    return NGX_OK;
}


/* the worker's, at its exit: the thread has returned */

void
ngx_http_llm_redis_cluster_free(ngx_http_llm_redis_t *rd)
{
    ngx_uint_t                     i;
    ngx_http_llm_redis_cluster_t  *cl;

    cl = rd->cluster;

    for (i = 0; i < cl->nnodes; i++) {
        if (i != cl->node && cl->nodes[i].ctx) {
            redisFree(cl->nodes[i].ctx);
        }
    }

    ngx_free(cl);
    rd->cluster = NULL;
}


/*
 * Store thread: a round trip on a cluster, one pipeline per node, and
 * again for what was redirected.
 */

void
ngx_http_llm_redis_cluster_run(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *ops)
{
    ngx_uint_t                     hop, n;
    ngx_http_llm_redis_cluster_t  *cl;

    cl = rd->cluster;

    if (cl->stale) {
        (void) ngx_http_llm_redis_cluster_map(rd);
    }

    (void) ngx_http_llm_redis_cluster_each(rd, ops, NGX_HTTP_LLM_REDIS_ASSIGN,
                                           0);

    for (hop = 0; hop < NGX_HTTP_LLM_REDIS_HOPS; hop++) {
        cl->again = 0;

        for (n = 0; n < cl->nnodes; n++) {
            if (ngx_http_llm_redis_cluster_each(rd, ops,
                                                NGX_HTTP_LLM_REDIS_COUNT, n)
                == 0)
            {
                continue;
            }

            ngx_http_llm_redis_cluster_use(rd, n);
            ngx_http_llm_redis_run_on(rd, ops);

            /*
             * A node that fails may have failed over: what it left
             * unanswered goes to the node the map names now, if another;
             * the rest stays unanswered.
             */

            if (rd->ctx == NULL
                && ngx_http_llm_redis_cluster_map(rd) == NGX_OK
                && ngx_http_llm_redis_cluster_each(rd, ops,
                                                   NGX_HTTP_LLM_REDIS_REASSIGN,
                                                   n)
                   != 0)
            {
                cl->again = 1;
            }

            (void) ngx_http_llm_redis_cluster_each(rd, ops,
                                                   NGX_HTTP_LLM_REDIS_DROP, n);
        }

        if (!cl->again) {
            break;
        }

        if (cl->stale) {
            (void) ngx_http_llm_redis_cluster_map(rd);
        }
    }
}


/*
 * Store thread: for every part of a round trip (a job's write, a read, a
 * control request), its node from the map (ASSIGN), how many go to a node
 * (COUNT), those of a failed node to the node the map names now, if
 * another (REASSIGN, how many), or those of a node marked done (DROP).
 */

static ngx_uint_t
ngx_http_llm_redis_cluster_each(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *ops, ngx_http_llm_redis_each_e what,
    ngx_int_t node)
{
    u_char                        *id;
    ngx_int_t                     *n;
    ngx_uint_t                     count, *ask;
    ngx_queue_t                   *q;
    ngx_http_llm_redis_op_t       *op;
    ngx_http_llm_redis_write_t    *w;

    count = 0;

    for (op = ops; op; op = op->next) {

        q = (op->type == NGX_HTTP_LLM_REDIS_BATCH)
            ? ngx_queue_head(&op->writes) : NULL;

        for ( ;; ) {
            if (op->type == NGX_HTTP_LLM_REDIS_BATCH) {
                if (q == ngx_queue_sentinel(&op->writes)) {
                    break;
                }

                w = ngx_queue_data(q, ngx_http_llm_redis_write_t, queue);
                q = ngx_queue_next(q);

                id = w->id;
                n = &w->node;
                ask = &w->ask;

            } else {
                id = op->id;
                n = &op->node;
                ask = &op->ask;
            }

            switch (what) {

            case NGX_HTTP_LLM_REDIS_ASSIGN:
                *n = ngx_http_llm_redis_cluster_slot_node(rd->cluster, id);
                *ask = 0;
                break;

            case NGX_HTTP_LLM_REDIS_COUNT:
                count += (*n == node);
                break;

            case NGX_HTTP_LLM_REDIS_REASSIGN:
                if (*n == node) {
                    *n = ngx_http_llm_redis_cluster_slot_node(rd->cluster,
                                                              id);
                    *ask = 0;

                    if (*n == node) {
                        *n = -1;

                    } else {
                        count += (*n != -1);
                    }
                }

                break;

            default: /* NGX_HTTP_LLM_REDIS_DROP */
                if (*n == node) {
                    *n = -1;
                    *ask = 0;
                }
            }

            if (op->type != NGX_HTTP_LLM_REDIS_BATCH) {
                break;
            }
        }
    }

    return count;
}


/* the node of a job's slot, -1 if unknown */

static ngx_int_t
ngx_http_llm_redis_cluster_slot_node(ngx_http_llm_redis_cluster_t *cl,
    u_char *id)
{
    ngx_uint_t  slot;

    slot = ngx_http_llm_redis_crc16(id, NGX_HTTP_LLM_JOB_ID_LEN)
           % NGX_HTTP_LLM_REDIS_SLOTS;

    return (ngx_int_t) cl->slots[slot] - 1;
}


/* store thread: does this part go to the node in use? */

ngx_int_t
ngx_http_llm_redis_cluster_mine(ngx_http_llm_redis_t *rd, ngx_int_t node)
{
    return rd->cluster == NULL || node == (ngx_int_t) rd->cluster->node;
}


/* store thread: the node in use, for the connection */

void
ngx_http_llm_redis_cluster_node(ngx_http_llm_redis_t *rd, char **host,
    int *port)
{
    ngx_http_llm_redis_node_t  *nd;

    nd = &rd->cluster->nodes[rd->cluster->node];

    *host = nd->host;
    *port = nd->port;
}


/* store thread: the connection state of node n becomes the thread's */

static void
ngx_http_llm_redis_cluster_use(ngx_http_llm_redis_t *rd, ngx_uint_t n)
{
    ngx_http_llm_redis_node_t     *nd;
    ngx_http_llm_redis_cluster_t  *cl;

    cl = rd->cluster;

    if (n == cl->node) {
        return;
    }

    nd = &cl->nodes[cl->node];

    nd->ctx = rd->ctx;
    nd->next_connect = rd->next_connect;
    nd->backoff = rd->backoff;
    nd->up = rd->up;
    nd->down = rd->down;

    nd = &cl->nodes[n];

    rd->ctx = nd->ctx;
    rd->next_connect = nd->next_connect;
    rd->backoff = nd->backoff;
    rd->up = nd->up;
    rd->down = nd->down;

    nd->ctx = NULL;
    cl->node = n;
}


/*
 * Store thread, from the reply reader: "MOVED SLOT HOST:PORT" or "ASK SLOT
 * HOST:PORT".  After a MOVED the whole map is asked for again (slots
 * rarely move alone).
 */

void
ngx_http_llm_redis_cluster_redirect(ngx_http_llm_redis_t *rd,
    redisReply *r)
{
    char                          *p, *last, *addr, *colon;
    ngx_int_t                      slot, port, n;
    ngx_uint_t                     asking;
    ngx_http_llm_redis_cluster_t  *cl;

    cl = rd->cluster;
    asking = (r->str[0] == 'A');

    p = r->str + (asking ? 4 : 6);
    last = r->str + r->len;

    addr = (char *) ngx_strlchr((u_char *) p, (u_char *) last, ' ');

    if (addr == NULL) {
        return;
    }

    slot = ngx_atoi((u_char *) p, addr - p);
    addr++;

    /* the last colon: the host may be an IPv6 address */

    for (colon = last; colon > addr && colon[-1] != ':'; colon--) {
        /* void */
    }

    if (colon == addr || slot < 0 || slot >= NGX_HTTP_LLM_REDIS_SLOTS) {
        return;
    }

    port = ngx_atoi((u_char *) colon, last - colon);

    if (port < 1 || port > 65535) {
        return;
    }

    n = ngx_http_llm_redis_cluster_find(cl, addr, colon - 1 - addr,
                                        (int) port);
    if (n == NGX_ERROR) {
        return;
    }

    cl->redirect = 1;
    cl->asking = asking;
    cl->target = n;

    if (!asking) {
        cl->stale = 1;
    }
}


/* store thread: is the part being read redirected (not an error then)? */

ngx_int_t
ngx_http_llm_redis_cluster_redirected(ngx_http_llm_redis_t *rd)
{
    return rd->cluster && rd->cluster->redirect;
}


/*
 * Store thread: a part has been read; if redirected, where it goes next.
 * One whose connection was lost stays for the next connection (a
 * redirection read before is void).
 */

void
ngx_http_llm_redis_cluster_answered(ngx_http_llm_redis_t *rd,
    ngx_int_t *node, ngx_uint_t *ask)
{
    ngx_http_llm_redis_cluster_t  *cl;

    cl = rd->cluster;

    if (cl == NULL) {
        return;
    }

    if (rd->lost) {
        cl->redirect = 0;

    } else if (cl->redirect) {
        *node = cl->target;
        *ask = cl->asking;
        cl->again = 1;
        cl->redirect = 0;

    } else {
        *node = -1;
        *ask = 0;
    }
}


/*
 * Store thread: the slot map, from the nodes of the URL, then from those
 * known.  Logged when it changes, and once when no node gives it.
 */

static ngx_int_t
ngx_http_llm_redis_cluster_map(ngx_http_llm_redis_t *rd)
{
    u_char                         err[NGX_HTTP_LLM_REDIS_HOST_LEN + 64];
    ngx_uint_t                     i, n, nodes;
    ngx_http_llm_redis_addr_t     *a;
    ngx_http_llm_redis_cluster_t  *cl;
    u_char                         slots[NGX_HTTP_LLM_REDIS_SLOTS];

    cl = rd->cluster;
    a = rd->conf->servers->elts;
    n = rd->conf->servers->nelts;
    nodes = cl->nnodes;

    ngx_cpystrn(err, (u_char *) "no node", sizeof(err));

    for (i = 0; i < n + nodes; i++) {
        if (ngx_http_llm_redis_cluster_slots(rd,
                                  i < n ? (char *) a[i].host.data
                                        : cl->nodes[i - n].host,
                                  i < n ? a[i].port : cl->nodes[i - n].port,
                                  slots, err, sizeof(err))
            != NGX_OK)
        {
            continue;
        }

        cl->stale = 0;

        if (cl->unmapped) {
            cl->unmapped = 0;
            ngx_log_error(NGX_LOG_NOTICE, rd->log, 0,
                          "llm: redis store: %V: slot map known again",
                          &rd->conf->name);
        }

        if (ngx_memcmp(slots, cl->slots, sizeof(slots)) != 0) {
            ngx_memcpy(cl->slots, slots, sizeof(slots));

            ngx_log_error(NGX_LOG_NOTICE, rd->log, 0,
                          "llm: redis store: %V: slot map of %ui nodes "
                          "(from %s:%d)", &rd->conf->name, cl->nnodes,
                          i < n ? (char *) a[i].host.data
                                : cl->nodes[i - n].host,
                          i < n ? a[i].port : cl->nodes[i - n].port);
        }

        return NGX_OK;
    }

    if (!cl->unmapped) {
        cl->unmapped = 1;
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "llm: redis store: %V: no node gives the slot map: "
                      "%s", &rd->conf->name, err);
    }

    return NGX_ERROR;
}


/*
 * Store thread: CLUSTER SLOTS of one node, into slots; err,
 * NUL-terminated, says why not.  Each element: START END [HOST PORT ...]
 * (the primary) [replicas...].
 */

static ngx_int_t
ngx_http_llm_redis_cluster_slots(ngx_http_llm_redis_t *rd, const char *host,
    int port, u_char *slots, u_char *err, size_t size)
{
    int                         argc;
    u_char                     *last;
    size_t                      hlen;
    ngx_int_t                   rc, n, p;
    ngx_uint_t                  i;
    long long                   s, e;
    const char                 *argv[3], *h;
    size_t                      argvlen[3];
    redisReply                 *r, *el, *pr;
    redisContext               *c;
    ngx_http_llm_redis_conf_t  *conf;

    conf = rd->conf;
    last = err + size - 1;
    r = NULL;
    rc = NGX_ERROR;

    c = ngx_http_llm_redis_open(rd, host, port);

    if (c == NULL || c->err) {
        *ngx_slprintf(err, last, "%s:%d: %s", host, port,
                      c ? c->errstr : "out of memory") = '\0';
        goto done;
    }

    if (conf->password.len) {
        argc = 0;
        argv[argc] = "AUTH";
        argvlen[argc++] = 4;

        if (conf->user.len) {
            argv[argc] = (char *) conf->user.data;
            argvlen[argc++] = conf->user.len;
        }

        argv[argc] = (char *) conf->password.data;
        argvlen[argc++] = conf->password.len;

        r = redisCommandArgv(c, argc, argv, argvlen);

        /* the server's message names the failure, not the password */

        if (r == NULL || r->type == REDIS_REPLY_ERROR) {
            *ngx_slprintf(err, last, "%s:%d: AUTH failed: %s", host, port,
                          r ? r->str : c->errstr) = '\0';
            goto done;
        }

        freeReplyObject(r);
    }

    r = redisCommand(c, "CLUSTER SLOTS");

    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
        *ngx_slprintf(err, last, "%s:%d: %s", host, port,
                      r == NULL ? c->errstr
                      : r->type == REDIS_REPLY_ERROR ? r->str
                      : "no slots") = '\0';
        goto done;
    }

    ngx_memzero(slots, NGX_HTTP_LLM_REDIS_SLOTS);

    for (i = 0; i < r->elements; i++) {
        el = r->element[i];

        if (el->type != REDIS_REPLY_ARRAY || el->elements < 3
            || el->element[0]->type != REDIS_REPLY_INTEGER
            || el->element[1]->type != REDIS_REPLY_INTEGER
            || el->element[2]->type != REDIS_REPLY_ARRAY
            || el->element[2]->elements < 2
            || el->element[2]->element[0]->type != REDIS_REPLY_STRING
            || el->element[2]->element[1]->type != REDIS_REPLY_INTEGER)
        {
            *ngx_slprintf(err, last, "%s:%d: invalid CLUSTER SLOTS reply",
                          host, port) = '\0';
            goto done;
        }

        s = el->element[0]->integer;
        e = el->element[1]->integer;
        pr = el->element[2];
        p = (ngx_int_t) pr->element[1]->integer;

        /* an empty or unknown endpoint: the node that answered */

        h = pr->element[0]->str;
        hlen = pr->element[0]->len;

        if (hlen == 0 || (hlen == 1 && h[0] == '?')) {
            h = host;
            hlen = ngx_strlen(host);
        }

        if (s < 0 || e >= NGX_HTTP_LLM_REDIS_SLOTS || s > e
            || p < 1 || p > 65535)
        {
            *ngx_slprintf(err, last, "%s:%d: invalid CLUSTER SLOTS reply",
                          host, port) = '\0';
            goto done;
        }

        n = ngx_http_llm_redis_cluster_find(rd->cluster, h, hlen, (int) p);

        if (n == NGX_ERROR) {
            *ngx_slprintf(err, last, "%s:%d: more than %d nodes",
                          host, port, NGX_HTTP_LLM_REDIS_NODES) = '\0';
            goto done;
        }

        ngx_memset(slots + s, (int) (n + 1), (size_t) (e - s + 1));
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


/* a node by address, added if new; NGX_ERROR: no room or too long */

static ngx_int_t
ngx_http_llm_redis_cluster_find(ngx_http_llm_redis_cluster_t *cl,
    const char *host, size_t len, int port)
{
    ngx_uint_t                  i;
    ngx_http_llm_redis_node_t  *nd;

    for (i = 0; i < cl->nnodes; i++) {
        nd = &cl->nodes[i];

        if (nd->port == port && ngx_strlen(nd->host) == len
            && ngx_strncmp(nd->host, host, len) == 0)
        {
            return i;
        }
    }

    if (cl->nnodes == NGX_HTTP_LLM_REDIS_NODES
        || len >= NGX_HTTP_LLM_REDIS_HOST_LEN)
    {
        return NGX_ERROR;
    }

    nd = &cl->nodes[cl->nnodes];

    ngx_memcpy(nd->host, host, len);
    nd->host[len] = '\0';
    nd->port = port;

    return cl->nnodes++;
}


/* CRC16-CCITT (XMODEM), the hash of Redis Cluster's key slots */

static uint16_t
ngx_http_llm_redis_crc16(u_char *p, size_t len)
{
    uint16_t    crc;
    ngx_uint_t  i;

    crc = 0;

    while (len--) {
        crc ^= (uint16_t) (*p++ << 8);

        for (i = 0; i < 8; i++) {
            crc = (crc & 0x8000) ? (uint16_t) ((crc << 1) ^ 0x1021)
                                 : (uint16_t) (crc << 1);
        }
    }

    return crc;
}
