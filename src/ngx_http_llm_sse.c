
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * The SSE writer: renders a job's event log for one client and sends it
 * through the output filter chain, every write flushed.  While the client
 * has not taken the last write nothing more is rendered: the log grows in
 * one place for all its readers, and when the client drains, the deltas it
 * missed go out merged into one event that carries the last one's id, so a
 * slow client gets fewer, bigger events and the same text.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_format.h"


#define NGX_HTTP_LLM_WRITE_MAX  65536      /* text rendered per write */
#define NGX_HTTP_LLM_DELTA_MAX  16384      /* text merged into one delta */


static ngx_int_t ngx_http_llm_sse_render(ngx_http_llm_ctx_t *ctx,
    ngx_chain_t **out, ngx_uint_t ping);
static ngx_uint_t ngx_http_llm_sse_frames(ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_render_t *w, ngx_uint_t ping);
static void ngx_http_llm_sse_send(ngx_http_llm_ctx_t *ctx, ngx_uint_t ping);
static void ngx_http_llm_sse_write_handler(ngx_http_request_t *r);
static void ngx_http_llm_sse_heartbeat(ngx_event_t *ev);
static ngx_uint_t ngx_http_llm_sse_hold(ngx_http_llm_ctx_t *ctx);
static void ngx_http_llm_sse_coalesced(ngx_event_t *ev);


ngx_int_t
ngx_http_llm_sse_start(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_int_t                 rc;
    ngx_table_elt_t          *h;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = -1;
    r->headers_out.last_modified_time = -1;
    ngx_str_set(&r->headers_out.content_type, "text/event-stream");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    r->allow_ranges = 0;
    r->gzip_tested = 1;
    r->gzip_ok = 0;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Cache-Control");
    ngx_str_set(&h->value, "no-cache");

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    /* tells a proxying nginx in front of us not to buffer the stream */
    h->hash = 1;
    ngx_str_set(&h->key, "X-Accel-Buffering");
    ngx_str_set(&h->value, "no");

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    ctx->streaming = 1;
    ngx_http_llm_metrics_stream_open();

    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_llm_sse_write_handler;

    ctx->heartbeat.handler = ngx_http_llm_sse_heartbeat;
    ctx->heartbeat.data = r->connection;
    ctx->heartbeat.log = r->connection->log;

    ctx->coalesce.handler = ngx_http_llm_sse_coalesced;
    ctx->coalesce.data = r->connection;
    ctx->coalesce.log = r->connection->log;

    if (llcf->heartbeat) {
        ngx_add_timer(&ctx->heartbeat, llcf->heartbeat);
    }

    /* the reconnection delay goes first, before any event */
    ctx->retry = 1;

    ngx_http_llm_sse_send(ctx, 0);

    return NGX_OK;
}


/* the job has something new */

void
ngx_http_llm_sse_wake(ngx_http_llm_ctx_t *ctx)
{
    ngx_connection_t  *c;

    if (!ctx->streaming || ctx->finished || ctx->busy) {
        return;
    }

    c = ctx->request->connection;

    ngx_http_llm_sse_send(ctx, 0);
    ngx_http_run_posted_requests(c);
}


/*
 * Write what the client has not seen yet, unless it still has not taken
 * the previous write; end the response after the final event.
 */

static void
ngx_http_llm_sse_send(ngx_http_llm_ctx_t *ctx, ngx_uint_t ping)
{
    ngx_int_t                  rc;
    ngx_chain_t               *out;
    ngx_connection_t          *c;
    ngx_http_request_t        *r;
    ngx_http_llm_job_t        *job;
    ngx_http_core_loc_conf_t  *clcf;

    r = ctx->request;
    c = r->connection;
    job = ctx->job;
    out = NULL;

    if (ctx->busy == NULL && !ping && ngx_http_llm_sse_hold(ctx)) {
        return;
    }

    if (ctx->busy == NULL
        && ngx_http_llm_sse_render(ctx, &out, ping) != NGX_OK)
    {
        goto failed;
    }

    if (out) {
        ctx->written = ngx_current_msec;
    }

    rc = ngx_http_output_filter(r, out);

    if (rc == NGX_ERROR) {
        goto failed;
    }

    ngx_chain_update_chains(r->pool, &ctx->free, &ctx->busy, &out,
                            (ngx_buf_tag_t) &ngx_http_llm_module);

    if (ctx->busy) {
        clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

        if (ngx_handle_write_event(c->write, clcf->send_lowat) != NGX_OK) {
            goto failed;
        }

        if (!c->write->ready && !c->write->timer_set) {
            ngx_add_timer(c->write, clcf->send_timeout);
        }

        return;
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    if (job && ctx->sent < ngx_http_llm_job_shown(job)) {
        /* more than one write's worth: go on when the loop comes back */
        ngx_post_event(c->write, &ngx_posted_events);
        return;
    }

    if (job && job->state != NGX_HTTP_LLM_RUNNING && !job->held) {
        ctx->finished = 1;

        if (ctx->heartbeat.timer_set) {
            ngx_del_timer(&ctx->heartbeat);
        }

        if (ctx->coalesce.timer_set) {
            ngx_del_timer(&ctx->coalesce);
        }

        ngx_http_finalize_request(r, ngx_http_send_special(r,
                                                          NGX_HTTP_LAST));
    }

    return;

failed:

    ctx->finished = 1;

    if (ctx->heartbeat.timer_set) {
        ngx_del_timer(&ctx->heartbeat);
    }

    if (ctx->coalesce.timer_set) {
        ngx_del_timer(&ctx->coalesce);
    }

    ngx_http_finalize_request(r, NGX_ERROR);
}


/* one buf with every frame the client has not seen, up to a bound */

static ngx_int_t
ngx_http_llm_sse_render(ngx_http_llm_ctx_t *ctx, ngx_chain_t **out,
    ngx_uint_t ping)
{
    size_t                  size;
    ngx_buf_t              *b;
    ngx_uint_t              next;
    ngx_chain_t            *cl;
    ngx_http_request_t     *r;
    ngx_http_llm_render_t   w;

    r = ctx->request;

    w.p = NULL;
    w.n = 0;
    next = ngx_http_llm_sse_frames(ctx, &w, ping);

    if (w.n == 0) {
        /* events that the format does not send */
        ctx->sent = next;
        return NGX_OK;
    }

    /*
     * Only one write is in flight: its memory is free again now.  It is
     * heap memory, sized to what was needed, so that a stream's request
     * stays within one pool block; the request's cleanup frees it.
     */

    if (ctx->mem_size < w.n) {
        ngx_free(ctx->mem);

        size = ngx_max(w.n, ctx->mem_size * 2);
        size = ngx_max(size, 256);

        ctx->mem = ngx_alloc(size, r->connection->log);
        if (ctx->mem == NULL) {
            ctx->mem_size = 0;
            return NGX_ERROR;
        }

        ctx->mem_size = size;
    }

    cl = ngx_chain_get_free_buf(r->pool, &ctx->free);
    if (cl == NULL) {
        return NGX_ERROR;
    }

    w.p = ctx->mem;
    w.n = 0;
    ctx->sent = ngx_http_llm_sse_frames(ctx, &w, ping);
    ctx->retry = 0;

    /* what a heartbeat writes does not put off the next one */
    if (!ping) {
        ctx->wrote = 1;
    }

    b = cl->buf;
    ngx_memzero(b, sizeof(ngx_buf_t));

    b->start = ctx->mem;
    b->pos = ctx->mem;
    b->last = w.p;
    b->end = ctx->mem + ctx->mem_size;
    b->temporary = 1;
    b->flush = 1;
    b->tag = (ngx_buf_tag_t) &ngx_http_llm_module;

    *out = cl;

    return NGX_OK;
}


/* the frames to write now; returns the next event to send after them */

static ngx_uint_t
ngx_http_llm_sse_frames(ngx_http_llm_ctx_t *ctx, ngx_http_llm_render_t *w,
    ngx_uint_t ping)
{
    u_char                    line[NGX_INT_T_LEN + 16];
    size_t                    n, text, merged;
    ngx_uint_t                i, last;
    ngx_http_llm_job_t       *job;
    ngx_http_llm_fmt_ctx_t    fc;
    ngx_http_llm_loc_conf_t  *llcf;

    job = ctx->job;
    llcf = ngx_http_get_module_loc_conf(ctx->request, ngx_http_llm_module);

    ngx_memzero(&fc, sizeof(ngx_http_llm_fmt_ctx_t));
    fc.request = ctx->request;
    fc.job = job;
    fc.include_usage = ctx->include_usage;
    fc.model = &ctx->model;
    fc.final = ctx->final_sent;

    if (ctx->retry) {
        n = ngx_sprintf(line, "retry: %M\n\n", llcf->retry) - line;
        ngx_http_llm_render_raw(w, line, n);
    }

    i = ctx->sent;
    text = 0;

    while (job && i < ngx_http_llm_job_shown(job)
           && text < NGX_HTTP_LLM_WRITE_MAX)
    {
        last = i;

        if (job->events[i].type == NGX_HTTP_LLM_EV_DELTA) {
            merged = job->events[i].len;

            while (last + 1 < ngx_http_llm_job_shown(job)
                   && job->events[last + 1].type == NGX_HTTP_LLM_EV_DELTA
                   && merged + job->events[last + 1].len
                      <= NGX_HTTP_LLM_DELTA_MAX)
            {
                last++;
                merged += job->events[last].len;
            }

            text += merged;

            if (merged == 0) {
                /* a gap in the ids (a takeover's): nothing to send */
                i = last + 1;
                continue;
            }

        } else if (ngx_http_llm_event_payload(job->events[i].type)) {
            /* a payload event is rendered whole, counted by its payload */
            text += job->events[i].len;

        } else if (job->events[i].type != NGX_HTTP_LLM_EV_START) {
            /*
             * The final event carries the whole text: a format may send
             * it in pieces of a write each (ctx->final_sent: how much went
             * out), so that the memory of a client's write stays bounded
             * however long the text.
             */

            fc.first = i;
            fc.last = i;
            fc.room = NGX_HTTP_LLM_WRITE_MAX - text;
            n = fc.final;

            if (!ngx_http_llm_format_event(llcf->format, &fc, w)) {
                break;
            }

            text += job->text_len - n;
            i++;
            continue;
        }
        fc.first = i;
        fc.last = last;
        (void) ngx_http_llm_format_event(llcf->format, &fc, w);
        i = last + 1;
    }

    if (ping && w->n == 0) {
        ngx_http_llm_render_raw(w, ": ping\n\n", sizeof(": ping\n\n") - 1);
    }

    /* the counting pass renders the same, only the writing one counts */

    if (w->p) {
        ctx->final_sent = fc.final;
    }

    return i;
}


static void
ngx_http_llm_sse_write_handler(ngx_http_request_t *r)
{
    ngx_event_t         *wev;
    ngx_connection_t    *c;
    ngx_http_llm_ctx_t  *ctx;

    c = r->connection;
    wev = c->write;
    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL || ctx->finished) {
        return;
    }

    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "client timed out");
        c->timedout = 1;
        ctx->finished = 1;

        if (ctx->heartbeat.timer_set) {
            ngx_del_timer(&ctx->heartbeat);
        }

        if (ctx->coalesce.timer_set) {
            ngx_del_timer(&ctx->coalesce);
        }

        ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }

    ngx_http_llm_sse_send(ctx, 0);
}


/* keep idle connections and the proxies on their way alive */

static void
ngx_http_llm_sse_heartbeat(ngx_event_t *ev)
{
    ngx_connection_t         *c;
    ngx_http_request_t       *r;
    ngx_http_llm_ctx_t       *ctx;
    ngx_http_llm_loc_conf_t  *llcf;

    c = ev->data;
    r = c->data;
    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);
    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    if (ctx->wrote || ctx->busy) {
        ctx->wrote = 0;
        ngx_add_timer(&ctx->heartbeat, llcf->heartbeat);
        return;
    }

    /*
     * The send may end the response and free the request, ctx included:
     * the next heartbeat is set before it (an end deletes it), and
     * nothing of the request is touched after it.
     */

    ngx_add_timer(&ctx->heartbeat, llcf->heartbeat);

    ngx_http_llm_sse_send(ctx, 1);

    ngx_http_run_posted_requests(c);
}


/*
 * A format that coalesces deltas holds them back until its interval has
 * passed since the last write, unless enough text is due or another kind
 * of event waits behind them.
 */

static ngx_uint_t
ngx_http_llm_sse_hold(ngx_http_llm_ctx_t *ctx)
{
    size_t                    size;
    ngx_uint_t                i;
    ngx_msec_t                elapsed;
    ngx_http_llm_job_t       *job;
    ngx_http_llm_format_t    *fmt;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(ctx->request, ngx_http_llm_module);
    fmt = llcf->format;
    job = ctx->job;

    if (fmt->coalesce_time == 0 || ctx->retry || job == NULL
        || ctx->sent >= ngx_http_llm_job_shown(job))
    {
        return 0;
    }

    size = 0;

    for (i = ctx->sent; i < ngx_http_llm_job_shown(job); i++) {
        if (job->events[i].type != NGX_HTTP_LLM_EV_DELTA
            || (fmt->coalesce_size && size >= fmt->coalesce_size))
        {
            goto now;
        }

        size += job->events[i].len;
    }

    if (fmt->coalesce_size && size >= fmt->coalesce_size) {
        goto now;
    }

    if (ctx->coalesce.timer_set) {
        return 1;
    }

    elapsed = ngx_current_msec - ctx->written;

    if (elapsed >= fmt->coalesce_time) {
        return 0;
    }

    ngx_add_timer(&ctx->coalesce, fmt->coalesce_time - elapsed);

    return 1;

now:

    if (ctx->coalesce.timer_set) {
        ngx_del_timer(&ctx->coalesce);
    }

    return 0;
}


static void
ngx_http_llm_sse_coalesced(ngx_event_t *ev)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;
    ngx_http_llm_ctx_t  *ctx;

    c = ev->data;
    r = c->data;
    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (!ctx->finished && ctx->busy == NULL) {
        ngx_http_llm_sse_send(ctx, 0);
    }

    ngx_http_run_posted_requests(c);
}
