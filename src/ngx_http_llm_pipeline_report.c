
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * What a run hands up to its job as it goes: its events (step_start,
 * progress, step, check, paused, resumed) and its state, as JSON.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_pipeline_run.h"


/* an event up: its payload (taken) as one line of JSON */

ngx_int_t
ngx_http_llm_run_event(ngx_http_llm_run_t *run,
    ngx_http_llm_event_type_e type, json_t *payload)
{
    char       *s;
    ngx_int_t   rc;

    s = payload ? json_dumps(payload,
                             NGX_HTTP_LLM_JSON_DUMP | JSON_ENSURE_ASCII)
                : NULL;
    json_decref(payload);

    if (s == NULL) {
        ngx_http_llm_run_end(run, NGX_HTTP_LLM_FAILED,
                             NGX_HTTP_LLM_E_INTERNAL, "out of memory");
        return NGX_ERROR;
    }

    rc = run->up.event(run->up.data, type, (u_char *) s, ngx_strlen(s));

    free(s);

    if (rc != NGX_OK) {
        /* the job failed itself */
        ngx_http_llm_pipeline_cancel(run);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * Progress as the step starts: its declared percentage, else what the
 * weights of the steps before it give, advanced evenly by iterations;
 * the time left from the time so far.
 */

ngx_int_t
ngx_http_llm_run_progress(ngx_http_llm_run_t *run, json_t *message)
{
    double                     pct, next, total, before, elapsed;
    json_t                    *payload;
    ngx_uint_t                 i, n;
    ngx_http_llm_step_conf_t  *step, *s;

    step = run->conf->steps.elts;
    n = run->conf->steps.nelts;
    s = &step[run->step];

    total = 0;
    before = 0;

    for (i = 0; i < n; i++) {
        total += step[i].weight;

        if (i < run->step) {
            before += step[i].weight;
        }
    }

    pct = (s->progress >= 0) ? s->progress : before * 100 / total;
    next = (run->step + 1 < n && step[run->step + 1].progress >= 0)
           ? step[run->step + 1].progress
           : (before + s->weight) * 100 / total;

    if (run->items && run->env.count) {
        pct += (next - pct) * run->iteration / run->env.count;
    }

    elapsed = (double) (ngx_http_llm_now_ms() - run->started) / 1000;

    payload = json_pack("{s:I,s:s%,s:s%,s:I,s:I,s:I,s:f}",
                        "progress", (json_int_t) pct,
                        "stage",
                        s->stage.len ? s->stage.data : s->name.data,
                        s->stage.len ? s->stage.len : s->name.len,
                        "step", s->name.data, s->name.len,
                        "index", (json_int_t) run->step + 1,
                        "total", (json_int_t) n,
                        "completed",
                        (json_int_t) run->step + run->iteration,
                        "elapsed", elapsed);

    if (payload && run->items) {
        json_object_set_new(payload, "iteration",
                            json_integer(run->env.index));
        json_object_set_new(payload, "iterations",
                            json_integer(run->env.count));
        json_object_set(payload, "item", run->env.item);
    }

    if (payload) {
        json_object_set(payload, "message", message ? message : json_null());
        json_object_set_new(payload, "eta",
                            pct >= 1 ? json_integer((json_int_t)
                                           (elapsed * (100 - pct) / pct
                                            + 0.5))
                                     : json_null());
    }

    return ngx_http_llm_run_event(run, NGX_HTTP_LLM_EV_PROGRESS, payload);
}


/*
 * A pause that took effect, or its end: the step that waits to start,
 * as an event and in the state.
 */

ngx_int_t
ngx_http_llm_run_paused(ngx_http_llm_run_t *run,
    ngx_http_llm_event_type_e type)
{
    json_t                    *payload;
    ngx_http_llm_step_conf_t  *s;

    s = (ngx_http_llm_step_conf_t *) run->conf->steps.elts + run->step;

    payload = json_pack("{s:s%,s:I,s:I,s:s%,s:I,s:I}",
                        "step", s->name.data, s->name.len,
                        "index", (json_int_t) run->step + 1,
                        "total", (json_int_t) run->conf->steps.nelts,
                        "stage",
                        s->stage.len ? s->stage.data : s->name.data,
                        s->stage.len ? s->stage.len : s->name.len,
                        "completed",
                        (json_int_t) run->step + run->iteration,
                        "time", (json_int_t) ngx_http_llm_now_ms());

    if (payload && run->items) {
        json_object_set_new(payload, "iteration",
                            json_integer(run->iteration + 1));
        json_object_set_new(payload, "iterations",
                            json_integer(json_array_size(run->items)));
    }

    if (ngx_http_llm_run_event(run, type, payload) != NGX_OK) {
        return NGX_ERROR;
    }

    json_object_set_new(run->state, "paused",
                        json_boolean(type == NGX_HTTP_LLM_EV_PAUSED));

    return ngx_http_llm_run_state(run, NULL, NULL);
}


/*
 * The run's state up to the job (and so to the store): the current
 * step's new state and output when given.
 */

ngx_int_t
ngx_http_llm_run_state(ngx_http_llm_run_t *run, const char *step_state,
    json_t *output)
{
    char       *s;
    json_t     *st;
    int64_t     now, started;
    ngx_int_t   rc;

    json_object_set_new(run->state, "step", json_integer(run->step));

    if (step_state && run->step < run->conf->steps.nelts) {
        st = json_array_get(json_object_get(run->state, "steps"),
                            run->step);

        json_object_set_new(st, "state", json_string(step_state));
        json_object_set_new(st, "attempts",
                            json_integer(run->attempts[run->step]));

        if (ngx_strcmp(step_state, "running") == 0) {
            if (run->iteration == 0) {
                json_object_set_new(st, "started",
                                    json_integer(run->step_started));
            }

        } else {
            now = ngx_http_llm_now_ms();
            started = json_integer_value(json_object_get(st, "started"));

            json_object_set_new(st, "finished", json_integer(now));
            json_object_set_new(st, "duration",
                                json_real((double) (now - started) / 1000));
            json_object_set_new(st, "usage",
                  ngx_http_llm_run_usage(run->step_input_tokens[run->step],
                                         run->step_output_tokens[run->step]));
        }

        if (output) {
            json_object_set(st, "output", output);
        }
    }

    s = json_dumps(run->state, NGX_HTTP_LLM_JSON_DUMP | JSON_ENSURE_ASCII);

    if (s == NULL) {
        ngx_http_llm_run_end(run, NGX_HTTP_LLM_FAILED,
                             NGX_HTTP_LLM_E_INTERNAL, "out of memory");
        return NGX_ERROR;
    }

    rc = run->up.state(run->up.data, (u_char *) s, ngx_strlen(s));

    free(s);

    if (rc != NGX_OK) {
        ngx_http_llm_pipeline_cancel(run);
        return NGX_ERROR;
    }

    return NGX_OK;
}


json_t *
ngx_http_llm_run_usage(ngx_int_t in, ngx_int_t out)
{
    json_t  *u;

    if (in < 0 && out < 0) {
        return json_null();
    }

    u = json_object();

    if (in >= 0) {
        json_object_set_new(u, "input_tokens", json_integer(in));
    }

    if (out >= 0) {
        json_object_set_new(u, "output_tokens", json_integer(out));
    }

    return u;
}
