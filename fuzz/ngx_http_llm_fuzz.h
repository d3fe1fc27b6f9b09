
/*
 * Copyright (C) ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_FUZZ_H_INCLUDED_
#define _NGX_HTTP_LLM_FUZZ_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_provider.h"


/*
 * What the fuzz targets (fuzz/TARGET.c, util/fuzz.sh) share: nginx's globals
 * set up once, a log that formats every message into /dev/null, pools,
 * a request as far as the module's parsers look at it, and a sink that
 * reads every byte it is given.
 */


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

extern ngx_log_t  ngx_http_llm_fuzz_log;

ngx_pool_t *ngx_http_llm_fuzz_pool(void);

/* headers_in.headers, args, main, loc_conf and ctx of the module */
ngx_http_request_t *ngx_http_llm_fuzz_request(ngx_pool_t *pool);
ngx_int_t ngx_http_llm_fuzz_header(ngx_http_request_t *r, u_char *name,
    size_t name_len, u_char *value, size_t value_len);

/* splits "data" at the first "sep": the rest after it, or NULL */
u_char *ngx_http_llm_fuzz_split(u_char *data, size_t size, u_char sep,
    size_t *len);

/* a sink whose callbacks read all that they are given */
void ngx_http_llm_fuzz_sink(ngx_http_llm_sink_t *sink);

/*
 * Feeds a stream to a provider the way the engine does: through the
 * upstream SSE parser in pieces, then eof() unless it ended; and the
 * whole input as a non-2xx body to error().
 */
void ngx_http_llm_fuzz_provider(const ngx_http_llm_provider_t *prov,
    const uint8_t *data, size_t size);


#endif /* _NGX_HTTP_LLM_FUZZ_H_INCLUDED_ */
