
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * The content handler: checks the request, reads its body, resolves the
 * configured texts, starts a job and turns the request into its stream.
 * Everything that can be refused is refused here, as JSON, before the
 * stream starts.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_pipeline.h"
#include "ngx_http_llm_store.h"


static void ngx_http_llm_body_handler(ngx_http_request_t *r);
static void ngx_http_llm_begin(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
static ngx_int_t ngx_http_llm_spec(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_loc_conf_t *llcf,
    ngx_http_llm_spec_t *spec, ngx_str_t *err);
static ngx_int_t ngx_http_llm_run_make(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_loc_conf_t *llcf,
    ngx_http_llm_run_t **run, ngx_str_t *err);
static ngx_int_t ngx_http_llm_eval(ngx_http_request_t *r,
    ngx_http_complex_value_t *cv, ngx_str_t *value);


ngx_int_t
ngx_http_llm_handler(ngx_http_request_t *r)
{
    ngx_int_t            rc;
    ngx_str_t            msg;
    ngx_table_elt_t     *allow;
    ngx_http_llm_ctx_t  *ctx;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_POST))) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        allow = ngx_list_push(&r->headers_out.headers);
        if (allow == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        allow->hash = 1;
        ngx_str_set(&allow->key, "Allow");
        ngx_str_set(&allow->value, "GET, POST");

        ngx_str_set(&msg, "use GET (EventSource) or POST");
        return ngx_http_llm_send_json_error(r, NGX_HTTP_NOT_ALLOWED,
                                            "method_not_allowed", &msg);
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_llm_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->request = r;
    ngx_http_set_ctx(r, ctx, ngx_http_llm_module);

    if (r->method == NGX_HTTP_GET) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        r->main->count++;
        ngx_http_llm_begin(r, ctx);

        return NGX_DONE;
    }

    if (r->headers_in.content_length_n > 0 || r->headers_in.chunked) {

        if (!ngx_http_llm_content_type_is(r, "application/json")
            && !ngx_http_llm_content_type_is(r,
                                     "application/x-www-form-urlencoded")
            && !ngx_http_llm_content_type_is(r, "multipart/form-data"))
        {
            rc = ngx_http_discard_request_body(r);
            if (rc != NGX_OK) {
                return rc;
            }

            ngx_str_set(&msg, "the body must be application/json, "
                              "application/x-www-form-urlencoded or "
                              "multipart/form-data");
            return ngx_http_llm_send_json_error(r,
                                         NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                                         "unsupported_media_type", &msg);
        }
    }

    /* one buffer, so that the body can be parsed in place */
    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r, ngx_http_llm_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_llm_body_handler(ngx_http_request_t *r)
{
    ngx_int_t            rc;
    ngx_str_t            err;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    rc = ngx_http_llm_input_parse(r, ctx, &err);

    if (rc != NGX_OK) {
        ngx_http_finalize_request(r,
                        ngx_http_llm_send_json_error(r, rc,
                                  rc == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE
                                  ? "body_too_large"
                                  : rc == NGX_HTTP_BAD_REQUEST
                                  ? "invalid_body" : "internal",
                                  &err));
        return;
    }

    ngx_http_llm_begin(r, ctx);
}


/* holds one reference to the request: finalizes it on failure */

static void
ngx_http_llm_begin(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    u_char                    owner[NGX_HTTP_LLM_OWNER_LEN];
    ngx_int_t                 rc;
    ngx_str_t                 err, id;
    ngx_msec_t                retry_after;
    ngx_uint_t                seq;
    ngx_http_llm_run_t       *run;
    ngx_http_llm_job_t       *job;
    ngx_http_llm_spec_t       spec;
    ngx_http_llm_job_opts_t   opts;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    /* a reconnecting client follows its job instead of starting one */

    rc = ngx_http_llm_last_event_id(r, &id, &seq);

    if (rc == NGX_OK) {
        if (ngx_http_llm_resume(r, ctx, &id, seq) != NGX_OK) {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        }

        return;
    }

    if (rc == NGX_ERROR) {
        ngx_str_set(&err, "invalid Last-Event-ID");
        ngx_http_finalize_request(r,
                        ngx_http_llm_send_json_error(r, NGX_HTTP_BAD_REQUEST,
                                                     "invalid_request",
                                                     &err));
        return;
    }

    ngx_memzero(&spec, sizeof(ngx_http_llm_spec_t));
    ngx_http_llm_job_opts(r, &opts);
    run = NULL;

    rc = llcf->pipeline ? ngx_http_llm_run_make(r, ctx, llcf, &run, &err)
                        : ngx_http_llm_spec(r, ctx, llcf, &spec, &err);

    if (rc == NGX_OK) {
        rc = ngx_http_llm_owner(r, owner);

        if (rc == NGX_ERROR) {
            ngx_str_set(&err, "cannot evaluate llm_job_owner");
            rc = NGX_HTTP_INTERNAL_SERVER_ERROR;

        } else {
            opts.owner = (rc == NGX_OK) ? owner : NULL;
            rc = NGX_OK;
        }
    }

    if (rc == NGX_OK && ngx_http_llm_ctx_cleanup(r, ctx) != NGX_OK) {
        ngx_str_set(&err, "out of memory");
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_OK) {
        rc = ngx_http_llm_limit_acquire(r, llcf->limits, &opts.limits,
                                        &opts.nlimits, &retry_after);

        if (rc == NGX_BUSY) {
            ngx_http_llm_spec_free(&spec);

            if (run) {
                ngx_http_llm_pipeline_free(run);
            }

            ngx_http_finalize_request(r,
                                ngx_http_llm_limit_refuse(r, retry_after));
            return;
        }

        if (rc == NGX_ERROR) {
            ngx_str_set(&err, "cannot evaluate llm_limit_jobs");
            rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (rc != NGX_OK) {
        ngx_http_llm_spec_free(&spec);

        if (run) {
            ngx_http_llm_pipeline_free(run);
        }

        ngx_http_finalize_request(r,
                        ngx_http_llm_send_json_error(r, rc,
                                  rc == NGX_HTTP_BAD_REQUEST
                                  ? "invalid_request" : "internal",
                                  &err));
        return;
    }

    /* an engine job's text is bounded by its transfer, a pipeline's here */
    opts.max_text = run ? llcf->max_text : 0;
    opts.background = (r->method == NGX_HTTP_POST
                       && ngx_http_llm_prefers_async(r));

    job = run ? ngx_http_llm_job_start_run(run, &opts, r->connection->log)
              : ngx_http_llm_job_start(&spec, &opts, r->connection->log);

    if (job == NULL) {
        ngx_str_set(&err, "cannot start the generation");
        ngx_http_finalize_request(r,
                        ngx_http_llm_send_json_error(r,
                                  NGX_HTTP_SERVICE_UNAVAILABLE,
                                  "unavailable", &err));
        return;
    }

    ngx_http_llm_answer(r, ctx, job);
}


/* resolve the texts and build the upstream request */

static ngx_int_t
ngx_http_llm_spec(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_loc_conf_t *llcf, ngx_http_llm_spec_t *spec, ngx_str_t *err)
{
    ngx_int_t              rc;
    ngx_str_t              url;
    ngx_http_llm_params_t  params;

    ngx_memzero(&params, sizeof(ngx_http_llm_params_t));

    if (ngx_http_llm_eval(r, llcf->pass, &url) != NGX_OK
        || ngx_http_llm_eval(r, llcf->model, &params.model) != NGX_OK
        || ngx_http_llm_eval(r, llcf->system, &params.system) != NGX_OK
        || ngx_http_llm_eval(r, llcf->prompt, &params.prompt) != NGX_OK
        || ngx_http_llm_eval(r, llcf->api_key, &params.api_key) != NGX_OK)
    {
        ngx_str_set(err, "cannot evaluate the configuration");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    params.messages = ctx->messages;
    params.temperature = ctx->temperature;

    if (params.prompt.len == 0 && params.messages == NULL) {
        ngx_str_set(err, "the prompt is empty");
        return NGX_HTTP_BAD_REQUEST;
    }

    if (params.model.len == 0) {
        ngx_str_set(err, "the model is empty");
        return NGX_HTTP_BAD_REQUEST;
    }

    /* the location's llm_max_tokens bounds what a client asks for */

    params.max_tokens = llcf->max_tokens;

    if (ctx->max_tokens
        && (params.max_tokens == 0 || ctx->max_tokens < params.max_tokens))
    {
        params.max_tokens = ctx->max_tokens;
    }

    spec->provider = llcf->provider;
    spec->connect_timeout = llcf->connect_timeout;
    spec->first_token_timeout = llcf->first_token_timeout;
    spec->idle_timeout = llcf->idle_timeout;
    spec->timeout = llcf->timeout;
    spec->ssl_verify = llcf->ssl_verify;
    spec->max_text = llcf->max_text;

    rc = ngx_http_llm_spec_make(spec, &url, &params, err);

    if (rc != NGX_OK) {
        /* the reason only: the URL and the key may be secrets */
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "llm: %s",
                      rc == NGX_DECLINED
                      ? "invalid URL in \"llm_pass\": http:// or https:// "
                        "expected"
                      : rc == NGX_ABORT ? "invalid \"llm_api_key\" value"
                                        : "cannot build the upstream request");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_OK;
}


/*
 * A pipeline's run: what the location says, resolved for this request,
 * and the request's inputs, all copied: the steps run after it is gone.
 */

static ngx_int_t
ngx_http_llm_run_make(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_loc_conf_t *llcf, ngx_http_llm_run_t **run, ngx_str_t *err)
{
    json_t                   *inputs;
    ngx_http_llm_run_conf_t   rc;

    if (ngx_http_llm_run_conf(r, llcf, &rc) != NGX_OK) {
        ngx_str_set(err, "cannot evaluate the configuration");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    inputs = ngx_http_llm_input_object(r, ctx);
    if (inputs == NULL) {
        ngx_str_set(err, "out of memory");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *run = ngx_http_llm_pipeline_run(llcf->pipeline, &rc, inputs,
                                     ngx_cycle->log);
    if (*run == NULL) {
        ngx_str_set(err, "out of memory");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_eval(ngx_http_request_t *r, ngx_http_complex_value_t *cv,
    ngx_str_t *value)
{
    if (cv == NULL) {
        ngx_str_null(value);
        return NGX_OK;
    }

    return ngx_http_complex_value(r, cv, value);
}
