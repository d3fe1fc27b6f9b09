
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * Pipeline configuration: "llm_pipeline NAME { step NAME { ... } }" in
 * http{}, "llm_pipeline NAME;" in a location.  Everything that can be
 * checked before a request is checked here, each error naming the line:
 * unknown or later steps referenced, checks that would go forward, steps
 * with neither a model nor an upstream of their own nor a location's.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_pipeline.h"


typedef struct {
    ngx_http_llm_pipeline_conf_t  *pl;
    ngx_http_llm_step_conf_t      *step;
    uint32_t                       seen;        /* the step's directives */
} ngx_http_llm_pl_parse_t;


typedef char *(*ngx_http_llm_step_set_pt)(ngx_conf_t *cf,
    ngx_http_llm_pl_parse_t *pp, ngx_str_t *value, ngx_uint_t n);


typedef struct {
    ngx_str_t                      name;
    ngx_uint_t                     min;         /* arguments */
    ngx_uint_t                     max;
    ngx_http_llm_step_set_pt       set;
} ngx_http_llm_step_cmd_t;


static char *ngx_http_llm_step_line(ngx_conf_t *cf, ngx_command_t *dummy,
    void *conf);
static char *ngx_http_llm_step_str(ngx_conf_t *cf,
    ngx_http_llm_pl_parse_t *pp, ngx_str_t *value, ngx_uint_t n);
static char *ngx_http_llm_step_pass(ngx_conf_t *cf,
    ngx_http_llm_pl_parse_t *pp, ngx_str_t *value, ngx_uint_t n);
static char *ngx_http_llm_step_provider(ngx_conf_t *cf,
    ngx_http_llm_pl_parse_t *pp, ngx_str_t *value, ngx_uint_t n);
static char *ngx_http_llm_step_text(ngx_conf_t *cf,
    ngx_http_llm_pl_parse_t *pp, ngx_str_t *value, ngx_uint_t n);
static char *ngx_http_llm_step_number(ngx_conf_t *cf,
    ngx_http_llm_pl_parse_t *pp, ngx_str_t *value, ngx_uint_t n);
static char *ngx_http_llm_step_time(ngx_conf_t *cf,
    ngx_http_llm_pl_parse_t *pp, ngx_str_t *value, ngx_uint_t n);
static char *ngx_http_llm_step_output(ngx_conf_t *cf,
    ngx_http_llm_pl_parse_t *pp, ngx_str_t *value, ngx_uint_t n);
static char *ngx_http_llm_step_stream(ngx_conf_t *cf,
    ngx_http_llm_pl_parse_t *pp, ngx_str_t *value, ngx_uint_t n);
static char *ngx_http_llm_step_check(ngx_conf_t *cf,
    ngx_http_llm_pl_parse_t *pp, ngx_str_t *value, ngx_uint_t n);
static char *ngx_http_llm_step_foreach(ngx_conf_t *cf,
    ngx_http_llm_pl_parse_t *pp, ngx_str_t *value, ngx_uint_t n);
static char *ngx_http_llm_step_tpl(ngx_conf_t *cf,
    ngx_http_llm_pl_parse_t *pp, ngx_str_t *src, ngx_str_t *directive,
    ngx_http_llm_tpl_t **tpl);
static ngx_int_t ngx_http_llm_step_ref(void *data, ngx_str_t *arg);
static void ngx_http_llm_json_cleanup(void *data);
static ngx_http_llm_step_conf_t *ngx_http_llm_step_find(
    ngx_http_llm_pipeline_conf_t *pl, ngx_str_t *name);


static ngx_http_llm_step_cmd_t  ngx_http_llm_step_cmds[] = {
    { ngx_string("pass"), 1, 1, ngx_http_llm_step_pass },
    { ngx_string("provider"), 1, 1, ngx_http_llm_step_provider },
    { ngx_string("model"), 1, 1, ngx_http_llm_step_str },
    { ngx_string("api_key"), 1, 1, ngx_http_llm_step_str },
    { ngx_string("stage"), 1, 1, ngx_http_llm_step_str },
    { ngx_string("system"), 1, 1, ngx_http_llm_step_text },
    { ngx_string("system_file"), 1, 1, ngx_http_llm_step_text },
    { ngx_string("prompt"), 1, 1, ngx_http_llm_step_text },
    { ngx_string("prompt_file"), 1, 1, ngx_http_llm_step_text },
    { ngx_string("message"), 1, 1, ngx_http_llm_step_text },
    { ngx_string("max_tokens"), 1, 1, ngx_http_llm_step_number },
    { ngx_string("progress"), 1, 1, ngx_http_llm_step_number },
    { ngx_string("weight"), 1, 1, ngx_http_llm_step_number },
    { ngx_string("preview"), 1, 1, ngx_http_llm_step_number },
    { ngx_string("connect_timeout"), 1, 1, ngx_http_llm_step_time },
    { ngx_string("first_token_timeout"), 1, 1, ngx_http_llm_step_time },
    { ngx_string("idle_timeout"), 1, 1, ngx_http_llm_step_time },
    { ngx_string("timeout"), 1, 1, ngx_http_llm_step_time },
    { ngx_string("output"), 1, 1, ngx_http_llm_step_output },
    { ngx_string("stream"), 1, 1, ngx_http_llm_step_stream },
    { ngx_string("check"), 3, 6, ngx_http_llm_step_check },
    { ngx_string("foreach"), 1, 2, ngx_http_llm_step_foreach },
    { ngx_null_string, 0, 0, NULL }
};


/* llm_pipeline NAME { step NAME { ... } ... }: http context */

char *
ngx_http_llm_pipeline_block(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_main_conf_t *lmcf = conf;

    char                           *rv;
    ngx_str_t                      *value;
    ngx_uint_t                      i;
    ngx_conf_t                      save;
    ngx_http_llm_pl_parse_t         pp;
    ngx_http_llm_pipeline_conf_t  **pl;

    value = cf->args->elts;

    if (lmcf->pipelines == NULL) {
        lmcf->pipelines = ngx_array_create(cf->pool, 4,
                                      sizeof(ngx_http_llm_pipeline_conf_t *));
        if (lmcf->pipelines == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    pl = lmcf->pipelines->elts;

    for (i = 0; i < lmcf->pipelines->nelts; i++) {
        if (pl[i]->name.len == value[1].len
            && ngx_strncmp(pl[i]->name.data, value[1].data, value[1].len)
               == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate llm_pipeline \"%V\"", &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    pl = ngx_array_push(lmcf->pipelines);
    if (pl == NULL) {
        return NGX_CONF_ERROR;
    }

    *pl = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_pipeline_conf_t));
    if (*pl == NULL) {
        return NGX_CONF_ERROR;
    }

    (*pl)->name = value[1];

    if (ngx_array_init(&(*pl)->steps, cf->pool, 4,
                       sizeof(ngx_http_llm_step_conf_t))
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    pp.pl = *pl;
    pp.step = NULL;

    /*
     * Its lines are directives of a context of their own, so that "step"
     * may have a block (a custom handler's lines cannot) and nothing
     * else is allowed there.
     */

    save = *cf;
    cf->cmd_type = NGX_HTTP_LLM_PIPELINE_CONF;
    lmcf->pipeline_parse = &pp;

    rv = ngx_conf_parse(cf, NULL);

    lmcf->pipeline_parse = NULL;
    *cf = save;

    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if ((*pl)->steps.nelts == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_pipeline \"%V\" has no steps", &value[1]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* step NAME { ... }: inside llm_pipeline only */

char *
ngx_http_llm_pipeline_step(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_main_conf_t *lmcf = conf;

    char                      *rv;
    ngx_str_t                 *value;
    ngx_conf_t                 save;
    ngx_http_llm_pl_parse_t   *pp;
    ngx_http_llm_step_conf_t  *step;

    value = cf->args->elts;
    pp = lmcf->pipeline_parse;

    if (ngx_http_llm_step_find(pp->pl, &value[1])) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_pipeline: duplicate step \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    step = ngx_array_push(&pp->pl->steps);
    if (step == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(step, sizeof(ngx_http_llm_step_conf_t));

    step->name = value[1];
    step->index = pp->pl->steps.nelts - 1;
    step->max_tokens = NGX_CONF_UNSET_UINT;
    step->connect_timeout = NGX_CONF_UNSET_MSEC;
    step->first_token_timeout = NGX_CONF_UNSET_MSEC;
    step->idle_timeout = NGX_CONF_UNSET_MSEC;
    step->timeout = NGX_CONF_UNSET_MSEC;
    step->progress = -1;
    step->weight = 1;
    step->preview = 500;

    if (ngx_array_init(&step->checks, cf->pool, 1,
                       sizeof(ngx_http_llm_check_t))
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    pp->step = step;
    pp->seen = 0;

    save = *cf;
    cf->handler = ngx_http_llm_step_line;
    cf->handler_conf = (char *) pp;

    rv = ngx_conf_parse(cf, NULL);

    *cf = save;

    if (rv != NGX_CONF_OK) {
        return rv;
    }

    /*
     * pp->step may have moved with the array: find it by index.  A step
     * needs something to ask.
     */

    step = (ngx_http_llm_step_conf_t *) pp->pl->steps.elts
           + pp->pl->steps.nelts - 1;

    if (step->prompt == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_pipeline: step \"%V\" has no \"prompt\"",
                           &step->name);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_llm_step_line(ngx_conf_t *cf, ngx_command_t *dummy, void *conf)
{
    ngx_http_llm_pl_parse_t *pp = (ngx_http_llm_pl_parse_t *) conf;

    uint32_t                  bit;
    ngx_str_t                *value;
    ngx_uint_t                n;
    ngx_http_llm_step_cmd_t  *c;

    value = cf->args->elts;
    n = cf->args->nelts - 1;

    pp->step = (ngx_http_llm_step_conf_t *) pp->pl->steps.elts
               + pp->pl->steps.nelts - 1;

    for (c = ngx_http_llm_step_cmds; c->name.len; c++) {
        if (c->name.len == value[0].len
            && ngx_strncmp(c->name.data, value[0].data, value[0].len) == 0)
        {
            break;
        }
    }

    if (c->name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_pipeline: unknown step directive \"%V\"",
                           &value[0]);
        return NGX_CONF_ERROR;
    }

    /* every directive of a step but "check" is given once */

    bit = (uint32_t) 1 << (c - ngx_http_llm_step_cmds);

    if (c->set != ngx_http_llm_step_check && (pp->seen & bit)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_pipeline: \"%V\" is duplicate in step "
                           "\"%V\"", &value[0], &pp->step->name);
        return NGX_CONF_ERROR;
    }

    pp->seen |= bit;

    if (n < c->min || n > c->max) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_pipeline: invalid number of arguments in "
                           "\"%V\"", &value[0]);
        return NGX_CONF_ERROR;
    }

    return c->set(cf, pp, value, n);
}


static char *
ngx_http_llm_step_str(ngx_conf_t *cf, ngx_http_llm_pl_parse_t *pp,
    ngx_str_t *value, ngx_uint_t n)
{
    ngx_str_t  *field;

    switch (value[0].data[0]) {

    case 'm':
        field = &pp->step->model;
        break;

    case 'a':
        field = &pp->step->api_key;
        break;

    default: /* stage */
        field = &pp->step->stage;
        break;
    }

    if (value[1].len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_pipeline: empty \"%V\"", &value[0]);
        return NGX_CONF_ERROR;
    }

    *field = value[1];

    return NGX_CONF_OK;
}


static char *
ngx_http_llm_step_pass(ngx_conf_t *cf, ngx_http_llm_pl_parse_t *pp,
    ngx_str_t *value, ngx_uint_t n)
{
    if (ngx_http_llm_check_url(&value[1]) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_pipeline: invalid URL \"%V\" in \"pass\": "
                           "http://HOST or https://HOST expected",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    pp->step->pass = value[1];

    return NGX_CONF_OK;
}


static char *
ngx_http_llm_step_provider(ngx_conf_t *cf, ngx_http_llm_pl_parse_t *pp,
    ngx_str_t *value, ngx_uint_t n)
{
    if (ngx_strcmp(value[1].data, "openai") == 0) {
        pp->step->provider = &ngx_http_llm_openai;

    } else if (ngx_strcmp(value[1].data, "anthropic") == 0) {
        pp->step->provider = &ngx_http_llm_anthropic;

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_pipeline: invalid value \"%V\" in "
                           "\"provider\": \"openai\" or \"anthropic\" "
                           "expected", &value[1]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* system, prompt and message, inline or from a file read now */

static char *
ngx_http_llm_step_text(ngx_conf_t *cf, ngx_http_llm_pl_parse_t *pp,
    ngx_str_t *value, ngx_uint_t n)
{
    u_char               *p;
    size_t                size;
    ssize_t               len;
    ngx_fd_t              fd;
    ngx_str_t             name, src;
    ngx_file_info_t       fi;
    ngx_http_llm_tpl_t  **tpl;

    switch (value[0].data[0]) {

    case 's':
        tpl = &pp->step->system;
        break;

    case 'p':
        tpl = &pp->step->prompt;
        break;

    default: /* message */
        tpl = &pp->step->message;
        break;
    }

    if (*tpl) {
        /* "prompt" and "prompt_file", or "system" and "system_file" */
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_pipeline: step \"%V\" has its %s twice",
                           &pp->step->name,
                           tpl == &pp->step->system ? "system prompt"
                                                    : "prompt");
        return NGX_CONF_ERROR;
    }

    src = value[1];

    if (value[0].len > 5
        && ngx_strncmp(value[0].data + value[0].len - 5, "_file", 5) == 0)
    {
        name = value[1];

        if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        fd = ngx_open_file(name.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

        if (fd == NGX_INVALID_FILE) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                               "llm_pipeline: cannot open \"%V\"", &name);
            return NGX_CONF_ERROR;
        }

        if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR
            || ngx_file_size(&fi) > 1024 * 1024)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "llm_pipeline: \"%V\" is not a file of at "
                               "most 1 MB", &name);
            (void) ngx_close_file(fd);
            return NGX_CONF_ERROR;
        }

        size = (size_t) ngx_file_size(&fi);

        p = ngx_pnalloc(cf->pool, size + 1);
        if (p == NULL) {
            (void) ngx_close_file(fd);
            return NGX_CONF_ERROR;
        }

        len = ngx_read_fd(fd, p, size);

        (void) ngx_close_file(fd);

        if (len != (ssize_t) size) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                               "llm_pipeline: cannot read \"%V\"", &name);
            return NGX_CONF_ERROR;
        }

        src.data = p;
        src.len = size;
    }

    return ngx_http_llm_step_tpl(cf, pp, &src, &value[0], tpl);
}


static char *
ngx_http_llm_step_number(ngx_conf_t *cf, ngx_http_llm_pl_parse_t *pp,
    ngx_str_t *value, ngx_uint_t n)
{
    ngx_int_t  v;

    v = ngx_atoi(value[1].data, value[1].len);

    if (v == NGX_ERROR
        || (value[0].data[1] == 'r' && value[0].data[2] == 'o' && v > 100)
        || (value[0].data[0] == 'w' && v == 0))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_pipeline: invalid value \"%V\" in \"%V\"",
                           &value[1], &value[0]);
        return NGX_CONF_ERROR;
    }

    switch (value[0].data[0]) {

    case 'm':
        pp->step->max_tokens = v;
        break;

    case 'w':
        pp->step->weight = v;
        break;

    default:
        if (value[0].data[2] == 'o') {
            pp->step->progress = v;

        } else {
            pp->step->preview = v;
        }
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_llm_step_time(ngx_conf_t *cf, ngx_http_llm_pl_parse_t *pp,
    ngx_str_t *value, ngx_uint_t n)
{
    ngx_msec_t  t;

    t = ngx_parse_time(&value[1], 0);

    if (t == (ngx_msec_t) NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_pipeline: invalid value \"%V\" in \"%V\"",
                           &value[1], &value[0]);
        return NGX_CONF_ERROR;
    }

    switch (value[0].data[0]) {

    case 'c':
        pp->step->connect_timeout = t;
        break;

    case 'f':
        pp->step->first_token_timeout = t;
        break;

    case 'i':
        pp->step->idle_timeout = t;
        break;

    default:
        pp->step->timeout = t;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_llm_step_output(ngx_conf_t *cf, ngx_http_llm_pl_parse_t *pp,
    ngx_str_t *value, ngx_uint_t n)
{
    if (ngx_strcmp(value[1].data, "json") == 0) {
        pp->step->json = 1;

    } else if (ngx_strcmp(value[1].data, "text") == 0) {
        pp->step->json = 0;

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_pipeline: invalid value \"%V\" in "
                           "\"output\": \"text\" or \"json\" expected",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_llm_step_stream(ngx_conf_t *cf, ngx_http_llm_pl_parse_t *pp,
    ngx_str_t *value, ngx_uint_t n)
{
    if (ngx_strcmp(value[1].data, "on") == 0) {
        pp->step->stream = 1;

    } else if (ngx_strcmp(value[1].data, "off") == 0) {
        pp->step->stream = 0;

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_pipeline: invalid value \"%V\" in "
                           "\"stream\": \"on\" or \"off\" expected",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * check FIELD OP VALUE [else=retry|stop|fail|STEP] [attempts=N]
 *       [exhausted=fail|stop]
 *
 * FIELD is a path in the step's JSON output; VALUE is JSON (true, 0.8,
 * "yes") or a bare word taken as a string.  A failed check retries the
 * step, or goes back to an earlier step with the output as feedback, up
 * to "attempts" runs of that step; then the pipeline fails, or, with
 * exhausted=stop, ends as a success that stopped early (else=stop does
 * so at once).
 */

static char *
ngx_http_llm_step_check(ngx_conf_t *cf, ngx_http_llm_pl_parse_t *pp,
    ngx_str_t *value, ngx_uint_t n)
{
    ngx_int_t                  a;
    ngx_str_t                  s;
    ngx_uint_t                 i;
    json_error_t               err;
    ngx_pool_cleanup_t        *cln;
    ngx_http_llm_check_t      *ck;
    ngx_http_llm_step_conf_t  *to;

    static ngx_str_t  ops[] = {
        ngx_string("="), ngx_string("!="), ngx_string(">="),
        ngx_string(">"), ngx_string("<="), ngx_string("<")
    };

    if (!pp->step->json) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_pipeline: \"check\" needs \"output json\" "
                           "before it in step \"%V\"", &pp->step->name);
        return NGX_CONF_ERROR;
    }

    ck = ngx_array_push(&pp->step->checks);
    if (ck == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(ck, sizeof(ngx_http_llm_check_t));

    ck->field = value[1];
    ck->on_fail = pp->step->index;
    ck->attempts = 2;

    for (i = 0; i < sizeof(ops) / sizeof(ngx_str_t); i++) {
        if (ops[i].len == value[2].len
            && ngx_strncmp(ops[i].data, value[2].data, value[2].len) == 0)
        {
            break;
        }
    }

    if (i == sizeof(ops) / sizeof(ngx_str_t)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_pipeline: invalid comparison \"%V\" in "
                           "\"check\": =, !=, >=, >, <= or < expected",
                           &value[2]);
        return NGX_CONF_ERROR;
    }

    ck->cmp = i;

    ck->value = json_loadb((char *) value[3].data, value[3].len,
                           JSON_DECODE_ANY, &err);

    if (ck->value == NULL) {
        ck->value = json_stringn((char *) value[3].data, value[3].len);
        if (ck->value == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    /* jansson values live as long as the configuration */

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        json_decref(ck->value);
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_http_llm_json_cleanup;
    cln->data = ck->value;

    if (ck->cmp >= NGX_HTTP_LLM_CMP_GE && !json_is_number(ck->value)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_pipeline: \"%V\" compares numbers: "
                           "\"%V\" is not one", &value[2], &value[3]);
        return NGX_CONF_ERROR;
    }

    for (i = 4; i <= n; i++) {

        if (value[i].len > 5 && ngx_strncmp(value[i].data, "else=", 5) == 0)
        {
            s.data = value[i].data + 5;
            s.len = value[i].len - 5;

            if (ngx_strcmp(s.data, "retry") == 0) {
                ck->on_fail = pp->step->index;

            } else if (ngx_strcmp(s.data, "stop") == 0) {
                ck->on_fail = NGX_HTTP_LLM_ON_FAIL_STOP;

            } else if (ngx_strcmp(s.data, "fail") == 0) {
                ck->on_fail = NGX_HTTP_LLM_ON_FAIL_FAIL;

            } else {
                to = ngx_http_llm_step_find(pp->pl, &s);

                if (to == NULL) {
                    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                       "llm_pipeline: \"check\" goes to "
                                       "step \"%V\", which is not defined "
                                       "before it", &s);
                    return NGX_CONF_ERROR;
                }

                ck->on_fail = to->index;
            }

            continue;
        }

        if (value[i].len > 9
            && ngx_strncmp(value[i].data, "attempts=", 9) == 0)
        {
            a = ngx_atoi(value[i].data + 9, value[i].len - 9);

            if (a == NGX_ERROR || a < 1 || a > 100) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "llm_pipeline: invalid \"%V\": 1 to 100 "
                                   "expected", &value[i]);
                return NGX_CONF_ERROR;
            }

            ck->attempts = a;
            continue;
        }

        if (value[i].len == 14
            && ngx_strncmp(value[i].data, "exhausted=", 10) == 0
            && (ngx_strncmp(value[i].data + 10, "stop", 4) == 0
                || ngx_strncmp(value[i].data + 10, "fail", 4) == 0))
        {
            ck->exhausted_stop = (value[i].data[10] == 's');
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_pipeline: invalid parameter \"%V\" in "
                           "\"check\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* foreach ${llm_step_outline.sections} [delay=1s] */

static char *
ngx_http_llm_step_foreach(ngx_conf_t *cf, ngx_http_llm_pl_parse_t *pp,
    ngx_str_t *value, ngx_uint_t n)
{
    ngx_str_t  s;

    if (value[1].len < 2 || value[1].data[0] != '$') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_pipeline: \"foreach\" takes a variable "
                           "that holds a JSON array, not \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (n == 2) {
        if (value[2].len <= 6 || ngx_strncmp(value[2].data, "delay=", 6) != 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "llm_pipeline: invalid parameter \"%V\" in "
                               "\"foreach\"", &value[2]);
            return NGX_CONF_ERROR;
        }

        s.data = value[2].data + 6;
        s.len = value[2].len - 6;

        pp->step->delay = ngx_parse_time(&s, 0);

        if (pp->step->delay == (ngx_msec_t) NGX_ERROR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "llm_pipeline: invalid \"%V\"", &value[2]);
            return NGX_CONF_ERROR;
        }
    }

    return ngx_http_llm_step_tpl(cf, pp, &value[1], &value[0],
                                 &pp->step->foreach);
}


static char *
ngx_http_llm_step_tpl(ngx_conf_t *cf, ngx_http_llm_pl_parse_t *pp,
    ngx_str_t *src, ngx_str_t *directive, ngx_http_llm_tpl_t **tpl)
{
    u_char  *what;

    *tpl = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_tpl_t));
    what = ngx_pnalloc(cf->pool, pp->step->name.len + directive->len
                                 + sizeof("llm_pipeline: step \"\", \"\""));
    if (*tpl == NULL || what == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_sprintf(what, "llm_pipeline: step \"%V\", \"%V\"%Z",
                &pp->step->name, directive);

    if (ngx_http_llm_tpl_compile(cf, *tpl, src, ngx_http_llm_step_vars, 0,
                                 (const char *) what)
        != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    /* $llm_step_NAME: a step that runs before this one */

    if (ngx_http_llm_tpl_args(*tpl, &ngx_http_llm_step_vars[1],
                              ngx_http_llm_step_ref, pp)
        != NGX_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%s: \"$llm_step_\" names a step that is not "
                           "defined before this one", what);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_llm_step_ref(void *data, ngx_str_t *arg)
{
    ngx_http_llm_pl_parse_t *pp = data;

    ngx_http_llm_step_conf_t  *to;

    to = ngx_http_llm_step_find(pp->pl, arg);

    return (to && to->index < pp->step->index) ? NGX_OK : NGX_ERROR;
}


static void
ngx_http_llm_json_cleanup(void *data)
{
    json_decref(data);
}


static ngx_http_llm_step_conf_t *
ngx_http_llm_step_find(ngx_http_llm_pipeline_conf_t *pl, ngx_str_t *name)
{
    ngx_uint_t                 i;
    ngx_http_llm_step_conf_t  *step;

    step = pl->steps.elts;

    for (i = 0; i < pl->steps.nelts; i++) {
        if (step[i].name.len == name->len
            && ngx_strncmp(step[i].name.data, name->data, name->len) == 0)
        {
            return &step[i];
        }
    }

    return NULL;
}


/* llm_pipeline NAME: location context */

char *
ngx_http_llm_pipeline_choose(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_str_t                      *value;
    ngx_uint_t                      i;
    ngx_http_core_loc_conf_t       *clcf;
    ngx_http_llm_main_conf_t       *lmcf;
    ngx_http_llm_pipeline_conf_t  **pl;

    if (llcf->pipeline) {
        return "is duplicate";
    }

    if (llcf->job) {
        return "cannot be used together with \"llm_job\"";
    }

    value = cf->args->elts;
    lmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_llm_module);

    pl = lmcf->pipelines ? lmcf->pipelines->elts : NULL;

    for (i = 0; pl && i < lmcf->pipelines->nelts; i++) {
        if (pl[i]->name.len == value[1].len
            && ngx_strncmp(pl[i]->name.data, value[1].data, value[1].len)
               == 0)
        {
            llcf->pipeline = pl[i];

            clcf = ngx_http_conf_get_module_loc_conf(cf,
                                                     ngx_http_core_module);
            clcf->handler = ngx_http_llm_handler;

            return NGX_CONF_OK;
        }
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "unknown llm_pipeline \"%V\" (a pipeline is defined "
                       "before it is used)", &value[1]);

    return NGX_CONF_ERROR;
}


/*
 * At the end of a location that runs a pipeline: every step gets an
 * upstream and a model, from itself or from the location.
 */

char *
ngx_http_llm_pipeline_merge(ngx_conf_t *cf, ngx_http_llm_loc_conf_t *llcf)
{
    ngx_uint_t                 i;
    ngx_http_llm_step_conf_t  *step;

    step = llcf->pipeline->steps.elts;

    for (i = 0; i < llcf->pipeline->steps.nelts; i++) {

        if (step[i].pass.len == 0 && llcf->pass == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "step \"%V\" of llm_pipeline \"%V\" has no "
                               "\"pass\" and the location no \"llm_pass\"",
                               &step[i].name, &llcf->pipeline->name);
            return NGX_CONF_ERROR;
        }

        if (step[i].model.len == 0 && llcf->model == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "step \"%V\" of llm_pipeline \"%V\" has no "
                               "\"model\" and the location no "
                               "\"llm_model\"",
                               &step[i].name, &llcf->pipeline->name);
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}
