
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * The SSE writer: sends a job's event log to one client through the output
 * filter chain, every write flushed.  Frames are not copied: bufs point
 * into the job's log, which outlives the request.  While the client does
 * not drain what was sent, nothing more is queued (the log keeps growing in
 * one place, not per stream); once it drains, everything missed goes out in
 * one write.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"


#define NGX_HTTP_LLM_WRITE_FRAMES  64


static void ngx_http_llm_sse_send(ngx_http_llm_ctx_t *ctx,
    ngx_chain_t *extra);
static void ngx_http_llm_sse_write_handler(ngx_http_request_t *r);
static void ngx_http_llm_sse_heartbeat(ngx_event_t *ev);


static u_char  ngx_http_llm_ping[] = ": ping\n\n";


ngx_int_t
ngx_http_llm_sse_start(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_int_t                 rc;
    ngx_buf_t                *b;
    ngx_chain_t              *cl;
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

    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_llm_sse_write_handler;

    ctx->heartbeat.handler = ngx_http_llm_sse_heartbeat;
    ctx->heartbeat.data = r->connection;
    ctx->heartbeat.log = r->connection->log;

    if (llcf->heartbeat) {
        ngx_add_timer(&ctx->heartbeat, llcf->heartbeat);
    }

    /* the reconnection delay goes first, before any event */

    b = ngx_create_temp_buf(r->pool, sizeof("retry: \n\n") + NGX_INT_T_LEN);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->last = ngx_sprintf(b->last, "retry: %M\n\n", llcf->retry);
    b->tag = (ngx_buf_tag_t) &ngx_http_llm_module;

    cl = ngx_alloc_chain_link(r->pool);
    if (cl == NULL) {
        return NGX_ERROR;
    }

    cl->buf = b;
    cl->next = NULL;

    ngx_http_llm_sse_send(ctx, cl);

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

    ngx_http_llm_sse_send(ctx, NULL);
    ngx_http_run_posted_requests(c);
}


/*
 * Write what the client has not seen yet, unless it still has not taken
 * the previous write; end the response after the final event.
 */

static void
ngx_http_llm_sse_send(ngx_http_llm_ctx_t *ctx, ngx_chain_t *extra)
{
    ngx_int_t                  rc;
    ngx_uint_t                 n;
    ngx_buf_t                 *b;
    ngx_chain_t               *out, **ll, *cl;
    ngx_connection_t          *c;
    ngx_http_request_t        *r;
    ngx_http_llm_job_t        *job;
    ngx_http_llm_frame_t      *f;
    ngx_http_core_loc_conf_t  *clcf;

    r = ctx->request;
    c = r->connection;
    job = ctx->job;

    out = extra;
    ll = extra ? &extra->next : &out;

    for (n = 0;
         ctx->busy == NULL && job && ctx->sent < job->nframes
         && n < NGX_HTTP_LLM_WRITE_FRAMES;
         n++)
    {
        f = &job->frames[ctx->sent++];

        cl = ngx_chain_get_free_buf(r->pool, &ctx->free);
        if (cl == NULL) {
            goto failed;
        }

        b = cl->buf;
        ngx_memzero(b, sizeof(ngx_buf_t));

        b->start = f->data;
        b->pos = f->data;
        b->last = f->data + f->len;
        b->end = b->last;
        b->memory = 1;
        b->tag = (ngx_buf_tag_t) &ngx_http_llm_module;

        *ll = cl;
        ll = &cl->next;
    }

    if (out) {
        for (cl = out; cl->next; cl = cl->next) { /* void */ }
        cl->buf->flush = 1;
        ctx->wrote = 1;
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

    if (job && ctx->sent < job->nframes) {
        /* more than one write's worth: go on when the loop comes back */
        ngx_post_event(c->write, &ngx_posted_events);
        return;
    }

    if (job && job->state != NGX_HTTP_LLM_RUNNING) {
        ctx->finished = 1;

        if (ctx->heartbeat.timer_set) {
            ngx_del_timer(&ctx->heartbeat);
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

    ngx_http_finalize_request(r, NGX_ERROR);
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

        ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }

    ngx_http_llm_sse_send(ctx, NULL);
}


/* keep idle connections and the proxies on their way alive */

static void
ngx_http_llm_sse_heartbeat(ngx_event_t *ev)
{
    ngx_buf_t                *b;
    ngx_chain_t              *cl;
    ngx_connection_t         *c;
    ngx_http_request_t       *r;
    ngx_http_llm_ctx_t       *ctx;
    ngx_http_llm_loc_conf_t  *llcf;

    c = ev->data;
    r = c->data;
    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);
    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    if (!ctx->wrote && ctx->busy == NULL) {
        cl = ngx_chain_get_free_buf(r->pool, &ctx->free);
        if (cl == NULL) {
            ctx->finished = 1;
            ngx_http_finalize_request(r, NGX_ERROR);
            ngx_http_run_posted_requests(c);
            return;
        }

        b = cl->buf;
        ngx_memzero(b, sizeof(ngx_buf_t));

        b->pos = ngx_http_llm_ping;
        b->last = ngx_http_llm_ping + sizeof(ngx_http_llm_ping) - 1;
        b->memory = 1;
        b->tag = (ngx_buf_tag_t) &ngx_http_llm_module;

        ngx_http_llm_sse_send(ctx, cl);
    }

    if (!ctx->finished) {
        ctx->wrote = 0;
        ngx_add_timer(&ctx->heartbeat, llcf->heartbeat);
    }

    ngx_http_run_posted_requests(c);
}
