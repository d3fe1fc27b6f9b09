
/*
 * Copyright (C) ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_PIPELINE_RUN_H_INCLUDED_
#define _NGX_HTTP_LLM_PIPELINE_RUN_H_INCLUDED_


/* a run of a pipeline, shared by the files of the step machine only */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_pipeline.h"
#include "ngx_http_llm_store.h"


#define NGX_HTTP_LLM_STEP_TEXT_MAX   (4 * 1024 * 1024)


struct ngx_http_llm_run_s {
    ngx_http_llm_pipeline_conf_t  *conf;
    ngx_http_llm_run_conf_t        rc;
    ngx_http_llm_pipeline_up_t     up;
    ngx_log_t                     *log;

    ngx_http_llm_step_env_t        env;
    json_t                        *state;       /* handed up as JSON */
    json_t                        *items;       /* of the step's foreach */
    json_t                        *outputs;     /* of its iterations */
    json_t                        *resume;      /* outputs done before */
    ngx_uint_t                    *attempts;    /* runs of each step */
    ngx_int_t                     *step_input_tokens;   /* -1: unknown */
    ngx_int_t                     *step_output_tokens;

    ngx_uint_t                     step;
    ngx_uint_t                     iteration;   /* 0-based */

    ngx_http_llm_xfer_t           *xfer;        /* the step's transfer */
    u_char                        *text;        /* the step's output */
    size_t                         text_len;
    size_t                         text_cap;

    int64_t                        started;     /* ms since the epoch */
    int64_t                        step_started;
    ngx_int_t                      input_tokens;
    ngx_int_t                      output_tokens;
    ngx_event_t                    delay;       /* between iterations */

    unsigned                       running:1;   /* started, not ended */
    unsigned                       pause:1;     /* asked for */
    unsigned                       paused:1;    /* waiting to resume */
};


/* ngx_http_llm_pipeline.c */
void ngx_http_llm_run_end(ngx_http_llm_run_t *run, ngx_http_llm_state_e state,
    const char *code, const char *fmt, ...);

/* ngx_http_llm_pipeline_check.c */
ngx_int_t ngx_http_llm_run_check(ngx_http_llm_run_t *run,
    ngx_http_llm_step_conf_t *step, json_t *output, json_t *result);
json_t *ngx_http_llm_run_json(u_char *text, size_t len);

/* ngx_http_llm_pipeline_report.c */
ngx_int_t ngx_http_llm_run_event(ngx_http_llm_run_t *run,
    ngx_http_llm_event_type_e type, json_t *payload);
ngx_int_t ngx_http_llm_run_progress(ngx_http_llm_run_t *run,
    json_t *message);
ngx_int_t ngx_http_llm_run_paused(ngx_http_llm_run_t *run,
    ngx_http_llm_event_type_e type);
ngx_int_t ngx_http_llm_run_state(ngx_http_llm_run_t *run,
    const char *step_state, json_t *output);
json_t *ngx_http_llm_run_usage(ngx_int_t in, ngx_int_t out);


#endif /* _NGX_HTTP_LLM_PIPELINE_RUN_H_INCLUDED_ */
