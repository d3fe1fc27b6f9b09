
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


#define NGX_HTTP_LLM_WRITE_MAX  65536      /* text rendered per write */
#define NGX_HTTP_LLM_DELTA_MAX  16384      /* text merged into one delta */


/* renders into p, or only counts when p is NULL */
typedef struct {
    u_char                    *p;
    size_t                     n;
    size_t                     final;       /* the final event's text sent */
} ngx_http_llm_render_t;


static ngx_int_t ngx_http_llm_sse_render(ngx_http_llm_ctx_t *ctx,
    ngx_chain_t **out, ngx_uint_t ping);
static ngx_uint_t ngx_http_llm_sse_frames(ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_render_t *w, ngx_uint_t ping);
static void ngx_http_llm_sse_event(ngx_http_llm_job_t *job,
    ngx_http_llm_render_t *w, ngx_uint_t first, ngx_uint_t last);
static ngx_uint_t ngx_http_llm_sse_final(ngx_http_llm_job_t *job,
    ngx_http_llm_render_t *w, ngx_uint_t i, size_t n);
static void ngx_http_llm_sse_head(ngx_http_llm_job_t *job,
    ngx_http_llm_render_t *w, ngx_uint_t i);
static void ngx_http_llm_sse_raw(ngx_http_llm_render_t *w, const void *s,
    size_t len);
static void ngx_http_llm_sse_str(ngx_http_llm_render_t *w, u_char *s,
    size_t len);
static void ngx_http_llm_sse_chars(ngx_http_llm_render_t *w, u_char *s,
    size_t len);
static void ngx_http_llm_sse_send(ngx_http_llm_ctx_t *ctx, ngx_uint_t ping);
static void ngx_http_llm_sse_write_handler(ngx_http_request_t *r);
static void ngx_http_llm_sse_heartbeat(ngx_event_t *ev);


static const char  *ngx_http_llm_event_names[] = {
    "start", "delta", "complete", "error"
};


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

    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_llm_sse_write_handler;

    ctx->heartbeat.handler = ngx_http_llm_sse_heartbeat;
    ctx->heartbeat.data = r->connection;
    ctx->heartbeat.log = r->connection->log;

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

    if (ctx->busy == NULL
        && ngx_http_llm_sse_render(ctx, &out, ping) != NGX_OK)
    {
        goto failed;
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

    if (job && ctx->sent < job->nevents) {
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


/* one buf with every frame the client has not seen, up to a bound */

static ngx_int_t
ngx_http_llm_sse_render(ngx_http_llm_ctx_t *ctx, ngx_chain_t **out,
    ngx_uint_t ping)
{
    size_t                  size;
    ngx_buf_t              *b;
    ngx_chain_t            *cl;
    ngx_http_request_t     *r;
    ngx_http_llm_render_t   w;

    r = ctx->request;

    w.p = NULL;
    w.n = 0;
    w.final = ctx->final_sent;
    (void) ngx_http_llm_sse_frames(ctx, &w, ping);

    if (w.n == 0) {
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
    w.final = ctx->final_sent;
    ctx->sent = ngx_http_llm_sse_frames(ctx, &w, ping);
    ctx->final_sent = w.final;
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
    ngx_http_llm_loc_conf_t  *llcf;

    job = ctx->job;

    if (ctx->retry) {
        llcf = ngx_http_get_module_loc_conf(ctx->request, ngx_http_llm_module);
        n = ngx_sprintf(line, "retry: %M\n\n", llcf->retry) - line;
        ngx_http_llm_sse_raw(w, line, n);
    }

    i = ctx->sent;
    text = 0;

    while (job && i < job->nevents && text < NGX_HTTP_LLM_WRITE_MAX) {
        last = i;

        if (job->events[i].type == NGX_HTTP_LLM_EV_DELTA) {
            merged = job->events[i].len;

            while (last + 1 < job->nevents
                   && job->events[last + 1].type == NGX_HTTP_LLM_EV_DELTA
                   && merged + job->events[last + 1].len
                      <= NGX_HTTP_LLM_DELTA_MAX)
            {
                last++;
                merged += job->events[last].len;
            }

            text += merged;

        } else if (job->events[i].type != NGX_HTTP_LLM_EV_START) {
            /*
             * The final event carries the whole text: it goes out in
             * pieces of a write each, so that the memory of a client's
             * write stays bounded however long the text.
             */

            n = ngx_min(job->text_len - w->final,
                        NGX_HTTP_LLM_WRITE_MAX - text);
            text += n;

            if (!ngx_http_llm_sse_final(job, w, i, n)) {
                break;
            }

            i++;
            continue;
        }

        ngx_http_llm_sse_event(job, w, i, last);
        i = last + 1;
    }

    if (ping && w->n == 0) {
        ngx_http_llm_sse_raw(w, ": ping\n\n", sizeof(": ping\n\n") - 1);
    }

    return i;
}


static void
ngx_http_llm_sse_event(ngx_http_llm_job_t *job, ngx_http_llm_render_t *w,
    ngx_uint_t first, ngx_uint_t last)
{
    ngx_http_llm_event_t  *ev;

    ev = &job->events[first];

    ngx_http_llm_sse_head(job, w, last);

    if (ev->type == NGX_HTTP_LLM_EV_START) {
        ngx_http_llm_sse_raw(w, "{\"job\":\"", sizeof("{\"job\":\"") - 1);
        ngx_http_llm_sse_raw(w, job->id, NGX_HTTP_LLM_JOB_ID_LEN);
        ngx_http_llm_sse_raw(w, "\"}", 2);

    } else {
        ngx_http_llm_sse_raw(w, "{\"text\":", sizeof("{\"text\":") - 1);
        ngx_http_llm_sse_str(w, job->text + ev->off,
                             job->events[last].off + job->events[last].len
                             - ev->off);
        ngx_http_llm_sse_raw(w, "}", 1);
    }

    ngx_http_llm_sse_raw(w, "\n\n", 2);
}


/* "id:" and "event:" lines of event i, and "data: " */

static void
ngx_http_llm_sse_head(ngx_http_llm_job_t *job, ngx_http_llm_render_t *w,
    ngx_uint_t i)
{
    u_char       num[NGX_INT_T_LEN];
    size_t       n;
    const char  *name;

    name = ngx_http_llm_event_names[job->events[i].type];
    n = ngx_sprintf(num, "%ui", i + 1) - num;

    ngx_http_llm_sse_raw(w, "id: ", sizeof("id: ") - 1);
    ngx_http_llm_sse_raw(w, job->id, NGX_HTTP_LLM_JOB_ID_LEN);
    ngx_http_llm_sse_raw(w, ":", 1);
    ngx_http_llm_sse_raw(w, num, n);
    ngx_http_llm_sse_raw(w, "\nevent: ", sizeof("\nevent: ") - 1);
    ngx_http_llm_sse_raw(w, name, ngx_strlen(name));
    ngx_http_llm_sse_raw(w, "\ndata: ", sizeof("\ndata: ") - 1);
}


/*
 * The next n bytes of the final event i's text (from w->final), after its
 * head if it starts here, and its end if they are the last: returns 1
 * when the event is complete.
 */

static ngx_uint_t
ngx_http_llm_sse_final(ngx_http_llm_job_t *job, ngx_http_llm_render_t *w,
    ngx_uint_t i, size_t n)
{
    u_char  num[NGX_INT_T_LEN * 3 + 64];
    size_t  len;

    if (w->final == 0) {
        ngx_http_llm_sse_head(job, w, i);

        if (job->events[i].type == NGX_HTTP_LLM_EV_ERROR) {
            ngx_http_llm_sse_raw(w, "{\"code\":", sizeof("{\"code\":") - 1);
            ngx_http_llm_sse_str(w, job->code, job->code_len);
            ngx_http_llm_sse_raw(w, ",\"message\":",
                                 sizeof(",\"message\":") - 1);
            ngx_http_llm_sse_str(w, job->message, job->message_len);
            ngx_http_llm_sse_raw(w, ",\"text\":\"",
                                 sizeof(",\"text\":\"") - 1);

        } else {
            ngx_http_llm_sse_raw(w, "{\"text\":\"", sizeof("{\"text\":\"") - 1);
        }
    }

    ngx_http_llm_sse_chars(w, job->text + w->final, n);
    w->final += n;

    if (w->final < job->text_len) {
        return 0;
    }

    w->final = 0;

    ngx_http_llm_sse_raw(w, "\"", 1);

    if (job->events[i].type == NGX_HTTP_LLM_EV_COMPLETE) {

        if (job->finish_len) {
            ngx_http_llm_sse_raw(w, ",\"finish_reason\":",
                                 sizeof(",\"finish_reason\":") - 1);
            ngx_http_llm_sse_str(w, job->finish, job->finish_len);
        }

        if (job->input_tokens >= 0 || job->output_tokens >= 0) {
            ngx_http_llm_sse_raw(w, ",\"usage\":{", sizeof(",\"usage\":{") - 1);
            len = 0;

            if (job->input_tokens >= 0) {
                len = ngx_sprintf(num, "\"input_tokens\":%i",
                                  job->input_tokens)
                      - num;
            }

            if (job->output_tokens >= 0) {
                len = ngx_sprintf(num + len, "%s\"output_tokens\":%i",
                                  len ? "," : "", job->output_tokens)
                      - num;
            }

            if (job->input_tokens >= 0 && job->output_tokens >= 0) {
                len = ngx_sprintf(num + len, ",\"total_tokens\":%i",
                                  job->input_tokens + job->output_tokens)
                      - num;
            }

            ngx_http_llm_sse_raw(w, num, len);
            ngx_http_llm_sse_raw(w, "}", 1);
        }
    }

    ngx_http_llm_sse_raw(w, "}\n\n", 3);

    return 1;
}


static void
ngx_http_llm_sse_raw(ngx_http_llm_render_t *w, const void *s, size_t len)
{
    if (w->p) {
        w->p = ngx_cpymem(w->p, s, len);
    }

    w->n += len;
}


/* a JSON string */

static void
ngx_http_llm_sse_str(ngx_http_llm_render_t *w, u_char *s, size_t len)
{
    ngx_http_llm_sse_raw(w, "\"", 1);
    ngx_http_llm_sse_chars(w, s, len);
    ngx_http_llm_sse_raw(w, "\"", 1);
}


/* the inside of a JSON string: the text is valid UTF-8, only escapes */

static void
ngx_http_llm_sse_chars(ngx_http_llm_render_t *w, u_char *s, size_t len)
{
    u_char         c, *p, *last;
    size_t         n;
    static u_char  hex[] = "0123456789abcdef";

    n = 0;
    last = s + len;

    for (p = s; p < last; p++) {
        c = *p;
        n += (c == '"' || c == '\\') ? 2
             : (c >= 0x20) ? 1
             : (c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f')
               ? 2 : 6;
    }

    w->n += n;

    if (w->p == NULL) {
        return;
    }

    p = w->p;

    for ( /* void */ ; s < last; s++) {
        c = *s;

        if (c >= 0x20 && c != '"' && c != '\\') {
            *p++ = c;
            continue;
        }

        *p++ = '\\';

        switch (c) {

        case '"':
        case '\\':
            *p++ = c;
            break;

        case '\n':
            *p++ = 'n';
            break;

        case '\r':
            *p++ = 'r';
            break;

        case '\t':
            *p++ = 't';
            break;

        case '\b':
            *p++ = 'b';
            break;

        case '\f':
            *p++ = 'f';
            break;

        default:
            p = ngx_cpymem(p, "u00", 3);
            *p++ = hex[c >> 4];
            *p++ = hex[c & 0xf];
        }
    }

    w->p = p;
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
