
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * Event templates: compiled, then rendered twice (counting, writing) with
 * values from the input.  Both passes must agree, and a JSON template
 * that compiled must render JSON whatever its values are.  The input: a
 * byte of flags (1: JSON), then the template, a NUL, the text of $text,
 * a NUL, the JSON of $obj.
 */


#include "ngx_http_llm_fuzz.h"
#include "ngx_http_llm_template.h"


typedef struct {
    ngx_str_t   text;
    json_t     *obj;
} ngx_http_llm_fuzz_values_t;


static void ngx_http_llm_fuzz_text_var(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_fuzz_num_var(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_fuzz_obj_var(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_fuzz_arg_var(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v);
static void ngx_http_llm_fuzz_null_var(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v);
static ngx_int_t ngx_http_llm_fuzz_arg(void *data, ngx_str_t *arg);


static ngx_http_llm_var_t  ngx_http_llm_fuzz_vars[] = {
    { ngx_string("text"), ngx_http_llm_fuzz_text_var, 0, 0 },
    { ngx_string("num"), ngx_http_llm_fuzz_num_var, 0, 0 },
    { ngx_string("obj"), ngx_http_llm_fuzz_obj_var, 1, 0 },
    { ngx_string("in_"), ngx_http_llm_fuzz_arg_var, 0, 1 },
    { ngx_string("none"), ngx_http_llm_fuzz_null_var, 0, 0 },
    { ngx_null_string, NULL, 0, 0 }
};


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                      *p, *next;
    json_t                      *out;
    ngx_str_t                    src;
    ngx_uint_t                   json, args;
    ngx_pool_t                  *pool;
    ngx_conf_t                   cf;
    ngx_http_llm_tpl_t           tpl;
    ngx_http_llm_render_t        count, w;
    ngx_http_llm_fuzz_values_t   vals;

    if (size == 0) {
        return 0;
    }

    json = data[0] & 1;

    pool = ngx_http_llm_fuzz_pool();
    if (pool == NULL) {
        return 0;
    }

    ngx_memzero(&cf, sizeof(ngx_conf_t));
    cf.pool = pool;
    cf.temp_pool = pool;
    cf.log = &ngx_http_llm_fuzz_log;

    ngx_memzero(&vals, sizeof(ngx_http_llm_fuzz_values_t));

    /* the template in a copy of its own: compile keeps pointers into it */

    p = (u_char *) data + 1;
    next = ngx_http_llm_fuzz_split(p, size - 1, '\0', &src.len);

    src.data = ngx_pnalloc(pool, src.len + 1);
    if (src.data == NULL) {
        goto done;
    }

    ngx_memcpy(src.data, p, src.len);

    if (next) {
        p = next;
        next = ngx_http_llm_fuzz_split(p, size - (p - data), '\0',
                                       &vals.text.len);
        vals.text.data = p;

        if (next) {
            vals.obj = json_loadb((char *) next, size - (next - data),
                                  JSON_DECODE_ANY, NULL);
        }
    }

    if (ngx_http_llm_tpl_compile(&cf, &tpl, &src, ngx_http_llm_fuzz_vars,
                                 json ? NGX_HTTP_LLM_TPL_JSON : 0, "fuzz")
        != NGX_CONF_OK)
    {
        goto done;
    }

    args = 0;
    (void) ngx_http_llm_tpl_args(&tpl, &ngx_http_llm_fuzz_vars[3],
                                 ngx_http_llm_fuzz_arg, &args);

    count.p = NULL;
    count.n = 0;
    ngx_http_llm_tpl_render(&tpl, &vals, NULL, &count);

    /* exactly as long as counted: a longer rendering is caught by ASan */

    w.p = malloc(count.n + 1);
    if (w.p == NULL) {
        goto done;
    }

    w.n = 0;
    ngx_http_llm_tpl_render(&tpl, &vals, NULL, &w);
    w.p -= w.n;

    if (w.n != count.n) {
        fprintf(stderr, "template: counted %zu bytes, wrote %zu\n", count.n,
                w.n);
        abort();
    }

    if (json) {
        out = json_loadb((char *) w.p, w.n, JSON_DECODE_ANY, NULL);

        if (out == NULL) {
            fprintf(stderr, "template: not JSON: \"%.*s\"\n", (int) w.n,
                    w.p);
            abort();
        }

        json_decref(out);
    }

    free(w.p);

done:

    json_decref(vals.obj);
    ngx_destroy_pool(pool);

    return 0;
}


static void
ngx_http_llm_fuzz_text_var(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v)
{
    ngx_http_llm_fuzz_values_t *vals = data;

    v->type = NGX_HTTP_LLM_VAL_STR;
    v->data = vals->text.data;
    v->len = vals->text.len;
}


static void
ngx_http_llm_fuzz_num_var(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v)
{
    ngx_http_llm_fuzz_values_t *vals = data;

    ngx_http_llm_value_number(v, (int64_t) vals->text.len - INT64_MAX);
}


static void
ngx_http_llm_fuzz_obj_var(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v)
{
    ngx_http_llm_fuzz_values_t *vals = data;

    if (vals->obj) {
        v->type = NGX_HTTP_LLM_VAL_JSON;
        v->json = json_incref(vals->obj);
    }
}


static void
ngx_http_llm_fuzz_arg_var(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v)
{
    v->type = NGX_HTTP_LLM_VAL_STR;
    v->data = arg->data;
    v->len = arg->len;
}


static void
ngx_http_llm_fuzz_null_var(void *data, ngx_str_t *arg,
    ngx_http_llm_value_t *v)
{
    v->type = NGX_HTTP_LLM_VAL_NULL;
}


static ngx_int_t
ngx_http_llm_fuzz_arg(void *data, ngx_str_t *arg)
{
    ngx_uint_t *args = data;

    (*args)++;

    return arg->len ? NGX_OK : NGX_ERROR;
}
