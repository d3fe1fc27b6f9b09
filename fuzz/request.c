
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * Request headers as the module reads them: Accept (a stream or JSON),
 * Prefer (respond-async), Content-Type, Last-Event-ID and the
 * last_event_id argument with the job id in them.  The input: the query
 * on the first line, then "Name: value" lines.
 */


#include "ngx_http_llm_fuzz.h"
#include "ngx_http_llm_module.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char              *p, *next, *colon, *value;
    size_t               len;
    ngx_str_t            id;
    ngx_uint_t           seq;
    ngx_pool_t          *pool;
    ngx_http_request_t  *r;

    pool = ngx_http_llm_fuzz_pool();
    if (pool == NULL) {
        return 0;
    }

    r = ngx_http_llm_fuzz_request(pool);
    if (r == NULL) {
        goto done;
    }

    next = ngx_http_llm_fuzz_split((u_char *) data, size, '\n', &len);

    /* the query in a copy of its own; none: { 0, NULL }, as in nginx */

    if (len) {
        r->args.data = ngx_pnalloc(pool, len);
        if (r->args.data == NULL) {
            goto done;
        }

        r->args.len = len;
        ngx_memcpy(r->args.data, data, len);
    }

    while (next) {
        p = next;
        next = ngx_http_llm_fuzz_split(p, size - (p - data), '\n', &len);

        colon = ngx_strlchr(p, p + len, ':');
        if (colon == NULL) {
            continue;
        }

        for (value = colon + 1; value < p + len && *value == ' '; value++) {
            /* void */
        }

        if (ngx_http_llm_fuzz_header(r, p, colon - p, value,
                                     p + len - value)
            != NGX_OK)
        {
            goto done;
        }
    }

    (void) ngx_http_llm_accepts_stream(r);
    (void) ngx_http_llm_asks_stream(r);
    (void) ngx_http_llm_prefers_async(r);
    (void) ngx_http_llm_content_type_is(r, "application/json");
    (void) ngx_http_llm_content_type_is(r,
                                        "application/x-www-form-urlencoded");

    if (ngx_http_llm_last_event_id(r, &id, &seq) == NGX_OK
        && !ngx_http_llm_valid_id(&id))
    {
        fprintf(stderr, "request: an invalid job id \"%.*s\" taken\n",
                (int) id.len, id.data);
        abort();
    }

    /* the query as a job id, as the job API takes it from a variable */

    (void) ngx_http_llm_valid_id(&r->args);

done:

    ngx_destroy_pool(pool);

    return 0;
}
