
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * One upstream transfer: its libcurl handle, the upstream stream parsed as
 * it arrives (on the engine thread), its outcome, and the hand-off of what
 * it made to the event loop through the worker's channel.  A transfer is
 * heap memory shared by the loop and the engine, freed by whichever lets
 * go of it last.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_engine.h"


static size_t ngx_http_llm_xfer_write(char *ptr, size_t size, size_t n,
    void *data);
static ngx_int_t ngx_http_llm_xfer_typed(ngx_http_llm_xfer_t *x);
static ngx_int_t ngx_http_llm_xfer_event(void *ctx, ngx_str_t *event,
    ngx_str_t *data);
static void ngx_http_llm_sink_text(void *data, u_char *p, size_t len);
static void ngx_http_llm_sink_finish(void *data, u_char *reason,
    size_t len);
static void ngx_http_llm_sink_usage(void *data, ngx_int_t input,
    ngx_int_t output);
static void ngx_http_llm_sink_fail(void *data, const char *code,
    u_char *msg, size_t len);
static u_char *ngx_http_llm_redact(ngx_http_llm_xfer_t *x, u_char *msg,
    size_t len, size_t *out);
static size_t ngx_http_llm_redact_at(ngx_http_llm_xfer_t *x, u_char *first,
    u_char *p, u_char *last, u_char **d);
static size_t ngx_http_llm_token_len(u_char *p, u_char *last);
static void ngx_http_llm_xfer_push(ngx_http_llm_xfer_t *x);
static void ngx_http_llm_xfer_drain(ngx_http_llm_chan_item_t *item);


/* event loop: a transfer, referenced by its caller and by the engine */

ngx_http_llm_xfer_t *
ngx_http_llm_xfer_create(ngx_http_llm_engine_t *e, ngx_http_llm_spec_t *spec,
    ngx_http_llm_output_pt handler, void *data, ngx_log_t *log)
{
    ngx_http_llm_xfer_t  *x;

    x = ngx_calloc(sizeof(ngx_http_llm_xfer_t), log);
    if (x == NULL) {
        return NULL;
    }

    x->pstate = ngx_calloc(spec->provider->state_size, log);
    if (x->pstate == NULL) {
        ngx_free(x);
        return NULL;
    }

    x->spec = *spec;
    x->engine = e;
    x->handler = handler;
    x->data = data;
    x->refs = 2;
    x->item.handler = ngx_http_llm_xfer_drain;
    x->out.outcome.input_tokens = -1;
    x->out.outcome.output_tokens = -1;

    return x;
}


/*
 * The upstream request of a spec: the URL, the provider's body and
 * headers, all malloc()ed (freed by ngx_http_llm_spec_free()).  Fails
 * with NGX_DECLINED for a URL that is not http:// or https://, NGX_ABORT
 * for a key that cannot be a header, NGX_ERROR otherwise; "err" says why
 * without the URL or the key, which may be secrets.
 */

ngx_int_t
ngx_http_llm_spec_make(ngx_http_llm_spec_t *spec, ngx_str_t *url,
    ngx_http_llm_params_t *params, ngx_str_t *err)
{
    ngx_int_t  n;

    if (url->len < 8
        || (ngx_strncasecmp(url->data, (u_char *) "http://", 7) != 0
            && ngx_strncasecmp(url->data, (u_char *) "https://", 8) != 0)
        || ngx_strlchr(url->data, url->data + url->len, '\0')
        || ngx_strlchr(url->data, url->data + url->len, ' '))
    {
        ngx_str_set(err, "invalid upstream URL");
        return NGX_DECLINED;
    }

    spec->url = malloc(url->len + 1);
    if (spec->url == NULL) {
        ngx_str_set(err, "out of memory");
        return NGX_ERROR;
    }

    ngx_cpystrn((u_char *) spec->url, url->data, url->len + 1);

    spec->body = spec->provider->body(params, &spec->body_len);
    if (spec->body == NULL) {
        ngx_str_set(err, "cannot build the upstream request");
        return NGX_ERROR;
    }

    n = spec->provider->headers(params, spec->headers,
                                sizeof(spec->headers) / sizeof(char *));
    if (n == NGX_ERROR) {
        ngx_str_set(err, "invalid API key configuration");
        return NGX_ABORT;
    }

    spec->nheaders = n;
    spec->model = ngx_http_llm_metrics_model(&params->model);

    return NGX_OK;
}


void
ngx_http_llm_spec_free(ngx_http_llm_spec_t *spec)
{
    ngx_uint_t  i;

    free(spec->url);
    free(spec->body);

    for (i = 0; i < spec->nheaders; i++) {
        free(spec->headers[i]);
    }

    spec->url = NULL;
    spec->body = NULL;
    spec->nheaders = 0;
}


/* engine thread: the transfer starts on the engine's multi handle */

void
ngx_http_llm_xfer_start(ngx_http_llm_engine_t *e, ngx_http_llm_xfer_t *x)
{
    CURL                 *easy;
    ngx_uint_t            i;
    struct curl_slist    *h;
    ngx_http_llm_spec_t  *s;

    s = &x->spec;

    x->sink.text = ngx_http_llm_sink_text;
    x->sink.finish = ngx_http_llm_sink_finish;
    x->sink.usage = ngx_http_llm_sink_usage;
    x->sink.fail = ngx_http_llm_sink_fail;
    x->sink.data = x;

    x->started = ngx_http_llm_engine_now();
    x->last_read = x->started;
    ngx_queue_insert_tail(&e->active, &x->active);

    easy = curl_easy_init();
    if (easy == NULL) {
        goto failed;
    }

    x->easy = easy;

    /* "Expect: 100-continue" would only cost a round trip here */
    h = curl_slist_append(NULL, "Expect:");

    for (i = 0; h && i < s->nheaders; i++) {
        x->headers = h;
        h = curl_slist_append(h, s->headers[i]);
    }

    if (h == NULL) {
        goto failed;
    }

    x->headers = h;

    curl_easy_setopt(easy, CURLOPT_PRIVATE, x);
    curl_easy_setopt(easy, CURLOPT_URL, s->url);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, x->headers);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, s->body);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
                     (curl_off_t) s->body_len);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, ngx_http_llm_xfer_write);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(easy, CURLOPT_USERAGENT, "ngx_http_llm_module");
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, s->ssl_verify ? 1L : 0L);
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, s->ssl_verify ? 2L : 0L);

    /* small receive buffers: a stream carries a few bytes at a time */
    curl_easy_setopt(easy, CURLOPT_BUFFERSIZE, 1024L);

    /*
     * Over HTTP/2 libcurl sends the body through an upload buffer that
     * each transfer keeps to its end: 64 KB by default, 16 KB at least;
     * a prompt rarely needs more, and a larger one is sent in parts.
     */
    curl_easy_setopt(easy, CURLOPT_UPLOAD_BUFFERSIZE, 16384L);

    /*
     * A burst of streams to an HTTPS upstream waits for the connection
     * being set up to say (by ALPN) whether it multiplexes, rather than
     * opening a TLS connection each: with HTTP/2 they share it, up to its
     * concurrent streams.  HTTP/2 only comes by ALPN, so a plain http://
     * upstream would only wait for its first response's headers.
     */
    if (ngx_strncasecmp((u_char *) s->url, (u_char *) "https://", 8) == 0) {
        curl_easy_setopt(easy, CURLOPT_PIPEWAIT, 1L);
    }

    if (s->connect_timeout) {
        curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS,
                         (long) s->connect_timeout);
    }

    if (curl_multi_add_handle(e->multi, easy) != CURLM_OK) {
        goto failed;
    }

    x->in_multi = 1;

    return;

failed:

    ngx_http_llm_sink_fail_str(x, NGX_HTTP_LLM_E_INTERNAL,
                               "cannot start the upstream transfer");
    ngx_http_llm_xfer_finish(x, CURLE_OK);
}


/* engine thread: libcurl's write callback */

static size_t
ngx_http_llm_xfer_write(char *ptr, size_t size, size_t n, void *data)
{
    ngx_http_llm_xfer_t *x = data;

    size_t     len, room;
    ngx_int_t  rc;

    len = size * n;
    x->last_read = ngx_http_llm_engine_now();

    if (x->failed || x->ended) {
        return 0;
    }

    if (x->status == 0) {
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->status);
    }

    if (x->status < 200 || x->status > 299) {

        /* keep the start of an error body for its message */

        if (x->errbody == NULL) {
            x->errbody = malloc(NGX_HTTP_LLM_ERRBODY_MAX);
            if (x->errbody == NULL) {
                return 0;
            }
        }

        room = NGX_HTTP_LLM_ERRBODY_MAX - x->errlen;
        room = ngx_min(room, len);
        ngx_memcpy(x->errbody + x->errlen, ptr, room);
        x->errlen += room;

        return len;
    }

    if (!x->typed && ngx_http_llm_xfer_typed(x) != NGX_OK) {
        ngx_http_llm_sink_fail_str(x, NGX_HTTP_LLM_E_INVALID,
                                   "the upstream answered a page or a "
                                   "document, not a stream");
        return 0;
    }

    rc = ngx_http_llm_usse_feed(&x->parser, (u_char *) ptr, len,
                                ngx_http_llm_xfer_event, x);

    if (rc == NGX_DONE) {
        /*
         * The end marker: the generation is complete, and libcurl reads
         * what is left of the response (its last chunk) so that the
         * connection goes back to the cache; stopping here would close
         * it, a handshake per generation with HTTP/1.1.  More data ends
         * the transfer (above), and so does the scan when the response
         * does not end soon.
         */
        x->ended = 1;
        return len;
    }

    if (rc == NGX_ERROR) {
        if (!x->failed) {
            ngx_http_llm_sink_fail_str(x, NGX_HTTP_LLM_E_INVALID,
                                       "upstream line too long or "
                                       "out of memory");
        }
        return 0;
    }

    return len;
}


/*
 * A 2xx answer that is an HTML page (a login portal, a proxy's error) or a
 * JSON document (a server that does not stream) is not parsed for "data:"
 * lines.  Other types are read as a stream: servers that stream without
 * saying text/event-stream exist.
 */

static ngx_int_t
ngx_http_llm_xfer_typed(ngx_http_llm_xfer_t *x)
{
    char        *type;
    size_t       len;
    ngx_uint_t   i;

    static const char  *refused[] = { "text/html", "application/json" };

    x->typed = 1;

    if (curl_easy_getinfo(x->easy, CURLINFO_CONTENT_TYPE, &type) != CURLE_OK
        || type == NULL)
    {
        return NGX_OK;
    }

    for (i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        len = ngx_strlen(refused[i]);

        if (ngx_strncasecmp((u_char *) type, (u_char *) refused[i], len) == 0
            && (type[len] == '\0' || type[len] == ';' || type[len] == ' '
                || type[len] == '\t'))
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_xfer_event(void *ctx, ngx_str_t *event, ngx_str_t *data)
{
    ngx_http_llm_xfer_t *x = ctx;

    return x->spec.provider->event(x->pstate, event, data, &x->sink);
}


/*
 * Engine thread (or the loop when the engine could not start): the
 * transfer is over; settle its outcome, hand it to the loop and let go.
 */

void
ngx_http_llm_xfer_finish(ngx_http_llm_xfer_t *x, CURLcode rc)
{
    const char              *msg;
    ngx_http_llm_channel_t  *ch;

    ch = &ngx_http_llm_channel;

    if (x->failed || x->ended) {
        /* settled already */

    } else if (x->status != 0 && (x->status < 200 || x->status > 299)) {
        x->spec.provider->error(x->status, x->errbody, x->errlen, &x->sink);

    } else if (rc == CURLE_OK) {
        if (x->spec.provider->eof(x->pstate) != NGX_OK) {
            ngx_http_llm_sink_fail_str(x, NGX_HTTP_LLM_E_TRUNCATED,
                                       "the upstream closed the stream "
                                       "before its end");
        }

    } else if (rc == CURLE_OPERATION_TIMEDOUT) {
        /* only the connect timeout is left to libcurl */
        ngx_http_llm_sink_fail_str(x, NGX_HTTP_LLM_E_CONNECT_TMO,
                                   "cannot connect to the upstream in "
                                   "time (llm_connect_timeout)");

    } else if (x->status == 0) {
        msg = x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc);
        ngx_http_llm_sink_fail_str(x, NGX_HTTP_LLM_E_CONNECT, msg);

    } else {
        ngx_http_llm_sink_fail_str(x, NGX_HTTP_LLM_E_TRUNCATED,
                                   "the upstream connection broke "
                                   "before the stream's end");
    }

    if (x->easy) {
        if (x->in_multi) {
            curl_multi_remove_handle(x->engine->multi, x->easy);
        }

        curl_easy_cleanup(x->easy);
        x->easy = NULL;
        x->in_multi = 0;
    }

    curl_slist_free_all(x->headers);
    x->headers = NULL;

    if (x->active.next) {
        ngx_queue_remove(&x->active);
        x->active.next = NULL;
    }

    ngx_http_llm_usse_free(&x->parser);
    free(x->errbody);
    x->errbody = NULL;

    (void) ngx_thread_mutex_lock(&ch->mutex, ch->log);
    x->out.done = 1;
    x->out.status = x->status;
    (void) ngx_thread_mutex_unlock(&ch->mutex, ch->log);

    ngx_http_llm_xfer_push(x);
    ngx_http_llm_xfer_release(x);
}


void
ngx_http_llm_xfer_release(ngx_http_llm_xfer_t *x)
{
    ngx_uint_t               refs;
    ngx_http_llm_channel_t  *ch;

    ch = &ngx_http_llm_channel;

    (void) ngx_thread_mutex_lock(&ch->mutex, ch->log);

    refs = --x->refs;

    if (refs == 0) {
        ngx_queue_remove(&x->link);
    }

    (void) ngx_thread_mutex_unlock(&ch->mutex, ch->log);

    if (refs == 0) {
        ngx_http_llm_xfer_free(x);
    }
}


void
ngx_http_llm_xfer_free(ngx_http_llm_xfer_t *x)
{
    ngx_http_llm_spec_free(&x->spec);
    free(x->out.text);
    free(x->out.outcome.message);
    ngx_free(x->pstate);
    ngx_free(x);
}


/* engine thread: the provider's output */

static void
ngx_http_llm_sink_text(void *data, u_char *p, size_t len)
{
    ngx_http_llm_xfer_t *x = data;

    size_t                   cap;
    u_char                  *t;
    ngx_http_llm_output_t   *o;
    ngx_http_llm_channel_t  *ch;

    if (len == 0 || x->failed) {
        return;
    }

    /*
     * Past llm_max_text the transfer ends (the write callback stops it)
     * and the job fails with what it has: it neither grows here while the
     * loop is slow to drain, nor in the job.
     */

    if (len > x->spec.max_text - x->text_total) {
        ngx_http_llm_sink_fail_str(x, NGX_HTTP_LLM_E_TEXT_LIMIT,
                                   "the generation exceeded llm_max_text");
        return;
    }

    x->text_total += len;

    ch = &ngx_http_llm_channel;
    o = &x->out;
    x->got_text = 1;

    (void) ngx_thread_mutex_lock(&ch->mutex, ch->log);

    if (o->text_len + len > o->text_cap) {
        cap = ngx_max(o->text_cap * 2, o->text_len + len);
        cap = ngx_max(cap, 256);

        t = realloc(o->text, cap);
        if (t == NULL) {
            (void) ngx_thread_mutex_unlock(&ch->mutex, ch->log);
            ngx_http_llm_sink_fail_str(x, NGX_HTTP_LLM_E_INTERNAL,
                                       "out of memory");
            return;
        }

        o->text = t;
        o->text_cap = cap;
    }

    ngx_memcpy(o->text + o->text_len, p, len);
    o->text_len += len;

    (void) ngx_thread_mutex_unlock(&ch->mutex, ch->log);

    ngx_http_llm_xfer_push(x);
}


static void
ngx_http_llm_sink_finish(void *data, u_char *reason, size_t len)
{
    ngx_http_llm_xfer_t *x = data;

    ngx_http_llm_channel_t  *ch;

    ch = &ngx_http_llm_channel;

    /* cut on a character: the reason goes into JSON as it is */

    if (len > sizeof(x->out.outcome.finish)) {
        len = sizeof(x->out.outcome.finish);

        while (len && (reason[len] & 0xc0) == 0x80) {
            len--;
        }
    }

    (void) ngx_thread_mutex_lock(&ch->mutex, ch->log);
    ngx_memcpy(x->out.outcome.finish, reason, len);
    x->out.outcome.finish_len = len;
    (void) ngx_thread_mutex_unlock(&ch->mutex, ch->log);
}


static void
ngx_http_llm_sink_usage(void *data, ngx_int_t input, ngx_int_t output)
{
    ngx_http_llm_xfer_t *x = data;

    ngx_http_llm_channel_t  *ch;

    ch = &ngx_http_llm_channel;

    (void) ngx_thread_mutex_lock(&ch->mutex, ch->log);

    /* a count beyond belief is no count: their sum must not overflow */

    if (input >= 0 && input <= NGX_HTTP_LLM_TOKENS_MAX) {
        x->out.outcome.input_tokens = input;
    }

    if (output >= 0 && output <= NGX_HTTP_LLM_TOKENS_MAX) {
        x->out.outcome.output_tokens = output;
    }

    (void) ngx_thread_mutex_unlock(&ch->mutex, ch->log);
}


static void
ngx_http_llm_sink_fail(void *data, const char *code, u_char *msg,
    size_t len)
{
    ngx_http_llm_xfer_t *x = data;

    u_char                  *m;
    size_t                   n;
    ngx_http_llm_channel_t  *ch;

    if (x->failed) {
        return;
    }

    ch = &ngx_http_llm_channel;
    x->failed = 1;

    /* the message goes to the client, the store and the error log */
    m = ngx_http_llm_redact(x, msg, len, &len);

    (void) ngx_thread_mutex_lock(&ch->mutex, ch->log);
    x->out.failed = 1;

    /* the output is zeroed: the code stays NUL-terminated */
    n = ngx_min(ngx_strlen(code), sizeof(x->out.outcome.code) - 1);
    ngx_memcpy(x->out.outcome.code, code, n);
    x->out.outcome.code_len = n;
    x->out.outcome.message = m;
    x->out.outcome.message_len = m ? len : 0;
    (void) ngx_thread_mutex_unlock(&ch->mutex, ch->log);
}


/*
 * Upstream error bodies may echo what was sent: a 401 that quotes the
 * Authorization header would put the API key in the error event, the job,
 * the store and the error log.  The configured key, bearer tokens,
 * "sk-..." keys and the values of "api-key" or "api_key" fields become
 * "[redacted]".  Returns malloc()ed memory, or NULL.
 */

static u_char *
ngx_http_llm_redact(ngx_http_llm_xfer_t *x, u_char *msg, size_t len,
    size_t *out)
{
    u_char  *buf, *d, *p, *last;
    size_t   n;

    /* "[redacted]" replaces at least one byte */
    buf = malloc(len * (sizeof("[redacted]") - 1) + 1);
    if (buf == NULL) {
        *out = 0;
        return NULL;
    }

    d = buf;
    p = msg;
    last = msg + len;

    while (p < last) {
        n = ngx_http_llm_redact_at(x, msg, p, last, &d);

        if (n) {
            p += n;
            continue;
        }

        *d++ = *p++;
    }

    *out = d - buf;

    return buf;
}


/* what to redact at p: its length (written to *d), or 0 */

static size_t
ngx_http_llm_redact_at(ngx_http_llm_xfer_t *x, u_char *first, u_char *p,
    u_char *last, u_char **d)
{
    char        *h;
    size_t       n, k, name;
    ngx_uint_t   i;

    static const char *auth[] = { "Authorization: Bearer ", "x-api-key: " };

    /* the configured key, as the provider put it in its header line */

    for (i = 0; i < x->spec.nheaders; i++) {
        h = x->spec.headers[i];

        for (k = 0; k < 2; k++) {
            n = ngx_strlen(auth[k]);

            if (ngx_strncasecmp((u_char *) h, (u_char *) auth[k], n) != 0) {
                continue;
            }

            h += n;
            n = ngx_strlen(h);

            if (n && (size_t) (last - p) >= n && ngx_memcmp(p, h, n) == 0) {
                *d = ngx_cpymem(*d, "[redacted]", sizeof("[redacted]") - 1);
                return n;
            }

            break;
        }
    }

    /* "Bearer TOKEN", "api-key: TOKEN", "api_key=\"TOKEN\"" */

    name = 0;

    if (last - p > 7 && ngx_strncasecmp(p, (u_char *) "bearer ", 7) == 0) {
        name = 7;

    } else if (last - p > 7
               && (ngx_strncasecmp(p, (u_char *) "api-key", 7) == 0
                   || ngx_strncasecmp(p, (u_char *) "api_key", 7) == 0))
    {
        name = 7;

        while (p + name < last && name < 12
               && (p[name] == ' ' || p[name] == '"' || p[name] == '\\'
                   || p[name] == '\'' || p[name] == ':' || p[name] == '='))
        {
            name++;
        }
    }

    if (name) {
        n = ngx_http_llm_token_len(p + name, last);

        if (n == 0) {
            return 0;
        }

        *d = ngx_cpymem(*d, p, name);
        *d = ngx_cpymem(*d, "[redacted]", sizeof("[redacted]") - 1);

        return name + n;
    }

    /* "sk-" and at least 8 more: OpenAI's and Anthropic's key shapes */

    if (last - p > 3 && ngx_strncmp(p, "sk-", 3) == 0
        && (p == first || ngx_http_llm_token_len(p - 1, p) == 0))
    {
        n = ngx_http_llm_token_len(p + 3, last);

        if (n >= 8) {
            *d = ngx_cpymem(*d, "[redacted]", sizeof("[redacted]") - 1);
            return 3 + n;
        }
    }

    return 0;
}


static size_t
ngx_http_llm_token_len(u_char *p, u_char *last)
{
    u_char  *s, c;

    for (s = p; s < last; s++) {
        c = *s;

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9')
              || c == '-' || c == '_' || c == '.' || c == '~' || c == '+'
              || c == '/' || c == '='))
        {
            break;
        }
    }

    return s - p;
}


void
ngx_http_llm_sink_fail_str(ngx_http_llm_xfer_t *x, const char *code,
    const char *msg)
{
    ngx_http_llm_sink_fail(x, code, (u_char *) msg, ngx_strlen(msg));
}


/*
 * Any thread: queue the transfer's output for the event loop.  The loop
 * only runs it while the engine does not run (engine_abort_all()).
 */

static void
ngx_http_llm_xfer_push(ngx_http_llm_xfer_t *x)
{
    ngx_uint_t               wake;
    ngx_http_llm_channel_t  *ch;

    ch = &ngx_http_llm_channel;
    wake = 0;

    /* the queued item holds a reference until it is drained */

    (void) ngx_thread_mutex_lock(&ch->mutex, ch->log);

    if (!x->item.queued && !x->cancel) {
        x->refs++;
        wake = ngx_http_llm_channel_queue(&x->item);
    }

    (void) ngx_thread_mutex_unlock(&ch->mutex, ch->log);

    /*
     * In a run the engine wakes the loop once for the output of a pass
     * over the ready sockets: a wake costs two context switches and four
     * system calls, as much as relaying a token.
     */

    if (x->engine->batch) {
        ngx_http_llm_engine_defer(x->engine, wake);
        return;
    }

    if (wake) {
        ngx_http_llm_channel_wake();
    }
}


/* event loop: hand what the transfer made to its caller */

static void
ngx_http_llm_xfer_drain(ngx_http_llm_chan_item_t *item)
{
    u_char                   copy[NGX_HTTP_LLM_DRAIN_COPY];
    ngx_http_llm_xfer_t     *x;
    ngx_http_llm_output_t    out;
    ngx_http_llm_output_pt   handler;
    ngx_http_llm_channel_t  *ch;

    ch = &ngx_http_llm_channel;
    x = (ngx_http_llm_xfer_t *) ((u_char *) item
                                 - offsetof(ngx_http_llm_xfer_t, item));

    (void) ngx_thread_mutex_lock(&ch->mutex, ch->log);

    out = x->out;

    /*
     * A few tokens are copied out and the transfer keeps its buffer:
     * no malloc() on one thread and free() on another for each token.
     */

    if (out.text_len == 0) {
        out.text = NULL;

    } else if (out.text_len <= NGX_HTTP_LLM_DRAIN_COPY) {
        ngx_memcpy(copy, out.text, out.text_len);
        out.text = copy;

    } else {
        x->out.text = NULL;
        x->out.text_cap = 0;
    }

    x->out.text_len = 0;

    /* the outcome is read once, with the end of the transfer */
    if (out.done) {
        x->out.outcome.message = NULL;
        x->out.outcome.message_len = 0;

    } else {
        out.outcome.message = NULL;
    }

    (void) ngx_thread_mutex_unlock(&ch->mutex, ch->log);

    /* the final output may be drained again: it is counted once */

    if (out.done && !x->counted) {
        x->counted = 1;
        ngx_http_llm_metrics_xfer(&x->spec, &out);
    }

    handler = x->handler;

    if (handler != NULL) {
        if (out.done) {
            /* the final output takes the caller's reference with it */
            x->handler = NULL;
        }

        handler(x->data, &out);

        if (out.done) {
            ngx_http_llm_xfer_release(x);
        }
    }

    if (out.text != copy) {
        free(out.text);
    }

    free(out.outcome.message);

    ngx_http_llm_xfer_release(x);
}
