
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * A job that runs a pipeline instead of one transfer: the job's side of
 * ngx_http_llm_pipeline_up_t.  What the pipeline hands up becomes the
 * job's deltas, payload events, state and final event, saved and sent
 * like an engine's output.
 *
 * The job reaches the run's cancel and free through pointers set here,
 * so that job.c does not depend on the pipeline's code.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_pipeline.h"


static ngx_int_t ngx_http_llm_run_text(void *data, u_char *p, size_t len);
static ngx_int_t ngx_http_llm_run_event(void *data,
    ngx_http_llm_event_type_e type, u_char *payload, size_t len);
static ngx_int_t ngx_http_llm_run_state(void *data, u_char *json,
    size_t len);
static void ngx_http_llm_run_end(void *data, ngx_http_llm_state_e state,
    ngx_http_llm_outcome_t *oc);


/*
 * Takes the run: it is freed with the job.  NULL when the job cannot
 * start.  The pipeline calls nothing back from within its start.
 */

ngx_http_llm_job_t *
ngx_http_llm_job_start_run(ngx_http_llm_run_t *run,
    ngx_http_llm_job_opts_t *opts, ngx_log_t *log)
{
    ngx_http_llm_job_t          *job;
    ngx_http_llm_pipeline_up_t   up;

    job = ngx_http_llm_job_create(opts, log);
    if (job == NULL) {
        ngx_http_llm_pipeline_free(run);
        return NULL;
    }

    job->run = run;
    job->run_cancel = ngx_http_llm_pipeline_cancel;
    job->run_free = ngx_http_llm_pipeline_free;

    up.data = job;
    up.text = ngx_http_llm_run_text;
    up.event = ngx_http_llm_run_event;
    up.state = ngx_http_llm_run_state;
    up.end = ngx_http_llm_run_end;

    ngx_http_llm_job_save(job);

    if (ngx_http_llm_pipeline_start(run, &up) != NGX_OK) {
        /* the job ends failed, nobody watches it: it is freed, the run too */
        job->run_cancel = NULL;
        ngx_http_llm_job_fail(job, NGX_HTTP_LLM_E_INTERNAL,
                              "the pipeline cannot start");
        return NULL;
    }

    return job;
}


static ngx_int_t
ngx_http_llm_run_text(void *data, u_char *p, size_t len)
{
    return ngx_http_llm_job_text(data, p, len);
}


static ngx_int_t
ngx_http_llm_run_event(void *data, ngx_http_llm_event_type_e type,
    u_char *payload, size_t len)
{
    return ngx_http_llm_job_payload(data, type, payload, len);
}


static ngx_int_t
ngx_http_llm_run_state(void *data, u_char *json, size_t len)
{
    return ngx_http_llm_job_set_state(data, json, len);
}


static void
ngx_http_llm_run_end(void *data, ngx_http_llm_state_e state,
    ngx_http_llm_outcome_t *oc)
{
    ngx_http_llm_job_finish(data, state, oc);
}
