
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * Formats: the "llm_format" directives, the templates they compile, and
 * the renderers of events and JSON answers (the built-in default format
 * and template formats; "openai" has a file of its own).
 *
 * A template is JSON text in which $llm_* names (and any nginx variable)
 * stand for values: in a value position a variable becomes a JSON value
 * (a string, a number, true/false, null, an object), inside a string it
 * is inserted escaped.  Templates are minified and checked with jansson
 * when the configuration is read, so an event is always one valid JSON
 * line whatever the values hold.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_format.h"


/*
 * One SSE event of a kind: its name and its data; for a pipeline's kinds,
 * only for one step (step=) or one outcome of a check (when=), or "off".
 */
typedef struct {
    ngx_str_t                      event;       /* SSE name, or empty */
    ngx_http_llm_tpl_t             tpl;
    ngx_str_t                      step;        /* empty: any step */
    ngx_int_t                      when;        /* -1 any, 1 passed, 0 not,
                                                   or NGX_HTTP_LLM_WHEN_ */
    unsigned                       off:1;
} ngx_http_llm_frame_t;


static char *ngx_http_llm_format_line(ngx_conf_t *cf, ngx_command_t *dummy,
    void *conf);
static char *ngx_http_llm_format_coalesce(ngx_conf_t *cf,
    ngx_http_llm_format_t *fmt);
static ngx_uint_t ngx_http_llm_frame_applies(ngx_http_llm_frame_t *fr,
    ngx_uint_t specific, const char *step, ngx_int_t passed);
static ngx_uint_t ngx_http_llm_frames_off(ngx_array_t *a, ngx_str_t *step,
    ngx_int_t when, ngx_uint_t off);
static ngx_uint_t ngx_http_llm_kind_of_step(ngx_uint_t k);
static ngx_http_llm_kind_e ngx_http_llm_event_kind(ngx_http_llm_format_t *fmt,
    ngx_http_llm_job_t *job, ngx_uint_t first);
static ngx_uint_t ngx_http_llm_default_event(ngx_http_llm_format_t *fmt,
    ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_render_t *w);
static void ngx_http_llm_default_head(ngx_http_llm_job_t *job, ngx_uint_t i,
    ngx_http_llm_render_t *w);
static void ngx_http_llm_render_usage(ngx_http_llm_render_t *w,
    ngx_http_llm_job_t *job);



static ngx_str_t  ngx_http_llm_kind_names[] = {
    ngx_string("start"),
    ngx_string("delta"),
    ngx_string("complete"),
    ngx_string("error"),
    ngx_string("shutdown"),
    ngx_string("step_start"),
    ngx_string("step"),
    ngx_string("check"),
    ngx_string("progress"),
    ngx_string("paused"),
    ngx_string("resumed"),
    ngx_string("response"),
    ngx_string("refusal")
};


/* by event type */
static const char  *ngx_http_llm_event_names[] = {
    "start", "delta", "complete", "error",
    "step_start", "step", "check", "progress", "paused", "resumed"
};




static ngx_http_llm_format_t  ngx_http_llm_format_builtin = {
    ngx_string("default"),
    ngx_http_llm_default_event,
    NULL,
    { NULL },
    0,
    0
};


/* llm_format NAME { KIND [event=NAME] TEMPLATE; ... }: http context */

char *
ngx_http_llm_format_block(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_main_conf_t *lmcf = conf;

    char                   *rv;
    ngx_str_t              *value;
    ngx_uint_t              i;
    ngx_conf_t              save;
    ngx_http_llm_format_t  *fmt, **f;

    value = cf->args->elts;

    if (ngx_http_llm_formats_init(cf, &lmcf->formats) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    f = lmcf->formats->elts;

    for (i = 0; i < lmcf->formats->nelts; i++) {
        if (f[i]->name.len == value[1].len
            && ngx_strncmp(f[i]->name.data, value[1].data, value[1].len) == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate llm_format \"%V\"", &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    fmt = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_format_t));
    if (fmt == NULL) {
        return NGX_CONF_ERROR;
    }

    fmt->name = value[1];

    f = ngx_array_push(lmcf->formats);
    if (f == NULL) {
        return NGX_CONF_ERROR;
    }

    *f = fmt;

    save = *cf;
    cf->handler = ngx_http_llm_format_line;
    cf->handler_conf = (char *) fmt;

    rv = ngx_conf_parse(cf, NULL);

    *cf = save;

    if (rv != NGX_CONF_OK) {
        return rv;
    }

    /* a stream always ends with a final event */

    if (fmt->tpls[NGX_HTTP_LLM_K_COMPLETE] == NULL
        || fmt->tpls[NGX_HTTP_LLM_K_ERROR] == NULL)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_format \"%V\" needs both a \"complete\" "
                           "and an \"error\" template", &fmt->name);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* one line inside an llm_format block */

static char *
ngx_http_llm_format_line(ngx_conf_t *cf, ngx_command_t *dummy, void *conf)
{
    ngx_http_llm_format_t *fmt = (ngx_http_llm_format_t *) conf;

    u_char                *p, *what;
    ngx_int_t              when;
    ngx_str_t             *value, event, step;
    ngx_uint_t             k, i, last, off;
    ngx_array_t           *a;
    ngx_http_llm_frame_t  *fr;

    value = cf->args->elts;

    if (value[0].len == sizeof("coalesce") - 1
        && ngx_strncmp(value[0].data, "coalesce", value[0].len) == 0)
    {
        return ngx_http_llm_format_coalesce(cf, fmt);
    }

    for (k = 0; k < NGX_HTTP_LLM_K_N; k++) {
        if (ngx_http_llm_kind_names[k].len == value[0].len
            && ngx_strncmp(ngx_http_llm_kind_names[k].data, value[0].data,
                           value[0].len) == 0)
        {
            break;
        }
    }

    if (k == NGX_HTTP_LLM_K_N) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_format: unknown event kind \"%V\"",
                           &value[0]);
        return NGX_CONF_ERROR;
    }

    ngx_str_null(&event);
    ngx_str_null(&step);
    when = -1;
    off = 0;
    last = cf->args->nelts - 1;

    if (last == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_format: \"%V\" takes a template, or "
                           "\"off\"", &value[0]);
        return NGX_CONF_ERROR;
    }

    if (value[last].len == 3 && ngx_strncmp(value[last].data, "off", 3) == 0)
    {
        off = 1;
    }

    for (i = 1; i < last; i++) {

        if (value[i].len > 6 && ngx_strncmp(value[i].data, "event=", 6) == 0
            && k < NGX_HTTP_LLM_K_RESPONSE && !off)
        {
            event.data = value[i].data + 6;
            event.len = value[i].len - 6;

            /* one SSE field value: no line breaks, no ':' */

            for (p = event.data; p < event.data + event.len; p++) {
                if (*p <= 0x20 || *p == ':' || *p == 0x7f) {
                    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                       "llm_format: invalid event name "
                                       "\"%V\"", &event);
                    return NGX_CONF_ERROR;
                }
            }

            continue;
        }

        if (value[i].len > 5 && ngx_strncmp(value[i].data, "step=", 5) == 0
            && ngx_http_llm_kind_of_step(k))
        {
            step.data = value[i].data + 5;
            step.len = value[i].len - 5;
            continue;
        }

        if (k == NGX_HTTP_LLM_K_CHECK && ngx_strcmp(value[i].data,
                                                    "when=passed") == 0)
        {
            when = 1;
            continue;
        }

        if (k == NGX_HTTP_LLM_K_CHECK && ngx_strcmp(value[i].data,
                                                    "when=failed") == 0)
        {
            when = 0;
            continue;
        }

        /* a pipeline's complete: it stopped early, or ran to its end */

        if (k == NGX_HTTP_LLM_K_COMPLETE
            && ngx_strcmp(value[i].data, "when=stopped") == 0)
        {
            when = NGX_HTTP_LLM_WHEN_STOPPED;
            continue;
        }

        if (k == NGX_HTTP_LLM_K_COMPLETE
            && ngx_strcmp(value[i].data, "when=finished") == 0)
        {
            when = NGX_HTTP_LLM_WHEN_FINISHED;
            continue;
        }

        if (k >= NGX_HTTP_LLM_K_RESPONSE
            && ngx_strncmp(value[i].data, "event=", 6) == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "llm_format: \"%V\" is a JSON answer, not "
                               "an event: it takes no event name",
                               &value[0]);
            return NGX_CONF_ERROR;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_format: invalid parameter \"%V\" of \"%V\"",
                           &value[i], &value[0]);
        return NGX_CONF_ERROR;
    }

    if (off && (k == NGX_HTTP_LLM_K_COMPLETE || k == NGX_HTTP_LLM_K_ERROR
                || k == NGX_HTTP_LLM_K_SHUTDOWN))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_format: \"%V\" cannot be \"off\" (a stream "
                           "ends with it)", &value[0]);
        return NGX_CONF_ERROR;
    }

    a = fmt->tpls[k];

    if (a == NULL) {
        a = ngx_array_create(cf->pool, 1, sizeof(ngx_http_llm_frame_t));
        if (a == NULL) {
            return NGX_CONF_ERROR;
        }

        fmt->tpls[k] = a;

    } else if (k >= NGX_HTTP_LLM_K_RESPONSE
               || ngx_http_llm_frames_off(a, &step, when, off))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_format: \"%V\" is duplicate, or \"off\" "
                           "and a template for the same events", &value[0]);
        return NGX_CONF_ERROR;
    }

    fr = ngx_array_push(a);
    if (fr == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(fr, sizeof(ngx_http_llm_frame_t));

    fr->event = event;
    fr->step = step;
    fr->when = when;
    fr->off = off;

    if (off) {
        return NGX_CONF_OK;
    }

    what = ngx_pnalloc(cf->pool,
                       value[0].len + sizeof("llm_format: \"\" template"));
    if (what == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_sprintf(what, "llm_format: \"%V\" template%Z", &value[0]);

    return ngx_http_llm_tpl_compile(cf, &fr->tpl, &value[last],
                                    ngx_http_llm_format_vars,
                                    NGX_HTTP_LLM_TPL_JSON
                                    | NGX_HTTP_LLM_TPL_NGINX,
                                    (const char *) what);
}


/* coalesce TIME [SIZE]: deltas at most every TIME, or once SIZE is due */

static char *
ngx_http_llm_format_coalesce(ngx_conf_t *cf, ngx_http_llm_format_t *fmt)
{
    ssize_t     size;
    ngx_str_t  *value;
    ngx_msec_t  time;

    value = cf->args->elts;

    if (cf->args->nelts < 2 || cf->args->nelts > 3) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_format: \"coalesce\" takes a time and an "
                           "optional size");
        return NGX_CONF_ERROR;
    }

    time = ngx_parse_time(&value[1], 0);
    if (time == (ngx_msec_t) NGX_ERROR || time == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_format: invalid coalesce time \"%V\"",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    fmt->coalesce_time = time;

    if (cf->args->nelts == 3) {
        size = ngx_parse_size(&value[2]);
        if (size <= 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "llm_format: invalid coalesce size \"%V\"",
                               &value[2]);
            return NGX_CONF_ERROR;
        }

        fmt->coalesce_size = size;
    }

    return NGX_CONF_OK;
}


/* llm_format NAME: server and location context */

char *
ngx_http_llm_format_choose(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_str_t                 *value;
    ngx_uint_t                 i;
    ngx_http_llm_format_t    **f;
    ngx_http_llm_main_conf_t  *lmcf;

    if (llcf->format != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;
    lmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_llm_module);

    if (ngx_http_llm_formats_init(cf, &lmcf->formats) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    f = lmcf->formats->elts;

    for (i = 0; i < lmcf->formats->nelts; i++) {
        if (f[i]->name.len == value[1].len
            && ngx_strncmp(f[i]->name.data, value[1].data, value[1].len) == 0)
        {
            llcf->format = f[i];
            return NGX_CONF_OK;
        }
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "unknown llm_format \"%V\" (a format is defined "
                       "before it is used)", &value[1]);

    return NGX_CONF_ERROR;
}


/* the list of formats starts with the built-in ones */

ngx_int_t
ngx_http_llm_formats_init(ngx_conf_t *cf, ngx_array_t **formats)
{
    ngx_http_llm_format_t  **f;

    if (*formats) {
        return NGX_OK;
    }

    *formats = ngx_array_create(cf->pool, 4, sizeof(ngx_http_llm_format_t *));
    if (*formats == NULL) {
        return NGX_ERROR;
    }

    f = ngx_array_push_n(*formats, 2);
    if (f == NULL) {
        return NGX_ERROR;
    }

    f[0] = &ngx_http_llm_format_builtin;
    f[1] = &ngx_http_llm_format_openai;

    return NGX_OK;
}


ngx_http_llm_format_t *
ngx_http_llm_format_default(ngx_conf_t *cf)
{
    return &ngx_http_llm_format_builtin;
}


/*
 * The location's model for the request answered: evaluated once per
 * stream (a variable would otherwise take request pool memory for every
 * event), NGX_DECLINED without one.
 */

ngx_int_t
ngx_http_llm_format_model(ngx_http_llm_fmt_ctx_t *fc, ngx_str_t *model)
{
    ngx_http_llm_loc_conf_t  *llcf;

    if (fc->model && fc->model->data) {
        *model = *fc->model;
        return NGX_OK;
    }

    if (fc->request == NULL) {
        return NGX_DECLINED;
    }

    llcf = ngx_http_get_module_loc_conf(fc->request, ngx_http_llm_module);

    if (llcf->model == NULL
        || ngx_http_complex_value(fc->request, llcf->model, model) != NGX_OK
        || model->data == NULL)
    {
        return NGX_DECLINED;
    }

    if (fc->model) {
        *fc->model = *model;
    }

    return NGX_OK;
}


ngx_uint_t
ngx_http_llm_format_event(ngx_http_llm_format_t *fmt,
    ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_render_t *w)
{
    json_t                *payload;
    ngx_int_t              passed;
    ngx_uint_t             i, last, specific, looked;
    const char            *step;
    ngx_array_t           *a;
    ngx_http_llm_kind_e    kind;
    ngx_http_llm_frame_t  *fr;

    if (fmt->event) {
        return fmt->event(fmt, fc, w);
    }

    /* a template's event is rendered whole, its values being anywhere */

    kind = ngx_http_llm_event_kind(fmt, fc->job, fc->first);
    a = fmt->tpls[kind];

    if (a == NULL) {
        return 1;
    }

    fr = a->elts;
    payload = NULL;
    step = NULL;
    passed = -1;
    specific = 0;
    looked = 0;

    for (i = 0; i < a->nelts; i++) {
        if (fr[i].step.len == 0 && fr[i].when == -1) {
            continue;
        }

        if (kind == NGX_HTTP_LLM_K_COMPLETE && !looked) {
            looked = 1;
            passed = ngx_http_llm_format_stopped(fc)
                     ? NGX_HTTP_LLM_WHEN_STOPPED : NGX_HTTP_LLM_WHEN_FINISHED;

        } else if (payload == NULL && kind != NGX_HTTP_LLM_K_COMPLETE) {
            payload = ngx_http_llm_format_payload(fc);
            step = json_string_value(json_object_get(payload, "step"));
            passed = json_is_boolean(json_object_get(payload, "passed"))
                     ? json_is_true(json_object_get(payload, "passed"))
                     : -1;
        }

        if (fr[i].step.len && step
            && ngx_strlen(step) == fr[i].step.len
            && ngx_strncmp(step, fr[i].step.data, fr[i].step.len) == 0)
        {
            specific = 1;
        }
    }

    /*
     * The frames for this event: those of its step when it has some,
     * else those for any step; then those of its check's outcome.
     * Several are several SSE events; the id goes on the last, so a
     * client that resumes has seen all of them.
     */

    last = a->nelts;

    for (i = 0; i < a->nelts; i++) {
        if (ngx_http_llm_frame_applies(&fr[i], specific, step, passed)
            && !fr[i].off)
        {
            last = i;
        }
    }

    for (i = 0; i < a->nelts; i++) {
        if (!ngx_http_llm_frame_applies(&fr[i], specific, step, passed)
            || fr[i].off)
        {
            continue;
        }

        if (i == last) {
            ngx_http_llm_render_id(w, fc->job, fc->last + 1);
        }

        if (fr[i].event.len) {
            ngx_http_llm_render_raw(w, "event: ", sizeof("event: ") - 1);
            ngx_http_llm_render_raw(w, fr[i].event.data, fr[i].event.len);
            ngx_http_llm_render_raw(w, "\n", 1);
        }

        ngx_http_llm_render_raw(w, "data: ", sizeof("data: ") - 1);
        ngx_http_llm_tpl_render(&fr[i].tpl, fc, fc->request, w);
        ngx_http_llm_render_raw(w, "\n\n", 2);
    }

    json_decref(payload);

    return 1;
}


static ngx_uint_t
ngx_http_llm_frame_applies(ngx_http_llm_frame_t *fr, ngx_uint_t specific,
    const char *step, ngx_int_t passed)
{
    if (specific) {
        if (fr->step.len == 0 || ngx_strlen(step) != fr->step.len
            || ngx_strncmp(step, fr->step.data, fr->step.len) != 0)
        {
            return 0;
        }

    } else if (fr->step.len) {
        return 0;
    }

    return fr->when == -1 || fr->when == passed;
}


/* a frame for a selection (step, outcome) that another is "off" for */

static ngx_uint_t
ngx_http_llm_frames_off(ngx_array_t *a, ngx_str_t *step, ngx_int_t when,
    ngx_uint_t off)
{
    ngx_uint_t             i;
    ngx_http_llm_frame_t  *fr;

    fr = a->elts;

    for (i = 0; i < a->nelts; i++) {
        /* no step on either side: both may be NULL, not for strncmp() */

        if ((fr[i].off || off)
            && fr[i].step.len == step->len
            && (step->len == 0
                || ngx_strncmp(fr[i].step.data, step->data, step->len) == 0)
            && fr[i].when == when)
        {
            return 1;
        }
    }

    return 0;
}


static ngx_uint_t
ngx_http_llm_kind_of_step(ngx_uint_t k)
{
    return k == NGX_HTTP_LLM_K_STEP_START || k == NGX_HTTP_LLM_K_STEP
           || k == NGX_HTTP_LLM_K_CHECK || k == NGX_HTTP_LLM_K_PROGRESS
           || k == NGX_HTTP_LLM_K_PAUSED || k == NGX_HTTP_LLM_K_RESUMED;
}


ngx_int_t
ngx_http_llm_format_body(ngx_http_llm_format_t *fmt, ngx_http_llm_kind_e kind,
    ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_render_t *w)
{
    ngx_array_t           *a;
    ngx_http_llm_frame_t  *fr;

    if (fmt->body) {
        return fmt->body(fmt, kind, fc, w);
    }

    a = fmt->tpls[kind];
    fr = a ? a->elts : NULL;

    if (fr == NULL || a->nelts == 0 || fr->off) {
        return NGX_DECLINED;
    }

    ngx_http_llm_tpl_render(&fr->tpl, fc, fc->request, w);

    return NGX_OK;
}


static ngx_http_llm_kind_e
ngx_http_llm_event_kind(ngx_http_llm_format_t *fmt, ngx_http_llm_job_t *job,
    ngx_uint_t first)
{
    switch (job->events[first].type) {

    case NGX_HTTP_LLM_EV_START:
        return NGX_HTTP_LLM_K_START;

    case NGX_HTTP_LLM_EV_DELTA:
        return NGX_HTTP_LLM_K_DELTA;

    case NGX_HTTP_LLM_EV_COMPLETE:
        return NGX_HTTP_LLM_K_COMPLETE;

    case NGX_HTTP_LLM_EV_STEP_START:
        return NGX_HTTP_LLM_K_STEP_START;

    case NGX_HTTP_LLM_EV_STEP:
        return NGX_HTTP_LLM_K_STEP;

    case NGX_HTTP_LLM_EV_CHECK:
        return NGX_HTTP_LLM_K_CHECK;

    case NGX_HTTP_LLM_EV_PROGRESS:
        return NGX_HTTP_LLM_K_PROGRESS;

    case NGX_HTTP_LLM_EV_PAUSED:
        return NGX_HTTP_LLM_K_PAUSED;

    case NGX_HTTP_LLM_EV_RESUMED:
        return NGX_HTTP_LLM_K_RESUMED;

    default:
        break;
    }

    if (fmt->tpls[NGX_HTTP_LLM_K_SHUTDOWN]
        && ngx_http_llm_str_is(job->outcome.code, job->outcome.code_len,
                               NGX_HTTP_LLM_E_SHUTDOWN))
    {
        return NGX_HTTP_LLM_K_SHUTDOWN;
    }

    return NGX_HTTP_LLM_K_ERROR;
}


/*
 * The module's own events (docs/events.md), with ids and names: start,
 * delta, a pipeline's payload events (their JSON as it is), complete,
 * error.
 */

static ngx_uint_t
ngx_http_llm_default_event(ngx_http_llm_format_t *fmt,
    ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_render_t *w)
{
    size_t                   n;
    ngx_uint_t               i;
    ngx_http_llm_job_t      *job;
    ngx_http_llm_event_t    *ev, *end;
    ngx_http_llm_outcome_t  *oc;

    job = fc->job;
    oc = &job->outcome;
    ev = &job->events[fc->first];
    end = &job->events[fc->last];

    if (ev->type == NGX_HTTP_LLM_EV_START || ev->type == NGX_HTTP_LLM_EV_DELTA)
    {
        ngx_http_llm_default_head(job, fc->last, w);

        if (ev->type == NGX_HTTP_LLM_EV_START) {
            ngx_http_llm_render_raw(w, "{\"job\":\"",
                                    sizeof("{\"job\":\"") - 1);
            ngx_http_llm_render_raw(w, job->id, NGX_HTTP_LLM_JOB_ID_LEN);
            ngx_http_llm_render_raw(w, "\"}\n\n", 4);

        } else {
            ngx_http_llm_render_raw(w, "{\"text\":",
                                    sizeof("{\"text\":") - 1);
            ngx_http_llm_render_str(w, job->text + ev->off,
                                    end->off + end->len - ev->off, 1);
            ngx_http_llm_render_raw(w, "}\n\n", 3);
        }

        return 1;
    }

    if (ngx_http_llm_event_payload(ev->type)) {
        ngx_http_llm_default_head(job, fc->first, w);
        ngx_http_llm_render_raw(w, job->meta + ev->off, ev->len);
        ngx_http_llm_render_raw(w, "\n\n", 2);
        return 1;
    }

    /*
     * A final event: its text in pieces of at most fc->room bytes, each
     * ending on a character, the head with the first and the outcome
     * after the last.
     */

    n = ngx_min(job->text_len - fc->final, fc->room);

    /* at most 3 bytes back: a character has at most 4 */

    for (i = 0;
         i < 3 && n && fc->final + n < job->text_len
         && (job->text[fc->final + n] & 0xc0) == 0x80;
         i++)
    {
        n--;
    }

    if (n == 0 && fc->final < job->text_len) {
        return 0;
    }

    if (fc->final == 0) {
        ngx_http_llm_default_head(job, fc->first, w);

        if (ev->type == NGX_HTTP_LLM_EV_ERROR) {
            ngx_http_llm_render_raw(w, "{\"code\":",
                                    sizeof("{\"code\":") - 1);
            ngx_http_llm_render_str(w, oc->code, oc->code_len, 1);
            ngx_http_llm_render_raw(w, ",\"message\":",
                                    sizeof(",\"message\":") - 1);
            ngx_http_llm_render_str(w, oc->message, oc->message_len, 1);
            ngx_http_llm_render_raw(w, ",\"text\":\"",
                                    sizeof(",\"text\":\"") - 1);

        } else {
            ngx_http_llm_render_raw(w, "{\"text\":\"",
                                    sizeof("{\"text\":\"") - 1);
        }
    }

    /* a job without text has NULL there: no NULL + 0 */

    if (n) {
        ngx_http_llm_render_str(w, job->text + fc->final, n, 0);
        fc->final += n;
    }

    if (fc->final < job->text_len) {
        return 0;
    }

    fc->final = 0;

    ngx_http_llm_render_raw(w, "\"", 1);

    if (ev->type == NGX_HTTP_LLM_EV_COMPLETE) {

        if (oc->finish_len) {
            ngx_http_llm_render_raw(w, ",\"finish_reason\":",
                                    sizeof(",\"finish_reason\":") - 1);
            ngx_http_llm_render_str(w, oc->finish, oc->finish_len, 1);
        }

        if (oc->input_tokens >= 0 || oc->output_tokens >= 0) {
            ngx_http_llm_render_raw(w, ",\"usage\":",
                                    sizeof(",\"usage\":") - 1);
            ngx_http_llm_render_usage(w, job);
        }
    }

    ngx_http_llm_render_raw(w, "}\n\n", 3);

    return 1;
}


/* the "id:" and "event:" lines of event i, and "data: " */

static void
ngx_http_llm_default_head(ngx_http_llm_job_t *job, ngx_uint_t i,
    ngx_http_llm_render_t *w)
{
    const char  *name;

    name = ngx_http_llm_event_names[job->events[i].type];

    ngx_http_llm_render_id(w, job, i + 1);
    ngx_http_llm_render_raw(w, "event: ", sizeof("event: ") - 1);
    ngx_http_llm_render_raw(w, name, ngx_strlen(name));
    ngx_http_llm_render_raw(w, "\ndata: ", sizeof("\ndata: ") - 1);
}


/* {"input_tokens":N,"output_tokens":N,"total_tokens":N}, known ones only */

static void
ngx_http_llm_render_usage(ngx_http_llm_render_t *w, ngx_http_llm_job_t *job)
{
    u_char  num[NGX_INT64_LEN * 3 + 64], *p;

    p = num;
    *p++ = '{';

    if (job->outcome.input_tokens >= 0) {
        p = ngx_sprintf(p, "\"input_tokens\":%i", job->outcome.input_tokens);
    }

    if (job->outcome.output_tokens >= 0) {
        p = ngx_sprintf(p, "%s\"output_tokens\":%i",
                        p > num + 1 ? "," : "", job->outcome.output_tokens);
    }

    if (job->outcome.input_tokens >= 0 && job->outcome.output_tokens >= 0) {
        p = ngx_sprintf(p, ",\"total_tokens\":%i",
                        job->outcome.input_tokens + job->outcome.output_tokens);
    }

    *p++ = '}';

    ngx_http_llm_render_raw(w, num, p - num);
}


/* id: JOB:SEQ */

void
ngx_http_llm_render_id(ngx_http_llm_render_t *w, ngx_http_llm_job_t *job,
    ngx_uint_t seq)
{
    u_char  line[NGX_HTTP_LLM_JOB_ID_LEN + NGX_INT_T_LEN + 8];
    size_t  n;

    n = ngx_sprintf(line, "id: %*s:%ui\n", (size_t) NGX_HTTP_LLM_JOB_ID_LEN,
                    job->id, seq)
        - line;

    ngx_http_llm_render_raw(w, line, n);
}
