
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


#define ngx_http_llm_isname(c)                                              \
    (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z')              \
     || ((c) >= '0' && (c) <= '9') || (c) == '_')


typedef enum {
    NGX_HTTP_LLM_VAL_NULL = 0,
    NGX_HTTP_LLM_VAL_STR,           /* text, escaped when rendered */
    NGX_HTTP_LLM_VAL_RAW,           /* JSON text: a number, true, false */
    NGX_HTTP_LLM_VAL_JSON           /* a jansson value, released after */
} ngx_http_llm_val_type_e;


typedef struct {
    ngx_http_llm_val_type_e        type;
    u_char                        *data;
    size_t                         len;
    json_t                        *json;
    u_char                         buf[NGX_INT64_LEN * 2 + 32];
} ngx_http_llm_value_t;


typedef void (*ngx_http_llm_var_pt)(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v);


typedef struct {
    ngx_str_t                      name;
    ngx_http_llm_var_pt            get;
    unsigned                       json:1;      /* ${name.field} allowed */
} ngx_http_llm_var_t;


/* one piece of a template: literal bytes or a value */
typedef struct {
    ngx_str_t                      lit;
    ngx_http_llm_var_t            *var;         /* NULL: literal or nginx */
    ngx_int_t                      index;       /* nginx variable, or -1 */
    ngx_str_t                      path;        /* ${name.a.b}: "a.b" */
    unsigned                       quoted:1;    /* inside a JSON string */
} ngx_http_llm_tpl_op_t;


typedef struct {
    ngx_str_t                      event;       /* SSE name, or empty */
    ngx_array_t                    ops;         /* ngx_http_llm_tpl_op_t */
} ngx_http_llm_tpl_t;


static char *ngx_http_llm_format_line(ngx_conf_t *cf, ngx_command_t *dummy,
    void *conf);
static char *ngx_http_llm_format_coalesce(ngx_conf_t *cf,
    ngx_http_llm_format_t *fmt);
static char *ngx_http_llm_tpl_compile(ngx_conf_t *cf, ngx_str_t *kind,
    ngx_str_t *src, ngx_http_llm_tpl_t *tpl);
static char *ngx_http_llm_tpl_var(ngx_conf_t *cf, ngx_str_t *kind,
    u_char **pos, u_char *last, ngx_http_llm_tpl_op_t *op);
static ngx_http_llm_kind_e ngx_http_llm_event_kind(ngx_http_llm_format_t *fmt,
    ngx_http_llm_job_t *job, ngx_uint_t first);
static void ngx_http_llm_tpl_render(ngx_http_llm_tpl_t *tpl,
    ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_render_t *w);
static void ngx_http_llm_render_value(ngx_http_llm_render_t *w,
    ngx_http_llm_value_t *v, ngx_uint_t quoted);
static void ngx_http_llm_default_event(ngx_http_llm_format_t *fmt,
    ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_render_t *w);
static void ngx_http_llm_render_usage(ngx_http_llm_render_t *w,
    ngx_http_llm_job_t *job);

static void ngx_http_llm_var_job_id(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_var_event_id(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_var_seq(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_var_delta(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_var_text(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_var_finish(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_var_usage(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_var_input_tokens(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_var_output_tokens(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_var_total_tokens(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_var_error_code(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_var_error_message(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_var_status(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_var_state(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_var_success(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_var_time(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_var_time_ms(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_var_created(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_var_elapsed(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_var_model(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v);


static ngx_str_t  ngx_http_llm_kind_names[] = {
    ngx_string("start"),
    ngx_string("delta"),
    ngx_string("complete"),
    ngx_string("error"),
    ngx_string("shutdown"),
    ngx_string("response"),
    ngx_string("refusal")
};


static const char  *ngx_http_llm_event_names[] = {
    "start", "delta", "complete", "error"
};


static ngx_http_llm_var_t  ngx_http_llm_vars[] = {
    { ngx_string("llm_job_id"), ngx_http_llm_var_job_id, 0 },
    { ngx_string("llm_event_id"), ngx_http_llm_var_event_id, 0 },
    { ngx_string("llm_seq"), ngx_http_llm_var_seq, 0 },
    { ngx_string("llm_delta"), ngx_http_llm_var_delta, 0 },
    { ngx_string("llm_text"), ngx_http_llm_var_text, 0 },
    { ngx_string("llm_finish_reason"), ngx_http_llm_var_finish, 0 },
    { ngx_string("llm_usage"), ngx_http_llm_var_usage, 1 },
    { ngx_string("llm_input_tokens"), ngx_http_llm_var_input_tokens, 0 },
    { ngx_string("llm_output_tokens"), ngx_http_llm_var_output_tokens, 0 },
    { ngx_string("llm_total_tokens"), ngx_http_llm_var_total_tokens, 0 },
    { ngx_string("llm_error_code"), ngx_http_llm_var_error_code, 0 },
    { ngx_string("llm_error_message"), ngx_http_llm_var_error_message, 0 },
    { ngx_string("llm_status"), ngx_http_llm_var_status, 0 },
    { ngx_string("llm_state"), ngx_http_llm_var_state, 0 },
    { ngx_string("llm_success"), ngx_http_llm_var_success, 0 },
    { ngx_string("llm_time"), ngx_http_llm_var_time, 0 },
    { ngx_string("llm_time_ms"), ngx_http_llm_var_time_ms, 0 },
    { ngx_string("llm_created"), ngx_http_llm_var_created, 0 },
    { ngx_string("llm_elapsed"), ngx_http_llm_var_elapsed, 0 },
    { ngx_string("llm_model"), ngx_http_llm_var_model, 0 },
    { ngx_null_string, NULL, 0 }
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

    u_char              *p;
    ngx_str_t           *value, event;
    ngx_uint_t           i, k;
    ngx_array_t         *a;
    ngx_http_llm_tpl_t  *tpl;

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

    if (cf->args->nelts < 2 || cf->args->nelts > 3) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_format: \"%V\" takes [event=NAME] and a "
                           "template, or \"off\"", &value[0]);
        return NGX_CONF_ERROR;
    }

    a = fmt->tpls[k];

    if (cf->args->nelts == 2
        && value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0)
    {
        if (a != NULL || k == NGX_HTTP_LLM_K_COMPLETE
            || k == NGX_HTTP_LLM_K_ERROR)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "llm_format: \"%V\" cannot be \"off\" %s",
                               &value[0], a ? "after a template"
                                            : "(a stream ends with it)");
            return NGX_CONF_ERROR;
        }

        fmt->tpls[k] = ngx_array_create(cf->pool, 1,
                                        sizeof(ngx_http_llm_tpl_t));
        return fmt->tpls[k] ? NGX_CONF_OK : NGX_CONF_ERROR;
    }

    ngx_str_null(&event);

    if (cf->args->nelts == 3) {
        if (value[1].len <= sizeof("event=") - 1
            || ngx_strncmp(value[1].data, "event=", sizeof("event=") - 1)
               != 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "llm_format: invalid parameter \"%V\"",
                               &value[1]);
            return NGX_CONF_ERROR;
        }

        if (k >= NGX_HTTP_LLM_K_RESPONSE) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "llm_format: \"%V\" is a JSON answer, not "
                               "an event: it takes no event name",
                               &value[0]);
            return NGX_CONF_ERROR;
        }

        event.data = value[1].data + sizeof("event=") - 1;
        event.len = value[1].len - (sizeof("event=") - 1);

        /* an event name is one SSE field value: no line breaks, no ':' */

        for (p = event.data; p < event.data + event.len; p++) {
            if (*p <= 0x20 || *p == ':' || *p == 0x7f) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "llm_format: invalid event name \"%V\"",
                                   &event);
                return NGX_CONF_ERROR;
            }
        }
    }

    if (a == NULL) {
        a = ngx_array_create(cf->pool, 1, sizeof(ngx_http_llm_tpl_t));
        if (a == NULL) {
            return NGX_CONF_ERROR;
        }

        fmt->tpls[k] = a;

    } else if (a->nelts == 0 || k >= NGX_HTTP_LLM_K_RESPONSE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_format: \"%V\" is duplicate%s", &value[0],
                           a->nelts ? "" : " (it is \"off\")");
        return NGX_CONF_ERROR;
    }

    tpl = ngx_array_push(a);
    if (tpl == NULL) {
        return NGX_CONF_ERROR;
    }

    tpl->event = event;

    i = cf->args->nelts - 1;

    return ngx_http_llm_tpl_compile(cf, &value[0], &value[i], tpl);
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


/*
 * Splits a template into literals and values, minifying the JSON around
 * them, then checks that it is JSON with every value in place.
 */

static char *
ngx_http_llm_tpl_compile(ngx_conf_t *cf, ngx_str_t *kind, ngx_str_t *src,
    ngx_http_llm_tpl_t *tpl)
{
    u_char                 *p, *last, *lit, *l, *check, *ck, c;
    json_t                 *json;
    ngx_uint_t              in_str, esc;
    json_error_t            err;
    ngx_http_llm_tpl_op_t  *op;

    if (ngx_array_init(&tpl->ops, cf->pool, 4, sizeof(ngx_http_llm_tpl_op_t))
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    /* a literal is never longer than the source, nor is the check */

    lit = ngx_pnalloc(cf->pool, src->len + 1);
    check = ngx_pnalloc(cf->pool, src->len + 1);
    if (lit == NULL || check == NULL) {
        return NGX_CONF_ERROR;
    }

    l = lit;
    ck = check;
    in_str = 0;
    esc = 0;

    p = src->data;
    last = p + src->len;

    while (p < last) {
        c = *p;

        if (c == '$' && !esc && p + 1 < last
            && (p[1] == '{' || (ngx_http_llm_isname(p[1])
                               && !(p[1] >= '0' && p[1] <= '9'))))
        {
            if (l > lit) {
                op = ngx_array_push(&tpl->ops);
                if (op == NULL) {
                    return NGX_CONF_ERROR;
                }

                ngx_memzero(op, sizeof(ngx_http_llm_tpl_op_t));
                op->lit.data = lit;
                op->lit.len = l - lit;
                op->index = -1;
                lit = l;
            }

            op = ngx_array_push(&tpl->ops);
            if (op == NULL) {
                return NGX_CONF_ERROR;
            }

            ngx_memzero(op, sizeof(ngx_http_llm_tpl_op_t));
            op->quoted = in_str;

            if (ngx_http_llm_tpl_var(cf, kind, &p, last, op) != NGX_CONF_OK) {
                return NGX_CONF_ERROR;
            }

            if (!in_str) {
                *ck++ = '0';
            }

            continue;
        }

        p++;

        if (in_str) {
            if (esc) {
                esc = 0;

            } else if (c == '\\') {
                esc = 1;

            } else if (c == '"') {
                in_str = 0;
            }

        } else if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            continue;

        } else if (c == '"') {
            in_str = 1;
        }

        *l++ = c;
        *ck++ = c;
    }

    if (l > lit) {
        op = ngx_array_push(&tpl->ops);
        if (op == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memzero(op, sizeof(ngx_http_llm_tpl_op_t));
        op->lit.data = lit;
        op->lit.len = l - lit;
        op->index = -1;
    }

    json = json_loadb((char *) check, ck - check, JSON_DECODE_ANY, &err);

    if (json == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_format: \"%V\" template is not JSON: %s",
                           kind, err.text);
        return NGX_CONF_ERROR;
    }

    json_decref(json);

    return NGX_CONF_OK;
}


/* $name, ${name} or ${name.field.field} */

static char *
ngx_http_llm_tpl_var(ngx_conf_t *cf, ngx_str_t *kind, u_char **pos,
    u_char *last, ngx_http_llm_tpl_op_t *op)
{
    u_char              *p, *start, *dot;
    ngx_str_t            name;
    ngx_uint_t           braces;
    ngx_http_llm_var_t  *v;

    p = *pos + 1;
    braces = (*p == '{');

    if (braces) {
        p++;
    }

    start = p;
    dot = NULL;

    while (p < last
           && (ngx_http_llm_isname(*p)
               || (braces && (*p == '.' || *p == '-'))))
    {
        if (*p == '.' && dot == NULL) {
            dot = p;
        }

        p++;
    }

    if (braces && (p == last || *p != '}')) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_format: \"%V\" template: unterminated "
                           "\"${\"", kind);
        return NGX_CONF_ERROR;
    }

    name.data = start;
    name.len = (dot ? dot : p) - start;

    if (dot) {
        op->path.data = dot + 1;
        op->path.len = p - dot - 1;
    }

    *pos = braces ? p + 1 : p;

    if (name.len == 0 || (dot && op->path.len == 0)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_format: \"%V\" template: empty variable "
                           "name", kind);
        return NGX_CONF_ERROR;
    }

    op->index = -1;

    for (v = ngx_http_llm_vars; v->name.len; v++) {
        if (v->name.len == name.len
            && ngx_strncmp(v->name.data, name.data, name.len) == 0)
        {
            op->var = v;
            break;
        }
    }

    if (op->var == NULL) {

        /* the module's own names are checked here, not at run time */

        if (name.len >= 4 && ngx_strncmp(name.data, "llm_", 4) == 0
            && !(name.len > 10
                 && ngx_strncmp(name.data, "llm_input_", 10) == 0))
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "llm_format: \"%V\" template: unknown "
                               "variable \"$%V\"", kind, &name);
            return NGX_CONF_ERROR;
        }

        op->index = ngx_http_get_variable_index(cf, &name);
        if (op->index == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }
    }

    if (dot && (op->var == NULL || !op->var->json)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_format: \"%V\" template: \"$%V\" has no "
                           "fields", kind, &name);
        return NGX_CONF_ERROR;
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


void
ngx_http_llm_format_event(ngx_http_llm_format_t *fmt,
    ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_render_t *w)
{
    ngx_uint_t           i;
    ngx_array_t         *a;
    ngx_http_llm_tpl_t  *tpl;

    if (fmt->event) {
        fmt->event(fmt, fc, w);
        return;
    }

    a = fmt->tpls[ngx_http_llm_event_kind(fmt, fc->job, fc->first)];

    if (a == NULL) {
        return;
    }

    tpl = a->elts;

    /*
     * Several templates for one kind are several SSE events; the id goes
     * on the last, so a client that resumes has seen all of them.
     */

    for (i = 0; i < a->nelts; i++) {
        if (i == a->nelts - 1) {
            ngx_http_llm_render_id(w, fc->job, fc->last + 1);
        }

        if (tpl[i].event.len) {
            ngx_http_llm_render_raw(w, "event: ", sizeof("event: ") - 1);
            ngx_http_llm_render_raw(w, tpl[i].event.data, tpl[i].event.len);
            ngx_http_llm_render_raw(w, "\n", 1);
        }

        ngx_http_llm_render_raw(w, "data: ", sizeof("data: ") - 1);
        ngx_http_llm_tpl_render(&tpl[i], fc, w);
        ngx_http_llm_render_raw(w, "\n\n", 2);
    }
}


ngx_int_t
ngx_http_llm_format_body(ngx_http_llm_format_t *fmt, ngx_http_llm_kind_e kind,
    ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_render_t *w)
{
    ngx_array_t  *a;

    if (fmt->body) {
        return fmt->body(fmt, kind, fc, w);
    }

    a = fmt->tpls[kind];

    if (a == NULL || a->nelts == 0) {
        return NGX_DECLINED;
    }

    ngx_http_llm_tpl_render(a->elts, fc, w);

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

    default:
        break;
    }

    if (fmt->tpls[NGX_HTTP_LLM_K_SHUTDOWN]
        && ngx_http_llm_str_is(job->code, job->code_len,
                               NGX_HTTP_LLM_E_SHUTDOWN))
    {
        return NGX_HTTP_LLM_K_SHUTDOWN;
    }

    return NGX_HTTP_LLM_K_ERROR;
}


static void
ngx_http_llm_tpl_render(ngx_http_llm_tpl_t *tpl, ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_render_t *w)
{
    u_char                     *p, *last;
    json_t                     *j;
    ngx_uint_t                  i;
    ngx_http_llm_value_t        v;
    ngx_http_llm_tpl_op_t      *op;
    ngx_http_variable_value_t  *vv;

    op = tpl->ops.elts;

    for (i = 0; i < tpl->ops.nelts; i++) {

        if (op[i].lit.len) {
            ngx_http_llm_render_raw(w, op[i].lit.data, op[i].lit.len);
            continue;
        }

        ngx_memzero(&v, sizeof(ngx_http_llm_value_t) - sizeof(v.buf));

        if (op[i].var) {
            op[i].var->get(fc, &v);

        } else if (fc->request) {
            vv = ngx_http_get_indexed_variable(fc->request, op[i].index);

            if (vv && !vv->not_found) {
                v.type = NGX_HTTP_LLM_VAL_STR;
                v.data = vv->data;
                v.len = vv->len;
            }
        }

        /* ${name.a.b}: walk the object; a missing field is null */

        if (op[i].path.len && v.type == NGX_HTTP_LLM_VAL_JSON) {
            j = v.json;
            p = op[i].path.data;
            last = p + op[i].path.len;

            while (j && p < last) {
                u_char  *dot = ngx_strlchr(p, last, '.');

                if (dot == NULL) {
                    dot = last;
                }

                j = json_is_object(j)
                    ? json_object_getn(j, (const char *) p, dot - p)
                    : NULL;
                p = dot + 1;
            }

            j = json_incref(j);
            json_decref(v.json);
            v.json = j;

            if (j == NULL) {
                v.type = NGX_HTTP_LLM_VAL_NULL;
            }
        }

        ngx_http_llm_render_value(w, &v, op[i].quoted);

        if (v.json) {
            json_decref(v.json);
        }
    }
}


static void
ngx_http_llm_render_value(ngx_http_llm_render_t *w, ngx_http_llm_value_t *v,
    ngx_uint_t quoted)
{
    char  *s;

    switch (v->type) {

    case NGX_HTTP_LLM_VAL_NULL:
        if (!quoted) {
            ngx_http_llm_render_raw(w, "null", 4);
        }
        break;

    case NGX_HTTP_LLM_VAL_STR:
        ngx_http_llm_render_str(w, v->data, v->len, !quoted);
        break;

    case NGX_HTTP_LLM_VAL_RAW:
        if (quoted) {
            ngx_http_llm_render_str(w, v->data, v->len, 0);

        } else {
            ngx_http_llm_render_raw(w, v->data, v->len);
        }
        break;

    case NGX_HTTP_LLM_VAL_JSON:
        if (json_is_string(v->json)) {
            ngx_http_llm_render_str(w, (u_char *) json_string_value(v->json),
                                    json_string_length(v->json), !quoted);
            break;
        }

        s = json_dumps(v->json, JSON_COMPACT | JSON_ENCODE_ANY);

        if (s == NULL) {
            if (!quoted) {
                ngx_http_llm_render_raw(w, "null", 4);
            }
            break;
        }

        if (quoted) {
            ngx_http_llm_render_str(w, (u_char *) s, ngx_strlen(s), 0);

        } else {
            ngx_http_llm_render_raw(w, s, ngx_strlen(s));
        }

        free(s);
        break;
    }
}


/* today's events: start, delta, complete, error, with ids and names */

static void
ngx_http_llm_default_event(ngx_http_llm_format_t *fmt,
    ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_render_t *w)
{
    ngx_http_llm_job_t    *job;
    ngx_http_llm_event_t  *ev, *end;

    job = fc->job;
    ev = &job->events[fc->first];
    end = &job->events[fc->last];

    ngx_http_llm_render_id(w, job, fc->last + 1);
    ngx_http_llm_render_raw(w, "event: ", sizeof("event: ") - 1);
    ngx_http_llm_render_raw(w, ngx_http_llm_event_names[ev->type],
                            ngx_strlen(ngx_http_llm_event_names[ev->type]));
    ngx_http_llm_render_raw(w, "\ndata: ", sizeof("\ndata: ") - 1);

    switch (ev->type) {

    case NGX_HTTP_LLM_EV_START:
        ngx_http_llm_render_raw(w, "{\"job\":\"", sizeof("{\"job\":\"") - 1);
        ngx_http_llm_render_raw(w, job->id, NGX_HTTP_LLM_JOB_ID_LEN);
        ngx_http_llm_render_raw(w, "\"}", 2);
        break;

    case NGX_HTTP_LLM_EV_DELTA:
        ngx_http_llm_render_raw(w, "{\"text\":", sizeof("{\"text\":") - 1);
        ngx_http_llm_render_str(w, job->text + ev->off,
                                end->off + end->len - ev->off, 1);
        ngx_http_llm_render_raw(w, "}", 1);
        break;

    case NGX_HTTP_LLM_EV_COMPLETE:
        ngx_http_llm_render_raw(w, "{\"text\":", sizeof("{\"text\":") - 1);
        ngx_http_llm_render_str(w, job->text, job->text_len, 1);

        if (job->finish_len) {
            ngx_http_llm_render_raw(w, ",\"finish_reason\":",
                                    sizeof(",\"finish_reason\":") - 1);
            ngx_http_llm_render_str(w, job->finish, job->finish_len, 1);
        }

        if (job->input_tokens >= 0 || job->output_tokens >= 0) {
            ngx_http_llm_render_raw(w, ",\"usage\":",
                                    sizeof(",\"usage\":") - 1);
            ngx_http_llm_render_usage(w, job);
        }

        ngx_http_llm_render_raw(w, "}", 1);
        break;

    case NGX_HTTP_LLM_EV_ERROR:
        ngx_http_llm_render_raw(w, "{\"code\":", sizeof("{\"code\":") - 1);
        ngx_http_llm_render_str(w, job->code, job->code_len, 1);
        ngx_http_llm_render_raw(w, ",\"message\":",
                                sizeof(",\"message\":") - 1);
        ngx_http_llm_render_str(w, job->message, job->message_len, 1);
        ngx_http_llm_render_raw(w, ",\"text\":", sizeof(",\"text\":") - 1);
        ngx_http_llm_render_str(w, job->text, job->text_len, 1);
        ngx_http_llm_render_raw(w, "}", 1);
        break;
    }

    ngx_http_llm_render_raw(w, "\n\n", 2);
}


/* {"input_tokens":N,"output_tokens":N,"total_tokens":N}, known ones only */

static void
ngx_http_llm_render_usage(ngx_http_llm_render_t *w, ngx_http_llm_job_t *job)
{
    u_char  num[NGX_INT64_LEN * 3 + 64], *p;

    p = num;
    *p++ = '{';

    if (job->input_tokens >= 0) {
        p = ngx_sprintf(p, "\"input_tokens\":%i", job->input_tokens);
    }

    if (job->output_tokens >= 0) {
        p = ngx_sprintf(p, "%s\"output_tokens\":%i",
                        p > num + 1 ? "," : "", job->output_tokens);
    }

    if (job->input_tokens >= 0 && job->output_tokens >= 0) {
        p = ngx_sprintf(p, ",\"total_tokens\":%i",
                        job->input_tokens + job->output_tokens);
    }

    *p++ = '}';

    ngx_http_llm_render_raw(w, num, p - num);
}


void
ngx_http_llm_render_raw(ngx_http_llm_render_t *w, const void *s, size_t len)
{
    if (w->p) {
        w->p = ngx_cpymem(w->p, s, len);
    }

    w->n += len;
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


/*
 * A JSON string's content (in quotes when asked): escapes, and U+FFFD for
 * bytes that are not UTF-8, so no value can break the JSON or the event.
 */

void
ngx_http_llm_render_str(ngx_http_llm_render_t *w, u_char *s, size_t len,
    ngx_uint_t quotes)
{
    u_char         c, *p, *q, *last;
    size_t         n;
    uint32_t       u;
    static u_char  hex[] = "0123456789abcdef";

    n = quotes ? 2 : 0;
    last = s + len;

    for (p = s; p < last; /* void */) {
        c = *p;

        if (c < 0x80) {
            n += (c == '"' || c == '\\') ? 2
                 : (c >= 0x20) ? 1
                 : (c == '\n' || c == '\r' || c == '\t' || c == '\b'
                    || c == '\f') ? 2 : 6;
            p++;
            continue;
        }

        q = p;
        u = ngx_utf8_decode(&q, last - p);

        if (u > 0x10ffff || (u >= 0xd800 && u <= 0xdfff)) {
            n += 6;
            p++;

        } else {
            n += q - p;
            p = q;
        }
    }

    w->n += n;

    if (w->p == NULL) {
        return;
    }

    p = w->p;

    if (quotes) {
        *p++ = '"';
    }

    while (s < last) {
        c = *s;

        if (c >= 0x80) {
            q = s;
            u = ngx_utf8_decode(&q, last - s);

            if (u > 0x10ffff || (u >= 0xd800 && u <= 0xdfff)) {
                p = ngx_cpymem(p, "\\ufffd", 6);
                s++;

            } else {
                p = ngx_cpymem(p, s, q - s);
                s = q;
            }

            continue;
        }

        s++;

        if (c >= 0x20 && c != '"' && c != '\\') {
            *p++ = c;
            continue;
        }

        *p++ = '\\';

        switch (c) {

        case '"':
        case '\\':
            *p++ = c;
            break;

        case '\n':
            *p++ = 'n';
            break;

        case '\r':
            *p++ = 'r';
            break;

        case '\t':
            *p++ = 't';
            break;

        case '\b':
            *p++ = 'b';
            break;

        case '\f':
            *p++ = 'f';
            break;

        default:
            p = ngx_cpymem(p, "u00", 3);
            *p++ = hex[c >> 4];
            *p++ = hex[c & 0xf];
        }
    }

    if (quotes) {
        *p++ = '"';
    }

    w->p = p;
}


/* the variables of templates */

static void
ngx_http_llm_var_job_id(ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_value_t *v)
{
    if (fc->job) {
        v->type = NGX_HTTP_LLM_VAL_STR;
        v->data = fc->job->id;
        v->len = NGX_HTTP_LLM_JOB_ID_LEN;
    }
}


static void
ngx_http_llm_var_event_id(ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_value_t *v)
{
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
ngx_http_llm_var_seq(ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_value_t *v)
{
    if (fc->job) {
        v->type = NGX_HTTP_LLM_VAL_RAW;
        v->data = v->buf;
        v->len = ngx_sprintf(v->buf, "%ui", fc->last + 1) - v->buf;
    }
}


static void
ngx_http_llm_var_delta(ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_value_t *v)
{
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
ngx_http_llm_var_text(ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_value_t *v)
{
    v->type = NGX_HTTP_LLM_VAL_STR;
    v->data = (u_char *) "";

    if (fc->job) {
        v->data = fc->job->text;
        v->len = fc->job->text_len;
    }
}


static void
ngx_http_llm_var_finish(ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_value_t *v)
{
    if (fc->job && fc->job->finish_len) {
        v->type = NGX_HTTP_LLM_VAL_STR;
        v->data = fc->job->finish;
        v->len = fc->job->finish_len;
    }
}


static void
ngx_http_llm_var_usage(ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_value_t *v)
{
    json_t              *o;
    ngx_http_llm_job_t  *job;

    job = fc->job;

    if (job == NULL || (job->input_tokens < 0 && job->output_tokens < 0)) {
        return;
    }

    o = json_object();
    if (o == NULL) {
        return;
    }

    if (job->input_tokens >= 0) {
        json_object_set_new(o, "input_tokens",
                            json_integer(job->input_tokens));
    }

    if (job->output_tokens >= 0) {
        json_object_set_new(o, "output_tokens",
                            json_integer(job->output_tokens));
    }

    if (job->input_tokens >= 0 && job->output_tokens >= 0) {
        json_object_set_new(o, "total_tokens",
                            json_integer(job->input_tokens
                                         + job->output_tokens));
    }

    v->type = NGX_HTTP_LLM_VAL_JSON;
    v->json = o;
}


static void
ngx_http_llm_var_number(ngx_http_llm_value_t *v, int64_t n)
{
    v->type = NGX_HTTP_LLM_VAL_RAW;
    v->data = v->buf;
    v->len = ngx_sprintf(v->buf, "%L", n) - v->buf;
}


static void
ngx_http_llm_var_input_tokens(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v)
{
    if (fc->job && fc->job->input_tokens >= 0) {
        ngx_http_llm_var_number(v, fc->job->input_tokens);
    }
}


static void
ngx_http_llm_var_output_tokens(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v)
{
    if (fc->job && fc->job->output_tokens >= 0) {
        ngx_http_llm_var_number(v, fc->job->output_tokens);
    }
}


static void
ngx_http_llm_var_total_tokens(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v)
{
    if (fc->job && fc->job->input_tokens >= 0 && fc->job->output_tokens >= 0)
    {
        ngx_http_llm_var_number(v, (int64_t) fc->job->input_tokens
                                   + fc->job->output_tokens);
    }
}


static void
ngx_http_llm_var_error_code(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v)
{
    if (fc->job == NULL) {
        v->type = NGX_HTTP_LLM_VAL_STR;
        v->data = fc->code.data;
        v->len = fc->code.len;

    } else if (fc->job->code_len) {
        v->type = NGX_HTTP_LLM_VAL_STR;
        v->data = fc->job->code;
        v->len = fc->job->code_len;
    }
}


static void
ngx_http_llm_var_error_message(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_value_t *v)
{
    if (fc->job == NULL) {
        v->type = NGX_HTTP_LLM_VAL_STR;
        v->data = fc->message.data;
        v->len = fc->message.len;

    } else if (fc->job->code_len) {
        v->type = NGX_HTTP_LLM_VAL_STR;
        v->data = fc->job->message ? fc->job->message : (u_char *) "";
        v->len = fc->job->message_len;
    }
}


static void
ngx_http_llm_var_status(ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_value_t *v)
{
    if (fc->status) {
        ngx_http_llm_var_number(v, fc->status);
    }
}


static void
ngx_http_llm_var_state(ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_value_t *v)
{
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
ngx_http_llm_var_success(ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_value_t *v)
{
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
ngx_http_llm_var_time(ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_value_t *v)
{
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
ngx_http_llm_var_time_ms(ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_value_t *v)
{
    ngx_http_llm_var_number(v, ngx_http_llm_event_time(fc));
}


static void
ngx_http_llm_var_created(ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_value_t *v)
{
    ngx_time_t  *tp;

    if (fc->job) {
        ngx_http_llm_var_number(v, fc->job->created / 1000);
        return;
    }

    tp = ngx_timeofday();
    ngx_http_llm_var_number(v, tp->sec);
}


/* seconds from the job's start to the event, to the millisecond */

static void
ngx_http_llm_var_elapsed(ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_value_t *v)
{
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
ngx_http_llm_var_model(ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_value_t *v)
{
    ngx_str_t                 s;
    ngx_http_llm_loc_conf_t  *llcf;

    if (fc->request == NULL) {
        return;
    }

    llcf = ngx_http_get_module_loc_conf(fc->request, ngx_http_llm_module);

    if (llcf->model == NULL
        || ngx_http_complex_value(fc->request, llcf->model, &s) != NGX_OK)
    {
        return;
    }

    v->type = NGX_HTTP_LLM_VAL_STR;
    v->data = s.data;
    v->len = s.len;
}
