
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * A job is one generation as the event loop sees it: its id, its state, the
 * text so far, its outcome and its event log, which every subscribed stream
 * reads at its own pace (the SSE writer renders the frames).  The worker
 * that runs a job saves it to its store after every change; any other
 * worker that is asked for it builds a mirror from the store and keeps it
 * up to date by reading the store again while the job runs.
 *
 * Jobs are heap-allocated and outlive the requests that watch them.  A job
 * nobody watches is cancelled at once or after a grace period
 * (llm_on_disconnect), unless it runs in the background; it is freed when
 * it is over and nobody watches it.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <sys/random.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_pipeline.h"
#include "ngx_http_llm_store.h"


#define NGX_HTTP_LLM_WATCH_MS   1000
#define NGX_HTTP_LLM_HOLD_MS    1000

/* a running job whose worker has not saved it for this long is lost */
#define NGX_HTTP_LLM_LOST_MS    15000

/*
 * The ids a takeover skips: the events the lost worker may have sent to
 * its clients and not yet to the store (its last flush interval's), so
 * that such a client, coming back, misses none of the new ones.
 */
#define NGX_HTTP_LLM_GAP_EVENTS 256


typedef struct {
    ngx_http_llm_store_t          *store;
    u_char                         id[NGX_HTTP_LLM_JOB_ID_LEN + 1];
    ngx_uint_t                     from;        /* the first event read */
    ngx_http_llm_find_pt           handler;
    void                          *data;
    ngx_event_t                    again;       /* once more, later */
} ngx_http_llm_find_t;


static ngx_int_t ngx_http_llm_job_id(u_char *id, ngx_log_t *log);
static ngx_http_llm_job_t *ngx_http_llm_job_alloc(ngx_log_t *log);
static ngx_int_t ngx_http_llm_job_event(ngx_http_llm_job_t *job,
    ngx_http_llm_event_type_e type, size_t off, size_t len);
static ngx_int_t ngx_http_llm_job_append(u_char **buf, size_t *n,
    size_t *cap, u_char *p, size_t len);
static ngx_int_t ngx_http_llm_job_delta(ngx_http_llm_job_t *job, u_char *p,
    size_t len);
static ngx_int_t ngx_http_llm_job_bound(ngx_http_llm_job_t *job, size_t len);
static ngx_int_t ngx_http_llm_job_keep_state(ngx_http_llm_job_t *job,
    u_char *json, size_t len);
static void ngx_http_llm_job_output(void *data, ngx_http_llm_output_t *out);
static void ngx_http_llm_job_end(ngx_http_llm_job_t *job,
    ngx_http_llm_state_e state, const char *code, u_char *msg, size_t len);
static void ngx_http_llm_job_snapshot(void *data,
    ngx_http_llm_snapshot_t *snap);
static void ngx_http_llm_job_saved(void *data, ngx_http_llm_saved_t *res);
static void ngx_http_llm_job_wake(ngx_http_llm_job_t *job);
static void ngx_http_llm_job_ended(ngx_http_llm_job_t *job);
static void ngx_http_llm_job_release_final(ngx_event_t *ev);
static void ngx_http_llm_job_free(ngx_http_llm_job_t *job);
static void ngx_http_llm_job_unwatched(ngx_http_llm_job_t *job);
static void ngx_http_llm_job_grace_handler(ngx_event_t *ev);
static void ngx_http_llm_job_pause_expired(ngx_event_t *ev);
static void ngx_http_llm_job_deadline(ngx_event_t *ev);
static void ngx_http_llm_job_claim(ngx_http_llm_job_t *job, int64_t updated);
static void ngx_http_llm_job_claimed(void *data, ngx_int_t rc,
    ngx_http_llm_record_t *rec);
static void ngx_http_llm_job_claim_handler(ngx_event_t *ev);
static void ngx_http_llm_job_cancel_handler(ngx_event_t *ev);
static void ngx_http_llm_job_pause_handler(ngx_event_t *ev);
static void ngx_http_llm_job_pause_apply(ngx_http_llm_job_t *job,
    ngx_uint_t on);
static void ngx_http_llm_job_free_handler(ngx_event_t *ev);
static ngx_http_llm_job_t *ngx_http_llm_job_local(u_char *id,
    ngx_uint_t from);
static void ngx_http_llm_job_found(void *data, ngx_int_t rc,
    ngx_http_llm_record_t *rec);
static void ngx_http_llm_job_find_again(ngx_event_t *ev);
static ngx_int_t ngx_http_llm_mirror_update(ngx_http_llm_job_t *job,
    ngx_http_llm_record_t *rec);
static ngx_int_t ngx_http_llm_payload_valid(u_char *p, size_t len);
static void ngx_http_llm_mirror_poll(ngx_event_t *ev);
static void ngx_http_llm_mirror_polled(void *data, ngx_int_t rc,
    ngx_http_llm_record_t *rec);
static void ngx_http_llm_watch_handler(ngx_event_t *ev);


static ngx_queue_t       ngx_http_llm_jobs;
static ngx_event_t       ngx_http_llm_watch;

/* timers log their connection's fd in debug builds: give them one */
static ngx_connection_t  ngx_http_llm_dummy_conn = { .fd = -1 };


/* takes the spec; NULL when the job cannot start */

ngx_http_llm_job_t *
ngx_http_llm_job_start(ngx_http_llm_spec_t *spec, ngx_http_llm_job_opts_t *o,
    ngx_log_t *log)
{
    ngx_http_llm_job_t  *job;

    job = ngx_http_llm_job_create(o, log);
    if (job == NULL) {
        ngx_http_llm_spec_free(spec);
        return NULL;
    }

    job->xfer = ngx_http_llm_engine_submit(o->pool, spec,
                                           ngx_http_llm_job_output, job, log);

    if (job->xfer == NULL) {
        ngx_http_llm_spec_free(spec);
        job->state = NGX_HTTP_LLM_FAILED;
        ngx_http_llm_job_free(job);
        return NULL;
    }

    ngx_http_llm_job_save(job);

    return job;
}


/*
 * A new running job with its id and start event, not saved yet (what
 * runs it is set first): the engine's, or a pipeline's
 * (ngx_http_llm_job_run.c).  NULL when out of memory.  It takes the
 * limit slots of "o" in any case.
 */

ngx_http_llm_job_t *
ngx_http_llm_job_create(ngx_http_llm_job_opts_t *o, ngx_log_t *log)
{
    ngx_http_llm_job_t  *job;

    job = ngx_http_llm_job_alloc(log);
    if (job == NULL) {
        if (o->limits) {
            ngx_http_llm_limit_release(o->limits, o->nlimits);
        }

        return NULL;
    }

    job->store = o->store;
    job->grace = o->grace;
    job->pause_timeout = o->pause_timeout;
    job->limits = o->limits;
    job->nlimits = o->nlimits;

    if (o->max_duration) {
        ngx_add_timer(&job->deadline, o->max_duration);
    }

    job->max_events = o->max_events;
    job->max_text = o->max_text;
    job->background = o->background;

    if (o->owner) {
        ngx_memcpy(job->owner, o->owner, NGX_HTTP_LLM_OWNER_LEN);
        job->has_owner = 1;
    }

    if (ngx_http_llm_job_id(job->id, log) != NGX_OK
        || ngx_http_llm_job_event(job, NGX_HTTP_LLM_EV_START, 0, 0) != NGX_OK)
    {
        job->state = NGX_HTTP_LLM_FAILED;
        ngx_http_llm_job_free(job);
        return NULL;
    }

    ngx_http_llm_metrics_job_start(job, o);

    return job;
}


static ngx_http_llm_job_t *
ngx_http_llm_job_alloc(ngx_log_t *log)
{
    ngx_http_llm_job_t  *job;

    if (ngx_http_llm_jobs.next == NULL) {
        ngx_queue_init(&ngx_http_llm_jobs);
    }

    job = ngx_calloc(sizeof(ngx_http_llm_job_t), log);
    if (job == NULL) {
        return NULL;
    }

    job->state = NGX_HTTP_LLM_RUNNING;
    job->log = ngx_cycle->log;
    job->outcome.input_tokens = -1;
    job->outcome.output_tokens = -1;
    job->created = ngx_http_llm_now_ms();
    job->updated = job->created;

    job->timer.data = &ngx_http_llm_dummy_conn;
    job->timer.log = job->log;
    job->deadline.data = &ngx_http_llm_dummy_conn;
    job->deadline.log = job->log;
    job->deadline.handler = ngx_http_llm_job_deadline;
    job->deadline.cancelable = 1;
    job->cancel_ev.data = job;
    job->cancel_ev.log = job->log;
    job->cancel_ev.handler = ngx_http_llm_job_cancel_handler;
    job->pause_ev.data = job;
    job->pause_ev.log = job->log;
    job->pause_ev.handler = ngx_http_llm_job_pause_handler;
    job->claim_ev.data = job;
    job->claim_ev.log = job->log;
    job->claim_ev.handler = ngx_http_llm_job_claim_handler;
    job->free_ev.data = job;
    job->free_ev.log = job->log;
    job->free_ev.handler = ngx_http_llm_job_free_handler;

    ngx_queue_init(&job->subscribers);
    ngx_queue_insert_tail(&ngx_http_llm_jobs, &job->queue);

    if (!ngx_http_llm_watch.timer_set) {
        ngx_http_llm_watch.handler = ngx_http_llm_watch_handler;
        ngx_http_llm_watch.data = &ngx_http_llm_dummy_conn;
        ngx_http_llm_watch.log = ngx_cycle->log;
        ngx_add_timer(&ngx_http_llm_watch, NGX_HTTP_LLM_WATCH_MS);
    }

    return job;
}


/*
 * Find a job by id: in this worker, else in the store (the handler then
 * gets a mirror).  "from" is the first event the caller reads (a client
 * resuming), 0 for all.  The handler gets the job, or NULL with
 * NGX_DECLINED (unknown or expired) or NGX_ERROR (the store cannot
 * answer); it may run before this returns.
 */

ngx_int_t
ngx_http_llm_job_find(ngx_http_llm_store_t *st, u_char *id, ngx_uint_t from,
    ngx_http_llm_find_pt handler, void *data)
{
    ngx_http_llm_job_t   *job;
    ngx_http_llm_find_t  *f;

    job = ngx_http_llm_job_local(id, from);

    if (job) {
        handler(data, NGX_OK, job);
        return NGX_OK;
    }

    f = ngx_calloc(sizeof(ngx_http_llm_find_t), ngx_cycle->log);
    if (f == NULL) {
        return NGX_ERROR;
    }

    f->store = st;
    ngx_memcpy(f->id, id, NGX_HTTP_LLM_JOB_ID_LEN);
    f->id[NGX_HTTP_LLM_JOB_ID_LEN] = '\0';
    f->handler = handler;
    f->data = data;

    /*
     * A client resuming from the middle of a long job costs the part it
     * reads, not the whole log: the mirror reads from the last event the
     * client had (so that the store's answer says where the log stands,
     * even when that was the final one).  The text is read whole: the
     * final event carries it.
     */
    f->from = from ? from - 1 : 0;

    if (st->ops->fetch(st, f->id, f->from, 0, 0, ngx_http_llm_job_found, f)
        != NGX_OK)
    {
        ngx_free(f);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_llm_job_find_again(ngx_event_t *ev)
{
    ngx_http_llm_find_t  *f;

    f = (ngx_http_llm_find_t *) ((u_char *) ev
                                 - offsetof(ngx_http_llm_find_t, again));

    if (f->store->ops->fetch(f->store, f->id, f->from, 0, 0,
                             ngx_http_llm_job_found, f)
        != NGX_OK)
    {
        f->handler(f->data, NGX_ERROR, NULL);
        ngx_free(f);
    }
}


/*
 * Linear: lookups are rare next to streaming, and jobs are few per worker.
 * A copy that stands in for the events before "from" with a gap does not
 * do for a client that reads them.
 */

static ngx_http_llm_job_t *
ngx_http_llm_job_local(u_char *id, ngx_uint_t from)
{
    ngx_queue_t         *q;
    ngx_http_llm_job_t  *job;

    if (ngx_http_llm_jobs.next == NULL) {
        return NULL;
    }

    for (q = ngx_queue_head(&ngx_http_llm_jobs);
         q != ngx_queue_sentinel(&ngx_http_llm_jobs);
         q = ngx_queue_next(q))
    {
        job = ngx_queue_data(q, ngx_http_llm_job_t, queue);

        if (ngx_strncmp(job->id, id, NGX_HTTP_LLM_JOB_ID_LEN) == 0
            && job->from_event <= from)
        {
            return job;
        }
    }

    return NULL;
}


static void
ngx_http_llm_job_found(void *data, ngx_int_t rc, ngx_http_llm_record_t *rec)
{
    ngx_http_llm_find_t *f = data;

    ngx_http_llm_job_t  *job;

    /*
     * A job just started elsewhere may not be in a store that writes
     * later yet: an unknown id is asked for once more after the store's
     * window before it is called unknown.
     */

    if (rc == NGX_DECLINED && f->store->window && f->again.handler == NULL) {
        f->again.data = &ngx_http_llm_dummy_conn;
        f->again.log = ngx_cycle->log;
        f->again.handler = ngx_http_llm_job_find_again;
        f->again.cancelable = 1;
        ngx_add_timer(&f->again, f->store->window);
        return;
    }

    if (rc != NGX_OK) {
        /* a corrupt record is an error to the client, as the store said */
        f->handler(f->data, rc == NGX_ABORT ? NGX_ERROR : rc, NULL);
        ngx_free(f);
        return;
    }

    /* another find may have made a mirror meanwhile */

    job = ngx_http_llm_job_local(f->id, f->from);

    if (job) {
        f->handler(f->data, NGX_OK, job);
        ngx_free(f);
        return;
    }

    /*
     * Nothing from the event asked for: a client ahead of the store (its
     * write interval) or an id past the end.  The whole log then, as for
     * a client from the start: the mirror knows where the job stands.
     */

    if (f->from && rec->nevents == rec->from_event) {
        f->from = 0;

        if (f->store->ops->fetch(f->store, f->id, 0, 0, 0,
                                 ngx_http_llm_job_found, f)
            != NGX_OK)
        {
            f->handler(f->data, NGX_ERROR, NULL);
            ngx_free(f);
        }

        return;
    }

    job = ngx_http_llm_job_alloc(ngx_cycle->log);

    if (job == NULL) {
        f->handler(f->data, NGX_ERROR, NULL);
        ngx_free(f);
        return;
    }

    ngx_memcpy(job->id, f->id, NGX_HTTP_LLM_JOB_ID_LEN + 1);
    job->mirror = 1;
    job->from_event = f->from;
    job->store = f->store;
    job->created = rec->created;
    job->background = rec->background;
    job->has_owner = rec->has_owner;
    ngx_memcpy(job->owner, rec->owner, NGX_HTTP_LLM_OWNER_LEN);

    /* held while in use here: a final event could free it */
    job->fetching = 1;

    if (ngx_http_llm_mirror_update(job, rec) != NGX_OK) {
        job->fetching = 0;
        job->state = NGX_HTTP_LLM_FAILED;
        ngx_http_llm_job_free(job);
        f->handler(f->data, NGX_ERROR, NULL);
        ngx_free(f);
        return;
    }

    if (job->state == NGX_HTTP_LLM_RUNNING) {
        job->timer.handler = ngx_http_llm_mirror_poll;
        ngx_add_timer(&job->timer, job->store->poll);
    }

    f->handler(f->data, NGX_OK, job);
    ngx_free(f);

    /* a mirror nobody took is not kept */
    job->fetching = 0;
    ngx_http_llm_job_free(job);
}


/*
 * Bring a mirror up to what the store has: NGX_ABORT (logged) for a record
 * that does not hold together, NGX_ERROR when out of memory.
 */

static ngx_int_t
ngx_http_llm_mirror_update(ngx_http_llm_job_t *job,
    ngx_http_llm_record_t *rec)
{
    size_t                 off, to, mirror_text;
    ngx_uint_t             i, ranged;
    const char            *what;
    ngx_http_llm_event_t  *ev;

    what = ngx_http_llm_record_check(job, rec);

    if (what) {
        ngx_log_error(NGX_LOG_ERR, job->log, 0,
                      "llm: job %s: corrupt record in the store (%s)",
                      job->id, what);
        return NGX_ABORT;
    }

    /* the text the mirror's events cover */
    mirror_text = job->text_len;

    if (rec->from_text == job->text_len && rec->text_len > job->text_len) {
        if (ngx_http_llm_job_append(&job->text, &job->text_len,
                                    &job->text_cap, rec->text,
                                    rec->text_len - rec->from_text)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (rec->from_meta == job->meta_len && rec->meta_len > job->meta_len) {
        if (ngx_http_llm_job_append(&job->meta, &job->meta_len,
                                    &job->meta_cap, rec->meta,
                                    rec->meta_len - rec->from_meta)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (rec->pipeline_state && rec->state_version != job->state_version) {
        if (ngx_http_llm_job_keep_state(job, rec->pipeline_state,
                                        rec->pipeline_state_len)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        job->state_version = rec->state_version;
    }

    job->pause = rec->pause;
    job->paused = rec->paused;
    job->pause_seq = rec->pause_seq;

    /* where the text of the events given starts: at their first delta */

    to = job->text_len;

    for (i = 0; i < rec->nevents - rec->from_event; i++) {
        if (rec->events[i].type == NGX_HTTP_LLM_EV_DELTA) {
            to = rec->events[i].off;
            break;
        }
    }

    if (rec->from_event > job->nevents && rec->nevents > rec->from_event
        && to <= job->text_len)
    {
        /*
         * The store dropped the oldest events (a bounded log), or the
         * mirror reads from a resuming client's event on: the gap
         * becomes deltas that carry the text it covered, so that ids keep
         * their positions; the SSE writer sends them as one event.  The
         * payload events among them are lost.
         */

        off = mirror_text;

        if (job->nevents == 0
            && ngx_http_llm_job_event(job, NGX_HTTP_LLM_EV_START, 0, 0)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        while (job->nevents < rec->from_event) {
            if (ngx_http_llm_job_event(job, NGX_HTTP_LLM_EV_DELTA, off,
                                       to - off)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            off = to;
        }
    }

    if (rec->from_event == job->nevents) {
        for (i = 0; i < rec->nevents - rec->from_event; i++) {
            ev = &rec->events[i];

            /* only the text and meta this mirror has: the rest next time */

            if (ev->type == NGX_HTTP_LLM_EV_DELTA
                && (ev->off > job->text_len
                    || ev->len > job->text_len - ev->off))
            {
                break;
            }

            if (ngx_http_llm_event_payload(ev->type)
                && (ev->off > job->meta_len
                    || ev->len > job->meta_len - ev->off))
            {
                break;
            }

            /* the start and final events carry no range */

            ranged = (ev->type == NGX_HTTP_LLM_EV_DELTA
                      || ngx_http_llm_event_payload(ev->type));

            if (ngx_http_llm_job_event(job, ev->type, ranged ? ev->off : 0,
                                       ranged ? ev->len : 0)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    /*
     * How long the record has stayed the same, as this mirror saw it
     * (another machine's clock does not count, nor a time when the store
     * could not be read): its worker writes it every second.
     */

    if (rec->updated != job->updated || job->quiet_since == 0) {
        job->quiet_since = ngx_current_msec;
    }

    job->updated = rec->updated;
    job->finished = rec->finished;

    /*
     * A single prompt's job that has not been written for that long by
     * the record's own time is lost for a one-time reader too (a lookup);
     * a pipeline's waits for a follower's own 15 s, since it may be taken
     * over.
     */

    if (rec->state == NGX_HTTP_LLM_RUNNING) {
        if (ngx_current_msec - job->quiet_since < NGX_HTTP_LLM_LOST_MS
            && (job->state_version
                || ngx_http_llm_now_ms() - rec->updated
                   < NGX_HTTP_LLM_LOST_MS))
        {
            return NGX_OK;
        }

        /*
         * A pipeline's finished steps are stored: its job is taken over
         * (once this mirror has all of it) rather than lost.
         */

        if (job->takeover && job->state_version
            && job->nevents == rec->nevents
            && job->text_len == rec->text_len
            && job->meta_len == rec->meta_len)
        {
            if (!job->claiming) {
                ngx_http_llm_job_claim(job, rec->updated);
            }

            return NGX_OK;
        }

        ngx_http_llm_job_end(job, NGX_HTTP_LLM_FAILED, "job_lost",
                             (u_char *) "the worker running the job is gone",
                             sizeof("the worker running the job is gone")
                             - 1);
        return NGX_OK;
    }

    if (job->nevents < rec->nevents) {
        /* the rest of the log next time */
        return NGX_OK;
    }

    job->outcome.finish_len = ngx_min(rec->outcome.finish_len,
                                      sizeof(job->outcome.finish));
    ngx_memcpy(job->outcome.finish, rec->outcome.finish,
               job->outcome.finish_len);
    job->outcome.input_tokens = rec->outcome.input_tokens;
    job->outcome.output_tokens = rec->outcome.output_tokens;
    job->outcome.code_len = ngx_min(rec->outcome.code_len,
                                    sizeof(job->outcome.code));
    ngx_memcpy(job->outcome.code, rec->outcome.code, job->outcome.code_len);

    if (rec->outcome.message_len && job->outcome.message == NULL) {
        job->outcome.message = ngx_alloc(rec->outcome.message_len, job->log);
        if (job->outcome.message) {
            ngx_memcpy(job->outcome.message, rec->outcome.message,
                       rec->outcome.message_len);
            job->outcome.message_len = rec->outcome.message_len;
        }
    }

    job->state = rec->state;

    /* a log cut short (a full zone) still ends with a final event */

    if (job->nevents == 0
        || !ngx_http_llm_event_final(job->events[job->nevents - 1].type))
    {
        (void) ngx_http_llm_job_event(job,
                                      job->state == NGX_HTTP_LLM_COMPLETED
                                      ? NGX_HTTP_LLM_EV_COMPLETE
                                      : NGX_HTTP_LLM_EV_ERROR, 0, 0);
    }

    return NGX_OK;
}


/*
 * What a store returns is not trusted: a record whose ranges or numbers
 * this module could not have written (planted, damaged) would make the
 * SSE writer read outside the text or the gap fill allocate without
 * bound.  Returns what is wrong, or NULL.
 */

const char *
ngx_http_llm_record_check(ngx_http_llm_job_t *job, ngx_http_llm_record_t *rec)
{
    u_char                *p;
    size_t                 end, mend;
    json_t                *state;
    ngx_uint_t             i, n, gap, delta_gap, meta_gap;
    ngx_http_llm_event_t  *ev;

    if (rec->state > NGX_HTTP_LLM_CANCELLED) {
        return "state";
    }

    if (rec->from_meta > rec->meta_len
        || (rec->meta == NULL && rec->meta_len > rec->from_meta))
    {
        return "meta range";
    }

    if (rec->pipeline_state_len > NGX_HTTP_LLM_STATE_MAX
        || (rec->pipeline_state == NULL && rec->pipeline_state_len))
    {
        return "pipeline state";
    }

    /* a state is read (parsed) once per version */

    if (rec->pipeline_state && rec->state_version != job->state_version) {
        state = json_loadb((char *) rec->pipeline_state,
                           rec->pipeline_state_len, 0, NULL);
        n = json_is_object(state);
        json_decref(state);

        if (!n) {
            return "pipeline state";
        }
    }

    if (rec->from_text > rec->text_len
        || (rec->text == NULL && rec->text_len > rec->from_text))
    {
        return "text range";
    }

    if (rec->from_event > rec->nevents
        || (rec->events == NULL && rec->nevents > rec->from_event))
    {
        return "event range";
    }

    /*
     * Before the first event given there are only the start event,
     * deltas of one byte or more and payloads of two or more: no more of
     * them than the text and meta have bytes, but for the empty deltas of
     * a few takeovers' gaps.
     */

    if (rec->from_event > rec->text_len + rec->meta_len + 1
                          + 4 * NGX_HTTP_LLM_GAP_EVENTS)
    {
        return "first event";
    }

    if (rec->outcome.input_tokens < -1
        || rec->outcome.input_tokens > NGX_HTTP_LLM_TOKENS_MAX
        || rec->outcome.output_tokens < -1
        || rec->outcome.output_tokens > NGX_HTTP_LLM_TOKENS_MAX)
    {
        return "token count";
    }

    if (rec->outcome.finish_len > sizeof(rec->outcome.finish)
        || rec->outcome.code_len > sizeof(rec->outcome.code)
        || (rec->outcome.message == NULL && rec->outcome.message_len))
    {
        return "outcome";
    }

    /*
     * Deltas follow each other through the text, within it, and payload
     * events through the meta: a mirror's text and meta end where its
     * last ones do.
     */

    end = job->text_len;
    mend = job->meta_len;

    /*
     * After a gap (a store that dropped the oldest events) the first
     * delta and the first payload event may start further on.
     */

    gap = (rec->from_event > job->nevents);
    delta_gap = gap;
    meta_gap = gap;

    n = rec->nevents - rec->from_event;

    for (i = 0; i < n; i++) {
        ev = &rec->events[i];

        if (ev->type > NGX_HTTP_LLM_EV_LAST) {
            return "event type";
        }

        if (ngx_http_llm_event_payload(ev->type)) {
            if (ev->off > rec->meta_len || ev->len > rec->meta_len - ev->off)
            {
                return "event outside the meta";
            }

            if (ev->off != mend && !(meta_gap && ev->off > mend)) {
                return "event offset";
            }

            meta_gap = 0;
            mend = ev->off + ev->len;

            /*
             * what the formats render as one line of JSON, "{}" at least
             * (and no pointer into a meta that may be NULL when empty)
             */

            if (ev->len < 2) {
                return "event payload";
            }

            if (ev->off < rec->from_meta) {
                if (mend > job->meta_len) {
                    return "event payload";
                }

                p = job->meta + ev->off;

            } else {
                p = rec->meta + (ev->off - rec->from_meta);
            }

            if (ngx_http_llm_payload_valid(p, ev->len) != NGX_OK) {
                return "event payload";
            }

            continue;
        }

        /* a final event may follow one: a resume from the last event */
        if (i == 0 && gap && ev->type == NGX_HTTP_LLM_EV_START) {
            return "event after a gap";
        }

        if (ev->type != NGX_HTTP_LLM_EV_DELTA) {
            continue;
        }

        if (ev->off > rec->text_len || ev->len > rec->text_len - ev->off) {
            return "event outside the text";
        }

        /* the first one after a gap: the gap's deltas end where it starts */
        if (ev->off != end && !(delta_gap && ev->off > end)) {
            return "event offset";
        }

        delta_gap = 0;
        end = ev->off + ev->len;
    }

    return NULL;
}


static void
ngx_http_llm_mirror_poll(ngx_event_t *ev)
{
    ngx_http_llm_job_t  *job;

    job = (ngx_http_llm_job_t *) ((u_char *) ev
                                  - offsetof(ngx_http_llm_job_t, timer));

    if (job->fetching) {
        return;
    }

    job->fetching = 1;

    if (job->store->ops->fetch(job->store, job->id, job->nevents,
                               job->text_len, job->meta_len,
                               ngx_http_llm_mirror_polled, job)
        != NGX_OK)
    {
        job->fetching = 0;
        ngx_add_timer(&job->timer, job->store->poll);
    }
}


static void
ngx_http_llm_mirror_polled(void *data, ngx_int_t rc,
    ngx_http_llm_record_t *rec)
{
    ngx_http_llm_job_t *job = data;

    if (!job->mirror) {
        /* taken over meanwhile: the store's copy is no news here */
        job->fetching = 0;
        ngx_http_llm_job_free(job);
        return;
    }

    if (ngx_queue_empty(&job->subscribers)) {
        /* everybody left while the store answered */
        job->fetching = 0;
        job->state = NGX_HTTP_LLM_CANCELLED;
        ngx_http_llm_job_free(job);
        return;
    }

    /* still held as fetching: a final event could free it */

    if (rc == NGX_DECLINED) {
        ngx_http_llm_job_end(job, NGX_HTTP_LLM_FAILED, "job_not_found",
                             (u_char *) "the job has expired",
                             sizeof("the job has expired") - 1);

    } else if (rc == NGX_ABORT) {
        ngx_http_llm_job_end(job, NGX_HTTP_LLM_FAILED, NGX_HTTP_LLM_E_STORE,
                             (u_char *) "the job's record in the store is "
                             "corrupt",
                             sizeof("the job's record in the store is "
                                    "corrupt") - 1);

    } else if (rc == NGX_OK) {
        rc = ngx_http_llm_mirror_update(job, rec);

        if (rc == NGX_ABORT) {
            ngx_http_llm_job_end(job, NGX_HTTP_LLM_FAILED,
                                 NGX_HTTP_LLM_E_STORE,
                                 (u_char *) "the job's record in the store "
                                 "is corrupt",
                                 sizeof("the job's record in the store is "
                                        "corrupt") - 1);

        } else if (rc != NGX_OK) {
            ngx_http_llm_job_end(job, NGX_HTTP_LLM_FAILED,
                                 NGX_HTTP_LLM_E_INTERNAL,
                                 (u_char *) "out of memory",
                                 sizeof("out of memory") - 1);
        }
    }

    /* a store that cannot answer now is asked again later */

    if (rc == NGX_ERROR) {
        job->quiet_since = ngx_current_msec;
    }

    if (job->state == NGX_HTTP_LLM_RUNNING) {
        ngx_add_timer(&job->timer, job->store->poll);
    }

    job->fetching = 0;
    ngx_http_llm_job_wake(job);
}


void
ngx_http_llm_job_subscribe(ngx_http_llm_job_t *job, ngx_http_llm_ctx_t *ctx)
{
    ctx->job = job;
    ngx_queue_insert_tail(&job->subscribers, &ctx->queue);

    if (!job->mirror && job->timer.timer_set
        && job->timer.handler == ngx_http_llm_job_grace_handler)
    {
        /* a client came back within the grace period */
        ngx_del_timer(&job->timer);
    }
}


void
ngx_http_llm_job_unsubscribe(ngx_http_llm_ctx_t *ctx)
{
    ngx_http_llm_job_t  *job;

    job = ctx->job;

    if (job == NULL) {
        return;
    }

    ctx->job = NULL;
    ngx_queue_remove(&ctx->queue);

    if (!ngx_queue_empty(&job->subscribers)) {
        return;
    }

    if (job->mirror) {
        if (job->fetching) {
            /* freed when the store answers */
            return;
        }

        job->state = NGX_HTTP_LLM_CANCELLED;
        ngx_http_llm_job_free(job);
        return;
    }

    if (job->state == NGX_HTTP_LLM_RUNNING) {
        ngx_http_llm_job_unwatched(job);
        return;
    }

    ngx_http_llm_job_free(job);
}


/*
 * The disconnect policy (llm_on_disconnect) for a job that nobody
 * follows here any more; a job in the background, or paused, waits.
 */

static void
ngx_http_llm_job_unwatched(ngx_http_llm_job_t *job)
{
    if (job->background || job->pause) {
        return;
    }

    if (job->grace) {
        job->timer.handler = ngx_http_llm_job_grace_handler;
        ngx_add_timer(&job->timer, job->grace);
        return;
    }

    ngx_log_error(NGX_LOG_INFO, job->log, 0,
                  "llm: job %s: client gone, upstream request cancelled",
                  job->id);

    ngx_http_llm_metrics_abandon(job);

    ngx_http_llm_job_end(job, NGX_HTTP_LLM_CANCELLED,
                         NGX_HTTP_LLM_E_CANCELLED,
                         (u_char *) "the client went away",
                         sizeof("the client went away") - 1);
}


/* nobody came back: unless a follower elsewhere reads the job, cancel it */

static void
ngx_http_llm_job_grace_handler(ngx_event_t *ev)
{
    int64_t              watched;
    ngx_http_llm_job_t  *job;

    job = (ngx_http_llm_job_t *) ((u_char *) ev
                                  - offsetof(ngx_http_llm_job_t, timer));

    if (!ngx_queue_empty(&job->subscribers)
        || job->state != NGX_HTTP_LLM_RUNNING
        || job->pause)
    {
        ngx_http_llm_job_free(job);
        return;
    }

    watched = job->watched;

    if (watched && ngx_http_llm_now_ms() - watched < (int64_t) job->grace) {
        ngx_add_timer(&job->timer, job->grace);
        return;
    }

    ngx_log_error(NGX_LOG_INFO, job->log, 0,
                  "llm: job %s: nobody came back within %M ms, upstream "
                  "request cancelled", job->id, job->grace);

    ngx_http_llm_metrics_abandon(job);

    ngx_http_llm_job_end(job, NGX_HTTP_LLM_CANCELLED,
                         NGX_HTTP_LLM_E_CANCELLED,
                         (u_char *) "the client went away",
                         sizeof("the client went away") - 1);
}


/* event loop: what the engine produced since the last drain */

static void
ngx_http_llm_job_output(void *data, ngx_http_llm_output_t *out)
{
    ngx_http_llm_job_t *job = data;

    ngx_http_llm_metrics_output(job, out);

    if (out->done) {
        /* the engine let go of the transfer with its final output */
        job->xfer = NULL;
    }

    if (job->state != NGX_HTTP_LLM_RUNNING) {
        return;
    }

    if (out->text_len
        && ngx_http_llm_job_delta(job, out->text, out->text_len) != NGX_OK)
    {
        return;
    }

    if (!out->done) {
        ngx_http_llm_job_save(job);
        ngx_http_llm_job_wake(job);
        return;
    }

    if (out->failed) {
        ngx_log_error(NGX_LOG_ERR, job->log, 0,
                      "llm: job %s failed: %s: %*s", job->id,
                      out->outcome.code,
                      (size_t) ngx_min(out->outcome.message_len, 512),
                      out->outcome.message);

        ngx_http_llm_job_end(job, NGX_HTTP_LLM_FAILED,
                             (const char *) out->outcome.code,
                             out->outcome.message, out->outcome.message_len);
        return;
    }

    ngx_memcpy(job->outcome.finish, out->outcome.finish,
               out->outcome.finish_len);
    job->outcome.finish_len = out->outcome.finish_len;
    job->outcome.input_tokens = out->outcome.input_tokens;
    job->outcome.output_tokens = out->outcome.output_tokens;

    if (ngx_http_llm_job_event(job, NGX_HTTP_LLM_EV_COMPLETE, 0, 0)
        != NGX_OK)
    {
        ngx_http_llm_job_fail(job, NGX_HTTP_LLM_E_INTERNAL, "out of memory");
        return;
    }

    job->state = NGX_HTTP_LLM_COMPLETED;
    job->finished = ngx_http_llm_now_ms();

    ngx_http_llm_job_ended(job);
}


/* a delta: what the engine output and a pipeline's text callback add */

static ngx_int_t
ngx_http_llm_job_delta(ngx_http_llm_job_t *job, u_char *p, size_t len)
{
    size_t  off;

    if (ngx_http_llm_job_bound(job, len) != NGX_OK) {
        return NGX_ERROR;
    }

    off = job->text_len;

    if (ngx_http_llm_job_append(&job->text, &job->text_len, &job->text_cap,
                                p, len)
           != NGX_OK
        || ngx_http_llm_job_event(job, NGX_HTTP_LLM_EV_DELTA, off, len)
           != NGX_OK)
    {
        ngx_http_llm_job_fail(job, NGX_HTTP_LLM_E_INTERNAL, "out of memory");
        return NGX_ERROR;
    }

    ngx_http_llm_metrics_delta(job);

    return NGX_OK;
}


/*
 * Room for one more event and "len" bytes, or the job fails.  The event
 * and the final one must fit in llm_max_events; a pipeline's text and
 * meta together in llm_max_text (an engine transfer bounds its own text).
 */

static ngx_int_t
ngx_http_llm_job_bound(ngx_http_llm_job_t *job, size_t len)
{
    if (job->max_events && job->nevents + 2 > job->max_events) {
        ngx_log_error(NGX_LOG_ERR, job->log, 0,
                      "llm: job %s failed: %s: more than %ui events "
                      "(llm_max_events)", job->id,
                      NGX_HTTP_LLM_E_TEXT_LIMIT, job->max_events);

        ngx_http_llm_job_fail(job, NGX_HTTP_LLM_E_TEXT_LIMIT,
                              "the generation exceeded llm_max_events");
        return NGX_ERROR;
    }

    if (job->max_text
        && (len > job->max_text
            || job->text_len + job->meta_len > job->max_text - len))
    {
        ngx_log_error(NGX_LOG_ERR, job->log, 0,
                      "llm: job %s failed: %s: more than %uz bytes of text "
                      "and events (llm_max_text)", job->id,
                      NGX_HTTP_LLM_E_TEXT_LIMIT, job->max_text);

        ngx_http_llm_job_fail(job, NGX_HTTP_LLM_E_TEXT_LIMIT,
                              "the generation exceeded llm_max_text");
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * Text of a running job that is not the engine's (a pipeline step that
 * streams): a delta, saved and sent.  NGX_ERROR: the job has failed.
 */

ngx_int_t
ngx_http_llm_job_text(ngx_http_llm_job_t *job, u_char *p, size_t len)
{
    if (job->state != NGX_HTTP_LLM_RUNNING) {
        return NGX_ERROR;
    }

    if (len == 0) {
        return NGX_OK;
    }

    if (ngx_http_llm_job_delta(job, p, len) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_http_llm_job_save(job);
    ngx_http_llm_job_wake(job);

    return NGX_OK;
}


/*
 * A payload event (step_start, step, check, progress): its JSON object is
 * appended to the job's meta, the event points at it, and it is saved and
 * sent like a delta.  NGX_ERROR: the job has failed.
 */

ngx_int_t
ngx_http_llm_job_payload(ngx_http_llm_job_t *job,
    ngx_http_llm_event_type_e type, u_char *payload, size_t len)
{
    size_t  off;

    if (job->state != NGX_HTTP_LLM_RUNNING) {
        return NGX_ERROR;
    }

    if (!ngx_http_llm_event_payload(type) || type > NGX_HTTP_LLM_EV_LAST
        || ngx_http_llm_payload_valid(payload, len) != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ALERT, job->log, 0,
                      "llm: job %s: event %d with a payload that is not "
                      "one line of a JSON object", job->id, (int) type);

        ngx_http_llm_job_fail(job, NGX_HTTP_LLM_E_INTERNAL,
                              "invalid event payload");
        return NGX_ERROR;
    }

    if (ngx_http_llm_job_bound(job, len) != NGX_OK) {
        return NGX_ERROR;
    }

    /* the run says when a pause takes effect and when it is over */

    if (type == NGX_HTTP_LLM_EV_PAUSED || type == NGX_HTTP_LLM_EV_RESUMED) {
        job->paused = (type == NGX_HTTP_LLM_EV_PAUSED);

        if (job->timer.timer_set) {
            ngx_del_timer(&job->timer);
        }

        if (job->paused) {
            job->timer.handler = ngx_http_llm_job_pause_expired;
            ngx_add_timer(&job->timer, job->pause_timeout);
        }
    }

    off = job->meta_len;

    if (ngx_http_llm_job_append(&job->meta, &job->meta_len, &job->meta_cap,
                                payload, len)
           != NGX_OK
        || ngx_http_llm_job_event(job, type, off, len) != NGX_OK)
    {
        ngx_http_llm_job_fail(job, NGX_HTTP_LLM_E_INTERNAL, "out of memory");
        return NGX_ERROR;
    }

    /* a job resumed with nobody watching: the disconnect policy again */

    if (type == NGX_HTTP_LLM_EV_RESUMED
        && ngx_queue_empty(&job->subscribers))
    {
        ngx_http_llm_job_unwatched(job);

        if (job->state != NGX_HTTP_LLM_RUNNING) {
            return NGX_ERROR;
        }
    }

    ngx_http_llm_job_save(job);
    ngx_http_llm_job_wake(job);

    return NGX_OK;
}


/*
 * The pipeline's state, a JSON object, replaces the one before and is
 * saved at once (the memory store copies it now, Redis with its next
 * flush).  NGX_ERROR: the job has failed.
 */

ngx_int_t
ngx_http_llm_job_set_state(ngx_http_llm_job_t *job, u_char *json, size_t len)
{
    size_t   max;
    json_t  *o;

    if (job->state != NGX_HTTP_LLM_RUNNING) {
        /* a job that has ended keeps the state it ended with */
        return NGX_ERROR;
    }

    /* what the stores' readers accept, or they would refuse the job */

    max = NGX_HTTP_LLM_STATE_MAX;

    if (job->max_text && job->max_text < max) {
        max = job->max_text;
    }

    if (len > max) {
        ngx_log_error(NGX_LOG_ERR, job->log, 0,
                      "llm: job %s failed: %s: a pipeline state of %uz "
                      "bytes", job->id, NGX_HTTP_LLM_E_TEXT_LIMIT, len);

        ngx_http_llm_job_fail(job, NGX_HTTP_LLM_E_TEXT_LIMIT,
                              "the pipeline state exceeded llm_max_text");
        return NGX_ERROR;
    }

    o = json_loadb((char *) json, len, 0, NULL);

    if (!json_is_object(o)) {
        json_decref(o);

        ngx_log_error(NGX_LOG_ALERT, job->log, 0,
                      "llm: job %s: a pipeline state that is not a JSON "
                      "object", job->id);

        ngx_http_llm_job_fail(job, NGX_HTTP_LLM_E_INTERNAL,
                              "invalid pipeline state");
        return NGX_ERROR;
    }

    json_decref(o);

    if (ngx_http_llm_job_keep_state(job, json, len) != NGX_OK) {
        ngx_http_llm_job_fail(job, NGX_HTTP_LLM_E_INTERNAL, "out of memory");
        return NGX_ERROR;
    }

    job->state_version++;

    ngx_http_llm_job_save(job);

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_job_keep_state(ngx_http_llm_job_t *job, u_char *json,
    size_t len)
{
    u_char  *p;

    p = ngx_alloc(len ? len : 1, job->log);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(p, json, len);

    ngx_free(job->pipeline_state);
    job->pipeline_state = p;
    job->pipeline_state_len = len;

    return NGX_OK;
}


/*
 * The end of a job that is not the engine's, with its outcome: the final
 * event, saved and sent, as the engine's last output does.
 */

void
ngx_http_llm_job_finish(ngx_http_llm_job_t *job, ngx_http_llm_state_e state,
    ngx_http_llm_outcome_t *oc)
{
    u_char  code[sizeof(oc->code) + 1];

    /* what ends by itself is not cancelled */
    job->run_cancel = NULL;

    if (job->state != NGX_HTTP_LLM_RUNNING) {
        return;
    }

    if (state != NGX_HTTP_LLM_COMPLETED) {
        ngx_memcpy(code, oc->code, oc->code_len);
        code[oc->code_len] = '\0';

        ngx_log_error(NGX_LOG_ERR, job->log, 0,
                      "llm: job %s failed: %s: %*s", job->id, code,
                      (size_t) ngx_min(oc->message_len, 512), oc->message);

        ngx_http_llm_job_end(job, state, (const char *) code, oc->message,
                             oc->message_len);
        return;
    }

    ngx_memcpy(job->outcome.finish, oc->finish, oc->finish_len);
    job->outcome.finish_len = oc->finish_len;
    job->outcome.input_tokens = oc->input_tokens;
    job->outcome.output_tokens = oc->output_tokens;

    if (ngx_http_llm_job_event(job, NGX_HTTP_LLM_EV_COMPLETE, 0, 0)
        != NGX_OK)
    {
        ngx_http_llm_job_fail(job, NGX_HTTP_LLM_E_INTERNAL, "out of memory");
        return;
    }

    job->state = NGX_HTTP_LLM_COMPLETED;
    job->finished = ngx_http_llm_now_ms();

    ngx_http_llm_job_ended(job);
}


/* a payload is sent as one SSE data line: a JSON object without CR, LF */

static ngx_int_t
ngx_http_llm_payload_valid(u_char *p, size_t len)
{
    json_t     *o;
    ngx_int_t   rc;

    if (len < 2 || p[0] != '{'
        || memchr(p, '\n', len) || memchr(p, '\r', len))
    {
        return NGX_ERROR;
    }

    o = json_loadb((char *) p, len, 0, NULL);
    rc = json_is_object(o) ? NGX_OK : NGX_ERROR;
    json_decref(o);

    return rc;
}


void
ngx_http_llm_job_fail(ngx_http_llm_job_t *job, const char *code,
    const char *message)
{
    if (job->state != NGX_HTTP_LLM_RUNNING) {
        return;
    }

    ngx_http_llm_job_end(job, NGX_HTTP_LLM_FAILED, code, (u_char *) message,
                         ngx_strlen(message));
}


/* DELETE, or a cancel that came through the store */

void
ngx_http_llm_job_cancel(ngx_http_llm_job_t *job)
{
    if (job->state != NGX_HTTP_LLM_RUNNING) {
        return;
    }

    if (job->mirror) {
        (void) job->store->ops->control(job->store, job->id,
                                        NGX_HTTP_LLM_CTL_CANCEL);
        return;
    }

    ngx_log_error(NGX_LOG_INFO, job->log, 0, "llm: job %s cancelled",
                  job->id);

    ngx_http_llm_job_end(job, NGX_HTTP_LLM_CANCELLED,
                         NGX_HTTP_LLM_E_CANCELLED,
                         (u_char *) "the job was cancelled",
                         sizeof("the job was cancelled") - 1);
}


/*
 * Pause (on) or resume a pipeline's job: a run waits between two steps.
 * A job run elsewhere gets the request through the store, where each
 * request is numbered, so that its worker acts on each once, in order.
 * NGX_DECLINED: the job is over or not a pipeline.
 */

ngx_int_t
ngx_http_llm_job_pause(ngx_http_llm_job_t *job, ngx_uint_t on)
{
    if (job->state != NGX_HTTP_LLM_RUNNING
        || (job->run_pause == NULL && job->state_version == 0))
    {
        return NGX_DECLINED;
    }

    if (job->mirror) {
        if (job->store->ops->control(job->store, job->id,
                                     on ? NGX_HTTP_LLM_CTL_PAUSE
                                        : NGX_HTTP_LLM_CTL_RESUME)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        /* shown at once; the store's next read says what is true */
        job->pause = on;
        return NGX_OK;
    }

    ngx_http_llm_job_pause_apply(job, on);

    return NGX_OK;
}


/* here: a request made here, or one that came through the store */

static void
ngx_http_llm_job_pause_apply(ngx_http_llm_job_t *job, ngx_uint_t on)
{
    if (job->state != NGX_HTTP_LLM_RUNNING || job->pause == on) {
        return;
    }

    ngx_log_error(NGX_LOG_INFO, job->log, 0, "llm: job %s %s", job->id,
                  on ? "pauses" : "resumes");

    job->pause = on;

    if (!on && !job->paused && ngx_queue_empty(&job->subscribers)
        && !job->timer.timer_set)
    {
        /* a pause that never took effect held the disconnect policy */
        ngx_http_llm_job_unwatched(job);

        if (job->state != NGX_HTTP_LLM_RUNNING) {
            return;
        }
    }

    job->run_pause(job->run, on);
}


static void
ngx_http_llm_job_pause_handler(ngx_event_t *ev)
{
    ngx_http_llm_job_t *job = ev->data;

    ngx_http_llm_job_hold(job);
    ngx_http_llm_job_pause_apply(job, job->store_pause);
    ngx_http_llm_job_unhold(job);
}


/* nobody resumed the job in time: it ends, to be continued later */

static void
ngx_http_llm_job_pause_expired(ngx_event_t *ev)
{
    ngx_http_llm_job_t  *job;

    job = (ngx_http_llm_job_t *) ((u_char *) ev
                                  - offsetof(ngx_http_llm_job_t, timer));

    ngx_log_error(NGX_LOG_INFO, job->log, 0,
                  "llm: job %s: paused for %M ms, cancelled", job->id,
                  job->pause_timeout);

    ngx_http_llm_job_end(job, NGX_HTTP_LLM_CANCELLED,
                         NGX_HTTP_LLM_E_PAUSE_TMO,
                         (u_char *) "the job stayed paused too long",
                         sizeof("the job stayed paused too long") - 1);
}


/* a mirror's claim on its job: the answer, held until the loop is back */

static void
ngx_http_llm_job_claim(ngx_http_llm_job_t *job, int64_t updated)
{
    job->claiming = 1;
    job->holds++;

    if (job->store->ops->claim(job->store, job->id, updated,
                               ngx_http_llm_job_claimed, job)
        != NGX_OK)
    {
        job->claiming = 0;
        job->holds--;
    }
}


static void
ngx_http_llm_job_claimed(void *data, ngx_int_t rc, ngx_http_llm_record_t *rec)
{
    ngx_http_llm_job_t *job = data;

    job->claimed = (rc == NGX_OK);
    ngx_post_event(&job->claim_ev, &ngx_posted_events);
}


static void
ngx_http_llm_job_claim_handler(ngx_event_t *ev)
{
    ngx_http_llm_job_t *job = ev->data;

    job->claiming = 0;

    if (job->claimed && job->mirror && job->state == NGX_HTTP_LLM_RUNNING
        && !ngx_queue_empty(&job->subscribers))
    {
        job->claimed = 0;

        ngx_log_error(NGX_LOG_NOTICE, job->log, 0,
                      "llm: job %s taken over: its worker has not saved it "
                      "for %d s", job->id, NGX_HTTP_LLM_LOST_MS / 1000);

        if (job->takeover(job) != NGX_OK
            && job->state == NGX_HTTP_LLM_RUNNING)
        {
            ngx_http_llm_job_end(job, NGX_HTTP_LLM_FAILED, "job_lost",
                                 (u_char *) "the job cannot be taken over",
                                 sizeof("the job cannot be taken over") - 1);
        }
    }

    ngx_http_llm_job_unhold(job);
}


/*
 * The mirror becomes the job, run here from now on: what the store has is
 * saved, then a gap of ids, then what the new run makes.
 */

void
ngx_http_llm_job_adopt(ngx_http_llm_job_t *job, ngx_http_llm_job_opts_t *o)
{
    int64_t     left;
    ngx_uint_t  i, gap;

    if (job->timer.timer_set) {
        ngx_del_timer(&job->timer);
    }

    job->mirror = 0;
    job->takeover = NULL;
    job->grace = o->grace;
    job->pause_timeout = o->pause_timeout;
    job->max_events = o->max_events;
    job->max_text = o->max_text;

    job->saved_events = job->nevents;
    job->saved_text = job->text_len;
    job->saved_meta = job->meta_len;
    job->saved_state = job->state_version;
    job->store_data = NULL;
    job->store_pause = job->pause;
    job->paused = 0;

    ngx_http_llm_metrics_job_start(job, o);

    /* llm_max_duration counts from the job's start, here or there */

    if (o->max_duration) {
        left = job->created + (int64_t) o->max_duration
               - ngx_http_llm_now_ms();
        ngx_add_timer(&job->deadline, (ngx_msec_t) ngx_max(left, 1));
    }

    /* within llm_max_events, with room for a few events of its own */

    gap = NGX_HTTP_LLM_GAP_EVENTS;

    if (job->max_events) {
        gap = (job->max_events > job->nevents + 64)
              ? ngx_min(gap, job->max_events - job->nevents - 64) : 0;
    }

    for (i = 0; i < gap; i++) {
        if (ngx_http_llm_job_event(job, NGX_HTTP_LLM_EV_DELTA, job->text_len,
                                   0)
            != NGX_OK)
        {
            break;
        }
    }
}


/* llm_max_duration: the job has run for long enough, paused or not */

static void
ngx_http_llm_job_deadline(ngx_event_t *ev)
{
    ngx_http_llm_job_t  *job;

    job = (ngx_http_llm_job_t *) ((u_char *) ev
                                  - offsetof(ngx_http_llm_job_t, deadline));

    ngx_log_error(NGX_LOG_INFO, job->log, 0,
                  "llm: job %s failed: it ran longer than llm_max_duration",
                  job->id);

    ngx_http_llm_job_end(job, NGX_HTTP_LLM_FAILED, NGX_HTTP_LLM_E_DURATION,
                         (u_char *) "the job ran longer than allowed",
                         sizeof("the job ran longer than allowed") - 1);
}


/* keep a job allocated across calls that may end it */

void
ngx_http_llm_job_hold(ngx_http_llm_job_t *job)
{
    job->holds++;
}


void
ngx_http_llm_job_unhold(ngx_http_llm_job_t *job)
{
    job->holds--;
    ngx_http_llm_job_free(job);
}


/*
 * The same, the job being freed, if it is over, only when the loop comes
 * back: for a caller that must not see it freed under it (a pipeline
 * calling back, with its run).
 */

void
ngx_http_llm_job_unhold_later(ngx_http_llm_job_t *job)
{
    job->holds--;

    if (!job->free_ev.posted) {
        ngx_post_event(&job->free_ev, &ngx_posted_events);
    }
}


static void
ngx_http_llm_job_cancel_handler(ngx_event_t *ev)
{
    ngx_http_llm_job_cancel(ev->data);
}


static void
ngx_http_llm_job_free_handler(ngx_event_t *ev)
{
    ngx_http_llm_job_free(ev->data);
}


/* the worker is shutting down: every stream gets its final event now */

void
ngx_http_llm_jobs_shutdown(void)
{
    ngx_queue_t         *q, *next;
    ngx_http_llm_job_t  *job;

    if (ngx_http_llm_jobs.next == NULL) {
        return;
    }

    for (q = ngx_queue_head(&ngx_http_llm_jobs);
         q != ngx_queue_sentinel(&ngx_http_llm_jobs);
         q = next)
    {
        next = ngx_queue_next(q);
        job = ngx_queue_data(q, ngx_http_llm_job_t, queue);

        ngx_http_llm_job_fail(job, NGX_HTTP_LLM_E_SHUTDOWN,
                              "the server is shutting down");
    }
}


/*
 * The process exits with jobs still running (a fast stop, or a single
 * process quitting): the threads are joined and nothing is sent any more,
 * so the jobs are only freed (the engine has freed their transfers).
 */

void
ngx_http_llm_jobs_exit_process(void)
{
    ngx_queue_t         *q;
    ngx_http_llm_job_t  *job;

    if (ngx_http_llm_jobs.next == NULL) {
        return;
    }

    while (!ngx_queue_empty(&ngx_http_llm_jobs)) {
        q = ngx_queue_head(&ngx_http_llm_jobs);
        job = ngx_queue_data(q, ngx_http_llm_job_t, queue);

        ngx_queue_remove(q);

        if (job->free_ev.posted) {
            ngx_delete_posted_event(&job->free_ev);
        }

        if (job->cancel_ev.posted) {
            ngx_delete_posted_event(&job->cancel_ev);
        }

        if (job->pause_ev.posted) {
            ngx_delete_posted_event(&job->pause_ev);
        }

        if (job->claim_ev.posted) {
            ngx_delete_posted_event(&job->claim_ev);
        }

        if (job->timer.posted) {
            ngx_delete_posted_event(&job->timer);
        }

        if (job->run) {
            ngx_http_llm_pipeline_exit(job->run);
        }

        if (job->limits) {
            ngx_http_llm_limit_release(job->limits, job->nlimits);
        }

        free(job->events);
        free(job->text);
        free(job->meta);
        ngx_free(job->pipeline_state);
        ngx_free(job->outcome.message);
        ngx_free(job);
    }
}


static ngx_int_t
ngx_http_llm_job_id(u_char *id, ngx_log_t *log)
{
    u_char     raw[16];
    ssize_t    n;
    ngx_str_t  src, dst;

    n = getrandom(raw, sizeof(raw), 0);

    if (n != (ssize_t) sizeof(raw)) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      "llm: getrandom() failed");
        return NGX_ERROR;
    }

    src.data = raw;
    src.len = sizeof(raw);
    dst.data = id;

    ngx_encode_base64url(&dst, &src);
    id[dst.len] = '\0';

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_job_event(ngx_http_llm_job_t *job, ngx_http_llm_event_type_e type,
    size_t off, size_t len)
{
    ngx_uint_t             n;
    ngx_http_llm_event_t  *events, *ev;

    /* growing one early keeps a slot for the final event */

    if (job->nevents + 1 >= job->events_cap) {
        n = job->events_cap ? job->events_cap * 2 : 8;
        events = realloc(job->events, n * sizeof(ngx_http_llm_event_t));

        if (events == NULL) {
            return NGX_ERROR;
        }

        job->events = events;
        job->events_cap = n;
    }

    ev = &job->events[job->nevents++];
    ev->type = type;
    ev->off = off;
    ev->len = (uint32_t) len;

    return NGX_OK;
}


/* the job's text or meta: append-only, growing by doubling */

static ngx_int_t
ngx_http_llm_job_append(u_char **buf, size_t *n, size_t *cap, u_char *p,
    size_t len)
{
    size_t   c;
    u_char  *t;

    if (*n + len > *cap) {
        c = ngx_max(*cap * 2, *n + len);
        c = ngx_max(c, 256);

        t = realloc(*buf, c);
        if (t == NULL) {
            return NGX_ERROR;
        }

        *buf = t;
        *cap = c;
    }

    ngx_memcpy(*buf + *n, p, len);
    *n += len;

    return NGX_OK;
}


/* the final "error" event: what went wrong and the text made so far */

static void
ngx_http_llm_job_end(ngx_http_llm_job_t *job, ngx_http_llm_state_e state,
    const char *code, u_char *msg, size_t len)
{
    void  (*cancel)(ngx_http_llm_run_t *run);

    if (job->xfer) {
        ngx_http_llm_engine_release(job->xfer);
        job->xfer = NULL;
    }

    /*
     * A run that has not ended stops without calling back; one that is
     * calling back stops when its callback says the job failed.
     */

    if (job->run_cancel) {
        cancel = job->run_cancel;
        job->run_cancel = NULL;

        if (job->run_calls == 0) {
            cancel(job->run);
        }

        /* the run's last state could not be kept: that ended the job */

        if (job->state != NGX_HTTP_LLM_RUNNING) {
            return;
        }
    }

    if (job->timer.timer_set) {
        ngx_del_timer(&job->timer);
    }

    job->state = state;
    job->finished = ngx_http_llm_now_ms();

    job->outcome.code_len = ngx_min(ngx_strlen(code),
                                    sizeof(job->outcome.code));
    ngx_memcpy(job->outcome.code, code, job->outcome.code_len);

    ngx_free(job->outcome.message);
    job->outcome.message_len = 0;

    job->outcome.message = ngx_alloc(len ? len : 1, job->log);
    if (job->outcome.message) {
        ngx_memcpy(job->outcome.message, msg, len);
        job->outcome.message_len = len;
    }

    if (ngx_http_llm_job_event(job, NGX_HTTP_LLM_EV_ERROR, 0, 0) != NGX_OK) {
        ngx_log_error(NGX_LOG_ALERT, job->log, 0,
                      "llm: job %s: cannot log its final event", job->id);
    }

    ngx_http_llm_job_ended(job);
}


/*
 * The final event is saved; a store that writes later has it in hand,
 * and its readers elsewhere would see the job running for a while yet.
 * This worker's clients get the final event when the store has it (or
 * after NGX_HTTP_LLM_HOLD_MS without an answer: Redis is down), so that
 * what a client does next (a GET, a POST to continue, anywhere) finds the
 * job over.
 */

static void
ngx_http_llm_job_ended(ngx_http_llm_job_t *job)
{
    ngx_http_llm_metrics_job_end(job);

    if (job->deadline.timer_set) {
        ngx_del_timer(&job->deadline);
    }

    if (job->limits) {
        ngx_http_llm_limit_release(job->limits, job->nlimits);
        job->limits = NULL;
    }

    ngx_http_llm_job_save(job);

    if (job->store && job->store->window && !job->mirror
        && job->saved_events < job->nevents)
    {
        job->held = 1;
        job->timer.handler = ngx_http_llm_job_release_final;
        ngx_add_timer(&job->timer, NGX_HTTP_LLM_HOLD_MS);
    }

    ngx_http_llm_job_wake(job);
}


static void
ngx_http_llm_job_release_final(ngx_event_t *ev)
{
    ngx_http_llm_job_t  *job;

    job = (ngx_http_llm_job_t *) ((u_char *) ev
                                  - offsetof(ngx_http_llm_job_t, timer));

    if (job->timer.timer_set) {
        ngx_del_timer(&job->timer);
    }

    job->held = 0;
    ngx_http_llm_job_wake(job);
}


/* to the store: after every change, and by the maker of a new job */

void
ngx_http_llm_job_save(ngx_http_llm_job_t *job)
{
    ngx_http_llm_saved_t     res;
    ngx_http_llm_snapshot_t  snap;

    if (job->mirror || job->store == NULL) {
        return;
    }

    job->updated = ngx_http_llm_now_ms();

    ngx_http_llm_job_snapshot(job, &snap);
    ngx_http_llm_saved_init(&res, &snap);

    job->store->ops->save(job->store, &snap, &res);

    ngx_http_llm_job_saved(job, &res);
}


/* the job as its store sees it; also asked for by stores that write later */

static void
ngx_http_llm_job_snapshot(void *data, ngx_http_llm_snapshot_t *snap)
{
    ngx_http_llm_job_t *job = data;

    snap->id = job->id;
    snap->state = job->state;
    snap->created = job->created;
    snap->updated = job->updated;
    snap->finished = job->finished;
    snap->watched = job->watched;
    snap->owner = job->owner;
    snap->has_owner = job->has_owner;
    snap->background = job->background;
    snap->paused = job->paused;
    snap->pause = job->store_pause;
    snap->pause_seq = job->pause_seq;
    snap->outcome = &job->outcome;

    snap->events = job->events;
    snap->nevents = job->nevents;
    snap->text = job->text;
    snap->text_len = job->text_len;
    snap->meta = job->meta;
    snap->meta_len = job->meta_len;
    snap->pipeline_state = job->pipeline_state;
    snap->pipeline_state_len = job->pipeline_state_len;
    snap->state_version = job->state_version;

    snap->saved_events = job->saved_events;
    snap->saved_text = job->saved_text;
    snap->saved_meta = job->saved_meta;
    snap->saved_state = job->saved_state;
    snap->store_data = job->store_data;

    snap->snapshot = ngx_http_llm_job_snapshot;
    snap->saved = ngx_http_llm_job_saved;
    snap->data = job;
}


/* what the store made of a save, at once or when its write came back */

static void
ngx_http_llm_job_saved(void *data, ngx_http_llm_saved_t *res)
{
    ngx_http_llm_job_t *job = data;

    if (res->dropped) {
        /* the store said why, once: the job is not saved again */
        job->store = NULL;
        job->store_data = NULL;

        if (job->held && !job->timer.posted) {
            if (job->timer.timer_set) {
                ngx_del_timer(&job->timer);
            }

            ngx_post_event(&job->timer, &ngx_posted_events);
        }

        return;
    }

    job->saved_events = res->saved_events;
    job->saved_text = res->saved_text;
    job->saved_meta = res->saved_meta;
    job->saved_state = res->saved_state;
    job->store_data = res->store_data;
    job->watched = res->watched;

    /* the held final event goes out when the loop comes back */

    if (job->held && job->saved_events >= job->nevents
        && !job->timer.posted)
    {
        if (job->timer.timer_set) {
            ngx_del_timer(&job->timer);
        }

        ngx_post_event(&job->timer, &ngx_posted_events);
    }

    /* a cancel found by a save is acted on outside the store's call */

    if (res->cancel && job->state == NGX_HTTP_LLM_RUNNING
        && !job->cancel_ev.posted)
    {
        ngx_post_event(&job->cancel_ev, &ngx_posted_events);
    }

    /* so is a pause or resume request that changed there */

    if (res->pause_seq > job->pause_seq) {
        job->pause_seq = res->pause_seq;
        job->store_pause = res->pause;

        if (job->state == NGX_HTTP_LLM_RUNNING && !job->pause_ev.posted) {
            ngx_post_event(&job->pause_ev, &ngx_posted_events);
        }
    }
}


/*
 * Tell every watcher; a stream that finishes unsubscribes itself, so the
 * job stays allocated during the walk and is freed after it if nobody
 * needs it any more: callers do not touch the job after this.
 */

static void
ngx_http_llm_job_wake(ngx_http_llm_job_t *job)
{
    ngx_queue_t         *q, *next;
    ngx_http_llm_ctx_t  *ctx;

    job->holds++;

    for (q = ngx_queue_head(&job->subscribers);
         q != ngx_queue_sentinel(&job->subscribers);
         q = next)
    {
        next = ngx_queue_next(q);
        ctx = ngx_queue_data(q, ngx_http_llm_ctx_t, queue);
        ctx->wake(ctx);
    }

    job->holds--;

    ngx_http_llm_job_free(job);
}


/* frees the job when it is over and nobody needs it any more */

static void
ngx_http_llm_job_free(ngx_http_llm_job_t *job)
{
    ngx_http_llm_snapshot_t  snap;

    if ((job->state == NGX_HTTP_LLM_RUNNING && !job->mirror)
        || !ngx_queue_empty(&job->subscribers)
        || job->fetching
        || job->holds)
    {
        return;
    }

    /* a job that could not start ends here */
    ngx_http_llm_metrics_job_end(job);

    if (job->timer.timer_set) {
        ngx_del_timer(&job->timer);
    }

    if (job->timer.posted) {
        ngx_delete_posted_event(&job->timer);
    }

    if (job->deadline.timer_set) {
        ngx_del_timer(&job->deadline);
    }

    if (job->cancel_ev.posted) {
        ngx_delete_posted_event(&job->cancel_ev);
    }

    if (job->pause_ev.posted) {
        ngx_delete_posted_event(&job->pause_ev);
    }

    if (job->claim_ev.posted) {
        ngx_delete_posted_event(&job->claim_ev);
    }

    if (job->free_ev.posted) {
        ngx_delete_posted_event(&job->free_ev);
    }

    if (job->store && !job->mirror) {
        ngx_http_llm_job_snapshot(job, &snap);
        job->store->ops->release(job->store, &snap);
    }

    if (job->run_free) {
        job->run_free(job->run);
    }

    if (job->limits) {
        ngx_http_llm_limit_release(job->limits, job->nlimits);
    }

    free(job->events);
    free(job->text);
    free(job->meta);
    ngx_free(job->pipeline_state);
    ngx_free(job->outcome.message);
    ngx_queue_remove(&job->queue);
    ngx_free(job);

    if (ngx_queue_empty(&ngx_http_llm_jobs) && ngx_http_llm_watch.timer_set) {
        ngx_del_timer(&ngx_http_llm_watch);
    }
}


/*
 * Every second while jobs exist: the running ones are saved again, which
 * shows they are alive and picks up cancel requests made through the
 * store; on a graceful shutdown every stream ends with a final event
 * instead of holding the old worker for as long as a generation runs.
 */

static void
ngx_http_llm_watch_handler(ngx_event_t *ev)
{
    ngx_queue_t         *q, *next;
    ngx_http_llm_job_t  *job;

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        ngx_http_llm_jobs_shutdown();
    }

    for (q = ngx_queue_head(&ngx_http_llm_jobs);
         q != ngx_queue_sentinel(&ngx_http_llm_jobs);
         q = next)
    {
        next = ngx_queue_next(q);
        job = ngx_queue_data(q, ngx_http_llm_job_t, queue);

        if (job->state == NGX_HTTP_LLM_RUNNING) {
            ngx_http_llm_job_save(job);
        }
    }

    if (!ngx_queue_empty(&ngx_http_llm_jobs)) {
        ngx_add_timer(ev, NGX_HTTP_LLM_WATCH_MS);
    }
}
