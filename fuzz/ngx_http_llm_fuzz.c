
/*
 * Copyright (C) ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_fuzz.h"


int LLVMFuzzerInitialize(int *argc, char ***argv);
const char *__asan_default_options(void);

static void ngx_http_llm_fuzz_text(void *data, u_char *p, size_t len);
static void ngx_http_llm_fuzz_finish(void *data, u_char *reason, size_t len);
static void ngx_http_llm_fuzz_usage(void *data, ngx_int_t input,
    ngx_int_t output);
static void ngx_http_llm_fuzz_fail(void *data, const char *code, u_char *msg,
    size_t len);
static ngx_int_t ngx_http_llm_fuzz_event(void *ctx, ngx_str_t *event,
    ngx_str_t *data);


ngx_log_t                ngx_http_llm_fuzz_log;
static ngx_open_file_t   ngx_http_llm_fuzz_file;

/* a sum of what the sink was given, so that no read is optimised away */
static volatile u_char   ngx_http_llm_fuzz_sum;


typedef struct {
    const ngx_http_llm_provider_t  *prov;
    void                           *state;
    ngx_http_llm_sink_t             sink;
} ngx_http_llm_fuzz_run_t;


/*
 * hiredis allocates what a reply's header announces ("*1000000000" is an
 * array of that many pointers): an allocation above 512 MB fails, as it
 * may on a real machine, instead of stopping the fuzzer (its limit is
 * 2 GB), so that what the module does then is tested.
 */

const char *
__asan_default_options(void)
{
    return "allocator_may_return_null=1:max_allocation_size_mb=512";
}


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ngx_pagesize = getpagesize();
    ngx_cacheline_size = NGX_CPU_CACHE_LINE;

    for (ngx_pagesize_shift = 0;
         (ngx_uint_t) (1 << ngx_pagesize_shift) < ngx_pagesize;
         ngx_pagesize_shift++)
    {
        /* void */
    }

    ngx_time_init();

    /* no configuration is read: the module's index in r->ctx, loc_conf */

    ngx_http_llm_module.ctx_index = 0;

    /* messages are formatted, as in a worker, but go nowhere */

    ngx_use_stderr = 0;
    ngx_http_llm_fuzz_file.fd = open("/dev/null", O_WRONLY);
    ngx_http_llm_fuzz_log.file = &ngx_http_llm_fuzz_file;
    ngx_http_llm_fuzz_log.log_level = NGX_LOG_DEBUG_ALL;

    return ngx_http_llm_fuzz_file.fd == NGX_INVALID_FILE;
}


ngx_pool_t *
ngx_http_llm_fuzz_pool(void)
{
    return ngx_create_pool(NGX_DEFAULT_POOL_SIZE, &ngx_http_llm_fuzz_log);
}


ngx_http_request_t *
ngx_http_llm_fuzz_request(ngx_pool_t *pool)
{
    ngx_uint_t           n;
    ngx_http_request_t  *r;

    r = ngx_pcalloc(pool, sizeof(ngx_http_request_t));
    if (r == NULL) {
        return NULL;
    }

    r->pool = pool;
    r->main = r;

    n = ngx_http_llm_module.ctx_index + 1;

    r->ctx = ngx_pcalloc(pool, n * sizeof(void *));
    r->loc_conf = ngx_pcalloc(pool, n * sizeof(void *));
    if (r->ctx == NULL || r->loc_conf == NULL) {
        return NULL;
    }

    n = ngx_http_llm_module.ctx_index;

    r->loc_conf[n] = ngx_pcalloc(pool, sizeof(ngx_http_llm_loc_conf_t));
    if (r->loc_conf[n] == NULL) {
        return NULL;
    }

    if (ngx_list_init(&r->headers_in.headers, pool, 2,
                      sizeof(ngx_table_elt_t))
        != NGX_OK)
    {
        return NULL;
    }

    return r;
}


ngx_int_t
ngx_http_llm_fuzz_header(ngx_http_request_t *r, u_char *name,
    size_t name_len, u_char *value, size_t value_len)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_in.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    /* copies of their own, so that a read past one is seen */

    h->key.data = ngx_pnalloc(r->pool, name_len + 1);
    h->value.data = ngx_pnalloc(r->pool, value_len + 1);
    if (h->key.data == NULL || h->value.data == NULL) {
        return NGX_ERROR;
    }

    *ngx_cpymem(h->key.data, name, name_len) = '\0';
    *ngx_cpymem(h->value.data, value, value_len) = '\0';
    h->key.len = name_len;
    h->value.len = value_len;
    h->hash = 1;

    if (name_len == sizeof("Content-Type") - 1
        && ngx_strncasecmp(name, (u_char *) "Content-Type", name_len) == 0)
    {
        r->headers_in.content_type = h;
    }

    return NGX_OK;
}


u_char *
ngx_http_llm_fuzz_split(u_char *data, size_t size, u_char sep, size_t *len)
{
    u_char  *p;

    p = ngx_strlchr(data, data + size, sep);

    if (p == NULL) {
        *len = size;
        return NULL;
    }

    *len = p - data;

    return p + 1;
}


void
ngx_http_llm_fuzz_sink(ngx_http_llm_sink_t *sink)
{
    sink->text = ngx_http_llm_fuzz_text;
    sink->finish = ngx_http_llm_fuzz_finish;
    sink->usage = ngx_http_llm_fuzz_usage;
    sink->fail = ngx_http_llm_fuzz_fail;
    sink->data = NULL;
}


static void
ngx_http_llm_fuzz_text(void *data, u_char *p, size_t len)
{
    while (len--) {
        ngx_http_llm_fuzz_sum += *p++;
    }
}


static void
ngx_http_llm_fuzz_finish(void *data, u_char *reason, size_t len)
{
    ngx_http_llm_fuzz_text(data, reason, len);
}


static void
ngx_http_llm_fuzz_usage(void *data, ngx_int_t input, ngx_int_t output)
{
    ngx_http_llm_fuzz_sum += (u_char) (input + output);
}


static void
ngx_http_llm_fuzz_fail(void *data, const char *code, u_char *msg, size_t len)
{
    ngx_http_llm_fuzz_text(data, (u_char *) code, ngx_strlen(code));
    ngx_http_llm_fuzz_text(data, msg, len);
}


void
ngx_http_llm_fuzz_provider(const ngx_http_llm_provider_t *prov,
    const uint8_t *data, size_t size)
{
    u_char                   *body;
    size_t                    off, n, len;
    uint32_t                  seed;
    ngx_int_t                 rc;
    ngx_http_llm_usse_t       parser;
    ngx_http_llm_fuzz_run_t   run;

    run.prov = prov;
    run.state = calloc(1, prov->state_size);
    if (run.state == NULL) {
        return;
    }

    ngx_http_llm_fuzz_sink(&run.sink);
    ngx_memzero(&parser, sizeof(ngx_http_llm_usse_t));

    /* pieces of 1 to 64 bytes, as a network may cut them */

    seed = size;
    rc = NGX_OK;

    for (off = 0; off < size && rc == NGX_OK; off += n) {
        seed = seed * 1103515245 + 12345;
        n = ngx_min(size - off, 1 + (seed >> 16) % 64);

        rc = ngx_http_llm_usse_feed(&parser, (u_char *) data + off, n,
                                    ngx_http_llm_fuzz_event, &run);
    }

    if (rc == NGX_OK) {
        (void) prov->eof(run.state);
    }

    ngx_http_llm_usse_free(&parser);
    free(run.state);

    /* a non-2xx body, kept up to NGX_HTTP_LLM_ERRBODY_MAX as the engine */

    len = ngx_min(size, NGX_HTTP_LLM_ERRBODY_MAX);
    body = len ? malloc(len) : NULL;

    if (len && body == NULL) {
        return;
    }

    if (len) {
        ngx_memcpy(body, data, len);
    }

    prov->error(400 + size % 200, body, len, &run.sink);

    free(body);
}


static ngx_int_t
ngx_http_llm_fuzz_event(void *ctx, ngx_str_t *event, ngx_str_t *data)
{
    ngx_http_llm_fuzz_run_t *run = ctx;

    return run->prov->event(run->state, event, data, &run->sink);
}
