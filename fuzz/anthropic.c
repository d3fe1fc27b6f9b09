
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/* An Anthropic Messages stream, its end and an error body. */


#include "ngx_http_llm_fuzz.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ngx_http_llm_fuzz_provider(&ngx_http_llm_anthropic, data, size);

    return 0;
}
