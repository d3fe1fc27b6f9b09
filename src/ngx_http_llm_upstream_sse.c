
/*
 * Copyright (C) ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_provider.h"


static ngx_int_t ngx_http_llm_usse_line(ngx_http_llm_usse_t *p, u_char *line,
    size_t len, ngx_http_llm_usse_handler_pt handler, void *ctx);
static ngx_int_t ngx_http_llm_usse_dispatch(ngx_http_llm_usse_t *p,
    ngx_http_llm_usse_handler_pt handler, void *ctx);
static ngx_int_t ngx_http_llm_usse_append(u_char **buf, size_t *len,
    size_t *cap, u_char *src, size_t n);


ngx_int_t
ngx_http_llm_usse_feed(ngx_http_llm_usse_t *p, u_char *buf, size_t len,
    ngx_http_llm_usse_handler_pt handler, void *ctx)
{
    u_char     *pos, *end, *q, *line;
    size_t      n;
    ngx_int_t   rc;

    static u_char  bom[] = "\xef\xbb\xbf";

    pos = buf;
    end = buf + len;

    /* the BOM may arrive split: its bytes wait in the line buffer */

    while (!p->bom_checked && pos < end) {

        if (*pos != bom[p->line_len]) {
            p->bom_checked = 1;
            break;
        }

        if (ngx_http_llm_usse_append(&p->line, &p->line_len, &p->line_cap,
                                     pos, 1)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        pos++;

        if (p->line_len == sizeof(bom) - 1) {
            p->line_len = 0;
            p->bom_checked = 1;
        }
    }

    while (pos < end) {

        /* the LF of a CRLF split from its CR by the previous buffer */

        if (p->last_cr) {
            p->last_cr = 0;

            if (*pos == LF) {
                pos++;
                continue;
            }
        }

        for (q = pos; q < end && *q != LF && *q != CR; q++) {
            /* void */
        }

        if (q == end) {
            return ngx_http_llm_usse_append(&p->line, &p->line_len,
                                            &p->line_cap, pos, end - pos);
        }

        if (p->line_len) {
            if (ngx_http_llm_usse_append(&p->line, &p->line_len,
                                         &p->line_cap, pos, q - pos)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            line = p->line;
            n = p->line_len;
            p->line_len = 0;

        } else {
            /* a line complete in the buffer is parsed in place */

            if ((size_t) (q - pos) > NGX_HTTP_LLM_LINE_MAX) {
                return NGX_ERROR;
            }

            line = pos;
            n = q - pos;
        }

        p->last_cr = (*q == CR);
        pos = q + 1;

        rc = ngx_http_llm_usse_line(p, line, n, handler, ctx);
        if (rc != NGX_OK) {
            return rc;
        }
    }

    return NGX_OK;
}


void
ngx_http_llm_usse_free(ngx_http_llm_usse_t *p)
{
    free(p->line);
    free(p->data);

    ngx_memzero(p, sizeof(ngx_http_llm_usse_t));
}


static ngx_int_t
ngx_http_llm_usse_line(ngx_http_llm_usse_t *p, u_char *line, size_t len,
    ngx_http_llm_usse_handler_pt handler, void *ctx)
{
    u_char  *colon, *value, *end;
    size_t   name;

    if (len == 0) {
        return ngx_http_llm_usse_dispatch(p, handler, ctx);
    }

    if (line[0] == ':') {
        return NGX_OK;
    }

    end = line + len;
    colon = memchr(line, ':', len);

    if (colon) {
        name = colon - line;
        value = colon + 1;

        if (value < end && *value == ' ') {
            value++;
        }

    } else {
        name = len;
        value = end;
    }

    if (ngx_http_llm_str_is(line, name, "data")) {

        if (p->has_data
            && ngx_http_llm_usse_append(&p->data, &p->data_len, &p->data_cap,
                                        (u_char *) "\n", 1)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        p->has_data = 1;

        return ngx_http_llm_usse_append(&p->data, &p->data_len, &p->data_cap,
                                        value, end - value);
    }

    if (ngx_http_llm_str_is(line, name, "event")) {
        p->event_len = ngx_min((size_t) (end - value), sizeof(p->event) - 1);
        ngx_memcpy(p->event, value, p->event_len);
    }

    /* "id" and "retry" mean nothing to a single request; others are unknown */

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_usse_dispatch(ngx_http_llm_usse_t *p,
    ngx_http_llm_usse_handler_pt handler, void *ctx)
{
    ngx_int_t  rc;
    ngx_str_t  event, data;

    if (!p->has_data) {
        p->event_len = 0;
        return NGX_OK;
    }

    event.data = p->event;
    event.len = p->event_len;

    /* "data:" alone leaves the buffer unallocated */
    data.data = p->data ? p->data : (u_char *) "";
    data.len = p->data_len;

    rc = handler(ctx, &event, &data);

    p->event_len = 0;
    p->data_len = 0;
    p->has_data = 0;

    return rc;
}


static ngx_int_t
ngx_http_llm_usse_append(u_char **buf, size_t *len, size_t *cap, u_char *src,
    size_t n)
{
    u_char  *nbuf;
    size_t   size;

    if (n > NGX_HTTP_LLM_LINE_MAX - *len) {
        return NGX_ERROR;
    }

    if (*len + n > *cap) {
        /* an event of a stream is some 200 bytes: the buffer lives as long */
        size = *cap ? *cap : 256;

        while (size < *len + n) {
            size *= 2;
        }

        size = ngx_min(size, NGX_HTTP_LLM_LINE_MAX);

        nbuf = realloc(*buf, size);
        if (nbuf == NULL) {
            return NGX_ERROR;
        }

        *buf = nbuf;
        *cap = size;
    }

    if (n) {
        ngx_memcpy(*buf + *len, src, n);
        *len += n;
    }

    return NGX_OK;
}
