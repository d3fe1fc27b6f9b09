
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * Templates (ngx_http_llm_template.h): compiled from nginx.conf into
 * literals and values, rendered twice per use (counting, then writing),
 * so a renderer must give the same bytes both times.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_provider.h"
#include "ngx_http_llm_template.h"


#define ngx_http_llm_isname(c)                                              \
    (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z')              \
     || ((c) >= '0' && (c) <= '9') || (c) == '_')


/* one piece of a template: literal bytes or a value */
typedef struct {
    ngx_str_t                      lit;
    ngx_http_llm_var_t            *var;         /* NULL: literal or nginx */
    ngx_int_t                      index;       /* nginx variable, or -1 */
    ngx_str_t                      arg;         /* of a prefix variable */
    ngx_str_t                      path;        /* ${name.a.b}: "a.b" */
    size_t                         cut;         /* ${name:N}: N characters */
    unsigned                       quoted:1;    /* inside a JSON string */
} ngx_http_llm_tpl_op_t;


static char *ngx_http_llm_tpl_var(ngx_conf_t *cf, ngx_http_llm_var_t *vars,
    ngx_uint_t flags, const char *what, u_char **pos, u_char *last,
    ngx_http_llm_tpl_op_t *op);
static void ngx_http_llm_render_value(ngx_http_llm_render_t *w,
    ngx_http_llm_value_t *v, ngx_uint_t quoted);
static void ngx_http_llm_render_text(ngx_http_llm_render_t *w,
    ngx_http_llm_value_t *v);
static u_char *ngx_http_llm_utf8_next(u_char *p, u_char *last);
static void ngx_http_llm_value_cut(ngx_http_llm_value_t *v, size_t n);


/*
 * Splits a template into literals and values; a JSON template is
 * minified around them, then checked to be JSON with every value in
 * place.
 */

char *
ngx_http_llm_tpl_compile(ngx_conf_t *cf, ngx_http_llm_tpl_t *tpl,
    ngx_str_t *src, ngx_http_llm_var_t *vars, ngx_uint_t flags,
    const char *what)
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

    tpl->json = (flags & NGX_HTTP_LLM_TPL_JSON) ? 1 : 0;

    /*
     * A literal is never longer than the source; the check at most twice
     * as long ("$x" becomes "null").
     */

    lit = ngx_pnalloc(cf->pool, src->len + 1);
    check = ngx_pnalloc(cf->pool, 2 * src->len + 1);
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

        if (c == '$' && p + 1 < last && p[1] == '$') {
            /* "$$" is a "$" */
            *l++ = c;
            *ck++ = c;
            p += 2;
            continue;
        }

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

            if (ngx_http_llm_tpl_var(cf, vars, flags, what, &p, last, op)
                != NGX_CONF_OK)
            {
                return NGX_CONF_ERROR;
            }

            /* a value stands alone: "[1 $x]" and "-$x" are not JSON */

            if (!in_str) {
                ck = ngx_cpymem(ck, "null", 4);
            }

            continue;
        }

        p++;

        if (!tpl->json) {
            /* text: taken as it is */

        } else if (in_str) {
            if (esc) {
                esc = 0;

            } else if (c == '\\') {
                esc = 1;

            } else if (c == '"') {
                in_str = 0;
            }

        } else if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            /* not in the output, but it still separates in the check */
            if (ck > check && ck[-1] != ' ') {
                *ck++ = ' ';
            }

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

    if (!tpl->json) {
        return NGX_CONF_OK;
    }

    json = json_loadb((char *) check, ck - check, JSON_DECODE_ANY, &err);

    if (json == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%s is not JSON: %s",
                           what, err.text);
        return NGX_CONF_ERROR;
    }

    json_decref(json);

    return NGX_CONF_OK;
}


/* $name, ${name}, ${name.field.field}, and with ":N" in the braces */

static char *
ngx_http_llm_tpl_var(ngx_conf_t *cf, ngx_http_llm_var_t *vars,
    ngx_uint_t flags, const char *what, u_char **pos, u_char *last,
    ngx_http_llm_tpl_op_t *op)
{
    u_char              *p, *start, *dot, *end;
    ngx_int_t            n;
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

    end = p;

    /* ${name:N}: its first N characters */

    if (braces && p < last && *p == ':') {
        for (p++; p < last && *p >= '0' && *p <= '9'; p++) {
            /* void */
        }

        n = ngx_atoi(end + 1, p - end - 1);

        if (n <= 0 || n > 1048576) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s: \"${...:N}\" takes a number of "
                               "characters from 1 to 1048576", what);
            return NGX_CONF_ERROR;
        }

        op->cut = n;
    }

    if (braces && (p == last || *p != '}')) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%s: unterminated \"${\"", what);
        return NGX_CONF_ERROR;
    }

    name.data = start;
    name.len = (dot ? dot : end) - start;

    if (dot) {
        op->path.data = dot + 1;
        op->path.len = end - dot - 1;
    }

    *pos = braces ? p + 1 : p;

    if (name.len == 0 || (dot && op->path.len == 0)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%s: empty variable name", what);
        return NGX_CONF_ERROR;
    }

    op->index = -1;

    for (v = vars; v->name.len; v++) {
        if (v->prefix
            ? (name.len > v->name.len
               && ngx_strncmp(v->name.data, name.data, v->name.len) == 0)
            : (name.len == v->name.len
               && ngx_strncmp(v->name.data, name.data, name.len) == 0))
        {
            op->var = v;
            op->arg.data = name.data + (v->prefix ? v->name.len : name.len);
            op->arg.len = v->prefix ? name.len - v->name.len : 0;
            break;
        }
    }

    if (op->var == NULL) {

        /* the module's own names are checked here, not at run time */

        if (!(flags & NGX_HTTP_LLM_TPL_NGINX)
            || (name.len >= 4 && ngx_strncmp(name.data, "llm_", 4) == 0
                && !(name.len > 10
                     && ngx_strncmp(name.data, "llm_input_", 10) == 0)))
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s: unknown variable \"$%V\"", what,
                               &name);
            return NGX_CONF_ERROR;
        }

        op->index = ngx_http_get_variable_index(cf, &name);
        if (op->index == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }
    }

    if (dot && (op->var == NULL || !op->var->json)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%s: \"$%V\" has no fields", what, &name);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_llm_tpl_args(ngx_http_llm_tpl_t *tpl, ngx_http_llm_var_t *var,
    ngx_int_t (*handler)(void *data, ngx_str_t *arg), void *data)
{
    ngx_uint_t              i;
    ngx_http_llm_tpl_op_t  *op;

    op = tpl->ops.elts;

    for (i = 0; i < tpl->ops.nelts; i++) {
        if (op[i].var == var && handler(data, &op[i].arg) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


void
ngx_http_llm_tpl_render(ngx_http_llm_tpl_t *tpl, void *data,
    ngx_http_request_t *r, ngx_http_llm_render_t *w)
{
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
            op[i].var->get(data, &op[i].arg, &v);

        } else if (r) {
            vv = ngx_http_get_indexed_variable(r, op[i].index);

            if (vv && !vv->not_found) {
                v.type = NGX_HTTP_LLM_VAL_STR;
                v.data = vv->data;
                v.len = vv->len;
            }
        }

        /* ${name.a.b}: walk the object; a missing field is null */

        if (op[i].path.len && v.type == NGX_HTTP_LLM_VAL_JSON) {
            j = json_incref(ngx_http_llm_json_path(v.json, &op[i].path));
            json_decref(v.json);
            v.json = j;

            if (j == NULL) {
                v.type = NGX_HTTP_LLM_VAL_NULL;
            }
        }

        if (op[i].cut) {
            ngx_http_llm_value_cut(&v, op[i].cut);
        }

        if (tpl->json) {
            ngx_http_llm_render_value(w, &v, op[i].quoted);

        } else {
            ngx_http_llm_render_text(w, &v);
        }

        if (v.json) {
            json_decref(v.json);
        }
    }
}


/*
 * ${name:N}: a text's first N characters (code points, never a part of
 * one); a JSON value that is not a string is cut as its JSON text.
 */

static void
ngx_http_llm_value_cut(ngx_http_llm_value_t *v, size_t n)
{
    char    *s, *dump;
    size_t   len, i, chars;
    json_t  *j;

    dump = NULL;

    switch (v->type) {

    case NGX_HTTP_LLM_VAL_STR:
        s = (char *) v->data;
        len = v->len;
        break;

    case NGX_HTTP_LLM_VAL_JSON:
        if (json_is_string(v->json)) {
            s = (char *) json_string_value(v->json);
            len = json_string_length(v->json);
            break;
        }

        dump = json_dumps(v->json, NGX_HTTP_LLM_JSON_DUMP | JSON_ENCODE_ANY);
        if (dump == NULL) {
            return;
        }

        s = dump;
        len = ngx_strlen(dump);
        break;

    default:
        return;
    }

    for (i = 0, chars = 0; i < len; i++) {
        if (((u_char) s[i] & 0xc0) != 0x80 && chars++ == n) {
            break;
        }
    }

    if (v->type == NGX_HTTP_LLM_VAL_STR) {
        v->len = i;
        return;
    }

    j = json_stringn(s, i);

    free(dump);

    if (j) {
        json_decref(v->json);
        v->json = j;
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

        s = json_dumps(v->json, NGX_HTTP_LLM_JSON_DUMP | JSON_ENCODE_ANY);

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




/* a value as text: strings and numbers as they are, JSON as JSON */

static void
ngx_http_llm_render_text(ngx_http_llm_render_t *w, ngx_http_llm_value_t *v)
{
    char  *s;

    switch (v->type) {

    case NGX_HTTP_LLM_VAL_NULL:
        break;

    case NGX_HTTP_LLM_VAL_STR:
    case NGX_HTTP_LLM_VAL_RAW:
        ngx_http_llm_render_raw(w, v->data, v->len);
        break;

    case NGX_HTTP_LLM_VAL_JSON:
        if (json_is_string(v->json)) {
            ngx_http_llm_render_raw(w, json_string_value(v->json),
                                    json_string_length(v->json));
            break;
        }

        s = json_dumps(v->json, NGX_HTTP_LLM_JSON_DUMP | JSON_ENCODE_ANY);

        if (s) {
            ngx_http_llm_render_raw(w, s, ngx_strlen(s));
            free(s);
        }

        break;
    }
}


void
ngx_http_llm_value_number(ngx_http_llm_value_t *v, int64_t n)
{
    v->type = NGX_HTTP_LLM_VAL_RAW;
    v->data = v->buf;
    v->len = ngx_sprintf(v->buf, "%L", n) - v->buf;
}


/* the value at "a.b.0" in objects and arrays, borrowed; NULL if none */

json_t *
ngx_http_llm_json_path(json_t *j, ngx_str_t *path)
{
    u_char     *p, *dot, *last;
    ngx_int_t   n;

    p = path->data;
    last = p + path->len;

    while (j && p < last) {
        dot = ngx_strlchr(p, last, '.');

        if (dot == NULL) {
            dot = last;
        }

        if (json_is_array(j)) {
            n = ngx_atoi(p, dot - p);
            j = (n == NGX_ERROR) ? NULL : json_array_get(j, n);

        } else {
            j = json_object_getn(j, (const char *) p, dot - p);
        }

        p = dot + 1;
    }

    return j;
}


void
ngx_http_llm_render_raw(ngx_http_llm_render_t *w, const void *s, size_t len)
{
    if (w->p) {
        w->p = ngx_cpymem(w->p, s, len);
    }

    w->n += len;
}


/*
 * The end of the UTF-8 character at p (a byte >= 0x80), or NULL when it
 * is not one: a bad lead byte, a missing or bad continuation, an overlong
 * form, a surrogate or a value past U+10FFFF.
 */

static u_char *
ngx_http_llm_utf8_next(u_char *p, u_char *last)
{
    size_t    n, i;
    uint32_t  u, min;

    if (*p >= 0xc2 && *p <= 0xdf) {
        n = 1;
        u = *p & 0x1f;
        min = 0x80;

    } else if (*p >= 0xe0 && *p <= 0xef) {
        n = 2;
        u = *p & 0x0f;
        min = 0x800;

    } else if (*p >= 0xf0 && *p <= 0xf4) {
        n = 3;
        u = *p & 0x07;
        min = 0x10000;

    } else {
        return NULL;
    }

    if ((size_t) (last - p) <= n) {
        return NULL;
    }

    for (i = 1; i <= n; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            return NULL;
        }

        u = (u << 6) | (p[i] & 0x3f);
    }

    if (u < min || u > 0x10ffff || (u >= 0xd800 && u <= 0xdfff)) {
        return NULL;
    }

    return p + n + 1;
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

        q = ngx_http_llm_utf8_next(p, last);

        if (q == NULL) {
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
            q = ngx_http_llm_utf8_next(s, last);

            if (q == NULL) {
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
