
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * The built-in "openai" format: OpenAI Chat Completions streaming chunks
 * ("chat.completion.chunk", a last chunk with finish_reason, the usage
 * chunk when the request asked for it, "data: [DONE]"), the
 * "chat.completion" object for blocking requests, and OpenAI's error
 * object, whatever provider produced the text.  Ids stay on every event,
 * so a resumed stream goes on where it stopped.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_format.h"


static ngx_uint_t ngx_http_llm_openai_event(ngx_http_llm_format_t *fmt,
    ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_render_t *w);
static ngx_int_t ngx_http_llm_openai_body(ngx_http_llm_format_t *fmt,
    ngx_http_llm_kind_e kind, ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_render_t *w);
static void ngx_http_llm_openai_head(ngx_http_llm_fmt_ctx_t *fc,
    ngx_http_llm_render_t *w, const char *object);
static void ngx_http_llm_openai_finish(ngx_http_llm_job_t *job,
    ngx_http_llm_render_t *w);
static void ngx_http_llm_openai_usage(ngx_http_llm_job_t *job,
    ngx_http_llm_render_t *w);
static void ngx_http_llm_openai_error(ngx_str_t *code, ngx_str_t *message,
    ngx_http_llm_render_t *w);


ngx_http_llm_format_t  ngx_http_llm_format_openai = {
    ngx_string("openai"),
    ngx_http_llm_openai_event,
    ngx_http_llm_openai_body,
    { NULL },
    0,
    0
};


static ngx_uint_t
ngx_http_llm_openai_event(ngx_http_llm_format_t *fmt,
    ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_render_t *w)
{
    ngx_str_t              code, message;
    ngx_http_llm_job_t    *job;
    ngx_http_llm_event_t  *ev, *end;

    job = fc->job;
    ev = &job->events[fc->first];
    end = &job->events[fc->last];

    /* Chat Completions chunks have no place for a pipeline's events */

    if (ngx_http_llm_event_payload(ev->type)) {
        return 1;
    }

    if (ev->type == NGX_HTTP_LLM_EV_ERROR) {
        code.data = job->outcome.code;
        code.len = job->outcome.code_len;
        message.data = job->outcome.message ? job->outcome.message
                                            : (u_char *) "";
        message.len = job->outcome.message_len;

        ngx_http_llm_render_id(w, job, fc->last + 1);
        ngx_http_llm_render_raw(w, "data: ", sizeof("data: ") - 1);
        ngx_http_llm_openai_error(&code, &message, w);
        ngx_http_llm_render_raw(w, "\n\n", 2);
        return 1;
    }

    if (ev->type == NGX_HTTP_LLM_EV_COMPLETE) {
        ngx_http_llm_render_raw(w, "data: ", sizeof("data: ") - 1);
        ngx_http_llm_openai_head(fc, w, "chat.completion.chunk");
        ngx_http_llm_render_raw(w, "[{\"index\":0,\"delta\":{},",
                                sizeof("[{\"index\":0,\"delta\":{},") - 1);
        ngx_http_llm_openai_finish(job, w);
        ngx_http_llm_render_raw(w, "}]}\n\n", sizeof("}]}\n\n") - 1);

        if (fc->include_usage) {
            ngx_http_llm_render_raw(w, "data: ", sizeof("data: ") - 1);
            ngx_http_llm_openai_head(fc, w, "chat.completion.chunk");
            ngx_http_llm_render_raw(w, "[],\"usage\":",
                                    sizeof("[],\"usage\":") - 1);
            ngx_http_llm_openai_usage(job, w);
            ngx_http_llm_render_raw(w, "}\n\n", sizeof("}\n\n") - 1);
        }

        ngx_http_llm_render_id(w, job, fc->last + 1);
        ngx_http_llm_render_raw(w, "data: [DONE]\n\n",
                                sizeof("data: [DONE]\n\n") - 1);
        return 1;
    }

    ngx_http_llm_render_id(w, job, fc->last + 1);
    ngx_http_llm_render_raw(w, "data: ", sizeof("data: ") - 1);
    ngx_http_llm_openai_head(fc, w, "chat.completion.chunk");

    if (ev->type == NGX_HTTP_LLM_EV_START) {
        ngx_http_llm_render_raw(w,
            "[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
            "\"finish_reason\":null}]}\n\n",
            sizeof("[{\"index\":0,\"delta\":{\"role\":\"assistant\","
                   "\"content\":\"\"},\"finish_reason\":null}]}\n\n") - 1);
        return 1;
    }

    ngx_http_llm_render_raw(w, "[{\"index\":0,\"delta\":{\"content\":",
                            sizeof("[{\"index\":0,\"delta\":{\"content\":")
                            - 1);
    ngx_http_llm_render_str(w, job->text + ev->off,
                            end->off + end->len - ev->off, 1);
    ngx_http_llm_render_raw(w, "},\"finish_reason\":null}]}\n\n",
                            sizeof("},\"finish_reason\":null}]}\n\n") - 1);

    return 1;
}


static ngx_int_t
ngx_http_llm_openai_body(ngx_http_llm_format_t *fmt, ngx_http_llm_kind_e kind,
    ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_render_t *w)
{
    ngx_str_t            code, message;
    ngx_http_llm_job_t  *job;

    job = fc->job;

    if (kind == NGX_HTTP_LLM_K_RESPONSE && job
        && job->state == NGX_HTTP_LLM_COMPLETED)
    {
        ngx_http_llm_openai_head(fc, w, "chat.completion");
        ngx_http_llm_render_raw(w,
            "[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":",
            sizeof("[{\"index\":0,\"message\":{\"role\":\"assistant\","
                   "\"content\":") - 1);
        ngx_http_llm_render_str(w, job->text, job->text_len, 1);
        ngx_http_llm_render_raw(w, "},", 2);
        ngx_http_llm_openai_finish(job, w);
        ngx_http_llm_render_raw(w, "}],\"usage\":",
                                sizeof("}],\"usage\":") - 1);
        ngx_http_llm_openai_usage(job, w);
        ngx_http_llm_render_raw(w, "}", 1);

        return NGX_OK;
    }

    if (job) {
        code.data = job->outcome.code;
        code.len = job->outcome.code_len;
        message.data = job->outcome.message ? job->outcome.message
                                            : (u_char *) "";
        message.len = job->outcome.message_len;

    } else {
        code = fc->code;
        message = fc->message;
    }

    ngx_http_llm_openai_error(&code, &message, w);

    return NGX_OK;
}


/* {"id":"chatcmpl-JOB","object":O,"created":N,"model":M,"choices": */

static void
ngx_http_llm_openai_head(ngx_http_llm_fmt_ctx_t *fc, ngx_http_llm_render_t *w,
    const char *object)
{
    u_char               num[NGX_INT64_LEN + 32];
    ngx_str_t            model;
    ngx_http_llm_job_t  *job;

    job = fc->job;

    ngx_http_llm_render_raw(w, "{\"id\":\"chatcmpl-",
                            sizeof("{\"id\":\"chatcmpl-") - 1);
    ngx_http_llm_render_raw(w, job->id, NGX_HTTP_LLM_JOB_ID_LEN);
    ngx_http_llm_render_raw(w, "\",\"object\":\"",
                            sizeof("\",\"object\":\"") - 1);
    ngx_http_llm_render_raw(w, object, ngx_strlen(object));
    ngx_http_llm_render_raw(w, num,
                            ngx_sprintf(num, "\",\"created\":%L,\"model\":",
                                        job->created / 1000)
                            - num);

    if (ngx_http_llm_format_model(fc, &model) != NGX_OK) {
        ngx_str_set(&model, "");
    }

    ngx_http_llm_render_str(w, model.data, model.len, 1);
    ngx_http_llm_render_raw(w, ",\"choices\":", sizeof(",\"choices\":") - 1);
}


/* OpenAI's names for why a generation stopped, whoever generated it */

static void
ngx_http_llm_openai_finish(ngx_http_llm_job_t *job, ngx_http_llm_render_t *w)
{
    ngx_http_llm_outcome_t  *oc;

    oc = &job->outcome;

    ngx_http_llm_render_raw(w, "\"finish_reason\":",
                            sizeof("\"finish_reason\":") - 1);

    if (oc->finish_len == 0
        || ngx_http_llm_str_is(oc->finish, oc->finish_len, "end_turn")
        || ngx_http_llm_str_is(oc->finish, oc->finish_len, "stop_sequence"))
    {
        ngx_http_llm_render_raw(w, "\"stop\"", sizeof("\"stop\"") - 1);

    } else if (ngx_http_llm_str_is(oc->finish, oc->finish_len, "max_tokens")) {
        ngx_http_llm_render_raw(w, "\"length\"", sizeof("\"length\"") - 1);

    } else {
        ngx_http_llm_render_str(w, oc->finish, oc->finish_len, 1);
    }
}


static void
ngx_http_llm_openai_usage(ngx_http_llm_job_t *job, ngx_http_llm_render_t *w)
{
    u_char   num[NGX_INT64_LEN * 3 + 80];
    int64_t  in, out;

    if (job->outcome.input_tokens < 0 && job->outcome.output_tokens < 0) {
        ngx_http_llm_render_raw(w, "null", 4);
        return;
    }

    in = job->outcome.input_tokens > 0 ? job->outcome.input_tokens : 0;
    out = job->outcome.output_tokens > 0 ? job->outcome.output_tokens : 0;

    ngx_http_llm_render_raw(w, num,
                            ngx_sprintf(num, "{\"prompt_tokens\":%L,"
                                        "\"completion_tokens\":%L,"
                                        "\"total_tokens\":%L}",
                                        in, out, in + out)
                            - num);
}


static void
ngx_http_llm_openai_error(ngx_str_t *code, ngx_str_t *message,
    ngx_http_llm_render_t *w)
{
    ngx_http_llm_render_raw(w, "{\"error\":{\"message\":",
                            sizeof("{\"error\":{\"message\":") - 1);
    ngx_http_llm_render_str(w, message->data, message->len, 1);
    ngx_http_llm_render_raw(w, ",\"type\":", sizeof(",\"type\":") - 1);
    ngx_http_llm_render_str(w, code->data, code->len, 1);
    ngx_http_llm_render_raw(w, ",\"code\":", sizeof(",\"code\":") - 1);
    ngx_http_llm_render_str(w, code->data, code->len, 1);
    ngx_http_llm_render_raw(w, "}}", 2);
}
