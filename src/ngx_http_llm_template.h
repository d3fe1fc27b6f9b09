
/*
 * Copyright (C) ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_TEMPLATE_H_INCLUDED_
#define _NGX_HTTP_LLM_TEMPLATE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>


/*
 * Templates: text with $name, ${name} and ${name.field} values, compiled
 * when the configuration is read.  A JSON template is checked to be JSON
 * with its values in place and inserts values as JSON (escaped inside
 * strings); a text template inserts them as they are.  Each user of
 * templates brings its own table of variables; other names are nginx
 * variables, evaluated in the request given to the renderer, if any.
 */


/* renders into p, or only counts when p is NULL */
typedef struct {
    u_char                        *p;
    size_t                         n;
} ngx_http_llm_render_t;


typedef enum {
    NGX_HTTP_LLM_VAL_NULL = 0,
    NGX_HTTP_LLM_VAL_STR,           /* text, escaped in JSON */
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


/* "arg" is what follows the name of a prefix variable ($llm_input_NAME) */
typedef void (*ngx_http_llm_var_pt)(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v);


typedef struct {
    ngx_str_t                      name;
    ngx_http_llm_var_pt            get;
    unsigned                       json:1;      /* ${name.field} allowed */
    unsigned                       prefix:1;    /* $nameARG */
} ngx_http_llm_var_t;


#define NGX_HTTP_LLM_TPL_JSON      1    /* JSON, values as JSON */
#define NGX_HTTP_LLM_TPL_NGINX     2    /* other names: nginx variables */


typedef struct {
    ngx_array_t                    ops;
    unsigned                       json:1;
} ngx_http_llm_tpl_t;


/*
 * "what" names the template in messages ("llm_format: \"start\"
 * template"); "vars" ends with an empty name; "flags": NGX_HTTP_LLM_TPL_*.
 */
char *ngx_http_llm_tpl_compile(ngx_conf_t *cf, ngx_http_llm_tpl_t *tpl,
    ngx_str_t *src, ngx_http_llm_var_t *vars, ngx_uint_t flags,
    const char *what);
/* calls handler with the argument of each use of a prefix variable */
ngx_int_t ngx_http_llm_tpl_args(ngx_http_llm_tpl_t *tpl,
    ngx_http_llm_var_t *var, ngx_int_t (*handler)(void *data, ngx_str_t *arg),
    void *data);
void ngx_http_llm_tpl_render(ngx_http_llm_tpl_t *tpl, void *data,
    ngx_http_request_t *r, ngx_http_llm_render_t *w);

json_t *ngx_http_llm_json_path(json_t *j, ngx_str_t *path);
void ngx_http_llm_render_raw(ngx_http_llm_render_t *w, const void *s,
    size_t len);
void ngx_http_llm_render_str(ngx_http_llm_render_t *w, u_char *s,
    size_t len, ngx_uint_t quotes);
void ngx_http_llm_value_number(ngx_http_llm_value_t *v, int64_t n);


#endif /* _NGX_HTTP_LLM_TEMPLATE_H_INCLUDED_ */
