
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * Request inputs: the fields of a JSON object or form body (URL-encoded
 * or multipart), and the query arguments, seen through the
 * $llm_input_NAME variables, so that one configuration serves
 * EventSource (GET) and fetch (POST) clients alike; before them all, the
 * inputs the location sets itself (llm_input NAME VALUE).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_format.h"


static ngx_int_t ngx_http_llm_input_json(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, u_char *p, size_t len, ngx_str_t *err);
static ngx_int_t ngx_http_llm_input_openai(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, json_t *root, ngx_str_t *err);
static void ngx_http_llm_input_cleanup(void *data);
static ngx_int_t ngx_http_llm_input_form(ngx_http_request_t *r,
    ngx_array_t *inputs, u_char *p, size_t len, ngx_str_t *err);
static ngx_int_t ngx_http_llm_input_multipart(ngx_http_request_t *r,
    ngx_array_t *inputs, u_char *p, size_t len, ngx_str_t *err);
static ngx_int_t ngx_http_llm_input_unescape(ngx_pool_t *pool,
    u_char *p, size_t len, ngx_str_t *out);



ngx_int_t
ngx_http_llm_input_parse(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_str_t *err)
{
    u_char       *p;
    size_t        len;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    ctx->inputs = ngx_array_create(r->pool, 4, sizeof(ngx_http_llm_input_t));
    if (ctx->inputs == NULL) {
        ngx_str_set(err, "out of memory");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        if (cl->buf->in_file) {
            ngx_str_set(err, "the body is larger than "
                             "client_body_buffer_size");
            return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
        }

        len += ngx_buf_size(cl->buf);
    }

    if (len == 0) {
        return NGX_OK;
    }

    b = r->request_body->bufs->buf;

    if (r->request_body->bufs->next == NULL) {
        p = b->pos;

    } else {
        p = ngx_pnalloc(r->pool, len);
        if (p == NULL) {
            ngx_str_set(err, "out of memory");
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        len = 0;
        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            ngx_memcpy(p + len, cl->buf->pos, ngx_buf_size(cl->buf));
            len += ngx_buf_size(cl->buf);
        }
    }

    if (ngx_http_llm_content_type_is(r, "application/json")) {
        return ngx_http_llm_input_json(r, ctx, p, len, err);
    }

    if (ngx_http_llm_content_type_is(r, "multipart/form-data")) {
        return ngx_http_llm_input_multipart(r, ctx->inputs, p, len, err);
    }

    return ngx_http_llm_input_form(r, ctx->inputs, p, len, err);
}


/*
 * multipart/form-data (a browser's FormData): each part's field name and
 * content; files (parts with a filename) are left out.
 *
 *     --BOUNDARY CRLF headers CRLF CRLF content CRLF --BOUNDARY ... --
 */

static ngx_int_t
ngx_http_llm_input_multipart(ngx_http_request_t *r, ngx_array_t *inputs,
    u_char *p, size_t len, ngx_str_t *err)
{
    u_char                *last, *next, *h, *eol;
    ngx_str_t              boundary, delim, params, name, file;
    ngx_http_llm_input_t  *in;

    if (ngx_http_llm_content_type_param(r, "boundary", &boundary) != NGX_OK
        || boundary.len == 0 || boundary.len > 70)
    {
        ngx_str_set(err, "a multipart body needs a boundary");
        return NGX_HTTP_BAD_REQUEST;
    }

    /* "CRLF--BOUNDARY": the first one may come without its CRLF */

    delim.len = boundary.len + 4;
    delim.data = ngx_pnalloc(r->pool, delim.len);
    if (delim.data == NULL) {
        ngx_str_set(err, "out of memory");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(ngx_cpymem(delim.data, "\r\n--", 4), boundary.data,
               boundary.len);

    last = p + len;

    /* boundaries are case-sensitive (RFC 2046) */

    p = memmem(p, last - p, delim.data + 2, delim.len - 2);
    if (p == NULL) {
        goto malformed;
    }

    p += delim.len - 2;

    for ( ;; ) {
        if (last - p >= 2 && p[0] == '-' && p[1] == '-') {
            return NGX_OK;
        }

        if (last - p < 2 || p[0] != '\r' || p[1] != '\n') {
            goto malformed;
        }

        p += 2;

        /* the part's headers: its name and whether it is a file */

        ngx_str_null(&name);
        ngx_str_null(&file);

        for ( ;; ) {
            eol = memmem(p, last - p, "\r\n", 2);
            if (eol == NULL) {
                goto malformed;
            }

            if (eol == p) {
                p += 2;
                break;
            }

            h = p;
            p = eol + 2;

            if (eol - h > 20
                && ngx_strncasecmp(h, (u_char *) "Content-Disposition:", 20)
                   == 0)
            {
                params.data = ngx_strlchr(h, eol, ';');

                if (params.data == NULL) {
                    continue;
                }

                params.len = eol - params.data;

                if (ngx_http_llm_param(r->pool, &params, "name", &name)
                    == NGX_ERROR
                    || ngx_http_llm_param(r->pool, &params, "filename",
                                          &file)
                       == NGX_ERROR)
                {
                    ngx_str_set(err, "out of memory");
                    return NGX_HTTP_INTERNAL_SERVER_ERROR;
                }
            }
        }

        next = memmem(p, last - p, delim.data, delim.len);
        if (next == NULL) {
            goto malformed;
        }

        if (name.len && file.data == NULL) {
            in = ngx_array_push(inputs);
            if (in == NULL) {
                ngx_str_set(err, "out of memory");
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            in->name = name;
            in->value.data = p;
            in->value.len = next - p;
        }

        p = next + delim.len;
    }

malformed:

    ngx_str_set(err, "malformed multipart body");
    return NGX_HTTP_BAD_REQUEST;
}


static ngx_int_t
ngx_http_llm_input_json(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    u_char *p, size_t len, ngx_str_t *err)
{
    char                  *s;
    size_t                 n;
    json_t                *root, *v;
    const char            *key;
    ngx_int_t                 rc;
    json_error_t              jerr;
    ngx_http_llm_input_t     *in;
    ngx_http_llm_loc_conf_t  *llcf;

    root = json_loadb((char *) p, len, 0, &jerr);

    if (root == NULL || !json_is_object(root)) {
        err->data = ngx_pnalloc(r->pool, JSON_ERROR_TEXT_LENGTH + 64);
        if (err->data == NULL) {
            ngx_str_set(err, "malformed JSON");

        } else if (root == NULL) {
            err->len = ngx_sprintf(err->data, "malformed JSON: %s at %d",
                                   jerr.text, jerr.position)
                       - err->data;

        } else {
            err->len = ngx_sprintf(err->data, "the body must be a JSON "
                                   "object") - err->data;
        }

        json_decref(root);
        return NGX_HTTP_BAD_REQUEST;
    }

    json_object_foreach(root, key, v) {

        if (json_is_null(v)) {
            continue;
        }

        in = ngx_array_push(ctx->inputs);
        if (in == NULL) {
            goto nomem;
        }

        in->name.len = ngx_strlen(key);
        in->name.data = (u_char *) key;
        in->name.data = ngx_pstrdup(r->pool, &in->name);

        if (in->name.data == NULL) {
            goto nomem;
        }

        if (json_is_string(v)) {
            n = json_string_length(v);
            s = (char *) json_string_value(v);

            in->value.data = ngx_pnalloc(r->pool, n);
            if (in->value.data == NULL) {
                goto nomem;
            }

            ngx_memcpy(in->value.data, s, n);
            in->value.len = n;

        } else {
            /* numbers, booleans, arrays and objects as their JSON text */
            s = json_dumps(v, NGX_HTTP_LLM_JSON_DUMP | JSON_ENCODE_ANY);
            if (s == NULL) {
                goto nomem;
            }

            in->value.len = ngx_strlen(s);
            in->value.data = ngx_pnalloc(r->pool, in->value.len);
            if (in->value.data == NULL) {
                free(s);
                goto nomem;
            }

            ngx_memcpy(in->value.data, s, in->value.len);
            free(s);
        }
    }

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    if (llcf->format == &ngx_http_llm_format_openai) {
        rc = ngx_http_llm_input_openai(r, ctx, root, err);
        json_decref(root);
        return rc;
    }

    json_decref(root);

    return NGX_OK;

nomem:

    json_decref(root);
    ngx_str_set(err, "out of memory");

    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}


/*
 * An OpenAI Chat Completions request: its messages go to the provider
 * after the location's system prompt; "stream" chooses a stream or the
 * blocking answer; temperature and max_tokens are passed on.
 */

static ngx_int_t
ngx_http_llm_input_openai(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    json_t *root, ngx_str_t *err)
{
    size_t               i;
    json_t              *v, *m, *role, *content, *temperature;
    json_int_t           n;
    ngx_pool_cleanup_t  *cln;

    ctx->openai = 1;
    temperature = NULL;

    v = json_object_get(root, "stream");

    if (v && !json_is_boolean(v) && !json_is_null(v)) {
        ngx_str_set(err, "\"stream\" must be a boolean");
        return NGX_HTTP_BAD_REQUEST;
    }

    ctx->stream = json_is_true(v);

    v = json_object_get(json_object_get(root, "stream_options"),
                        "include_usage");
    ctx->include_usage = json_is_true(v);

    v = json_object_get(root, "max_completion_tokens");

    if (v == NULL || json_is_null(v)) {
        v = json_object_get(root, "max_tokens");
    }

    if (v && !json_is_null(v)) {
        n = json_is_integer(v) ? json_integer_value(v) : 0;

        if (n < 1 || n > 10000000) {
            ngx_str_set(err, "\"max_tokens\" must be a positive integer");
            return NGX_HTTP_BAD_REQUEST;
        }

        ctx->max_tokens = (ngx_uint_t) n;
    }

    v = json_object_get(root, "temperature");

    if (v && !json_is_null(v)) {
        if (!json_is_number(v) || json_number_value(v) < 0
            || json_number_value(v) > 2)
        {
            ngx_str_set(err, "\"temperature\" must be a number from 0 to 2");
            return NGX_HTTP_BAD_REQUEST;
        }

        temperature = v;
    }

    m = json_object_get(root, "messages");

    if (m == NULL || json_is_null(m)) {
        goto done;
    }

    if (!json_is_array(m) || json_array_size(m) == 0) {
        ngx_str_set(err, "\"messages\" must be a non-empty array");
        return NGX_HTTP_BAD_REQUEST;
    }

    json_array_foreach(m, i, v) {
        role = json_object_get(v, "role");
        content = json_object_get(v, "content");

        if (!json_is_string(role)
            || !(json_is_string(content) || json_is_array(content)
                 || json_is_null(content)))
        {
            ngx_str_set(err, "each message needs a \"role\" and a "
                             "\"content\"");
            return NGX_HTTP_BAD_REQUEST;
        }
    }

    ctx->messages = m;

done:

    ctx->temperature = temperature;

    if (ctx->messages == NULL && ctx->temperature == NULL) {
        return NGX_OK;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        ctx->messages = NULL;
        ctx->temperature = NULL;
        ngx_str_set(err, "out of memory");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json_incref(ctx->messages);
    json_incref(ctx->temperature);

    cln->handler = ngx_http_llm_input_cleanup;
    cln->data = ctx;

    return NGX_OK;
}


static void
ngx_http_llm_input_cleanup(void *data)
{
    ngx_http_llm_ctx_t *ctx = data;

    json_decref(ctx->messages);
    json_decref(ctx->temperature);
}


static ngx_int_t
ngx_http_llm_input_form(ngx_http_request_t *r, ngx_array_t *inputs,
    u_char *p, size_t len, ngx_str_t *err)
{
    u_char                *last, *amp, *eq;
    ngx_http_llm_input_t  *in;

    last = p + len;

    while (p < last) {
        amp = ngx_strlchr(p, last, '&');
        if (amp == NULL) {
            amp = last;
        }

        eq = ngx_strlchr(p, amp, '=');

        if (amp > p) {
            in = ngx_array_push(inputs);

            if (in == NULL
                || ngx_http_llm_input_unescape(r->pool, p,
                                               (eq ? eq : amp) - p,
                                               &in->name)
                   != NGX_OK
                || ngx_http_llm_input_unescape(r->pool, eq ? eq + 1 : amp,
                                               eq ? amp - eq - 1 : 0,
                                               &in->value)
                   != NGX_OK)
            {
                ngx_str_set(err, "out of memory");
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }
        }

        p = amp + 1;
    }

    return NGX_OK;
}


/* form encoding: '+' is a space, then %XX escapes */

static ngx_int_t
ngx_http_llm_input_unescape(ngx_pool_t *pool, u_char *p, size_t len,
    ngx_str_t *out)
{
    u_char  *src, *dst, *tmp;
    size_t   i;

    tmp = ngx_pnalloc(pool, len);
    if (tmp == NULL && len) {
        return NGX_ERROR;
    }

    for (i = 0; i < len; i++) {
        tmp[i] = (p[i] == '+') ? ' ' : p[i];
    }

    src = tmp;
    dst = tmp;
    ngx_unescape_uri(&dst, &src, len, 0);

    out->data = tmp;
    out->len = dst - tmp;

    return NGX_OK;
}


ngx_int_t
ngx_http_llm_input_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t *var = (ngx_str_t *) data;

    ngx_str_t                     name, value, arg;
    ngx_uint_t                    i;
    ngx_http_llm_ctx_t           *ctx;
    ngx_http_llm_input_t         *in;
    ngx_http_llm_loc_conf_t      *llcf;
    ngx_http_llm_conf_input_t    *ci;

    name.data = var->data + sizeof("llm_input_") - 1;
    name.len = var->len - (sizeof("llm_input_") - 1);

    /* what the location sets comes before what the client sends */

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);
    ci = llcf->inputs ? llcf->inputs->elts : NULL;

    for (i = 0; ci && i < llcf->inputs->nelts; i++) {
        if (ci[i].name.len == name.len
            && ngx_strncasecmp(ci[i].name.data, name.data, name.len) == 0)
        {
            if (ngx_http_complex_value(r, &ci[i].value, &value) != NGX_OK) {
                return NGX_ERROR;
            }

            goto found;
        }
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx && ctx->inputs) {
        in = ctx->inputs->elts;

        for (i = 0; i < ctx->inputs->nelts; i++) {
            if (in[i].name.len == name.len
                && ngx_strncasecmp(in[i].name.data, name.data, name.len) == 0)
            {
                value = in[i].value;
                goto found;
            }
        }
    }

    if (ngx_http_arg(r, name.data, name.len, &arg) != NGX_OK) {
        v->not_found = 1;
        return NGX_OK;
    }

    if (ngx_http_llm_input_unescape(r->pool, arg.data, arg.len, &value)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

found:

    v->data = value.data;
    v->len = value.len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


/*
 * All the inputs as one JSON object of strings, as $llm_input_NAME sees
 * them: the location's (llm_input), the body's fields, then the query's
 * arguments, each name the first time it comes.
 */

json_t *
ngx_http_llm_input_object(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    json_t                     *o;
    ngx_str_t                   err;
    ngx_uint_t                  i, k;
    ngx_array_t                *args, *set, *lists[3];
    ngx_http_llm_input_t       *in;
    ngx_http_llm_loc_conf_t    *llcf;
    ngx_http_llm_conf_input_t  *ci;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    args = ngx_array_create(r->pool, 4, sizeof(ngx_http_llm_input_t));
    set = ngx_array_create(r->pool, 4, sizeof(ngx_http_llm_input_t));
    o = json_object();

    if (args == NULL || set == NULL || o == NULL
        || ngx_http_llm_input_form(r, args, r->args.data, r->args.len, &err)
           != NGX_OK)
    {
        json_decref(o);
        return NULL;
    }

    /* the location's own inputs, evaluated now: the job's start */

    ci = llcf->inputs ? llcf->inputs->elts : NULL;

    for (i = 0; ci && i < llcf->inputs->nelts; i++) {
        in = ngx_array_push(set);

        if (in == NULL
            || ngx_http_complex_value(r, &ci[i].value, &in->value) != NGX_OK)
        {
            json_decref(o);
            return NULL;
        }

        in->name = ci[i].name;
    }

    lists[0] = set;
    lists[1] = ctx->inputs;
    lists[2] = args;

    for (k = 0; k < 3; k++) {
        in = lists[k] ? lists[k]->elts : NULL;

        for (i = 0; in && i < lists[k]->nelts; i++) {
            if (json_object_getn(o, (const char *) in[i].name.data,
                                 in[i].name.len))
            {
                continue;
            }

            /* a name that is not UTF-8 cannot be a key: left out */

            (void) json_object_setn_new(o, (const char *) in[i].name.data,
                                        in[i].name.len,
                                        ngx_http_llm_json_str(&in[i].value));
        }
    }

    return o;
}


/* llm_input NAME VALUE: an input the client cannot set */

char *
ngx_http_llm_input_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    u_char                             c;
    ngx_str_t                         *value;
    ngx_uint_t                         i;
    ngx_http_llm_conf_input_t         *ci;
    ngx_http_compile_complex_value_t   ccv;

    value = cf->args->elts;

    for (i = 0; i < value[1].len; i++) {
        c = value[1].data[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9') || c == '_'))
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid input name \"%V\" in \"llm_input\" "
                               "(letters, digits and _)", &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    if (llcf->inputs == NULL) {
        llcf->inputs = ngx_array_create(cf->pool, 2,
                                        sizeof(ngx_http_llm_conf_input_t));
        if (llcf->inputs == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    ci = llcf->inputs->elts;

    for (i = 0; i < llcf->inputs->nelts; i++) {
        if (ci[i].name.len == value[1].len
            && ngx_strncasecmp(ci[i].name.data, value[1].data,
                               value[1].len) == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate input \"%V\" in \"llm_input\"",
                               &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    ci = ngx_array_push(llcf->inputs);
    if (ci == NULL) {
        return NGX_CONF_ERROR;
    }

    ci->name = value[1];

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[2];
    ccv.complex_value = &ci->value;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}
