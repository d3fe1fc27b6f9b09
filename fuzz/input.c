
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * Request inputs: a body (JSON, an OpenAI request, a form) and the query,
 * through $llm_input_NAME and the object of all inputs.  The input: a
 * byte of flags, the query up to the first newline, then the body.
 *
 *   flags & 3   Content-Type: 0 application/json, 1 form, 2 none,
 *               3 "Application/JSON; charset=utf-8"
 *   flags & 4   the location's format is "openai"
 *   flags & 8   the body in two buffers, cut at its middle
 */


#include "ngx_http_llm_fuzz.h"
#include "ngx_http_llm_module.h"
#include "ngx_http_llm_format.h"


static ngx_int_t ngx_http_llm_fuzz_body(ngx_http_request_t *r, u_char *p,
    size_t len, ngx_uint_t two);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                     *body, flags;
    size_t                      len, query_len;
    json_t                     *o;
    ngx_str_t                   err, name;
    ngx_pool_t                 *pool;
    ngx_http_request_t         *r;
    ngx_http_llm_ctx_t         *ctx;
    ngx_http_llm_input_t       *in;
    ngx_http_variable_value_t   v;
    ngx_http_llm_loc_conf_t    *llcf;
    static const char          *types[] = {
        "application/json", "application/x-www-form-urlencoded", NULL,
        "Application/JSON; charset=utf-8"
    };

    if (size == 0) {
        return 0;
    }

    flags = data[0];

    pool = ngx_http_llm_fuzz_pool();
    if (pool == NULL) {
        return 0;
    }

    r = ngx_http_llm_fuzz_request(pool);
    ctx = ngx_pcalloc(pool, sizeof(ngx_http_llm_ctx_t));
    if (r == NULL || ctx == NULL) {
        goto done;
    }

    ngx_http_set_ctx(r, ctx, ngx_http_llm_module);

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);
    llcf->format = (flags & 4) ? &ngx_http_llm_format_openai : NULL;

    body = ngx_http_llm_fuzz_split((u_char *) data + 1, size - 1, '\n',
                                   &query_len);

    /* the query in a copy of its own, as the body; none: { 0, NULL } */

    if (query_len) {
        r->args.data = ngx_pnalloc(pool, query_len);
        if (r->args.data == NULL) {
            goto done;
        }

        r->args.len = query_len;
        ngx_memcpy(r->args.data, data + 1, query_len);
    }

    if (types[flags & 3]
        && ngx_http_llm_fuzz_header(r, (u_char *) "Content-Type",
                                    sizeof("Content-Type") - 1,
                                    (u_char *) types[flags & 3],
                                    ngx_strlen(types[flags & 3]))
           != NGX_OK)
    {
        goto done;
    }

    if (body) {
        len = size - (body - data);

        if (ngx_http_llm_fuzz_body(r, body, len, flags & 8) != NGX_OK) {
            goto done;
        }
    }

    if (ngx_http_llm_input_parse(r, ctx, &err) != NGX_OK) {
        goto done;
    }

    o = ngx_http_llm_input_object(r, ctx);
    json_decref(o);

    /* $llm_input_NAME of the first input, or of "prompt" */

    in = ctx->inputs->nelts ? ctx->inputs->elts : NULL;

    name.len = sizeof("llm_input_") - 1 + (in ? in->name.len : 6);
    name.data = ngx_pnalloc(pool, name.len);
    if (name.data == NULL) {
        goto done;
    }

    ngx_memcpy(ngx_cpymem(name.data, "llm_input_", sizeof("llm_input_") - 1),
               in ? in->name.data : (u_char *) "prompt",
               in ? in->name.len : 6);

    ngx_memzero(&v, sizeof(ngx_http_variable_value_t));
    (void) ngx_http_llm_input_variable(r, &v, (uintptr_t) &name);

done:

    ngx_destroy_pool(pool);

    return 0;
}


static ngx_int_t
ngx_http_llm_fuzz_body(ngx_http_request_t *r, u_char *p, size_t len,
    ngx_uint_t two)
{
    size_t        n, part;
    ngx_buf_t    *b;
    ngx_chain_t  *cl, **ll;

    r->request_body = ngx_pcalloc(r->pool, sizeof(ngx_http_request_body_t));
    if (r->request_body == NULL) {
        return NGX_ERROR;
    }

    ll = &r->request_body->bufs;

    for (n = 0; n < len; n += part) {
        part = (two && n == 0 && len > 1) ? len / 2 : len - n;

        b = ngx_create_temp_buf(r->pool, part ? part : 1);
        cl = ngx_alloc_chain_link(r->pool);
        if (b == NULL || cl == NULL) {
            return NGX_ERROR;
        }

        b->last = ngx_cpymem(b->pos, p + n, part);
        cl->buf = b;
        cl->next = NULL;
        *ll = cl;
        ll = &cl->next;
    }

    return NGX_OK;
}
