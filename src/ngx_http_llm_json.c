
/*
 * Copyright (C) ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <jansson.h>
#include "ngx_http_llm_provider.h"


/* the longest plain text error body quoted as an error message */
#define NGX_HTTP_LLM_ERRTEXT_MAX  512


static u_char *ngx_http_llm_utf8_fix(u_char *p, size_t len, size_t *out);
static json_t *ngx_http_llm_json_errmsg(json_t *root);
static char *ngx_http_llm_header_line(const char *prefix, u_char *value,
    size_t len);


json_t *
ngx_http_llm_json_str(ngx_str_t *s)
{
    size_t   n;
    u_char  *fixed;
    json_t  *str;

    /* an empty ngx_str_t may have no data pointer: json_stringn() fails */
    if (s->len == 0) {
        return json_string("");
    }

    str = json_stringn((char *) s->data, s->len);
    if (str != NULL) {
        return str;
    }

    /* the input comes from a request: repair it rather than fail */

    fixed = ngx_http_llm_utf8_fix(s->data, s->len, &n);
    if (fixed == NULL) {
        return NULL;
    }

    str = json_stringn((char *) fixed, n);

    free(fixed);

    return str;
}


json_t *
ngx_http_llm_json_msg(const char *role, ngx_str_t *content)
{
    json_t  *msg;

    msg = json_object();

    if (json_object_set_new(msg, "role", json_string(role)) != 0
        || json_object_set_new(msg, "content", ngx_http_llm_json_str(content))
           != 0)
    {
        json_decref(msg);
        return NULL;
    }

    return msg;
}


/*
 * The messages of a request: the client's own, if any, then the prompt
 * as the user's.  Without "system", messages of the system and developer
 * roles are left out (the provider takes them elsewhere).
 */

ngx_int_t
ngx_http_llm_json_conversation(json_t *messages, ngx_http_llm_params_t *params,
    ngx_uint_t system)
{
    size_t       i;
    json_t      *m;
    const char  *role;

    json_array_foreach(params->messages, i, m) {
        role = json_string_value(json_object_get(m, "role"));

        if (!system && role
            && (ngx_strcmp(role, "system") == 0
                || ngx_strcmp(role, "developer") == 0))
        {
            continue;
        }

        if (json_array_append(messages, m) != 0) {
            return NGX_ERROR;
        }
    }

    if ((params->prompt.len || params->messages == NULL)
        && json_array_append_new(messages,
                                 ngx_http_llm_json_msg("user",
                                                       &params->prompt))
           != 0)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* compact JSON text of root, which is released */

char *
ngx_http_llm_json_dump(json_t *root, size_t *len)
{
    char  *text;

    text = json_dumps(root, NGX_HTTP_LLM_JSON_DUMP);

    json_decref(root);

    if (text != NULL) {
        *len = ngx_strlen(text);
    }

    return text;
}


/* an upstream event's JSON object, or NULL after sink->fail() */

json_t *
ngx_http_llm_json_parse(ngx_str_t *data, ngx_http_llm_sink_t *sink)
{
    json_t  *root;

    /* a NUL in generated text is not worth failing the stream */
    root = json_loadb((char *) data->data, data->len, JSON_ALLOW_NUL, NULL);

    if (!json_is_object(root)) {
        json_decref(root);

        sink->fail(sink->data, NGX_HTTP_LLM_E_INVALID,
                   (u_char *) "unparsable upstream data",
                   sizeof("unparsable upstream data") - 1);
        return NULL;
    }

    return root;
}


/* reports an error object sent inside the stream */

ngx_int_t
ngx_http_llm_json_fail(json_t *root, ngx_http_llm_sink_t *sink)
{
    json_t  *msg;

    msg = ngx_http_llm_json_errmsg(root);

    if (msg == NULL) {
        sink->fail(sink->data, NGX_HTTP_LLM_E_UPSTREAM,
                   (u_char *) "upstream error", sizeof("upstream error") - 1);

    } else {
        sink->fail(sink->data, NGX_HTTP_LLM_E_UPSTREAM,
                   (u_char *) json_string_value(msg), json_string_length(msg));
    }

    return NGX_ERROR;
}


/* the error() method of both providers: their error bodies look alike */

void
ngx_http_llm_status_error(ngx_uint_t status, u_char *body, size_t len,
    ngx_http_llm_sink_t *sink)
{
    int         n;
    char        buf[sizeof("HTTP ") + NGX_INT_T_LEN];
    size_t      cut, fixed_len;
    u_char     *fixed;
    json_t     *root, *msg;
    ngx_str_t   text;

    root = len ? json_loadb((char *) body, len, JSON_ALLOW_NUL, NULL) : NULL;
    msg = ngx_http_llm_json_errmsg(root);

    if (msg != NULL) {
        sink->fail(sink->data, NGX_HTTP_LLM_E_STATUS,
                   (u_char *) json_string_value(msg), json_string_length(msg));
        json_decref(root);
        return;
    }

    json_decref(root);

    /* an HTML page or plain text from a proxy: quote its beginning */

    text.data = body;
    text.len = len;

    ngx_http_llm_trim(&text);

    if (text.len > NGX_HTTP_LLM_ERRTEXT_MAX) {
        cut = NGX_HTTP_LLM_ERRTEXT_MAX;

        /* do not split a character: back off to its first byte */
        while (cut > NGX_HTTP_LLM_ERRTEXT_MAX - 3
               && (text.data[cut] & 0xc0) == 0x80)
        {
            cut--;
        }

        text.len = cut;
    }

    if (text.len) {
        fixed = ngx_http_llm_utf8_fix(text.data, text.len, &fixed_len);

        if (fixed != NULL) {
            sink->fail(sink->data, NGX_HTTP_LLM_E_STATUS, fixed, fixed_len);
            free(fixed);
            return;
        }
    }

    n = snprintf(buf, sizeof(buf), "HTTP %lu", (unsigned long) status);

    sink->fail(sink->data, NGX_HTTP_LLM_E_STATUS, (u_char *) buf, n);
}


/*
 * The "fixed" lines (NULL-terminated) and, with a key, "auth" followed by
 * the key; the lines are malloc()ed.
 */

ngx_int_t
ngx_http_llm_header_lines(char **lines, ngx_uint_t max,
    const char *const *fixed, const char *auth, ngx_str_t *key)
{
    ngx_uint_t  i, n, nfixed;

    /* the key is sent verbatim: no header injection */

    for (i = 0; i < key->len; i++) {
        if (key->data[i] == CR || key->data[i] == LF || key->data[i] == '\0') {
            return NGX_ERROR;
        }
    }

    for (nfixed = 0; fixed[nfixed]; nfixed++) {
        /* void */
    }

    n = nfixed + (key->len ? 1 : 0);

    if (n > max) {
        return NGX_ERROR;
    }

    for (i = 0; i < n; i++) {

        if (i < nfixed) {
            lines[i] = ngx_http_llm_header_line(fixed[i], NULL, 0);

        } else {
            lines[i] = ngx_http_llm_header_line(auth, key->data, key->len);
        }

        if (lines[i] == NULL) {
            while (i--) {
                free(lines[i]);
            }

            return NGX_ERROR;
        }
    }

    return n;
}


void
ngx_http_llm_trim(ngx_str_t *s)
{
    while (s->len
           && (s->data[0] == ' ' || s->data[0] == '\t'
               || s->data[0] == CR || s->data[0] == LF))
    {
        s->data++;
        s->len--;
    }

    while (s->len
           && (s->data[s->len - 1] == ' ' || s->data[s->len - 1] == '\t'
               || s->data[s->len - 1] == CR || s->data[s->len - 1] == LF))
    {
        s->len--;
    }
}


/*
 * Replaces each maximal invalid subsequence with U+FFFD as the WHATWG
 * decoder does; the result passes jansson's check, which also rejects
 * overlong forms, surrogates and code points above U+10FFFF.
 */

static u_char *
ngx_http_llm_utf8_fix(u_char *p, size_t len, size_t *out)
{
    u_char  c, lo, hi, *buf, *d;
    size_t  i, k, n;

    /* an invalid byte grows to 3 */
    buf = malloc(len * 3 + 1);
    if (buf == NULL) {
        return NULL;
    }

    d = buf;
    i = 0;

    while (i < len) {
        c = p[i];

        if (c < 0x80) {
            *d++ = c;
            i++;
            continue;
        }

        /* continuation bytes and the range of the first one */

        lo = 0x80;
        hi = 0xbf;

        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;

        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;

            if (c == 0xe0) {
                lo = 0xa0;

            } else if (c == 0xed) {
                hi = 0x9f;
            }

        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;

            if (c == 0xf0) {
                lo = 0x90;

            } else if (c == 0xf4) {
                hi = 0x8f;
            }

        } else {
            n = 0;
        }

        for (k = 1; k <= n && i + k < len; k++) {

            if (p[i + k] < lo || p[i + k] > hi) {
                break;
            }

            lo = 0x80;
            hi = 0xbf;
        }

        if (n && k > n) {
            d = ngx_cpymem(d, p + i, k);

        } else {
            d = ngx_cpymem(d, "\xef\xbf\xbd", 3);
        }

        i += k;
    }

    *out = d - buf;

    return buf;
}


/* the message of the error shapes of OpenAI, its clones, and Anthropic */

static json_t *
ngx_http_llm_json_errmsg(json_t *root)
{
    json_t      *err, *msg[4];
    ngx_uint_t   i;

    err = json_object_get(root, "error");

    msg[0] = json_object_get(err, "message");
    msg[1] = err;
    msg[2] = json_object_get(root, "message");
    msg[3] = json_object_get(root, "detail");

    for (i = 0; i < 4; i++) {
        if (json_is_string(msg[i]) && json_string_length(msg[i]) > 0) {
            return msg[i];
        }
    }

    return NULL;
}


static char *
ngx_http_llm_header_line(const char *prefix, u_char *value, size_t len)
{
    char    *line;
    size_t   n;

    n = ngx_strlen(prefix);

    line = malloc(n + len + 1);
    if (line == NULL) {
        return NULL;
    }

    ngx_memcpy(line, prefix, n);

    if (len) {
        ngx_memcpy(line + n, value, len);
    }

    line[n + len] = '\0';

    return line;
}
