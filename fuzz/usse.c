
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * The upstream SSE parser: the events of a stream fed whole must be the
 * events of the same stream fed in pieces (the parser's promise: any
 * split of the input); an event named "stop" ends the stream.
 */


#include "ngx_http_llm_fuzz.h"


typedef struct {
    u_char     *p;          /* "event\0data\0" for each event */
    size_t      len;
    size_t      cap;
    ngx_uint_t  events;
    ngx_int_t   rc;
} ngx_http_llm_fuzz_events_t;


static void ngx_http_llm_fuzz_feed(const uint8_t *data, size_t size,
    uint32_t seed, ngx_http_llm_fuzz_events_t *evs);
static ngx_int_t ngx_http_llm_fuzz_record(void *ctx, ngx_str_t *event,
    ngx_str_t *data);
static ngx_int_t ngx_http_llm_fuzz_append(ngx_http_llm_fuzz_events_t *evs,
    ngx_str_t *s);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ngx_http_llm_fuzz_events_t  whole, split;

    ngx_http_llm_fuzz_feed(data, size, 0, &whole);
    ngx_http_llm_fuzz_feed(data, size, size + 1, &split);

    if (whole.rc != split.rc || whole.events != split.events
        || whole.len != split.len
        || (whole.len && ngx_memcmp(whole.p, split.p, whole.len) != 0))
    {
        fprintf(stderr, "usse: fed whole: rc %d, %u events; in pieces: "
                "rc %d, %u events\n", (int) whole.rc,
                (unsigned) whole.events, (int) split.rc,
                (unsigned) split.events);
        abort();
    }

    free(whole.p);
    free(split.p);

    return 0;
}


/* seed 0: at once; else pieces of 1 to 16 bytes */

static void
ngx_http_llm_fuzz_feed(const uint8_t *data, size_t size, uint32_t seed,
    ngx_http_llm_fuzz_events_t *evs)
{
    size_t               off, n;
    ngx_http_llm_usse_t  parser;

    ngx_memzero(evs, sizeof(ngx_http_llm_fuzz_events_t));
    ngx_memzero(&parser, sizeof(ngx_http_llm_usse_t));

    evs->rc = NGX_OK;

    for (off = 0; off < size && evs->rc == NGX_OK; off += n) {
        n = size - off;

        if (seed) {
            seed = seed * 1103515245 + 12345;
            n = ngx_min(n, 1 + (seed >> 16) % 16);
        }

        evs->rc = ngx_http_llm_usse_feed(&parser, (u_char *) data + off, n,
                                         ngx_http_llm_fuzz_record, evs);
    }

    ngx_http_llm_usse_free(&parser);
}


static ngx_int_t
ngx_http_llm_fuzz_record(void *ctx, ngx_str_t *event, ngx_str_t *data)
{
    ngx_http_llm_fuzz_events_t *evs = ctx;

    evs->events++;

    if (ngx_http_llm_fuzz_append(evs, event) != NGX_OK
        || ngx_http_llm_fuzz_append(evs, data) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_llm_str_is(event->data, event->len, "stop")
           ? NGX_DONE : NGX_OK;
}


static ngx_int_t
ngx_http_llm_fuzz_append(ngx_http_llm_fuzz_events_t *evs, ngx_str_t *s)
{
    u_char  *p;
    size_t   cap;

    if (evs->len + s->len + 1 > evs->cap) {
        cap = ngx_max(2 * evs->cap, evs->len + s->len + 1);

        p = realloc(evs->p, cap);
        if (p == NULL) {
            return NGX_ERROR;
        }

        evs->p = p;
        evs->cap = cap;
    }

    if (s->len) {
        ngx_memcpy(evs->p + evs->len, s->data, s->len);
    }

    evs->len += s->len;
    evs->p[evs->len++] = '\0';

    return NGX_OK;
}
