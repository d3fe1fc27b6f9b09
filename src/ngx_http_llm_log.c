
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * Variables for the access log: what a request of the module did, read
 * when the line is written from the job the request started or followed
 * (a request holds its job until it is freed, after the log phase).  A
 * request that started a background job logs "accepted" and its job id:
 * the job goes on after the line is written.  A stream that follows a
 * job another worker runs (a mirror) knows its outcome and tokens, not
 * the timings and attempts, which only the running worker has.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_format.h"
#include "ngx_http_llm_store.h"


typedef enum {
    NGX_HTTP_LLM_LOG_OUTCOME = 0,
    NGX_HTTP_LLM_LOG_TOKENS_IN,
    NGX_HTTP_LLM_LOG_TOKENS_OUT,
    NGX_HTTP_LLM_LOG_TTFT,
    NGX_HTTP_LLM_LOG_TIME,
    NGX_HTTP_LLM_LOG_STATUS,
    NGX_HTTP_LLM_LOG_ATTEMPTS,
    NGX_HTTP_LLM_LOG_STEPS
} ngx_http_llm_log_e;


static ngx_int_t ngx_http_llm_log_model(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_log_provider(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_log_resumed(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_log_job(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_log_outcome(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_http_variable_value_t *v);
static ngx_int_t ngx_http_llm_log_set(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, u_char *p, size_t len);


static ngx_http_variable_t  ngx_http_llm_log_vars[] = {

    { ngx_string("llm_model"), NULL, ngx_http_llm_log_model,
      0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_provider"), NULL, ngx_http_llm_log_provider,
      0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_resumed"), NULL, ngx_http_llm_log_resumed,
      0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_outcome"), NULL, ngx_http_llm_log_job,
      NGX_HTTP_LLM_LOG_OUTCOME, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_tokens_in"), NULL, ngx_http_llm_log_job,
      NGX_HTTP_LLM_LOG_TOKENS_IN, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_tokens_out"), NULL, ngx_http_llm_log_job,
      NGX_HTTP_LLM_LOG_TOKENS_OUT, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_ttft"), NULL, ngx_http_llm_log_job,
      NGX_HTTP_LLM_LOG_TTFT, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_generation_time"), NULL, ngx_http_llm_log_job,
      NGX_HTTP_LLM_LOG_TIME, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_upstream_status"), NULL, ngx_http_llm_log_job,
      NGX_HTTP_LLM_LOG_STATUS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_attempts"), NULL, ngx_http_llm_log_job,
      NGX_HTTP_LLM_LOG_ATTEMPTS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_steps"), NULL, ngx_http_llm_log_job,
      NGX_HTTP_LLM_LOG_STEPS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


ngx_int_t
ngx_http_llm_log_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_llm_log_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


/* the location's llm_model, as the formats evaluate it for the stream */

static ngx_int_t
ngx_http_llm_log_model(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    ngx_str_t               model;
    ngx_http_llm_ctx_t     *ctx;
    ngx_http_llm_fmt_ctx_t  fc;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_memzero(&fc, sizeof(ngx_http_llm_fmt_ctx_t));
    fc.request = r;
    fc.model = &ctx->model;

    if (ngx_http_llm_format_model(&fc, &model) != NGX_OK || model.len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    return ngx_http_llm_log_set(r, v, model.data, model.len);
}


static ngx_int_t
ngx_http_llm_log_provider(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    ngx_http_llm_ctx_t       *ctx;
    ngx_http_llm_loc_conf_t  *llcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);
    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    /* a location that generates, or continues pipelines */

    if (ctx == NULL || (llcf->pass == NULL && llcf->pipeline == NULL)) {
        v->not_found = 1;
        return NGX_OK;
    }

    return ngx_http_llm_log_set(r, v, (u_char *) llcf->provider->name,
                                ngx_strlen(llcf->provider->name));
}


static ngx_int_t
ngx_http_llm_log_resumed(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL || ctx->id[0] == '\0') {
        v->not_found = 1;
        return NGX_OK;
    }

    return ngx_http_llm_log_set(r, v, (u_char *) (ctx->resumed ? "1" : "0"),
                                1);
}


static ngx_int_t
ngx_http_llm_log_job(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    u_char              *p;
    int64_t              ms;
    ngx_int_t            n;
    ngx_http_llm_ctx_t  *ctx;
    ngx_http_llm_job_t  *job;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL || ctx->id[0] == '\0') {
        v->not_found = 1;
        return NGX_OK;
    }

    if (data == NGX_HTTP_LLM_LOG_OUTCOME) {
        return ngx_http_llm_log_outcome(r, ctx, v);
    }

    job = ctx->job;

    if (job == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    n = -1;
    ms = -1;

    switch (data) {

    case NGX_HTTP_LLM_LOG_TOKENS_IN:
        n = job->outcome.input_tokens;
        break;

    case NGX_HTTP_LLM_LOG_TOKENS_OUT:
        n = job->outcome.output_tokens;
        break;

    case NGX_HTTP_LLM_LOG_TTFT:
        ms = job->stats.first ? job->stats.first - job->created : -1;
        break;

    case NGX_HTTP_LLM_LOG_TIME:
        if (!job->mirror) {
            ms = (job->finished ? job->finished : ngx_http_llm_now_ms())
                 - job->created;
        }

        break;

    case NGX_HTTP_LLM_LOG_STATUS:
        n = job->stats.status ? (ngx_int_t) job->stats.status : -1;
        break;

    case NGX_HTTP_LLM_LOG_ATTEMPTS:
        /* an engine job makes one upstream request, a pipeline one a try */
        n = job->mirror ? -1 : job->run ? (ngx_int_t) job->stats.attempts
                                        : 1;
        break;

    default: /* NGX_HTTP_LLM_LOG_STEPS */
        n = (job->mirror || job->run == NULL) ? -1
                                              : (ngx_int_t) job->stats.steps;
    }

    if (n < 0 && ms < 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN + 4);
    if (p == NULL) {
        return NGX_ERROR;
    }

    /* seconds with millisecond resolution */

    v->len = (n >= 0) ? ngx_sprintf(p, "%i", n) - p
                      : ngx_sprintf(p, "%L.%03L", ms / 1000, ms % 1000) - p;
    v->data = p;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


/*
 * completed, failed:CODE, cancelled; disconnected: the client left while
 * the job ran; accepted: a background job, running after the answer (a
 * POST answered 202 without following its job).  Nothing for the other
 * requests of a job location (JSON, DELETE).
 */

static ngx_int_t
ngx_http_llm_log_outcome(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_variable_value_t *v)
{
    u_char              *p;
    ngx_http_llm_job_t  *job;

    job = ctx->job;

    if (job == NULL) {
        if (r->method != NGX_HTTP_POST
            || r->headers_out.status != NGX_HTTP_ACCEPTED)
        {
            v->not_found = 1;
            return NGX_OK;
        }

        return ngx_http_llm_log_set(r, v, (u_char *) "accepted",
                                    sizeof("accepted") - 1);
    }

    switch (job->state) {

    case NGX_HTTP_LLM_RUNNING:
        return ngx_http_llm_log_set(r, v, (u_char *) "disconnected",
                                    sizeof("disconnected") - 1);

    case NGX_HTTP_LLM_COMPLETED:
        return ngx_http_llm_log_set(r, v, (u_char *) "completed",
                                    sizeof("completed") - 1);

    case NGX_HTTP_LLM_CANCELLED:
        return ngx_http_llm_log_set(r, v, (u_char *) "cancelled",
                                    sizeof("cancelled") - 1);

    default: /* NGX_HTTP_LLM_FAILED */
        break;
    }

    p = ngx_pnalloc(r->pool, sizeof("failed:") - 1 + job->outcome.code_len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->len = ngx_sprintf(p, "failed:%*s", job->outcome.code_len,
                         job->outcome.code)
             - p;
    v->data = p;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_log_set(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    u_char *p, size_t len)
{
    v->data = p;
    v->len = len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}
