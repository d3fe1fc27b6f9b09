
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * What any request of the module needs from HTTP, below the handlers that
 * start and follow jobs: its context's cleanup, JSON answers, the request
 * headers it reads (Accept, Prefer, Content-Type, Last-Event-ID) parsed as
 * the lists of RFC 9110 they are, the owner's hash and job ids.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <ngx_sha1.h>

#include <jansson.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_format.h"
#include "ngx_http_llm_store.h"


static void ngx_http_llm_cleanup(void *data);
static ngx_int_t ngx_http_llm_send_buf(ngx_http_request_t *r,
    ngx_uint_t status, ngx_buf_t *b);
static ngx_uint_t ngx_http_llm_accepts(ngx_http_request_t *r,
    const char *type);
static ngx_table_elt_t *ngx_http_llm_header(ngx_http_request_t *r,
    const char *name, size_t len, ngx_table_elt_t *after);
static ngx_int_t ngx_http_llm_list_next(u_char **pos, u_char *end,
    ngx_str_t *name, ngx_str_t *params);
static ngx_uint_t ngx_http_llm_q_zero(ngx_str_t *params);
static u_char *ngx_http_llm_skip_quoted(u_char *p, u_char *end);


/* once per request: runs when it is freed, when no buf points into a job */

ngx_int_t
ngx_http_llm_ctx_cleanup(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_pool_cleanup_t  *cln;

    if (ctx->cleanup) {
        return NGX_OK;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    cln->handler = ngx_http_llm_cleanup;
    cln->data = ctx;
    ctx->cleanup = 1;

    return NGX_OK;
}


static void
ngx_http_llm_cleanup(void *data)
{
    ngx_http_llm_ctx_t *ctx = data;

    if (ctx->heartbeat.timer_set) {
        ngx_del_timer(&ctx->heartbeat);
    }

    if (ctx->coalesce.timer_set) {
        ngx_del_timer(&ctx->coalesce);
    }

    ctx->finished = 1;
    ngx_http_llm_metrics_request_end(ctx);
    ngx_http_llm_job_unsubscribe(ctx);

    ngx_free(ctx->mem);
    ctx->mem = NULL;
}


ngx_int_t
ngx_http_llm_send_json_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, ngx_str_t *message)
{
    ngx_int_t               rc;
    ngx_http_llm_fmt_ctx_t  fc;

    ngx_memzero(&fc, sizeof(ngx_http_llm_fmt_ctx_t));
    fc.request = r;
    fc.status = status;
    fc.code.data = (u_char *) code;
    fc.code.len = ngx_strlen(code);
    fc.message = *message;

    rc = ngx_http_llm_send_formatted(r, status, NGX_HTTP_LLM_K_REFUSAL, &fc);

    if (rc != NGX_DECLINED) {
        return rc;
    }

    return ngx_http_llm_send_json(r, status,
                                  json_pack("{s{ssss%}}", "error",
                                            "code", code, "message",
                                            (char *) message->data,
                                            message->len));
}


/*
 * A JSON answer in the shape the location's format gives this kind:
 * NGX_DECLINED when it gives none.
 */

ngx_int_t
ngx_http_llm_send_formatted(ngx_http_request_t *r, ngx_uint_t status,
    ngx_http_llm_kind_e kind, ngx_http_llm_fmt_ctx_t *fc)
{
    ngx_buf_t                *b;
    ngx_http_llm_render_t     w;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    w.p = NULL;
    w.n = 0;

    if (llcf->format == NULL
        || ngx_http_llm_format_body(llcf->format, kind, fc, &w) != NGX_OK)
    {
        return NGX_DECLINED;
    }

    b = ngx_create_temp_buf(r->pool, w.n + 1);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    w.p = b->last;
    w.n = 0;
    (void) ngx_http_llm_format_body(llcf->format, kind, fc, &w);

    b->last = w.p;
    *b->last++ = '\n';

    return ngx_http_llm_send_buf(r, status, b);
}


/* the whole response: one JSON document (taken) and a newline */

ngx_int_t
ngx_http_llm_send_json(ngx_http_request_t *r, ngx_uint_t status, json_t *o)
{
    char       *json;
    size_t      len;
    ngx_buf_t  *b;

    if (o == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json = json_dumps(o, NGX_HTTP_LLM_JSON_DUMP);
    json_decref(o);

    if (json == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = ngx_strlen(json);

    b = ngx_create_temp_buf(r->pool, len + 1);
    if (b == NULL) {
        free(json);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_cpymem(b->last, json, len);
    *b->last++ = '\n';
    free(json);

    return ngx_http_llm_send_buf(r, status, b);
}


static ngx_int_t
ngx_http_llm_send_buf(ngx_http_request_t *r, ngx_uint_t status, ngx_buf_t *b)
{
    ngx_int_t    rc;
    ngx_chain_t  out;

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = status;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/*
 * "<job>:<seq>" from the Last-Event-ID header or, for clients that cannot
 * set headers, the last_event_id argument.  NGX_DECLINED: none given.
 */

ngx_int_t
ngx_http_llm_last_event_id(ngx_http_request_t *r, ngx_str_t *id,
    ngx_uint_t *seq)
{
    u_char           *colon, *dst, *src;
    ngx_int_t         n;
    ngx_str_t         v;
    ngx_table_elt_t  *h;

    h = ngx_http_llm_header(r, "Last-Event-ID", sizeof("Last-Event-ID") - 1,
                            NULL);

    if (h) {
        v = h->value;

    } else if (ngx_http_arg(r, (u_char *) "last_event_id",
                            sizeof("last_event_id") - 1, &v)
               == NGX_OK)
    {
        /* ':' may come escaped */
        dst = ngx_pnalloc(r->pool, v.len);
        if (dst == NULL) {
            return NGX_ERROR;
        }

        src = v.data;
        v.data = dst;
        ngx_unescape_uri(&dst, &src, v.len, 0);
        v.len = dst - v.data;

    } else {
        return NGX_DECLINED;
    }

    if (v.len == 0) {
        return NGX_DECLINED;
    }

    colon = ngx_strlchr(v.data, v.data + v.len, ':');

    id->data = v.data;
    id->len = colon ? (size_t) (colon - v.data) : v.len;

    if (!ngx_http_llm_valid_id(id)) {
        return NGX_ERROR;
    }

    if (colon == NULL) {
        *seq = 0;
        return NGX_OK;
    }

    n = ngx_atoi(colon + 1, v.data + v.len - colon - 1);
    if (n == NGX_ERROR) {
        return NGX_ERROR;
    }

    *seq = n;

    return NGX_OK;
}


/* the SHA-1 of llm_job_owner's value; NGX_DECLINED: no owner */

ngx_int_t
ngx_http_llm_owner(ngx_http_request_t *r, u_char *hash)
{
    ngx_str_t                 v;
    ngx_sha1_t                sha1;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    if (llcf->job_owner == NULL) {
        return NGX_DECLINED;
    }

    if (ngx_http_complex_value(r, llcf->job_owner, &v) != NGX_OK) {
        return NGX_ERROR;
    }

    if (v.len == 0) {
        return NGX_DECLINED;
    }

    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, v.data, v.len);
    ngx_sha1_final(hash, &sha1);

    return NGX_OK;
}


ngx_uint_t
ngx_http_llm_valid_id(ngx_str_t *id)
{
    u_char      c;
    ngx_uint_t  i;

    if (id->len != NGX_HTTP_LLM_JOB_ID_LEN) {
        return 0;
    }

    for (i = 0; i < id->len; i++) {
        c = id->data[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9') || c == '-' || c == '_'))
        {
            return 0;
        }
    }

    return 1;
}


/* a generation streams unless the client wants JSON and not a stream */

ngx_uint_t
ngx_http_llm_accepts_stream(ngx_http_request_t *r)
{
    return ngx_http_llm_asks_stream(r)
           || !ngx_http_llm_accepts(r, "application/json");
}


/* a job is JSON unless the client asks for a stream, as EventSource does */

ngx_uint_t
ngx_http_llm_asks_stream(ngx_http_request_t *r)
{
    return ngx_http_llm_accepts(r, "text/event-stream");
}


/* asked to run in the background: the "respond-async" preference */

ngx_uint_t
ngx_http_llm_prefers_async(ngx_http_request_t *r)
{
    u_char           *p, *end;
    ngx_str_t         name, params;
    ngx_table_elt_t  *h;

    for (h = ngx_http_llm_header(r, "Prefer", sizeof("Prefer") - 1, NULL);
         h;
         h = ngx_http_llm_header(r, "Prefer", sizeof("Prefer") - 1, h))
    {
        p = h->value.data;
        end = p + h->value.len;

        while (ngx_http_llm_list_next(&p, end, &name, &params) == NGX_OK) {
            if (name.len == sizeof("respond-async") - 1
                && ngx_strncasecmp(name.data, (u_char *) "respond-async",
                                   name.len)
                   == 0)
            {
                return 1;
            }
        }
    }

    return 0;
}


/* the body's media type, parameters aside, is "type" */

ngx_uint_t
ngx_http_llm_content_type_is(ngx_http_request_t *r, const char *type)
{
    u_char     *p, *end;
    size_t      len;
    ngx_str_t   name, params;

    if (r->headers_in.content_type == NULL) {
        return 0;
    }

    p = r->headers_in.content_type->value.data;
    end = p + r->headers_in.content_type->value.len;
    len = ngx_strlen(type);

    return ngx_http_llm_list_next(&p, end, &name, &params) == NGX_OK
           && name.len == len
           && ngx_strncasecmp(name.data, (u_char *) type, len) == 0;
}


/* a parameter of the body's media type (boundary=...), unquoted */

ngx_int_t
ngx_http_llm_content_type_param(ngx_http_request_t *r, const char *param,
    ngx_str_t *value)
{
    u_char     *p, *end;
    ngx_str_t   name, params;

    if (r->headers_in.content_type == NULL) {
        return NGX_DECLINED;
    }

    p = r->headers_in.content_type->value.data;
    end = p + r->headers_in.content_type->value.len;

    if (ngx_http_llm_list_next(&p, end, &name, &params) != NGX_OK) {
        return NGX_DECLINED;
    }

    return ngx_http_llm_param(r->pool, &params, param, value);
}


/*
 * A parameter in "; a=b; c="d"" (a media type's, a Content-Disposition's):
 * its value, where it is, or unquoted into "pool" when it has backslash
 * escapes (what it is read from is never changed).  NGX_DECLINED: not
 * there; NGX_ERROR: no memory.
 */

ngx_int_t
ngx_http_llm_param(ngx_pool_t *pool, ngx_str_t *params, const char *param,
    ngx_str_t *value)
{
    u_char  *p, *end, *start, *q;
    size_t   len;

    p = params->data;
    end = p + params->len;
    len = ngx_strlen(param);

    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ';')) {
            p++;
        }

        start = p;

        while (p < end && *p != '=' && *p != ';') {
            p++;
        }

        if (p < end && *p == '=' && (size_t) (p - start) == len
            && ngx_strncasecmp(start, (u_char *) param, len) == 0)
        {
            p++;

            if (p < end && *p == '"') {
                start = ++p;
                p = ngx_http_llm_skip_quoted(p - 1, end);
                len = p - start - (p[-1] == '"' && p > start);

                if (ngx_strlchr(start, start + len, '\\') == NULL) {
                    value->data = start;
                    value->len = len;
                    return NGX_OK;
                }

                value->data = ngx_pnalloc(pool, len);
                if (value->data == NULL) {
                    return NGX_ERROR;
                }

                for (q = value->data, p = start; p < start + len; p++) {
                    if (*p == '\\' && p + 1 < start + len) {
                        p++;
                    }

                    *q++ = *p;
                }

                value->len = q - value->data;
                return NGX_OK;
            }

            value->data = p;

            while (p < end && *p != ';' && *p != ' ' && *p != '\t') {
                p++;
            }

            value->len = p - value->data;
            return NGX_OK;
        }

        while (p < end && *p != ';') {
            p = (*p == '"') ? ngx_http_llm_skip_quoted(p, end) : p + 1;
        }
    }

    return NGX_DECLINED;
}


/* Accept names the media type with a weight above 0 */

static ngx_uint_t
ngx_http_llm_accepts(ngx_http_request_t *r, const char *type)
{
    u_char           *p, *end;
    size_t            len;
    ngx_str_t         name, params;
    ngx_table_elt_t  *h;

    len = ngx_strlen(type);

    for (h = ngx_http_llm_header(r, "Accept", sizeof("Accept") - 1, NULL);
         h;
         h = ngx_http_llm_header(r, "Accept", sizeof("Accept") - 1, h))
    {
        p = h->value.data;
        end = p + h->value.len;

        while (ngx_http_llm_list_next(&p, end, &name, &params) == NGX_OK) {
            if (name.len == len
                && ngx_strncasecmp(name.data, (u_char *) type, len) == 0
                && !ngx_http_llm_q_zero(&params))
            {
                return 1;
            }
        }
    }

    return 0;
}


/* the first request header named so after "after", or NULL */

static ngx_table_elt_t *
ngx_http_llm_header(ngx_http_request_t *r, const char *name, size_t len,
    ngx_table_elt_t *after)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NULL;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (after) {
            if (&h[i] == after) {
                after = NULL;
            }

            continue;
        }

        if (h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, (u_char *) name, len) == 0)
        {
            return &h[i];
        }
    }
}


/*
 * The next element of a comma-separated list: its name (a token, or a
 * media type "type/subtype"; a preference's "=value" is not part of it)
 * and its parameters (after the first ';', unparsed).  Empty elements are
 * skipped; quoted strings may hold commas.  NGX_DONE: no more elements.
 */

static ngx_int_t
ngx_http_llm_list_next(u_char **pos, u_char *end, ngx_str_t *name,
    ngx_str_t *params)
{
    u_char  *p, *start;

    p = *pos;

    for ( ;; ) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ',')) {
            p++;
        }

        if (p == end) {
            *pos = p;
            return NGX_DONE;
        }

        start = p;

        while (p < end && *p != ',' && *p != ';' && *p != '='
               && *p != ' ' && *p != '\t')
        {
            p++;
        }

        name->data = start;
        name->len = p - start;

        /* the rest of the element: a value, parameters */

        params->data = NULL;
        params->len = 0;

        while (p < end && *p != ',') {
            if (*p == ';' && params->data == NULL) {
                params->data = p + 1;
            }

            p = (*p == '"') ? ngx_http_llm_skip_quoted(p, end) : p + 1;
        }

        if (params->data) {
            params->len = p - params->data;
        }

        *pos = p;

        if (name->len) {
            return NGX_OK;
        }
    }
}


/* parameters with "q=0", "q=0.0" and so on: not acceptable */

static ngx_uint_t
ngx_http_llm_q_zero(ngx_str_t *params)
{
    u_char  *p, *end;

    p = params->data;
    end = p + params->len;

    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ';')) {
            p++;
        }

        if (end - p >= 2 && (*p == 'q' || *p == 'Q') && p[1] == '=') {
            p += 2;

            if (p == end || *p != '0') {
                return 0;
            }

            p++;

            if (p < end && *p == '.') {
                p++;

                while (p < end && *p == '0') {
                    p++;
                }
            }

            return p == end || *p == ' ' || *p == '\t' || *p == ';';
        }

        while (p < end && *p != ';') {
            p = (*p == '"') ? ngx_http_llm_skip_quoted(p, end) : p + 1;
        }
    }

    return 0;
}


/* past a quoted string that starts at p, with its backslash escapes */

static u_char *
ngx_http_llm_skip_quoted(u_char *p, u_char *end)
{
    for (p++; p < end; p++) {
        if (*p == '\\') {
            if (++p == end) {
                break;
            }

            continue;
        }

        if (*p == '"') {
            return p + 1;
        }
    }

    return end;
}
