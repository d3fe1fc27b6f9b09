
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
 * so that job.c does not depend on the pipeline's code.  While the run
 * calls back, the job is held and the run is not cancelled from under
 * it: a callback that fails the job says so (NGX_ERROR), and a job that
 * is over is freed, with its run, only when the loop comes back.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_pipeline.h"


static ngx_int_t ngx_http_llm_job_go(ngx_http_llm_job_t *job,
    ngx_http_llm_run_t *run);
static ngx_int_t ngx_http_llm_run_text(void *data, u_char *p, size_t len);
static ngx_int_t ngx_http_llm_run_event(void *data,
    ngx_http_llm_event_type_e type, u_char *payload, size_t len);
static ngx_int_t ngx_http_llm_run_state(void *data, u_char *json,
    size_t len);
static void ngx_http_llm_run_end(void *data, ngx_http_llm_state_e state,
    ngx_http_llm_outcome_t *oc);
static void ngx_http_llm_run_enter(ngx_http_llm_job_t *job);
static void ngx_http_llm_run_leave(ngx_http_llm_job_t *job);


/*
 * Takes the run: it is freed with the job.  NULL when the job cannot
 * start (the job and the run are freed when the loop comes back).
 */

ngx_http_llm_job_t *
ngx_http_llm_job_start_run(ngx_http_llm_run_t *run,
    ngx_http_llm_job_opts_t *opts, ngx_log_t *log)
{
    ngx_http_llm_job_t  *job;

    job = ngx_http_llm_job_create(opts, log);
    if (job == NULL) {
        ngx_http_llm_pipeline_free(run);
        return NULL;
    }

    return (ngx_http_llm_job_go(job, run) == NGX_OK) ? job : NULL;
}


/*
 * A mirror whose worker is gone becomes the job again, here, with a run
 * that goes on from its first unfinished step (taken as above).
 */

ngx_int_t
ngx_http_llm_job_adopt_run(ngx_http_llm_job_t *job, ngx_http_llm_run_t *run,
    ngx_http_llm_job_opts_t *opts)
{
    ngx_http_llm_job_adopt(job, opts);

    /* a pause asked for before takes effect before the first call */

    if (job->pause) {
        ngx_http_llm_pipeline_pause(run, 1);
    }

    return ngx_http_llm_job_go(job, run);
}


static ngx_int_t
ngx_http_llm_job_go(ngx_http_llm_job_t *job, ngx_http_llm_run_t *run)
{
    ngx_int_t                    rc;
    ngx_http_llm_pipeline_up_t   up;

    job->run = run;
    job->run_cancel = ngx_http_llm_pipeline_stop;
    job->run_free = ngx_http_llm_pipeline_free;
    job->run_pause = ngx_http_llm_pipeline_pause;

    up.data = job;
    up.text = ngx_http_llm_run_text;
    up.event = ngx_http_llm_run_event;
    up.state = ngx_http_llm_run_state;
    up.end = ngx_http_llm_run_end;

    ngx_http_llm_job_save(job);

    ngx_http_llm_run_enter(job);

    rc = ngx_http_llm_pipeline_start(run, &up);

    if (rc != NGX_OK) {
        ngx_http_llm_job_fail(job, NGX_HTTP_LLM_E_INTERNAL,
                              "the pipeline cannot start");
    }

    ngx_http_llm_run_leave(job);

    return rc;
}


static ngx_int_t
ngx_http_llm_run_text(void *data, u_char *p, size_t len)
{
    ngx_http_llm_job_t *job = data;

    ngx_int_t  rc;

    ngx_http_llm_run_enter(job);
    rc = ngx_http_llm_job_text(job, p, len);
    ngx_http_llm_run_leave(job);

    return rc;
}


static ngx_int_t
ngx_http_llm_run_event(void *data, ngx_http_llm_event_type_e type,
    u_char *payload, size_t len)
{
    ngx_http_llm_job_t *job = data;

    ngx_int_t  rc;

    ngx_http_llm_run_enter(job);
    ngx_http_llm_metrics_run_event(job, type, payload, len);
    rc = ngx_http_llm_job_payload(job, type, payload, len);
    ngx_http_llm_run_leave(job);

    return rc;
}


static ngx_int_t
ngx_http_llm_run_state(void *data, u_char *json, size_t len)
{
    ngx_http_llm_job_t *job = data;

    ngx_int_t  rc;

    ngx_http_llm_run_enter(job);
    rc = ngx_http_llm_job_set_state(job, json, len);
    ngx_http_llm_run_leave(job);

    return rc;
}


static void
ngx_http_llm_run_end(void *data, ngx_http_llm_state_e state,
    ngx_http_llm_outcome_t *oc)
{
    ngx_http_llm_job_t *job = data;

    ngx_http_llm_run_enter(job);
    ngx_http_llm_job_finish(job, state, oc);
    ngx_http_llm_run_leave(job);
}


static void
ngx_http_llm_run_enter(ngx_http_llm_job_t *job)
{
    ngx_http_llm_job_hold(job);
    job->run_calls++;
}


static void
ngx_http_llm_run_leave(ngx_http_llm_job_t *job)
{
    job->run_calls--;
    ngx_http_llm_job_unhold_later(job);
}
