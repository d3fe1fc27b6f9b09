
/*
 * Copyright (C) ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <jansson.h>
#include "ngx_http_llm_provider.h"


typedef struct {
    unsigned    finished:1;
} ngx_http_llm_openai_state_t;


static char *ngx_http_llm_openai_body(ngx_http_llm_params_t *params,
    size_t *len);
static ngx_int_t ngx_http_llm_openai_headers(ngx_http_llm_params_t *params,
    char **lines, ngx_uint_t max);
static ngx_int_t ngx_http_llm_openai_event(void *state, ngx_str_t *event,
    ngx_str_t *data, ngx_http_llm_sink_t *sink);
static ngx_int_t ngx_http_llm_openai_eof(void *state);


const ngx_http_llm_provider_t  ngx_http_llm_openai = {
    "openai",
    ngx_http_llm_openai_body,
    ngx_http_llm_openai_headers,
    sizeof(ngx_http_llm_openai_state_t),
    ngx_http_llm_openai_event,
    ngx_http_llm_openai_eof,
    ngx_http_llm_status_error
};


static char *
ngx_http_llm_openai_body(ngx_http_llm_params_t *params, size_t *len)
{
    json_t  *root, *messages;

    /*
     * "include_usage" asks for the token counts, sent in a last chunk with
     * empty "choices"
     */

    root = json_object();
    messages = json_array();

    if (json_object_set_new(root, "model",
                            ngx_http_llm_json_str(&params->model))
           != 0
        || json_object_set(root, "messages", messages) != 0
        || (params->system.len
            && json_array_append_new(messages,
                   ngx_http_llm_json_msg("system", &params->system))
               != 0)
        || ngx_http_llm_json_conversation(messages, params, 1) != NGX_OK
        || json_object_set_new(root, "stream", json_true()) != 0
        || json_object_set_new(root, "stream_options",
                               json_pack("{s:b}", "include_usage", 1))
           != 0
        || (params->temperature
            && json_object_set(root, "temperature", params->temperature)
               != 0)
        || (params->json
            && json_object_set_new(root, "response_format",
                                   json_pack("{s:s}", "type", "json_object"))
               != 0)
        || (params->max_tokens
            && json_object_set_new(root, "max_tokens",
                                   json_integer(params->max_tokens))
               != 0))
    {
        json_decref(messages);
        json_decref(root);
        return NULL;
    }

    json_decref(messages);

    return ngx_http_llm_json_dump(root, len);
}


static ngx_int_t
ngx_http_llm_openai_headers(ngx_http_llm_params_t *params, char **lines,
    ngx_uint_t max)
{
    static const char  *fixed[] = {
        "Content-Type: application/json",
        "Accept: text/event-stream",
        NULL
    };

    return ngx_http_llm_header_lines(lines, max, fixed,
                                     "Authorization: Bearer ",
                                     &params->api_key);
}


static ngx_int_t
ngx_http_llm_openai_event(void *state, ngx_str_t *event, ngx_str_t *data,
    ngx_http_llm_sink_t *sink)
{
    ngx_http_llm_openai_state_t  *st = state;

    json_t     *root, *err, *choice, *v, *usage, *in, *out;
    ngx_int_t   rc;
    ngx_str_t   s;

    s = *data;
    ngx_http_llm_trim(&s);

    if (ngx_http_llm_str_is(s.data, s.len, "[DONE]")) {
        return NGX_DONE;
    }

    root = ngx_http_llm_json_parse(data, sink);
    if (root == NULL) {
        return NGX_ERROR;
    }

    /*
     * {"error": ...} from OpenAI and most clones, an "error" event carrying
     * the error object, or vLLM's {"object": "error", "message": ...}
     */

    err = json_object_get(root, "error");
    v = json_object_get(root, "object");

    if (ngx_http_llm_str_is(event->data, event->len, "error")
        || (err != NULL && !json_is_null(err))
        || (json_is_string(v)
            && ngx_strcmp(json_string_value(v), "error") == 0))
    {
        rc = ngx_http_llm_json_fail(root, sink);
        json_decref(root);
        return rc;
    }

    choice = json_array_get(json_object_get(root, "choices"), 0);

    /* null, role-only and tool call deltas have no text */

    v = json_object_get(json_object_get(choice, "delta"), "content");

    if (!json_is_string(v)) {
        /* the legacy completions endpoint */
        v = json_object_get(choice, "text");
    }

    if (json_is_string(v) && json_string_length(v) > 0) {
        sink->text(sink->data, (u_char *) json_string_value(v),
                   json_string_length(v));
    }

    v = json_object_get(choice, "finish_reason");

    if (json_is_string(v) && json_string_length(v) > 0) {
        st->finished = 1;
        sink->finish(sink->data, (u_char *) json_string_value(v),
                     json_string_length(v));
    }

    usage = json_object_get(root, "usage");
    in = json_object_get(usage, "prompt_tokens");
    out = json_object_get(usage, "completion_tokens");

    if (json_is_integer(in) && json_is_integer(out)) {
        sink->usage(sink->data, (ngx_int_t) json_integer_value(in),
                    (ngx_int_t) json_integer_value(out));
    }

    json_decref(root);

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_openai_eof(void *state)
{
    ngx_http_llm_openai_state_t  *st = state;

    /* some servers close after the finish chunk without "[DONE]" */
    return st->finished ? NGX_OK : NGX_ERROR;
}
