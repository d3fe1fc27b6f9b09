
/*
 * Copyright (C) ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_PIPELINE_H_INCLUDED_
#define _NGX_HTTP_LLM_PIPELINE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_template.h"


/*
 * Pipelines: named, ordered steps defined in http{} with
 * "llm_pipeline NAME { step NAME { ... } ... }" and run by the locations
 * that say "llm_pipeline NAME;" (docs/pipelines.md).
 */


/* the lines of an llm_pipeline block: a context of its own */
#define NGX_HTTP_LLM_PIPELINE_CONF    0x00800000


/* what a failed check does */
#define NGX_HTTP_LLM_ON_FAIL_FAIL     -1    /* the pipeline fails */
#define NGX_HTTP_LLM_ON_FAIL_STOP     -2    /* it ends well, stopped early */
                                            /* >= 0: the step to go to */

typedef enum {
    NGX_HTTP_LLM_CMP_EQ = 0,
    NGX_HTTP_LLM_CMP_NE,
    NGX_HTTP_LLM_CMP_GE,
    NGX_HTTP_LLM_CMP_GT,
    NGX_HTTP_LLM_CMP_LE,
    NGX_HTTP_LLM_CMP_LT
} ngx_http_llm_cmp_e;


typedef struct {
    ngx_str_t                      field;       /* "a.b" in the output */
    ngx_http_llm_cmp_e             cmp;
    json_t                        *value;
    ngx_int_t                      on_fail;
    ngx_uint_t                     attempts;    /* of the step gone to */
    unsigned                       exhausted_stop:1;  /* then: a success */
} ngx_http_llm_check_t;


typedef struct {
    ngx_str_t                      name;
    ngx_uint_t                     index;

    /* unset (empty, NULL, NGX_CONF_UNSET*): the location's */
    ngx_str_t                      pass;
    const ngx_http_llm_provider_t *provider;
    ngx_str_t                      model;
    ngx_str_t                      api_key;
    ngx_http_llm_tpl_t            *system;
    ngx_http_llm_tpl_t            *prompt;
    ngx_uint_t                     max_tokens;
    ngx_msec_t                     connect_timeout;
    ngx_msec_t                     first_token_timeout;
    ngx_msec_t                     idle_timeout;
    ngx_msec_t                     timeout;

    ngx_str_t                      stage;
    ngx_http_llm_tpl_t            *message;
    ngx_int_t                      progress;    /* at its start, percent */
    ngx_uint_t                     weight;
    size_t                         preview;

    ngx_array_t                    checks;      /* ngx_http_llm_check_t */

    /* run once per element of this JSON array */
    ngx_http_llm_tpl_t            *foreach;
    ngx_msec_t                     delay;       /* between iterations */

    unsigned                       json:1;      /* output json */
    unsigned                       stream:1;    /* deltas to the client */
} ngx_http_llm_step_conf_t;


struct ngx_http_llm_pipeline_conf_s {
    ngx_str_t                      name;
    ngx_array_t                    steps;       /* ngx_http_llm_step_conf_t */
};


/* what a step's templates see when it starts */
typedef struct {
    json_t                        *inputs;      /* the request's, an object */
    json_t                        *outputs;     /* step name: its output */
    json_t                        *feedback;    /* what a check sent back */
    json_t                        *item;        /* of a "foreach" */
    ngx_uint_t                     index;       /* 1-based */
    ngx_uint_t                     count;
    ngx_uint_t                     attempt;     /* 1-based */
} ngx_http_llm_step_env_t;


/*
 * How a running pipeline hands its results up to the job that runs it
 * (given to ngx_http_llm_pipeline_start(); all on the event loop).  A
 * callback that returns NGX_ERROR has failed the job: the pipeline stops.
 *
 *   text   text of a step that streams (the job's deltas);
 *   event  a step_start, step, check, progress, paused or resumed
 *          event, its payload JSON (one object, docs/pipelines.md lists
 *          the fields);
 *   state  the run's state as JSON, to keep with the job: written to the
 *          store before the next step starts, it is what GET on the job
 *          location shows and what a continuation starts from;
 *   end    the last call: COMPLETED, FAILED or CANCELLED, with the outcome
 *          (copied by the job).
 */
typedef struct {
    void                          *data;
    ngx_int_t                    (*text)(void *data, u_char *p, size_t len);
    ngx_int_t                    (*event)(void *data,
                                          ngx_http_llm_event_type_e type,
                                          u_char *payload, size_t len);
    ngx_int_t                    (*state)(void *data, u_char *json,
                                          size_t len);
    void                         (*end)(void *data,
                                        ngx_http_llm_state_e state,
                                        ngx_http_llm_outcome_t *oc);
} ngx_http_llm_pipeline_up_t;


/* what a run takes from the location that started it */
typedef struct {
    ngx_thread_pool_t             *pool;
    ngx_str_t                      pass;
    const ngx_http_llm_provider_t *provider;
    ngx_str_t                      model;
    ngx_str_t                      system;
    ngx_str_t                      api_key;
    ngx_uint_t                     max_tokens;
    ngx_msec_t                     connect_timeout;
    ngx_msec_t                     first_token_timeout;
    ngx_msec_t                     idle_timeout;
    ngx_msec_t                     timeout;
    ngx_flag_t                     ssl_verify;
} ngx_http_llm_run_conf_t;


/* ngx_http_llm_jobapi.c */
ngx_int_t ngx_http_llm_run_conf(ngx_http_request_t *r,
    ngx_http_llm_loc_conf_t *llcf, ngx_http_llm_run_conf_t *rc);


/* ngx_http_llm_pipeline.c */
ngx_http_llm_run_t *ngx_http_llm_pipeline_run(
    ngx_http_llm_pipeline_conf_t *conf, ngx_http_llm_run_conf_t *rc,
    json_t *inputs, ngx_log_t *log);
ngx_http_llm_run_t *ngx_http_llm_pipeline_continue(
    ngx_http_llm_pipeline_conf_t *conf, ngx_http_llm_run_conf_t *rc,
    json_t *state, ngx_log_t *log);
ngx_int_t ngx_http_llm_pipeline_start(ngx_http_llm_run_t *run,
    ngx_http_llm_pipeline_up_t *up);
void ngx_http_llm_pipeline_cancel(ngx_http_llm_run_t *run);
void ngx_http_llm_pipeline_stop(ngx_http_llm_run_t *run);
void ngx_http_llm_pipeline_pause(ngx_http_llm_run_t *run, ngx_uint_t on);
void ngx_http_llm_pipeline_free(ngx_http_llm_run_t *run);
void ngx_http_llm_pipeline_exit(ngx_http_llm_run_t *run);


/* ngx_http_llm_pipeline_conf.c */
char *ngx_http_llm_pipeline_block(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_llm_pipeline_step(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_llm_pipeline_choose(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_llm_pipeline_merge(ngx_conf_t *cf,
    ngx_http_llm_loc_conf_t *llcf);


/* ngx_http_llm_pipeline_vars.c */
extern ngx_http_llm_var_t  ngx_http_llm_step_vars[];


#endif /* _NGX_HTTP_LLM_PIPELINE_H_INCLUDED_ */
