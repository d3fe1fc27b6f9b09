
/*
 * Copyright (C) ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_STORE_H_INCLUDED_
#define _NGX_HTTP_LLM_STORE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"


/*
 * Stores keep jobs beyond the worker that runs them: the shared memory zone
 * for every worker of one instance, Redis for every instance sharing it.
 * The worker that runs a job is its only writer; any worker reads.
 *
 * Everything here is called on the event loop and never waits: a store
 * that needs the network does it on a thread of its own and answers
 * through the worker's channel (ngx_http_llm_channel_post()).
 */


#define NGX_HTTP_LLM_OWNER_LEN      20      /* SHA-1 of the owner value */


/* a job as a store has it: from one event and text offset on */
typedef struct {
    ngx_http_llm_state_e           state;
    int64_t                        created;     /* ms since the epoch */
    int64_t                        updated;
    int64_t                        finished;    /* 0 while running */
    int64_t                        watched;     /* last read by a follower */

    u_char                         owner[NGX_HTTP_LLM_OWNER_LEN];
    unsigned                       has_owner:1;
    unsigned                       cancel:1;    /* a cancel was requested */
    unsigned                       pause:1;     /* a pause is requested */
    unsigned                       paused:1;    /* and in effect */
    unsigned                       background:1;
    ngx_uint_t                     pause_seq;   /* requests so far */

    ngx_http_llm_outcome_t         outcome;

    ngx_uint_t                     nevents;     /* in the whole job */
    ngx_uint_t                     from_event;
    ngx_http_llm_event_t          *events;      /* malloc()ed, from_event on */

    size_t                         text_len;    /* of the whole job */
    size_t                         from_text;
    u_char                        *text;        /* malloc()ed, from_text on */

    size_t                         meta_len;    /* of the whole job */
    size_t                         from_meta;
    u_char                        *meta;        /* malloc()ed, from_meta on */

    /* the pipeline's state, whole: malloc()ed, or NULL (none) */
    u_char                        *pipeline_state;
    size_t                         pipeline_state_len;
    ngx_uint_t                     state_version;
} ngx_http_llm_record_t;


/*
 * The answer to a fetch.  rc: NGX_OK with a record, NGX_DECLINED when the
 * job is unknown or expired, NGX_ERROR when the store cannot answer now,
 * NGX_ABORT when what the store holds for the job is corrupt (logged by
 * the store).  The record is valid during the call only.
 */
typedef void (*ngx_http_llm_fetch_pt)(void *data, ngx_int_t rc,
    ngx_http_llm_record_t *rec);


typedef struct ngx_http_llm_snapshot_s  ngx_http_llm_snapshot_t;


typedef enum {
    NGX_HTTP_LLM_CTL_CANCEL = 0,
    NGX_HTTP_LLM_CTL_PAUSE,
    NGX_HTTP_LLM_CTL_RESUME
} ngx_http_llm_control_e;


/*
 * What a store made of a save, for the job to act on.  It starts as "no
 * change" (ngx_http_llm_saved_init()); the store sets what it knows.
 */
typedef struct {
    ngx_uint_t                     saved_events; /* the store has all before */
    size_t                         saved_text;
    size_t                         saved_meta;
    ngx_uint_t                     saved_state; /* the state_version it has */
    void                          *store_data;  /* the store's own, kept */
    int64_t                        watched;     /* last read by a follower */
    unsigned                       cancel:1;    /* a cancel was requested */
    unsigned                       pause:1;     /* a pause is requested */
    unsigned                       dropped:1;   /* not kept: stop saving */
    ngx_uint_t                     pause_seq;   /* the last request's */
} ngx_http_llm_saved_t;


typedef void (*ngx_http_llm_snapshot_pt)(void *data,
    ngx_http_llm_snapshot_t *snap);
typedef void (*ngx_http_llm_saved_pt)(void *data, ngx_http_llm_saved_t *res);


/*
 * A job as job.c shows it to its store, valid during the call only: its
 * whole log and text, where the store's last confirmed save ended (what
 * follows is new), its state and outcome.  A store that writes later asks
 * for a fresh one with "snapshot" and answers with "saved" (both with
 * "data"); it never holds the job itself.
 */
struct ngx_http_llm_snapshot_s {
    u_char                        *id;
    ngx_http_llm_state_e           state;
    int64_t                        created;     /* ms since the epoch */
    int64_t                        updated;
    int64_t                        finished;
    int64_t                        watched;
    u_char                        *owner;       /* SHA-1 */
    unsigned                       has_owner:1;
    unsigned                       background:1;
    unsigned                       paused:1;    /* the run waits */
    unsigned                       pause:1;     /* the store's last request */
    ngx_uint_t                     pause_seq;   /* and its number */
    ngx_http_llm_outcome_t        *outcome;

    ngx_http_llm_event_t          *events;
    ngx_uint_t                     nevents;
    u_char                        *text;
    size_t                         text_len;
    u_char                        *meta;
    size_t                         meta_len;

    /* replaced as a whole: new when state_version != saved_state */
    u_char                        *pipeline_state;
    size_t                         pipeline_state_len;
    ngx_uint_t                     state_version;

    ngx_uint_t                     saved_events;
    size_t                         saved_text;
    size_t                         saved_meta;
    ngx_uint_t                     saved_state;
    void                          *store_data;  /* from the last result */

    ngx_http_llm_snapshot_pt       snapshot;
    ngx_http_llm_saved_pt          saved;
    void                          *data;
};


typedef struct {
    const char                    *name;

    /* worker start and exit */
    ngx_int_t                    (*init_process)(ngx_http_llm_store_t *st,
                                                 ngx_cycle_t *cycle);
    void                         (*exit_process)(ngx_http_llm_store_t *st,
                                                 ngx_cycle_t *cycle);

    /*
     * Persist what the job gained since the last save: the events from
     * snap->saved_events, the text from snap->saved_text, the meta from
     * snap->saved_meta, the pipeline state if its version is not
     * snap->saved_state, and its current state and outcome (called after
     * every change; the first call creates the job).  What the store
     * has now goes in "res": the marks move when the data is safe.  A
     * store may batch: its flush interval is the durability window, its
     * answer comes later through snap->saved; while it cannot write it
     * keeps the marks and catches up later.
     */
    void                         (*save)(ngx_http_llm_store_t *st,
                                         ngx_http_llm_snapshot_t *snap,
                                         ngx_http_llm_saved_t *res);

    /*
     * The job is about to be freed: take what is not saved yet.  Its
     * snapshot and saved callbacks are not to be called any more.
     */
    void                         (*release)(ngx_http_llm_store_t *st,
                                            ngx_http_llm_snapshot_t *snap);

    /*
     * Read a job: its state and outcome, its events from "from_event",
     * its text from "from_text", its meta from "from_meta" and its
     * pipeline state (whole, with its version).  Also marks the job as
     * watched now.  The handler may run before fetch() returns.
     */
    ngx_int_t                    (*fetch)(ngx_http_llm_store_t *st,
                                          u_char *id, ngx_uint_t from_event,
                                          size_t from_text, size_t from_meta,
                                          ngx_http_llm_fetch_pt handler,
                                          void *data);

    /*
     * Ask the worker that runs the job to cancel, pause or resume it: a
     * request it finds with its next save.  A pause request stays until a
     * resume request replaces it.
     */
    ngx_int_t                    (*control)(ngx_http_llm_store_t *st,
                                            u_char *id,
                                            ngx_http_llm_control_e what);

    /*
     * Take a running job over whose worker is gone: only if the store
     * still has it running with this "updated" (nobody wrote it since,
     * nobody else took it), which the claim sets to now.  The handler
     * gets NGX_OK (taken), NGX_DECLINED or NGX_ERROR, and no record; it
     * may run before claim() returns.
     */
    ngx_int_t                    (*claim)(ngx_http_llm_store_t *st,
                                          u_char *id, int64_t updated,
                                          ngx_http_llm_fetch_pt handler,
                                          void *data);
} ngx_http_llm_store_ops_t;


struct ngx_http_llm_store_s {
    const ngx_http_llm_store_ops_t  *ops;
    ngx_msec_t                       ttl;
    ngx_msec_t                       poll;      /* how often followers read */
    ngx_msec_t                       window;    /* a new job may be unread;
                                                   0: saves are made at
                                                   once */
    void                            *data;      /* the backend's own */
    ngx_http_llm_store_t            *next;      /* all stores */
};


extern const ngx_http_llm_store_ops_t  ngx_http_llm_store_memory;
extern const ngx_http_llm_store_ops_t  ngx_http_llm_store_redis;


/* ngx_http_llm_store.c */
char *ngx_http_llm_store_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_http_llm_store_t *ngx_http_llm_store_default(ngx_conf_t *cf);
ngx_int_t ngx_http_llm_stores_init_process(ngx_cycle_t *cycle);
void ngx_http_llm_stores_exit_process(ngx_cycle_t *cycle);
void ngx_http_llm_record_free(ngx_http_llm_record_t *rec);
void ngx_http_llm_saved_init(ngx_http_llm_saved_t *res,
    ngx_http_llm_snapshot_t *snap);
int64_t ngx_http_llm_now_ms(void);

/* ngx_http_llm_store_memory.c */
char *ngx_http_llm_store_memory_conf(ngx_conf_t *cf,
    ngx_http_llm_store_t *st, ngx_str_t *args, ngx_uint_t nargs);

/* ngx_http_llm_store_redis.c */
char *ngx_http_llm_store_redis_conf(ngx_conf_t *cf,
    ngx_http_llm_store_t *st, ngx_str_t *args, ngx_uint_t nargs);


#endif /* _NGX_HTTP_LLM_STORE_H_INCLUDED_ */
