
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * Request inputs: the fields of a JSON object or form body, and the query
 * arguments, seen through the $llm_input_NAME variables, so that one
 * configuration serves EventSource (GET) and fetch (POST) clients alike.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "ngx_http_llm_module.h"


static ngx_int_t ngx_http_llm_input_json(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, u_char *p, size_t len, ngx_str_t *err);
static ngx_int_t ngx_http_llm_input_form(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, u_char *p, size_t len, ngx_str_t *err);
static ngx_int_t ngx_http_llm_input_unescape(ngx_pool_t *pool,
    u_char *p, size_t len, ngx_str_t *out);


ngx_int_t
ngx_http_llm_input_parse(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_str_t *err)
{
    u_char       *p;
    size_t        len;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    ctx->inputs = ngx_array_create(r->pool, 4, sizeof(ngx_http_llm_input_t));
    if (ctx->inputs == NULL) {
        ngx_str_set(err, "out of memory");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        if (cl->buf->in_file) {
            ngx_str_set(err, "the body is larger than "
                             "client_body_buffer_size");
            return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
        }

        len += ngx_buf_size(cl->buf);
    }

    if (len == 0) {
        return NGX_OK;
    }

    b = r->request_body->bufs->buf;

    if (r->request_body->bufs->next == NULL) {
        p = b->pos;

    } else {
        p = ngx_pnalloc(r->pool, len);
        if (p == NULL) {
            ngx_str_set(err, "out of memory");
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        len = 0;
        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            ngx_memcpy(p + len, cl->buf->pos, ngx_buf_size(cl->buf));
            len += ngx_buf_size(cl->buf);
        }
    }

    if (ngx_http_llm_content_type_is(r, "application/json")) {
        return ngx_http_llm_input_json(r, ctx, p, len, err);
    }

    return ngx_http_llm_input_form(r, ctx, p, len, err);
}


static ngx_int_t
ngx_http_llm_input_json(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    u_char *p, size_t len, ngx_str_t *err)
{
    char                  *s;
    size_t                 n;
    json_t                *root, *v;
    const char            *key;
    json_error_t           jerr;
    ngx_http_llm_input_t  *in;

    root = json_loadb((char *) p, len, 0, &jerr);

    if (root == NULL || !json_is_object(root)) {
        err->data = ngx_pnalloc(r->pool, JSON_ERROR_TEXT_LENGTH + 64);
        if (err->data == NULL) {
            ngx_str_set(err, "malformed JSON");

        } else if (root == NULL) {
            err->len = ngx_sprintf(err->data, "malformed JSON: %s at %d",
                                   jerr.text, jerr.position)
                       - err->data;

        } else {
            err->len = ngx_sprintf(err->data, "the body must be a JSON "
                                   "object") - err->data;
        }

        json_decref(root);
        return NGX_HTTP_BAD_REQUEST;
    }

    json_object_foreach(root, key, v) {

        if (json_is_null(v)) {
            continue;
        }

        in = ngx_array_push(ctx->inputs);
        if (in == NULL) {
            goto nomem;
        }

        in->name.len = ngx_strlen(key);
        in->name.data = (u_char *) key;
        in->name.data = ngx_pstrdup(r->pool, &in->name);

        if (in->name.data == NULL) {
            goto nomem;
        }

        if (json_is_string(v)) {
            n = json_string_length(v);
            s = (char *) json_string_value(v);

            in->value.data = ngx_pnalloc(r->pool, n);
            if (in->value.data == NULL) {
                goto nomem;
            }

            ngx_memcpy(in->value.data, s, n);
            in->value.len = n;

        } else {
            /* numbers, booleans, arrays and objects as their JSON text */
            s = json_dumps(v, JSON_COMPACT|JSON_ENCODE_ANY);
            if (s == NULL) {
                goto nomem;
            }

            in->value.len = ngx_strlen(s);
            in->value.data = ngx_pnalloc(r->pool, in->value.len);
            if (in->value.data == NULL) {
                free(s);
                goto nomem;
            }

            ngx_memcpy(in->value.data, s, in->value.len);
            free(s);
        }
    }

    json_decref(root);

    return NGX_OK;

nomem:

    json_decref(root);
    ngx_str_set(err, "out of memory");

    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}


static ngx_int_t
ngx_http_llm_input_form(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    u_char *p, size_t len, ngx_str_t *err)
{
    u_char                *last, *amp, *eq;
    ngx_http_llm_input_t  *in;

    last = p + len;

    while (p < last) {
        amp = ngx_strlchr(p, last, '&');
        if (amp == NULL) {
            amp = last;
        }

        eq = ngx_strlchr(p, amp, '=');

        if (amp > p) {
            in = ngx_array_push(ctx->inputs);

            if (in == NULL
                || ngx_http_llm_input_unescape(r->pool, p,
                                               (eq ? eq : amp) - p,
                                               &in->name)
                   != NGX_OK
                || ngx_http_llm_input_unescape(r->pool, eq ? eq + 1 : amp,
                                               eq ? amp - eq - 1 : 0,
                                               &in->value)
                   != NGX_OK)
            {
                ngx_str_set(err, "out of memory");
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }
        }

        p = amp + 1;
    }

    return NGX_OK;
}


/* form encoding: '+' is a space, then %XX escapes */

static ngx_int_t
ngx_http_llm_input_unescape(ngx_pool_t *pool, u_char *p, size_t len,
    ngx_str_t *out)
{
    u_char  *src, *dst, *tmp;
    size_t   i;

    tmp = ngx_pnalloc(pool, len);
    if (tmp == NULL && len) {
        return NGX_ERROR;
    }

    for (i = 0; i < len; i++) {
        tmp[i] = (p[i] == '+') ? ' ' : p[i];
    }

    src = tmp;
    dst = tmp;
    ngx_unescape_uri(&dst, &src, len, 0);

    out->data = tmp;
    out->len = dst - tmp;

    return NGX_OK;
}


ngx_int_t
ngx_http_llm_input_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t *var = (ngx_str_t *) data;

    ngx_str_t              name, value, arg;
    ngx_uint_t             i;
    ngx_http_llm_ctx_t    *ctx;
    ngx_http_llm_input_t  *in;

    name.data = var->data + sizeof("llm_input_") - 1;
    name.len = var->len - (sizeof("llm_input_") - 1);

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx && ctx->inputs) {
        in = ctx->inputs->elts;

        for (i = 0; i < ctx->inputs->nelts; i++) {
            if (in[i].name.len == name.len
                && ngx_strncasecmp(in[i].name.data, name.data, name.len) == 0)
            {
                value = in[i].value;
                goto found;
            }
        }
    }

    if (ngx_http_arg(r, name.data, name.len, &arg) != NGX_OK) {
        v->not_found = 1;
        return NGX_OK;
    }

    if (ngx_http_llm_input_unescape(r->pool, arg.data, arg.len, &value)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

found:

    v->data = value.data;
    v->len = value.len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}
