
/*
 * Copyright (C) ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_PROVIDER_H_INCLUDED_
#define _NGX_HTTP_LLM_PROVIDER_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


/*
 * Everything declared here runs without nginx pools, events or logs: the
 * request builders run on the event loop but allocate with malloc() (the
 * result is owned by a transfer, freed on the engine thread), and the
 * parsers run on the engine thread.
 */


/* upper bound of one upstream SSE line and of one event's data */
#define NGX_HTTP_LLM_LINE_MAX        (256 * 1024)

/* upper bound of a non-2xx upstream body kept for its error message */
#define NGX_HTTP_LLM_ERRBODY_MAX     (16 * 1024)

/* text handed to the loop by copy, the buffer kept (xfer_drain()) */
#define NGX_HTTP_LLM_DRAIN_COPY      512


/* stable error codes of the final "error" event */
#define NGX_HTTP_LLM_E_STATUS        "upstream_status"
#define NGX_HTTP_LLM_E_CONNECT       "upstream_connect"
#define NGX_HTTP_LLM_E_UPSTREAM      "upstream_error"
#define NGX_HTTP_LLM_E_TRUNCATED     "upstream_truncated"
#define NGX_HTTP_LLM_E_INVALID       "upstream_invalid"
#define NGX_HTTP_LLM_E_CONNECT_TMO   "connect_timeout"
#define NGX_HTTP_LLM_E_FIRST_TMO     "first_token_timeout"
#define NGX_HTTP_LLM_E_IDLE_TMO      "idle_timeout"
#define NGX_HTTP_LLM_E_TIMEOUT       "timeout"
#define NGX_HTTP_LLM_E_CANCELLED     "cancelled"
#define NGX_HTTP_LLM_E_PAUSE_TMO     "pause_timeout"
#define NGX_HTTP_LLM_E_DURATION      "max_duration"
#define NGX_HTTP_LLM_E_SHUTDOWN      "shutdown"
#define NGX_HTTP_LLM_E_INTERNAL      "internal"
#define NGX_HTTP_LLM_E_STORE         "store_corrupt"
#define NGX_HTTP_LLM_E_TEXT_LIMIT    "text_limit"
#define NGX_HTTP_LLM_E_STEP          "step_failed"
#define NGX_HTTP_LLM_E_CHECK         "check_failed"


/* where parsed upstream output goes; implemented by the engine */
typedef struct {
    void   (*text)(void *data, u_char *p, size_t len);
    void   (*finish)(void *data, u_char *reason, size_t len);
    void   (*usage)(void *data, ngx_int_t input, ngx_int_t output);
    void   (*fail)(void *data, const char *code, u_char *msg, size_t len);
    void    *data;
} ngx_http_llm_sink_t;


/*
 * Incremental parser of an upstream text/event-stream (WHATWG rules: any
 * split of the input, LF, CRLF or CR line ends, a leading BOM, comments,
 * multi-line data); zero-filled before the first feed.
 */
typedef struct {
    u_char                 *line;
    size_t                  line_len;
    size_t                  line_cap;

    u_char                 *data;
    size_t                  data_len;
    size_t                  data_cap;

    u_char                  event[64];
    size_t                  event_len;

    unsigned                has_data:1;
    unsigned                last_cr:1;
    unsigned                bom_checked:1;
} ngx_http_llm_usse_t;


/*
 * Called once per dispatched event; "event" is empty when the stream did
 * not name one.  Returns NGX_OK to go on, NGX_DONE when the stream has
 * ended (the parser stops), NGX_ERROR after sink->fail().
 *
 * ngx_http_llm_usse_feed() returns the handler's NGX_DONE or NGX_ERROR,
 * and NGX_ERROR without calling the handler for a line or an event's data
 * longer than NGX_HTTP_LLM_LINE_MAX (the caller reports upstream_invalid)
 * or on allocation failure.
 */
typedef ngx_int_t (*ngx_http_llm_usse_handler_pt)(void *ctx, ngx_str_t *event,
    ngx_str_t *data);

ngx_int_t ngx_http_llm_usse_feed(ngx_http_llm_usse_t *p, u_char *buf,
    size_t len, ngx_http_llm_usse_handler_pt handler, void *ctx);
void ngx_http_llm_usse_free(ngx_http_llm_usse_t *p);


/* what the operator configured, resolved for one request */
typedef struct {
    ngx_str_t               model;
    ngx_str_t               system;
    ngx_str_t               prompt;
    ngx_str_t               api_key;
    ngx_uint_t              max_tokens;     /* 0: provider default */
    struct json_t          *temperature;    /* NULL: provider default */

    /*
     * A client's own conversation (an OpenAI "messages" array, checked):
     * sent after the system prompt, the prompt, if any, after it.
     */
    struct json_t          *messages;

    unsigned                json:1;         /* ask for one JSON object */
} ngx_http_llm_params_t;


/* how a provider without a JSON mode is asked for JSON */
#define NGX_HTTP_LLM_JSON_ONLY                                              \
    "Answer with one JSON object and nothing else."


typedef struct {
    const char             *name;

    /* malloc()ed JSON request body, NULL on failure */
    char                 *(*body)(ngx_http_llm_params_t *params,
                                  size_t *len);

    /* "Name: value" header lines for libcurl (auth, version) */
    ngx_int_t             (*headers)(ngx_http_llm_params_t *params,
                                     char **lines, ngx_uint_t max);

    /* per-transfer parser state, zero-filled by the caller */
    size_t                  state_size;

    /*
     * One upstream SSE event.  NGX_OK, NGX_DONE at the provider's end of
     * stream marker, NGX_ERROR after sink->fail().
     */
    ngx_int_t             (*event)(void *state, ngx_str_t *event,
                                   ngx_str_t *data,
                                   ngx_http_llm_sink_t *sink);

    /*
     * Transfer ended without the end marker: NGX_OK when the stream is
     * complete anyway (finish reason seen), NGX_ERROR otherwise.
     */
    ngx_int_t             (*eof)(void *state);

    /* a non-2xx response: report it with sink->fail(UPSTREAM_STATUS) */
    void                  (*error)(ngx_uint_t status, u_char *body,
                                   size_t len, ngx_http_llm_sink_t *sink);
} ngx_http_llm_provider_t;


extern const ngx_http_llm_provider_t  ngx_http_llm_openai;
extern const ngx_http_llm_provider_t  ngx_http_llm_anthropic;


/*
 * How JSON is written: compact, and numbers with 15 digits, so that a
 * model's 0.9 stays 0.9 (jansson writes 17 by default: 0.90000000000000002)
 */
#define NGX_HTTP_LLM_JSON_DUMP   (JSON_COMPACT | JSON_REAL_PRECISION(15))


/* helpers shared by the providers, ngx_http_llm_json.c */

#define ngx_http_llm_str_is(p, n, lit)                                      \
    ((n) == sizeof(lit) - 1 && ngx_strncmp(p, lit, sizeof(lit) - 1) == 0)

struct json_t;

struct json_t *ngx_http_llm_json_str(ngx_str_t *s);
struct json_t *ngx_http_llm_json_msg(const char *role, ngx_str_t *content);
ngx_int_t ngx_http_llm_json_conversation(struct json_t *messages,
    ngx_http_llm_params_t *params, ngx_uint_t system);
char *ngx_http_llm_json_dump(struct json_t *root, size_t *len);
struct json_t *ngx_http_llm_json_parse(ngx_str_t *data,
    ngx_http_llm_sink_t *sink);
ngx_int_t ngx_http_llm_json_fail(struct json_t *root,
    ngx_http_llm_sink_t *sink);
void ngx_http_llm_status_error(ngx_uint_t status, u_char *body, size_t len,
    ngx_http_llm_sink_t *sink);
ngx_int_t ngx_http_llm_header_lines(char **lines, ngx_uint_t max,
    const char *const *fixed, const char *auth, ngx_str_t *key);
void ngx_http_llm_trim(ngx_str_t *s);


#endif /* _NGX_HTTP_LLM_PROVIDER_H_INCLUDED_ */
