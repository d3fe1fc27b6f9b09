
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * The variables of a step's templates (prompt, system, message, foreach):
 * the request's inputs, the outputs of earlier steps, the attempt, the
 * feedback of a check, the element of an iteration.  They read an
 * ngx_http_llm_step_env_t, never a request: a step may start long after
 * the request that created the job has gone.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_pipeline.h"


static void ngx_http_llm_step_var_input(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_step_var_step(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_step_var_inputs(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_step_var_feedback(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_step_var_item(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_step_var_index(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_step_var_count(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_step_var_attempt(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_step_json(json_t *j, ngx_http_llm_value_t *v);


ngx_http_llm_var_t  ngx_http_llm_step_vars[] = {
    { ngx_string("llm_input_"), ngx_http_llm_step_var_input, 1, 1 },
    { ngx_string("llm_step_"), ngx_http_llm_step_var_step, 1, 1 },
    { ngx_string("llm_inputs"), ngx_http_llm_step_var_inputs, 1, 0 },
    { ngx_string("llm_feedback"), ngx_http_llm_step_var_feedback, 1, 0 },
    { ngx_string("llm_item"), ngx_http_llm_step_var_item, 1, 0 },
    { ngx_string("llm_index"), ngx_http_llm_step_var_index, 0, 0 },
    { ngx_string("llm_count"), ngx_http_llm_step_var_count, 0, 0 },
    { ngx_string("llm_attempt"), ngx_http_llm_step_var_attempt, 0, 0 },
    { ngx_null_string, NULL, 0, 0 }
};


static void
ngx_http_llm_step_var_input(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v)
{
    ngx_http_llm_step_env_t  *env = data;

    if (env->inputs) {
        ngx_http_llm_step_json(json_object_getn(env->inputs,
                                                (const char *) arg->data,
                                                arg->len),
                               v);
    }
}


static void
ngx_http_llm_step_var_step(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v)
{
    ngx_http_llm_step_env_t  *env = data;

    if (env->outputs) {
        ngx_http_llm_step_json(json_object_getn(env->outputs,
                                                (const char *) arg->data,
                                                arg->len),
                               v);
    }
}


static void
ngx_http_llm_step_var_inputs(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v)
{
    ngx_http_llm_step_env_t  *env = data;

    ngx_http_llm_step_json(env->inputs, v);
}


static void
ngx_http_llm_step_var_feedback(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v)
{
    ngx_http_llm_step_env_t  *env = data;

    ngx_http_llm_step_json(env->feedback, v);
}


static void
ngx_http_llm_step_var_item(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v)
{
    ngx_http_llm_step_env_t  *env = data;

    ngx_http_llm_step_json(env->item, v);
}


static void
ngx_http_llm_step_var_index(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v)
{
    ngx_http_llm_step_env_t  *env = data;

    if (env->count) {
        ngx_http_llm_value_number(v, env->index);
    }
}


static void
ngx_http_llm_step_var_count(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v)
{
    ngx_http_llm_step_env_t  *env = data;

    if (env->count) {
        ngx_http_llm_value_number(v, env->count);
    }
}


static void
ngx_http_llm_step_var_attempt(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v)
{
    ngx_http_llm_step_env_t  *env = data;

    ngx_http_llm_value_number(v, env->attempt);
}


/* a borrowed jansson value; the renderer releases its own reference */

static void
ngx_http_llm_step_json(json_t *j, ngx_http_llm_value_t *v)
{
    if (j == NULL || json_is_null(j)) {
        return;
    }

    v->type = NGX_HTTP_LLM_VAL_JSON;
    v->json = json_incref(j);
}
