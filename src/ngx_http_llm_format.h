
/*
 * Copyright (C) ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_FORMAT_H_INCLUDED_
#define _NGX_HTTP_LLM_FORMAT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_template.h"


/*
 * Formats: the shape of every event a location sends, and of its JSON
 * answers.  A format is a C renderer (the built-in "default" and
 * "openai") or a set of templates from an llm_format block.  Rendering
 * runs twice per write, first counting, then writing into memory of
 * the counted size, so every renderer must produce the same bytes twice.
 */


/* what a template can be given for */
typedef enum {
    NGX_HTTP_LLM_K_START = 0,
    NGX_HTTP_LLM_K_DELTA,
    NGX_HTTP_LLM_K_COMPLETE,
    NGX_HTTP_LLM_K_ERROR,
    NGX_HTTP_LLM_K_SHUTDOWN,
    NGX_HTTP_LLM_K_STEP_START,      /* a pipeline's payload events */
    NGX_HTTP_LLM_K_STEP,
    NGX_HTTP_LLM_K_CHECK,
    NGX_HTTP_LLM_K_PROGRESS,
    NGX_HTTP_LLM_K_PAUSED,
    NGX_HTTP_LLM_K_RESUMED,
    NGX_HTTP_LLM_K_RESPONSE,        /* the blocking answer's body */
    NGX_HTTP_LLM_K_REFUSAL,         /* a JSON error answer's body */
    NGX_HTTP_LLM_K_N
} ngx_http_llm_kind_e;


/* when= of a pipeline's complete (a check's: 1 passed, 0 failed) */
#define NGX_HTTP_LLM_WHEN_STOPPED     2
#define NGX_HTTP_LLM_WHEN_FINISHED    3


/* what one rendering is about */
typedef struct {
    ngx_http_request_t            *request;
    ngx_http_llm_job_t            *job;         /* NULL: a refusal */
    ngx_uint_t                     first;       /* events first..last */
    ngx_uint_t                     last;
    unsigned                       include_usage:1;  /* openai */
    ngx_str_t                     *model;       /* the stream's, or NULL */

    /* a final event sent in pieces: its text sent so far, and room now */
    size_t                         final;
    size_t                         room;

    /* a refusal's status and error */
    ngx_uint_t                     status;
    ngx_str_t                      code;
    ngx_str_t                      message;
} ngx_http_llm_fmt_ctx_t;


struct ngx_http_llm_format_s {
    ngx_str_t                      name;

    /*
     * Built-in formats render SSE frames and JSON bodies in C; a
     * template format leaves these NULL.
     */
    ngx_uint_t                   (*event)(ngx_http_llm_format_t *fmt,
                                          ngx_http_llm_fmt_ctx_t *fc,
                                          ngx_http_llm_render_t *w);
    ngx_int_t                    (*body)(ngx_http_llm_format_t *fmt,
                                         ngx_http_llm_kind_e kind,
                                         ngx_http_llm_fmt_ctx_t *fc,
                                         ngx_http_llm_render_t *w);

    /* ngx_http_llm_tpl_t per kind; NULL: not given; nelts 0: "off" */
    ngx_array_t                   *tpls[NGX_HTTP_LLM_K_N];

    /* deltas: at most one event per this time or this many bytes */
    ngx_msec_t                     coalesce_time;
    size_t                         coalesce_size;
};


char *ngx_http_llm_format_block(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_llm_format_choose(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_llm_formats_init(ngx_conf_t *cf, ngx_array_t **formats);
ngx_http_llm_format_t *ngx_http_llm_format_default(ngx_conf_t *cf);

/*
 * The frames of events fc->first..fc->last (merged deltas: one event).
 * Returns 1, or 0 when a final event's text goes on in the next write
 * (fc->final tells how much of it was sent).
 */
ngx_uint_t ngx_http_llm_format_event(ngx_http_llm_format_t *fmt,
    ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_render_t *w);

/*
 * The body of a JSON answer of this kind: NGX_OK, or NGX_DECLINED when
 * the format does not shape it (the caller's own body is sent).
 */
ngx_int_t ngx_http_llm_format_body(ngx_http_llm_format_t *fmt,
    ngx_http_llm_kind_e kind, ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_render_t *w);

void ngx_http_llm_render_id(ngx_http_llm_render_t *w,
    ngx_http_llm_job_t *job, ngx_uint_t seq);

ngx_int_t ngx_http_llm_format_model(ngx_http_llm_fmt_ctx_t *fc,
    ngx_str_t *model);

/* ngx_http_llm_request.c */
ngx_int_t ngx_http_llm_send_formatted(ngx_http_request_t *r,
    ngx_uint_t status, ngx_http_llm_kind_e kind, ngx_http_llm_fmt_ctx_t *fc);

/* ngx_http_llm_format_vars.c */
extern ngx_http_llm_var_t  ngx_http_llm_format_vars[];

json_t *ngx_http_llm_format_payload(ngx_http_llm_fmt_ctx_t *fc);
ngx_uint_t ngx_http_llm_format_stopped(ngx_http_llm_fmt_ctx_t *fc);

/* ngx_http_llm_format_openai.c */
extern ngx_http_llm_format_t  ngx_http_llm_format_openai;


#endif /* _NGX_HTTP_LLM_FORMAT_H_INCLUDED_ */
