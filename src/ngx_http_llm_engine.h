
/*
 * Copyright (C) ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_ENGINE_H_INCLUDED_
#define _NGX_HTTP_LLM_ENGINE_H_INCLUDED_


/* shared by the engine (ngx_http_llm_engine.c) and its transfers */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <curl/curl.h>

#include "ngx_http_llm_module.h"


struct ngx_http_llm_engine_s {
    ngx_thread_pool_t             *pool;
    ngx_thread_task_t             *task;
    CURLM                         *multi;
    int                            epfd;
    int                            wakefd;      /* eventfd: new work */
    ngx_http_llm_engine_t         *next;

    /* shared, under the channel mutex */
    ngx_http_llm_xfer_t           *submitted;
    ngx_http_llm_xfer_t           *cancelled;
    ngx_queue_t                    xfers;       /* every live transfer */
    unsigned                       running:1;

    /* event loop only */
    unsigned                       posted:1;
    unsigned                       repost:1;

    /* engine thread only */
    ngx_queue_t                    active;
    ngx_msec_t                     deadline;    /* libcurl's timer, or 0 */
    ngx_uint_t                     batch;       /* in a run */
    ngx_uint_t                     wake;        /* output queued, unwoken */
    ngx_uint_t                     deferred;    /* outputs since then */
    ngx_msec_t                     wake_since;
};


struct ngx_http_llm_xfer_s {
    ngx_http_llm_spec_t            spec;
    ngx_http_llm_engine_t         *engine;

    /* event loop only: NULL once the caller let go */
    ngx_http_llm_output_pt         handler;
    void                          *data;

    /* engine thread only */
    CURL                          *easy;
    void                          *pstate;
    ngx_http_llm_usse_t            parser;
    ngx_http_llm_sink_t            sink;
    ngx_queue_t                    active;
    struct curl_slist             *headers;
    ngx_msec_t                     started;
    ngx_msec_t                     last_read;
    long                           status;
    size_t                         text_total;  /* made, for max_text */
    u_char                        *errbody;
    size_t                         errlen;
    char                           errbuf[CURL_ERROR_SIZE];
    unsigned                       got_text:1;
    unsigned                       typed:1;     /* its media type checked */
    unsigned                       ended:1;
    unsigned                       failed:1;
    unsigned                       in_multi:1;

    /* shared, under the channel mutex */
    ngx_http_llm_chan_item_t       item;
    ngx_http_llm_output_t          out;
    ngx_uint_t                     refs;
    ngx_queue_t                    link;        /* in engine->xfers */
    unsigned                       cancel:1;
    unsigned                       counted:1;   /* by the metrics: loop's */
    ngx_http_llm_xfer_t           *next_submit;
    ngx_http_llm_xfer_t           *next_cancel;
};


ngx_msec_t ngx_http_llm_engine_now(void);
void ngx_http_llm_engine_defer(ngx_http_llm_engine_t *e, ngx_uint_t wake);

ngx_http_llm_xfer_t *ngx_http_llm_xfer_create(ngx_http_llm_engine_t *e,
    ngx_http_llm_spec_t *spec, ngx_http_llm_output_pt handler, void *data,
    ngx_log_t *log);
void ngx_http_llm_xfer_start(ngx_http_llm_engine_t *e,
    ngx_http_llm_xfer_t *x);
void ngx_http_llm_xfer_finish(ngx_http_llm_xfer_t *x, CURLcode rc);
void ngx_http_llm_xfer_release(ngx_http_llm_xfer_t *x);
void ngx_http_llm_xfer_free(ngx_http_llm_xfer_t *x);
void ngx_http_llm_sink_fail_str(ngx_http_llm_xfer_t *x, const char *code,
    const char *msg);


#endif /* _NGX_HTTP_LLM_ENGINE_H_INCLUDED_ */
