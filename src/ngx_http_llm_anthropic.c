
/*
 * Copyright (C) ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <jansson.h>
#include "ngx_http_llm_provider.h"


/* the API requires "max_tokens" */
#define NGX_HTTP_LLM_ANTHROPIC_MAX_TOKENS  4096


typedef struct {
    ngx_int_t   input;
    unsigned    stopped:1;
} ngx_http_llm_anthropic_state_t;


static char *ngx_http_llm_anthropic_body(ngx_http_llm_params_t *params,
    size_t *len);
static json_t *ngx_http_llm_anthropic_system(ngx_http_llm_params_t *params);
static ngx_int_t ngx_http_llm_anthropic_headers(ngx_http_llm_params_t *params,
    char **lines, ngx_uint_t max);
static ngx_int_t ngx_http_llm_anthropic_event(void *state, ngx_str_t *event,
    ngx_str_t *data, ngx_http_llm_sink_t *sink);
static void ngx_http_llm_anthropic_delta(ngx_http_llm_anthropic_state_t *st,
    json_t *root, ngx_http_llm_sink_t *sink);
static ngx_int_t ngx_http_llm_anthropic_eof(void *state);


const ngx_http_llm_provider_t  ngx_http_llm_anthropic = {
    "anthropic",
    ngx_http_llm_anthropic_body,
    ngx_http_llm_anthropic_headers,
    sizeof(ngx_http_llm_anthropic_state_t),
    ngx_http_llm_anthropic_event,
    ngx_http_llm_anthropic_eof,
    ngx_http_llm_status_error
};


static char *
ngx_http_llm_anthropic_body(ngx_http_llm_params_t *params, size_t *len)
{
    json_t      *root, *messages, *system;
    ngx_uint_t   max;

    max = params->max_tokens ? params->max_tokens
                             : NGX_HTTP_LLM_ANTHROPIC_MAX_TOKENS;

    root = json_object();
    messages = json_array();
    system = ngx_http_llm_anthropic_system(params);

    if (system == NULL
        || json_object_set_new(root, "model",
                               ngx_http_llm_json_str(&params->model))
           != 0
        || json_object_set_new(root, "max_tokens", json_integer(max)) != 0
        || (json_string_length(system)
            && json_object_set(root, "system", system) != 0)
        || json_object_set(root, "messages", messages) != 0
        || ngx_http_llm_json_conversation(messages, params, 0) != NGX_OK
        || json_object_set_new(root, "stream", json_true()) != 0
        || (params->temperature
            && json_object_set(root, "temperature", params->temperature)
               != 0))
    {
        json_decref(system);
        json_decref(messages);
        json_decref(root);
        return NULL;
    }

    json_decref(system);
    json_decref(messages);

    return ngx_http_llm_json_dump(root, len);
}


/*
 * Anthropic takes the system prompt apart from the messages: the
 * location's, then the text of a client's system and developer messages,
 * then, for a JSON answer, the request for one (it has no JSON mode).
 */

static json_t *
ngx_http_llm_anthropic_system(ngx_http_llm_params_t *params)
{
    char        *p;
    size_t       i, n, len;
    json_t      *m, *content, *s;
    const char  *role;

    len = params->system.len;

    if (params->json) {
        len += sizeof(NGX_HTTP_LLM_JSON_ONLY) + 1;
    }

    json_array_foreach(params->messages, i, m) {
        role = json_string_value(json_object_get(m, "role"));
        content = json_object_get(m, "content");

        if (role && json_is_string(content)
            && (ngx_strcmp(role, "system") == 0
                || ngx_strcmp(role, "developer") == 0))
        {
            len += json_string_length(content) + 2;
        }
    }

    if (len == params->system.len) {
        return ngx_http_llm_json_str(&params->system);
    }

    p = malloc(len);
    if (p == NULL) {
        return NULL;
    }

    n = params->system.len;

    if (n) {
        ngx_memcpy(p, params->system.data, n);
    }

    json_array_foreach(params->messages, i, m) {
        role = json_string_value(json_object_get(m, "role"));
        content = json_object_get(m, "content");

        if (role && json_is_string(content)
            && (ngx_strcmp(role, "system") == 0
                || ngx_strcmp(role, "developer") == 0))
        {
            if (n) {
                p[n++] = '\n';
                p[n++] = '\n';
            }

            n = ngx_cpymem(p + n, json_string_value(content),
                           json_string_length(content))
                - (u_char *) p;
        }
    }

    if (params->json) {
        if (n) {
            p[n++] = '\n';
            p[n++] = '\n';
        }

        n = ngx_cpymem(p + n, NGX_HTTP_LLM_JSON_ONLY,
                       sizeof(NGX_HTTP_LLM_JSON_ONLY) - 1)
            - (u_char *) p;
    }

    s = json_stringn(p, n);

    free(p);

    return s;
}


static ngx_int_t
ngx_http_llm_anthropic_headers(ngx_http_llm_params_t *params, char **lines,
    ngx_uint_t max)
{
    static const char  *fixed[] = {
        "Content-Type: application/json",
        "Accept: text/event-stream",
        "anthropic-version: 2023-06-01",
        NULL
    };

    return ngx_http_llm_header_lines(lines, max, fixed, "x-api-key: ",
                                     &params->api_key);
}


static ngx_int_t
ngx_http_llm_anthropic_event(void *state, ngx_str_t *event, ngx_str_t *data,
    ngx_http_llm_sink_t *sink)
{
    ngx_http_llm_anthropic_state_t  *st = state;

    u_char     *type;
    size_t      len;
    json_t     *root, *delta, *v;
    ngx_int_t   rc;

    root = ngx_http_llm_json_parse(data, sink);
    if (root == NULL) {
        return NGX_ERROR;
    }

    /* some proxies drop "event:" lines; "type" in the data repeats it */

    if (event->len) {
        type = event->data;
        len = event->len;

    } else {
        v = json_object_get(root, "type");
        type = (u_char *) json_string_value(v);
        len = json_string_length(v);
    }

    rc = NGX_OK;

    if (ngx_http_llm_str_is(type, len, "content_block_delta")) {

        /* not tool input ("input_json_delta") nor "thinking_delta" */

        delta = json_object_get(root, "delta");
        v = json_object_get(delta, "type");

        if (json_is_string(v)
            && ngx_strcmp(json_string_value(v), "text_delta") == 0)
        {
            v = json_object_get(delta, "text");

            if (json_is_string(v) && json_string_length(v) > 0) {
                sink->text(sink->data, (u_char *) json_string_value(v),
                           json_string_length(v));
            }
        }

    } else if (ngx_http_llm_str_is(type, len, "message_start")) {

        v = json_object_get(json_object_get(json_object_get(root, "message"),
                                            "usage"),
                            "input_tokens");

        if (json_is_integer(v)) {
            st->input = (ngx_int_t) json_integer_value(v);
        }

    } else if (ngx_http_llm_str_is(type, len, "message_delta")) {
        ngx_http_llm_anthropic_delta(st, root, sink);

    } else if (ngx_http_llm_str_is(type, len, "message_stop")) {
        rc = NGX_DONE;

    } else if (ngx_http_llm_str_is(type, len, "error")) {
        rc = ngx_http_llm_json_fail(root, sink);
    }

    /* "ping", "content_block_start/stop" and future events are ignored */

    json_decref(root);

    return rc;
}


static void
ngx_http_llm_anthropic_delta(ngx_http_llm_anthropic_state_t *st, json_t *root,
    ngx_http_llm_sink_t *sink)
{
    json_t  *v, *usage;

    v = json_object_get(json_object_get(root, "delta"), "stop_reason");

    if (json_is_string(v) && json_string_length(v) > 0) {
        st->stopped = 1;
        sink->finish(sink->data, (u_char *) json_string_value(v),
                     json_string_length(v));
    }

    usage = json_object_get(root, "usage");

    /* newer API versions repeat the input count here */

    v = json_object_get(usage, "input_tokens");

    if (json_is_integer(v)) {
        st->input = (ngx_int_t) json_integer_value(v);
    }

    v = json_object_get(usage, "output_tokens");

    if (json_is_integer(v)) {
        sink->usage(sink->data, st->input, (ngx_int_t) json_integer_value(v));
    }
}


static ngx_int_t
ngx_http_llm_anthropic_eof(void *state)
{
    ngx_http_llm_anthropic_state_t  *st = state;

    /* a stop reason means only "message_stop" is missing */
    return st->stopped ? NGX_OK : NGX_ERROR;
}
