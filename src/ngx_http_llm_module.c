
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/* The module: directives, configuration, variables, process hooks. */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_store.h"
#include "ngx_http_llm_format.h"
#include "ngx_http_llm_pipeline.h"


static ngx_int_t ngx_http_llm_add_variables(ngx_conf_t *cf);
static void *ngx_http_llm_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_llm_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_llm_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_llm_pass(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_llm_provider(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_llm_answer_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_llm_on_disconnect(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_llm_job(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_http_complex_value_t *ngx_http_llm_content(ngx_conf_t *cf,
    ngx_http_handler_pt handler);
static ngx_int_t ngx_http_llm_init_process(ngx_cycle_t *cycle);
static void ngx_http_llm_exit_process(ngx_cycle_t *cycle);
static char *ngx_http_llm_max_text_check(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_llm_max_events_check(ngx_conf_t *cf, void *post,
    void *data);


/*
 * What one job may hold, text and event log, so that an upstream that
 * never stops cannot grow a worker without bound: 8 MB is some 2 million
 * tokens, far beyond any model's output limit.  A delta is one drain of
 * the engine, many tokens when they come fast, one when they come slowly:
 * 250000 events hold a 38-minute generation at 44 tokens a second (the
 * assessment app's) two and a half times, 6 MB of log at most.
 */
#define NGX_HTTP_LLM_MAX_TEXT        (8 * 1024 * 1024)
#define NGX_HTTP_LLM_MAX_EVENTS      250000


static ngx_conf_post_t  ngx_http_llm_max_text_post = {
    ngx_http_llm_max_text_check
};

static ngx_conf_post_t  ngx_http_llm_max_events_post = {
    ngx_http_llm_max_events_check
};


static ngx_command_t  ngx_http_llm_commands[] = {

    { ngx_string("llm_pass"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_llm_pass,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_provider"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_llm_provider,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_model"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, model),
      NULL },

    { ngx_string("llm_system"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, system),
      NULL },

    { ngx_string("llm_prompt"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, prompt),
      NULL },

    { ngx_string("llm_api_key"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, api_key),
      NULL },

    { ngx_string("llm_max_tokens"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, max_tokens),
      NULL },

    { ngx_string("llm_max_text"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, max_text),
      &ngx_http_llm_max_text_post },

    { ngx_string("llm_max_events"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, max_events),
      &ngx_http_llm_max_events_post },

    { ngx_string("llm_thread_pool"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, thread_pool_name),
      NULL },

    { ngx_string("llm_heartbeat"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, heartbeat),
      NULL },

    { ngx_string("llm_retry"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, retry),
      NULL },

    { ngx_string("llm_connect_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, connect_timeout),
      NULL },

    { ngx_string("llm_first_token_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, first_token_timeout),
      NULL },

    { ngx_string("llm_idle_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, idle_timeout),
      NULL },

    { ngx_string("llm_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, timeout),
      NULL },

    { ngx_string("llm_store"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_llm_store_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_limit_jobs_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE2,
      ngx_http_llm_limit_zone_directive,
      0,
      0,
      NULL },

    { ngx_string("llm_answer"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_llm_answer_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_input"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE2,
      ngx_http_llm_input_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_limit_jobs"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE23,
      ngx_http_llm_limit_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_max_duration"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, max_duration),
      NULL },

    { ngx_string("llm_pause_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, pause_timeout),
      NULL },

    { ngx_string("llm_on_disconnect"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_llm_on_disconnect,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_job_owner"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, job_owner),
      NULL },

    { ngx_string("llm_job_url"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, job_url),
      NULL },

    { ngx_string("llm_job"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_llm_job,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_ssl_verify"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, ssl_verify),
      NULL },

    { ngx_string("llm_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_llm_metrics_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_metrics_label"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, metrics_label),
      NULL },

    { ngx_string("llm_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_llm_status_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    /* in http{} it defines a format, in server{} and location{} picks one */

    { ngx_string("llm_format"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_BLOCK|NGX_CONF_TAKE1,
      ngx_http_llm_format_block,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_format"),
      NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_llm_format_choose,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    /* in http{} it defines a pipeline, in location{} runs one */

    { ngx_string("llm_pipeline"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_BLOCK|NGX_CONF_TAKE1,
      ngx_http_llm_pipeline_block,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("step"),
      NGX_HTTP_LLM_PIPELINE_CONF|NGX_CONF_BLOCK|NGX_CONF_TAKE1,
      ngx_http_llm_pipeline_step,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_pipeline"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_llm_pipeline_choose,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_llm_module_ctx = {
    ngx_http_llm_add_variables,            /* preconfiguration */
    NULL,                                  /* postconfiguration */

    ngx_http_llm_create_main_conf,         /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_llm_create_loc_conf,          /* create location configuration */
    ngx_http_llm_merge_loc_conf            /* merge location configuration */
};


ngx_module_t  ngx_http_llm_module = {
    NGX_MODULE_V1,
    &ngx_http_llm_module_ctx,              /* module context */
    ngx_http_llm_commands,                 /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_llm_init_process,             /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_llm_exit_process,             /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_variable_t  ngx_http_llm_vars[] = {

    { ngx_string("llm_input_"), NULL, ngx_http_llm_input_variable,
      0, NGX_HTTP_VAR_PREFIX|NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_job_id"), NULL, ngx_http_llm_job_id_variable,
      0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};



static ngx_int_t
ngx_http_llm_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_llm_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return ngx_http_llm_log_variables(cf);
}


static void *
ngx_http_llm_create_main_conf(ngx_conf_t *cf)
{
    return ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_main_conf_t));
}


static void *
ngx_http_llm_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_llm_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->pass = NULL;
     *     conf->thread_pool_name = { 0, NULL };
     *     conf->thread_pool = NULL;
     *     conf->job = NULL;
     *     conf->metrics_label = { 0, NULL };
     *     conf->metrics = NULL;
     *     conf->serve = 0;
     */

    conf->provider = NGX_CONF_UNSET_PTR;
    conf->model = NGX_CONF_UNSET_PTR;
    conf->system = NGX_CONF_UNSET_PTR;
    conf->prompt = NGX_CONF_UNSET_PTR;
    conf->api_key = NGX_CONF_UNSET_PTR;
    conf->store = NGX_CONF_UNSET_PTR;
    conf->format = NGX_CONF_UNSET_PTR;
    conf->grace = NGX_CONF_UNSET_MSEC;
    conf->pause_timeout = NGX_CONF_UNSET_MSEC;
    conf->max_duration = NGX_CONF_UNSET_MSEC;
    conf->answer = NGX_CONF_UNSET_UINT;
    conf->job_owner = NGX_CONF_UNSET_PTR;
    conf->job_url = NGX_CONF_UNSET_PTR;
    conf->max_tokens = NGX_CONF_UNSET_UINT;
    conf->max_text = NGX_CONF_UNSET_SIZE;
    conf->max_events = NGX_CONF_UNSET_UINT;
    conf->heartbeat = NGX_CONF_UNSET_MSEC;
    conf->retry = NGX_CONF_UNSET_MSEC;
    conf->connect_timeout = NGX_CONF_UNSET_MSEC;
    conf->first_token_timeout = NGX_CONF_UNSET_MSEC;
    conf->idle_timeout = NGX_CONF_UNSET_MSEC;
    conf->timeout = NGX_CONF_UNSET_MSEC;
    conf->ssl_verify = NGX_CONF_UNSET;

    return conf;
}


static char *
ngx_http_llm_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_llm_loc_conf_t *prev = parent;
    ngx_http_llm_loc_conf_t *conf = child;

    ngx_conf_merge_ptr_value(conf->provider, prev->provider,
                             &ngx_http_llm_openai);
    ngx_conf_merge_ptr_value(conf->model, prev->model, NULL);
    ngx_conf_merge_ptr_value(conf->system, prev->system, NULL);
    ngx_conf_merge_ptr_value(conf->prompt, prev->prompt, NULL);
    ngx_conf_merge_ptr_value(conf->api_key, prev->api_key, NULL);
    ngx_conf_merge_uint_value(conf->max_tokens, prev->max_tokens, 0);
    ngx_conf_merge_size_value(conf->max_text, prev->max_text,
                              NGX_HTTP_LLM_MAX_TEXT);
    ngx_conf_merge_uint_value(conf->max_events, prev->max_events,
                              NGX_HTTP_LLM_MAX_EVENTS);
    ngx_conf_merge_str_value(conf->thread_pool_name, prev->thread_pool_name,
                             "default");
    ngx_conf_merge_msec_value(conf->heartbeat, prev->heartbeat, 15000);
    ngx_conf_merge_msec_value(conf->retry, prev->retry, 3000);
    ngx_conf_merge_msec_value(conf->connect_timeout, prev->connect_timeout,
                              10000);
    ngx_conf_merge_msec_value(conf->first_token_timeout,
                              prev->first_token_timeout, 60000);
    ngx_conf_merge_msec_value(conf->idle_timeout, prev->idle_timeout,
                              30000);
    ngx_conf_merge_msec_value(conf->timeout, prev->timeout, 1800000);
    ngx_conf_merge_value(conf->ssl_verify, prev->ssl_verify, 1);
    ngx_conf_merge_ptr_value(conf->store, prev->store, NULL);
    ngx_conf_merge_ptr_value(conf->format, prev->format,
                             ngx_http_llm_format_default(cf));
    ngx_conf_merge_msec_value(conf->grace, prev->grace, 30000);
    ngx_conf_merge_msec_value(conf->pause_timeout, prev->pause_timeout,
                              3600000);
    ngx_conf_merge_msec_value(conf->max_duration, prev->max_duration, 0);
    ngx_conf_merge_uint_value(conf->answer, prev->answer,
                              NGX_HTTP_LLM_ANSWER_AUTO);

    if (conf->limits == NULL) {
        conf->limits = prev->limits;
    }

    if (conf->inputs == NULL) {
        conf->inputs = prev->inputs;
    }

    if (ngx_http_llm_limit_check(cf, conf->limits) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }
    ngx_conf_merge_ptr_value(conf->job_owner, prev->job_owner, NULL);
    ngx_conf_merge_ptr_value(conf->job_url, prev->job_url, NULL);
    ngx_conf_merge_str_value(conf->metrics_label, prev->metrics_label, "");

    if (conf->pass == NULL && conf->job == NULL && conf->pipeline == NULL
        && conf->serve == 0)
    {
        return NGX_CONF_OK;
    }

    if (conf->serve && (conf->pass || conf->job || conf->pipeline)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%s\" cannot be used together with "
                           "\"llm_pass\", \"llm_job\" or \"llm_pipeline\"",
                           conf->serve == NGX_HTTP_LLM_SERVE_METRICS
                           ? "llm_metrics" : "llm_status");
        return NGX_CONF_ERROR;
    }

    if (conf->serve == NGX_HTTP_LLM_SERVE_METRICS) {
        return NGX_CONF_OK;
    }

    if (conf->store == NULL) {
        conf->store = ngx_http_llm_store_default(cf);
        if (conf->store == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    /* llm_status checks the location's store and thread pool */

    if (conf->serve == NGX_HTTP_LLM_SERVE_STATUS) {
        goto pool;
    }

    if (ngx_http_llm_metrics_merge(cf, conf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (conf->pipeline) {
        if (ngx_http_llm_pipeline_merge(cf, conf) != NGX_CONF_OK) {
            return NGX_CONF_ERROR;
        }

        goto pool;
    }

    if (conf->pass == NULL) {
        /* a job location may continue pipelines, on its thread pool */
        goto pool;
    }

    if (conf->model == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"llm_model\" is required where \"llm_pass\" "
                           "is set");
        return NGX_CONF_ERROR;
    }

    /* an OpenAI-compatible location may take its messages from clients */

    if (conf->prompt == NULL && conf->job == NULL
        && conf->format != &ngx_http_llm_format_openai)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"llm_prompt\" is required where \"llm_pass\" "
                           "is set, unless \"llm_format openai\" is");
        return NGX_CONF_ERROR;
    }

pool:

    /* an unknown pool is reported by the thread pool module, by name */

    conf->thread_pool = ngx_thread_pool_add(cf, &conf->thread_pool_name);
    if (conf->thread_pool == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_llm_pass(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_int_t   rc;
    ngx_str_t  *value, url;

    if (llcf->pass) {
        return "is duplicate";
    }

    value = cf->args->elts;
    url = value[1];

    /* in a job location, the upstream of the pipelines it continues */

    llcf->pass = ngx_http_llm_content(cf, llcf->job ? NULL
                                                    : ngx_http_llm_handler);
    if (llcf->pass == NULL) {
        return NGX_CONF_ERROR;
    }

    /* a URL with variables is checked when it is used */

    rc = (llcf->pass->lengths == NULL) ? ngx_http_llm_check_url(&url)
                                        : NGX_OK;

    if (rc != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid URL \"%V\" in \"llm_pass\": %s", &url,
                           rc == NGX_DECLINED
                           ? "http:// or https:// expected" : "no host");
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * An upstream URL: NGX_DECLINED without http:// or https://, NGX_ERROR
 * without a host after it.
 */

ngx_int_t
ngx_http_llm_check_url(ngx_str_t *url)
{
    u_char  *host;

    if (url->len > 7
        && ngx_strncasecmp(url->data, (u_char *) "http://", 7) == 0)
    {
        host = url->data + 7;

    } else if (url->len > 8
               && ngx_strncasecmp(url->data, (u_char *) "https://", 8) == 0)
    {
        host = url->data + 8;

    } else {
        return NGX_DECLINED;
    }

    if (host == url->data + url->len
        || *host == '/' || *host == ':' || *host == '?'
        || ngx_strlchr(url->data, url->data + url->len, ' '))
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static char *
ngx_http_llm_provider(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_str_t  *value;

    if (llcf->provider != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "openai") == 0) {
        llcf->provider = &ngx_http_llm_openai;

    } else if (ngx_strcmp(value[1].data, "anthropic") == 0) {
        llcf->provider = &ngx_http_llm_anthropic;

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"llm_provider\": "
                           "\"openai\" or \"anthropic\" expected",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* llm_answer auto | stream | json */

static char *
ngx_http_llm_answer_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_str_t   *value;
    ngx_uint_t   i;

    static ngx_str_t  answers[] = {
        ngx_string("auto"), ngx_string("stream"), ngx_string("json")
    };

    if (llcf->answer != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    for (i = 0; i < sizeof(answers) / sizeof(ngx_str_t); i++) {
        if (value[1].len == answers[i].len
            && ngx_strncmp(value[1].data, answers[i].data, value[1].len) == 0)
        {
            llcf->answer = i;
            return NGX_CONF_OK;
        }
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid value \"%V\" in \"llm_answer\": auto, "
                       "stream or json expected", &value[1]);

    return NGX_CONF_ERROR;
}


/* llm_on_disconnect cancel | continue [TIME] */

static char *
ngx_http_llm_on_disconnect(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_str_t  *value;

    if (llcf->grace != NGX_CONF_UNSET_MSEC) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "cancel") == 0 && cf->args->nelts == 2) {
        llcf->grace = 0;
        return NGX_CONF_OK;
    }

    if (ngx_strcmp(value[1].data, "continue") != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"llm_on_disconnect\": "
                           "\"cancel\" or \"continue [TIME]\" expected",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    llcf->grace = 30000;

    if (cf->args->nelts == 3) {
        llcf->grace = ngx_parse_time(&value[2], 0);

        if (llcf->grace == (ngx_msec_t) NGX_ERROR || llcf->grace == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid time \"%V\" in "
                               "\"llm_on_disconnect\"", &value[2]);
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


/* llm_job $id: a job location */

static char *
ngx_http_llm_job(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    if (llcf->job) {
        return "is duplicate";
    }

    if (llcf->pipeline) {
        return "cannot be used together with \"llm_pipeline\"";
    }

    llcf->job = ngx_http_llm_content(cf, ngx_http_llm_job_handler);

    return llcf->job ? NGX_CONF_OK : NGX_CONF_ERROR;
}


/* the directive's argument as a complex value; the location's handler */

static ngx_http_complex_value_t *
ngx_http_llm_content(ngx_conf_t *cf, ngx_http_handler_pt handler)
{
    ngx_str_t                         *value;
    ngx_http_complex_value_t          *cv;
    ngx_http_core_loc_conf_t          *clcf;
    ngx_http_compile_complex_value_t   ccv;

    value = cf->args->elts;

    cv = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
    if (cv == NULL) {
        return NULL;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = cv;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NULL;
    }

    if (handler) {
        clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
        clcf->handler = handler;
    }

    return cv;
}


static ngx_int_t
ngx_http_llm_init_process(ngx_cycle_t *cycle)
{
    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    if (ngx_http_llm_channel_init_process(cycle) != NGX_OK
        || ngx_http_llm_stores_init_process(cycle) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_llm_engine_init_process(cycle);
}


static void
ngx_http_llm_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_llm_engine_exit_process(cycle);
    ngx_http_llm_stores_exit_process(cycle);
    ngx_http_llm_jobs_exit_process();
    ngx_http_llm_channel_exit_process(cycle);
}


static char *
ngx_http_llm_max_text_check(ngx_conf_t *cf, void *post, void *data)
{
    size_t *sp = data;

    /* the engine's bound, and the length of a delta event is 32 bits */

    if (*sp == 0 || *sp > NGX_MAX_UINT32_VALUE) {
        return "must be more than 0 and less than 4g";
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_llm_max_events_check(ngx_conf_t *cf, void *post, void *data)
{
    ngx_uint_t *np = data;

    /* the start, a delta and the final event, and some room */

    if (*np < 8) {
        return "must be at least 8";
    }

    return NGX_CONF_OK;
}
