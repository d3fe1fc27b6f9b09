/*
 * llm-mock.c -- a MOCK LLM server (not a model) for ngx_http_llm_module.
 *
 * It answers the OpenAI chat completions API (POST .../chat/completions)
 * and the Anthropic Messages API (POST .../messages), streaming (SSE,
 * chunked) or not, with canned, paced tokens or scripted replies.  The
 * demo uses it when no API key is set, the test suite uses its failure
 * modes and scripts, the benchmarks use it for thousands of concurrent
 * streams.  Single thread, epoll, one min-heap of timers; jansson parses
 * the requests and renders the JSON answers, the token frames are written
 * by hand.  Request bodies need a Content-Length (no chunked uploads).
 *
 *   llm-mock [--listen [HOST:]PORT] [--ttft MS] [--tps N] [--tokens N]
 *            [--token-size BYTES] [--script FILE]
 *            [--blackhole [HOST:]PORT] [--quiet]
 *
 *   defaults: --listen 127.0.0.1:8088 --ttft 300 --tps 30 --tokens 60
 *
 * Query parameters of the request URL, per request:
 *
 *   tokens=N      tokens to generate (echo and replies: ignored)
 *   tps=N         tokens per second, 0: as fast as possible
 *   ttft=MS       delay of the first token (headers go out at once)
 *   token_size=N  N-byte tokens cut from the story (echo: chunk size,
 *                 default 4; a reply: default a word)
 *   stamp=1       each token is "<unix microseconds> "
 *   mode=M        normal; echo (the text is system + "|" + last user
 *                 message); status (reply status=CODE, default 500);
 *                 cut, stall, stream_error, garbage (after=N tokens,
 *                 default 3: close without the end / go silent / send an
 *                 in-stream error / send "data: {not json"); hang (never
 *                 answer)
 *   status=CODE   without mode: mode=status, unless CODE is 200
 *   reply=TEXT    the completion is TEXT (URL-encoded UTF-8), a word a
 *                 token (token_size=N: N bytes, never splitting a UTF-8
 *                 character), with usage as in normal mode
 *   reply_N=TEXT  the reply to the N-th request of this tag (1-based,
 *                 counted per tag; untagged: of all requests), else reply
 *   status_N=CODE the status of the N-th request of this tag, else status
 *   tag=STR       counters and /last kept per tag
 *   expect_key=K  require "Authorization: Bearer K" or "x-api-key: K"
 *   chunked=0     an HTTP/1.1 stream ends by close, not chunked
 *   type=TYPE     the Content-Type of a stream (text/event-stream)
 *
 * --script FILE: a JSON array of rules, every field optional:
 *
 *   [{"match": "TEXT", "reply": "TEXT", "replies": ["1st", "2nd", ...],
 *     "status": 500, "statuses": [500, 200],
 *     "ttft": MS, "tps": N, "token_size": N}, ...]
 *
 * A request is answered by the first rule whose "match" is a substring
 * of its conversation: the system prompt (Anthropic's "system" too) and
 * every message's content, joined by newlines; a rule without "match"
 * matches every request.  The n-th request a rule matched gets
 * replies[n-1] and statuses[n-1], the last one once past the end
 * ("reply" and "status": the same for every call; no reply: the story).
 * A status other than 200 answers with an error body in the provider's
 * shape (as mode=status); else the reply is streamed as with reply=TEXT,
 * at the rule's ttft, tps and token_size, else the request's.  The
 * query's reply, reply_N, status and status_N win over the rule (which
 * still counts the request).  An untagged POST /stats/reset (or GET
 * /reset) restarts the rules' counts.
 *
 * Control endpoints: GET /stats[?tag=X], POST /stats/reset[?tag=X] (also
 * GET /reset), GET /last[?tag=X] (the last LLM request, headers and
 * body), GET /health.  A stream is aborted when the client closes first,
 * completed when the mock ended it (cut included).  /stats also has
 * "connections": the connections accepted since the start, whatever the
 * tag (never reset), so that a client's connection reuse shows.
 */

#define _GNU_SOURCE

#include <sys/types.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>


#define MOCK_MAX_BODY       (1024 * 1024)
#define MOCK_MAX_HEADER     (32 * 1024)
#define MOCK_OUT_HIWAT      (64 * 1024)
#define MOCK_OUT_LOWAT      (16 * 1024)
#define MOCK_TAGS           1024
#define MOCK_TAG_LEN        64
#define MOCK_MAX_TOKENS     10000000L
#define MOCK_ECHO_CHUNK     4
#define MOCK_BURST          16


typedef struct {
    char                *data;
    size_t               pos;        /* first unconsumed byte */
    size_t               len;        /* end of the data */
    size_t               cap;
} buf_t;


typedef struct {
    uint64_t             requests;
    uint64_t             started;
    uint64_t             completed;
    uint64_t             aborted;
    uint64_t             tokens;
    int64_t              active;     /* a gauge: never reset */
} counters_t;


typedef struct {
    size_t               tag_len;
    char                 tag[MOCK_TAG_LEN];
    counters_t           cnt;
    char                *last;       /* rendered /last JSON */
    size_t               last_len;
} tag_slot_t;


/* the numbers of the query, of the options and of the script's rules */

enum { N_TOKENS, N_TPS, N_TTFT, N_TOKEN_SIZE, N_AFTER, N_STATUS, N_NUMS };

static const struct {
    const char          *name;
    long                 max;
} nums[N_NUMS] = {
    { "tokens", MOCK_MAX_TOKENS }, { "tps", 1000000 },
    { "ttft", 3600000 }, { "token_size", 65536 },
    { "after", MOCK_MAX_TOKENS }, { "status", 599 }
};


typedef struct {
    long                 num[N_NUMS];    /* -1: not given */
    int                  mode;           /* -1: not given */
    int                  stamp;
    int                  chunked;
    int                  has_tag;
    size_t               tag_len;
    char                 tag[MOCK_TAG_LEN];
    char                *expect_key;
    char                *type;
} query_t;


enum { S_READ, S_GEN, S_WAIT, S_FLUSH };
enum { P_NONE, P_OPENAI, P_ANTHROPIC };
enum { M_NORMAL, M_ECHO, M_STATUS, M_CUT, M_STALL, M_STREAM_ERROR,
       M_GARBAGE, M_HANG };

static const char *mode_names[] = {
    "normal", "echo", "status", "cut", "stall", "stream_error", "garbage",
    "hang", NULL
};


typedef struct conn_s  conn_t;

struct conn_s {
    int                  fd;
    int                  heap_idx;
    uint64_t             deadline;
    conn_t              *prev;
    conn_t              *next;
    char                 peer[64];
    buf_t                in;
    buf_t                out;

    /* from here on, one request: conn_reset() frees and zeroes it */
    int                  state;
    int                  closing;    /* close once the answer is out */
    char                 method[16];
    char                *uri;
    const char          *qs;         /* the query string, in uri */
    int                  http11;
    int                  keepalive;
    size_t               clen;
    int                  expect100;
    size_t               hdr_size;   /* the request head, from in.pos */
    char                *auth;
    char                *xkey;
    char                *aver;
    char                *ctype;
    uint64_t             t_start;

    /* the generation */
    query_t              q;
    tag_slot_t          *tag;
    int                  prov;
    int                  mode;
    int                  stream;
    int                  usage;
    int                  chunked;
    int                  in_stream;  /* counted as active */
    int                  blocked;    /* waits for the output to drain */
    int                  status;
    int                  length_cut;
    int                  has_text;   /* tokens are cut from text */
    char                *model;
    char                *model_json;
    long long            created;
    long                 limit;
    long                 emitted;
    long                 fail_at;
    long                 prompt_tokens;
    long                 token_size;
    uint64_t             interval;
    uint64_t             next_due;
    buf_t                text;       /* the echo text or the reply */
    size_t               text_pos;
    buf_t                acc;        /* the text of a non-stream reply */
};


static struct {
    const char          *listen;
    const char          *blackhole;
    const char          *script;
    long                 num[N_AFTER];
    int                  quiet;
} cfg = { "127.0.0.1:8088", NULL, NULL, { 60, 30, 300, 0 }, 0 };


static volatile sig_atomic_t  g_stop;
static int                    g_ep = -1;
static int                    g_lfd = -1;
static uint64_t               g_accept_resume;
static uint64_t               g_connections;  /* accepted, never reset */
static conn_t                *g_conns;
static conn_t               **g_heap;
static size_t                 g_heap_n;
static size_t                 g_heap_cap;
static tag_slot_t             g_all;
static tag_slot_t             g_tags[MOCK_TAGS];
static size_t                 g_ntags;
static json_t                *g_script;     /* the rules */
static uint64_t              *g_script_n;   /* the requests each matched */
static buf_t                  g_tmp;        /* bodies being built */
static buf_t                  g_conv;       /* a request's conversation */
static buf_t                  g_ev;         /* SSE events */
static buf_t                  g_tok;        /* one token */

static const char  g_story[] =
    " Once upon a time, in a village by the sea, there lived an old"
    " lighthouse keeper named Elsa. Every night she climbed the winding"
    " stairs to light the lamp, and every morning she wrote a letter to"
    " the ships that had passed. Nobody ever answered, until one stormy"
    " evening a small boat returned her letters, tied with a red ribbon.";

static size_t   g_words[128];    /* offsets of the spaces in g_story */
static size_t   g_nwords;


/* utilities */

static void *
xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (p == NULL) {
        fprintf(stderr, "llm-mock: out of memory\n");
        exit(2);
    }
    return p;
}


static char *
xstrndup(const char *s, size_t n)
{
    char  *p;

    p = xrealloc(NULL, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}


static uint64_t
clock_us(clockid_t id)
{
    struct timespec  ts;

    clock_gettime(id, &ts);
    return (uint64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}


#define now_us()  clock_us(CLOCK_MONOTONIC)


static void
buf_reserve(buf_t *b, size_t n)
{
    if (b->pos == b->len) {
        b->pos = b->len = 0;
    }

    if (b->cap - b->len >= n) {
        return;
    }

    if (b->pos) {
        memmove(b->data, b->data + b->pos, b->len - b->pos);
        b->len -= b->pos;
        b->pos = 0;
    }

    while (b->cap - b->len < n) {
        b->cap = b->cap ? b->cap * 2 : 512;
    }

    b->data = xrealloc(b->data, b->cap);
}


static void
buf_free(buf_t *b)
{
    free(b->data);
    memset(b, 0, sizeof(buf_t));
}


static void
buf_add(buf_t *b, const void *p, size_t n)
{
    if (n) {
        buf_reserve(b, n);
        memcpy(b->data + b->len, p, n);
        b->len += n;
    }
}


#define buf_adds(b, s)  buf_add(b, s, strlen(s))


static void
buf_addf(buf_t *b, const char *fmt, ...)
{
    int      n;
    va_list  ap;

    buf_reserve(b, 128);

    for ( ;; ) {
        va_start(ap, fmt);
        n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);

        if (n < 0 || (size_t) n < b->cap - b->len) {
            b->len += n < 0 ? 0 : n;
            return;
        }

        buf_reserve(b, n + 1);
    }
}


/*
 * A JSON string literal, for the token frames (the hot path: no jansson).
 * The texts are UTF-8 already: the story, stamps, and strings that
 * jansson decoded or checked.
 */

static void
buf_add_jstr(buf_t *b, const char *s, size_t n)
{
    static const char     hex[] = "0123456789abcdef";
    const unsigned char  *p, *end, *run;
    char                  esc[6] = { '\\', 'u', '0', '0' };

    p = (const unsigned char *) s;
    end = p + n;
    buf_add(b, "\"", 1);

    for ( ;; ) {
        for (run = p; p < end && *p >= 0x20 && *p != '"' && *p != '\\'; p++)
        {
            /* void */
        }

        buf_add(b, run, p - run);

        if (p == end) {
            break;
        }

        switch (*p) {
        case '"':  buf_add(b, "\\\"", 2); break;
        case '\\': buf_add(b, "\\\\", 2); break;
        case '\n': buf_add(b, "\\n", 2); break;
        case '\r': buf_add(b, "\\r", 2); break;
        case '\t': buf_add(b, "\\t", 2); break;
        default:
            esc[4] = hex[*p >> 4];
            esc[5] = hex[*p & 0xf];
            buf_add(b, esc, 6);
        }

        p++;
    }

    buf_add(b, "\"", 1);
}


/* a JSON string of any bytes (those that are not UTF-8 become '?') */

static json_t *
jstr(const char *s, size_t n)
{
    json_t  *j;
    char    *t;
    size_t   i;

    if (s == NULL) {
        return json_null();
    }

    j = json_stringn(s, n);

    if (j == NULL) {
        t = xstrndup(s, n);
        for (i = 0; i < n; i++) {
            t[i] = (unsigned char) t[i] >= 0x80 ? '?' : t[i];
        }
        j = json_stringn(t, n);
        free(t);
    }

    return j;
}


#define jstrz(s)  jstr(s, (s) ? strlen(s) : 0)


static int
num_parse(const char *v, long max, long *out)
{
    long         n;
    const char  *p;

    for (n = 0, p = v; *p >= '0' && *p <= '9'; p++) {
        n = n * 10 + (*p - '0');
        if (n > max) {
            return -1;
        }
    }

    if (p == v || *p) {
        return -1;
    }

    *out = n;
    return 0;
}


static int
status_ok(long s)
{
    return s >= 200 && s <= 599 && s != 204 && s != 304;
}


/* timers: one min-heap of connections */

static void
heap_swap(size_t i, size_t j)
{
    conn_t  *t;

    t = g_heap[i];
    g_heap[i] = g_heap[j];
    g_heap[j] = t;
    g_heap[i]->heap_idx = (int) i;
    g_heap[j]->heap_idx = (int) j;
}


static void
heap_fix(size_t i)
{
    size_t  l, m;

    while (i && g_heap[(i - 1) / 2]->deadline > g_heap[i]->deadline) {
        heap_swap(i, (i - 1) / 2);
        i = (i - 1) / 2;
    }

    for ( ;; ) {
        l = 2 * i + 1;
        m = i;

        if (l < g_heap_n && g_heap[l]->deadline < g_heap[m]->deadline) {
            m = l;
        }

        if (l + 1 < g_heap_n && g_heap[l + 1]->deadline < g_heap[m]->deadline)
        {
            m = l + 1;
        }

        if (m == i) {
            return;
        }

        heap_swap(i, m);
        i = m;
    }
}


static void
timer_set(conn_t *c, uint64_t at)
{
    c->deadline = at;

    if (c->heap_idx < 0) {
        if (g_heap_n == g_heap_cap) {
            g_heap_cap = g_heap_cap ? g_heap_cap * 2 : 1024;
            g_heap = xrealloc(g_heap, g_heap_cap * sizeof(conn_t *));
        }

        c->heap_idx = (int) g_heap_n;
        g_heap[g_heap_n++] = c;
    }

    heap_fix(c->heap_idx);
}


static void
timer_del(conn_t *c)
{
    size_t  i;

    if (c->heap_idx < 0) {
        return;
    }

    i = c->heap_idx;
    c->heap_idx = -1;

    if (i != --g_heap_n) {
        g_heap[i] = g_heap[g_heap_n];
        g_heap[i]->heap_idx = (int) i;
        heap_fix(i);
    }
}


/* statistics */

#define CNT(c, f, n)                                                          \
    do {                                                                      \
        g_all.cnt.f += (n);                                                   \
        if ((c)->tag) {                                                       \
            (c)->tag->cnt.f += (n);                                           \
        }                                                                     \
    } while (0)


static tag_slot_t *
tag_find(const char *tag, size_t len, int create)
{
    size_t       i;
    tag_slot_t  *s;

    for (i = 0; i < g_ntags; i++) {
        if (g_tags[i].tag_len == len && memcmp(g_tags[i].tag, tag, len) == 0)
        {
            return &g_tags[i];
        }
    }

    if (!create || g_ntags == MOCK_TAGS) {
        return NULL;
    }

    s = &g_tags[g_ntags++];
    s->tag_len = len;
    memcpy(s->tag, tag, len);

    return s;
}


static void
tag_reset(tag_slot_t *s)
{
    int64_t  active;

    active = s->cnt.active;
    memset(&s->cnt, 0, sizeof(counters_t));
    s->cnt.active = active;
    free(s->last);
    s->last = NULL;
    s->last_len = 0;
}


static void
mock_log(conn_t *c, const char *what)
{
    if (cfg.quiet) {
        return;
    }

    if (c->prov == P_NONE) {
        fprintf(stderr, "llm-mock: %s \"%s %s\" %d\n", c->peer, c->method,
                c->uri ? c->uri : "-", c->status);
        return;
    }

    fprintf(stderr, "llm-mock: %s \"%s %s\" %d %s%s mode=%s %s tokens=%ld "
            "%llums\n", c->peer, c->method, c->uri, c->status,
            c->prov == P_OPENAI ? "openai" : "anthropic",
            c->stream ? " stream" : "", mode_names[c->mode], what,
            c->emitted,
            (unsigned long long) (now_us() - c->t_start) / 1000);
}


static void
stream_end(conn_t *c, int completed)
{
    if (!c->in_stream) {
        return;
    }

    c->in_stream = 0;
    CNT(c, active, -1);

    if (completed) {
        CNT(c, completed, 1);
    } else {
        CNT(c, aborted, 1);
    }

    mock_log(c, completed ? "completed" : "aborted");
}


/* connections */

static void
conn_reset(conn_t *c)
{
    free(c->uri);
    free(c->auth);
    free(c->xkey);
    free(c->aver);
    free(c->ctype);
    free(c->q.expect_key);
    free(c->q.type);
    free(c->model);
    free(c->model_json);
    buf_free(&c->text);
    buf_free(&c->acc);

    memset(&c->state, 0, sizeof(conn_t) - offsetof(conn_t, state));
    c->fail_at = -1;

    if (c->out.cap > 65536) {
        buf_free(&c->out);
    }
}


static void
conn_close(conn_t *c)
{
    timer_del(c);
    close(c->fd);

    if (c->prev) {
        c->prev->next = c->next;
    } else {
        g_conns = c->next;
    }

    if (c->next) {
        c->next->prev = c->prev;
    }

    conn_reset(c);
    buf_free(&c->in);
    buf_free(&c->out);
    free(c);
}


static void
conn_peer_gone(conn_t *c)
{
    stream_end(c, 0);
    conn_close(c);
}


static const char *
reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 529: return "Overloaded";
    default:  return "Mock Status";
    }
}


static void
respond(conn_t *c, int status, const char *body, size_t len)
{
    c->closing |= !c->keepalive;

    buf_addf(&c->out, "HTTP/1.1 %d %s\r\n"
             "Server: llm-mock\r\n"
             "Content-Type: application/json\r\n"
             "Content-Length: %zu\r\n"
             "Connection: %s\r\n\r\n",
             status, reason(status), len,
             c->closing ? "close" : "keep-alive");
    buf_add(&c->out, body, len);

    c->state = S_FLUSH;
    c->status = status;

    if (!c->in_stream) {
        mock_log(c, "answered");
    }
}


#define respond_lit(c, status, lit)  respond(c, status, lit, sizeof(lit) - 1)


/* answers with j (which it takes); nl: a newline after it */

static void
respond_json(conn_t *c, int status, json_t *j, int nl)
{
    char  *s;

    s = json_dumps(j, JSON_COMPACT);
    json_decref(j);

    g_tmp.pos = g_tmp.len = 0;
    buf_adds(&g_tmp, s ? s : "{}");
    buf_adds(&g_tmp, nl ? "\n" : "");
    free(s);

    respond(c, status, g_tmp.data, g_tmp.len);
}


/* an error in the style of the provider of the endpoint (else OpenAI's) */

static void
llm_error(conn_t *c, int status, const char *type, const char *msg,
    const char *code)
{
    json_t  *j;

    if (c->prov == P_ANTHROPIC) {
        j = json_pack("{s:s,s:{s:s,s:s}}", "type", "error", "error",
                      "type", type, "message", msg);
    } else {
        j = json_pack("{s:{s:s,s:s,s:s?}}", "error", "message", msg,
                      "type", type, "code", code);
    }

    respond_json(c, status, j, 0);
}


/* an error of the HTTP layer: the connection is closed after it */

static void
http_error(conn_t *c, int status, const char *msg)
{
    if (c->method[0] == '\0') {
        strcpy(c->method, "-");
    }

    c->closing = 1;
    llm_error(c, status, "invalid_request_error", msg, NULL);
}


/*
 * Writes what is queued.  Returns -1 when the connection is gone, 1 when
 * a keep-alive response is done and the next request may be parsed.
 */

static int
conn_flush(conn_t *c)
{
    ssize_t  n;

    while (c->out.pos < c->out.len) {
        n = send(c->fd, c->out.data + c->out.pos, c->out.len - c->out.pos,
                 MSG_NOSIGNAL);

        if (n > 0) {
            c->out.pos += n;
            continue;
        }

        if (n < 0 && errno == EINTR) {
            continue;
        }

        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0;
        }

        conn_peer_gone(c);
        return -1;
    }

    c->out.pos = c->out.len = 0;

    if (c->state != S_FLUSH) {
        return 0;
    }

    stream_end(c, 1);

    if (c->closing) {
        conn_close(c);
        return -1;
    }

    conn_reset(c);
    return 1;
}


/* SSE output: g_ev holds the events to send */

static void
ev_end(conn_t *c)
{
    if (g_ev.len == 0) {
        return;
    }

    if (c->chunked) {
        buf_addf(&c->out, "%zx\r\n", g_ev.len);
    }

    buf_add(&c->out, g_ev.data, g_ev.len);

    if (c->chunked) {
        buf_add(&c->out, "\r\n", 2);
    }

    g_ev.pos = g_ev.len = 0;
}


static void
oa_chunk_start(conn_t *c)
{
    buf_addf(&g_ev, "data: {\"id\":\"chatcmpl-mock\","
             "\"object\":\"chat.completion.chunk\",\"created\":%lld,"
             "\"model\":%s,", c->created, c->model_json);
}


static void
stream_headers(conn_t *c)
{
    buf_addf(&c->out, "HTTP/1.1 200 OK\r\n"
             "Server: llm-mock\r\n"
             "Content-Type: %s\r\n"
             "Cache-Control: no-cache\r\n"
             "%s"
             "Connection: %s\r\n\r\n",
             c->q.type ? c->q.type : "text/event-stream",
             c->chunked ? "Transfer-Encoding: chunked\r\n" : "",
             c->keepalive ? "keep-alive" : "close");

    if (c->prov == P_OPENAI) {
        oa_chunk_start(c);
        buf_adds(&g_ev, "\"choices\":[{\"index\":0,\"delta\":{\"role\":"
                 "\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}"
                 "\n\n");

    } else {
        buf_addf(&g_ev, "event: message_start\ndata: {\"type\":"
                 "\"message_start\",\"message\":{\"id\":\"msg_mock\","
                 "\"type\":\"message\",\"role\":\"assistant\","
                 "\"content\":[],\"model\":%s,\"stop_reason\":null,"
                 "\"stop_sequence\":null,\"usage\":{\"input_tokens\":%ld,"
                 "\"output_tokens\":1}}}\n\n", c->model_json,
                 c->prompt_tokens);
        buf_adds(&g_ev, "event: content_block_start\ndata: {\"type\":"
                 "\"content_block_start\",\"index\":0,\"content_block\":"
                 "{\"type\":\"text\",\"text\":\"\"}}\n\n");
        buf_adds(&g_ev, "event: ping\ndata: {\"type\":\"ping\"}\n\n");
    }

    ev_end(c);
}


/* the last events, then the end of the stream */

static void
stream_terminate(conn_t *c)
{
    ev_end(c);

    if (c->chunked) {
        buf_add(&c->out, "0\r\n\r\n", 5);
    }

    c->state = S_FLUSH;
    c->closing = !(c->chunked && c->keepalive);
    c->status = 200;
}


/* the generation */

#define is_ws(ch)                                                             \
    ((ch) == ' ' || (ch) == '\n' || (ch) == '\t' || (ch) == '\r')


/*
 * The length of the token of c->text at pos: token_size bytes (echo: 4)
 * or a word with the white space before it; never a part of a UTF-8
 * character.
 */

static size_t
text_cut(conn_t *c, size_t pos)
{
    const unsigned char  *p, *q, *end;
    size_t                n;

    p = (const unsigned char *) c->text.data + pos;
    end = (const unsigned char *) c->text.data + c->text.len;
    n = c->token_size > 0 ? (size_t) c->token_size
        : c->mode == M_ECHO ? MOCK_ECHO_CHUNK : 0;

    if (n) {
        q = p + (n < (size_t) (end - p) ? n : (size_t) (end - p));
        while (q < end && (*q & 0xc0) == 0x80) {
            q++;
        }
        return q - p;
    }

    for (q = p; q < end && is_ws(*q); q++) { /* void */ }
    for ( ; q < end && !is_ws(*q); q++) { /* void */ }

    return q - p;
}


static void
gen_token_text(conn_t *c, buf_t *t)
{
    size_t       n, off, len, i;
    const char  *w;

    t->pos = t->len = 0;

    if (c->q.stamp) {
        buf_addf(t, "%llu ", (unsigned long long) clock_us(CLOCK_REALTIME));
        return;
    }

    if (c->has_text) {
        n = text_cut(c, c->text_pos);
        buf_add(t, c->text.data + c->text_pos, n);
        c->text_pos += n;
        return;
    }

    len = sizeof(g_story) - 1;

    if (c->token_size > 0) {
        /* a cut of the endless story " Once upon ... ribbon. Once ..." */
        off = ((size_t) c->emitted * (size_t) c->token_size + 1) % len;
        buf_reserve(t, c->token_size);

        for (i = 0; i < (size_t) c->token_size; i++) {
            t->data[t->len++] = g_story[off];
            off = (off + 1) % len;
        }
        return;
    }

    i = c->emitted % g_nwords;
    w = g_story + g_words[i];
    n = (i + 1 < g_nwords ? g_words[i + 1] : len) - g_words[i];

    if (c->emitted == 0) {
        w++;
        n--;
    }

    buf_add(t, w, n);
}


static void
gen_emit(conn_t *c)
{
    gen_token_text(c, &g_tok);
    CNT(c, tokens, 1);

    if (!c->stream) {
        buf_add(&c->acc, g_tok.data, g_tok.len);
        return;
    }

    if (c->prov == P_OPENAI) {
        oa_chunk_start(c);
        buf_adds(&g_ev, "\"choices\":[{\"index\":0,\"delta\":{\"content\":");
        buf_add_jstr(&g_ev, g_tok.data, g_tok.len);
        buf_adds(&g_ev, "},\"finish_reason\":null}]}\n\n");

    } else {
        buf_adds(&g_ev, "event: content_block_delta\ndata: {\"type\":"
                 "\"content_block_delta\",\"index\":0,\"delta\":{\"type\":"
                 "\"text_delta\",\"text\":");
        buf_add_jstr(&g_ev, g_tok.data, g_tok.len);
        buf_adds(&g_ev, "}}\n\n");
    }

    ev_end(c);
}


static void
gen_finish(conn_t *c)
{
    const char  *reason, *text;
    json_t      *j;

    if (c->prov == P_OPENAI) {
        reason = c->length_cut ? "length" : "stop";
    } else {
        reason = c->length_cut ? "max_tokens" : "end_turn";
    }

    if (!c->stream) {
        text = c->acc.data ? c->acc.data : "";

        if (c->prov == P_OPENAI) {
            j = json_pack("{s:s,s:s,s:I,s:s,s:[{s:i,s:{s:s,s:s%},s:s}],"
                          "s:{s:i,s:i,s:i}}",
                          "id", "chatcmpl-mock", "object", "chat.completion",
                          "created", (json_int_t) c->created,
                          "model", c->model, "choices", "index", 0,
                          "message", "role", "assistant",
                          "content", text, c->acc.len,
                          "finish_reason", reason, "usage",
                          "prompt_tokens", (int) c->prompt_tokens,
                          "completion_tokens", (int) c->emitted,
                          "total_tokens",
                          (int) (c->prompt_tokens + c->emitted));
        } else {
            j = json_pack("{s:s,s:s,s:s,s:s,s:[{s:s,s:s%}],s:s,s:n,"
                          "s:{s:i,s:i}}",
                          "id", "msg_mock", "type", "message",
                          "role", "assistant", "model", c->model,
                          "content", "type", "text", "text", text,
                          c->acc.len, "stop_reason", reason,
                          "stop_sequence", "usage",
                          "input_tokens", (int) c->prompt_tokens,
                          "output_tokens", (int) c->emitted);
        }

        respond_json(c, 200, j, 0);
        return;
    }

    if (c->prov == P_OPENAI) {
        oa_chunk_start(c);
        buf_addf(&g_ev, "\"choices\":[{\"index\":0,\"delta\":{},"
                 "\"finish_reason\":\"%s\"}]}\n\n", reason);

        if (c->usage) {
            oa_chunk_start(c);
            buf_addf(&g_ev, "\"choices\":[],\"usage\":{\"prompt_tokens\":%ld,"
                     "\"completion_tokens\":%ld,\"total_tokens\":%ld}}\n\n",
                     c->prompt_tokens, c->emitted,
                     c->prompt_tokens + c->emitted);
        }

        buf_adds(&g_ev, "data: [DONE]\n\n");

    } else {
        buf_adds(&g_ev, "event: content_block_stop\ndata: {\"type\":"
                 "\"content_block_stop\",\"index\":0}\n\n");
        buf_addf(&g_ev, "event: message_delta\ndata: {\"type\":"
                 "\"message_delta\",\"delta\":{\"stop_reason\":\"%s\","
                 "\"stop_sequence\":null},\"usage\":{\"output_tokens\":%ld}}"
                 "\n\n", reason, c->emitted);
        buf_adds(&g_ev, "event: message_stop\ndata: {\"type\":"
                 "\"message_stop\"}\n\n");
    }

    stream_terminate(c);
}


static void
gen_fail(conn_t *c)
{
    int  oa;

    oa = (c->prov == P_OPENAI);

    switch (c->mode) {

    case M_CUT:
        if (!c->stream) {
            buf_adds(&c->out, "HTTP/1.1 200 OK\r\nServer: llm-mock\r\n"
                     "Content-Type: application/json\r\n"
                     "Content-Length: 4096\r\nConnection: close\r\n\r\n"
                     "{\"id\":\"chatcmpl-mock\",");
        }
        c->state = S_FLUSH;
        c->closing = 1;
        c->status = 200;
        return;

    case M_STALL:
        c->state = S_WAIT;
        return;

    case M_STREAM_ERROR:
        if (!c->stream) {
            llm_error(c, oa ? 500 : 529,
                      oa ? "server_error" : "overloaded_error",
                      "mock overloaded", NULL);
            return;
        }

        buf_adds(&g_ev, oa ? "data: {\"error\":{\"message\":"
                 "\"mock overloaded\",\"type\":\"server_error\"}}\n\n"
                 : "event: error\ndata: {\"type\":\"error\",\"error\":"
                 "{\"type\":\"overloaded_error\",\"message\":"
                 "\"mock overloaded\"}}\n\n");
        stream_terminate(c);
        return;

    default: /* M_GARBAGE */
        if (!c->stream) {
            respond_lit(c, 200, "{not json");
            return;
        }

        buf_adds(&g_ev, oa ? "data: {not json\n\n"
                 : "event: content_block_delta\ndata: {not json\n\n");
        stream_terminate(c);
    }
}


static void
gen_step(conn_t *c, uint64_t now)
{
    while (c->state == S_GEN) {

        if (c->next_due > now) {
            timer_set(c, c->next_due);
            return;
        }

        if (c->out.len - c->out.pos >= MOCK_OUT_HIWAT) {
            c->blocked = 1;
            return;
        }

        if (c->emitted == c->fail_at) {
            gen_fail(c);
            return;
        }

        if (c->emitted >= c->limit) {
            gen_finish(c);
            return;
        }

        gen_emit(c);
        c->emitted++;
        c->next_due += c->interval;

        if (c->emitted >= c->limit && c->fail_at != c->emitted) {
            /* the end follows the last token at once */
            gen_finish(c);
            return;
        }
    }
}


/* returns like conn_flush() */

static int
gen_run(conn_t *c)
{
    int  rc, n;

    for (n = 0; ; n++) {
        if (n == MOCK_BURST) {
            /* let the other connections run */
            c->blocked = 0;
            timer_set(c, now_us() + 1);
            return 0;
        }

        c->blocked = 0;
        gen_step(c, now_us());

        rc = conn_flush(c);
        if (rc != 0) {
            return rc;
        }

        if (c->state != S_GEN || !c->blocked
            || c->out.len - c->out.pos >= MOCK_OUT_LOWAT)
        {
            return 0;
        }
    }
}


/* the query string */

static int
hexval(int ch)
{
    return (ch >= '0' && ch <= '9') ? ch - '0'
           : (ch >= 'a' && ch <= 'f') ? ch - 'a' + 10
           : (ch >= 'A' && ch <= 'F') ? ch - 'A' + 10 : -1;
}


/* the decoded value of the last parameter "name" (malloc()ed), or NULL */

static char *
query_get(const char *qs, const char *name, size_t *len)
{
    const char  *amp, *eq, *end;
    char        *v;
    size_t       n, i, k;

    v = NULL;
    n = strlen(name);

    for ( ; qs && *qs; qs = amp ? amp + 1 : NULL) {
        amp = strchr(qs, '&');
        end = amp ? amp : qs + strlen(qs);
        eq = memchr(qs, '=', end - qs);

        if ((size_t) ((eq ? eq : end) - qs) != n || memcmp(qs, name, n) != 0)
        {
            continue;
        }

        eq = eq ? eq + 1 : end;
        free(v);
        v = xrealloc(NULL, end - eq + 1);

        for (i = 0, k = 0; eq + i < end; i++) {
            if (eq[i] == '%' && eq + i + 2 < end && hexval(eq[i + 1]) >= 0
                && hexval(eq[i + 2]) >= 0)
            {
                v[k++] = (char) (hexval(eq[i + 1]) * 16 + hexval(eq[i + 2]));
                i += 2;
            } else {
                v[k++] = eq[i] == '+' ? ' ' : eq[i];
            }
        }

        v[k] = '\0';
        *len = k;
    }

    return v;
}


/* a number parameter, left alone when absent; -1 when it is not valid */

static int
query_num(const char *qs, const char *name, long max, long *out)
{
    char    *v;
    size_t   len;
    int      rc;

    v = query_get(qs, name, &len);
    rc = v ? num_parse(v, max, out) : 0;
    free(v);

    return rc;
}


static int
query_parse(const char *qs, query_t *q)
{
    int      i;
    char    *v;
    size_t   len;

    for (i = 0; i < N_NUMS; i++) {
        q->num[i] = -1;
        if (query_num(qs, nums[i].name, nums[i].max, &q->num[i]) != 0) {
            return -1;
        }
    }

    if (q->num[N_STATUS] >= 0 && !status_ok(q->num[N_STATUS])) {
        return -1;
    }

    q->mode = -1;
    v = query_get(qs, "mode", &len);

    for (i = 0; v && mode_names[i]; i++) {
        if (strcmp(v, mode_names[i]) == 0) {
            q->mode = i;
        }
    }

    free(v);

    if (v && q->mode < 0) {
        return -1;
    }

    v = query_get(qs, "stamp", &len);
    q->stamp = v && strcmp(v, "1") == 0;
    free(v);

    v = query_get(qs, "chunked", &len);
    q->chunked = !v || strcmp(v, "0") != 0;
    free(v);

    v = query_get(qs, "tag", &len);
    if (v) {
        q->has_tag = 1;
        q->tag_len = len < MOCK_TAG_LEN ? len : MOCK_TAG_LEN - 1;
        memcpy(q->tag, v, q->tag_len);
        free(v);
    }

    q->expect_key = query_get(qs, "expect_key", &len);
    q->type = query_get(qs, "type", &len);

    return 0;
}


/* the LLM endpoints */

static void
record_last(conn_t *c, const char *body, size_t blen, int json_ok)
{
    const char  *p, *end, *nl, *colon, *v, *ve;
    tag_slot_t  *slots[2];
    json_t      *j, *h;
    char        *s;
    size_t       i;

    h = json_array();
    p = c->in.data + c->in.pos;
    end = p + c->hdr_size;
    p = memchr(p, '\n', end - p) + 1;    /* after the request line */

    for ( ; p < end && (nl = memchr(p, '\n', end - p)); p = nl + 1) {
        colon = memchr(p, ':', nl - p);
        if (colon == NULL) {
            continue;
        }

        for (v = colon + 1; v < nl && (*v == ' ' || *v == '\t'); v++) {
            /* void */
        }

        for (ve = nl; ve > v && (ve[-1] == '\r' || ve[-1] == ' '
                                 || ve[-1] == '\t'); ve--)
        {
            /* void */
        }

        json_array_append_new(h, json_pack("[o,o]", jstr(p, colon - p),
                                           jstr(v, ve - v)));
    }

    j = json_pack("{s:s,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o}",
                  "method", c->method, "uri", jstrz(c->uri),
                  "tag", c->q.has_tag ? jstr(c->q.tag, c->q.tag_len)
                                      : json_null(),
                  "authorization", jstrz(c->auth),
                  "x_api_key", jstrz(c->xkey),
                  "anthropic_version", jstrz(c->aver),
                  "content_type", jstrz(c->ctype), "headers", h,
                  "body", jstr(body, blen));

    /* then "json": the body as it came, when it is JSON */

    s = json_dumps(j, JSON_COMPACT);
    json_decref(j);

    g_tmp.pos = g_tmp.len = 0;
    buf_add(&g_tmp, s ? s : "{", s ? strlen(s) - 1 : 1);
    buf_adds(&g_tmp, ",\"json\":");
    buf_add(&g_tmp, json_ok ? body : "null", json_ok ? blen : 4);
    buf_adds(&g_tmp, "}\n");
    free(s);

    slots[0] = &g_all;
    slots[1] = c->tag;

    for (i = 0; i < 2; i++) {
        if (slots[i]) {
            free(slots[i]->last);
            slots[i]->last = xstrndup(g_tmp.data, g_tmp.len);
            slots[i]->last_len = g_tmp.len;
        }
    }
}


/* the text of a message "content": a string or an array of text parts */

static void
json_text(json_t *v, buf_t *out)
{
    size_t   i;
    json_t  *e;

    if (json_is_string(v)) {
        buf_add(out, json_string_value(v), json_string_length(v));
        return;
    }

    json_array_foreach(v, i, e) {
        if (!json_is_string(e)) {
            e = json_object_get(e, "text");
        }

        if (json_is_string(e)) {
            buf_add(out, json_string_value(e), json_string_length(e));
        }
    }
}


/*
 * Extracts the request fields, the conversation into g_conv (a C string)
 * and the echo text into c->text; returns an error message or NULL.
 */

static const char *
llm_extract(conn_t *c, json_t *root, long *max_tokens)
{
    json_t      *model, *msgs, *m, *role, *v;
    buf_t        sys, user;
    size_t       i, all, start;
    const char  *r, *err;

    if (!json_is_object(root)) {
        return "the request body must be a JSON object";
    }

    model = json_object_get(root, "model");
    if (!json_is_string(model)) {
        return "model: a string is required";
    }

    msgs = json_object_get(root, "messages");
    if (!json_is_array(msgs)) {
        return "messages: an array is required";
    }

    v = json_object_get(root, "stream");
    if (v && !json_is_boolean(v) && !json_is_null(v)) {
        return "stream: a boolean is required";
    }

    c->stream = json_is_true(v);
    c->usage = json_is_true(json_object_get(json_object_get(root,
                                  "stream_options"), "include_usage"));

    v = json_object_get(root, "max_tokens");
    if (v == NULL && c->prov == P_OPENAI) {
        v = json_object_get(root, "max_completion_tokens");
    }

    *max_tokens = -1;

    if (v == NULL || json_is_null(v)) {
        if (c->prov == P_ANTHROPIC) {
            return "max_tokens: Field required";
        }

    } else if (!json_is_integer(v) || json_integer_value(v) < 1) {
        return "max_tokens: a positive integer is required";

    } else {
        *max_tokens = json_integer_value(v) > MOCK_MAX_TOKENS
                      ? MOCK_MAX_TOKENS : (long) json_integer_value(v);
    }

    c->model = xstrndup(json_string_value(model), json_string_length(model));
    g_tmp.pos = g_tmp.len = 0;
    buf_add_jstr(&g_tmp, c->model, json_string_length(model));
    c->model_json = xstrndup(g_tmp.data, g_tmp.len);

    memset(&sys, 0, sizeof(buf_t));
    memset(&user, 0, sizeof(buf_t));
    g_conv.pos = g_conv.len = 0;
    err = NULL;

    if (c->prov == P_ANTHROPIC) {
        json_text(json_object_get(root, "system"), &sys);
        buf_add(&g_conv, sys.data, sys.len);
    }

    all = sys.len;

    json_array_foreach(msgs, i, m) {
        role = json_object_get(m, "role");
        if (!json_is_string(role)) {
            err = "messages: each message needs a string role";
            break;
        }

        buf_add(&g_conv, "\n", g_conv.len ? 1 : 0);
        start = g_conv.len;
        json_text(json_object_get(m, "content"), &g_conv);
        all += g_conv.len - start;
        r = json_string_value(role);

        if (strcmp(r, "user") == 0) {
            user.pos = user.len = 0;
            buf_add(&user, g_conv.data + start, g_conv.len - start);

        } else if (c->prov == P_OPENAI && (strcmp(r, "system") == 0
                                           || strcmp(r, "developer") == 0))
        {
            buf_add(&sys, g_conv.data + start, g_conv.len - start);
        }
    }

    buf_add(&g_conv, "", 1);
    c->prompt_tokens = (all + 3) / 4;

    if (c->mode == M_ECHO) {
        buf_add(&c->text, sys.data, sys.len);
        buf_add(&c->text, "|", 1);
        buf_add(&c->text, user.data, user.len);
        c->has_text = 1;
    }

    buf_free(&sys);
    buf_free(&user);

    return err;
}


static void
set_reply(conn_t *c, const char *s, size_t n)
{
    if (c->mode != M_ECHO) {
        c->text.pos = c->text.len = 0;
        buf_add(&c->text, s, n);
        c->has_text = 1;
    }
}


/* the n-th of a rule's "replies" or "statuses", else its "reply"/"status" */

static json_t *
rule_nth(json_t *rule, const char *many, const char *one, size_t n)
{
    json_t  *a;

    a = json_object_get(rule, many);
    if (a == NULL) {
        return json_object_get(rule, one);
    }

    n = n < json_array_size(a) ? n : json_array_size(a);
    return json_array_get(a, n - 1);
}


/*
 * The reply and status of the first rule that matches, then those of the
 * query for the n-th request of the tag; -1 for a bad query parameter.
 */

static int
script_reply(conn_t *c, long n, long *status)
{
    json_t  *rule, *v;
    size_t   i, k, len;
    char     name[32], *s;

    json_array_foreach(g_script, i, rule) {
        v = json_object_get(rule, "match");

        if (v && strstr(g_conv.data, json_string_value(v)) == NULL) {
            continue;
        }

        k = ++g_script_n[i];

        if ((v = rule_nth(rule, "replies", "reply", k))) {
            set_reply(c, json_string_value(v), json_string_length(v));
        }

        if ((v = rule_nth(rule, "statuses", "status", k))) {
            *status = json_integer_value(v);
        }

        for (k = N_TPS; k <= N_TOKEN_SIZE; k++) {
            if ((v = json_object_get(rule, nums[k].name))) {
                c->q.num[k] = json_integer_value(v);
            }
        }

        break;
    }

    snprintf(name, sizeof(name), "reply_%ld", n);
    s = query_get(c->qs, name, &len);
    s = s ? s : query_get(c->qs, "reply", &len);

    if (s) {
        v = json_stringn(s, len);    /* UTF-8? */
        if (v) {
            set_reply(c, s, len);
            json_decref(v);
        }
        free(s);

        if (v == NULL) {
            return -1;
        }
    }

    if (c->q.num[N_STATUS] >= 0) {
        *status = c->q.num[N_STATUS];
    }

    snprintf(name, sizeof(name), "status_%ld", n);

    if (query_num(c->qs, name, 599, status) != 0
        || (*status >= 0 && !status_ok(*status)))
    {
        return -1;
    }

    return 0;
}


static void
llm_request(conn_t *c, const char *body, size_t blen)
{
    json_t        *root;
    json_error_t   jerr;
    const char    *err, *key;
    long           max_tokens, total, after, ttft, tps, st, n;
    char           msg[256];

    CNT(c, requests, 1);
    n = (long) (c->tag ? c->tag : &g_all)->cnt.requests;

    root = json_loadb(body, blen, JSON_DECODE_ANY, &jerr);
    record_last(c, body, blen, root != NULL);

    if (c->prov == P_ANTHROPIC && c->aver == NULL) {
        llm_error(c, 400, "invalid_request_error",
                  "anthropic-version: header is required", NULL);
        goto done;
    }

    if (c->q.expect_key) {
        key = c->prov == P_ANTHROPIC ? c->xkey
              : (c->auth && strncmp(c->auth, "Bearer ", 7) == 0)
                ? c->auth + 7 : NULL;

        if (key == NULL || strcmp(key, c->q.expect_key) != 0) {
            if (c->prov == P_OPENAI) {
                llm_error(c, 401, "invalid_request_error",
                          "Incorrect API key provided (mock)",
                          "invalid_api_key");
            } else {
                llm_error(c, 401, "authentication_error",
                          "invalid x-api-key (mock)", NULL);
            }
            goto done;
        }
    }

    if (root == NULL) {
        snprintf(msg, sizeof(msg), "invalid JSON body: %s", jerr.text);
        llm_error(c, 400, "invalid_request_error", msg, NULL);
        goto done;
    }

    c->mode = c->q.mode >= 0 ? c->q.mode : M_NORMAL;
    st = -1;

    err = llm_extract(c, root, &max_tokens);

    if (err == NULL && script_reply(c, n, &st) != 0) {
        err = "bad query parameter";
    }

    if (err) {
        llm_error(c, 400, "invalid_request_error", err, NULL);
        goto done;
    }

    if (c->q.mode < 0 && st >= 0 && st != 200) {
        c->mode = M_STATUS;
    }

    if (c->mode == M_STATUS) {
        c->status = st >= 0 ? (int) st : 500;
        snprintf(msg, sizeof(msg), "mock error %d", c->status);
        llm_error(c, c->status,
                  c->prov == P_OPENAI ? "mock_error" : "api_error", msg,
                  NULL);
        goto done;
    }

    ttft = c->q.num[N_TTFT] >= 0 ? c->q.num[N_TTFT] : cfg.num[N_TTFT];
    tps = c->q.num[N_TPS] >= 0 ? c->q.num[N_TPS] : cfg.num[N_TPS];
    c->token_size = c->q.num[N_TOKEN_SIZE] >= 0 ? c->q.num[N_TOKEN_SIZE]
                                                : cfg.num[N_TOKEN_SIZE];
    c->interval = tps > 0 ? 1000000 / tps : 0;
    c->created = (long long) time(NULL);

    if (c->has_text) {
        for (total = 0; c->text_pos < c->text.len; total++) {
            c->text_pos += text_cut(c, c->text_pos);
        }
        c->text_pos = 0;

    } else {
        total = c->q.num[N_TOKENS] >= 0 ? c->q.num[N_TOKENS]
                                        : cfg.num[N_TOKENS];
    }

    c->limit = total;
    if (max_tokens >= 0 && max_tokens < total) {
        c->limit = max_tokens;
        c->length_cut = 1;
    }

    if (c->mode == M_CUT || c->mode == M_STALL || c->mode == M_STREAM_ERROR
        || c->mode == M_GARBAGE)
    {
        after = c->q.num[N_AFTER] >= 0 ? c->q.num[N_AFTER] : 3;
        c->fail_at = after < c->limit ? after : c->limit;
    }

    c->chunked = c->http11 && c->q.chunked;
    if (c->stream && !c->chunked) {
        c->keepalive = 0;
    }

    c->in_stream = 1;
    c->status = 200;
    CNT(c, started, 1);
    CNT(c, active, 1);

    if (c->mode == M_HANG) {
        c->status = 0;
        c->state = S_WAIT;
        goto done;
    }

    if (c->stream) {
        stream_headers(c);
    }

    c->state = S_GEN;
    c->next_due = now_us() + (uint64_t) ttft * 1000;
    timer_set(c, c->next_due);

done:

    json_decref(root);
}


/* the control endpoints */

static void
control_request(conn_t *c, const char *path)
{
    tag_slot_t  *s;
    counters_t   zero, *k;
    size_t       i;

    memset(&zero, 0, sizeof(counters_t));
    s = c->q.has_tag ? tag_find(c->q.tag, c->q.tag_len, 0) : &g_all;

    if (strcmp(path, "/stats") == 0 || strcmp(path, "/last") == 0) {
        if (strcmp(c->method, "GET") != 0) {
            http_error(c, 405, "use GET");

        } else if (path[1] == 's') {
            k = s ? &s->cnt : &zero;
            respond_json(c, 200, json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I}",
                         "requests", (json_int_t) k->requests,
                         "streams_started", (json_int_t) k->started,
                         "streams_completed", (json_int_t) k->completed,
                         "streams_aborted", (json_int_t) k->aborted,
                         "active", (json_int_t) k->active,
                         "tokens_sent", (json_int_t) k->tokens,
                         "connections", (json_int_t) g_connections), 1);

        } else if (s == NULL || s->last == NULL) {
            respond_lit(c, 404, "{\"error\":\"no request recorded\"}\n");

        } else {
            respond(c, 200, s->last, s->last_len);
        }

    } else if (strcmp(path, "/stats/reset") == 0
               || strcmp(path, "/reset") == 0)
    {
        if (strcmp(c->method, "GET") != 0 && strcmp(c->method, "POST") != 0)
        {
            http_error(c, 405, "use GET or POST");
            return;
        }

        if (c->q.has_tag) {
            if (s) {
                tag_reset(s);
            }

        } else {
            tag_reset(&g_all);

            for (i = 0; i < g_ntags; i++) {
                tag_reset(&g_tags[i]);
            }

            for (i = 0; i < json_array_size(g_script); i++) {
                g_script_n[i] = 0;
            }
        }

        respond_lit(c, 200, "{\"reset\":true}\n");

    } else if (strcmp(path, "/health") == 0 || strcmp(path, "/") == 0) {
        respond_lit(c, 200, "{\"status\":\"ok\",\"server\":\"llm-mock\"}\n");

    } else {
        llm_error(c, 404, "invalid_request_error", "not found (llm-mock)",
                  NULL);
    }
}


static void
conn_dispatch(conn_t *c, const char *body, size_t blen)
{
    char    *qs;
    size_t   len;

    c->t_start = now_us();

    qs = strchr(c->uri, '?');
    len = qs ? (size_t) (qs - c->uri) : strlen(c->uri);
    c->qs = qs ? qs + 1 : NULL;

    if (len >= 17 && memcmp(c->uri + len - 17, "/chat/completions", 17) == 0)
    {
        c->prov = P_OPENAI;
    } else if (len >= 9 && memcmp(c->uri + len - 9, "/messages", 9) == 0) {
        c->prov = P_ANTHROPIC;
    }

    if (query_parse(c->qs, &c->q) != 0) {
        if (c->prov == P_NONE) {
            http_error(c, 400, "bad query parameter");
        } else {
            llm_error(c, 400, "invalid_request_error", "bad query parameter",
                      NULL);
        }
        return;
    }

    if (c->prov == P_NONE) {
        qs = xstrndup(c->uri, len);
        control_request(c, qs);
        free(qs);
        return;
    }

    if (strcmp(c->method, "POST") != 0) {
        llm_error(c, 405, "invalid_request_error", "use POST", NULL);
        return;
    }

    if (c->q.has_tag) {
        c->tag = tag_find(c->q.tag, c->q.tag_len, 1);
    }

    llm_request(c, body, blen);
}


/* HTTP */

static int
hdr_is(const char *name, size_t len, const char *want)
{
    return strlen(want) == len && strncasecmp(name, want, len) == 0;
}


/* 1: parsed, 0: needs more, -1: an error response is queued */

static int
http_parse_head(conn_t *c, const char *base, size_t avail)
{
    enum { H_LENGTH, H_TE, H_CONNECTION, H_EXPECT, H_N };

    const char  *p, *end, *nl, *le, *sp1, *sp2, *colon, *v;
    char        *h[H_N], **dst;
    size_t       n;
    long         cl;
    int          rc, i;

    /* the head ends with an empty line */

    for (p = base; (nl = memchr(p, '\n', base + avail - p)); p = nl + 1) {
        if (nl == p || (nl == p + 1 && *p == '\r')) {
            break;
        }
    }

    if (nl == NULL || (size_t) (nl + 1 - base) > MOCK_MAX_HEADER) {
        if (avail > MOCK_MAX_HEADER) {
            http_error(c, 431, "request head too large");
            return -1;
        }
        return 0;
    }

    c->hdr_size = nl + 1 - base;
    end = nl + 1;

    /* the request line: METHOD /TARGET HTTP/1.x */

    nl = memchr(base, '\n', avail);
    le = (nl > base && nl[-1] == '\r') ? nl - 1 : nl;
    sp1 = memchr(base, ' ', le - base);
    sp2 = sp1 ? memchr(sp1 + 1, ' ', le - sp1 - 1) : NULL;

    if (sp2 == NULL || sp1 == base
        || (size_t) (sp1 - base) >= sizeof(c->method) || sp1[1] != '/'
        || le - sp2 != 9 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0
        || (sp2[8] != '0' && sp2[8] != '1'))
    {
        http_error(c, 400, "bad request line");
        return -1;
    }

    memcpy(c->method, base, sp1 - base);
    c->uri = xstrndup(sp1 + 1, sp2 - sp1 - 1);
    c->keepalive = c->http11 = (sp2[8] == '1');

    /* the headers */

    memset(h, 0, sizeof(h));
    rc = 1;

    for (p = nl + 1; p < end; p = nl + 1) {
        nl = memchr(p, '\n', end - p);
        le = (nl > p && nl[-1] == '\r') ? nl - 1 : nl;

        if (le == p) {
            break;
        }

        colon = memchr(p, ':', le - p);

        if (colon == NULL || colon == p) {
            http_error(c, 400, "bad header line");
            rc = -1;
            goto done;
        }

        n = colon - p;
        dst = hdr_is(p, n, "content-length") ? &h[H_LENGTH]
              : hdr_is(p, n, "transfer-encoding") ? &h[H_TE]
              : hdr_is(p, n, "connection") ? &h[H_CONNECTION]
              : hdr_is(p, n, "expect") ? &h[H_EXPECT]
              : hdr_is(p, n, "authorization") ? &c->auth
              : hdr_is(p, n, "x-api-key") ? &c->xkey
              : hdr_is(p, n, "anthropic-version") ? &c->aver
              : hdr_is(p, n, "content-type") ? &c->ctype : NULL;

        if (dst) {
            for (v = colon + 1; v < le && (*v == ' ' || *v == '\t'); v++) {
                /* void */
            }

            while (le > v && (le[-1] == ' ' || le[-1] == '\t')) {
                le--;
            }

            free(*dst);
            *dst = xstrndup(v, le - v);
        }
    }

    if (h[H_CONNECTION] && strcasestr(h[H_CONNECTION], "close")) {
        c->keepalive = 0;
    } else if (h[H_CONNECTION] && strcasestr(h[H_CONNECTION], "keep-alive")) {
        c->keepalive = 1;
    }

    c->expect100 = c->http11 && h[H_EXPECT]
                   && strcasecmp(h[H_EXPECT], "100-continue") == 0;
    cl = 0;

    if (h[H_TE]) {
        http_error(c, 501, "unsupported transfer-encoding");
        rc = -1;

    } else if (h[H_LENGTH]
               && num_parse(h[H_LENGTH], 999999999999999L, &cl) != 0)
    {
        http_error(c, 400, "bad content-length");
        rc = -1;

    } else if (cl > MOCK_MAX_BODY) {
        http_error(c, 413, "request body too large");
        rc = -1;
    }

    c->clen = cl;

done:

    for (i = 0; i < H_N; i++) {
        free(h[i]);
    }

    return rc;
}


/* parses and answers what is buffered; -1 when the connection is gone */

static int
conn_process(conn_t *c)
{
    const char  *base;
    size_t       avail;
    int          rc;

    while (c->state == S_READ && c->in.pos < c->in.len) {

        /* tolerate empty lines before a request */

        while (c->hdr_size == 0 && c->in.pos < c->in.len
               && (c->in.data[c->in.pos] == '\r'
                   || c->in.data[c->in.pos] == '\n'))
        {
            c->in.pos++;
        }

        base = c->in.data + c->in.pos;
        avail = c->in.len - c->in.pos;

        if (c->hdr_size == 0) {
            rc = avail ? http_parse_head(c, base, avail) : 0;

            if (rc == 0) {
                break;
            }

            if (rc < 0) {
                return conn_flush(c) < 0 ? -1 : 0;
            }
        }

        if (avail - c->hdr_size < c->clen) {
            if (c->expect100) {
                c->expect100 = 0;
                buf_adds(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
                return conn_flush(c) < 0 ? -1 : 0;
            }
            return 0;
        }

        conn_dispatch(c, base + c->hdr_size, c->clen);
        c->in.pos += c->hdr_size + c->clen;

        if (c->in.pos == c->in.len) {
            buf_free(&c->in);
        }

        rc = conn_flush(c);
        if (rc <= 0) {
            return rc;
        }
    }

    if (c->in.pos == c->in.len) {
        buf_free(&c->in);
    }

    return 0;
}


/*
 * Reads what has come: a request is buffered until it is whole; what
 * comes while an answer is under way is dropped, and the connection
 * closes after that answer (requests sent together are still served).
 */

static int
conn_read(conn_t *c)
{
    char     scratch[4096];
    ssize_t  n;

    for ( ;; ) {
        if (c->state != S_READ) {
            n = recv(c->fd, scratch, sizeof(scratch), 0);

            if (n > 0) {
                c->keepalive = 0;
                c->closing |= (c->state == S_FLUSH);
                continue;
            }

        } else if (c->in.len - c->in.pos > MOCK_MAX_HEADER + MOCK_MAX_BODY) {
            http_error(c, 413, "request too large");
            return conn_flush(c) < 0 ? -1 : 0;

        } else {
            buf_reserve(&c->in, 4096);
            n = recv(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len, 0);

            if (n > 0) {
                c->in.len += n;
                continue;
            }
        }

        if (n < 0 && errno == EINTR) {
            continue;
        }

        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return c->state == S_READ ? conn_process(c) : 0;
        }

        conn_peer_gone(c);
        return -1;
    }
}


static void
conn_event(conn_t *c, uint32_t ev)
{
    int  rc;

    if ((ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        && conn_read(c) < 0)
    {
        return;
    }

    if (ev & EPOLLOUT) {
        rc = conn_flush(c);

        if (rc == 0 && c->state == S_GEN && c->blocked
            && c->out.len - c->out.pos < MOCK_OUT_LOWAT)
        {
            rc = gen_run(c);
        }

        if (rc == 1) {
            conn_process(c);
        }
    }
}


/* listening */

static void
accept_pause(int on)
{
    struct epoll_event  ev;

    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    epoll_ctl(g_ep, on ? EPOLL_CTL_DEL : EPOLL_CTL_ADD, g_lfd, &ev);
    g_accept_resume = on ? now_us() + 100000 : 0;
}


static unsigned
addr_port(struct sockaddr_storage *ss)
{
    return ntohs(ss->ss_family == AF_INET6
                 ? ((struct sockaddr_in6 *) ss)->sin6_port
                 : ((struct sockaddr_in *) ss)->sin_port);
}


static void
do_accept(void)
{
    int                       fd, one;
    conn_t                   *c;
    socklen_t                 sl;
    struct epoll_event        ev;
    struct sockaddr_storage   ss;
    char                      host[INET6_ADDRSTRLEN];

    for ( ;; ) {
        sl = sizeof(ss);
        fd = accept4(g_lfd, (struct sockaddr *) &ss, &sl,
                     SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }

            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS
                || errno == ENOMEM)
            {
                fprintf(stderr, "llm-mock: accept: %s, pausing\n",
                        strerror(errno));
                accept_pause(1);
            }
            return;
        }

        g_connections++;

        one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

        c = xrealloc(NULL, sizeof(conn_t));
        memset(c, 0, sizeof(conn_t));
        c->fd = fd;
        c->heap_idx = -1;
        conn_reset(c);

        host[0] = '\0';
        inet_ntop(ss.ss_family, ss.ss_family == AF_INET6
                  ? (void *) &((struct sockaddr_in6 *) &ss)->sin6_addr
                  : (void *) &((struct sockaddr_in *) &ss)->sin_addr,
                  host, sizeof(host));
        snprintf(c->peer, sizeof(c->peer), "%s:%u", host, addr_port(&ss));

        c->next = g_conns;
        if (g_conns) {
            g_conns->prev = c;
        }
        g_conns = c;

        memset(&ev, 0, sizeof(ev));
        ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
        ev.data.ptr = c;

        if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            conn_close(c);
        }
    }
}


/* [HOST:]PORT, HOST may be [IPv6], empty or "*" for all addresses */

static int
listen_on(const char *spec, int backlog, struct sockaddr_storage *ss,
    socklen_t *sl)
{
    int               fd, one;
    char              host[256];
    const char       *port, *h;
    size_t            n;
    struct addrinfo   hints, *ai;

    h = spec;
    port = strrchr(spec, ':');
    n = port ? (size_t) (port - spec) : 0;
    port = port ? port + 1 : spec;

    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
        h++;
        n -= 2;
    }

    snprintf(host, sizeof(host), "%.*s", (int) n, h);

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;

    if (getaddrinfo(port == spec ? "127.0.0.1"
                    : (host[0] == '\0' || strcmp(host, "*") == 0)
                      ? "0.0.0.0" : host, port, &hints, &ai) != 0)
    {
        fprintf(stderr, "llm-mock: bad address \"%s\"\n", spec);
        return -1;
    }

    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *sl = ai->ai_addrlen;
    freeaddrinfo(ai);

    fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                0);
    one = 1;

    if (fd < 0
        || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0
        || bind(fd, (struct sockaddr *) ss, *sl) != 0
        || listen(fd, backlog) != 0)
    {
        fprintf(stderr, "llm-mock: listen on %s: %s\n", spec,
                strerror(errno));
        return -1;
    }

    getsockname(fd, (struct sockaddr *) ss, sl);
    return fd;
}


/*
 * A listener with backlog 0 that never accepts: once one connection sits
 * in its accept queue, Linux drops further SYNs, so connects time out.
 * The descriptors stay open until the mock exits.
 */

static int
blackhole_start(const char *spec)
{
    int                      i, fd;
    socklen_t                sl;
    struct pollfd            pfd;
    struct sockaddr_storage  ss;

    if (listen_on(spec, 0, &ss, &sl) < 0) {
        return -1;
    }

    for (i = 0; i < 4; i++) {
        fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    0);

        if (fd < 0 || (connect(fd, (struct sockaddr *) &ss, sl) != 0
                       && errno != EINPROGRESS))
        {
            perror("llm-mock: blackhole connect");
            return -1;
        }

        pfd.fd = fd;
        pfd.events = POLLOUT;
        pfd.revents = 0;

        if (poll(&pfd, 1, i < 2 ? 200 : 100) > 0 && i == 3) {
            fprintf(stderr, "llm-mock: warning: blackhole port %u still "
                    "accepts connections\n", addr_port(&ss));
        }
    }

    if (!cfg.quiet) {
        fprintf(stderr, "llm-mock: blackhole on port %u\n", addr_port(&ss));
    }

    return 0;
}


/* the script: checked once, so that requests can trust it */

static int
script_load(const char *file)
{
    json_error_t   jerr;
    json_t        *rule, *replies, *statuses, *v;
    json_int_t     status, pace[3];
    const char    *err, *str;
    size_t         i, k;

    g_script = json_load_file(file, 0, &jerr);

    if (!json_is_array(g_script)) {
        fprintf(stderr, "llm-mock: %s:%d: %s\n", file, jerr.line,
                g_script ? "not an array of rules" : jerr.text);
        return -1;
    }

    err = NULL;

    json_array_foreach(g_script, i, rule) {
        replies = statuses = NULL;
        status = 200;
        pace[0] = pace[1] = pace[2] = 0;

        if (json_unpack_ex(rule, &jerr, JSON_STRICT,
                           "{s?s,s?s,s?o,s?I,s?o,s?I,s?I,s?I}",
                           "match", &str, "reply", &str, "replies", &replies,
                           "status", &status, "statuses", &statuses,
                           "tps", &pace[0], "ttft", &pace[1],
                           "token_size", &pace[2]) != 0)
        {
            err = jerr.text;
            break;
        }

        for (k = 0; k < 3; k++) {
            if (pace[k] < 0 || pace[k] > nums[N_TPS + k].max) {
                err = "\"tps\", \"ttft\" or \"token_size\" out of range";
            }
        }

        if ((replies && json_array_size(replies) == 0)
            || (statuses && json_array_size(statuses) == 0))
        {
            err = "\"replies\" and \"statuses\" need a non-empty array";
        }

        json_array_foreach(replies, k, v) {
            if (!json_is_string(v)) {
                err = "\"replies\" need strings";
            }
        }

        if (!status_ok(status)) {
            err = "a status is not an HTTP status";
        }

        json_array_foreach(statuses, k, v) {
            if (!json_is_integer(v) || !status_ok(json_integer_value(v))) {
                err = "a status is not an HTTP status";
            }
        }

        if (err) {
            break;
        }
    }

    if (err) {
        fprintf(stderr, "llm-mock: %s: rule %zu: %s\n", file, i + 1, err);
        return -1;
    }

    g_script_n = xrealloc(NULL, (i + 1) * sizeof(uint64_t));
    memset(g_script_n, 0, (i + 1) * sizeof(uint64_t));

    return 0;
}


/* main */

static void
on_signal(int signo)
{
    (void) signo;
    g_stop = 1;
}


static void
usage(FILE *f)
{
    fprintf(f,
        "llm-mock: a mock LLM server (OpenAI chat completions and Anthropic"
        " Messages)\n\n"
        "usage: llm-mock [--listen [HOST:]PORT] [--ttft MS] [--tps N]"
        " [--tokens N]\n"
        "                [--token-size BYTES] [--script FILE]"
        " [--blackhole [HOST:]PORT]\n"
        "                [--quiet]\n\n"
        "defaults: --listen 127.0.0.1:8088 --ttft 300 --tps 30 --tokens 60\n"
        "query parameters: tokens tps ttft token_size mode after status tag\n"
        "                  expect_key stamp chunked type reply reply_N\n"
        "                  status_N\n"
        "modes: normal echo status cut stall stream_error garbage hang\n"
        "script: a JSON array of rules {match, reply, replies, status,"
        " statuses,\n"
        "        ttft, tps, token_size}: see util/llm-mock.c\n"
        "control: GET /stats[?tag=X], POST /stats/reset, GET /reset,"
        " GET /last[?tag=X]\n");
}


static int
parse_args(int argc, char **argv)
{
    int                         k;
    static const struct option  opts[] = {
        { "tokens", 1, NULL, 256 + N_TOKENS },
        { "tps", 1, NULL, 256 + N_TPS },
        { "ttft", 1, NULL, 256 + N_TTFT },
        { "token-size", 1, NULL, 256 + N_TOKEN_SIZE },
        { "listen", 1, NULL, 'l' },
        { "blackhole", 1, NULL, 'b' },
        { "script", 1, NULL, 's' },
        { "quiet", 0, NULL, 'q' },
        { "help", 0, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };

    while ((k = getopt_long(argc, argv, "qh", opts, NULL)) != -1) {
        switch (k) {
        case 'l': cfg.listen = optarg; break;
        case 'b': cfg.blackhole = optarg; break;
        case 's': cfg.script = optarg; break;
        case 'q': cfg.quiet = 1; break;
        case 'h': usage(stdout); exit(0);

        case 256 + N_TOKENS:
        case 256 + N_TPS:
        case 256 + N_TTFT:
        case 256 + N_TOKEN_SIZE:
            k -= 256;
            if (num_parse(optarg, nums[k].max, &cfg.num[k]) != 0) {
                fprintf(stderr, "llm-mock: --%s needs a number up to %ld\n",
                        opts[k].name, nums[k].max);
                return -1;
            }
            break;

        default:
            usage(stderr);
            return -1;
        }
    }

    if (optind < argc) {
        fprintf(stderr, "llm-mock: unexpected argument %s\n", argv[optind]);
        return -1;
    }

    return 0;
}


int
main(int argc, char **argv)
{
    int                       i, n, timeout;
    uint64_t                  now, d;
    conn_t                   *c;
    socklen_t                 sl;
    sigset_t                  block, waitmask;
    struct rlimit             rl;
    struct sigaction          sa;
    struct epoll_event        evs[512];
    struct sockaddr_storage   ss;

    if (parse_args(argc, argv) != 0
        || (cfg.script && script_load(cfg.script) != 0))
    {
        return 1;
    }

    for (i = 0; g_story[i]; i++) {
        if (g_story[i] == ' ' && g_nwords < 128) {
            g_words[g_nwords++] = i;
        }
    }

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    signal(SIGPIPE, SIG_IGN);

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    /* the signals only come in epoll_pwait() */

    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &waitmask);
    sigdelset(&waitmask, SIGTERM);
    sigdelset(&waitmask, SIGINT);

    g_lfd = listen_on(cfg.listen, 65535, &ss, &sl);
    if (g_lfd < 0) {
        return 1;
    }

    if (!cfg.quiet) {
        fprintf(stderr, "llm-mock: mock LLM server listening on %s "
                "(port %u), ttft %ldms, %ld tokens/s, %ld tokens%s%s\n",
                cfg.listen, addr_port(&ss), cfg.num[N_TTFT], cfg.num[N_TPS],
                cfg.num[N_TOKENS], cfg.script ? ", script " : "",
                cfg.script ? cfg.script : "");
    }

    if (cfg.blackhole && blackhole_start(cfg.blackhole) != 0) {
        return 1;
    }

    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep < 0) {
        perror("llm-mock: epoll_create1");
        return 1;
    }

    accept_pause(0);

    while (!g_stop) {
        now = now_us();
        timeout = -1;

        if (g_heap_n) {
            d = g_heap[0]->deadline;
            timeout = d <= now ? 0 : (int) ((d - now + 999) / 1000);
        }

        if (g_accept_resume) {
            if (g_accept_resume <= now) {
                accept_pause(0);
            } else {
                d = (g_accept_resume - now + 999) / 1000;
                if (timeout < 0 || (int) d < timeout) {
                    timeout = (int) d;
                }
            }
        }

        n = epoll_pwait(g_ep, evs, 512, timeout, &waitmask);

        if (n < 0 && errno != EINTR) {
            perror("llm-mock: epoll_wait");
            break;
        }

        for (i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                do_accept();
            } else {
                conn_event(evs[i].data.ptr, evs[i].events);
            }
        }

        now = now_us();

        while (g_heap_n && g_heap[0]->deadline <= now) {
            c = g_heap[0];
            timer_del(c);

            if (c->state == S_GEN && gen_run(c) == 1) {
                conn_process(c);
            }
        }
    }

    if (!cfg.quiet) {
        fprintf(stderr, "llm-mock: exiting\n");
    }

    return 0;
}
