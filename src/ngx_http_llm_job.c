
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * A job is one generation as the event loop sees it: its id, its state, the
 * text so far, its outcome and its event log, which every subscribed stream
 * reads at its own pace (the SSE writer renders the frames).  Jobs are heap-allocated and outlive the
 * requests that watch them; a job is freed when it is over and nobody
 * watches it any more.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <sys/random.h>

#include "ngx_http_llm_module.h"


#define NGX_HTTP_LLM_WATCH_MS  1000


static ngx_int_t ngx_http_llm_job_id(u_char *id, ngx_log_t *log);
static ngx_int_t ngx_http_llm_job_event(ngx_http_llm_job_t *job,
    ngx_http_llm_event_type_e type, size_t off, size_t len);
static ngx_int_t ngx_http_llm_job_append_text(ngx_http_llm_job_t *job,
    u_char *text, size_t len);
static void ngx_http_llm_job_end(ngx_http_llm_job_t *job,
    ngx_http_llm_state_e state, const char *code, u_char *msg, size_t len);
static void ngx_http_llm_job_wake(ngx_http_llm_job_t *job);
static void ngx_http_llm_job_free(ngx_http_llm_job_t *job);
static void ngx_http_llm_watch_handler(ngx_event_t *ev);


static ngx_queue_t       ngx_http_llm_jobs;
static ngx_event_t       ngx_http_llm_watch;

/* timers log their connection's fd in debug builds: give it one */
static ngx_connection_t  ngx_http_llm_watch_conn = { .fd = -1 };


/* takes the spec; NULL when the job cannot start */

ngx_http_llm_job_t *
ngx_http_llm_job_start(ngx_http_llm_spec_t *spec, ngx_thread_pool_t *pool,
    ngx_log_t *log)
{
    ngx_http_llm_job_t  *job;

    if (ngx_http_llm_jobs.next == NULL) {
        ngx_queue_init(&ngx_http_llm_jobs);
    }

    job = ngx_calloc(sizeof(ngx_http_llm_job_t), log);
    if (job == NULL) {
        ngx_http_llm_spec_free(spec);
        return NULL;
    }

    job->state = NGX_HTTP_LLM_RUNNING;
    job->log = ngx_cycle->log;
    job->input_tokens = -1;
    job->output_tokens = -1;
    ngx_queue_init(&job->subscribers);
    ngx_queue_insert_tail(&ngx_http_llm_jobs, &job->queue);

    if (ngx_http_llm_job_id(job->id, log) != NGX_OK
        || ngx_http_llm_job_event(job, NGX_HTTP_LLM_EV_START, 0, 0) != NGX_OK)
    {
        goto failed;
    }

    job->xfer = ngx_http_llm_engine_submit(pool, spec, job, log);

    if (job->xfer == NULL) {
        goto failed;
    }

    if (!ngx_http_llm_watch.timer_set) {
        ngx_http_llm_watch.handler = ngx_http_llm_watch_handler;
        ngx_http_llm_watch.data = &ngx_http_llm_watch_conn;
        ngx_http_llm_watch.log = ngx_cycle->log;
        ngx_add_timer(&ngx_http_llm_watch, NGX_HTTP_LLM_WATCH_MS);
    }

    return job;

failed:

    ngx_http_llm_spec_free(spec);
    job->state = NGX_HTTP_LLM_FAILED;
    ngx_http_llm_job_free(job);

    return NULL;
}


void
ngx_http_llm_job_subscribe(ngx_http_llm_job_t *job, ngx_http_llm_ctx_t *ctx)
{
    ctx->job = job;
    ngx_queue_insert_tail(&job->subscribers, &ctx->queue);
}


/* the request is gone: a job nobody watches is not worth paying for */

void
ngx_http_llm_job_unsubscribe(ngx_http_llm_ctx_t *ctx)
{
    ngx_http_llm_job_t  *job;

    job = ctx->job;

    if (job == NULL) {
        return;
    }

    ctx->job = NULL;
    ngx_queue_remove(&ctx->queue);

    if (!ngx_queue_empty(&job->subscribers)) {
        return;
    }

    if (job->state == NGX_HTTP_LLM_RUNNING) {
        ngx_log_error(NGX_LOG_INFO, job->log, 0,
                      "llm: job %s: client gone, upstream request cancelled",
                      job->id);

        ngx_http_llm_job_end(job, NGX_HTTP_LLM_CANCELLED,
                             NGX_HTTP_LLM_E_CANCELLED,
                             (u_char *) "the client went away",
                             sizeof("the client went away") - 1);
    }

    ngx_http_llm_job_free(job);
}


/* event loop: what the engine produced since the last drain */

void
ngx_http_llm_job_output(ngx_http_llm_job_t *job, ngx_http_llm_output_t *out)
{
    size_t  off;

    if (job->state != NGX_HTTP_LLM_RUNNING) {
        return;
    }

    if (out->text_len) {
        off = job->text_len;

        if (ngx_http_llm_job_append_text(job, out->text, out->text_len)
               != NGX_OK
            || ngx_http_llm_job_event(job, NGX_HTTP_LLM_EV_DELTA, off,
                                      out->text_len)
               != NGX_OK)
        {
            ngx_http_llm_job_fail(job, NGX_HTTP_LLM_E_INTERNAL,
                                  "out of memory");
            return;
        }
    }

    if (!out->done) {
        ngx_http_llm_job_wake(job);
        return;
    }

    if (out->failed) {
        ngx_log_error(NGX_LOG_ERR, job->log, 0,
                      "llm: job %s failed: %s: %*s", job->id, out->code,
                      (size_t) ngx_min(out->message_len, 512),
                      out->message);

        ngx_http_llm_job_end(job, NGX_HTTP_LLM_FAILED, out->code,
                             out->message, out->message_len);
        return;
    }

    ngx_memcpy(job->finish, out->finish, out->finish_len);
    job->finish_len = out->finish_len;
    job->input_tokens = out->input_tokens;
    job->output_tokens = out->output_tokens;

    if (ngx_http_llm_job_event(job, NGX_HTTP_LLM_EV_COMPLETE, 0, 0)
        != NGX_OK)
    {
        ngx_http_llm_job_fail(job, NGX_HTTP_LLM_E_INTERNAL, "out of memory");
        return;
    }

    job->state = NGX_HTTP_LLM_COMPLETED;

    ngx_http_llm_job_wake(job);
}


void
ngx_http_llm_job_fail(ngx_http_llm_job_t *job, const char *code,
    const char *message)
{
    if (job->state != NGX_HTTP_LLM_RUNNING) {
        return;
    }

    ngx_http_llm_job_end(job, NGX_HTTP_LLM_FAILED, code, (u_char *) message,
                         ngx_strlen(message));
}


/* the worker is shutting down: every stream gets its final event now */

void
ngx_http_llm_jobs_shutdown(void)
{
    ngx_queue_t         *q, *next;
    ngx_http_llm_job_t  *job;

    if (ngx_http_llm_jobs.next == NULL) {
        return;
    }

    for (q = ngx_queue_head(&ngx_http_llm_jobs);
         q != ngx_queue_sentinel(&ngx_http_llm_jobs);
         q = next)
    {
        next = ngx_queue_next(q);
        job = ngx_queue_data(q, ngx_http_llm_job_t, queue);

        ngx_http_llm_job_fail(job, NGX_HTTP_LLM_E_SHUTDOWN,
                              "the server is shutting down");
    }
}


static ngx_int_t
ngx_http_llm_job_id(u_char *id, ngx_log_t *log)
{
    u_char     raw[16];
    ssize_t    n;
    ngx_str_t  src, dst;

    n = getrandom(raw, sizeof(raw), 0);

    if (n != (ssize_t) sizeof(raw)) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      "llm: getrandom() failed");
        return NGX_ERROR;
    }

    src.data = raw;
    src.len = sizeof(raw);
    dst.data = id;

    ngx_encode_base64url(&dst, &src);
    id[dst.len] = '\0';

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_job_event(ngx_http_llm_job_t *job, ngx_http_llm_event_type_e type,
    size_t off, size_t len)
{
    ngx_uint_t             n;
    ngx_http_llm_event_t  *events, *ev;

    /* growing one early keeps a slot for the final event */

    if (job->nevents + 1 >= job->events_cap) {
        n = job->events_cap ? job->events_cap * 2 : 16;
        events = realloc(job->events, n * sizeof(ngx_http_llm_event_t));

        if (events == NULL) {
            return NGX_ERROR;
        }

        job->events = events;
        job->events_cap = n;
    }

    ev = &job->events[job->nevents++];
    ev->type = type;
    ev->off = off;
    ev->len = (uint32_t) len;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_job_append_text(ngx_http_llm_job_t *job, u_char *text,
    size_t len)
{
    size_t   cap;
    u_char  *t;

    if (job->text_len + len > job->text_cap) {
        cap = ngx_max(job->text_cap * 2, job->text_len + len);
        cap = ngx_max(cap, 1024);

        t = realloc(job->text, cap);
        if (t == NULL) {
            return NGX_ERROR;
        }

        job->text = t;
        job->text_cap = cap;
    }

    ngx_memcpy(job->text + job->text_len, text, len);
    job->text_len += len;

    return NGX_OK;
}


/* the final "error" event: what went wrong and the text made so far */

static void
ngx_http_llm_job_end(ngx_http_llm_job_t *job, ngx_http_llm_state_e state,
    const char *code, u_char *msg, size_t len)
{
    if (job->xfer) {
        ngx_http_llm_engine_cancel(job->xfer);
        job->xfer = NULL;
    }

    job->state = state;
    job->code = code;

    job->message = ngx_alloc(len ? len : 1, job->log);
    if (job->message) {
        ngx_memcpy(job->message, msg, len);
        job->message_len = len;
    }

    if (ngx_http_llm_job_event(job, NGX_HTTP_LLM_EV_ERROR, 0, 0) != NGX_OK) {
        ngx_log_error(NGX_LOG_ALERT, job->log, 0,
                      "llm: job %s: cannot log its final event", job->id);
    }

    ngx_http_llm_job_wake(job);
}


static void
ngx_http_llm_job_wake(ngx_http_llm_job_t *job)
{
    ngx_queue_t         *q, *next;
    ngx_http_llm_ctx_t  *ctx;

    /* a stream that finishes unsubscribes itself: walk with care */

    for (q = ngx_queue_head(&job->subscribers);
         q != ngx_queue_sentinel(&job->subscribers);
         q = next)
    {
        next = ngx_queue_next(q);
        ctx = ngx_queue_data(q, ngx_http_llm_ctx_t, queue);
        ngx_http_llm_sse_wake(ctx);
    }
}


static void
ngx_http_llm_job_free(ngx_http_llm_job_t *job)
{
    if (job->state == NGX_HTTP_LLM_RUNNING
        || !ngx_queue_empty(&job->subscribers))
    {
        return;
    }

    free(job->events);
    free(job->text);
    ngx_free(job->message);
    ngx_queue_remove(&job->queue);
    ngx_free(job);

    if (ngx_queue_empty(&ngx_http_llm_jobs) && ngx_http_llm_watch.timer_set) {
        ngx_del_timer(&ngx_http_llm_watch);
    }
}


/*
 * While jobs exist this timer holds the worker open, and it notices a
 * graceful shutdown: then every stream ends with a final event instead of
 * holding the old worker for as long as a generation runs.
 */

static void
ngx_http_llm_watch_handler(ngx_event_t *ev)
{
    if (ngx_exiting || ngx_quit || ngx_terminate) {
        ngx_http_llm_jobs_shutdown();
    }

    if (!ngx_queue_empty(&ngx_http_llm_jobs)) {
        ngx_add_timer(ev, NGX_HTTP_LLM_WATCH_MS);
    }
}
