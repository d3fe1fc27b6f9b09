
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * A step's output judged: its JSON read out of the model's answer, its
 * checks, and where a failed one sends the run.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_pipeline_run.h"


/*
 * The step's checks against its output (NULL: not JSON, "result" is that
 * check's payload).  NGX_OK: all passed.  NGX_DONE: go on with
 * ngx_http_llm_run_step() (a retry or a step back, set up here).
 * NGX_DECLINED: no attempts left and the caller ends the run.  NGX_ERROR
 * and NGX_ABORT: the run has ended.
 */

ngx_int_t
ngx_http_llm_run_check(ngx_http_llm_run_t *run,
    ngx_http_llm_step_conf_t *step, json_t *output, json_t *result)
{
    double                     a, e;
    json_t                    *actual, *payload, *next;
    ngx_int_t                  on_fail;
    ngx_uint_t                 i, passed, attempts, stop;
    ngx_http_llm_check_t      *ck;
    ngx_http_llm_step_conf_t  *to;

    ck = step->checks.elts;
    payload = result;
    on_fail = step->index;
    attempts = step->checks.nelts ? ck[0].attempts : 2;

    for (i = 0; output && i < step->checks.nelts; i++) {

        actual = ngx_http_llm_json_path(output, &ck[i].field);

        if (ck[i].cmp <= NGX_HTTP_LLM_CMP_NE) {
            passed = (actual && json_equal(actual, ck[i].value));

            if (ck[i].cmp == NGX_HTTP_LLM_CMP_NE) {
                passed = !passed;
            }

        } else if (json_is_number(actual)) {
            a = json_number_value(actual);
            e = json_number_value(ck[i].value);

            passed = (ck[i].cmp == NGX_HTTP_LLM_CMP_GE) ? a >= e
                     : (ck[i].cmp == NGX_HTTP_LLM_CMP_GT) ? a > e
                     : (ck[i].cmp == NGX_HTTP_LLM_CMP_LE) ? a <= e
                     : a < e;

        } else {
            passed = 0;
        }

        payload = json_pack("{s:s%,s:b,s:s%,s:O,s:O?,s:I}",
                            "step", step->name.data, step->name.len,
                            "passed", (int) passed,
                            "field", ck[i].field.data, ck[i].field.len,
                            "expected", ck[i].value,
                            "actual", actual,
                            "attempt", (json_int_t) run->env.attempt);

        if (payload == NULL) {
            ngx_http_llm_run_end(run, NGX_HTTP_LLM_FAILED,
                                 NGX_HTTP_LLM_E_INTERNAL, "out of memory");
            return NGX_ABORT;
        }

        if (passed) {
            json_object_set_new(payload, "next", json_null());

            if (ngx_http_llm_run_event(run, NGX_HTTP_LLM_EV_CHECK, payload)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            payload = NULL;
            continue;
        }

        on_fail = ck[i].on_fail;
        attempts = ck[i].attempts;
        break;
    }

    if (payload == NULL) {
        return NGX_OK;
    }

    /* failed: where to, if attempts are left; else stop, or fail */

    stop = (on_fail == NGX_HTTP_LLM_ON_FAIL_STOP
            || (output && ck[i].exhausted_stop
                && on_fail != NGX_HTTP_LLM_ON_FAIL_FAIL
                && run->attempts[on_fail] >= attempts));

    if (stop) {
        next = json_string("stop");

    } else if (on_fail == NGX_HTTP_LLM_ON_FAIL_FAIL
               || run->attempts[on_fail] >= attempts)
    {
        next = json_string("fail");

    } else {
        to = (ngx_http_llm_step_conf_t *) run->conf->steps.elts + on_fail;
        next = json_stringn((char *) to->name.data, to->name.len);
    }

    json_object_set_new(payload, "next", next);

    if (ngx_http_llm_run_event(run, NGX_HTTP_LLM_EV_CHECK, payload)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (stop) {
        /* a success that stopped early, with what it has */

        if (output) {
            json_object_setn(run->env.outputs,
                             (const char *) step->name.data, step->name.len,
                             output);
        }

        json_object_set_new(run->state, "stopped_at",
                            json_stringn((char *) step->name.data,
                                         step->name.len));

        if (ngx_http_llm_run_state(run, "done", output) == NGX_OK) {
            ngx_http_llm_run_end(run, NGX_HTTP_LLM_COMPLETED, NULL, NULL);
        }

        return NGX_ABORT;
    }

    if (on_fail == NGX_HTTP_LLM_ON_FAIL_FAIL
        || run->attempts[on_fail] >= attempts)
    {
        if (output == NULL) {
            return NGX_DECLINED;
        }

        (void) ngx_http_llm_run_state(run, "failed", output);

        ngx_http_llm_run_end(run, NGX_HTTP_LLM_FAILED,
                             NGX_HTTP_LLM_E_CHECK,
                             "step \"%V\": check \"%V\" failed after %ui "
                             "attempts", &step->name, &ck[i].field,
                             run->attempts[on_fail]);
        return NGX_ABORT;
    }

    /* again, from the step gone to, with this output as its feedback */

    json_decref(run->env.feedback);
    run->env.feedback = output ? json_incref(output)
                               : json_stringn(run->text ? (char *) run->text
                                                        : "",
                                              run->text_len);

    if (ngx_http_llm_run_state(run, "failed", output) != NGX_OK) {
        return NGX_ERROR;
    }

    run->env.attempt = 0;

    if ((ngx_uint_t) on_fail != run->step) {
        /* a step back starts it over, its iterations too */
        run->step = on_fail;
        run->iteration = 0;

        json_decref(run->items);
        json_decref(run->outputs);
        run->items = NULL;
        run->outputs = NULL;
    }

    return NGX_DONE;
}


/*
 * A model's JSON answer: the value itself, or the first object or array
 * in it (models wrap JSON in prose or ``` fences).
 */

json_t *
ngx_http_llm_run_json(u_char *text, size_t len)
{
    u_char  *p, *q, *last;
    json_t  *j;

    j = json_loadb((char *) text, len, JSON_DECODE_ANY, NULL);
    if (j) {
        return j;
    }

    last = text + len;

    for (p = text; p < last && *p != '{' && *p != '['; p++) {
        /* void */
    }

    for (q = last; q > p && q[-1] != '}' && q[-1] != ']'; q--) {
        /* void */
    }

    if (q <= p) {
        return NULL;
    }

    return json_loadb((char *) p, q - p, 0, NULL);
}
