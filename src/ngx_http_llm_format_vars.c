
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * The variables of format templates: what a job and one of its events
 * (or a refusal) offer to an event's JSON (docs/formats.md).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_format.h"


static void ngx_http_llm_var_job_id(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_event_id(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_seq(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_delta(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_text(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_finish(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_usage(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_input_tokens(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_output_tokens(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_total_tokens(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_error_code(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_error_message(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_status(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_state(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_success(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_time(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_time_ms(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_created(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_elapsed(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_model(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_payload(ngx_http_llm_fmt_ctx_t *fc,
    const char *field, ngx_http_llm_value_t *v);
static json_t *ngx_http_llm_var_state_json(ngx_http_llm_fmt_ctx_t *fc);
static void ngx_http_llm_var_outputs(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_attempts(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_inputs(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_by_step(ngx_http_llm_fmt_ctx_t *fc,
    const char *field, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_steps(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);
static void ngx_http_llm_var_stopped_at(void *data,
    ngx_str_t *arg, ngx_http_llm_value_t *v);


/*
 * The fields of a payload event's JSON: one getter per variable, each
 * reading one field (NULL: the whole payload).
 */

#define ngx_http_llm_payload_var(name, field)                                \
    static void                                                              \
    name(void *data, ngx_str_t *arg, ngx_http_llm_value_t *v)                \
    {                                                                        \
        ngx_http_llm_var_payload(data, field, v);                            \
    }

ngx_http_llm_payload_var(ngx_http_llm_var_event, NULL)
ngx_http_llm_payload_var(ngx_http_llm_var_step, "step")
ngx_http_llm_payload_var(ngx_http_llm_var_step_index, "index")
ngx_http_llm_payload_var(ngx_http_llm_var_steps_total, "total")
ngx_http_llm_payload_var(ngx_http_llm_var_stage, "stage")
ngx_http_llm_payload_var(ngx_http_llm_var_message, "message")
ngx_http_llm_payload_var(ngx_http_llm_var_progress, "progress")
ngx_http_llm_payload_var(ngx_http_llm_var_completed, "completed")
ngx_http_llm_payload_var(ngx_http_llm_var_eta, "eta")
ngx_http_llm_payload_var(ngx_http_llm_var_duration, "duration")
ngx_http_llm_payload_var(ngx_http_llm_var_output, "output")
ngx_http_llm_payload_var(ngx_http_llm_var_preview, "preview")
ngx_http_llm_payload_var(ngx_http_llm_var_attempt, "attempt")
ngx_http_llm_payload_var(ngx_http_llm_var_passed, "passed")
ngx_http_llm_payload_var(ngx_http_llm_var_iteration, "iteration")
ngx_http_llm_payload_var(ngx_http_llm_var_iterations, "iterations")
ngx_http_llm_payload_var(ngx_http_llm_var_item, "item")


ngx_http_llm_var_t  ngx_http_llm_format_vars[] = {
    { ngx_string("llm_job_id"), ngx_http_llm_var_job_id, 0, 0 },
    { ngx_string("llm_event_id"), ngx_http_llm_var_event_id, 0, 0 },
    { ngx_string("llm_seq"), ngx_http_llm_var_seq, 0, 0 },
    { ngx_string("llm_delta"), ngx_http_llm_var_delta, 0, 0 },
    { ngx_string("llm_text"), ngx_http_llm_var_text, 0, 0 },
    { ngx_string("llm_finish_reason"), ngx_http_llm_var_finish, 0, 0 },
    { ngx_string("llm_usage"), ngx_http_llm_var_usage, 1, 0 },
    { ngx_string("llm_input_tokens"), ngx_http_llm_var_input_tokens, 0, 0 },
    { ngx_string("llm_output_tokens"), ngx_http_llm_var_output_tokens, 0, 0 },
    { ngx_string("llm_total_tokens"), ngx_http_llm_var_total_tokens, 0, 0 },
    { ngx_string("llm_error_code"), ngx_http_llm_var_error_code, 0, 0 },
    { ngx_string("llm_error_message"), ngx_http_llm_var_error_message, 0, 0 },
    { ngx_string("llm_status"), ngx_http_llm_var_status, 0, 0 },
    { ngx_string("llm_state"), ngx_http_llm_var_state, 0, 0 },
    { ngx_string("llm_success"), ngx_http_llm_var_success, 0, 0 },
    { ngx_string("llm_time"), ngx_http_llm_var_time, 0, 0 },
    { ngx_string("llm_time_ms"), ngx_http_llm_var_time_ms, 0, 0 },
    { ngx_string("llm_created"), ngx_http_llm_var_created, 0, 0 },
    { ngx_string("llm_elapsed"), ngx_http_llm_var_elapsed, 0, 0 },
    { ngx_string("llm_model"), ngx_http_llm_var_model, 0, 0 },

    { ngx_string("llm_event"), ngx_http_llm_var_event, 1, 0 },
    { ngx_string("llm_step"), ngx_http_llm_var_step, 0, 0 },
    { ngx_string("llm_step_index"), ngx_http_llm_var_step_index, 0, 0 },
    { ngx_string("llm_steps_total"), ngx_http_llm_var_steps_total, 0, 0 },
    { ngx_string("llm_stage"), ngx_http_llm_var_stage, 0, 0 },
    { ngx_string("llm_message"), ngx_http_llm_var_message, 0, 0 },
    { ngx_string("llm_progress"), ngx_http_llm_var_progress, 0, 0 },
    { ngx_string("llm_completed"), ngx_http_llm_var_completed, 0, 0 },
    { ngx_string("llm_eta"), ngx_http_llm_var_eta, 0, 0 },
    { ngx_string("llm_duration"), ngx_http_llm_var_duration, 0, 0 },
    { ngx_string("llm_output"), ngx_http_llm_var_output, 1, 0 },
    { ngx_string("llm_preview"), ngx_http_llm_var_preview, 0, 0 },
    { ngx_string("llm_attempt"), ngx_http_llm_var_attempt, 0, 0 },
    { ngx_string("llm_passed"), ngx_http_llm_var_passed, 0, 0 },
    { ngx_string("llm_iteration"), ngx_http_llm_var_iteration, 0, 0 },
    { ngx_string("llm_iterations"), ngx_http_llm_var_iterations, 0, 0 },
    { ngx_string("llm_item"), ngx_http_llm_var_item, 1, 0 },
    { ngx_string("llm_outputs"), ngx_http_llm_var_outputs, 1, 0 },
    { ngx_string("llm_attempts"), ngx_http_llm_var_attempts, 1, 0 },
    { ngx_string("llm_inputs"), ngx_http_llm_var_inputs, 1, 0 },
    { ngx_string("llm_steps"), ngx_http_llm_var_steps, 0, 0 },
    { ngx_string("llm_stopped_at"), ngx_http_llm_var_stopped_at, 0, 0 },

    { ngx_null_string, NULL, 0, 0 }
};


static void
ngx_http_llm_var_job_id(void *data, ngx_str_t *arg, ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    if (fc->job) {
        v->type = NGX_HTTP_LLM_VAL_STR;
        v->data = fc->job->id;
        v->len = NGX_HTTP_LLM_JOB_ID_LEN;
    }
}


static void
ngx_http_llm_var_event_id(void *data, ngx_str_t *arg, ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    if (fc->job) {
        v->type = NGX_HTTP_LLM_VAL_STR;
        v->data = v->buf;
        v->len = ngx_sprintf(v->buf, "%*s:%ui",
                             (size_t) NGX_HTTP_LLM_JOB_ID_LEN, fc->job->id,
                             fc->last + 1)
                 - v->buf;
    }
}


static void
ngx_http_llm_var_seq(void *data, ngx_str_t *arg, ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    if (fc->job) {
        v->type = NGX_HTTP_LLM_VAL_RAW;
        v->data = v->buf;
        v->len = ngx_sprintf(v->buf, "%ui", fc->last + 1) - v->buf;
    }
}


static void
ngx_http_llm_var_delta(void *data, ngx_str_t *arg, ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    ngx_http_llm_event_t  *ev, *end;

    v->type = NGX_HTTP_LLM_VAL_STR;
    v->data = (u_char *) "";

    if (fc->job == NULL) {
        return;
    }

    ev = &fc->job->events[fc->first];
    end = &fc->job->events[fc->last];

    if (ev->type == NGX_HTTP_LLM_EV_DELTA) {
        v->data = fc->job->text + ev->off;
        v->len = end->off + end->len - ev->off;
    }
}


static void
ngx_http_llm_var_text(void *data, ngx_str_t *arg, ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    v->type = NGX_HTTP_LLM_VAL_STR;
    v->data = (u_char *) "";

    if (fc->job) {
        v->data = fc->job->text;
        v->len = fc->job->text_len;
    }
}


static void
ngx_http_llm_var_finish(void *data, ngx_str_t *arg, ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    if (fc->job && fc->job->outcome.finish_len) {
        v->type = NGX_HTTP_LLM_VAL_STR;
        v->data = fc->job->outcome.finish;
        v->len = fc->job->outcome.finish_len;
    }
}


static void
ngx_http_llm_var_usage(void *data, ngx_str_t *arg, ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    json_t              *o;
    ngx_http_llm_job_t  *job;

    job = fc->job;

    if (job == NULL
        || (job->outcome.input_tokens < 0 && job->outcome.output_tokens < 0))
    {
        return;
    }

    o = json_object();
    if (o == NULL) {
        return;
    }

    if (job->outcome.input_tokens >= 0) {
        json_object_set_new(o, "input_tokens",
                            json_integer(job->outcome.input_tokens));
    }

    if (job->outcome.output_tokens >= 0) {
        json_object_set_new(o, "output_tokens",
                            json_integer(job->outcome.output_tokens));
    }

    if (job->outcome.input_tokens >= 0 && job->outcome.output_tokens >= 0) {
        json_object_set_new(o, "total_tokens",
                            json_integer(job->outcome.input_tokens
                                         + job->outcome.output_tokens));
    }

    v->type = NGX_HTTP_LLM_VAL_JSON;
    v->json = o;
}


static void
ngx_http_llm_var_input_tokens(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    if (fc->job && fc->job->outcome.input_tokens >= 0) {
        ngx_http_llm_value_number(v, fc->job->outcome.input_tokens);
    }
}


static void
ngx_http_llm_var_output_tokens(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    if (fc->job && fc->job->outcome.output_tokens >= 0) {
        ngx_http_llm_value_number(v, fc->job->outcome.output_tokens);
    }
}


static void
ngx_http_llm_var_total_tokens(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    if (fc->job && fc->job->outcome.input_tokens >= 0
        && fc->job->outcome.output_tokens >= 0)
    {
        ngx_http_llm_value_number(v, (int64_t) fc->job->outcome.input_tokens
                                   + fc->job->outcome.output_tokens);
    }
}


static void
ngx_http_llm_var_error_code(void *data, ngx_str_t *arg, ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    if (fc->job == NULL) {
        v->type = NGX_HTTP_LLM_VAL_STR;
        v->data = fc->code.data;
        v->len = fc->code.len;

    } else if (fc->job->outcome.code_len) {
        v->type = NGX_HTTP_LLM_VAL_STR;
        v->data = fc->job->outcome.code;
        v->len = fc->job->outcome.code_len;
    }
}


static void
ngx_http_llm_var_error_message(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    if (fc->job == NULL) {
        v->type = NGX_HTTP_LLM_VAL_STR;
        v->data = fc->message.data;
        v->len = fc->message.len;

    } else if (fc->job->outcome.code_len) {
        v->type = NGX_HTTP_LLM_VAL_STR;
        v->data = fc->job->outcome.message ? fc->job->outcome.message
                                           : (u_char *) "";
        v->len = fc->job->outcome.message_len;
    }
}


static void
ngx_http_llm_var_status(void *data, ngx_str_t *arg, ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    if (fc->status) {
        ngx_http_llm_value_number(v, fc->status);
    }
}


static void
ngx_http_llm_var_state(void *data, ngx_str_t *arg, ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    static ngx_str_t  states[] = {
        ngx_string("running"),
        ngx_string("completed"),
        ngx_string("failed"),
        ngx_string("cancelled")
    };

    if (fc->job) {
        v->type = NGX_HTTP_LLM_VAL_STR;
        v->data = states[fc->job->state].data;
        v->len = states[fc->job->state].len;
    }
}


static void
ngx_http_llm_var_success(void *data, ngx_str_t *arg, ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    v->type = NGX_HTTP_LLM_VAL_RAW;

    if (fc->job && fc->job->state == NGX_HTTP_LLM_COMPLETED) {
        v->data = (u_char *) "true";
        v->len = 4;

    } else {
        v->data = (u_char *) "false";
        v->len = 5;
    }
}


/* an event's time: the job's start, its end, or now (the loop's clock) */

static int64_t
ngx_http_llm_event_time(ngx_http_llm_fmt_ctx_t *fc)
{
    ngx_time_t          *tp;
    ngx_http_llm_job_t  *job;

    job = fc->job;

    if (job) {
        switch (job->events[fc->first].type) {

        case NGX_HTTP_LLM_EV_START:
            return job->created;

        case NGX_HTTP_LLM_EV_COMPLETE:
        case NGX_HTTP_LLM_EV_ERROR:
            if (job->finished) {
                return job->finished;
            }
            break;

        default:
            break;
        }
    }

    tp = ngx_timeofday();

    return (int64_t) tp->sec * 1000 + tp->msec;
}


static void
ngx_http_llm_var_time(void *data, ngx_str_t *arg, ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    int64_t    ms;
    ngx_tm_t   tm;

    ms = ngx_http_llm_event_time(fc);
    ngx_gmtime((time_t) (ms / 1000), &tm);

    v->type = NGX_HTTP_LLM_VAL_STR;
    v->data = v->buf;
    v->len = ngx_sprintf(v->buf, "%4d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                         tm.ngx_tm_year, tm.ngx_tm_mon, tm.ngx_tm_mday,
                         tm.ngx_tm_hour, tm.ngx_tm_min, tm.ngx_tm_sec,
                         (int) (ms % 1000))
             - v->buf;
}


static void
ngx_http_llm_var_time_ms(void *data, ngx_str_t *arg, ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    ngx_http_llm_value_number(v, ngx_http_llm_event_time(fc));
}


static void
ngx_http_llm_var_created(void *data, ngx_str_t *arg, ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    ngx_time_t  *tp;

    if (fc->job) {
        ngx_http_llm_value_number(v, fc->job->created / 1000);
        return;
    }

    tp = ngx_timeofday();
    ngx_http_llm_value_number(v, tp->sec);
}


/* seconds from the job's start to the event, to the millisecond */

static void
ngx_http_llm_var_elapsed(void *data, ngx_str_t *arg, ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    int64_t  ms;

    if (fc->job == NULL) {
        return;
    }

    ms = ngx_http_llm_event_time(fc) - fc->job->created;

    if (ms < 0) {
        ms = 0;
    }

    v->type = NGX_HTTP_LLM_VAL_RAW;
    v->data = v->buf;
    v->len = ngx_sprintf(v->buf, "%L.%03L", ms / 1000, ms % 1000) - v->buf;
}


/* the model as this location names it, for the request being answered */

static void
ngx_http_llm_var_model(void *data, ngx_str_t *arg, ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    ngx_str_t  s;

    if (ngx_http_llm_format_model(fc, &s) != NGX_OK) {
        return;
    }

    v->type = NGX_HTTP_LLM_VAL_STR;
    v->data = s.data;
    v->len = s.len;
}


/*
 * A field of a payload event's JSON, parsed when a template asks for it
 * (payload events are few next to deltas); null in other events and when
 * the payload lacks the field.
 */

static void
ngx_http_llm_var_payload(ngx_http_llm_fmt_ctx_t *fc, const char *field,
    ngx_http_llm_value_t *v)
{
    json_t  *o, *f;

    o = ngx_http_llm_format_payload(fc);

    if (o == NULL) {
        return;
    }

    if (field == NULL) {
        v->type = NGX_HTTP_LLM_VAL_JSON;
        v->json = o;
        return;
    }

    f = json_object_get(o, field);

    if (f && !json_is_null(f)) {
        v->type = NGX_HTTP_LLM_VAL_JSON;
        v->json = json_incref(f);
    }

    json_decref(o);
}


/* the payload of the event rendered, parsed; NULL without one */

json_t *
ngx_http_llm_format_payload(ngx_http_llm_fmt_ctx_t *fc)
{
    json_t                *o;
    ngx_http_llm_event_t  *ev;

    if (fc->job == NULL) {
        return NULL;
    }

    ev = &fc->job->events[fc->first];

    if (!ngx_http_llm_event_payload(ev->type)) {
        return NULL;
    }

    o = json_loadb((char *) fc->job->meta + ev->off, ev->len, 0, NULL);

    if (!json_is_object(o)) {
        json_decref(o);
        return NULL;
    }

    return o;
}


/* the job's pipeline state, parsed; NULL without one */

static json_t *
ngx_http_llm_var_state_json(ngx_http_llm_fmt_ctx_t *fc)
{
    json_t  *o;

    if (fc->job == NULL || fc->job->pipeline_state == NULL) {
        return NULL;
    }

    o = json_loadb((char *) fc->job->pipeline_state,
                   fc->job->pipeline_state_len, 0, NULL);

    if (!json_is_object(o)) {
        json_decref(o);
        return NULL;
    }

    return o;
}


/* {"step name": its output, ...} of the steps that have one */

static void
ngx_http_llm_var_outputs(void *data, ngx_str_t *arg, ngx_http_llm_value_t *v)
{
    ngx_http_llm_var_by_step(data, "output", v);
}


static void
ngx_http_llm_var_attempts(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v)
{
    ngx_http_llm_var_by_step(data, "attempts", v);
}


/* one field of every step that has it, as an object by step name */

static void
ngx_http_llm_var_by_step(ngx_http_llm_fmt_ctx_t *fc, const char *field,
    ngx_http_llm_value_t *v)
{
    size_t   i;
    json_t  *st, *steps, *step, *name, *out, *o;

    st = ngx_http_llm_var_state_json(fc);
    if (st == NULL) {
        return;
    }

    o = json_object();
    steps = json_object_get(st, "steps");

    for (i = 0; o && i < json_array_size(steps); i++) {
        step = json_array_get(steps, i);
        name = json_object_get(step, "name");
        out = json_object_get(step, field);

        if (json_is_string(name) && out && !json_is_null(out)) {
            json_object_set(o, json_string_value(name), out);
        }
    }

    json_decref(st);

    if (o) {
        v->type = NGX_HTTP_LLM_VAL_JSON;
        v->json = o;
    }
}


static void
ngx_http_llm_var_steps(void *data, ngx_str_t *arg, ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    json_t  *st, *steps;

    st = ngx_http_llm_var_state_json(fc);
    if (st == NULL) {
        return;
    }

    steps = json_object_get(st, "steps");

    if (json_is_array(steps)) {
        v->type = NGX_HTTP_LLM_VAL_JSON;
        v->json = json_incref(steps);
    }

    json_decref(st);
}


/* a pipeline that ended well but early (a check's "stop") */

ngx_uint_t
ngx_http_llm_format_stopped(ngx_http_llm_fmt_ctx_t *fc)
{
    json_t      *st;
    ngx_uint_t   stopped;

    st = ngx_http_llm_var_state_json(fc);
    stopped = json_is_string(json_object_get(st, "stopped_at"));
    json_decref(st);

    return stopped;
}


/* a pipeline's inputs as its job keeps them (a continued run's too) */

static void
ngx_http_llm_var_inputs(void *data, ngx_str_t *arg, ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    json_t  *st, *in;

    st = ngx_http_llm_var_state_json(fc);
    if (st == NULL) {
        return;
    }

    in = json_object_get(st, "inputs");

    if (json_is_object(in)) {
        v->type = NGX_HTTP_LLM_VAL_JSON;
        v->json = json_incref(in);
    }

    json_decref(st);
}


static void
ngx_http_llm_var_stopped_at(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v)
{
    ngx_http_llm_fmt_ctx_t  *fc = data;

    json_t  *st, *at;

    st = ngx_http_llm_var_state_json(fc);
    if (st == NULL) {
        return;
    }

    at = json_object_get(st, "stopped_at");

    if (json_is_string(at)) {
        v->type = NGX_HTTP_LLM_VAL_JSON;
        v->json = json_incref(at);
    }

    json_decref(st);
}
