/*
 * llm-mock.c -- a MOCK LLM server (not a model) for ngx_http_llm_module.
 *
 * It answers the OpenAI chat completions API (POST .../chat/completions)
 * and the Anthropic Messages API (POST .../messages), streaming (SSE,
 * chunked) or not, with canned, paced tokens.  The demo uses it when no
 * API key is set, the test suite uses its failure modes, the benchmarks
 * use it for thousands of concurrent streams.  Single thread, epoll, one
 * min-heap of timers.
 *
 *   llm-mock [--listen [HOST:]PORT] [--ttft MS] [--tps N] [--tokens N]
 *            [--token-size BYTES] [--blackhole [HOST:]PORT] [--quiet]
 *
 *   defaults: --listen 127.0.0.1:8088 --ttft 300 --tps 30 --tokens 60
 *
 * Query parameters of the request URL, per request:
 *
 *   tokens=N      tokens to generate (echo: ignored)
 *   tps=N         tokens per second, 0: as fast as possible
 *   ttft=MS       delay of the first token (headers go out at once)
 *   token_size=N  N-byte tokens cut from the story (echo: chunk size)
 *   stamp=1       each token is "<unix microseconds> "
 *   mode=M        normal; echo (the text is system + "|" + last user
 *                 message); status (reply status=CODE, default 500);
 *                 cut, stall, stream_error, garbage (after=N tokens,
 *                 default 3: close without the end / go silent / send an
 *                 in-stream error / send "data: {not json"); hang (never
 *                 answer)
 *   tag=STR       counters and /last kept per tag
 *   expect_key=K  require "Authorization: Bearer K" or "x-api-key: K"
 *   chunked=0     an HTTP/1.1 stream ends by close, not chunked
 *
 * Control endpoints: GET /stats[?tag=X], POST /stats/reset[?tag=X] (also
 * GET /reset), GET /last[?tag=X] (the last LLM request, headers and
 * body), GET /health.  A stream is aborted when the client closes first,
 * completed when the mock ended it (cut included).
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
#include <poll.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>


#define MOCK_MAX_BODY       (1024 * 1024)
#define MOCK_MAX_HEADER     (32 * 1024)
#define MOCK_MAX_IN         (MOCK_MAX_HEADER + 4 * MOCK_MAX_BODY)
#define MOCK_MAX_PIPELINE   (64 * 1024)
#define MOCK_OUT_HIWAT      (64 * 1024)
#define MOCK_OUT_LOWAT      (16 * 1024)
#define MOCK_TAGS           1024
#define MOCK_TAG_LEN        64
#define MOCK_LINGER_US      2000000
#define MOCK_JSON_DEPTH     128
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
    int                  used;
    size_t               tag_len;
    char                 tag[MOCK_TAG_LEN];
    counters_t           cnt;
    char                *last;       /* rendered /last JSON */
    size_t               last_len;
} tag_slot_t;


typedef struct {
    long                 tokens;     /* -1: not given */
    long                 tps;
    long                 ttft;
    long                 token_size;
    long                 after;
    long                 status;
    int                  mode;
    int                  stamp;
    int                  chunked;
    int                  has_tag;
    size_t               tag_len;
    char                 tag[MOCK_TAG_LEN];
    char                *expect_key;
    size_t               expect_key_len;
} query_t;


enum { S_HEADERS, S_BODY, S_GEN, S_WAIT, S_FLUSH, S_LINGER };
enum { END_KEEPALIVE, END_CLOSE, END_LINGER };
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
    int                  state;
    int                  end;
    int                  heap_idx;
    uint64_t             deadline;
    conn_t              *prev;
    conn_t              *next;
    char                 peer[64];
    buf_t                in;
    buf_t                out;

    /* the request */
    char                 method[16];
    char                *uri;
    int                  http11;
    int                  keepalive;
    int                  req_chunked;
    long long            clen;
    int                  expect100;
    int                  sent100;
    size_t               hdr_start;  /* first header line, from in.pos */
    size_t               hdr_size;   /* the whole head, from in.pos */
    char                *auth;
    char                *xkey;
    char                *aver;
    char                *ctype;
    buf_t                dbody;      /* a decoded chunked body */
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
    char                *model_json;
    long long            created;
    long                 limit;
    long                 emitted;
    long                 fail_at;
    long                 prompt_tokens;
    long                 token_size;
    uint64_t             interval;
    uint64_t             next_due;
    buf_t                text;       /* the echo text */
    size_t               echo_pos;
    buf_t                acc;        /* the text of a non-stream reply */
};


typedef enum { J_NULL, J_FALSE, J_TRUE, J_NUM, J_STR, J_ARR, J_OBJ } jtype_t;

typedef struct jv_s  jv_t;

struct jv_s {
    jtype_t              type;
    char                *key;
    size_t               klen;
    char                *str;       /* J_STR: decoded; J_NUM: as written */
    size_t               len;
    jv_t                *child;
    jv_t                *next;
};

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
    int                  depth;
    const char          *err;
} jp_t;


static struct {
    const char          *listen;
    const char          *blackhole;
    long                 ttft;
    long                 tps;
    long                 tokens;
    long                 token_size;
    int                  quiet;
} cfg = { "127.0.0.1:8088", NULL, 300, 30, 60, 0, 0 };


static volatile sig_atomic_t  g_stop;
static int                    g_ep = -1;
static int                    g_lfd = -1;
static int                    g_bfd = -1;
static int                    g_fill[4] = { -1, -1, -1, -1 };
static uint64_t               g_accept_resume;
static conn_t                *g_conns;
static conn_t               **g_heap;
static size_t                 g_heap_n;
static size_t                 g_heap_cap;
static tag_slot_t             g_all;
static tag_slot_t             g_tags[MOCK_TAGS];
static buf_t                  g_tmp;     /* bodies being built */
static buf_t                  g_ev;      /* one SSE event */
static buf_t                  g_tok;     /* one token */

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
now_us(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}


static unsigned long long
wall_us(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (unsigned long long) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}


static void
buf_reserve(buf_t *b, size_t n)
{
    size_t  cap;

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

        if (b->cap - b->len >= n) {
            return;
        }
    }

    cap = b->cap ? b->cap : 512;
    while (cap - b->len < n) {
        cap *= 2;
    }

    b->data = xrealloc(b->data, cap);
    b->cap = cap;
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
    if (n == 0) {
        return;
    }

    buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}


static void
buf_adds(buf_t *b, const char *s)
{
    buf_add(b, s, strlen(s));
}


static void
buf_addf(buf_t *b, const char *fmt, ...)
{
    int      n;
    size_t   room;
    va_list  ap;

    buf_reserve(b, 128);

    for ( ;; ) {
        room = b->cap - b->len;
        va_start(ap, fmt);
        n = vsnprintf(b->data + b->len, room, fmt, ap);
        va_end(ap);

        if (n < 0) {
            return;
        }

        if ((size_t) n < room) {
            b->len += n;
            return;
        }

        buf_reserve(b, n + 1);
    }
}


/* the length of the valid UTF-8 sequence at p, 0 if it is not valid */

static size_t
utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned char  c, lo, hi;
    size_t         n, i;

    c = p[0];

    if (c < 0x80) {
        return 1;
    }

    lo = 0x80;
    hi = 0xbf;

    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;

    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0) {
            lo = 0xa0;
        } else if (c == 0xed) {
            hi = 0x9f;
        }

    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0) {
            lo = 0x90;
        } else if (c == 0xf4) {
            hi = 0x8f;
        }

    } else {
        return 0;
    }

    if ((size_t) (end - p) < n) {
        return 0;
    }

    if (p[1] < lo || p[1] > hi) {
        return 0;
    }

    for (i = 2; i < n; i++) {
        if (p[i] < 0x80 || p[i] > 0xbf) {
            return 0;
        }
    }

    return n;
}


/* a JSON string literal; invalid UTF-8 bytes come out as \u00XX */

static void
buf_add_jstr(buf_t *b, const char *s, size_t n)
{
    static const char     hex[] = "0123456789abcdef";
    const unsigned char  *p, *end, *run;
    unsigned char         c;
    size_t                k;
    char                  esc[8];

    p = (const unsigned char *) s;
    end = p + n;

    buf_reserve(b, n + 2);
    b->data[b->len++] = '"';

    while (p < end) {
        run = p;

        while (p < end && *p >= 0x20 && *p < 0x80 && *p != '"'
               && *p != '\\')
        {
            p++;
        }

        if (p > run) {
            buf_add(b, run, p - run);
        }

        if (p == end) {
            break;
        }

        c = *p;

        if (c >= 0x80) {
            k = utf8_len(p, end);
            if (k) {
                buf_add(b, p, k);
                p += k;
                continue;
            }
        }

        esc[0] = '\\';
        k = 2;

        switch (c) {
        case '"':  esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        default:
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 0xf];
            k = 6;
        }

        buf_add(b, esc, k);
        p++;
    }

    buf_add(b, "\"", 1);
}


static void
buf_add_jstr_or_null(buf_t *b, const char *s)
{
    if (s == NULL) {
        buf_adds(b, "null");
    } else {
        buf_add_jstr(b, s, strlen(s));
    }
}


static void
utf8_put(buf_t *b, unsigned long cp)
{
    char  u[4];

    if (cp < 0x80) {
        u[0] = (char) cp;
        buf_add(b, u, 1);

    } else if (cp < 0x800) {
        u[0] = (char) (0xc0 | (cp >> 6));
        u[1] = (char) (0x80 | (cp & 0x3f));
        buf_add(b, u, 2);

    } else if (cp < 0x10000) {
        u[0] = (char) (0xe0 | (cp >> 12));
        u[1] = (char) (0x80 | ((cp >> 6) & 0x3f));
        u[2] = (char) (0x80 | (cp & 0x3f));
        buf_add(b, u, 3);

    } else {
        u[0] = (char) (0xf0 | (cp >> 18));
        u[1] = (char) (0x80 | ((cp >> 12) & 0x3f));
        u[2] = (char) (0x80 | ((cp >> 6) & 0x3f));
        u[3] = (char) (0x80 | (cp & 0x3f));
        buf_add(b, u, 4);
    }
}


/* a strict JSON parser into a small tree */

static void
jv_free(jv_t *v)
{
    jv_t  *next;

    while (v) {
        next = v->next;
        jv_free(v->child);
        free(v->key);
        free(v->str);
        free(v);
        v = next;
    }
}


static void
jp_ws(jp_t *jp)
{
    while (jp->p < jp->end
           && (*jp->p == ' ' || *jp->p == '\t' || *jp->p == '\n'
               || *jp->p == '\r'))
    {
        jp->p++;
    }
}


static int
jp_hex4(const unsigned char *p, const unsigned char *end, unsigned long *v)
{
    int  i, d;

    if (end - p < 4) {
        return -1;
    }

    *v = 0;

    for (i = 0; i < 4; i++) {
        if (p[i] >= '0' && p[i] <= '9') {
            d = p[i] - '0';
        } else if (p[i] >= 'a' && p[i] <= 'f') {
            d = p[i] - 'a' + 10;
        } else if (p[i] >= 'A' && p[i] <= 'F') {
            d = p[i] - 'A' + 10;
        } else {
            return -1;
        }
        *v = *v * 16 + d;
    }

    return 0;
}


/* decodes a string literal; a lone surrogate becomes U+FFFD */

static int
jp_string(jp_t *jp, char **s, size_t *len)
{
    unsigned char   c;
    unsigned long   cp, lo;
    size_t          n;
    buf_t           b;

    memset(&b, 0, sizeof(buf_t));
    jp->p++;

    for ( ;; ) {
        if (jp->p >= jp->end) {
            jp->err = "unterminated string";
            goto failed;
        }

        c = *jp->p;

        if (c == '"') {
            jp->p++;
            break;
        }

        if (c < 0x20) {
            jp->err = "control character in string";
            goto failed;
        }

        if (c >= 0x80) {
            n = utf8_len(jp->p, jp->end);
            if (n == 0) {
                jp->err = "invalid UTF-8 in string";
                goto failed;
            }
            buf_add(&b, jp->p, n);
            jp->p += n;
            continue;
        }

        if (c != '\\') {
            buf_add(&b, &c, 1);
            jp->p++;
            continue;
        }

        if (jp->end - jp->p < 2) {
            jp->err = "unterminated string";
            goto failed;
        }

        c = jp->p[1];
        jp->p += 2;

        switch (c) {
        case '"': case '\\': case '/':
            break;
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;

        case 'u':
            if (jp_hex4(jp->p, jp->end, &cp) != 0) {
                jp->err = "bad \\u escape";
                goto failed;
            }
            jp->p += 4;

            if (cp >= 0xd800 && cp <= 0xdbff) {
                if (jp->end - jp->p >= 6 && jp->p[0] == '\\'
                    && jp->p[1] == 'u'
                    && jp_hex4(jp->p + 2, jp->end, &lo) == 0
                    && lo >= 0xdc00 && lo <= 0xdfff)
                {
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    jp->p += 6;

                } else {
                    cp = 0xfffd;
                }

            } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                cp = 0xfffd;
            }

            utf8_put(&b, cp);
            continue;

        default:
            jp->err = "bad escape";
            goto failed;
        }

        buf_add(&b, &c, 1);
    }

    buf_reserve(&b, 1);
    b.data[b.len] = '\0';
    *s = b.data;
    *len = b.len;
    return 0;

failed:

    buf_free(&b);
    return -1;
}


static int
jp_digits(jp_t *jp)
{
    const unsigned char  *start = jp->p;

    while (jp->p < jp->end && *jp->p >= '0' && *jp->p <= '9') {
        jp->p++;
    }

    return jp->p > start ? 0 : -1;
}


static jv_t *jp_value(jp_t *jp);


static jv_t *
jp_number(jp_t *jp)
{
    const unsigned char  *start = jp->p;
    jv_t                 *v;

    if (*jp->p == '-') {
        jp->p++;
    }

    if (jp->p < jp->end && *jp->p == '0') {
        jp->p++;

    } else if (jp_digits(jp) != 0) {
        goto bad;
    }

    if (jp->p < jp->end && *jp->p == '.') {
        jp->p++;
        if (jp_digits(jp) != 0) {
            goto bad;
        }
    }

    if (jp->p < jp->end && (*jp->p == 'e' || *jp->p == 'E')) {
        jp->p++;
        if (jp->p < jp->end && (*jp->p == '+' || *jp->p == '-')) {
            jp->p++;
        }
        if (jp_digits(jp) != 0) {
            goto bad;
        }
    }

    v = xrealloc(NULL, sizeof(jv_t));
    memset(v, 0, sizeof(jv_t));
    v->type = J_NUM;
    v->len = jp->p - start;
    v->str = xstrndup((const char *) start, v->len);
    return v;

bad:

    jp->err = "bad number";
    return NULL;
}


static jv_t *
jp_container(jp_t *jp)
{
    int    obj;
    jv_t  *v, *item, **tail;
    char  *key;
    size_t klen;

    obj = (*jp->p == '{');
    jp->p++;

    if (++jp->depth > MOCK_JSON_DEPTH) {
        jp->err = "nested too deep";
        return NULL;
    }

    v = xrealloc(NULL, sizeof(jv_t));
    memset(v, 0, sizeof(jv_t));
    v->type = obj ? J_OBJ : J_ARR;
    tail = &v->child;

    jp_ws(jp);

    if (jp->p < jp->end && *jp->p == (obj ? '}' : ']')) {
        jp->p++;
        jp->depth--;
        return v;
    }

    for ( ;; ) {
        key = NULL;
        klen = 0;

        if (obj) {
            jp_ws(jp);

            if (jp->p >= jp->end || *jp->p != '"') {
                jp->err = "expected a member name";
                goto failed;
            }

            if (jp_string(jp, &key, &klen) != 0) {
                goto failed;
            }

            jp_ws(jp);

            if (jp->p >= jp->end || *jp->p != ':') {
                free(key);
                jp->err = "expected ':'";
                goto failed;
            }

            jp->p++;
        }

        item = jp_value(jp);
        if (item == NULL) {
            free(key);
            goto failed;
        }

        item->key = key;
        item->klen = klen;
        *tail = item;
        tail = &item->next;

        jp_ws(jp);

        if (jp->p >= jp->end) {
            jp->err = "unterminated container";
            goto failed;
        }

        if (*jp->p == ',') {
            jp->p++;
            continue;
        }

        if (*jp->p == (obj ? '}' : ']')) {
            jp->p++;
            jp->depth--;
            return v;
        }

        jp->err = obj ? "expected ',' or '}'" : "expected ',' or ']'";
        goto failed;
    }

failed:

    jv_free(v);
    return NULL;
}


static jv_t *
jp_value(jp_t *jp)
{
    jv_t    *v;
    size_t   n;

    jp_ws(jp);

    if (jp->p >= jp->end) {
        jp->err = "unexpected end of input";
        return NULL;
    }

    switch (*jp->p) {

    case '{':
    case '[':
        return jp_container(jp);

    case '"':
        v = xrealloc(NULL, sizeof(jv_t));
        memset(v, 0, sizeof(jv_t));
        v->type = J_STR;
        if (jp_string(jp, &v->str, &v->len) != 0) {
            free(v);
            return NULL;
        }
        return v;

    case 't':
    case 'f':
    case 'n':
        v = xrealloc(NULL, sizeof(jv_t));
        memset(v, 0, sizeof(jv_t));
        n = jp->end - jp->p;

        if (n >= 4 && memcmp(jp->p, "true", 4) == 0) {
            v->type = J_TRUE;
            jp->p += 4;
        } else if (n >= 5 && memcmp(jp->p, "false", 5) == 0) {
            v->type = J_FALSE;
            jp->p += 5;
        } else if (n >= 4 && memcmp(jp->p, "null", 4) == 0) {
            v->type = J_NULL;
            jp->p += 4;
        } else {
            free(v);
            jp->err = "bad literal";
            return NULL;
        }
        return v;

    default:
        if (*jp->p == '-' || (*jp->p >= '0' && *jp->p <= '9')) {
            return jp_number(jp);
        }
        jp->err = "unexpected character";
        return NULL;
    }
}


static jv_t *
json_parse(const char *s, size_t n, const char **err)
{
    jp_t   jp;
    jv_t  *v;

    jp.p = (const unsigned char *) s;
    jp.end = jp.p + n;
    jp.depth = 0;
    jp.err = NULL;

    v = jp_value(&jp);
    if (v == NULL) {
        *err = jp.err;
        return NULL;
    }

    jp_ws(&jp);

    if (jp.p != jp.end) {
        jv_free(v);
        *err = "trailing data after the JSON value";
        return NULL;
    }

    return v;
}


static jv_t *
jv_get(jv_t *obj, const char *key)
{
    jv_t    *v;
    size_t   n;

    if (obj == NULL || obj->type != J_OBJ) {
        return NULL;
    }

    n = strlen(key);

    for (v = obj->child; v; v = v->next) {
        if (v->klen == n && memcmp(v->key, key, n) == 0) {
            return v;
        }
    }

    return NULL;
}


/* 1: an integer in *out, 0: absent or null, -1: not an integer */

static int
jv_int(jv_t *v, long *out)
{
    char  *end;

    if (v == NULL || v->type == J_NULL) {
        return 0;
    }

    if (v->type != J_NUM || strpbrk(v->str, ".eE") || v->len > 12) {
        return -1;
    }

    *out = strtol(v->str, &end, 10);
    return 1;
}


/* the text of a message "content": a string or an array of text parts */

static void
jv_text(jv_t *v, buf_t *out)
{
    jv_t  *e, *t;

    if (v == NULL) {
        return;
    }

    if (v->type == J_STR) {
        buf_add(out, v->str, v->len);
        return;
    }

    if (v->type != J_ARR) {
        return;
    }

    for (e = v->child; e; e = e->next) {
        if (e->type == J_STR) {
            buf_add(out, e->str, e->len);
            continue;
        }

        t = jv_get(e, "text");
        if (t && t->type == J_STR) {
            buf_add(out, t->str, t->len);
        }
    }
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
heap_up(size_t i)
{
    while (i && g_heap[(i - 1) / 2]->deadline > g_heap[i]->deadline) {
        heap_swap(i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}


static void
heap_down(size_t i)
{
    size_t  l, r, m;

    for ( ;; ) {
        l = 2 * i + 1;
        r = l + 1;
        m = i;

        if (l < g_heap_n && g_heap[l]->deadline < g_heap[m]->deadline) {
            m = l;
        }

        if (r < g_heap_n && g_heap[r]->deadline < g_heap[m]->deadline) {
            m = r;
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
    uint64_t  old;

    if (c->heap_idx >= 0) {
        old = c->deadline;
        c->deadline = at;

        if (at < old) {
            heap_up(c->heap_idx);
        } else {
            heap_down(c->heap_idx);
        }
        return;
    }

    if (g_heap_n == g_heap_cap) {
        g_heap_cap = g_heap_cap ? g_heap_cap * 2 : 1024;
        g_heap = xrealloc(g_heap, g_heap_cap * sizeof(conn_t *));
    }

    c->deadline = at;
    c->heap_idx = (int) g_heap_n;
    g_heap[g_heap_n++] = c;
    heap_up(g_heap_n - 1);
}


static void
timer_del(conn_t *c)
{
    size_t   i;
    conn_t  *last;

    if (c->heap_idx < 0) {
        return;
    }

    i = c->heap_idx;
    c->heap_idx = -1;
    last = g_heap[--g_heap_n];

    if (i != g_heap_n) {
        g_heap[i] = last;
        last->heap_idx = (int) i;
        heap_up(i);
        heap_down(last->heap_idx);
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
    uint32_t     h;
    size_t       i, k;
    tag_slot_t  *s;

    h = 2166136261u;
    for (i = 0; i < len; i++) {
        h = (h ^ (unsigned char) tag[i]) * 16777619u;
    }

    for (k = 0; k < MOCK_TAGS; k++) {
        s = &g_tags[(h + k) % MOCK_TAGS];

        if (!s->used) {
            if (!create) {
                return NULL;
            }
            s->used = 1;
            s->tag_len = len;
            memcpy(s->tag, tag, len);
            return s;
        }

        if (s->tag_len == len && memcmp(s->tag, tag, len) == 0) {
            return s;
        }
    }

    return NULL;
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
    free(c->model_json);
    buf_free(&c->dbody);
    buf_free(&c->text);
    buf_free(&c->acc);

    c->uri = NULL;
    c->auth = c->xkey = c->aver = c->ctype = NULL;
    c->model_json = NULL;
    memset(&c->q, 0, sizeof(query_t));
    memset(c->method, 0, sizeof(c->method));

    c->state = S_HEADERS;
    c->end = END_KEEPALIVE;
    c->http11 = c->keepalive = c->req_chunked = 0;
    c->clen = -1;
    c->expect100 = c->sent100 = 0;
    c->hdr_start = c->hdr_size = 0;
    c->tag = NULL;
    c->prov = P_NONE;
    c->mode = M_NORMAL;
    c->stream = c->usage = c->chunked = 0;
    c->in_stream = c->blocked = c->status = c->length_cut = 0;
    c->created = 0;
    c->limit = c->emitted = c->prompt_tokens = c->token_size = 0;
    c->fail_at = -1;
    c->interval = c->next_due = 0;
    c->echo_pos = 0;

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
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 529: return "Overloaded";
    default:  return "Mock Status";
    }
}


static void
respond(conn_t *c, int status, const char *ctype, const char *body,
    size_t len, int end)
{
    if (!c->keepalive && end == END_KEEPALIVE) {
        end = END_CLOSE;
    }

    buf_addf(&c->out, "HTTP/1.1 %d %s\r\n"
             "Server: llm-mock\r\n"
             "Content-Type: %s\r\n"
             "Content-Length: %zu\r\n"
             "Connection: %s\r\n\r\n",
             status, reason(status), ctype, len,
             end == END_KEEPALIVE ? "keep-alive" : "close");
    buf_add(&c->out, body, len);

    c->state = S_FLUSH;
    c->end = end;
    c->status = status;

    if (!c->in_stream) {
        mock_log(c, "answered");
    }
}


static void
respond_json(conn_t *c, int status, buf_t *b)
{
    respond(c, status, "application/json", b->data, b->len, END_KEEPALIVE);
}


/* an error of the HTTP layer; the connection is closed after it */

static void
respond_http_error(conn_t *c, int status, const char *msg)
{
    g_tmp.pos = g_tmp.len = 0;
    buf_adds(&g_tmp, "{\"error\":{\"message\":");
    buf_add_jstr(&g_tmp, msg, strlen(msg));
    buf_adds(&g_tmp, ",\"type\":\"invalid_request_error\",\"code\":null}}");

    if (c->method[0] == '\0') {
        strcpy(c->method, "-");
    }

    respond(c, status, "application/json", g_tmp.data, g_tmp.len,
            END_LINGER);
}


/* an error in the style of the provider of the endpoint */

static void
llm_error(conn_t *c, int status, const char *type, const char *msg,
    const char *code)
{
    g_tmp.pos = g_tmp.len = 0;

    if (c->prov == P_ANTHROPIC) {
        buf_adds(&g_tmp, "{\"type\":\"error\",\"error\":{\"type\":");
        buf_add_jstr(&g_tmp, type, strlen(type));
        buf_adds(&g_tmp, ",\"message\":");
        buf_add_jstr(&g_tmp, msg, strlen(msg));
        buf_adds(&g_tmp, "}}");

    } else {
        buf_adds(&g_tmp, "{\"error\":{\"message\":");
        buf_add_jstr(&g_tmp, msg, strlen(msg));
        buf_adds(&g_tmp, ",\"type\":");
        buf_add_jstr(&g_tmp, type, strlen(type));
        buf_adds(&g_tmp, ",\"code\":");
        buf_add_jstr_or_null(&g_tmp, code);
        buf_adds(&g_tmp, "}}");
    }

    respond_json(c, status, &g_tmp);
}


static int conn_read(conn_t *c);
static int conn_process(conn_t *c);


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

    switch (c->end) {

    case END_KEEPALIVE:
        conn_reset(c);
        return 1;

    case END_LINGER:
        shutdown(c->fd, SHUT_WR);
        c->state = S_LINGER;
        c->in.pos = c->in.len = 0;
        timer_set(c, now_us() + MOCK_LINGER_US);
        return conn_read(c) < 0 ? -1 : 0;

    default:
        conn_close(c);
        return -1;
    }
}


/* SSE output */

static void
ev_start(void)
{
    g_ev.pos = g_ev.len = 0;
}


static void
ev_end(conn_t *c)
{
    if (c->chunked) {
        buf_addf(&c->out, "%zx\r\n", g_ev.len);
    }

    buf_add(&c->out, g_ev.data, g_ev.len);

    if (c->chunked) {
        buf_add(&c->out, "\r\n", 2);
    }
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
             "Content-Type: text/event-stream\r\n"
             "Cache-Control: no-cache\r\n"
             "%s"
             "Connection: %s\r\n\r\n",
             c->chunked ? "Transfer-Encoding: chunked\r\n" : "",
             c->keepalive ? "keep-alive" : "close");

    ev_start();

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


static void
stream_terminate(conn_t *c)
{
    if (c->chunked) {
        buf_add(&c->out, "0\r\n\r\n", 5);
    }

    c->state = S_FLUSH;
    c->end = (c->chunked && c->keepalive) ? END_KEEPALIVE : END_CLOSE;
    c->status = 200;
}


/* the generation */

static void
gen_token_text(conn_t *c, buf_t *t)
{
    size_t       n, off, len, i;
    const char  *w;

    t->pos = t->len = 0;

    if (c->q.stamp) {
        buf_addf(t, "%llu ", wall_us());
        return;
    }

    if (c->mode == M_ECHO) {
        n = c->token_size > 0 ? (size_t) c->token_size : MOCK_ECHO_CHUNK;

        if (n > c->text.len - c->echo_pos) {
            n = c->text.len - c->echo_pos;
        }

        while (c->echo_pos + n < c->text.len
               && ((unsigned char) c->text.data[c->echo_pos + n] & 0xc0)
                  == 0x80)
        {
            n++;
        }

        buf_add(t, c->text.data + c->echo_pos, n);
        c->echo_pos += n;
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


static size_t
echo_count(conn_t *c)
{
    size_t  count;

    count = 0;
    c->echo_pos = 0;

    while (c->echo_pos < c->text.len) {
        gen_token_text(c, &g_tok);
        count++;
    }

    c->echo_pos = 0;
    return count;
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

    ev_start();

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
    const char  *reason;

    if (c->prov == P_OPENAI) {
        reason = c->length_cut ? "length" : "stop";
    } else {
        reason = c->length_cut ? "max_tokens" : "end_turn";
    }

    if (!c->stream) {
        g_tmp.pos = g_tmp.len = 0;

        if (c->prov == P_OPENAI) {
            buf_addf(&g_tmp, "{\"id\":\"chatcmpl-mock\",\"object\":"
                     "\"chat.completion\",\"created\":%lld,\"model\":%s,"
                     "\"choices\":[{\"index\":0,\"message\":{\"role\":"
                     "\"assistant\",\"content\":", c->created, c->model_json);
            buf_add_jstr(&g_tmp, c->acc.data, c->acc.len);
            buf_addf(&g_tmp, "},\"finish_reason\":\"%s\"}],\"usage\":"
                     "{\"prompt_tokens\":%ld,\"completion_tokens\":%ld,"
                     "\"total_tokens\":%ld}}", reason, c->prompt_tokens,
                     c->emitted, c->prompt_tokens + c->emitted);

        } else {
            buf_addf(&g_tmp, "{\"id\":\"msg_mock\",\"type\":\"message\","
                     "\"role\":\"assistant\",\"model\":%s,\"content\":"
                     "[{\"type\":\"text\",\"text\":", c->model_json);
            buf_add_jstr(&g_tmp, c->acc.data, c->acc.len);
            buf_addf(&g_tmp, "}],\"stop_reason\":\"%s\",\"stop_sequence\":"
                     "null,\"usage\":{\"input_tokens\":%ld,"
                     "\"output_tokens\":%ld}}", reason, c->prompt_tokens,
                     c->emitted);
        }

        respond_json(c, 200, &g_tmp);
        return;
    }

    ev_start();

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

    ev_end(c);
    stream_terminate(c);
}


static void
gen_fail(conn_t *c)
{
    static const char  partial[] = "{\"id\":\"chatcmpl-mock\",";

    switch (c->mode) {

    case M_CUT:
        if (!c->stream) {
            buf_adds(&c->out, "HTTP/1.1 200 OK\r\nServer: llm-mock\r\n"
                     "Content-Type: application/json\r\n"
                     "Content-Length: 4096\r\nConnection: close\r\n\r\n");
            buf_adds(&c->out, partial);
        }
        c->state = S_FLUSH;
        c->end = END_CLOSE;
        c->status = 200;
        return;

    case M_STALL:
        c->state = S_WAIT;
        return;

    case M_STREAM_ERROR:
        if (!c->stream) {
            if (c->prov == P_OPENAI) {
                llm_error(c, 500, "server_error", "mock overloaded", NULL);
            } else {
                llm_error(c, 529, "overloaded_error", "mock overloaded",
                          NULL);
            }
            return;
        }

        ev_start();

        if (c->prov == P_OPENAI) {
            buf_adds(&g_ev, "data: {\"error\":{\"message\":"
                     "\"mock overloaded\",\"type\":\"server_error\"}}\n\n");
        } else {
            buf_adds(&g_ev, "event: error\ndata: {\"type\":\"error\","
                     "\"error\":{\"type\":\"overloaded_error\",\"message\":"
                     "\"mock overloaded\"}}\n\n");
        }

        ev_end(c);
        stream_terminate(c);
        return;

    default: /* M_GARBAGE */
        if (!c->stream) {
            respond(c, 200, "application/json", "{not json", 9,
                    END_KEEPALIVE);
            return;
        }

        ev_start();

        if (c->prov == P_ANTHROPIC) {
            buf_adds(&g_ev, "event: content_block_delta\n");
        }

        buf_adds(&g_ev, "data: {not json\n\n");
        ev_end(c);
        stream_terminate(c);
        return;
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


/* the LLM endpoints */

static int
query_num(const char *v, long max, long *out)
{
    long  n;

    if (*v == '\0') {
        return -1;
    }

    for (n = 0; *v; v++) {
        if (*v < '0' || *v > '9') {
            return -1;
        }
        n = n * 10 + (*v - '0');
        if (n > max) {
            return -1;
        }
    }

    *out = n;
    return 0;
}


static size_t
url_decode(const char *s, size_t n, char *out)
{
    size_t  i, k;
    int     h, l;

    for (i = 0, k = 0; i < n; i++) {
        if (s[i] == '+') {
            out[k++] = ' ';
            continue;
        }

        if (s[i] == '%' && i + 2 < n) {
            h = s[i + 1];
            l = s[i + 2];
            h = (h >= '0' && h <= '9') ? h - '0'
                : (h >= 'a' && h <= 'f') ? h - 'a' + 10
                : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
            l = (l >= '0' && l <= '9') ? l - '0'
                : (l >= 'a' && l <= 'f') ? l - 'a' + 10
                : (l >= 'A' && l <= 'F') ? l - 'A' + 10 : -1;

            if (h >= 0 && l >= 0) {
                out[k++] = (char) (h * 16 + l);
                i += 2;
                continue;
            }
        }

        out[k++] = s[i];
    }

    out[k] = '\0';
    return k;
}


static int
query_parse(const char *s, query_t *q, const char **err)
{
    const char  *amp, *eq, *end;
    char         key[32], *val;
    size_t       klen, vlen;
    int          i, rc;

    q->tokens = q->tps = q->ttft = q->token_size = -1;
    q->after = q->status = -1;
    q->mode = -1;
    q->chunked = 1;

    rc = 0;

    while (s && *s) {
        amp = strchr(s, '&');
        end = amp ? amp : s + strlen(s);
        eq = memchr(s, '=', end - s);

        klen = (eq ? eq : end) - s;
        vlen = eq ? (size_t) (end - eq - 1) : 0;

        val = xrealloc(NULL, vlen + 1);
        vlen = url_decode(eq ? eq + 1 : end, vlen, val);

        if (klen < sizeof(key)) {
            url_decode(s, klen, key);
        } else {
            key[0] = '\0';
        }

        if (strcmp(key, "tokens") == 0) {
            rc = query_num(val, MOCK_MAX_TOKENS, &q->tokens);
        } else if (strcmp(key, "tps") == 0) {
            rc = query_num(val, 1000000, &q->tps);
        } else if (strcmp(key, "ttft") == 0) {
            rc = query_num(val, 3600000, &q->ttft);
        } else if (strcmp(key, "token_size") == 0) {
            rc = query_num(val, 65536, &q->token_size);
        } else if (strcmp(key, "after") == 0) {
            rc = query_num(val, MOCK_MAX_TOKENS, &q->after);
        } else if (strcmp(key, "status") == 0) {
            rc = query_num(val, 599, &q->status);
            if (rc == 0 && (q->status < 200 || q->status == 204
                            || q->status == 304))
            {
                rc = -1;
            }
        } else if (strcmp(key, "stamp") == 0) {
            q->stamp = (strcmp(val, "1") == 0);
        } else if (strcmp(key, "chunked") == 0) {
            q->chunked = (strcmp(val, "0") != 0);
        } else if (strcmp(key, "mode") == 0) {
            q->mode = -1;
            for (i = 0; mode_names[i]; i++) {
                if (strcmp(val, mode_names[i]) == 0) {
                    q->mode = i;
                }
            }
            rc = (q->mode < 0) ? -1 : 0;
        } else if (strcmp(key, "tag") == 0) {
            q->has_tag = 1;
            q->tag_len = vlen < MOCK_TAG_LEN ? vlen : MOCK_TAG_LEN - 1;
            memcpy(q->tag, val, q->tag_len);
        } else if (strcmp(key, "expect_key") == 0) {
            free(q->expect_key);
            q->expect_key = val;
            q->expect_key_len = vlen;
            val = NULL;
        }

        free(val);

        if (rc != 0) {
            *err = "bad query parameter";
            return -1;
        }

        s = amp ? amp + 1 : NULL;
    }

    return 0;
}


static void
record_last(conn_t *c, const char *body, size_t blen, int json_ok)
{
    const char  *p, *end, *nl, *colon, *v, *ve;
    tag_slot_t  *slots[2];
    size_t       i;

    g_tmp.pos = g_tmp.len = 0;

    buf_adds(&g_tmp, "{\"method\":");
    buf_add_jstr(&g_tmp, c->method, strlen(c->method));
    buf_adds(&g_tmp, ",\"uri\":");
    buf_add_jstr(&g_tmp, c->uri, strlen(c->uri));
    buf_adds(&g_tmp, ",\"tag\":");
    if (c->q.has_tag) {
        buf_add_jstr(&g_tmp, c->q.tag, c->q.tag_len);
    } else {
        buf_adds(&g_tmp, "null");
    }
    buf_adds(&g_tmp, ",\"authorization\":");
    buf_add_jstr_or_null(&g_tmp, c->auth);
    buf_adds(&g_tmp, ",\"x_api_key\":");
    buf_add_jstr_or_null(&g_tmp, c->xkey);
    buf_adds(&g_tmp, ",\"anthropic_version\":");
    buf_add_jstr_or_null(&g_tmp, c->aver);
    buf_adds(&g_tmp, ",\"content_type\":");
    buf_add_jstr_or_null(&g_tmp, c->ctype);
    buf_addf(&g_tmp, ",\"chunked_body\":%s,\"headers\":[",
             c->req_chunked ? "true" : "false");

    p = c->in.data + c->in.pos + c->hdr_start;
    end = c->in.data + c->in.pos + c->hdr_size;

    for (i = 0; p < end; p = nl + 1) {
        nl = memchr(p, '\n', end - p);
        if (nl == NULL) {
            break;
        }

        colon = memchr(p, ':', nl - p);
        if (colon == NULL) {
            continue;
        }

        v = colon + 1;
        ve = nl;
        while (v < ve && (*v == ' ' || *v == '\t')) {
            v++;
        }
        while (ve > v && (ve[-1] == '\r' || ve[-1] == ' '
                          || ve[-1] == '\t'))
        {
            ve--;
        }

        buf_adds(&g_tmp, i++ ? ",[" : "[");
        buf_add_jstr(&g_tmp, p, colon - p);
        buf_adds(&g_tmp, ",");
        buf_add_jstr(&g_tmp, v, ve - v);
        buf_adds(&g_tmp, "]");
    }

    buf_adds(&g_tmp, "],\"body\":");
    buf_add_jstr(&g_tmp, body, blen);
    buf_adds(&g_tmp, ",\"json\":");
    if (json_ok) {
        buf_add(&g_tmp, body, blen);
    } else {
        buf_adds(&g_tmp, "null");
    }
    buf_adds(&g_tmp, "}\n");

    slots[0] = &g_all;
    slots[1] = c->tag;

    for (i = 0; i < 2; i++) {
        if (slots[i] == NULL) {
            continue;
        }
        free(slots[i]->last);
        slots[i]->last = xstrndup(g_tmp.data, g_tmp.len);
        slots[i]->last_len = g_tmp.len;
    }
}


/* extracts the request fields; returns an error message or NULL */

static const char *
llm_extract(conn_t *c, jv_t *root, long *max_tokens)
{
    jv_t        *model, *msgs, *m, *role, *v, *so;
    buf_t        sys, user, t;
    size_t       all;
    const char  *err;

    *max_tokens = -1;

    if (root->type != J_OBJ) {
        return "the request body must be a JSON object";
    }

    model = jv_get(root, "model");
    if (model == NULL || model->type != J_STR) {
        return "model: a string is required";
    }

    msgs = jv_get(root, "messages");
    if (msgs == NULL || msgs->type != J_ARR) {
        return "messages: an array is required";
    }

    v = jv_get(root, "stream");
    if (v && v->type != J_TRUE && v->type != J_FALSE && v->type != J_NULL) {
        return "stream: a boolean is required";
    }
    c->stream = (v && v->type == J_TRUE);

    so = jv_get(root, "stream_options");
    v = jv_get(so, "include_usage");
    c->usage = (v && v->type == J_TRUE);

    v = jv_get(root, "max_tokens");
    if (v == NULL && c->prov == P_OPENAI) {
        v = jv_get(root, "max_completion_tokens");
    }

    switch (jv_int(v, max_tokens)) {
    case 0:
        if (c->prov == P_ANTHROPIC) {
            return "max_tokens: Field required";
        }
        *max_tokens = -1;
        break;
    case 1:
        if (*max_tokens >= 1) {
            break;
        }
        /* fall through */
    default:
        return "max_tokens: a positive integer is required";
    }

    g_tmp.pos = g_tmp.len = 0;
    buf_add_jstr(&g_tmp, model->str, model->len);
    c->model_json = xstrndup(g_tmp.data, g_tmp.len);

    memset(&sys, 0, sizeof(buf_t));
    memset(&user, 0, sizeof(buf_t));
    memset(&t, 0, sizeof(buf_t));
    err = NULL;

    if (c->prov == P_ANTHROPIC) {
        jv_text(jv_get(root, "system"), &sys);
    }

    all = sys.len;

    for (m = msgs->child; m; m = m->next) {
        role = jv_get(m, "role");
        if (role == NULL || role->type != J_STR) {
            err = "messages: each message needs a string role";
            break;
        }

        t.pos = t.len = 0;
        jv_text(jv_get(m, "content"), &t);
        all += t.len;

        if (strcmp(role->str, "user") == 0) {
            user.pos = user.len = 0;
            buf_add(&user, t.data, t.len);

        } else if (c->prov == P_OPENAI && (strcmp(role->str, "system") == 0
                   || strcmp(role->str, "developer") == 0))
        {
            buf_add(&sys, t.data, t.len);
        }
    }

    c->prompt_tokens = (all + 3) / 4;

    if (c->mode == M_ECHO) {
        buf_add(&c->text, sys.data, sys.len);
        buf_add(&c->text, "|", 1);
        buf_add(&c->text, user.data, user.len);
    }

    buf_free(&sys);
    buf_free(&user);
    buf_free(&t);

    return err;
}


static void
llm_request(conn_t *c, const char *body, size_t blen)
{
    jv_t        *root;
    const char  *err, *jerr;
    long         max_tokens, total, after, ttft, tps;
    char         msg[64];
    int          ok;

    CNT(c, requests, 1);

    jerr = NULL;
    root = json_parse(body, blen, &jerr);

    record_last(c, body, blen, root != NULL);

    if (c->prov == P_ANTHROPIC && c->aver == NULL) {
        llm_error(c, 400, "invalid_request_error",
                  "anthropic-version: header is required", NULL);
        goto done;
    }

    if (c->q.expect_key) {
        if (c->prov == P_OPENAI) {
            ok = c->auth && strncmp(c->auth, "Bearer ", 7) == 0
                 && strlen(c->auth + 7) == c->q.expect_key_len
                 && memcmp(c->auth + 7, c->q.expect_key,
                           c->q.expect_key_len) == 0;
        } else {
            ok = c->xkey && strlen(c->xkey) == c->q.expect_key_len
                 && memcmp(c->xkey, c->q.expect_key,
                           c->q.expect_key_len) == 0;
        }

        if (!ok) {
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
        snprintf(msg, sizeof(msg), "invalid JSON body: %s", jerr);
        llm_error(c, 400, "invalid_request_error", msg, NULL);
        goto done;
    }

    c->mode = c->q.mode >= 0 ? c->q.mode
              : c->q.status >= 0 ? M_STATUS : M_NORMAL;

    err = llm_extract(c, root, &max_tokens);
    if (err) {
        llm_error(c, 400, "invalid_request_error", err, NULL);
        goto done;
    }

    if (c->mode == M_STATUS) {
        c->status = c->q.status >= 0 ? (int) c->q.status : 500;
        snprintf(msg, sizeof(msg), "mock error %d", c->status);

        if (c->prov == P_OPENAI) {
            llm_error(c, c->status, "mock_error", msg, NULL);
        } else {
            llm_error(c, c->status, "api_error", msg, NULL);
        }
        goto done;
    }

    ttft = c->q.ttft >= 0 ? c->q.ttft : cfg.ttft;
    tps = c->q.tps >= 0 ? c->q.tps : cfg.tps;
    c->token_size = c->q.token_size >= 0 ? c->q.token_size : cfg.token_size;
    c->interval = tps > 0 ? 1000000 / tps : 0;
    c->created = (long long) time(NULL);

    total = (c->mode == M_ECHO) ? (long) echo_count(c)
            : c->q.tokens >= 0 ? c->q.tokens : cfg.tokens;

    c->limit = total;
    if (max_tokens >= 0 && max_tokens < total) {
        c->limit = max_tokens;
        c->length_cut = 1;
    }

    c->fail_at = -1;
    if (c->mode == M_CUT || c->mode == M_STALL || c->mode == M_STREAM_ERROR
        || c->mode == M_GARBAGE)
    {
        after = c->q.after >= 0 ? c->q.after : 3;
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

    jv_free(root);
}


/* the control endpoints */

static void
stats_request(conn_t *c, const char *path)
{
    tag_slot_t  *s;
    counters_t   zero, *k;
    size_t       i;

    memset(&zero, 0, sizeof(counters_t));
    g_tmp.pos = g_tmp.len = 0;

    s = c->q.has_tag ? tag_find(c->q.tag, c->q.tag_len, 0) : &g_all;

    if (strcmp(path, "/stats") == 0) {
        if (strcmp(c->method, "GET") != 0) {
            respond_http_error(c, 405, "use GET");
            return;
        }

        k = s ? &s->cnt : &zero;
        buf_addf(&g_tmp, "{\"requests\":%llu,\"streams_started\":%llu,"
                 "\"streams_completed\":%llu,\"streams_aborted\":%llu,"
                 "\"active\":%lld,\"tokens_sent\":%llu}\n",
                 (unsigned long long) k->requests,
                 (unsigned long long) k->started,
                 (unsigned long long) k->completed,
                 (unsigned long long) k->aborted,
                 (long long) k->active,
                 (unsigned long long) k->tokens);
        respond_json(c, 200, &g_tmp);
        return;
    }

    if (strcmp(path, "/last") == 0) {
        if (s == NULL || s->last == NULL) {
            buf_adds(&g_tmp, "{\"error\":\"no request recorded\"}\n");
            respond_json(c, 404, &g_tmp);
            return;
        }

        respond(c, 200, "application/json", s->last, s->last_len,
                END_KEEPALIVE);
        return;
    }

    /* "/reset", "/stats/reset" */

    if (c->q.has_tag) {
        if (s) {
            tag_reset(s);
        }

    } else {
        tag_reset(&g_all);

        for (i = 0; i < MOCK_TAGS; i++) {
            if (g_tags[i].used) {
                tag_reset(&g_tags[i]);
            }
        }
    }

    buf_adds(&g_tmp, "{\"reset\":true}\n");
    respond_json(c, 200, &g_tmp);
}


static int
path_ends(const char *path, size_t len, const char *suffix)
{
    size_t  n;

    n = strlen(suffix);
    return len >= n && memcmp(path + len - n, suffix, n) == 0;
}


static void
conn_dispatch(conn_t *c, const char *body, size_t blen)
{
    char        *path, *qs;
    size_t       len;
    const char  *err;

    c->t_start = now_us();

    qs = strchr(c->uri, '?');
    len = qs ? (size_t) (qs - c->uri) : strlen(c->uri);
    path = xstrndup(c->uri, len);

    if (path_ends(path, len, "/chat/completions")) {
        c->prov = P_OPENAI;
    } else if (path_ends(path, len, "/messages")) {
        c->prov = P_ANTHROPIC;
    }

    if (query_parse(qs ? qs + 1 : NULL, &c->q, &err) != 0) {
        if (c->prov != P_NONE) {
            llm_error(c, 400, "invalid_request_error", err, NULL);
        } else {
            respond_http_error(c, 400, err);
        }
        goto done;
    }

    if (c->prov != P_NONE) {
        if (strcmp(c->method, "POST") != 0) {
            llm_error(c, 405, "invalid_request_error", "use POST", NULL);
            goto done;
        }

        if (c->q.has_tag) {
            c->tag = tag_find(c->q.tag, c->q.tag_len, 1);
        }

        llm_request(c, body, blen);
        goto done;
    }

    if (strcmp(path, "/stats") == 0 || strcmp(path, "/last") == 0) {
        stats_request(c, path);
        goto done;
    }

    if (strcmp(path, "/stats/reset") == 0 || strcmp(path, "/reset") == 0) {
        if (strcmp(c->method, "GET") != 0 && strcmp(c->method, "POST") != 0)
        {
            respond_http_error(c, 405, "use GET or POST");
            goto done;
        }
        stats_request(c, path);
        goto done;
    }

    if (strcmp(path, "/health") == 0 || strcmp(path, "/") == 0) {
        g_tmp.pos = g_tmp.len = 0;
        buf_adds(&g_tmp, "{\"status\":\"ok\",\"server\":\"llm-mock\"}\n");
        respond_json(c, 200, &g_tmp);
        goto done;
    }

    g_tmp.pos = g_tmp.len = 0;
    buf_adds(&g_tmp, "{\"error\":{\"message\":\"not found (llm-mock)\","
             "\"type\":\"invalid_request_error\",\"code\":null}}");
    respond_json(c, 404, &g_tmp);

done:

    free(path);
}


/* HTTP parsing */

static char *
str_trim_dup(const char *v, const char *ve)
{
    while (v < ve && (*v == ' ' || *v == '\t')) {
        v++;
    }

    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) {
        ve--;
    }

    return xstrndup(v, ve - v);
}


static int
hdr_is(const char *name, size_t len, const char *want)
{
    return strlen(want) == len && strncasecmp(name, want, len) == 0;
}


static int
ci_contains(const char *s, const char *word)
{
    size_t  n;

    n = strlen(word);

    for ( ; *s; s++) {
        if (strncasecmp(s, word, n) == 0) {
            return 1;
        }
    }

    return 0;
}


/* 1: parsed, 0: needs more, -1: an error response is queued */

static int
http_parse_head(conn_t *c, const char *base, size_t avail)
{
    const char  *p, *end, *nl, *le, *sp1, *sp2, *colon, *v, *q;
    char        *conn, *te, *val;
    long long    cl;
    size_t       n;

    /* find the empty line that ends the head */

    end = base + avail;
    p = base;

    for ( ;; ) {
        nl = memchr(p, '\n', end - p);

        if (nl == NULL) {
            if (avail > MOCK_MAX_HEADER) {
                respond_http_error(c, 431, "request head too large");
                return -1;
            }
            return 0;
        }

        if (p > base && (nl == p || (nl == p + 1 && *p == '\r'))) {
            break;
        }

        if (p == base && (nl == p || (nl == p + 1 && *p == '\r'))) {
            /* tolerate empty lines before a request */
            base = nl + 1;
            c->in.pos += nl + 1 - p;
            avail = end - base;
        }

        p = nl + 1;
    }

    if ((size_t) (nl + 1 - base) > MOCK_MAX_HEADER) {
        respond_http_error(c, 431, "request head too large");
        return -1;
    }

    c->hdr_size = nl + 1 - base;

    /* the request line */

    nl = memchr(base, '\n', end - base);
    le = (nl > base && nl[-1] == '\r') ? nl - 1 : nl;

    sp1 = memchr(base, ' ', le - base);
    sp2 = sp1 ? memchr(sp1 + 1, ' ', le - sp1 - 1) : NULL;

    if (sp1 == NULL || sp2 == NULL || sp1 == base
        || (size_t) (sp1 - base) >= sizeof(c->method)
        || sp2 == sp1 + 1 || sp1[1] != '/')
    {
        respond_http_error(c, 400, "bad request line");
        return -1;
    }

    for (q = base; q < sp1; q++) {
        if (*q < 'A' || *q > 'Z') {
            respond_http_error(c, 400, "bad request method");
            return -1;
        }
    }

    memcpy(c->method, base, sp1 - base);
    c->method[sp1 - base] = '\0';
    c->uri = xstrndup(sp1 + 1, sp2 - sp1 - 1);

    n = le - sp2 - 1;

    if (n == 8 && memcmp(sp2 + 1, "HTTP/1.1", 8) == 0) {
        c->http11 = 1;

    } else if (n == 8 && memcmp(sp2 + 1, "HTTP/1.0", 8) == 0) {
        c->http11 = 0;

    } else {
        respond_http_error(c, 400, "bad HTTP version");
        return -1;
    }

    for (q = c->uri; *q; q++) {
        if ((unsigned char) *q <= 0x20 || *q == 0x7f) {
            respond_http_error(c, 400, "bad request target");
            return -1;
        }
    }

    c->hdr_start = nl + 1 - base;
    c->keepalive = c->http11;

    /* the headers */

    conn = NULL;
    te = NULL;
    cl = -1;
    end = base + c->hdr_size;

    for (p = nl + 1; p < end; p = nl + 1) {
        nl = memchr(p, '\n', end - p);
        le = (nl > p && nl[-1] == '\r') ? nl - 1 : nl;

        if (le == p) {
            break;
        }

        colon = memchr(p, ':', le - p);

        if (colon == NULL || colon == p) {
            goto bad_header;
        }

        for (q = p; q < colon; q++) {
            if ((unsigned char) *q <= 0x20 || *q == 0x7f) {
                goto bad_header;
            }
        }

        n = colon - p;
        v = colon + 1;
        val = NULL;

        if (hdr_is(p, n, "content-length")) {
            val = str_trim_dup(v, le);

            if (val[0] == '\0' || strspn(val, "0123456789") != strlen(val)
                || strlen(val) > 15 || (cl >= 0 && cl != atoll(val)))
            {
                free(val);
                respond_http_error(c, 400, "bad content-length");
                goto failed;
            }

            cl = atoll(val);
            free(val);

        } else if (hdr_is(p, n, "transfer-encoding")) {
            free(te);
            te = str_trim_dup(v, le);

        } else if (hdr_is(p, n, "connection")) {
            free(conn);
            conn = str_trim_dup(v, le);

        } else if (hdr_is(p, n, "expect")) {
            val = str_trim_dup(v, le);
            c->expect100 = (strcasecmp(val, "100-continue") == 0);
            free(val);

        } else if (hdr_is(p, n, "authorization")) {
            free(c->auth);
            c->auth = str_trim_dup(v, le);

        } else if (hdr_is(p, n, "x-api-key")) {
            free(c->xkey);
            c->xkey = str_trim_dup(v, le);

        } else if (hdr_is(p, n, "anthropic-version")) {
            free(c->aver);
            c->aver = str_trim_dup(v, le);

        } else if (hdr_is(p, n, "content-type")) {
            free(c->ctype);
            c->ctype = str_trim_dup(v, le);
        }
    }

    if (conn) {
        if (ci_contains(conn, "close")) {
            c->keepalive = 0;
        } else if (ci_contains(conn, "keep-alive")) {
            c->keepalive = 1;
        }
    }

    if (te) {
        if (strcasecmp(te, "chunked") != 0 || !c->http11) {
            respond_http_error(c, 501, "unsupported transfer-encoding");
            goto failed;
        }

        if (cl >= 0) {
            respond_http_error(c, 400,
                               "both content-length and transfer-encoding");
            goto failed;
        }

        c->req_chunked = 1;
    }

    if (cl > MOCK_MAX_BODY) {
        respond_http_error(c, 413, "request body too large");
        goto failed;
    }

    c->clen = cl < 0 ? 0 : cl;

    free(conn);
    free(te);
    return 1;

bad_header:

    respond_http_error(c, 400, "bad header line");

failed:

    free(conn);
    free(te);
    return -1;
}


/* 1: complete, 0: needs more, -1: malformed, -2: too large */

static int
chunked_decode(const char *p, size_t n, buf_t *out, size_t *consumed)
{
    size_t  i, size, ll;
    int     digits, d;
    char   *nl;

    out->pos = out->len = 0;
    i = 0;

    for ( ;; ) {
        size = 0;
        digits = 0;

        while (i < n) {
            d = p[i];
            d = (d >= '0' && d <= '9') ? d - '0'
                : (d >= 'a' && d <= 'f') ? d - 'a' + 10
                : (d >= 'A' && d <= 'F') ? d - 'A' + 10 : -1;

            if (d < 0) {
                break;
            }

            size = size * 16 + d;
            if (size > MOCK_MAX_BODY) {
                return -2;
            }

            digits++;
            i++;
        }

        if (i >= n) {
            return 0;
        }

        if (digits == 0) {
            return -1;
        }

        /* chunk extensions */

        nl = memchr(p + i, '\n', n - i);
        if (nl == NULL) {
            return (n - i > 4096) ? -1 : 0;
        }

        i = nl - p + 1;

        if (size == 0) {
            /* trailers up to an empty line */
            for ( ;; ) {
                nl = memchr(p + i, '\n', n - i);
                if (nl == NULL) {
                    return 0;
                }

                ll = nl - (p + i);
                if (ll == 0 || (ll == 1 && p[i] == '\r')) {
                    *consumed = nl - p + 1;
                    return 1;
                }

                i = nl - p + 1;
            }
        }

        if (out->len + size > MOCK_MAX_BODY) {
            return -2;
        }

        if (n - i < size) {
            return 0;
        }

        buf_add(out, p + i, size);
        i += size;

        if (i < n && p[i] == '\r') {
            i++;
        }

        if (i >= n) {
            return 0;
        }

        if (p[i] != '\n') {
            return -1;
        }

        i++;
    }
}


static int
conn_send100(conn_t *c)
{
    if (!c->expect100 || c->sent100 || !c->http11) {
        return 0;
    }

    c->sent100 = 1;
    buf_adds(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");

    return conn_flush(c) < 0 ? -1 : 0;
}


/* parses and answers what is buffered; -1 when the connection is gone */

static int
conn_process(conn_t *c)
{
    const char  *base, *body;
    size_t       avail, raw, blen;
    int          rc;

    for ( ;; ) {
        if (c->state != S_HEADERS && c->state != S_BODY) {
            return 0;
        }

        if (c->in.pos == c->in.len) {
            buf_free(&c->in);
            return 0;
        }

        base = c->in.data + c->in.pos;
        avail = c->in.len - c->in.pos;

        if (c->state == S_HEADERS) {
            rc = http_parse_head(c, base, avail);

            if (rc == 0) {
                return 0;
            }

            if (rc < 0) {
                goto flush;
            }

            base = c->in.data + c->in.pos;
            avail = c->in.len - c->in.pos;
            c->state = S_BODY;
        }

        if (c->req_chunked) {
            rc = chunked_decode(base + c->hdr_size, avail - c->hdr_size,
                                &c->dbody, &raw);

            if (rc == 0 && avail >= MOCK_MAX_IN) {
                rc = -2;
            }

            if (rc == 0) {
                return conn_send100(c);
            }

            if (rc == -1) {
                respond_http_error(c, 400, "bad chunked body");
                goto flush;
            }

            if (rc == -2) {
                respond_http_error(c, 413, "request body too large");
                goto flush;
            }

            body = c->dbody.data ? c->dbody.data : "";
            blen = c->dbody.len;

        } else {
            if (avail - c->hdr_size < (size_t) c->clen) {
                return conn_send100(c);
            }

            body = base + c->hdr_size;
            blen = c->clen;
            raw = c->clen;
        }

        conn_dispatch(c, body, blen);
        c->in.pos += c->hdr_size + raw;

        if (c->in.pos == c->in.len) {
            buf_free(&c->in);
        }

    flush:

        rc = conn_flush(c);

        if (rc <= 0) {
            return rc;
        }
    }
}


static int
conn_read(conn_t *c)
{
    char     scratch[16384];
    ssize_t  n;
    size_t   limit, have, room;
    int      rq;

    for ( ;; ) {
        rq = (c->state == S_HEADERS || c->state == S_BODY);
        limit = rq ? MOCK_MAX_IN : MOCK_MAX_PIPELINE;
        have = c->in.len - c->in.pos;

        if (rq && have >= limit) {
            /* cannot be a valid request: conn_process() answers it */
            if (conn_process(c) < 0) {
                return -1;
            }

            if ((c->state == S_HEADERS || c->state == S_BODY)
                && c->in.len - c->in.pos >= limit)
            {
                respond_http_error(c, 413, "request too large");
                if (conn_flush(c) < 0) {
                    return -1;
                }
            }

            continue;
        }

        if (c->state == S_LINGER || have >= limit) {
            n = recv(c->fd, scratch, sizeof(scratch), 0);

            if (n > 0) {
                if (c->state != S_LINGER) {
                    /* too much pipelined: do not parse it */
                    c->keepalive = 0;
                    if (c->state == S_FLUSH && c->end == END_KEEPALIVE) {
                        c->end = END_CLOSE;
                    }
                }
                continue;
            }

        } else {
            buf_reserve(&c->in, 4096);
            room = c->in.cap - c->in.len;
            if (room > limit - have) {
                room = limit - have;
            }

            n = recv(c->fd, c->in.data + c->in.len, room, 0);

            if (n > 0) {
                c->in.len += n;
                continue;
            }
        }

        if (n == 0) {
            conn_peer_gone(c);
            return -1;
        }

        if (errno == EINTR) {
            continue;
        }

        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            break;
        }

        conn_peer_gone(c);
        return -1;
    }

    if (c->state == S_HEADERS || c->state == S_BODY) {
        return conn_process(c);
    }

    return 0;
}


static void
conn_write(conn_t *c)
{
    int  rc;

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


static void
conn_timer(conn_t *c)
{
    if (c->state == S_LINGER) {
        conn_close(c);
        return;
    }

    if (c->state == S_GEN && gen_run(c) == 1) {
        conn_process(c);
    }
}


static void
conn_event(conn_t *c, uint32_t ev)
{
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        if (conn_read(c) < 0) {
            return;
        }
    }

    if (ev & EPOLLOUT) {
        conn_write(c);
    }
}


/* listening */

static void
accept_pause(int on)
{
    struct epoll_event  ev;

    if (on) {
        epoll_ctl(g_ep, EPOLL_CTL_DEL, g_lfd, NULL);
        g_accept_resume = now_us() + 100000;
        return;
    }

    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.ptr = NULL;
    epoll_ctl(g_ep, EPOLL_CTL_ADD, g_lfd, &ev);
    g_accept_resume = 0;
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
    unsigned                  port;

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

        one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

        c = xrealloc(NULL, sizeof(conn_t));
        memset(c, 0, sizeof(conn_t));
        c->fd = fd;
        c->heap_idx = -1;
        conn_reset(c);
        c->t_start = now_us();

        host[0] = '\0';
        port = 0;

        if (ss.ss_family == AF_INET) {
            struct sockaddr_in  *sin = (struct sockaddr_in *) &ss;
            inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
            port = ntohs(sin->sin_port);

        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6  *sin6 = (struct sockaddr_in6 *) &ss;
            inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
            port = ntohs(sin6->sin6_port);
        }

        snprintf(c->peer, sizeof(c->peer), "%s:%u", host, port);

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


static int
addr_parse(const char *spec, struct sockaddr_storage *ss, socklen_t *len)
{
    char              host[256];
    const char       *port, *p;
    struct addrinfo   hints, *ai;
    size_t            n;

    p = strrchr(spec, ':');

    if (p == NULL) {
        strcpy(host, "127.0.0.1");
        port = spec;

    } else {
        n = p - spec;
        if (n >= sizeof(host)) {
            return -1;
        }

        if (n >= 2 && spec[0] == '[' && spec[n - 1] == ']') {
            memcpy(host, spec + 1, n - 2);
            host[n - 2] = '\0';
        } else {
            memcpy(host, spec, n);
            host[n] = '\0';
        }

        port = p + 1;

        if (host[0] == '\0' || strcmp(host, "*") == 0) {
            strcpy(host, "0.0.0.0");
        }
    }

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;

    if (getaddrinfo(host, port, &hints, &ai) != 0) {
        return -1;
    }

    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}


static int
listen_on(const char *spec, int backlog, struct sockaddr_storage *ss,
    socklen_t *sl)
{
    int  fd, one;

    if (addr_parse(spec, ss, sl) != 0) {
        fprintf(stderr, "llm-mock: bad address \"%s\"\n", spec);
        return -1;
    }

    fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                0);
    if (fd < 0) {
        perror("llm-mock: socket");
        return -1;
    }

    one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));

    if (bind(fd, (struct sockaddr *) ss, *sl) != 0
        || listen(fd, backlog) != 0)
    {
        fprintf(stderr, "llm-mock: bind/listen %s: %s\n", spec,
                strerror(errno));
        close(fd);
        return -1;
    }

    getsockname(fd, (struct sockaddr *) ss, sl);
    return fd;
}


static unsigned
addr_port(struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET6) {
        return ntohs(((struct sockaddr_in6 *) ss)->sin6_port);
    }

    return ntohs(((struct sockaddr_in *) ss)->sin_port);
}


/*
 * A listener with backlog 0 that never accepts: once one connection sits
 * in its accept queue, Linux drops further SYNs, so connects time out.
 */

static int
blackhole_start(const char *spec)
{
    int                      i, fd;
    socklen_t                sl;
    struct pollfd            pfd;
    struct sockaddr_storage  ss;

    g_bfd = listen_on(spec, 0, &ss, &sl);
    if (g_bfd < 0) {
        return -1;
    }

    for (i = 0; i < 4; i++) {
        fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    0);
        if (fd < 0) {
            return -1;
        }

        g_fill[i] = fd;

        if (connect(fd, (struct sockaddr *) &ss, sl) == 0) {
            continue;
        }

        if (errno != EINPROGRESS) {
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
        "                [--token-size BYTES] [--blackhole [HOST:]PORT]"
        " [--quiet]\n\n"
        "defaults: --listen 127.0.0.1:8088 --ttft 300 --tps 30 --tokens 60\n"
        "query parameters: tokens tps ttft token_size mode after status tag\n"
        "                  expect_key stamp chunked\n"
        "modes: normal echo status cut stall stream_error garbage hang\n"
        "control: GET /stats[?tag=X], POST /stats/reset, GET /reset,"
        " GET /last[?tag=X]\n");
}


static int
opt_num(const char *name, const char *v, long max, long *out)
{
    if (v == NULL || query_num(v, max, out) != 0) {
        fprintf(stderr, "llm-mock: %s needs a number up to %ld\n", name, max);
        return -1;
    }

    return 0;
}


static int
parse_args(int argc, char **argv)
{
    int          i;
    char        *a, *v, *eq;
    static char  name[64];

    for (i = 1; i < argc; i++) {
        a = argv[i];
        v = NULL;

        eq = strchr(a, '=');
        if (eq && strncmp(a, "--", 2) == 0 && (size_t) (eq - a) < 64) {
            memcpy(name, a, eq - a);
            name[eq - a] = '\0';
            a = name;
            v = eq + 1;
        }

        if (strcmp(a, "--quiet") == 0 || strcmp(a, "-q") == 0) {
            cfg.quiet = 1;
            continue;
        }

        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        }

        if (strcmp(a, "--listen") != 0 && strcmp(a, "--blackhole") != 0
            && strcmp(a, "--ttft") != 0 && strcmp(a, "--tps") != 0
            && strcmp(a, "--tokens") != 0 && strcmp(a, "--token-size") != 0)
        {
            fprintf(stderr, "llm-mock: unknown option %s\n", a);
            usage(stderr);
            return -1;
        }

        if (v == NULL && i + 1 < argc) {
            v = argv[++i];
        }

        if (v == NULL) {
            fprintf(stderr, "llm-mock: %s needs a value\n", a);
            return -1;
        }

        if (strcmp(a, "--listen") == 0) {
            cfg.listen = v;
        } else if (strcmp(a, "--blackhole") == 0) {
            cfg.blackhole = v;
        } else if (strcmp(a, "--ttft") == 0) {
            if (opt_num(a, v, 3600000, &cfg.ttft) != 0) {
                return -1;
            }
        } else if (strcmp(a, "--tps") == 0) {
            if (opt_num(a, v, 1000000, &cfg.tps) != 0) {
                return -1;
            }
        } else if (strcmp(a, "--tokens") == 0) {
            if (opt_num(a, v, MOCK_MAX_TOKENS, &cfg.tokens) != 0) {
                return -1;
            }
        } else if (opt_num(a, v, 65536, &cfg.token_size) != 0) {
            return -1;
        }
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
    struct epoll_event        ev, evs[512];
    struct sockaddr_storage   ss;

    if (parse_args(argc, argv) != 0) {
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
                "(port %u), ttft %ldms, %ld tokens/s, %ld tokens\n",
                cfg.listen, addr_port(&ss), cfg.ttft, cfg.tps, cfg.tokens);
    }

    if (cfg.blackhole && blackhole_start(cfg.blackhole) != 0) {
        return 1;
    }

    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep < 0) {
        perror("llm-mock: epoll_create1");
        return 1;
    }

    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.ptr = NULL;
    epoll_ctl(g_ep, EPOLL_CTL_ADD, g_lfd, &ev);

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

        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
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
            conn_timer(c);
        }
    }

    if (!cfg.quiet) {
        fprintf(stderr, "llm-mock: exiting\n");
    }

    while (g_conns) {
        conn_close(g_conns);
    }

    for (i = 0; i < MOCK_TAGS; i++) {
        free(g_tags[i].last);
    }

    for (i = 0; i < 4; i++) {
        if (g_fill[i] >= 0) {
            close(g_fill[i]);
        }
    }

    if (g_bfd >= 0) {
        close(g_bfd);
    }

    free(g_all.last);
    free(g_heap);
    buf_free(&g_tmp);
    buf_free(&g_ev);
    buf_free(&g_tok);
    close(g_lfd);
    close(g_ep);

    return 0;
}
