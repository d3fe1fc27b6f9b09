
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * Unit tests of the upstream SSE parser and the providers, without nginx:
 * prints TAP, exits 1 when a test fails.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <jansson.h>
#include "ngx_http_llm_provider.h"


#define T_REC_MAX  1024
#define T_OUT_MAX  4096


typedef struct {
    u_char                          text[T_REC_MAX];
    size_t                          text_len;
    char                            finish[64];
    ngx_int_t                       input;
    ngx_int_t                       output;
    ngx_uint_t                      usages;
    char                            fail[T_REC_MAX];
    ngx_uint_t                      fails;
} t_rec_t;


typedef struct {
    const ngx_http_llm_provider_t  *prov;
    void                           *state;
    ngx_http_llm_sink_t             sink;
    t_rec_t                         rec;
} t_run_t;


/* what the raw parser dispatched, as "[event|data]..." */
typedef struct {
    char                            out[T_OUT_MAX];
    size_t                          len;
    size_t                          last_data;
    ngx_uint_t                      events;
    ngx_int_t                       rc;
} t_raw_t;


static ngx_uint_t  t_num;
static ngx_uint_t  t_failed;
static uint32_t    t_seed = 12345;
static t_rec_t     t_last;         /* what the last t_stream() recorded */


static void
t_ok(int ok, const char *fmt, ...)
{
    va_list  args;

    t_num++;

    if (!ok) {
        t_failed++;
    }

    printf("%sok %lu - ", ok ? "" : "not ", (unsigned long) t_num);

    va_start(args, fmt);
    vprintf(fmt, args);
    va_end(args);

    printf("\n");
}


static void
t_is(const char *got, const char *want, const char *name)
{
    int  ok;

    ok = (strcmp(got, want) == 0);

    t_ok(ok, "%s", name);

    if (!ok) {
        printf("#   got: '%s'\n#  want: '%s'\n", got, want);
    }
}


static uint32_t
t_rand(void)
{
    /* a fixed LCG: the same splits with every libc */
    t_seed = t_seed * 1103515245 + 12345;
    return (t_seed >> 16) & 0x7fff;
}


static void
t_text(void *data, u_char *p, size_t len)
{
    t_rec_t  *rec = data;

    if (rec->text_len + len <= T_REC_MAX) {
        ngx_memcpy(rec->text + rec->text_len, p, len);
        rec->text_len += len;
    }
}


static void
t_finish(void *data, u_char *reason, size_t len)
{
    t_rec_t  *rec = data;

    snprintf(rec->finish, sizeof(rec->finish), "%.*s", (int) len, reason);
}


static void
t_usage(void *data, ngx_int_t input, ngx_int_t output)
{
    t_rec_t  *rec = data;

    rec->input = input;
    rec->output = output;
    rec->usages++;
}


static void
t_fail(void *data, const char *code, u_char *msg, size_t len)
{
    t_rec_t  *rec = data;

    snprintf(rec->fail, sizeof(rec->fail), "%s:%.*s", code, (int) len, msg);
    rec->fails++;
}


static void
t_sink(ngx_http_llm_sink_t *sink, t_rec_t *rec)
{
    ngx_memzero(rec, sizeof(t_rec_t));

    sink->text = t_text;
    sink->finish = t_finish;
    sink->usage = t_usage;
    sink->fail = t_fail;
    sink->data = rec;
}


static ngx_int_t
t_handler(void *ctx, ngx_str_t *event, ngx_str_t *data)
{
    t_run_t  *run = ctx;

    return run->prov->event(run->state, event, data, &run->sink);
}


/*
 * Feeds s in pieces ending at cuts[0..ncuts-1] and at the end, then calls
 * eof() unless the stream ended or failed; summarizes the outcome in out.
 */

static void
t_stream(const ngx_http_llm_provider_t *prov, u_char *s, size_t len,
    size_t *cuts, ngx_uint_t ncuts, char *out, size_t size)
{
    size_t                pos, end;
    t_run_t               run;
    ngx_int_t             rc;
    ngx_uint_t            i;
    ngx_http_llm_usse_t   p;

    ngx_memzero(&p, sizeof(ngx_http_llm_usse_t));

    run.prov = prov;
    run.state = calloc(1, prov->state_size);
    t_sink(&run.sink, &run.rec);

    rc = NGX_OK;
    pos = 0;

    for (i = 0; i <= ncuts && rc == NGX_OK; i++) {
        end = (i < ncuts) ? cuts[i] : len;
        rc = ngx_http_llm_usse_feed(&p, s + pos, end - pos, t_handler, &run);
        pos = end;
    }

    if (rc == NGX_OK) {
        rc = prov->eof(run.state);
    }

    snprintf(out, size, "rc=%ld text=[%.*s] finish=[%s] usage=%ld/%ld x%lu "
             "fail=[%s] x%lu",
             (long) rc, (int) run.rec.text_len, run.rec.text, run.rec.finish,
             (long) run.rec.input, (long) run.rec.output,
             (unsigned long) run.rec.usages, run.rec.fail,
             (unsigned long) run.rec.fails);

    t_last = run.rec;

    ngx_http_llm_usse_free(&p);
    free(run.state);
}


static void
t_stream_str(const ngx_http_llm_provider_t *prov, const char *s, char *out,
    size_t size)
{
    t_stream(prov, (u_char *) s, strlen(s), NULL, 0, out, size);
}


/* joins lines, each followed by eol; lines starting with skip are left out */

static size_t
t_join(const char **lines, const char *eol, const char *skip, u_char *buf)
{
    u_char      *p;
    ngx_uint_t   i;

    p = buf;

    for (i = 0; lines[i]; i++) {

        if (skip && ngx_strncmp(lines[i], skip, ngx_strlen(skip)) == 0) {
            continue;
        }

        p = ngx_cpymem(p, lines[i], ngx_strlen(lines[i]));
        p = ngx_cpymem(p, eol, ngx_strlen(eol));
    }

    return p - buf;
}


/* the stream fed whole, byte by byte, cut in two anywhere, cut at random */

static void
t_splits(const ngx_http_llm_provider_t *prov, u_char *s, size_t len,
    const char *want, const char *name)
{
    char        got[T_OUT_MAX], title[128];
    size_t     *cuts, i, k, n;
    ngx_uint_t  ok;

    cuts = malloc(len * sizeof(size_t));

    t_stream(prov, s, len, NULL, 0, got, sizeof(got));
    snprintf(title, sizeof(title), "%s: whole", name);
    t_is(got, want, title);

    for (i = 0; i + 1 < len; i++) {
        cuts[i] = i + 1;
    }

    t_stream(prov, s, len, cuts, len - 1, got, sizeof(got));
    snprintf(title, sizeof(title), "%s: byte by byte", name);
    t_is(got, want, title);

    ok = 1;

    for (i = 0; i <= len && ok; i++) {
        t_stream(prov, s, len, &i, 1, got, sizeof(got));
        ok = (strcmp(got, want) == 0);
    }

    t_ok(ok, "%s: cut in two at every position", name);

    if (!ok) {
        printf("#   cut at %lu: '%s'\n", (unsigned long) i - 1, got);
    }

    ok = 1;

    for (k = 0; k < 200 && ok; k++) {
        n = 0;

        for (i = t_rand() % 24; i < len; i += 1 + t_rand() % 24) {
            cuts[n++] = i;
        }

        t_stream(prov, s, len, cuts, n, got, sizeof(got));
        ok = (strcmp(got, want) == 0);
    }

    t_ok(ok, "%s: 200 random splits", name);

    if (!ok) {
        printf("#   got: '%s'\n", got);
    }

    free(cuts);
}


static const char  *t_openai_lines[] = {
    ": keep-alive comment",
    "",
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":"
        "\"assistant\",\"content\":null},\"finish_reason\":null}],"
        "\"usage\":null}",
    "",
    ": ping",
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},"
        "\"finish_reason\":null}],\"error\":null}",
    "",
    "data:{\"choices\":[{\"delta\":{\"content\":\"lo, \\u00e9\"}}]}",
    "",
    "data: {\"choices\":[{\"delta\":{\"content\":"
        "\"\xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x8e\x89\"}}]}",
    "",
    "data: {\"choices\":[{\"delta\":",
    "data: {\"content\":\"!\\\"\\n\"}}]}",
    "",
    "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}",
    "",
    "id: 7",
    "retry: 1000",
    "data: {\"choices\":[{\"index\":0,\"delta\":{},"
        "\"finish_reason\":\"stop\"}]}",
    "",
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,"
        "\"completion_tokens\":34,\"total_tokens\":46}}",
    "",
    "data: [DONE]",
    "",
    "data: {\"choices\":[{\"delta\":{\"content\":\"AFTER\"}}]}",
    "",
    NULL
};

static const char  *t_openai_want =
    "rc=-4 text=[Hello, \xc3\xa9\xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x8e\x89!\"\n]"
    " finish=[stop] usage=12/34 x1 fail=[] x0";


static const char  *t_anthropic_lines[] = {
    "event: message_start",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\","
        "\"type\":\"message\",\"role\":\"assistant\",\"content\":[],"
        "\"model\":\"claude\",\"stop_reason\":null,\"usage\":"
        "{\"input_tokens\":25,\"output_tokens\":1}}}",
    "",
    "event: content_block_start",
    "data: {\"type\":\"content_block_start\",\"index\":0,"
        "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}",
    "",
    "event: ping",
    "data: {\"type\": \"ping\"}",
    "",
    "event: content_block_delta",
    "data: {\"type\":\"content_block_delta\",\"index\":0,"
        "\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}",
    "",
    "event: content_block_delta",
    "data: {\"type\":\"content_block_delta\",\"index\":0,"
        "\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}}",
    "",
    "event: content_block_delta",
    "data: {\"type\":\"content_block_delta\",\"index\":1,"
        "\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\"}}",
    "",
    "event: content_block_delta",
    "data: {\"type\":\"content_block_delta\",\"index\":0,"
        "\"delta\":{\"type\":\"text_delta\","
        "\"text\":\", \\u4e16\xe7\x95\x8c\"}}",
    "",
    "event: some_future_event",
    "data: {\"type\":\"some_future_event\"}",
    "",
    "event: content_block_stop",
    "data: {\"type\":\"content_block_stop\",\"index\":0}",
    "",
    "event: message_delta",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
        "\"end_turn\",\"stop_sequence\":null},"
        "\"usage\":{\"output_tokens\":15}}",
    "",
    "event: message_stop",
    "data: {\"type\":\"message_stop\"}",
    "",
    NULL
};

static const char  *t_anthropic_want =
    "rc=-4 text=[Hello, \xe4\xb8\x96\xe7\x95\x8c] finish=[end_turn] "
    "usage=25/15 x1 fail=[] x0";


static void
t_openai_streams(void)
{
    char         got[T_OUT_MAX], name[64];
    size_t       len, cuts[1];
    u_char       buf[T_OUT_MAX], *p;
    ngx_uint_t   i;

    static const char  *eols[] = { "\n", "\r\n", "\r" };
    static const char  *names[] = { "LF", "CRLF", "CR" };

    for (i = 0; i < 3; i++) {
        /* a leading BOM, which may be split too */
        len = 3 + t_join(t_openai_lines, eols[i], NULL, buf + 3);
        ngx_memcpy(buf, "\xef\xbb\xbf", 3);

        snprintf(name, sizeof(name), "openai stream, %s", names[i]);
        t_splits(&ngx_http_llm_openai, buf, len, t_openai_want, name);
    }

    len = t_join(t_openai_lines, "\n", NULL, buf);
    p = (u_char *) ngx_strstr(buf, "\xe4\xb8\x96");
    cuts[0] = p - buf + 2;

    t_stream(&ngx_http_llm_openai, buf, len, cuts, 1, got, sizeof(got));
    t_is(got, t_openai_want, "openai: UTF-8 token split inside a character");

    t_stream_str(&ngx_http_llm_openai,
                 "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"
                 "data: {\"choices\":[{\"delta\":{},\"finish_reason\":"
                 "\"length\"}]}\n\n",
                 got, sizeof(got));
    t_is(got, "rc=0 text=[a] finish=[length] usage=0/0 x0 fail=[] x0",
         "openai: eof after finish_reason, no [DONE] -> NGX_OK");

    t_stream_str(&ngx_http_llm_openai,
                 "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
                 got, sizeof(got));
    t_is(got, "rc=-1 text=[a] finish=[] usage=0/0 x0 fail=[] x0",
         "openai: eof without finish_reason -> NGX_ERROR");

    t_stream_str(&ngx_http_llm_openai,
                 "data: {\"choices\":[{\"text\":\"abc\",\"finish_reason\":"
                 "\"stop\"}]}\n\ndata:  [DONE] \n\n",
                 got, sizeof(got));
    t_is(got, "rc=-4 text=[abc] finish=[stop] usage=0/0 x0 fail=[] x0",
         "openai: legacy choices[0].text, [DONE] with blanks");

    t_stream_str(&ngx_http_llm_openai,
                 "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"
                 "data: {\"error\":{\"message\":\"rate \\\"limited\\\"\","
                 "\"type\":\"x\"}}\n\n",
                 got, sizeof(got));
    t_is(got, "rc=-1 text=[a] finish=[] usage=0/0 x0 "
              "fail=[upstream_error:rate \"limited\"] x1",
         "openai: error object in stream");

    t_stream_str(&ngx_http_llm_openai, "data: {\"error\":\"boom\"}\n\n",
                 got, sizeof(got));
    t_is(got, "rc=-1 text=[] finish=[] usage=0/0 x0 "
              "fail=[upstream_error:boom] x1",
         "openai: error string in stream");

    t_stream_str(&ngx_http_llm_openai,
                 "event: error\ndata: {\"message\":\"overloaded\"}\n\n",
                 got, sizeof(got));
    t_is(got, "rc=-1 text=[] finish=[] usage=0/0 x0 "
              "fail=[upstream_error:overloaded] x1",
         "openai: \"error\" event");

    t_stream_str(&ngx_http_llm_openai,
                 "data: {\"object\":\"error\",\"message\":\"bad\"}\n\n",
                 got, sizeof(got));
    t_is(got, "rc=-1 text=[] finish=[] usage=0/0 x0 "
              "fail=[upstream_error:bad] x1",
         "openai: vLLM error object");

    t_stream_str(&ngx_http_llm_openai, "data: {\"error\":{}}\n\n",
                 got, sizeof(got));
    t_is(got, "rc=-1 text=[] finish=[] usage=0/0 x0 "
              "fail=[upstream_error:upstream error] x1",
         "openai: error without a message");

    t_stream_str(&ngx_http_llm_openai, "data: {not json\n\n",
                 got, sizeof(got));
    t_is(got, "rc=-1 text=[] finish=[] usage=0/0 x0 "
              "fail=[upstream_invalid:unparsable upstream data] x1",
         "openai: garbage JSON -> upstream_invalid");

    t_stream_str(&ngx_http_llm_openai, "data: [1,2]\n\n", got, sizeof(got));
    t_is(got, "rc=-1 text=[] finish=[] usage=0/0 x0 "
              "fail=[upstream_invalid:unparsable upstream data] x1",
         "openai: JSON array -> upstream_invalid");

    t_stream_str(&ngx_http_llm_openai,
                 "data: {\"choices\":[{\"delta\":{\"content\":\"a\\u0000b\"},"
                 "\"finish_reason\":\"stop\"}]}\n\n",
                 got, sizeof(got));
    t_ok(t_last.text_len == 3 && ngx_memcmp(t_last.text, "a\0b", 3) == 0
         && t_last.fails == 0,
         "openai: \\u0000 in a token is passed on");
}


static void
t_anthropic_streams(void)
{
    char    got[T_OUT_MAX];
    size_t  len;
    u_char  buf[T_OUT_MAX];

    len = t_join(t_anthropic_lines, "\n", NULL, buf);
    t_splits(&ngx_http_llm_anthropic, buf, len, t_anthropic_want,
             "anthropic stream, LF");

    len = t_join(t_anthropic_lines, "\r\n", NULL, buf);
    t_splits(&ngx_http_llm_anthropic, buf, len, t_anthropic_want,
             "anthropic stream, CRLF");

    len = t_join(t_anthropic_lines, "\n", "event:", buf);
    t_stream(&ngx_http_llm_anthropic, buf, len, NULL, 0, got, sizeof(got));
    t_is(got, t_anthropic_want, "anthropic: data without event lines");

    len = t_join(t_anthropic_lines, "\n", NULL, buf);
    len = (u_char *) ngx_strstr(buf, "event: message_stop") - buf;
    t_stream(&ngx_http_llm_anthropic, buf, len, NULL, 0, got, sizeof(got));
    t_is(got, "rc=0 text=[Hello, \xe4\xb8\x96\xe7\x95\x8c] finish=[end_turn] "
              "usage=25/15 x1 fail=[] x0",
         "anthropic: eof after stop_reason, no message_stop -> NGX_OK");

    len = (u_char *) ngx_strstr(buf, "event: message_delta") - buf;
    t_stream(&ngx_http_llm_anthropic, buf, len, NULL, 0, got, sizeof(got));
    t_is(got, "rc=-1 text=[Hello, \xe4\xb8\x96\xe7\x95\x8c] finish=[] "
              "usage=0/0 x0 fail=[] x0",
         "anthropic: eof without stop_reason -> NGX_ERROR");

    t_stream_str(&ngx_http_llm_anthropic,
                 "event: content_block_delta\n"
                 "data: {\"type\":\"content_block_delta\",\"index\":0,"
                 "\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n"
                 "event: error\n"
                 "data: {\"type\":\"error\",\"error\":{\"type\":"
                 "\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
                 got, sizeof(got));
    t_is(got, "rc=-1 text=[Hi] finish=[] usage=0/0 x0 "
              "fail=[upstream_error:Overloaded] x1",
         "anthropic: error event");

    t_stream_str(&ngx_http_llm_anthropic,
                 "event: message_start\ndata: <html>\n\n", got, sizeof(got));
    t_is(got, "rc=-1 text=[] finish=[] usage=0/0 x0 "
              "fail=[upstream_invalid:unparsable upstream data] x1",
         "anthropic: garbage JSON -> upstream_invalid");
}


static ngx_int_t
t_raw_handler(void *ctx, ngx_str_t *event, ngx_str_t *data)
{
    t_raw_t  *raw = ctx;

    raw->len += snprintf(raw->out + raw->len, sizeof(raw->out) - raw->len,
                         "[%.*s|%.*s]", (int) event->len, event->data,
                         (int) ngx_min(data->len, 100), data->data);
    raw->last_data = data->len;
    raw->events++;

    return raw->rc;
}


/* feeds the NULL-terminated pieces to a fresh parser */

static ngx_int_t
t_raw(t_raw_t *raw, ngx_int_t hrc, ...)
{
    char                 *s;
    va_list               args;
    ngx_int_t             rc;
    ngx_http_llm_usse_t   p;

    ngx_memzero(raw, sizeof(t_raw_t));
    ngx_memzero(&p, sizeof(ngx_http_llm_usse_t));
    raw->rc = hrc;

    rc = NGX_OK;

    va_start(args, hrc);

    while (rc == NGX_OK && (s = va_arg(args, char *)) != NULL) {
        rc = ngx_http_llm_usse_feed(&p, (u_char *) s, strlen(s),
                                    t_raw_handler, raw);
    }

    va_end(args);

    ngx_http_llm_usse_free(&p);

    return rc;
}


static void
t_raw_is(const char *s, const char *want, const char *name)
{
    t_raw_t  raw;

    t_raw(&raw, NGX_OK, s, NULL);
    t_is(raw.out, want, name);
}


/*
 * "lines" lines "data: xxx..." of n bytes joined with LF, then "tail"; fed
 * in pieces of "piece" bytes
 */

static ngx_int_t
t_long(t_raw_t *raw, size_t n, ngx_uint_t lines, const char *tail,
    size_t piece)
{
    u_char               *s, *p;
    size_t                len, pos, k;
    ngx_int_t             rc;
    ngx_uint_t            i;
    ngx_http_llm_usse_t   parser;

    ngx_memzero(raw, sizeof(t_raw_t));
    ngx_memzero(&parser, sizeof(ngx_http_llm_usse_t));

    len = n * lines + lines - 1 + ngx_strlen(tail);
    s = malloc(len);
    p = s;

    for (i = 0; i < lines; i++) {
        if (i) {
            *p++ = LF;
        }

        p = ngx_cpymem(p, "data: ", 6);
        ngx_memset(p, 'x', n - 6);
        p += n - 6;
    }

    ngx_memcpy(p, tail, ngx_strlen(tail));

    rc = NGX_OK;

    for (pos = 0; pos < len && rc == NGX_OK; pos += k) {
        k = ngx_min(len - pos, piece);
        rc = ngx_http_llm_usse_feed(&parser, s + pos, k, t_raw_handler, raw);
    }

    ngx_http_llm_usse_free(&parser);
    free(s);

    return rc;
}


static void
t_parser(void)
{
    t_raw_t    raw;
    ngx_int_t  rc;

    t_raw_is("data: a\ndata: b\n\n", "[|a\nb]", "sse: multi-line data");
    t_raw_is("data:x\n\ndata:  y\n\n", "[|x][| y]",
             "sse: data without space, one space removed only");
    t_raw_is("data\n\ndata:\n\n", "[|][|]", "sse: empty data is dispatched");
    t_raw_is("event: foo\ndata: 1\n\ndata: 2\n\n", "[foo|1][|2]",
             "sse: event name, reset after dispatch");
    t_raw_is("event: foo\n\ndata: 2\n\n", "[|2]",
             "sse: no data, no dispatch, event name reset");
    t_raw_is(": c\n:\nid: 5\nretry: 100\nfoo: bar\ndata: x\n\n", "[|x]",
             "sse: comments, id, retry and unknown fields ignored");
    t_raw_is("event: 0123456789012345678901234567890123456789"
             "0123456789012345678901234567890123456789\ndata: x\n\n",
             "[012345678901234567890123456789012345678901234567890123456789"
             "012|x]",
             "sse: event name truncated to 63 bytes");
    t_raw_is("data: a\r\ndata: b\rdata: c\n\r\n", "[|a\nb\nc]",
             "sse: mixed line endings");
    t_raw_is("data: x\n", "", "sse: no dispatch before the empty line");
    t_raw_is("\xef\xbb\xbf\xef\xbb\xbf" "data: x\n\n", "",
             "sse: a second BOM is not skipped");
    t_raw_is("\xef\xbb" "data: x\n\n", "",
             "sse: a partial BOM is kept as line content");
    t_raw_is("data: x:y\n\n", "[|x:y]", "sse: colon in the value");

    t_raw(&raw, NGX_OK, "\xef", "\xbb", "\xbf", "data: x\n\n", NULL);
    t_is(raw.out, "[|x]", "sse: BOM split over three buffers");

    t_raw(&raw, NGX_OK, "data: a\r", "\n", "\r", "\n", "data: b\r", "\r",
          NULL);
    t_is(raw.out, "[|a][|b]", "sse: CR at a buffer end, LF in the next");

    rc = t_raw(&raw, NGX_DONE, "data: 1\n\ndata: 2\n\n", NULL);
    t_ok(rc == NGX_DONE && strcmp(raw.out, "[|1]") == 0,
         "sse: handler NGX_DONE stops the parser");

    rc = t_raw(&raw, NGX_ERROR, "data: 1\n\ndata: 2\n\n", NULL);
    t_ok(rc == NGX_ERROR && raw.events == 1,
         "sse: handler NGX_ERROR is returned");

    rc = t_long(&raw, NGX_HTTP_LLM_LINE_MAX, 1, "\n\n", 1000);
    t_ok(rc == NGX_OK && raw.events == 1
         && raw.last_data == NGX_HTTP_LLM_LINE_MAX - 6,
         "sse: a line of NGX_HTTP_LLM_LINE_MAX bytes in pieces passes");

    rc = t_long(&raw, NGX_HTTP_LLM_LINE_MAX, 1, "\n\n", (size_t) -1);
    t_ok(rc == NGX_OK && raw.events == 1
         && raw.last_data == NGX_HTTP_LLM_LINE_MAX - 6,
         "sse: a line of NGX_HTTP_LLM_LINE_MAX bytes in one buffer passes");

    rc = t_long(&raw, NGX_HTTP_LLM_LINE_MAX + 1, 1, "\n\n", 1000);
    t_ok(rc == NGX_ERROR && raw.events == 0,
         "sse: a longer line in pieces -> NGX_ERROR");

    rc = t_long(&raw, NGX_HTTP_LLM_LINE_MAX + 1, 1, "\n\n", (size_t) -1);
    t_ok(rc == NGX_ERROR && raw.events == 0,
         "sse: a longer line in one buffer -> NGX_ERROR");

    rc = t_long(&raw, NGX_HTTP_LLM_LINE_MAX * 2, 1, "", 4096);
    t_ok(rc == NGX_ERROR, "sse: an endless line -> NGX_ERROR");

    rc = t_long(&raw, NGX_HTTP_LLM_LINE_MAX / 3, 4, "\n\n", 1000);
    t_ok(rc == NGX_ERROR && raw.events == 0,
         "sse: data over NGX_HTTP_LLM_LINE_MAX in 4 lines -> NGX_ERROR");

    rc = t_long(&raw, NGX_HTTP_LLM_LINE_MAX / 4, 3, "\n\n", 1000);
    t_ok(rc == NGX_OK && raw.events == 1,
         "sse: 3 data lines of NGX_HTTP_LLM_LINE_MAX / 4 bytes pass");
}


#define T_STR(s)  { sizeof(s) - 1, (u_char *) s }
#define T_FFFD    "\xef\xbf\xbd"


static int
t_json_is(json_t *j, const char *s, size_t len)
{
    return json_is_string(j) && json_string_length(j) == len
           && ngx_memcmp(json_string_value(j), s, len) == 0;
}


static void
t_bodies(void)
{
    char                   *out;
    size_t                  len;
    json_t                 *root, *msgs, *m;
    ngx_http_llm_params_t   params;

    static ngx_str_t  model = T_STR("gpt-4o-mini");
    static ngx_str_t  system = T_STR("You are \"terse\"\\");
    static ngx_str_t  nul = T_STR("a\0b");
    static ngx_str_t  prompt = T_STR(
        "q\"\\\n\t\x01\x1f \xc3\xa9 \xe4\xb8\x96 "
        "\xff|\xe4\xb8x|\xc0\xaf|\xed\xa0\x80|\xf4\x90\x80\x80|\x80|"
        "\xf0\x9f\x8e\x89");
    static const char  want[] =
        "q\"\\\n\t\x01\x1f \xc3\xa9 \xe4\xb8\x96 "
        T_FFFD "|" T_FFFD "x|" T_FFFD T_FFFD "|" T_FFFD T_FFFD T_FFFD "|"
        T_FFFD T_FFFD T_FFFD T_FFFD "|" T_FFFD "|\xf0\x9f\x8e\x89";

    ngx_memzero(&params, sizeof(ngx_http_llm_params_t));
    params.model = model;
    params.system = system;
    params.prompt = prompt;
    params.max_tokens = 100;

    out = ngx_http_llm_openai.body(&params, &len);
    root = json_loadb(out, len, 0, NULL);
    msgs = json_object_get(root, "messages");
    m = json_array_get(msgs, 1);

    t_ok(out != NULL && len == strlen(out) && strchr(out, '\n') == NULL
         && ngx_strncmp(out, "{\"model\":\"gpt-4o-mini\",", 23) == 0
         && strstr(out, "\\u0001") != NULL,
         "openai body: compact, control characters escaped");
    t_ok(t_json_is(json_object_get(root, "model"), "gpt-4o-mini", 11)
         && json_is_true(json_object_get(root, "stream"))
         && json_is_true(json_object_get(json_object_get(root,
                                                         "stream_options"),
                                         "include_usage"))
         && json_integer_value(json_object_get(root, "max_tokens")) == 100
         && json_object_size(root) == 5,
         "openai body: model, stream, stream_options, max_tokens");
    t_ok(json_array_size(msgs) == 2
         && t_json_is(json_object_get(json_array_get(msgs, 0), "role"),
                      "system", 6)
         && t_json_is(json_object_get(json_array_get(msgs, 0), "content"),
                      (char *) system.data, system.len)
         && t_json_is(json_object_get(m, "role"), "user", 4),
         "openai body: system message with quotes and backslashes");
    t_ok(t_json_is(json_object_get(m, "content"), want, sizeof(want) - 1),
         "openai body: escaping, non-ASCII, invalid UTF-8 replaced");

    json_decref(root);
    free(out);

    params.system.len = 0;
    params.prompt = nul;
    params.max_tokens = 0;

    out = ngx_http_llm_openai.body(&params, &len);
    root = json_loadb(out, len, JSON_ALLOW_NUL, NULL);
    msgs = json_object_get(root, "messages");

    t_ok(json_array_size(msgs) == 1
         && t_json_is(json_object_get(json_array_get(msgs, 0), "role"),
                      "user", 4)
         && t_json_is(json_object_get(json_array_get(msgs, 0), "content"),
                      "a\0b", 3)
         && json_object_get(root, "max_tokens") == NULL,
         "openai body: no system, no max_tokens, NUL in prompt");

    json_decref(root);
    free(out);

    params.system = system;
    params.prompt = prompt;

    out = ngx_http_llm_anthropic.body(&params, &len);
    root = json_loadb(out, len, 0, NULL);
    msgs = json_object_get(root, "messages");
    m = json_array_get(msgs, 0);

    t_ok(out != NULL && len == strlen(out) && strchr(out, '\n') == NULL
         && t_json_is(json_object_get(root, "model"), "gpt-4o-mini", 11)
         && json_integer_value(json_object_get(root, "max_tokens")) == 4096
         && t_json_is(json_object_get(root, "system"),
                      (char *) system.data, system.len)
         && json_is_true(json_object_get(root, "stream"))
         && json_object_size(root) == 5,
         "anthropic body: model, default max_tokens, system, stream");
    t_ok(json_array_size(msgs) == 1
         && t_json_is(json_object_get(m, "role"), "user", 4)
         && t_json_is(json_object_get(m, "content"), want, sizeof(want) - 1),
         "anthropic body: user message, invalid UTF-8 replaced");

    json_decref(root);
    free(out);

    params.system.len = 0;
    params.prompt.len = 0;
    params.prompt.data = NULL;
    params.max_tokens = 100;

    out = ngx_http_llm_anthropic.body(&params, &len);
    root = json_loadb(out, len, 0, NULL);
    m = json_array_get(json_object_get(root, "messages"), 0);

    t_ok(json_integer_value(json_object_get(root, "max_tokens")) == 100
         && json_object_get(root, "system") == NULL
         && t_json_is(json_object_get(m, "content"), "", 0),
         "anthropic body: max_tokens, no system, empty prompt");

    json_decref(root);
    free(out);
}


/* the header lines joined with "|", or "ERROR" */

static void
t_headers_is(const ngx_http_llm_provider_t *prov, ngx_str_t *key,
    ngx_uint_t max, const char *want, const char *name)
{
    char                   *lines[8], got[T_OUT_MAX];
    size_t                  len;
    ngx_int_t               n, i;
    ngx_http_llm_params_t   params;

    ngx_memzero(&params, sizeof(ngx_http_llm_params_t));
    params.api_key = *key;

    n = prov->headers(&params, lines, max);

    if (n == NGX_ERROR) {
        snprintf(got, sizeof(got), "ERROR");

    } else {
        len = 0;

        for (i = 0; i < n; i++) {
            len += snprintf(got + len, sizeof(got) - len, "%s%s",
                            i ? "|" : "", lines[i]);
            free(lines[i]);
        }
    }

    t_is(got, want, name);
}


static void
t_headers(void)
{
    static ngx_str_t  none = ngx_null_string;
    static ngx_str_t  key = T_STR("sk-123");
    static ngx_str_t  crlf = T_STR("sk\r\nX-Evil: 1");
    static ngx_str_t  lf = T_STR("sk\nX-Evil: 1");
    static ngx_str_t  nul = T_STR("sk\0x");

    t_headers_is(&ngx_http_llm_openai, &none, 8,
                 "Content-Type: application/json|Accept: text/event-stream",
                 "openai headers without a key");
    t_headers_is(&ngx_http_llm_openai, &key, 8,
                 "Content-Type: application/json|Accept: text/event-stream|"
                 "Authorization: Bearer sk-123",
                 "openai headers with a key");
    t_headers_is(&ngx_http_llm_openai, &crlf, 8, "ERROR",
                 "openai headers: key with CRLF rejected");
    t_headers_is(&ngx_http_llm_openai, &lf, 8, "ERROR",
                 "openai headers: key with LF rejected");
    t_headers_is(&ngx_http_llm_openai, &nul, 8, "ERROR",
                 "openai headers: key with NUL rejected");
    t_headers_is(&ngx_http_llm_openai, &key, 2, "ERROR",
                 "openai headers: too few slots");
    t_headers_is(&ngx_http_llm_anthropic, &none, 8,
                 "Content-Type: application/json|Accept: text/event-stream|"
                 "anthropic-version: 2023-06-01",
                 "anthropic headers without a key");
    t_headers_is(&ngx_http_llm_anthropic, &key, 8,
                 "Content-Type: application/json|Accept: text/event-stream|"
                 "anthropic-version: 2023-06-01|x-api-key: sk-123",
                 "anthropic headers with a key");
    t_headers_is(&ngx_http_llm_anthropic, &crlf, 8, "ERROR",
                 "anthropic headers: key with CRLF rejected");
}


static void
t_error_is(const ngx_http_llm_provider_t *prov, ngx_uint_t status,
    const char *body, size_t len, const char *want, const char *name)
{
    t_rec_t              rec;
    ngx_http_llm_sink_t  sink;

    t_sink(&sink, &rec);

    prov->error(status, (u_char *) body, len, &sink);

    if (rec.fails != 1) {
        snprintf(rec.fail, sizeof(rec.fail), "%lu fail() calls",
                 (unsigned long) rec.fails);
    }

    t_is(rec.fail, want, name);
}


static void
t_errors(void)
{
    char    text[2000], want[600];
    size_t  i;

#define T_ERR(prov, status, body, want, name)                               \
    t_error_is(prov, status, body, sizeof(body) - 1, want, name)

    T_ERR(&ngx_http_llm_openai, 401,
          "{\"error\":{\"message\":\"Incorrect API key\",\"type\":"
          "\"invalid_request_error\",\"code\":\"invalid_api_key\"}}",
          "upstream_status:Incorrect API key", "error(): OpenAI error object");
    T_ERR(&ngx_http_llm_openai, 404, "{\"error\":\"model not found\"}",
          "upstream_status:model not found", "error(): error string");
    T_ERR(&ngx_http_llm_openai, 400, "{\"message\":\"bad\",\"code\":400}",
          "upstream_status:bad", "error(): top-level message");
    T_ERR(&ngx_http_llm_openai, 422, "{\"detail\":\"Not Found\"}",
          "upstream_status:Not Found", "error(): FastAPI detail");
    T_ERR(&ngx_http_llm_anthropic, 529,
          "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
          "\"message\":\"Overloaded\"}}",
          "upstream_status:Overloaded", "error(): Anthropic error object");
    T_ERR(&ngx_http_llm_anthropic, 500, "{\"foo\":1}",
          "upstream_status:{\"foo\":1}", "error(): JSON without a message");
    T_ERR(&ngx_http_llm_openai, 502, " \r\n<html>Bad Gateway</html>\r\n",
          "upstream_status:<html>Bad Gateway</html>",
          "error(): text body trimmed");
    T_ERR(&ngx_http_llm_openai, 503, "", "upstream_status:HTTP 503",
          "error(): empty body");
    T_ERR(&ngx_http_llm_openai, 503, " \n ", "upstream_status:HTTP 503",
          "error(): blank body");
    T_ERR(&ngx_http_llm_openai, 500, "bad \xff body",
          "upstream_status:bad " T_FFFD " body",
          "error(): invalid UTF-8 in a text body");

#undef T_ERR

    ngx_memset(text, 'a', sizeof(text));
    ngx_memset(want, 'a', sizeof(want));
    ngx_memcpy(want, "upstream_status:", 16);
    want[16 + 512] = '\0';

    t_error_is(&ngx_http_llm_openai, 500, text, sizeof(text), want,
               "error(): long text cut to 512 bytes");

    /* 3-byte characters: 512 falls inside the 171st */

    for (i = 0; i + 3 <= sizeof(text); i += 3) {
        ngx_memcpy(text + i, "\xe2\x82\xac", 3);
    }

    ngx_memcpy(want + 16, text, 510);
    want[16 + 510] = '\0';

    t_error_is(&ngx_http_llm_anthropic, 500, text, i, want,
               "error(): long text cut between characters");
}


int
main(void)
{
    t_parser();
    t_openai_streams();
    t_anthropic_streams();
    t_bodies();
    t_headers();
    t_errors();

    printf("1..%lu\n", (unsigned long) t_num);

    return t_failed ? 1 : 0;
}
