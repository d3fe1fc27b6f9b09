
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * The Redis store's commands, sent and read on the store thread: a job's
 * write, a read and a control request (cancel, pause, resume), each as
 * one transaction or script,
 * and how their replies become answers and records.  The store thread
 * calls these; they use only hiredis and the connection it made, and
 * leave a lost connection to the thread (rd->lost).
 *
 * Keys, all with the job id as hash tag so that a job stays in one slot
 * of a Redis Cluster, all expiring "ttl" after the job's last write:
 *
 *     PREFIX{ID}:job      HASH    state created updated finished watched
 *                                 owner background cancel pause paused
 *                                 finish in out code message nevents
 *                                 textlen metalen sv
 *     PREFIX{ID}:text     STRING  the job's text
 *     PREFIX{ID}:meta     STRING  the payloads of a pipeline's events
 *     PREFIX{ID}:pstate   STRING  the pipeline's state (JSON), version sv
 *     PREFIX{ID}:events   STREAM  entry "SEQ-0" (SEQ: 1-based event number)
 *                                 with fields t (type), o (text offset, or
 *                                 meta offset of a payload event) and l
 *                                 (length); as long as the job's log,
 *                                 which llm_max_events bounds
 *
 * meta and pstate exist for pipeline jobs only.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_store_redis.h"


/*
 * Sets a field of an existing hash only: the readers' "watched" and the
 * control requests must not create a job that has expired or never was.
 */
#define NGX_HTTP_LLM_REDIS_HSETXX                                            \
    "if redis.call('exists', KEYS[1]) == 1 then "                            \
    "return redis.call('hset', KEYS[1], ARGV[1], ARGV[2]) end "              \
    "return -1"

/* a pause or resume request: the last one, and how many so far */
#define NGX_HTTP_LLM_REDIS_PAUSE                                             \
    "if redis.call('exists', KEYS[1]) == 1 then "                            \
    "redis.call('hset', KEYS[1], 'pause', ARGV[1]) "                         \
    "return redis.call('hincrby', KEYS[1], 'pseq', 1) end "                  \
    "return -1"

/* a claim: the job as its reader saw it, silent since */
#define NGX_HTTP_LLM_REDIS_CLAIM                                             \
    "if redis.call('hget', KEYS[1], 'state') == 'running' and "              \
    "redis.call('hget', KEYS[1], 'updated') == ARGV[1] then "               \
    "redis.call('hset', KEYS[1], 'updated', ARGV[2]) return 1 end "          \
    "return 0"

/*
 * The hash of a job that Redis has had: its fields are set only if it is
 * still there and holds at least what the write starts from (ARGV[1..3]:
 * the marks, events, text and meta), -1 if not, so that a write from the
 * job's marks never makes a record of the part of the job it carries when
 * Redis has lost the rest (a restart without persistence) or its end (a
 * failover to a replica that had not received the last confirmed writes);
 * the job is written again whole instead.
 */
#define NGX_HTTP_LLM_REDIS_HSETKNOWN                                         \
    "local h = redis.call('hmget', KEYS[1], 'nevents', 'textlen', "         \
    "'metalen') "                                                            \
    "if not h[1] or tonumber(h[1]) < tonumber(ARGV[1]) "                     \
    "or (tonumber(h[2]) or 0) < tonumber(ARGV[2]) "                          \
    "or (tonumber(h[3]) or 0) < tonumber(ARGV[3]) then return -1 end "      \
    "return redis.call('hset', KEYS[1], unpack(ARGV, 4))"


/*
 * A fetch's events are made as hiredis parses the reply.  The XRANGE of a
 * long job is tens of thousands of entries of nine replies each, which
 * hiredis would allocate one by one (and free) only for them to be
 * copied into the record: while the EXEC reply of a fetch is read, the
 * reader's functions make the record's events of the entries instead,
 * and the other replies as hiredis does.
 */
typedef struct {
    redisReplyObjectFunctions     *fn;          /* hiredis's own */
    ngx_http_llm_record_t         *rec;
    ngx_uint_t                     from_event;
    ngx_uint_t                     max;         /* entries in the reply */
    ngx_uint_t                     n;           /* events kept */
    int64_t                        first;       /* the first one's number */
    const char                    *what;        /* what is wrong */
    unsigned                       nomem:1;
    unsigned                       stop:1;      /* a gap: no more kept */

    /* the entry being read: [ID, [FIELD, VALUE, ...]] */
    unsigned                       entry:1;
    unsigned                       shape:1;     /* as such so far */
    unsigned                       id:1;        /* its number read */
    ngx_uint_t                     field;       /* of the value to come */
    ngx_uint_t                     seen;        /* 1 t, 2 o, 4 l, 8 bad */
    int64_t                        seq, t, o, l;
} ngx_http_llm_redis_events_t;


/* the count of an array reply, as hiredis declares it */
#if (HIREDIS_MAJOR >= 1)
typedef size_t  ngx_http_llm_redis_count_t;
#else
typedef int     ngx_http_llm_redis_count_t;
#endif


static ngx_int_t ngx_http_llm_redis_reply(ngx_http_llm_redis_t *rd,
    redisReply **reply);
static void ngx_http_llm_redis_error(ngx_http_llm_redis_t *rd, u_char *id,
    redisReply *r);
static void ngx_http_llm_redis_refusal(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w, redisReply *r);
static ngx_int_t ngx_http_llm_redis_check_write(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w, redisReply *exec);
static ngx_int_t ngx_http_llm_redis_record(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op, redisReply **replies,
    ngx_http_llm_redis_events_t *ev);
static ngx_int_t ngx_http_llm_redis_string(redisReply *r, size_t max,
    u_char **p, size_t *len);
static ngx_int_t ngx_http_llm_redis_level(const redisReadTask *task);
static void *ngx_http_llm_redis_ev_string(const redisReadTask *task,
    char *str, size_t len);
static void *ngx_http_llm_redis_ev_array(const redisReadTask *task,
    ngx_http_llm_redis_count_t n);
static void *ngx_http_llm_redis_ev_integer(const redisReadTask *task,
    long long value);
static void *ngx_http_llm_redis_ev_nil(const redisReadTask *task);
static void *ngx_http_llm_redis_ev_other(const redisReadTask *task,
    ngx_int_t level);
static void ngx_http_llm_redis_ev_entry(ngx_http_llm_redis_events_t *ev);
static ngx_int_t ngx_http_llm_redis_owner(ngx_http_llm_record_t *rec,
    redisReply *v);
static void ngx_http_llm_redis_lit(ngx_http_llm_redis_cmd_t *cmd,
    const char *s);
static void ngx_http_llm_redis_key(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_cmd_t *cmd, u_char *id, const char *type);
static ngx_int_t ngx_http_llm_redis_is(redisReply *r, const char *s);
static ngx_int_t ngx_http_llm_redis_num(redisReply *r, int64_t min,
    int64_t max, int64_t *v);


static const char  *ngx_http_llm_redis_states[] = {
    "running", "completed", "failed", "cancelled"
};


/* a command refused by the server: logged once while it goes on */

static void
ngx_http_llm_redis_error(ngx_http_llm_redis_t *rd, u_char *id,
    redisReply *r)
{
    /* sent again to the node named: not an error */

    if (ngx_http_llm_redis_cluster_redirected(rd)) {
        return;
    }

    rd->errors = 1;

    if (rd->erred) {
        return;
    }

    rd->erred = 1;

    if (r->type != REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "llm: redis store: %V: job %*s: unexpected reply "
                      "of type %d", &rd->conf->name,
                      (size_t) NGX_HTTP_LLM_JOB_ID_LEN, id, r->type);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                  "llm: redis store: %V: job %*s: %*s", &rd->conf->name,
                  (size_t) NGX_HTTP_LLM_JOB_ID_LEN, id, r->len, r->str);
}


/*
 * Store thread: an error reply to a job's write.  Those that pass (a
 * server loading, busy, failing over, a cluster redirect) are logged once
 * as before and the write is sent again later; any other (a value too
 * big, out of memory with noeviction, a refused command) would be refused
 * again with every flush until the ttl: the write is marked refused, with
 * the reply, for the loop to give the job up.
 */

static void
ngx_http_llm_redis_refusal(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w, redisReply *r)
{
    size_t             len;
    ngx_uint_t         i;
    static const char *passing[] = {
        "LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN",
        "READONLY", "NOREPLICAS", "MOVED", "ASK", "NOAUTH"
    };

    for (i = 0; i < sizeof(passing) / sizeof(passing[0]); i++) {
        len = ngx_strlen(passing[i]);

        if (r->len >= len && ngx_strncmp(r->str, passing[i], len) == 0
            && (r->len == len || r->str[len] == ' '))
        {
            ngx_http_llm_redis_error(rd, w->id, r);
            return;
        }
    }

    if (!w->refused) {
        w->refused = 1;
        w->reply_len = ngx_min(r->len, sizeof(w->reply));
        ngx_memcpy(w->reply, r->str, w->reply_len);
    }

    rd->errors = 1;
}


/*
 * Store thread: one job's write, as one transaction:
 *
 *     MULTI
 *     [DEL job text events meta pstate]         Redis lost the job
 *     [SETRANGE text OFFSET NEW_TEXT]           new text
 *     [SETRANGE meta OFFSET NEW_META]           new payloads
 *     [SET pstate STATE]                        a new pipeline state
 *     [XADD events SEQ-0 t T o O l L]...  one per new event
 *     HSET job state .. created .. (15 fields), or, when Redis has had
 *         the job, EVAL HSETKNOWN 1 job E T M state .. (from the
 *         marks E, T, M; 12 fields, not the created, owner and
 *         background that do not change)
 *     [HSETNX job cancel 0, HSETNX job watched 0]    first write
 *     PEXPIRE job|text|events TTL               3 commands
 *     [PEXPIRE meta TTL] [PEXPIRE pstate TTL]   a pipeline's job
 *     HMGET job cancel watched pause pseq
 *     EXEC
 *
 * SETRANGE rather than APPEND, and events with their own ids, so that
 * writing the same thing twice changes nothing.
 */

void
ngx_http_llm_redis_send_write(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w)
{
    u_char                    hex[NGX_HTTP_LLM_OWNER_LEN * 2];
    size_t                    off;
    ngx_uint_t                i, n;
    ngx_http_llm_event_t     *ev;
    ngx_http_llm_record_t    *rec;
    ngx_http_llm_redis_cmd_t  cmd;

    rec = &w->rec;
    n = 0;

    ngx_http_llm_redis_cmd(&cmd, "MULTI");
    ngx_http_llm_redis_send(rd, &cmd);

    if (w->rewrite) {
        ngx_http_llm_redis_cmd(&cmd, "DEL");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "job");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "text");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "events");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "meta");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "pstate");
        ngx_http_llm_redis_send(rd, &cmd);
        n++;
    }

    if (w->from_text < rec->text_len) {
        off = w->from_text - rec->from_text;

        ngx_http_llm_redis_cmd(&cmd, "SETRANGE");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "text");
        ngx_http_llm_redis_argf(&cmd, "%uz", w->from_text);
        ngx_http_llm_redis_arg(&cmd, rec->text + off,
                               rec->text_len - w->from_text);
        ngx_http_llm_redis_send(rd, &cmd);
        n++;
    }

    if (w->from_meta < rec->meta_len) {
        off = w->from_meta - rec->from_meta;

        ngx_http_llm_redis_cmd(&cmd, "SETRANGE");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "meta");
        ngx_http_llm_redis_argf(&cmd, "%uz", w->from_meta);
        ngx_http_llm_redis_arg(&cmd, rec->meta + off,
                               rec->meta_len - w->from_meta);
        ngx_http_llm_redis_send(rd, &cmd);
        n++;
    }

    if (rec->pipeline_state) {
        ngx_http_llm_redis_cmd(&cmd, "SET");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "pstate");
        ngx_http_llm_redis_arg(&cmd, rec->pipeline_state,
                               rec->pipeline_state_len);
        ngx_http_llm_redis_send(rd, &cmd);
        n++;
    }

    w->xadd = n;

    for (i = w->from_event; i < rec->nevents; i++) {
        ev = &rec->events[i - rec->from_event];

        ngx_http_llm_redis_cmd(&cmd, "XADD");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "events");
        ngx_http_llm_redis_argf(&cmd, "%ui-0", i + 1);
        ngx_http_llm_redis_lit(&cmd, "t");
        ngx_http_llm_redis_argf(&cmd, "%d", (int) ev->type);
        ngx_http_llm_redis_lit(&cmd, "o");
        ngx_http_llm_redis_argf(&cmd, "%uz", ev->off);
        ngx_http_llm_redis_lit(&cmd, "l");
        ngx_http_llm_redis_argf(&cmd, "%uD", ev->len);
        ngx_http_llm_redis_send(rd, &cmd);
        n++;
    }

    w->nxadd = n - w->xadd;
    w->hset = n;

    if (rec->has_owner) {
        ngx_hex_dump(hex, rec->owner, NGX_HTTP_LLM_OWNER_LEN);
    }

    /*
     * A job Redis has had may be gone (a restart): its hash is not made
     * again from this write, which holds only what the job gained since
     * the last one; readers would take that part for the job.  The
     * answer says so and the whole job is written next.
     */

    if (w->known && !w->rewrite) {
        ngx_http_llm_redis_cmd(&cmd, "EVAL");
        ngx_http_llm_redis_lit(&cmd, NGX_HTTP_LLM_REDIS_HSETKNOWN);
        ngx_http_llm_redis_lit(&cmd, "1");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "job");
        ngx_http_llm_redis_argf(&cmd, "%ui", w->from_event);
        ngx_http_llm_redis_argf(&cmd, "%uz", w->from_text);
        ngx_http_llm_redis_argf(&cmd, "%uz", w->from_meta);

    } else {
        ngx_http_llm_redis_cmd(&cmd, "HSET");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "job");
        ngx_http_llm_redis_lit(&cmd, "created");
        ngx_http_llm_redis_argf(&cmd, "%L", rec->created);
        ngx_http_llm_redis_lit(&cmd, "owner");
        ngx_http_llm_redis_arg(&cmd, hex, rec->has_owner ? sizeof(hex) : 0);
        ngx_http_llm_redis_lit(&cmd, "background");
        ngx_http_llm_redis_argf(&cmd, "%d", rec->background ? 1 : 0);
    }

    ngx_http_llm_redis_lit(&cmd, "state");
    ngx_http_llm_redis_lit(&cmd, ngx_http_llm_redis_states[rec->state]);
    ngx_http_llm_redis_lit(&cmd, "paused");
    ngx_http_llm_redis_argf(&cmd, "%d", rec->paused ? 1 : 0);
    ngx_http_llm_redis_lit(&cmd, "updated");
    ngx_http_llm_redis_argf(&cmd, "%L", rec->updated);
    ngx_http_llm_redis_lit(&cmd, "finished");
    ngx_http_llm_redis_argf(&cmd, "%L", rec->finished);
    ngx_http_llm_redis_lit(&cmd, "finish");
    ngx_http_llm_redis_arg(&cmd, rec->outcome.finish, rec->outcome.finish_len);
    ngx_http_llm_redis_lit(&cmd, "in");
    ngx_http_llm_redis_argf(&cmd, "%i", rec->outcome.input_tokens);
    ngx_http_llm_redis_lit(&cmd, "out");
    ngx_http_llm_redis_argf(&cmd, "%i", rec->outcome.output_tokens);
    ngx_http_llm_redis_lit(&cmd, "code");
    ngx_http_llm_redis_arg(&cmd, rec->outcome.code, rec->outcome.code_len);
    ngx_http_llm_redis_lit(&cmd, "message");
    ngx_http_llm_redis_arg(&cmd, rec->outcome.message,
                           rec->outcome.message_len);
    ngx_http_llm_redis_lit(&cmd, "nevents");
    ngx_http_llm_redis_argf(&cmd, "%ui", rec->nevents);
    ngx_http_llm_redis_lit(&cmd, "textlen");
    ngx_http_llm_redis_argf(&cmd, "%uz", rec->text_len);
    ngx_http_llm_redis_lit(&cmd, "metalen");
    ngx_http_llm_redis_argf(&cmd, "%uz", rec->meta_len);
    ngx_http_llm_redis_lit(&cmd, "sv");
    ngx_http_llm_redis_argf(&cmd, "%ui", rec->state_version);
    ngx_http_llm_redis_send(rd, &cmd);
    n++;

    /* never over a cancel request or a reader's mark: only if missing */

    if (!w->known) {
        ngx_http_llm_redis_cmd(&cmd, "HSETNX");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "job");
        ngx_http_llm_redis_lit(&cmd, "cancel");
        ngx_http_llm_redis_lit(&cmd, "0");
        ngx_http_llm_redis_send(rd, &cmd);

        ngx_http_llm_redis_cmd(&cmd, "HSETNX");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "job");
        ngx_http_llm_redis_lit(&cmd, "watched");
        ngx_http_llm_redis_lit(&cmd, "0");
        ngx_http_llm_redis_send(rd, &cmd);
        n += 2;
    }

    ngx_http_llm_redis_cmd(&cmd, "PEXPIRE");
    ngx_http_llm_redis_key(rd, &cmd, w->id, "job");
    ngx_http_llm_redis_argf(&cmd, "%M", rd->conf->ttl);
    ngx_http_llm_redis_send(rd, &cmd);

    ngx_http_llm_redis_cmd(&cmd, "PEXPIRE");
    ngx_http_llm_redis_key(rd, &cmd, w->id, "text");
    ngx_http_llm_redis_argf(&cmd, "%M", rd->conf->ttl);
    ngx_http_llm_redis_send(rd, &cmd);

    ngx_http_llm_redis_cmd(&cmd, "PEXPIRE");
    ngx_http_llm_redis_key(rd, &cmd, w->id, "events");
    ngx_http_llm_redis_argf(&cmd, "%M", rd->conf->ttl);
    ngx_http_llm_redis_send(rd, &cmd);
    n += 3;

    if (rec->meta_len) {
        ngx_http_llm_redis_cmd(&cmd, "PEXPIRE");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "meta");
        ngx_http_llm_redis_argf(&cmd, "%M", rd->conf->ttl);
        ngx_http_llm_redis_send(rd, &cmd);
        n++;
    }

    if (rec->state_version) {
        ngx_http_llm_redis_cmd(&cmd, "PEXPIRE");
        ngx_http_llm_redis_key(rd, &cmd, w->id, "pstate");
        ngx_http_llm_redis_argf(&cmd, "%M", rd->conf->ttl);
        ngx_http_llm_redis_send(rd, &cmd);
        n++;
    }

    w->hmget = n;

    ngx_http_llm_redis_cmd(&cmd, "HMGET");
    ngx_http_llm_redis_key(rd, &cmd, w->id, "job");
    ngx_http_llm_redis_lit(&cmd, "cancel");
    ngx_http_llm_redis_lit(&cmd, "watched");
    ngx_http_llm_redis_lit(&cmd, "pause");
    ngx_http_llm_redis_lit(&cmd, "pseq");
    ngx_http_llm_redis_send(rd, &cmd);
    n++;

    ngx_http_llm_redis_cmd(&cmd, "EXEC");
    ngx_http_llm_redis_send(rd, &cmd);

    w->ncmds = n;
}


/* store thread: "+OK", a "+QUEUED" per command, then EXEC's array */

void
ngx_http_llm_redis_read_write(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w)
{
    ngx_uint_t   i, queued;
    redisReply  *r;

    queued = 1;

    for (i = 0; i < w->ncmds + 1; i++) {
        if (ngx_http_llm_redis_reply(rd, &r) != NGX_OK) {
            return;
        }

        if (r->type == REDIS_REPLY_ERROR) {
            /* EXEC then fails with EXECABORT: the real cause counts */
            ngx_http_llm_redis_refusal(rd, w, r);
            queued = 0;
        }

        freeReplyObject(r);
    }

    if (ngx_http_llm_redis_reply(rd, &r) != NGX_OK) {
        return;
    }

    if (!queued) {
        /* logged */

    } else if (r->type != REDIS_REPLY_ARRAY || r->elements != w->ncmds) {
        ngx_http_llm_redis_error(rd, w->id, r);

    } else if (ngx_http_llm_redis_check_write(rd, w, r) == NGX_OK) {
        w->ok = 1;
    }

    freeReplyObject(r);
}


static ngx_int_t
ngx_http_llm_redis_check_write(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_write_t *w, redisReply *exec)
{
    int64_t      seq;
    ngx_uint_t   i;
    redisReply  *r;

    for (i = 0; i < w->ncmds; i++) {
        r = exec->element[i];

        if (r->type != REDIS_REPLY_ERROR) {
            continue;
        }

        /* an event written before, by a write whose answer was lost */

        if (i >= w->xadd && i < w->xadd + w->nxadd
            && ngx_strstr(r->str, "equal or smaller"))
        {
            continue;
        }

        ngx_http_llm_redis_refusal(rd, w, r);
        return NGX_ERROR;
    }

    /*
     * No hash (-1), or fields that were not there: Redis lost the job
     * (what this write set beside the hash goes with the rewrite's DEL)
     */

    r = exec->element[w->hset];

    if (w->known && !w->rewrite
        && r->type == REDIS_REPLY_INTEGER && r->integer != 0)
    {
        w->lost = 1;
    }

    r = exec->element[w->hmget];

    if (r->type == REDIS_REPLY_ARRAY && r->elements == 4) {
        w->cancel = ngx_http_llm_redis_is(r->element[0], "1");
        w->pause = ngx_http_llm_redis_is(r->element[2], "1");

        if (ngx_http_llm_redis_num(r->element[3], 0, INT64_MAX, &seq)
            == NGX_OK)
        {
            w->pause_seq = (ngx_uint_t) seq;
        }

        /* a reader's mark that is not a time is no mark */
        if (ngx_http_llm_redis_num(r->element[1], 0, INT64_MAX,
                                   &w->watched)
            != NGX_OK)
        {
            w->watched = 0;
        }
    }

    return NGX_OK;
}


/*
 * Store thread: a read, as one transaction so that it sees whole writes:
 *
 *     MULTI
 *     HGETALL job
 *     XRANGE events FROM_EVENT+1-0 +
 *     GETRANGE text FROM_TEXT -1
 *     GETRANGE meta FROM_META -1
 *     GET pstate
 *     EVAL HSETXX 1 job watched NOW
 *     EXEC
 */

void
ngx_http_llm_redis_send_fetch(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op)
{
    ngx_http_llm_redis_cmd_t  cmd;

    ngx_http_llm_redis_cmd(&cmd, "MULTI");
    ngx_http_llm_redis_send(rd, &cmd);

    ngx_http_llm_redis_cmd(&cmd, "HGETALL");
    ngx_http_llm_redis_key(rd, &cmd, op->id, "job");
    ngx_http_llm_redis_send(rd, &cmd);

    ngx_http_llm_redis_cmd(&cmd, "XRANGE");
    ngx_http_llm_redis_key(rd, &cmd, op->id, "events");
    ngx_http_llm_redis_argf(&cmd, "%ui-0", op->from_event + 1);
    ngx_http_llm_redis_lit(&cmd, "+");
    ngx_http_llm_redis_send(rd, &cmd);

    ngx_http_llm_redis_cmd(&cmd, "GETRANGE");
    ngx_http_llm_redis_key(rd, &cmd, op->id, "text");
    ngx_http_llm_redis_argf(&cmd, "%uz", op->from_text);
    ngx_http_llm_redis_lit(&cmd, "-1");
    ngx_http_llm_redis_send(rd, &cmd);

    ngx_http_llm_redis_cmd(&cmd, "GETRANGE");
    ngx_http_llm_redis_key(rd, &cmd, op->id, "meta");
    ngx_http_llm_redis_argf(&cmd, "%uz", op->from_meta);
    ngx_http_llm_redis_lit(&cmd, "-1");
    ngx_http_llm_redis_send(rd, &cmd);

    ngx_http_llm_redis_cmd(&cmd, "GET");
    ngx_http_llm_redis_key(rd, &cmd, op->id, "pstate");
    ngx_http_llm_redis_send(rd, &cmd);

    ngx_http_llm_redis_cmd(&cmd, "EVAL");
    ngx_http_llm_redis_lit(&cmd, NGX_HTTP_LLM_REDIS_HSETXX);
    ngx_http_llm_redis_lit(&cmd, "1");
    ngx_http_llm_redis_key(rd, &cmd, op->id, "job");
    ngx_http_llm_redis_lit(&cmd, "watched");
    ngx_http_llm_redis_argf(&cmd, "%L", op->now);
    ngx_http_llm_redis_send(rd, &cmd);

    ngx_http_llm_redis_cmd(&cmd, "EXEC");
    ngx_http_llm_redis_send(rd, &cmd);
}


void
ngx_http_llm_redis_read_fetch(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op)
{
    void                         *privdata;
    ngx_int_t                     rc;
    ngx_uint_t                    i, queued;
    redisReply                   *r;
    redisReader                  *reader;
    redisReplyObjectFunctions     fn;
    ngx_http_llm_redis_events_t   ev;

    queued = 1;

    for (i = 0; i < 7; i++) {
        if (ngx_http_llm_redis_reply(rd, &r) != NGX_OK) {
            return;
        }

        if (r->type == REDIS_REPLY_ERROR) {
            ngx_http_llm_redis_error(rd, op->id, r);
            queued = 0;
        }

        freeReplyObject(r);
    }

    /*
     * The EXEC reply with the functions that make the events; hiredis
     * parses a reply only when asked for it, so that none of the reply
     * has been made with its own ones.
     */

    /* a cluster may send a fetch cut short by a lost node once more */
    ngx_http_llm_record_free(&op->rec);

    ngx_memzero(&ev, sizeof(ngx_http_llm_redis_events_t));

    reader = rd->ctx->reader;
    ev.fn = reader->fn;
    ev.rec = &op->rec;
    ev.from_event = op->from_event;

    fn = *reader->fn;
    fn.createString = ngx_http_llm_redis_ev_string;
    fn.createArray = ngx_http_llm_redis_ev_array;
    fn.createInteger = ngx_http_llm_redis_ev_integer;
    fn.createNil = ngx_http_llm_redis_ev_nil;

    privdata = reader->privdata;
    reader->fn = &fn;
    reader->privdata = &ev;

    rc = ngx_http_llm_redis_reply(rd, &r);

    reader->fn = ev.fn;
    reader->privdata = privdata;

    /* a reply cut short: the connection is closed before another read */

    if (rc != NGX_OK) {
        return;
    }

    /* the last entry */
    ngx_http_llm_redis_ev_entry(&ev);

    if (!queued) {
        /* logged */

    } else if (r->type != REDIS_REPLY_ARRAY || r->elements != 6) {
        ngx_http_llm_redis_error(rd, op->id, r);

    } else {
        op->rc = ngx_http_llm_redis_record(rd, op, r->element, &ev);
    }

    freeReplyObject(r);
}


/*
 * Anything else can write to Redis: a record is checked field by field as
 * it is decoded, and one that does not hold what this module writes is
 * NGX_ABORT (corrupt), never half-trusted.  The replies: HGETALL, XRANGE,
 * text, meta, pstate.
 */

static ngx_int_t
ngx_http_llm_redis_record(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op, redisReply **replies,
    ngx_http_llm_redis_events_t *ev)
{
    size_t                   len;
    int64_t                  num;
    ngx_int_t                n;
    ngx_uint_t               i, state;
    const char              *what;
    redisReply              *f, *v, *hash, *events, *text;
    ngx_http_llm_record_t   *rec;

    hash = replies[0];
    events = replies[1];
    text = replies[2];

    rec = &op->rec;
    rec->outcome.input_tokens = -1;
    rec->outcome.output_tokens = -1;
    state = 0;
    what = NULL;

    if (hash->type != REDIS_REPLY_ARRAY) {
        return NGX_ERROR;
    }

    for (i = 0; i + 1 < hash->elements && what == NULL; i += 2) {
        f = hash->element[i];
        v = hash->element[i + 1];

        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) {
            what = "a field that is not a string";
            break;
        }

        if (ngx_http_llm_redis_is(f, "state")) {
            for (n = 0; n < 4; n++) {
                if (ngx_http_llm_redis_is(v, ngx_http_llm_redis_states[n])) {
                    rec->state = n;
                    state = 1;
                }
            }

            if (!state) {
                what = "state";
            }

        } else if (ngx_http_llm_redis_is(f, "created")) {
            if (ngx_http_llm_redis_num(v, 0, INT64_MAX,
                                       &rec->created)
                != NGX_OK)
            {
                what = "created";
            }

        } else if (ngx_http_llm_redis_is(f, "updated")) {
            if (ngx_http_llm_redis_num(v, 0, INT64_MAX,
                                       &rec->updated)
                != NGX_OK)
            {
                what = "updated";
            }

        } else if (ngx_http_llm_redis_is(f, "finished")) {
            if (ngx_http_llm_redis_num(v, 0, INT64_MAX,
                                       &rec->finished)
                != NGX_OK)
            {
                what = "finished";
            }

        } else if (ngx_http_llm_redis_is(f, "watched")) {
            if (ngx_http_llm_redis_num(v, 0, INT64_MAX,
                                       &rec->watched)
                != NGX_OK)
            {
                what = "watched";
            }

        } else if (ngx_http_llm_redis_is(f, "owner")) {
            /* a garbled owner must not make the job everybody's */
            if (ngx_http_llm_redis_owner(rec, v) != NGX_OK) {
                what = "owner";
            }

        } else if (ngx_http_llm_redis_is(f, "background")) {
            rec->background = ngx_http_llm_redis_is(v, "1");

        } else if (ngx_http_llm_redis_is(f, "cancel")) {
            rec->cancel = ngx_http_llm_redis_is(v, "1");

        } else if (ngx_http_llm_redis_is(f, "pause")) {
            rec->pause = ngx_http_llm_redis_is(v, "1");

        } else if (ngx_http_llm_redis_is(f, "paused")) {
            rec->paused = ngx_http_llm_redis_is(v, "1");

        } else if (ngx_http_llm_redis_is(f, "pseq")) {
            if (ngx_http_llm_redis_num(v, 0, INT64_MAX, &num) != NGX_OK) {
                what = "pseq";
                break;
            }

            rec->pause_seq = (ngx_uint_t) num;

        } else if (ngx_http_llm_redis_is(f, "finish")) {
            if (v->len > sizeof(rec->outcome.finish)) {
                what = "finish";
                break;
            }

            rec->outcome.finish_len = v->len;
            ngx_memcpy(rec->outcome.finish, v->str, v->len);

        } else if (ngx_http_llm_redis_is(f, "in")
                   || ngx_http_llm_redis_is(f, "out"))
        {
            if (ngx_http_llm_redis_num(v, -1, NGX_HTTP_LLM_TOKENS_MAX, &num)
                != NGX_OK)
            {
                what = "token count";
                break;
            }

            if (f->str[0] == 'i') {
                rec->outcome.input_tokens = (ngx_int_t) num;

            } else {
                rec->outcome.output_tokens = (ngx_int_t) num;
            }

        } else if (ngx_http_llm_redis_is(f, "code")) {
            if (v->len > sizeof(rec->outcome.code)) {
                what = "code";
                break;
            }

            rec->outcome.code_len = v->len;
            ngx_memcpy(rec->outcome.code, v->str, v->len);

        } else if (ngx_http_llm_redis_is(f, "sv")) {
            if (ngx_http_llm_redis_num(v, 0, INT64_MAX, &num) != NGX_OK) {
                what = "sv";
                break;
            }

            rec->state_version = (ngx_uint_t) num;

        } else if (ngx_http_llm_redis_is(f, "message") && v->len) {
            /* a reply with the field twice (Redis sends none): the last */
            free(rec->outcome.message);
            rec->outcome.message_len = 0;

            rec->outcome.message = malloc(v->len);
            if (rec->outcome.message == NULL) {
                return NGX_ERROR;
            }

            ngx_memcpy(rec->outcome.message, v->str, v->len);
            rec->outcome.message_len = v->len;
        }
    }

    /* no hash: expired or never was; no state: only a stray field */

    if (what == NULL && !state) {
        return NGX_DECLINED;
    }

    /*
     * The events from "from_event" on, or from the oldest one left when
     * the stream was trimmed (by an older version's MAXLEN, or by hand);
     * they stop at a gap, so that the record is one run of events.
     */

    if (what == NULL) {
        if (ev->nomem) {
            return NGX_ERROR;
        }

        what = ev->what;

        rec->from_event = ev->n ? (ngx_uint_t) ev->first - 1
                                : op->from_event;
        rec->nevents = rec->from_event + ev->n;
    }

    if (what == NULL && events->type != REDIS_REPLY_ARRAY) {
        what = "events";
    }

    if (what == NULL
        && text->type != REDIS_REPLY_STRING && text->type != REDIS_REPLY_NIL)
    {
        what = "text";
    }

    if (what == NULL) {
        n = ngx_http_llm_redis_string(replies[3], (size_t) -1, &rec->meta,
                                      &rec->meta_len);
        if (n == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (n != NGX_OK) {
            what = "meta";
        }
    }

    if (what == NULL) {
        n = ngx_http_llm_redis_string(replies[4], NGX_HTTP_LLM_STATE_MAX,
                                      &rec->pipeline_state,
                                      &rec->pipeline_state_len);
        if (n == NGX_ERROR) {
            return NGX_ERROR;
        }

        /* a state has a version from 1 on */

        if (n != NGX_OK || (rec->pipeline_state && rec->state_version == 0))
        {
            what = "pipeline state";
        }
    }

    if (what) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "llm: redis store: %V: job %*s: corrupt record (%s)",
                      &rd->conf->name, (size_t) NGX_HTTP_LLM_JOB_ID_LEN,
                      op->id, what);
        return NGX_ABORT;
    }

    rec->from_meta = op->from_meta;
    rec->meta_len += op->from_meta;

    len = (text->type == REDIS_REPLY_STRING) ? text->len : 0;

    rec->from_text = op->from_text;
    rec->text_len = op->from_text + len;

    if (len) {
        rec->text = malloc(len);
        if (rec->text == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(rec->text, text->str, len);
    }

    return NGX_OK;
}


/*
 * A string reply of at most "max" bytes, copied (malloc()); empty or nil:
 * NULL.  NGX_DECLINED for another reply or a longer string, NGX_ERROR
 * when out of memory.
 */

static ngx_int_t
ngx_http_llm_redis_string(redisReply *r, size_t max, u_char **p, size_t *len)
{
    *p = NULL;
    *len = 0;

    if (r->type == REDIS_REPLY_NIL) {
        return NGX_OK;
    }

    if (r->type != REDIS_REPLY_STRING || r->len > max) {
        return NGX_DECLINED;
    }

    if (r->len == 0) {
        return NGX_OK;
    }

    *p = malloc(r->len);
    if (*p == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(*p, r->str, r->len);
    *len = r->len;

    return NGX_OK;
}


/* the hex of a SHA-1, or empty: no owner */

static ngx_int_t
ngx_http_llm_redis_owner(ngx_http_llm_record_t *rec, redisReply *v)
{
    u_char     *p;
    ngx_int_t   b;
    ngx_uint_t  n;

    if (v->len == 0) {
        rec->has_owner = 0;
        return NGX_OK;
    }

    if (v->len != NGX_HTTP_LLM_OWNER_LEN * 2) {
        return NGX_ERROR;
    }

    p = (u_char *) v->str;

    for (n = 0; n < NGX_HTTP_LLM_OWNER_LEN; n++) {
        b = ngx_hextoi(p + n * 2, 2);

        if (b == NGX_ERROR) {
            return NGX_ERROR;
        }

        rec->owner[n] = (u_char) b;
    }

    rec->has_owner = 1;

    return NGX_OK;
}


/*
 * Where a reply hiredis is making stands in a fetch's EXEC reply: -1
 * outside the XRANGE reply (its second element), 0 for that reply, 1 for
 * an entry, 2 for an entry's id and fields, 3 for a field or a value.
 */

static ngx_int_t
ngx_http_llm_redis_level(const redisReadTask *task)
{
    ngx_int_t             level;
    const redisReadTask  *t;

    level = 0;

    for (t = task; t->parent && t->parent->parent; t = t->parent) {
        level++;
    }

    return (t->parent && t->idx == 1) ? level : -1;
}


static void *
ngx_http_llm_redis_ev_string(const redisReadTask *task, char *str,
    size_t len)
{
    u_char                       *dash;
    int64_t                       v;
    ngx_int_t                     level, rc;
    redisReply                    sr;
    ngx_http_llm_redis_events_t  *ev;

    ev = task->privdata;
    level = ngx_http_llm_redis_level(task);

    if (level <= 0) {
        return ev->fn->createString(task, str, len);
    }

    if (level == 1) {
        /* an entry that is no array */
        return ngx_http_llm_redis_ev_other(task, level);
    }

    if (level != 2 && level != 3) {
        return ev;
    }

    if (task->type != REDIS_REPLY_STRING) {
        return ngx_http_llm_redis_ev_other(task, level);
    }

    ngx_memzero(&sr, sizeof(redisReply));
    sr.type = REDIS_REPLY_STRING;
    sr.str = str;
    sr.len = len;

    if (level == 2) {
        if (task->idx != 0) {
            /* fields that are no array */
            ev->shape = 0;
            return ev;
        }

        /* "SEQ-0": the number before the dash */

        dash = ngx_strlchr((u_char *) str, (u_char *) str + len, '-');

        if (dash) {
            sr.len = dash - (u_char *) str;
            ev->id = (ngx_http_llm_redis_num(&sr, 1, INT64_MAX - 1,
                                             &ev->seq)
                      == NGX_OK);
        }

        return ev;
    }

    /* a field or a value, of the fields' array only */

    if (task->parent->idx != 1) {
        return ev;
    }

    if (task->idx % 2 == 0) {
        ev->field = (len != 1) ? 0
                    : (str[0] == 't') ? 1
                    : (str[0] == 'o') ? 2
                    : (str[0] == 'l') ? 4 : 0;
        return ev;
    }

    switch (ev->field) {

    case 1:
        rc = ngx_http_llm_redis_num(&sr, NGX_HTTP_LLM_EV_START,
                                    NGX_HTTP_LLM_EV_LAST, &v);
        ev->t = (rc == NGX_OK) ? v : ev->t;
        break;

    case 2:
        rc = ngx_http_llm_redis_num(&sr, 0, INT64_MAX, &v);
        ev->o = (rc == NGX_OK) ? v : ev->o;
        break;

    case 4:
        rc = ngx_http_llm_redis_num(&sr, 0, NGX_MAX_UINT32_VALUE, &v);
        ev->l = (rc == NGX_OK) ? v : ev->l;
        break;

    default:
        return ev;
    }

    ev->seen |= (rc == NGX_OK) ? ev->field : 8;

    return ev;
}


static void *
ngx_http_llm_redis_ev_array(const redisReadTask *task,
    ngx_http_llm_redis_count_t n)
{
    ngx_int_t                     level;
    ngx_http_llm_redis_events_t  *ev;

    ev = task->privdata;
    level = ngx_http_llm_redis_level(task);

    if (level < 0) {
        return ev->fn->createArray(task, n);
    }

    if (level == 0) {
        /* the XRANGE reply: an empty array, its entries are events */

        if (n > 0) {
            ev->rec->events = ((size_t) n
                               <= NGX_MAX_SIZE_T_VALUE
                                  / sizeof(ngx_http_llm_event_t))
                              ? malloc(n * sizeof(ngx_http_llm_event_t))
                              : NULL;

            if (ev->rec->events == NULL) {
                ev->nomem = 1;

            } else {
                ev->max = n;
            }
        }

        return ev->fn->createArray(task, 0);
    }

    if (level == 1) {
        ngx_http_llm_redis_ev_entry(ev);

        ev->entry = 1;
        ev->shape = (n == 2);
        ev->id = 0;
        ev->field = 0;
        ev->seen = 0;
        ev->t = 0;
        ev->o = 0;
        ev->l = 0;

        return ev;
    }

    if (level == 2 && task->idx == 0) {
        /* an id that is no string */
        ev->shape = 0;
        return ev;
    }

    if (level == 3) {
        return ngx_http_llm_redis_ev_other(task, level);
    }

    return ev;
}


static void *
ngx_http_llm_redis_ev_integer(const redisReadTask *task, long long value)
{
    ngx_int_t                     level;
    ngx_http_llm_redis_events_t  *ev;

    ev = task->privdata;
    level = ngx_http_llm_redis_level(task);

    if (level <= 0) {
        return ev->fn->createInteger(task, value);
    }

    return ngx_http_llm_redis_ev_other(task, level);
}


static void *
ngx_http_llm_redis_ev_nil(const redisReadTask *task)
{
    ngx_int_t                     level;
    ngx_http_llm_redis_events_t  *ev;

    ev = task->privdata;
    level = ngx_http_llm_redis_level(task);

    if (level <= 0) {
        return ev->fn->createNil(task);
    }

    return ngx_http_llm_redis_ev_other(task, level);
}


/*
 * In an entry, a reply of another type than this module writes there: an
 * entry, an id or fields of the wrong shape, a field that is none of
 * "t", "o" and "l", a value of one of them that is no number.
 */

static void *
ngx_http_llm_redis_ev_other(const redisReadTask *task, ngx_int_t level)
{
    ngx_http_llm_redis_events_t  *ev;

    ev = task->privdata;

    switch (level) {

    case 1:
        ngx_http_llm_redis_ev_entry(ev);

        ev->entry = 1;
        ev->shape = 0;
        break;

    case 2:
        ev->shape = 0;
        break;

    case 3:
        if (task->parent->idx != 1) {
            break;
        }

        if (task->idx % 2 == 0) {
            ev->field = 0;

        } else if (ev->field) {
            ev->seen |= 8;
        }

        break;
    }

    /* any pointer but NULL: hiredis never sees it again */
    return ev;
}


/*
 * The entry read so far becomes the next event, if it is one; one that
 * is not one this module writes sets "what", and stops the events there.
 */

static void
ngx_http_llm_redis_ev_entry(ngx_http_llm_redis_events_t *ev)
{
    ngx_http_llm_event_t  *e;

    if (!ev->entry) {
        return;
    }

    ev->entry = 0;

    if (ev->stop || ev->what || ev->nomem) {
        return;
    }

    if (!ev->shape) {
        ev->what = "event entry";
        return;
    }

    if (!ev->id) {
        ev->what = "event id";
        return;
    }

    if (ev->n == 0) {
        if (ev->seq <= (int64_t) ev->from_event) {
            ev->stop = 1;
            return;
        }

        ev->first = ev->seq;

    } else if (ev->seq != ev->first + (int64_t) ev->n) {
        ev->stop = 1;
        return;
    }

    if (ev->seen != 7) {
        ev->what = "event fields";
        return;
    }

    if (ev->n == ev->max) {
        /* more entries than the reply said: hiredis would not */
        ev->what = "event entry";
        return;
    }

    e = &ev->rec->events[ev->n++];
    ngx_memzero(e, sizeof(ngx_http_llm_event_t));
    e->type = (ngx_http_llm_event_type_e) ev->t;
    e->off = (size_t) ev->o;
    e->len = (uint32_t) ev->l;
}


/*
 * Store thread: EVAL CLAIM 1 job UPDATED NOW: 1 when the job was running
 * with that "updated" (its worker silent since), which becomes now.
 */

void
ngx_http_llm_redis_send_claim(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op)
{
    ngx_http_llm_redis_cmd_t  cmd;

    ngx_http_llm_redis_cmd(&cmd, "EVAL");
    ngx_http_llm_redis_lit(&cmd, NGX_HTTP_LLM_REDIS_CLAIM);
    ngx_http_llm_redis_lit(&cmd, "1");
    ngx_http_llm_redis_key(rd, &cmd, op->id, "job");
    ngx_http_llm_redis_argf(&cmd, "%L", op->updated);
    ngx_http_llm_redis_argf(&cmd, "%L", op->now);
    ngx_http_llm_redis_send(rd, &cmd);
}


void
ngx_http_llm_redis_read_claim(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op)
{
    redisReply  *r;

    if (ngx_http_llm_redis_reply(rd, &r) != NGX_OK) {
        return;
    }

    if (r->type == REDIS_REPLY_ERROR) {
        ngx_http_llm_redis_error(rd, op->id, r);

    } else {
        op->rc = (r->type == REDIS_REPLY_INTEGER && r->integer == 1)
                 ? NGX_OK : NGX_DECLINED;
    }

    freeReplyObject(r);
}


/* store thread: EVAL HSETXX 1 job cancel 1, or EVAL PAUSE 1 job 1|0 */

void
ngx_http_llm_redis_send_control(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op)
{
    ngx_http_llm_redis_cmd_t  cmd;

    ngx_http_llm_redis_cmd(&cmd, "EVAL");

    if (op->control == NGX_HTTP_LLM_CTL_CANCEL) {
        ngx_http_llm_redis_lit(&cmd, NGX_HTTP_LLM_REDIS_HSETXX);
        ngx_http_llm_redis_lit(&cmd, "1");
        ngx_http_llm_redis_key(rd, &cmd, op->id, "job");
        ngx_http_llm_redis_lit(&cmd, "cancel");
        ngx_http_llm_redis_lit(&cmd, "1");

    } else {
        ngx_http_llm_redis_lit(&cmd, NGX_HTTP_LLM_REDIS_PAUSE);
        ngx_http_llm_redis_lit(&cmd, "1");
        ngx_http_llm_redis_key(rd, &cmd, op->id, "job");
        ngx_http_llm_redis_lit(&cmd, op->control == NGX_HTTP_LLM_CTL_PAUSE
                                     ? "1" : "0");
    }

    ngx_http_llm_redis_send(rd, &cmd);
}


void
ngx_http_llm_redis_read_control(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_op_t *op)
{
    redisReply  *r;

    if (ngx_http_llm_redis_reply(rd, &r) != NGX_OK) {
        return;
    }

    if (r->type == REDIS_REPLY_ERROR) {
        ngx_http_llm_redis_error(rd, op->id, r);

    } else {
        op->rc = NGX_OK;

        if (r->type == REDIS_REPLY_INTEGER && r->integer < 0) {
            ngx_log_error(NGX_LOG_INFO, rd->log, 0,
                          "llm: redis store: request for unknown job %*s",
                          (size_t) NGX_HTTP_LLM_JOB_ID_LEN, op->id);
        }
    }

    freeReplyObject(r);
}


/*
 * Store thread: ASKING before a part that a cluster node redirected with
 * ASK (its slot is moving to the node it names); it holds for a whole
 * MULTI ... EXEC.
 */

void
ngx_http_llm_redis_send_asking(ngx_http_llm_redis_t *rd)
{
    ngx_http_llm_redis_cmd_t  cmd;

    ngx_http_llm_redis_cmd(&cmd, "ASKING");
    ngx_http_llm_redis_send(rd, &cmd);
}


/* store thread: its "+OK" (an error shows in the replies that follow) */

void
ngx_http_llm_redis_read_asking(ngx_http_llm_redis_t *rd)
{
    redisReply  *r;

    if (ngx_http_llm_redis_reply(rd, &r) == NGX_OK) {
        freeReplyObject(r);
    }
}


/* store thread: WAIT REPLICAS TIMEOUT, after a round's writes */

void
ngx_http_llm_redis_send_wait(ngx_http_llm_redis_t *rd)
{
    ngx_http_llm_redis_cmd_t  cmd;

    ngx_http_llm_redis_cmd(&cmd, "WAIT");
    ngx_http_llm_redis_argf(&cmd, "%ui", rd->conf->replicas);
    ngx_http_llm_redis_argf(&cmd, "%M", rd->conf->replicas_timeout);
    ngx_http_llm_redis_send(rd, &cmd);
}


/*
 * Store thread: how many replicas have the writes.  Too few is logged
 * once while it lasts.
 */

ngx_int_t
ngx_http_llm_redis_read_wait(ngx_http_llm_redis_t *rd)
{
    ngx_int_t    rc;
    redisReply  *r;

    if (ngx_http_llm_redis_reply(rd, &r) != NGX_OK) {
        return NGX_ERROR;
    }

    rc = (r->type == REDIS_REPLY_INTEGER
          && r->integer >= (long long) rd->conf->replicas)
         ? NGX_OK : NGX_ERROR;

    if (rc == NGX_OK) {
        if (rd->unreplicated) {
            ngx_log_error(NGX_LOG_NOTICE, rd->log, 0,
                          "llm: redis store: %V: writes reach %ui "
                          "replicas again", &rd->conf->name,
                          rd->conf->replicas);
            rd->unreplicated = 0;
        }

    } else if (!rd->unreplicated) {
        rd->unreplicated = 1;

        if (r->type == REDIS_REPLY_INTEGER) {
            ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                          "llm: redis store: %V: writes reached %L of %ui "
                          "replicas in %M ms, not confirmed",
                          &rd->conf->name, (int64_t) r->integer,
                          rd->conf->replicas, rd->conf->replicas_timeout);

        } else {
            ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                          "llm: redis store: %V: WAIT failed: %*s",
                          &rd->conf->name,
                          r->type == REDIS_REPLY_ERROR ? r->len : 0,
                          r->type == REDIS_REPLY_ERROR ? r->str : "");
        }
    }

    freeReplyObject(r);

    return rc;
}


void
ngx_http_llm_redis_cmd(ngx_http_llm_redis_cmd_t *cmd, const char *name)
{
    cmd->argc = 0;
    cmd->last = cmd->buf;

    ngx_http_llm_redis_lit(cmd, name);
}


/* the arguments are copied when the command is sent */

void
ngx_http_llm_redis_arg(ngx_http_llm_redis_cmd_t *cmd, const void *p,
    size_t len)
{
    /* counted beyond the end, so that the command is refused whole */

    if (cmd->argc < NGX_HTTP_LLM_REDIS_ARGS) {
        /* an empty field may have no memory behind it */
        cmd->argv[cmd->argc] = p ? p : "";
        cmd->argvlen[cmd->argc] = len;
    }

    cmd->argc++;
}


static void
ngx_http_llm_redis_lit(ngx_http_llm_redis_cmd_t *cmd, const char *s)
{
    ngx_http_llm_redis_arg(cmd, s, ngx_strlen(s));
}


void
ngx_http_llm_redis_argf(ngx_http_llm_redis_cmd_t *cmd, const char *fmt, ...)
{
    u_char   *p;
    va_list   args;

    va_start(args, fmt);
    p = ngx_vslprintf(cmd->last, cmd->buf + sizeof(cmd->buf), fmt, args);
    va_end(args);

    ngx_http_llm_redis_arg(cmd, cmd->last, p - cmd->last);
    cmd->last = p;
}


static void
ngx_http_llm_redis_key(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_cmd_t *cmd, u_char *id, const char *type)
{
    ngx_http_llm_redis_argf(cmd, "%V{%*s}:%s", &rd->conf->prefix,
                            (size_t) NGX_HTTP_LLM_JOB_ID_LEN, id, type);
}


void
ngx_http_llm_redis_send(ngx_http_llm_redis_t *rd,
    ngx_http_llm_redis_cmd_t *cmd)
{
    if (cmd->argc > NGX_HTTP_LLM_REDIS_ARGS
        || redisAppendCommandArgv(rd->ctx, cmd->argc, cmd->argv,
                                  cmd->argvlen)
           != REDIS_OK)
    {
        rd->nomem = 1;
    }
}


/* the next reply; NGX_ERROR: the connection is lost, the thread sees to it */

static ngx_int_t
ngx_http_llm_redis_reply(ngx_http_llm_redis_t *rd, redisReply **reply)
{
    void        *p;
    redisReply  *r;

    if (redisGetReply(rd->ctx, &p) != REDIS_OK || p == NULL) {
        rd->lost = 1;
        return NGX_ERROR;
    }

    r = p;
    *reply = r;
    rd->replies++;

    if (r->type != REDIS_REPLY_ERROR) {
        return NGX_OK;
    }

    /* a replica now (a failover), or one cut from its primary */

    if (ngx_strncmp(r->str, "READONLY ", 9) == 0
        || ngx_strncmp(r->str, "MASTERDOWN ", 11) == 0)
    {
        rd->demoted = 1;
    }

    /* a cluster's slot elsewhere: the thread sends that part again there */

    if (rd->cluster
        && (ngx_strncmp(r->str, "MOVED ", 6) == 0
            || ngx_strncmp(r->str, "ASK ", 4) == 0))
    {
        ngx_http_llm_redis_cluster_redirect(rd, r);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_redis_is(redisReply *r, const char *s)
{
    size_t  len;

    len = ngx_strlen(s);

    return r->type == REDIS_REPLY_STRING && r->len == len
           && ngx_memcmp(r->str, s, len) == 0;
}


/* a whole decimal string, with an optional minus, from min to max */

static ngx_int_t
ngx_http_llm_redis_num(redisReply *r, int64_t min, int64_t max, int64_t *v)
{
    size_t    i;
    int64_t   n;
    uint64_t  d;

    if (r->type != REDIS_REPLY_STRING || r->len == 0) {
        return NGX_ERROR;
    }

    i = (r->str[0] == '-') ? 1 : 0;

    if (i == r->len) {
        return NGX_ERROR;
    }

    for (n = 0; i < r->len; i++) {
        if (r->str[i] < '0' || r->str[i] > '9') {
            return NGX_ERROR;
        }

        d = r->str[i] - '0';

        if ((uint64_t) n > (INT64_MAX - d) / 10) {
            return NGX_ERROR;
        }

        n = n * 10 + d;
    }

    if (r->str[0] == '-') {
        n = -n;
    }

    if (n < min || n > max) {
        return NGX_ERROR;
    }

    *v = n;

    return NGX_OK;
}
