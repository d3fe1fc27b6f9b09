
/*
 * Copyright (C) ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_MODULE_H_INCLUDED_
#define _NGX_HTTP_LLM_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <ngx_thread_pool.h>

#include <jansson.h>

#include "ngx_http_llm_provider.h"


#define NGX_HTTP_LLM_JOB_ID_LEN      22      /* 128 bits, base64url */

/* token counts above this are not believed: their sum must not overflow */
#define NGX_HTTP_LLM_TOKENS_MAX      NGX_MAX_INT32_VALUE


typedef struct ngx_http_llm_engine_s  ngx_http_llm_engine_t;
typedef struct ngx_http_llm_xfer_s    ngx_http_llm_xfer_t;
typedef struct ngx_http_llm_job_s     ngx_http_llm_job_t;
typedef struct ngx_http_llm_ctx_s     ngx_http_llm_ctx_t;
typedef struct ngx_http_llm_chan_item_s  ngx_http_llm_chan_item_t;
typedef struct ngx_http_llm_store_s   ngx_http_llm_store_t;
typedef struct ngx_http_llm_format_s  ngx_http_llm_format_t;
typedef struct ngx_http_llm_pipeline_conf_s  ngx_http_llm_pipeline_conf_t;
typedef struct ngx_http_llm_run_s     ngx_http_llm_run_t;


/* something a thread hands to the event loop */
struct ngx_http_llm_chan_item_s {
    void                         (*handler)(ngx_http_llm_chan_item_t *item);
    ngx_http_llm_chan_item_t      *next;
    unsigned                       queued:1;
};


/* per worker: the way back from threads to the event loop */
typedef struct {
    ngx_thread_mutex_t             mutex;   /* also guards shared items */
    ngx_fd_t                       fd[2];
    ngx_http_llm_chan_item_t      *head;
    ngx_http_llm_chan_item_t      *tail;
    unsigned                       notified:1;
    ngx_log_t                     *log;
} ngx_http_llm_channel_t;


typedef struct {
    ngx_http_complex_value_t      *pass;
    const ngx_http_llm_provider_t *provider;
    ngx_http_complex_value_t      *model;
    ngx_http_complex_value_t      *system;
    ngx_http_complex_value_t      *prompt;
    ngx_http_complex_value_t      *api_key;
    ngx_uint_t                     max_tokens;
    size_t                         max_text;    /* llm_max_text */
    ngx_uint_t                     max_events;  /* llm_max_events */

    ngx_str_t                      thread_pool_name;
    ngx_thread_pool_t             *thread_pool;

    ngx_http_llm_store_t          *store;
    ngx_http_llm_format_t         *format;
    ngx_http_llm_pipeline_conf_t  *pipeline;
    ngx_msec_t                     grace;       /* llm_on_disconnect */
    ngx_msec_t                     pause_timeout;
    ngx_msec_t                     max_duration;    /* 0: none */
    ngx_array_t                   *limits;      /* llm_limit_jobs */
    ngx_array_t                   *inputs;      /* llm_input */
    ngx_uint_t                     answer;      /* llm_answer */
    ngx_http_complex_value_t      *job_owner;
    ngx_http_complex_value_t      *job_url;
    ngx_http_complex_value_t      *job;         /* llm_job: the id */

    ngx_str_t                      metrics_label;   /* llm_metrics_label */
    void                          *metrics;     /* the label's slot */
    ngx_uint_t                     serve;       /* llm_metrics, llm_status */

    ngx_msec_t                     heartbeat;
    ngx_msec_t                     retry;
    ngx_msec_t                     connect_timeout;
    ngx_msec_t                     first_token_timeout;
    ngx_msec_t                     idle_timeout;
    ngx_msec_t                     timeout;
    ngx_flag_t                     ssl_verify;
} ngx_http_llm_loc_conf_t;


typedef struct {
    ngx_http_llm_store_t          *stores;      /* all, for the hooks */
    ngx_http_llm_store_t          *default_store;
    ngx_array_t                   *formats;     /* of format pointers */
    ngx_array_t                   *pipelines;   /* of pipeline pointers */
    void                          *pipeline_parse;  /* the one being read */
    void                          *metrics;     /* its zone and labels */
} ngx_http_llm_main_conf_t;


/* one field of the request body: $llm_input_NAME */
typedef struct {
    ngx_str_t                      name;
    ngx_str_t                      value;
} ngx_http_llm_input_t;


/* llm_answer: how a new job answers its request (its values in order) */
#define NGX_HTTP_LLM_ANSWER_AUTO     0      /* as Accept (or "stream") says */
#define NGX_HTTP_LLM_ANSWER_STREAM   1
#define NGX_HTTP_LLM_ANSWER_JSON     2


/* llm_input NAME VALUE */
typedef struct {
    ngx_str_t                      name;
    ngx_http_complex_value_t       value;
} ngx_http_llm_conf_input_t;


/* the request's side of a stream; lives in the request pool */
struct ngx_http_llm_ctx_s {
    ngx_http_request_t            *request;
    ngx_http_llm_job_t            *job;
    ngx_queue_t                    queue;       /* in job->subscribers */
    u_char                         id[NGX_HTTP_LLM_JOB_ID_LEN + 1];

    ngx_array_t                   *inputs;      /* ngx_http_llm_input_t */

    /* an OpenAI Chat Completions request (llm_format openai) */
    json_t                        *messages;
    json_t                        *temperature;
    ngx_uint_t                     max_tokens;

    void                         (*wake)(ngx_http_llm_ctx_t *ctx);
    ngx_uint_t                     sent;        /* events written */
    u_char                        *mem;         /* rendered frames */
    size_t                         mem_size;
    ngx_chain_t                   *free;
    ngx_chain_t                   *busy;
    ngx_event_t                    heartbeat;
    ngx_event_t                    coalesce;    /* deltas held back */
    ngx_str_t                      model;       /* for formats, once */
    ngx_msec_t                     written;     /* last write, for that */
    size_t                         final_sent;  /* of the final event's text */

    unsigned                       streaming:1;
    unsigned                       waiting:1;   /* a store lookup */
    unsigned                       cleanup:1;
    unsigned                       retry:1;
    unsigned                       finished:1;
    unsigned                       wrote:1;     /* since last heartbeat */
    unsigned                       include_usage:1;  /* openai format */
    unsigned                       openai:1;    /* such a request */
    unsigned                       stream:1;    /* and it asks to stream */
    unsigned                       resumed:1;   /* follows a job */
};


typedef enum {
    NGX_HTTP_LLM_EV_START = 0,
    NGX_HTTP_LLM_EV_DELTA,
    NGX_HTTP_LLM_EV_COMPLETE,
    NGX_HTTP_LLM_EV_ERROR,

    /* a pipeline's events: their JSON payload is a range of job->meta */
    NGX_HTTP_LLM_EV_STEP_START,
    NGX_HTTP_LLM_EV_STEP,
    NGX_HTTP_LLM_EV_CHECK,
    NGX_HTTP_LLM_EV_PROGRESS,
    NGX_HTTP_LLM_EV_PAUSED,
    NGX_HTTP_LLM_EV_RESUMED
} ngx_http_llm_event_type_e;

#define NGX_HTTP_LLM_EV_LAST         NGX_HTTP_LLM_EV_RESUMED


#define ngx_http_llm_event_final(type)                                       \
    ((type) == NGX_HTTP_LLM_EV_COMPLETE || (type) == NGX_HTTP_LLM_EV_ERROR)

#define ngx_http_llm_event_payload(type)                                     \
    ((type) >= NGX_HTTP_LLM_EV_STEP_START)

/* a pipeline's state as a job keeps it and a store reads it back */
#define NGX_HTTP_LLM_STATE_MAX       (64 * 1024 * 1024)


/*
 * Event log entry.  A delta is a range of the job's text, so the log costs
 * a few words per event and consecutive deltas can be sent as one; a
 * payload event is a range of the job's meta, its JSON payload.
 */
typedef struct {
    ngx_http_llm_event_type_e      type;
    uint32_t                       len;
    size_t                         off;
} ngx_http_llm_event_t;


typedef enum {
    NGX_HTTP_LLM_RUNNING = 0,
    NGX_HTTP_LLM_COMPLETED,
    NGX_HTTP_LLM_FAILED,
    NGX_HTTP_LLM_CANCELLED
} ngx_http_llm_state_e;


/*
 * How a generation ended, as the final event tells it: the same fields in
 * the engine's output, the job and a store's record.
 */
typedef struct {
    u_char                         finish[32];
    size_t                         finish_len;
    ngx_int_t                      input_tokens;     /* -1: unknown */
    ngx_int_t                      output_tokens;
    u_char                         code[32];
    size_t                         code_len;
    u_char                        *message;     /* malloc()ed, or NULL */
    size_t                         message_len;
} ngx_http_llm_outcome_t;


/* what the metrics and the access log know of a job this worker runs */
typedef struct {
    ngx_uint_t                     label;       /* its location's slot */
    int64_t                        first;       /* first text, ms; 0: none */
    ngx_uint_t                     status;      /* last upstream status */
    ngx_uint_t                     attempts;    /* a pipeline's tries */
    ngx_uint_t                     steps;       /* last step started */
    unsigned                       counted:1;   /* running in the metrics */
    unsigned                       abandoned:1; /* by llm_on_disconnect */
} ngx_http_llm_jstats_t;


/* a slot a job holds in an llm_limit_jobs zone */
typedef struct {
    ngx_shm_zone_t                *zone;
    ngx_rbtree_node_t             *node;
} ngx_http_llm_limit_hold_t;


/* a generation, owned by the event loop; heap-allocated */
struct ngx_http_llm_job_s {
    u_char                         id[NGX_HTTP_LLM_JOB_ID_LEN + 1];
    ngx_http_llm_state_e           state;

    ngx_http_llm_event_t          *events;
    ngx_uint_t                     nevents;
    ngx_uint_t                     events_cap;

    /*
     * A mirror made for a client resuming from the middle reads the log
     * from there: the events before are stand-ins (the gap's deltas),
     * not to be replayed to anyone who wants them.
     */
    ngx_uint_t                     from_event;

    u_char                        *text;
    size_t                         text_len;
    size_t                         text_cap;

    /* the payloads of a pipeline's events, one after the other */
    u_char                        *meta;
    size_t                         meta_len;
    size_t                         meta_cap;

    /* the pipeline's state (JSON), replaced by each new one */
    u_char                        *pipeline_state;
    size_t                         pipeline_state_len;
    ngx_uint_t                     state_version;   /* 0: none yet */

    ngx_http_llm_outcome_t         outcome;     /* for the final event */
    ngx_http_llm_jstats_t          stats;

    int64_t                        created;     /* ms since the epoch */
    int64_t                        updated;
    int64_t                        finished;
    int64_t                        watched;     /* by another worker */
    ngx_msec_t                     quiet_since; /* a mirror's: unchanged */
    u_char                         owner[20];   /* SHA-1 of the owner */

    /* where the job is kept, and how much of it was handed over */
    ngx_http_llm_store_t          *store;
    ngx_uint_t                     saved_events;
    size_t                         saved_text;
    size_t                         saved_meta;
    ngx_uint_t                     saved_state; /* its state_version */
    void                          *store_data;  /* the store's own */

    ngx_http_llm_xfer_t           *xfer;

    /* a pipeline run instead of a transfer (ngx_http_llm_job_run.c) */
    ngx_http_llm_run_t            *run;
    void                         (*run_cancel)(ngx_http_llm_run_t *run);
    void                         (*run_free)(ngx_http_llm_run_t *run);
    void                         (*run_pause)(ngx_http_llm_run_t *run,
                                              ngx_uint_t on);
    ngx_uint_t                     run_calls;   /* its callbacks under way */

    ngx_queue_t                    subscribers;
    ngx_queue_t                    queue;       /* in the worker's jobs */
    ngx_event_t                    timer;       /* grace period or poll */
    ngx_event_t                    cancel_ev;   /* a cancel came by store */
    ngx_event_t                    pause_ev;    /* a pause or resume, too */
    ngx_event_t                    deadline;    /* llm_max_duration */
    ngx_event_t                    claim_ev;    /* a claim's answer */

    /*
     * A mirror of a pipeline's job whose worker is gone takes the job
     * over with this, given by whoever follows it (jobapi.c).
     */
    ngx_int_t                    (*takeover)(ngx_http_llm_job_t *job);
    ngx_event_t                    free_ev;     /* a free put off */
    ngx_msec_t                     grace;
    ngx_msec_t                     pause_timeout;
    ngx_http_llm_limit_hold_t     *limits;      /* given back at its end */
    ngx_uint_t                     nlimits;
    ngx_uint_t                     holds;
    ngx_log_t                     *log;
    ngx_uint_t                     max_events;  /* 0: a mirror, unbounded */
    size_t                         max_text;    /* text + meta; 0: a mirror */

    unsigned                       has_owner:1;
    unsigned                       background:1;
    unsigned                       mirror:1;    /* run by another worker */
    unsigned                       fetching:1;

    /*
     * Pause: asked for (here or through the store), and in effect (the
     * run waits between two steps); the store's request as last seen.
     */
    unsigned                       pause:1;
    unsigned                       paused:1;
    unsigned                       store_pause:1;
    ngx_uint_t                     pause_seq;   /* the store's last request */

    /* the final event waits for the store (ngx_http_llm_job_ended()) */
    unsigned                       held:1;

    /* a mirror taking its job over, through the store */
    unsigned                       claiming:1;
    unsigned                       claimed:1;
};

/* the events a client may have now */
#define ngx_http_llm_job_shown(job)  ((job)->nevents - (job)->held)


/* engine output handed to the event loop, one batch per drain */
typedef struct {
    u_char                        *text;        /* malloc()ed, or NULL */
    size_t                         text_len;
    size_t                         text_cap;

    unsigned                       done:1;
    unsigned                       failed:1;

    ngx_http_llm_outcome_t         outcome;     /* read with "done" */
    ngx_uint_t                     status;      /* upstream's, with "done" */
} ngx_http_llm_output_t;


/*
 * Where the engine delivers a transfer's output, on the event loop.  With
 * out->done the transfer is over and its handle is no longer valid.
 */
typedef void (*ngx_http_llm_output_pt)(void *data,
    ngx_http_llm_output_t *out);


/* everything a transfer needs, resolved on the loop before submit */
typedef struct {
    char                          *url;
    char                          *body;
    size_t                         body_len;
    char                          *headers[8];
    ngx_uint_t                     nheaders;
    const ngx_http_llm_provider_t *provider;

    ngx_msec_t                     connect_timeout;
    ngx_msec_t                     first_token_timeout;
    ngx_msec_t                     idle_timeout;
    ngx_msec_t                     timeout;
    ngx_flag_t                     ssl_verify;
    size_t                         max_text;
    ngx_uint_t                     model;       /* its metrics slot */
} ngx_http_llm_spec_t;


/* how a new job runs */
typedef struct {
    ngx_thread_pool_t             *pool;
    ngx_http_llm_store_t          *store;
    u_char                        *owner;       /* SHA-1, or NULL */
    ngx_msec_t                     grace;
    ngx_msec_t                     pause_timeout;
    ngx_msec_t                     max_duration;    /* 0: none */
    ngx_uint_t                     max_events;
    size_t                         max_text;    /* of a pipeline's job */
    ngx_uint_t                     label;       /* its metrics slot */
    ngx_http_llm_limit_hold_t     *limits;      /* taken by the job */
    ngx_uint_t                     nlimits;
    unsigned                       background:1;
} ngx_http_llm_job_opts_t;


typedef void (*ngx_http_llm_find_pt)(void *data, ngx_int_t rc,
    ngx_http_llm_job_t *job);


extern ngx_module_t  ngx_http_llm_module;


/* ngx_http_llm_module.c */
ngx_int_t ngx_http_llm_check_url(ngx_str_t *url);

/* ngx_http_llm_input.c */
ngx_int_t ngx_http_llm_input_parse(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *err);
ngx_int_t ngx_http_llm_input_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
json_t *ngx_http_llm_input_object(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
char *ngx_http_llm_input_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/* ngx_http_llm_limit.c */
ngx_int_t ngx_http_llm_limit_acquire(ngx_http_request_t *r,
    ngx_array_t *limits, ngx_http_llm_limit_hold_t **holds,
    ngx_uint_t *nholds, ngx_msec_t *retry_after);
void ngx_http_llm_limit_release(ngx_http_llm_limit_hold_t *holds,
    ngx_uint_t n);
ngx_int_t ngx_http_llm_limit_refuse(ngx_http_request_t *r,
    ngx_msec_t retry_after);
char *ngx_http_llm_limit_zone_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_llm_limit_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_llm_limit_check(ngx_conf_t *cf, ngx_array_t *limits);

/* ngx_http_llm_handler.c */
ngx_int_t ngx_http_llm_handler(ngx_http_request_t *r);

/* ngx_http_llm_request.c */
ngx_int_t ngx_http_llm_ctx_cleanup(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
ngx_int_t ngx_http_llm_send_json_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, ngx_str_t *message);
ngx_int_t ngx_http_llm_send_json(ngx_http_request_t *r, ngx_uint_t status,
    json_t *o);
ngx_int_t ngx_http_llm_last_event_id(ngx_http_request_t *r, ngx_str_t *id,
    ngx_uint_t *seq);
ngx_int_t ngx_http_llm_owner(ngx_http_request_t *r, u_char *hash);
ngx_uint_t ngx_http_llm_valid_id(ngx_str_t *id);
ngx_uint_t ngx_http_llm_accepts_stream(ngx_http_request_t *r);
ngx_uint_t ngx_http_llm_asks_stream(ngx_http_request_t *r);
ngx_uint_t ngx_http_llm_prefers_async(ngx_http_request_t *r);
ngx_int_t ngx_http_llm_content_type_param(ngx_http_request_t *r,
    const char *param, ngx_str_t *value);
ngx_int_t ngx_http_llm_param(ngx_pool_t *pool, ngx_str_t *params,
    const char *param, ngx_str_t *value);
ngx_uint_t ngx_http_llm_content_type_is(ngx_http_request_t *r,
    const char *type);

/* ngx_http_llm_sse.c */
ngx_int_t ngx_http_llm_sse_start(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
void ngx_http_llm_sse_wake(ngx_http_llm_ctx_t *ctx);

/* ngx_http_llm_job.c */
ngx_http_llm_job_t *ngx_http_llm_job_start(ngx_http_llm_spec_t *spec,
    ngx_http_llm_job_opts_t *opts, ngx_log_t *log);
ngx_int_t ngx_http_llm_job_find(ngx_http_llm_store_t *st, u_char *id,
    ngx_uint_t from, ngx_http_llm_find_pt handler, void *data);
void ngx_http_llm_job_subscribe(ngx_http_llm_job_t *job,
    ngx_http_llm_ctx_t *ctx);
void ngx_http_llm_job_unsubscribe(ngx_http_llm_ctx_t *ctx);
ngx_http_llm_job_t *ngx_http_llm_job_create(ngx_http_llm_job_opts_t *opts,
    ngx_log_t *log);
void ngx_http_llm_job_save(ngx_http_llm_job_t *job);
ngx_int_t ngx_http_llm_job_text(ngx_http_llm_job_t *job, u_char *p,
    size_t len);
ngx_int_t ngx_http_llm_job_payload(ngx_http_llm_job_t *job,
    ngx_http_llm_event_type_e type, u_char *payload, size_t len);
ngx_int_t ngx_http_llm_job_set_state(ngx_http_llm_job_t *job, u_char *json,
    size_t len);
void ngx_http_llm_job_finish(ngx_http_llm_job_t *job,
    ngx_http_llm_state_e state, ngx_http_llm_outcome_t *oc);
void ngx_http_llm_job_fail(ngx_http_llm_job_t *job, const char *code,
    const char *message);
void ngx_http_llm_job_cancel(ngx_http_llm_job_t *job);
void ngx_http_llm_job_adopt(ngx_http_llm_job_t *job,
    ngx_http_llm_job_opts_t *o);
ngx_int_t ngx_http_llm_job_pause(ngx_http_llm_job_t *job, ngx_uint_t on);
void ngx_http_llm_job_hold(ngx_http_llm_job_t *job);
void ngx_http_llm_job_unhold(ngx_http_llm_job_t *job);
void ngx_http_llm_job_unhold_later(ngx_http_llm_job_t *job);
void ngx_http_llm_jobs_shutdown(void);
void ngx_http_llm_jobs_exit_process(void);

/* ngx_http_llm_job_run.c */
ngx_http_llm_job_t *ngx_http_llm_job_start_run(ngx_http_llm_run_t *run,
    ngx_http_llm_job_opts_t *opts, ngx_log_t *log);
ngx_int_t ngx_http_llm_job_adopt_run(ngx_http_llm_job_t *job,
    ngx_http_llm_run_t *run, ngx_http_llm_job_opts_t *opts);

/* ngx_http_llm_jobapi.c */
ngx_int_t ngx_http_llm_job_handler(ngx_http_request_t *r);
void ngx_http_llm_job_opts(ngx_http_request_t *r,
    ngx_http_llm_job_opts_t *opts);
void ngx_http_llm_answer(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_job_t *job);
ngx_int_t ngx_http_llm_resume(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_str_t *id, ngx_uint_t from);
ngx_int_t ngx_http_llm_send_accepted(ngx_http_request_t *r,
    ngx_http_llm_job_t *job);
ngx_int_t ngx_http_llm_job_id_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
void ngx_http_llm_wait_wake(ngx_http_llm_ctx_t *ctx);
ngx_int_t ngx_http_llm_send_job(ngx_http_request_t *r,
    ngx_http_llm_job_t *job, ngx_uint_t status);

/* ngx_http_llm_channel.c */
extern ngx_http_llm_channel_t  ngx_http_llm_channel;

ngx_int_t ngx_http_llm_channel_init_process(ngx_cycle_t *cycle);
void ngx_http_llm_channel_exit_process(ngx_cycle_t *cycle);
ngx_uint_t ngx_http_llm_channel_queue(ngx_http_llm_chan_item_t *item);
void ngx_http_llm_channel_wake(void);
void ngx_http_llm_channel_post(ngx_http_llm_chan_item_t *item);

/* ngx_http_llm_engine.c */
ngx_int_t ngx_http_llm_engine_init_process(ngx_cycle_t *cycle);
void ngx_http_llm_engine_exit_process(ngx_cycle_t *cycle);
ngx_http_llm_xfer_t *ngx_http_llm_engine_submit(ngx_thread_pool_t *pool,
    ngx_http_llm_spec_t *spec, ngx_http_llm_output_pt handler, void *data,
    ngx_log_t *log);
void ngx_http_llm_engine_release(ngx_http_llm_xfer_t *x);
ngx_int_t ngx_http_llm_spec_make(ngx_http_llm_spec_t *spec, ngx_str_t *url,
    ngx_http_llm_params_t *params, ngx_str_t *err);
void ngx_http_llm_spec_free(ngx_http_llm_spec_t *spec);

/* ngx_http_llm_metrics.c */
#define NGX_HTTP_LLM_METRICS_MEMORY  0
#define NGX_HTTP_LLM_METRICS_REDIS   1

#define NGX_HTTP_LLM_SERVE_METRICS   1
#define NGX_HTTP_LLM_SERVE_STATUS    2

char *ngx_http_llm_metrics_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
void *ngx_http_llm_metrics_conf(ngx_conf_t *cf);
char *ngx_http_llm_metrics_merge(ngx_conf_t *cf,
    ngx_http_llm_loc_conf_t *conf);
ngx_uint_t ngx_http_llm_metrics_label(ngx_http_llm_loc_conf_t *llcf);
ngx_uint_t ngx_http_llm_metrics_model(ngx_str_t *model);
void ngx_http_llm_metrics_job_start(ngx_http_llm_job_t *job,
    ngx_http_llm_job_opts_t *opts);
void ngx_http_llm_metrics_delta(ngx_http_llm_job_t *job);
void ngx_http_llm_metrics_output(ngx_http_llm_job_t *job,
    ngx_http_llm_output_t *out);
void ngx_http_llm_metrics_run_event(ngx_http_llm_job_t *job,
    ngx_http_llm_event_type_e type, u_char *payload, size_t len);
void ngx_http_llm_metrics_abandon(ngx_http_llm_job_t *job);
void ngx_http_llm_metrics_job_end(ngx_http_llm_job_t *job);
void ngx_http_llm_metrics_xfer(ngx_http_llm_spec_t *spec,
    ngx_http_llm_output_t *out);
void ngx_http_llm_metrics_stream_open(void);
void ngx_http_llm_metrics_resume(ngx_http_llm_ctx_t *ctx);
void ngx_http_llm_metrics_request_end(ngx_http_llm_ctx_t *ctx);
void ngx_http_llm_metrics_store_write(ngx_uint_t store, ngx_uint_t ok);
void ngx_http_llm_metrics_flush(ngx_uint_t ok, ngx_msec_t ms);
void ngx_http_llm_metrics_orphan(void);
void ngx_http_llm_metrics_limit_refused(ngx_http_request_t *r);
ngx_int_t ngx_http_llm_metrics_running(void);

/* ngx_http_llm_status.c */
char *ngx_http_llm_status_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/* ngx_http_llm_log.c */
ngx_int_t ngx_http_llm_log_variables(ngx_conf_t *cf);


#endif /* _NGX_HTTP_LLM_MODULE_H_INCLUDED_ */
