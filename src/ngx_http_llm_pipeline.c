
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * The step machine: runs a pipeline's steps one after the other through
 * the engine, between the job (above, reached only through the callbacks
 * it gave) and the engine (below).  For each step: render its templates
 * with what is known so far, ask the provider, take the text (streamed up
 * or kept), parse JSON, run the checks, then hand up the step's events and
 * the run's new state before the next step starts.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_pipeline_run.h"


static void ngx_http_llm_run_step(ngx_http_llm_run_t *run);
static void ngx_http_llm_run_output(void *data, ngx_http_llm_output_t *out);
static void ngx_http_llm_run_step_done(ngx_http_llm_run_t *run,
    ngx_http_llm_outcome_t *oc);
static void ngx_http_llm_run_next(ngx_http_llm_run_t *run);
static ngx_int_t ngx_http_llm_run_spec(ngx_http_llm_run_t *run,
    ngx_http_llm_step_conf_t *step, ngx_http_llm_spec_t *spec,
    ngx_str_t *err);
static u_char *ngx_http_llm_run_render(ngx_http_llm_run_t *run,
    ngx_http_llm_tpl_t *tpl, size_t *len);
static void ngx_http_llm_run_delayed(ngx_event_t *ev);
static ngx_int_t ngx_http_llm_str_dup(ngx_str_t *dst, ngx_str_t *src);


/*
 * A run of a pipeline: everything it needs is copied, so that it lives
 * on after the request that created it.  "inputs" is taken.
 */

ngx_http_llm_run_t *
ngx_http_llm_pipeline_run(ngx_http_llm_pipeline_conf_t *conf,
    ngx_http_llm_run_conf_t *rc, json_t *inputs, ngx_log_t *log)
{
    ngx_uint_t                 i;
    ngx_http_llm_run_t        *run;
    ngx_http_llm_step_conf_t  *step;

    run = ngx_calloc(sizeof(ngx_http_llm_run_t), log);
    if (run == NULL) {
        json_decref(inputs);
        return NULL;
    }

    run->conf = conf;
    run->rc = *rc;
    run->log = log;
    run->env.inputs = inputs;
    run->env.outputs = json_object();
    run->state = json_object();
    run->attempts = ngx_calloc(conf->steps.nelts * sizeof(ngx_uint_t), log);
    run->step_input_tokens = ngx_alloc(2 * conf->steps.nelts
                                       * sizeof(ngx_int_t), log);

    ngx_str_null(&run->rc.pass);
    ngx_str_null(&run->rc.model);
    ngx_str_null(&run->rc.system);
    ngx_str_null(&run->rc.api_key);

    if (run->env.outputs == NULL || run->state == NULL
        || run->attempts == NULL || run->step_input_tokens == NULL
        || ngx_http_llm_str_dup(&run->rc.pass, &rc->pass) != NGX_OK
        || ngx_http_llm_str_dup(&run->rc.model, &rc->model) != NGX_OK
        || ngx_http_llm_str_dup(&run->rc.system, &rc->system) != NGX_OK
        || ngx_http_llm_str_dup(&run->rc.api_key, &rc->api_key) != NGX_OK)
    {
        ngx_http_llm_pipeline_free(run);
        return NULL;
    }

    if (json_object_set_new(run->state, "pipeline",
                            json_stringn((char *) conf->name.data,
                                         conf->name.len))
        || json_object_set_new(run->state, "inputs",
                               inputs ? json_incref(inputs) : json_object())
        || json_object_set_new(run->state, "step", json_integer(0))
        || json_object_set_new(run->state, "stopped_at", json_null())
        || json_object_set_new(run->state, "steps", json_array()))
    {
        ngx_http_llm_pipeline_free(run);
        return NULL;
    }

    step = conf->steps.elts;

    for (i = 0; i < conf->steps.nelts; i++) {
        if (json_array_append_new(json_object_get(run->state, "steps"),
                json_pack("{s:s%,s:s,s:i,s:n}",
                          "name", step[i].name.data, step[i].name.len,
                          "state", "pending", "attempts", 0, "output")))
        {
            ngx_http_llm_pipeline_free(run);
            return NULL;
        }
    }

    run->input_tokens = -1;
    run->output_tokens = -1;

    /* each step's token counts, over its attempts and iterations */

    run->step_output_tokens = run->step_input_tokens + conf->steps.nelts;

    for (i = 0; i < 2 * conf->steps.nelts; i++) {
        run->step_input_tokens[i] = -1;
    }

    run->delay.handler = ngx_http_llm_run_delayed;
    run->delay.data = run;
    run->delay.log = log;
    run->delay.cancelable = 1;

    return run;
}


/*
 * A run that goes on from the state of an earlier one (a failed or
 * cancelled job): the inputs and the outputs of its finished steps are
 * kept, and it starts at the first step that did not finish.  Steps are
 * matched by name, so that a reloaded configuration still fits.
 */

ngx_http_llm_run_t *
ngx_http_llm_pipeline_continue(ngx_http_llm_pipeline_conf_t *conf,
    ngx_http_llm_run_conf_t *rc, json_t *state, ngx_log_t *log)
{
    size_t                     i;
    json_t                    *s, *st, *output, *found;
    ngx_str_t                  name;
    ngx_uint_t                 k, first;
    ngx_http_llm_run_t        *run;
    ngx_http_llm_step_conf_t  *step;

    run = ngx_http_llm_pipeline_run(conf, rc,
                                    json_incref(json_object_get(state,
                                                                "inputs")),
                                    log);
    if (run == NULL) {
        return NULL;
    }

    step = conf->steps.elts;
    first = conf->steps.nelts;

    for (k = 0; k < conf->steps.nelts; k++) {

        found = NULL;

        json_array_foreach(json_object_get(state, "steps"), i, s) {
            name.data = (u_char *) json_string_value(json_object_get(s,
                                                                "name"));
            name.len = name.data ? ngx_strlen(name.data) : 0;

            if (name.len == step[k].name.len
                && ngx_strncmp(name.data, step[k].name.data, name.len) == 0)
            {
                found = s;
                break;
            }
        }

        s = found;

        if (s == NULL || !json_is_string(json_object_get(s, "state"))
            || ngx_strcmp(json_string_value(json_object_get(s, "state")),
                          "done") != 0)
        {
            if (k < first && s && step[k].foreach) {
                /* the outputs of the elements it had done */
                run->resume = json_incref(json_object_get(s, "output"));
            }

            first = ngx_min(first, k);
            continue;
        }

        if (k > first) {
            /* after a step that did not finish: it runs again */
            continue;
        }

        output = json_object_get(s, "output");
        run->attempts[k] = json_integer_value(json_object_get(s,
                                                              "attempts"));

        json_object_setn(run->env.outputs, (const char *) step[k].name.data,
                         step[k].name.len, output);

        /* its record as it was: state, attempts, output, times, usage */

        st = json_array_get(json_object_get(run->state, "steps"), k);
        json_object_update(st, s);
    }

    run->step = first;

    return run;
}


ngx_int_t
ngx_http_llm_pipeline_start(ngx_http_llm_run_t *run,
    ngx_http_llm_pipeline_up_t *up)
{
    run->up = *up;
    run->started = ngx_http_llm_now_ms();
    run->running = 1;

    if (ngx_http_llm_run_state(run, NULL, NULL) != NGX_OK) {
        run->running = 0;
        return NGX_ERROR;
    }

    ngx_http_llm_run_step(run);

    return NGX_OK;
}


/*
 * The job ends the run (a cancel, a shutdown, an expired pause): a step
 * under way is kept as interrupted, then the run stops.
 */

void
ngx_http_llm_pipeline_stop(ngx_http_llm_run_t *run)
{
    char        *s;
    json_t      *st;
    const char  *state;

    st = json_array_get(json_object_get(run->state, "steps"), run->step);
    state = json_string_value(json_object_get(st, "state"));

    if (run->running && state && ngx_strcmp(state, "running") == 0) {
        json_object_set_new(st, "state", json_string("interrupted"));

        s = json_dumps(run->state,
                       NGX_HTTP_LLM_JSON_DUMP | JSON_ENSURE_ASCII);

        if (s) {
            (void) run->up.state(run->up.data, (u_char *) s, ngx_strlen(s));
            free(s);
        }
    }

    ngx_http_llm_pipeline_cancel(run);
}


/* stops at once, without a word up: the job ends itself */

void
ngx_http_llm_pipeline_cancel(ngx_http_llm_run_t *run)
{
    run->running = 0;

    if (run->xfer) {
        ngx_http_llm_engine_release(run->xfer);
        run->xfer = NULL;
    }

    if (run->delay.timer_set) {
        ngx_del_timer(&run->delay);
    }
}


/*
 * A pause takes effect where the run is between two calls: before the
 * next step, iteration or attempt; a resume starts that call.
 */

void
ngx_http_llm_pipeline_pause(ngx_http_llm_run_t *run, ngx_uint_t on)
{
    run->pause = on;

    if (on || !run->paused || !run->running) {
        return;
    }

    run->paused = 0;

    if (ngx_http_llm_run_paused(run, NGX_HTTP_LLM_EV_RESUMED) == NGX_OK) {
        ngx_http_llm_run_step(run);
    }
}


/* at worker exit: the engine has freed its transfers, the run lets go */

void
ngx_http_llm_pipeline_exit(ngx_http_llm_run_t *run)
{
    run->xfer = NULL;
    ngx_http_llm_pipeline_free(run);
}


void
ngx_http_llm_pipeline_free(ngx_http_llm_run_t *run)
{
    ngx_http_llm_pipeline_cancel(run);

    json_decref(run->env.inputs);
    json_decref(run->env.outputs);
    json_decref(run->env.feedback);
    json_decref(run->state);
    json_decref(run->items);
    json_decref(run->outputs);
    json_decref(run->resume);

    ngx_free(run->rc.pass.data);
    ngx_free(run->rc.model.data);
    ngx_free(run->rc.system.data);
    ngx_free(run->rc.api_key.data);
    ngx_free(run->attempts);
    ngx_free(run->step_input_tokens);
    ngx_free(run->text);
    ngx_free(run);
}


/* the current step, or its next iteration: events up, then the request */

static void
ngx_http_llm_run_step(ngx_http_llm_run_t *run)
{
    size_t                     len;
    u_char                    *p;
    json_t                    *payload, *items, *message;
    ngx_int_t                  rc;
    ngx_str_t                  err;
    ngx_http_llm_spec_t        spec;
    ngx_http_llm_step_conf_t  *step;

    if (run->step == run->conf->steps.nelts) {
        ngx_http_llm_run_end(run, NGX_HTTP_LLM_COMPLETED, NULL, NULL);
        return;
    }

    step = (ngx_http_llm_step_conf_t *) run->conf->steps.elts + run->step;

    if (run->pause) {
        if (!run->paused) {
            run->paused = 1;
            (void) ngx_http_llm_run_paused(run, NGX_HTTP_LLM_EV_PAUSED);
        }

        return;
    }

    /* a repeated step: its array, read when the step starts */

    if (step->foreach && run->items == NULL) {
        p = ngx_http_llm_run_render(run, step->foreach, &len);
        items = p ? ngx_http_llm_run_json(p, len) : NULL;
        ngx_free(p);

        if (!json_is_array(items)) {
            json_decref(items);
            ngx_http_llm_run_end(run, NGX_HTTP_LLM_FAILED,
                                 NGX_HTTP_LLM_E_STEP,
                                 "step \"%V\": \"foreach\" is not a JSON "
                                 "array", &step->name);
            return;
        }

        run->items = items;
        run->iteration = 0;

        /* a continued run goes on after the elements already done */

        if (json_is_array(run->resume)
            && json_array_size(run->resume) <= json_array_size(items))
        {
            run->outputs = json_deep_copy(run->resume);
            run->iteration = json_array_size(run->resume);

        } else {
            run->outputs = json_array();
        }

        json_decref(run->resume);
        run->resume = NULL;

        if (run->outputs == NULL) {
            ngx_http_llm_run_end(run, NGX_HTTP_LLM_FAILED,
                                 NGX_HTTP_LLM_E_INTERNAL, "out of memory");
            return;
        }

        if (run->iteration == json_array_size(items)) {
            /* nothing (more) to repeat: done, with the outputs it has */
            ngx_http_llm_run_step_done(run, NULL);
            return;
        }
    }

    run->env.item = run->items ? json_array_get(run->items, run->iteration)
                               : NULL;
    run->env.index = run->iteration + 1;
    run->env.count = run->items ? json_array_size(run->items) : 0;

    if (run->iteration == 0 || run->env.attempt == 0) {
        run->attempts[run->step]++;
    }

    run->env.attempt = run->attempts[run->step];
    run->step_started = ngx_http_llm_now_ms();
    run->text_len = 0;

    payload = json_pack("{s:s%,s:I,s:I,s:s%,s:I,s:O?,s:I}",
                        "step", step->name.data, step->name.len,
                        "index", (json_int_t) run->step + 1,
                        "total", (json_int_t) run->conf->steps.nelts,
                        "stage",
                        step->stage.len ? step->stage.data
                                        : step->name.data,
                        step->stage.len ? step->stage.len
                                        : step->name.len,
                        "attempt", (json_int_t) run->env.attempt,
                        "item", run->env.item,
                        "time", (json_int_t) run->step_started);

    if (payload && run->items) {
        json_object_set_new(payload, "iteration",
                            json_integer(run->env.index));
        json_object_set_new(payload, "iterations",
                            json_integer(run->env.count));
    }

    message = NULL;

    if (step->message) {
        p = ngx_http_llm_run_render(run, step->message, &len);
        message = p ? json_stringn((char *) p, len) : NULL;
        ngx_free(p);
    }

    if (payload && message) {
        json_object_set(payload, "message", message);
    }

    rc = ngx_http_llm_run_event(run, NGX_HTTP_LLM_EV_STEP_START, payload);

    if (rc == NGX_OK) {
        rc = ngx_http_llm_run_progress(run, message);
    }

    json_decref(message);

    if (rc != NGX_OK
        || ngx_http_llm_run_state(run, "running", NULL) != NGX_OK)
    {
        return;
    }

    ngx_memzero(&spec, sizeof(ngx_http_llm_spec_t));

    if (ngx_http_llm_run_spec(run, step, &spec, &err) != NGX_OK) {
        ngx_http_llm_spec_free(&spec);
        ngx_http_llm_run_end(run, NGX_HTTP_LLM_FAILED,
                             NGX_HTTP_LLM_E_INTERNAL, "step \"%V\": %V",
                             &step->name, &err);
        return;
    }

    run->xfer = ngx_http_llm_engine_submit(run->rc.pool, &spec,
                                           ngx_http_llm_run_output, run,
                                           run->log);

    if (run->xfer == NULL) {
        /* not taken: the spec holds the prompt and the key */
        ngx_http_llm_spec_free(&spec);

        ngx_http_llm_run_end(run, NGX_HTTP_LLM_FAILED,
                             NGX_HTTP_LLM_E_INTERNAL,
                             "step \"%V\": cannot start the request",
                             &step->name);
    }
}


/* engine output of the running step */

static void
ngx_http_llm_run_output(void *data, ngx_http_llm_output_t *out)
{
    ngx_http_llm_run_t *run = data;

    size_t                     cap;
    u_char                    *p, code[sizeof(out->outcome.code) + 1];
    ngx_http_llm_step_conf_t  *step;

    if (out->done) {
        /* the engine let go of the transfer with its final output */
        run->xfer = NULL;
    }

    if (!run->running) {
        return;
    }

    step = (ngx_http_llm_step_conf_t *) run->conf->steps.elts + run->step;

    if (out->text_len) {

        if (step->stream
            && run->up.text(run->up.data, out->text, out->text_len)
               != NGX_OK)
        {
            /* the job failed itself */
            ngx_http_llm_pipeline_cancel(run);
            return;
        }

        if (run->text_len + out->text_len > NGX_HTTP_LLM_STEP_TEXT_MAX) {
            ngx_http_llm_run_end(run, NGX_HTTP_LLM_FAILED,
                                 NGX_HTTP_LLM_E_TEXT_LIMIT,
                                 "step \"%V\": its output exceeded %uz "
                                 "bytes", &step->name,
                                 (size_t) NGX_HTTP_LLM_STEP_TEXT_MAX);
            return;
        }

        if (run->text_len + out->text_len > run->text_cap) {
            cap = ngx_max(run->text_cap * 2, run->text_len + out->text_len);

            p = ngx_alloc(cap, run->log);
            if (p == NULL) {
                ngx_http_llm_run_end(run, NGX_HTTP_LLM_FAILED,
                                     NGX_HTTP_LLM_E_INTERNAL,
                                     "out of memory");
                return;
            }

            if (run->text_len) {
                ngx_memcpy(p, run->text, run->text_len);
            }

            ngx_free(run->text);
            run->text = p;
            run->text_cap = cap;
        }

        ngx_memcpy(run->text + run->text_len, out->text, out->text_len);
        run->text_len += out->text_len;
    }

    if (!out->done) {
        return;
    }

    if (out->failed) {
        /*
         * The engine already tried what the timeouts allow: the step
         * fails, and with it the pipeline, keeping what it made.
         */

        ngx_cpystrn(code, out->outcome.code,
                    ngx_min(out->outcome.code_len + 1, sizeof(code)));

        ngx_http_llm_run_end(run, NGX_HTTP_LLM_FAILED, (const char *) code,
                             "step \"%V\": %*s", &step->name,
                             out->outcome.message_len, out->outcome.message);
        return;
    }

    ngx_http_llm_run_step_done(run, &out->outcome);
}


/*
 * A step (or one iteration of it) has its text: its output, its checks,
 * its events and the new state, then what comes next.
 */

static void
ngx_http_llm_run_step_done(ngx_http_llm_run_t *run,
    ngx_http_llm_outcome_t *oc)
{
    size_t                     preview;
    json_t                    *output, *payload;
    ngx_int_t                  rc;
    ngx_http_llm_step_conf_t  *step;

    step = (ngx_http_llm_step_conf_t *) run->conf->steps.elts + run->step;

    if (oc == NULL) {
        /* a foreach with nothing (more) to do */
        output = json_incref(run->outputs);
        goto finished;
    }

    if (oc->input_tokens >= 0) {
        run->input_tokens = ngx_max(run->input_tokens, 0) + oc->input_tokens;
        run->step_input_tokens[run->step] =
                  ngx_max(run->step_input_tokens[run->step], 0)
                  + oc->input_tokens;
    }

    if (oc->output_tokens >= 0) {
        run->output_tokens = ngx_max(run->output_tokens, 0)
                             + oc->output_tokens;
        run->step_output_tokens[run->step] =
                  ngx_max(run->step_output_tokens[run->step], 0)
                  + oc->output_tokens;
    }

    if (step->json) {
        output = ngx_http_llm_run_json(run->text, run->text_len);

        if (output == NULL) {
            /* not JSON: a failure of the step, retried like a check */
            payload = json_pack("{s:s%,s:b,s:s,s:I}",
                                "step", step->name.data, step->name.len,
                                "passed", 0, "field", "(json)",
                                "attempt", (json_int_t) run->env.attempt);

            if (payload == NULL) {
                ngx_http_llm_run_end(run, NGX_HTTP_LLM_FAILED,
                                     NGX_HTTP_LLM_E_INTERNAL,
                                     "out of memory");
                return;
            }

            rc = ngx_http_llm_run_check(run, step, NULL, payload);

            if (rc == NGX_DONE) {
                ngx_http_llm_run_step(run);

            } else if (rc == NGX_DECLINED) {
                ngx_http_llm_run_end(run, NGX_HTTP_LLM_FAILED,
                                     NGX_HTTP_LLM_E_STEP,
                                     "step \"%V\": the output is not JSON",
                                     &step->name);
            }

            return;
        }

    } else {
        output = json_stringn(run->text ? (char *) run->text : "",
                              run->text_len);
    }

    if (output == NULL) {
        ngx_http_llm_run_end(run, NGX_HTTP_LLM_FAILED,
                             NGX_HTTP_LLM_E_STEP,
                             "step \"%V\": the output is not UTF-8",
                             &step->name);
        return;
    }

    preview = ngx_min(run->text_len, step->preview);

    while (preview && preview < run->text_len
           && (run->text[preview] & 0xc0) == 0x80)
    {
        preview--;
    }

    payload = json_pack("{s:s%,s:I,s:I,s:I,s:O,s:s%,s:f,s:o}",
                        "step", step->name.data, step->name.len,
                        "index", (json_int_t) run->step + 1,
                        "total", (json_int_t) run->conf->steps.nelts,
                        "attempt", (json_int_t) run->env.attempt,
                        "output", output,
                        "preview", run->text ? (char *) run->text : "",
                        preview,
                        "duration",
                        (double) (ngx_http_llm_now_ms() - run->step_started)
                        / 1000,
                        "usage", ngx_http_llm_run_usage(oc->input_tokens,
                                                        oc->output_tokens));

    if (payload && run->items) {
        json_object_set_new(payload, "iteration",
                            json_integer(run->env.index));
        json_object_set_new(payload, "iterations",
                            json_integer(run->env.count));
        json_object_set(payload, "item", run->env.item);
    }

    if (ngx_http_llm_run_event(run, NGX_HTTP_LLM_EV_STEP, payload)
        != NGX_OK)
    {
        json_decref(output);
        return;
    }

    /* the checks, in order: the first that fails decides */

    rc = ngx_http_llm_run_check(run, step, output, NULL);

    if (rc != NGX_OK) {
        json_decref(output);

        if (rc == NGX_DONE) {
            ngx_http_llm_run_step(run);
        }

        return;
    }

    if (run->items) {
        json_array_append(run->outputs, output);

        if (run->iteration + 1 < json_array_size(run->items)) {
            /* the next element, as a checkpoint of its own */
            json_decref(output);

            run->iteration++;

            if (ngx_http_llm_run_state(run, "running", run->outputs)
                != NGX_OK)
            {
                return;
            }

            if (step->delay) {
                ngx_add_timer(&run->delay, step->delay);
                return;
            }

            ngx_http_llm_run_step(run);
            return;
        }

        json_decref(output);
        output = json_incref(run->outputs);
    }

finished:

    if (output == NULL) {
        ngx_http_llm_run_end(run, NGX_HTTP_LLM_FAILED,
                             NGX_HTTP_LLM_E_INTERNAL, "out of memory");
        return;
    }

    json_object_setn(run->env.outputs, (const char *) step->name.data,
                     step->name.len, output);

    json_decref(run->env.feedback);
    run->env.feedback = NULL;

    if (ngx_http_llm_run_state(run, "done", output) != NGX_OK) {
        json_decref(output);
        return;
    }

    json_decref(output);

    ngx_http_llm_run_next(run);
    ngx_http_llm_run_step(run);
}


/* the step after this one, from its start */

static void
ngx_http_llm_run_next(ngx_http_llm_run_t *run)
{
    json_decref(run->items);
    json_decref(run->outputs);
    run->items = NULL;
    run->outputs = NULL;
    run->iteration = 0;
    run->env.attempt = 0;
    run->step++;
}


static void
ngx_http_llm_run_delayed(ngx_event_t *ev)
{
    ngx_http_llm_run_t *run = ev->data;

    if (run->running) {
        ngx_http_llm_run_step(run);
    }
}


/* the upstream request of a step: its own settings, else the location's */

static ngx_int_t
ngx_http_llm_run_spec(ngx_http_llm_run_t *run, ngx_http_llm_step_conf_t *step,
    ngx_http_llm_spec_t *spec, ngx_str_t *err)
{
    u_char                 *system, *prompt;
    size_t                  system_len, prompt_len;
    ngx_int_t               rc;
    ngx_str_t               url;
    ngx_http_llm_params_t   params;

    ngx_memzero(&params, sizeof(ngx_http_llm_params_t));

    system = NULL;
    system_len = 0;

    if (step->system) {
        system = ngx_http_llm_run_render(run, step->system, &system_len);
        if (system == NULL) {
            ngx_str_set(err, "out of memory");
            return NGX_ERROR;
        }

        params.system.data = system;
        params.system.len = system_len;

    } else {
        params.system = run->rc.system;
    }

    prompt = ngx_http_llm_run_render(run, step->prompt, &prompt_len);
    if (prompt == NULL) {
        ngx_free(system);
        ngx_str_set(err, "out of memory");
        return NGX_ERROR;
    }

    params.prompt.data = prompt;
    params.prompt.len = prompt_len;
    params.model = step->model.len ? step->model : run->rc.model;
    params.api_key = step->api_key.len ? step->api_key : run->rc.api_key;
    params.max_tokens = (step->max_tokens != NGX_CONF_UNSET_UINT)
                        ? step->max_tokens : run->rc.max_tokens;
    params.json = step->json;

    url = step->pass.len ? step->pass : run->rc.pass;

    spec->provider = step->provider ? step->provider : run->rc.provider;

#define ngx_http_llm_step_time(name)                                        \
    spec->name = (step->name != NGX_CONF_UNSET_MSEC) ? step->name           \
                                                     : run->rc.name

    ngx_http_llm_step_time(connect_timeout);
    ngx_http_llm_step_time(first_token_timeout);
    ngx_http_llm_step_time(idle_timeout);
    ngx_http_llm_step_time(timeout);

#undef ngx_http_llm_step_time

    spec->ssl_verify = run->rc.ssl_verify;
    spec->max_text = NGX_HTTP_LLM_STEP_TEXT_MAX;

    if (params.model.len == 0) {
        rc = NGX_ERROR;
        ngx_str_set(err, "the model is empty");

    } else {
        rc = ngx_http_llm_spec_make(spec, &url, &params, err);
    }

    ngx_free(system);
    ngx_free(prompt);

    return rc == NGX_OK ? NGX_OK : NGX_ERROR;
}


/* a text template rendered with what the run knows: heap, or NULL */

static u_char *
ngx_http_llm_run_render(ngx_http_llm_run_t *run, ngx_http_llm_tpl_t *tpl,
    size_t *len)
{
    u_char                 *p;
    ngx_http_llm_render_t   w;

    w.p = NULL;
    w.n = 0;
    ngx_http_llm_tpl_render(tpl, &run->env, NULL, &w);

    p = ngx_alloc(w.n + 1, run->log);
    if (p == NULL) {
        return NULL;
    }

    w.p = p;
    w.n = 0;
    ngx_http_llm_tpl_render(tpl, &run->env, NULL, &w);

    *len = w.n;

    return p;
}


void
ngx_http_llm_run_end(ngx_http_llm_run_t *run, ngx_http_llm_state_e state,
    const char *code, const char *fmt, ...)
{
    char                    *s;
    u_char                  *p, msg[512];
    json_t                  *st;
    va_list                  args;
    ngx_http_llm_outcome_t   oc;

    if (!run->running) {
        return;
    }

    ngx_memzero(&oc, sizeof(ngx_http_llm_outcome_t));

    oc.input_tokens = run->input_tokens;
    oc.output_tokens = run->output_tokens;

    if (state == NGX_HTTP_LLM_COMPLETED) {
        oc.finish_len = sizeof("stop") - 1;
        ngx_memcpy(oc.finish, "stop", oc.finish_len);

    } else {
        oc.code_len = ngx_min(ngx_strlen(code), sizeof(oc.code));
        ngx_memcpy(oc.code, code, oc.code_len);

        va_start(args, fmt);
        p = ngx_vslprintf(msg, msg + sizeof(msg), fmt, args);
        va_end(args);

        oc.message = msg;
        oc.message_len = p - msg;

        /* the step it failed in says so in the state the job keeps */

        st = json_array_get(json_object_get(run->state, "steps"), run->step);

        if (st) {
            json_object_set_new(st, "state", json_string("failed"));
            json_object_set_new(st, "finished",
                                json_integer(ngx_http_llm_now_ms()));

            s = json_dumps(run->state,
                           NGX_HTTP_LLM_JSON_DUMP | JSON_ENSURE_ASCII);

            if (s) {
                (void) run->up.state(run->up.data, (u_char *) s,
                                     ngx_strlen(s));
                free(s);
            }
        }
    }

    ngx_http_llm_pipeline_cancel(run);

    run->up.end(run->up.data, state, &oc);
}


/* a heap copy, NUL-terminated (empty stays empty) */

static ngx_int_t
ngx_http_llm_str_dup(ngx_str_t *dst, ngx_str_t *src)
{
    dst->len = 0;
    dst->data = NULL;

    if (src->len == 0) {
        return NGX_OK;
    }

    dst->data = ngx_alloc(src->len + 1, ngx_cycle->log);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    ngx_cpystrn(dst->data, src->data, src->len + 1);
    dst->len = src->len;

    return NGX_OK;
}
