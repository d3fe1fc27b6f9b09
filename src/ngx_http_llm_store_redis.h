
/*
 * Copyright (C) ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_STORE_REDIS_H_INCLUDED_
#define _NGX_HTTP_LLM_STORE_REDIS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <hiredis/hiredis.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_store.h"


/*
 * Private to the Redis store, which lives in five files:
 *
 *     ngx_http_llm_store_redis.c     the store as the event loop sees it
 *     ngx_http_llm_redis_thread.c    the store thread and its connection
 *     ngx_http_llm_redis_cmd.c       the commands it sends, their replies
 *     ngx_http_llm_redis_sentinel.c  the primary, from Redis Sentinel
 *     ngx_http_llm_redis_cluster.c   a Redis Cluster's nodes and slots
 */


#define NGX_HTTP_LLM_REDIS_BACKOFF_MAX 5000

/*
 * The longest command is the job's HSET: 34 arguments, about 360 bytes; a
 * command built longer is not sent (ngx_http_llm_redis_send()).
 */
#define NGX_HTTP_LLM_REDIS_ARGS        40
#define NGX_HTTP_LLM_REDIS_BUF         1024

/* a host name as a sentinel gives it: an IP address, or a name (hostnames) */
#define NGX_HTTP_LLM_REDIS_HOST_LEN    256

/* a Redis Cluster: its slots, and the nodes a worker keeps track of */
#define NGX_HTTP_LLM_REDIS_SLOTS       16384
#define NGX_HTTP_LLM_REDIS_NODES       64


typedef struct ngx_http_llm_redis_s        ngx_http_llm_redis_t;
typedef struct ngx_http_llm_redis_write_s  ngx_http_llm_redis_write_t;
typedef struct ngx_http_llm_redis_op_s     ngx_http_llm_redis_op_t;
typedef struct ngx_http_llm_redis_job_s    ngx_http_llm_redis_job_t;
typedef struct ngx_http_llm_redis_cluster_s  ngx_http_llm_redis_cluster_t;


/* a sentinel's or a cluster node's address */
typedef struct {
    ngx_str_t                      host;        /* NUL-terminated */
    int                            port;
} ngx_http_llm_redis_addr_t;


typedef struct {
    ngx_str_t                      host;        /* NUL-terminated */
    int                            port;
    ngx_str_t                      path;        /* unix socket, or empty */
    ngx_str_t                      user;
    ngx_str_t                      password;
    ngx_int_t                      db;          /* -1: none */
    ngx_array_t                   *servers;     /* sentinels, cluster */
    ngx_str_t                      master;      /* behind sentinels */
    ngx_str_t                      sentinel_user;
    ngx_str_t                      sentinel_password;
    unsigned                       cluster:1;   /* redis-cluster:// */
    ngx_uint_t                     replicas;    /* WAIT for as many */
    ngx_msec_t                     replicas_timeout;
    ngx_str_t                      prefix;
    ngx_msec_t                     flush;
    ngx_msec_t                     ttl;
    size_t                         unsaved;     /* bound of the orphans */
    ngx_str_t                      name;        /* for the log */
    ngx_str_t                      pool_name;
    ngx_thread_pool_t             *pool;
    ngx_http_llm_redis_t          *rd;          /* the worker's */
} ngx_http_llm_redis_conf_t;


/* one job's write: a copy of the job, from where to write, the answer */
struct ngx_http_llm_redis_write_s {
    ngx_queue_t                    queue;       /* in a batch or orphans */
    ngx_http_llm_redis_job_t      *rj;          /* NULL: job released */
    u_char                         id[NGX_HTTP_LLM_JOB_ID_LEN];

    /*
     * rec.events, rec.text and rec.meta start at rec.from_event,
     * rec.from_text and rec.from_meta; rec.pipeline_state, when set, is
     * written whole
     */
    ngx_http_llm_record_t          rec;
    ngx_uint_t                     from_event;
    size_t                         from_text;
    size_t                         from_meta;

    unsigned                       known:1;
    unsigned                       rewrite:1;   /* delete, write anew */

    /* the answer */
    unsigned                       ok:1;
    unsigned                       lost:1;      /* Redis lost the job */
    unsigned                       cancel:1;
    unsigned                       pause:1;
    unsigned                       refused:1;
    ngx_uint_t                     pause_seq;   /* for good: see reply */
    int64_t                        watched;
    u_char                         reply[128];  /* Redis's refusal */
    size_t                         reply_len;

    /* the store thread's: where the answers are in the transaction */
    ngx_int_t                      node;        /* a cluster's: or -1 */
    ngx_uint_t                     ask;         /* ASKING first */
    unsigned                       waited:1;    /* WAIT follows */
    ngx_uint_t                     ncmds;
    ngx_uint_t                     xadd;
    ngx_uint_t                     nxadd;
    ngx_uint_t                     hset;
    ngx_uint_t                     hmget;
};


typedef enum {
    NGX_HTTP_LLM_REDIS_BATCH = 0,
    NGX_HTTP_LLM_REDIS_FETCH,
    NGX_HTTP_LLM_REDIS_CONTROL,
    NGX_HTTP_LLM_REDIS_CLAIM
} ngx_http_llm_redis_op_e;


/* work for the store thread: owned by whoever holds it on its lists */
struct ngx_http_llm_redis_op_s {
    ngx_http_llm_redis_op_e        type;
    ngx_http_llm_redis_op_t       *next;

    /* a batch */
    ngx_queue_t                    writes;

    /* NGX_OK: answered (a batch: the round trip was made) */
    ngx_int_t                      rc;

    /* a fetch's, claim's or control request's node in a cluster, or -1 */
    ngx_int_t                      node;
    ngx_uint_t                     ask;

    /* a fetch or a control request */
    u_char                         id[NGX_HTTP_LLM_JOB_ID_LEN];
    ngx_http_llm_control_e         control;
    ngx_uint_t                     from_event;
    size_t                         from_text;
    size_t                         from_meta;
    int64_t                        now;
    int64_t                        updated;     /* a claim's */
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
    size_t                         orphans_size;    /* with those in batch */
    ngx_http_llm_redis_op_t        batch;
    ngx_msec_t                     flush_started;  /* for the metrics */
    ngx_msec_t                     retry;
    unsigned                       flushing:1;
    unsigned                       given_up:1;
    unsigned                       posted:1;
    unsigned                       repost:1;

    /* the store thread only */
    ngx_http_llm_redis_cluster_t  *cluster;     /* redis-cluster:// */
    redisContext                  *ctx;         /* a cluster's: a node's */
    ngx_msec_t                     next_connect;
    ngx_msec_t                     backoff;
    ngx_uint_t                     replies;     /* in this round trip */
    ngx_uint_t                     sentinel;    /* the one asked first */
    char                           primary[NGX_HTTP_LLM_REDIS_HOST_LEN];
    int                            primary_port;
    unsigned                       up:1;
    unsigned                       down:1;      /* failure logged */
    unsigned                       quiet:1;
    unsigned                       erred:1;
    unsigned                       errors:1;    /* in this round trip */
    unsigned                       nomem:1;
    unsigned                       lost:1;      /* a reply did not come */
    unsigned                       demoted:1;   /* READONLY, MASTERDOWN */
    unsigned                       unreplicated:1;  /* logged */
};


/* a command being built: arguments with lengths, numbers in buf */
typedef struct {
    int                            argc;
    const char                    *argv[NGX_HTTP_LLM_REDIS_ARGS];
    size_t                         argvlen[NGX_HTTP_LLM_REDIS_ARGS];
    u_char                        *last;
    u_char                         buf[NGX_HTTP_LLM_REDIS_BUF];
} ngx_http_llm_redis_cmd_t;


/*
 * One way down: the store (loop) -> its thread -> the commands.
 */

/* ngx_http_llm_redis_thread.c */
void ngx_http_llm_redis_thread(void *data, ngx_log_t *log);
void ngx_http_llm_redis_answer(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *ops);
void ngx_http_llm_redis_run_on(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *ops);
redisContext *ngx_http_llm_redis_open(ngx_http_llm_redis_t *rd,
    const char *host, int port);
void ngx_http_llm_redis_broken(ngx_http_llm_redis_t *rd, const char *what,
    const char *err);

/* ngx_http_llm_store_redis.c */
ngx_int_t ngx_http_llm_redis_servers_conf(ngx_conf_t *cf,
    ngx_http_llm_redis_conf_t *rc, ngx_str_t *url, ngx_int_t port,
    ngx_str_t *rest);

/* ngx_http_llm_redis_sentinel.c */
ngx_int_t ngx_http_llm_redis_sentinel_conf(ngx_conf_t *cf,
    ngx_http_llm_redis_conf_t *rc, ngx_str_t *url);
ngx_int_t ngx_http_llm_redis_sentinel_primary(ngx_http_llm_redis_t *rd);
ngx_int_t ngx_http_llm_redis_sentinel_role(ngx_http_llm_redis_t *rd);

/* ngx_http_llm_redis_cluster.c */
ngx_int_t ngx_http_llm_redis_cluster_conf(ngx_conf_t *cf,
    ngx_http_llm_redis_conf_t *rc, ngx_str_t *url);
ngx_int_t ngx_http_llm_redis_cluster_init(ngx_http_llm_redis_t *rd);
void ngx_http_llm_redis_cluster_free(ngx_http_llm_redis_t *rd);
void ngx_http_llm_redis_cluster_run(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *ops);
ngx_int_t ngx_http_llm_redis_cluster_mine(ngx_http_llm_redis_t *rd,
    ngx_int_t node);
void ngx_http_llm_redis_cluster_node(ngx_http_llm_redis_t *rd,
    char **host, int *port);
void ngx_http_llm_redis_cluster_redirect(ngx_http_llm_redis_t *rd,
    redisReply *r);
ngx_int_t ngx_http_llm_redis_cluster_redirected(ngx_http_llm_redis_t *rd);
void ngx_http_llm_redis_cluster_answered(ngx_http_llm_redis_t *rd,
    ngx_int_t *node, ngx_uint_t *ask);

/* ngx_http_llm_redis_cmd.c */
void ngx_http_llm_redis_send_write(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w);
void ngx_http_llm_redis_read_write(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w);
void ngx_http_llm_redis_send_fetch(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op);
void ngx_http_llm_redis_read_fetch(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op);
void ngx_http_llm_redis_send_claim(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op);
void ngx_http_llm_redis_read_claim(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op);
void ngx_http_llm_redis_send_control(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op);
void ngx_http_llm_redis_read_control(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op);
void ngx_http_llm_redis_send_wait(ngx_http_llm_redis_t *rd);
void ngx_http_llm_redis_send_asking(ngx_http_llm_redis_t *rd);
void ngx_http_llm_redis_read_asking(ngx_http_llm_redis_t *rd);
ngx_int_t ngx_http_llm_redis_read_wait(ngx_http_llm_redis_t *rd);
void ngx_http_llm_redis_cmd(ngx_http_llm_redis_cmd_t *cmd, const char *name);
void ngx_http_llm_redis_arg(ngx_http_llm_redis_cmd_t *cmd, const void *p,
    size_t len);
void ngx_http_llm_redis_argf(ngx_http_llm_redis_cmd_t *cmd,
    const char *fmt, ...);
void ngx_http_llm_redis_send(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_cmd_t *cmd);


#endif /* _NGX_HTTP_LLM_STORE_REDIS_H_INCLUDED_ */
