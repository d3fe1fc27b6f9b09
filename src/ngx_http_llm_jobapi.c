
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * Jobs seen from HTTP: resuming a stream with Last-Event-ID, the job
 * location (llm_job: GET as JSON or as a stream, DELETE to cancel), the
 * owner binding, and the JSON forms of a job (background and blocking
 * answers).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_format.h"
#include "ngx_http_llm_pipeline.h"
#include "ngx_http_llm_store.h"


typedef enum {
    NGX_HTTP_LLM_WANT_STREAM = 0,
    NGX_HTTP_LLM_WANT_JSON,
    NGX_HTTP_LLM_WANT_CANCEL,
    NGX_HTTP_LLM_WANT_CONTINUE,
    NGX_HTTP_LLM_WANT_PAUSE,
    NGX_HTTP_LLM_WANT_RESUME
} ngx_http_llm_want_e;


/* a store lookup in flight for a request that may leave meanwhile */
typedef struct {
    ngx_http_request_t            *request;
    ngx_pool_cleanup_t            *cln;
    ngx_uint_t                     from;
    ngx_http_llm_want_e            want;
    ngx_http_llm_store_t          *store;
    u_char                         id[NGX_HTTP_LLM_JOB_ID_LEN + 1];
    ngx_event_t                    again;       /* another's job: 404 later */
} ngx_http_llm_lookup_t;


static ngx_int_t ngx_http_llm_lookup(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_str_t *id, ngx_uint_t from,
    ngx_http_llm_want_e want);
static void ngx_http_llm_looked_up(void *data, ngx_int_t rc,
    ngx_http_llm_job_t *job);
static void ngx_http_llm_lookup_again(ngx_event_t *ev);
static void ngx_http_llm_lookup_refused(void *data, ngx_int_t rc,
    ngx_http_llm_record_t *rec);
static void ngx_http_llm_lookup_cleanup(void *data);
static void ngx_http_llm_continue(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_job_t *job);
static ngx_int_t ngx_http_llm_run_from(ngx_http_request_t *r,
    ngx_http_llm_job_t *job, ngx_http_llm_run_t **run);
static ngx_int_t ngx_http_llm_takeover(ngx_http_llm_job_t *job);
static ngx_int_t ngx_http_llm_pause(ngx_http_request_t *r,
    ngx_http_llm_job_t *job, ngx_uint_t on);


/* a lookup is answered at once, from inside its caller */
static ngx_uint_t  ngx_http_llm_finding;


ngx_int_t
ngx_http_llm_job_handler(ngx_http_request_t *r)
{
    ngx_int_t                 rc;
    ngx_str_t                 id, last, msg, action;
    ngx_uint_t                from;
    ngx_table_elt_t          *h;
    ngx_http_llm_ctx_t       *ctx;
    ngx_http_llm_want_e       want;
    ngx_http_llm_loc_conf_t  *llcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_POST|NGX_HTTP_DELETE))) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Allow");
        ngx_str_set(&h->value, "GET, POST, DELETE");

        ngx_str_set(&msg, "use GET, POST or DELETE");
        return ngx_http_llm_send_json_error(r, NGX_HTTP_NOT_ALLOWED,
                                            "method_not_allowed", &msg);
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    if (ngx_http_complex_value(r, llcf->job, &id) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (!ngx_http_llm_valid_id(&id)) {
        ngx_str_set(&msg, "no such job");
        return ngx_http_llm_send_json_error(r, NGX_HTTP_NOT_FOUND,
                                            "job_not_found", &msg);
    }

    from = 0;

    if (r->method == NGX_HTTP_DELETE) {
        want = NGX_HTTP_LLM_WANT_CANCEL;

    } else if (r->method == NGX_HTTP_POST) {
        want = NGX_HTTP_LLM_WANT_CONTINUE;

        /* POST ?action=pause|resume|continue (the default) */

        if (ngx_http_arg(r, (u_char *) "action", 6, &action) == NGX_OK) {

            if (action.len == 5
                && ngx_strncmp(action.data, "pause", 5) == 0)
            {
                want = NGX_HTTP_LLM_WANT_PAUSE;

            } else if (action.len == 6
                       && ngx_strncmp(action.data, "resume", 6) == 0)
            {
                want = NGX_HTTP_LLM_WANT_RESUME;

            } else if (action.len != 8
                       || ngx_strncmp(action.data, "continue", 8) != 0)
            {
                ngx_str_set(&msg, "the action is one of pause, resume and "
                            "continue");
                return ngx_http_llm_send_json_error(r, NGX_HTTP_BAD_REQUEST,
                                                    "invalid_action", &msg);
            }
        }

    } else if (ngx_http_llm_asks_stream(r)) {
        want = NGX_HTTP_LLM_WANT_STREAM;

        /* a reconnecting EventSource says where it was */

        if (ngx_http_llm_last_event_id(r, &last, &from) == NGX_OK
            && (last.len != id.len
                || ngx_strncmp(last.data, id.data, id.len) != 0))
        {
            from = 0;
        }

    } else {
        want = NGX_HTTP_LLM_WANT_JSON;
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_llm_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->request = r;
    ngx_http_set_ctx(r, ctx, ngx_http_llm_module);

    r->main->count++;

    if (ngx_http_llm_lookup(r, ctx, &id, from, want) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
    }

    return NGX_DONE;
}


/* a stream that names a job: follow it from the event after "from" */

ngx_int_t
ngx_http_llm_resume(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_str_t *id, ngx_uint_t from)
{
    return ngx_http_llm_lookup(r, ctx, id, from, NGX_HTTP_LLM_WANT_STREAM);
}


static ngx_int_t
ngx_http_llm_lookup(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_str_t *id, ngx_uint_t from, ngx_http_llm_want_e want)
{
    u_char                    sid[NGX_HTTP_LLM_JOB_ID_LEN + 1];
    ngx_int_t                 rc;
    ngx_pool_cleanup_t       *cln;
    ngx_http_llm_lookup_t    *lk;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    lk = ngx_calloc(sizeof(ngx_http_llm_lookup_t), r->connection->log);
    if (lk == NULL) {
        return NGX_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        ngx_free(lk);
        return NGX_ERROR;
    }

    lk->request = r;
    lk->cln = cln;
    lk->from = from;
    lk->want = want;

    cln->handler = ngx_http_llm_lookup_cleanup;
    cln->data = lk;

    if (ngx_http_llm_ctx_cleanup(r, ctx) != NGX_OK) {
        return NGX_ERROR;
    }

    /* notice a client that leaves while the store answers */
    r->read_event_handler = ngx_http_test_reading;
    ctx->waiting = 1;

    ngx_memcpy(sid, id->data, NGX_HTTP_LLM_JOB_ID_LEN);
    sid[NGX_HTTP_LLM_JOB_ID_LEN] = '\0';

    ngx_memcpy(lk->id, sid, NGX_HTTP_LLM_JOB_ID_LEN + 1);
    lk->store = llcf->store;

    /* a job in this worker is answered at once: inside the handler */
    ngx_http_llm_finding = 1;

    rc = ngx_http_llm_job_find(llcf->store, sid, from, ngx_http_llm_looked_up,
                               lk);

    ngx_http_llm_finding = 0;

    if (rc != NGX_OK) {
        /* no answer will come */
        cln->handler = NULL;
        ngx_free(lk);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_llm_lookup_again(ngx_event_t *ev)
{
    ngx_http_llm_lookup_t  *lk;

    lk = (ngx_http_llm_lookup_t *) ((u_char *) ev
                                    - offsetof(ngx_http_llm_lookup_t, again));

    if (lk->request == NULL
        || lk->store->ops->fetch(lk->store, lk->id, 0, 0, 0,
                                 ngx_http_llm_lookup_refused, lk)
           != NGX_OK)
    {
        ngx_http_llm_lookup_refused(lk, NGX_DECLINED, NULL);
    }
}


/* another's job: as unknown, whatever the store said this time */

static void
ngx_http_llm_lookup_refused(void *data, ngx_int_t rc,
    ngx_http_llm_record_t *rec)
{
    ngx_http_llm_lookup_t *lk = data;

    ngx_http_llm_looked_up(lk, NGX_DECLINED, NULL);
}


/* the request goes before the store answered: the answer frees it */

static void
ngx_http_llm_lookup_cleanup(void *data)
{
    ngx_http_llm_lookup_t *lk = data;

    lk->request = NULL;
}


static void
ngx_http_llm_looked_up(void *data, ngx_int_t rc, ngx_http_llm_job_t *job)
{
    ngx_http_llm_lookup_t *lk = data;

    u_char               owner[NGX_HTTP_LLM_OWNER_LEN];
    ngx_str_t            msg;
    ngx_int_t            orc;
    ngx_uint_t           inside;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;
    ngx_http_llm_ctx_t  *ctx;

    r = lk->request;

    if (r == NULL) {
        /* the request has gone */
        ngx_free(lk);
        return;
    }

    lk->cln->handler = NULL;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);
    ctx->waiting = 0;

    /*
     * Called from inside the handler, the request must not be closed
     * before the handler returns: nginx runs the posted requests (a
     * termination among them) after it.
     */
    inside = ngx_http_llm_finding;

    if (rc == NGX_ERROR) {
        ngx_str_set(&msg, "the job store cannot be read now");
        ngx_http_finalize_request(r,
                        ngx_http_llm_send_json_error(r,
                                  NGX_HTTP_SERVICE_UNAVAILABLE,
                                  "store_unavailable", &msg));
        goto done;
    }

    if (rc == NGX_OK && job->has_owner) {
        orc = ngx_http_llm_owner(r, owner);

        if (orc != NGX_OK
            || ngx_memcmp(owner, job->owner, NGX_HTTP_LLM_OWNER_LEN) != 0)
        {
            /*
             * The same answer as for an unknown job, and as late: a store
             * that writes later asks again for an unknown id after its
             * window (job.c), and so it does here, so that the time of
             * the answer does not tell that the job exists.
             */

            if (lk->store->window) {
                lk->cln->handler = ngx_http_llm_lookup_cleanup;
                ctx->waiting = 1;

                lk->again.data = c;
                lk->again.log = c->log;
                lk->again.handler = ngx_http_llm_lookup_again;
                lk->again.cancelable = 1;
                ngx_add_timer(&lk->again, lk->store->window);
                return;
            }

            rc = NGX_DECLINED;
        }
    }

    if (rc == NGX_DECLINED) {
        ngx_str_set(&msg, "no such job, or it has expired");
        ngx_http_finalize_request(r,
                        ngx_http_llm_send_json_error(r, NGX_HTTP_NOT_FOUND,
                                                     "job_not_found", &msg));
        goto done;
    }

    ngx_memcpy(ctx->id, job->id, NGX_HTTP_LLM_JOB_ID_LEN + 1);

    switch (lk->want) {

    case NGX_HTTP_LLM_WANT_CANCEL:
        ngx_http_llm_job_hold(job);
        ngx_http_llm_job_cancel(job);

        /* a job run by another worker stops when that worker sees it */
        ngx_http_finalize_request(r,
                        ngx_http_llm_send_job(r, job,
                                  job->state == NGX_HTTP_LLM_RUNNING
                                  ? NGX_HTTP_ACCEPTED : NGX_HTTP_OK));
        ngx_http_llm_job_unhold(job);
        break;

    case NGX_HTTP_LLM_WANT_JSON:
        ngx_http_finalize_request(r, ngx_http_llm_send_job(r, job,
                                                           NGX_HTTP_OK));
        break;

    case NGX_HTTP_LLM_WANT_PAUSE:
    case NGX_HTTP_LLM_WANT_RESUME:
        ngx_http_llm_job_hold(job);
        ngx_http_finalize_request(r, ngx_http_llm_pause(r, job, lk->want
                                               == NGX_HTTP_LLM_WANT_PAUSE));
        ngx_http_llm_job_unhold(job);
        break;

    case NGX_HTTP_LLM_WANT_CONTINUE:
        ngx_http_llm_continue(r, ctx, job);
        break;

    default: /* NGX_HTTP_LLM_WANT_STREAM */

        if (job->state != NGX_HTTP_LLM_RUNNING && lk->from >= job->nevents) {
            /*
             * An EventSource that was not closed after the final event
             * reconnects: 204 tells it to stop (the SSE specification).
             */
            r->header_only = 1;
            r->headers_out.status = NGX_HTTP_NO_CONTENT;
            r->headers_out.content_length_n = 0;
            ngx_http_finalize_request(r, ngx_http_send_header(r));
            break;
        }

        /*
         * Not bounded by what this copy has: a job followed from another
         * worker may not have the events the client saw yet (the store's
         * flush interval), and they must not be sent again when they come.
         */
        ctx->sent = lk->from;
        ctx->wake = ngx_http_llm_sse_wake;
        ngx_http_llm_metrics_resume(ctx);
        ngx_http_llm_job_subscribe(job, ctx);

        /*
         * A follower can take a pipeline's job over, also from a copy
         * read from a resuming client's event on: the store keeps the
         * events before it, and only a reader from there on is given
         * this copy (job_local()).
         */
        if (job->mirror && job->state_version) {
            job->takeover = ngx_http_llm_takeover;
        }

        rc = ngx_http_llm_sse_start(r, ctx);

        if (rc != NGX_OK) {
            ngx_http_finalize_request(r, rc);
        }
    }

done:

    ngx_free(lk);

    if (!inside) {
        ngx_http_run_posted_requests(c);
    }
}


/*
 * What a pipeline's run takes from a location (the one that starts it,
 * or the job location that continues it), evaluated for this request.
 */

ngx_int_t
ngx_http_llm_run_conf(ngx_http_request_t *r, ngx_http_llm_loc_conf_t *llcf,
    ngx_http_llm_run_conf_t *rc)
{
    ngx_uint_t                 i;
    ngx_str_t                 *out[4];
    ngx_http_complex_value_t  *cv[4];

    ngx_memzero(rc, sizeof(ngx_http_llm_run_conf_t));

    cv[0] = llcf->pass;
    cv[1] = llcf->model;
    cv[2] = llcf->system;
    cv[3] = llcf->api_key;
    out[0] = &rc->pass;
    out[1] = &rc->model;
    out[2] = &rc->system;
    out[3] = &rc->api_key;

    for (i = 0; i < 4; i++) {
        if (cv[i] && ngx_http_complex_value(r, cv[i], out[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    rc->pool = llcf->thread_pool;
    rc->provider = llcf->provider;
    rc->max_tokens = llcf->max_tokens;
    rc->connect_timeout = llcf->connect_timeout;
    rc->first_token_timeout = llcf->first_token_timeout;
    rc->idle_timeout = llcf->idle_timeout;
    rc->timeout = llcf->timeout;
    rc->ssl_verify = llcf->ssl_verify;

    return NGX_OK;
}


/*
 * A new job answers its request: 202 for one in the background, the
 * whole job as JSON when it is over for a blocking client, else the
 * stream.
 */

void
ngx_http_llm_answer(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_job_t *job)
{
    ngx_int_t                 rc;
    ngx_uint_t                blocking;
    ngx_http_llm_loc_conf_t  *llcf;

    ngx_memcpy(ctx->id, job->id, NGX_HTTP_LLM_JOB_ID_LEN + 1);

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "llm: job %s started%s", job->id,
                  job->background ? " in the background" : "");

    if (job->background) {
        ngx_http_finalize_request(r, ngx_http_llm_send_accepted(r, job));
        return;
    }

    ngx_http_llm_job_subscribe(job, ctx);

    /* the location's choice, else the request's (Accept, or "stream") */

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    if (llcf->answer == NGX_HTTP_LLM_ANSWER_AUTO) {
        blocking = ctx->openai ? !ctx->stream
                               : !ngx_http_llm_accepts_stream(r);

    } else {
        blocking = (llcf->answer == NGX_HTTP_LLM_ANSWER_JSON);
    }

    if (blocking) {
        ctx->wake = ngx_http_llm_wait_wake;
        r->read_event_handler = ngx_http_test_reading;

        /* a pipeline may have ended before it was answered */
        ngx_http_llm_wait_wake(ctx);
        return;
    }

    ctx->wake = ngx_http_llm_sse_wake;

    rc = ngx_http_llm_sse_start(r, ctx);

    if (rc != NGX_OK) {
        ngx_http_finalize_request(r, rc);
    }
}


/*
 * POST ?action=pause|resume: 200 with the job when it is so, 202 while
 * the request waits for the running step or for the worker running it.
 */

static ngx_int_t
ngx_http_llm_pause(ngx_http_request_t *r, ngx_http_llm_job_t *job,
    ngx_uint_t on)
{
    ngx_int_t  rc;
    ngx_str_t  msg;

    rc = ngx_http_llm_job_pause(job, on);

    if (rc == NGX_DECLINED) {
        if (job->state == NGX_HTTP_LLM_RUNNING) {
            ngx_str_set(&msg, "only a pipeline's job can be paused");

        } else {
            ngx_str_set(&msg, "the job is over");
        }

        return ngx_http_llm_send_json_error(r, NGX_HTTP_CONFLICT,
                                            "job_not_pausable", &msg);
    }

    if (rc != NGX_OK) {
        ngx_str_set(&msg, "the job store cannot be written now");
        return ngx_http_llm_send_json_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                            "store_unavailable", &msg);
    }

    return ngx_http_llm_send_job(r, job,
                                 (job->mirror || on != job->paused)
                                 ? NGX_HTTP_ACCEPTED : NGX_HTTP_OK);
}


/* what a new job takes from its request's location */

void
ngx_http_llm_job_opts(ngx_http_request_t *r, ngx_http_llm_job_opts_t *opts)
{
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    ngx_memzero(opts, sizeof(ngx_http_llm_job_opts_t));

    opts->pool = llcf->thread_pool;
    opts->store = llcf->store;
    opts->grace = llcf->grace;
    opts->pause_timeout = llcf->pause_timeout;
    opts->max_duration = llcf->max_duration;
    opts->max_events = llcf->max_events;
    opts->max_text = llcf->max_text;
    opts->label = ngx_http_llm_metrics_label(llcf);
}


/*
 * A run that goes on from a pipeline job's state, its first unfinished
 * step, with what the request's location says for what the steps do not
 * set; the pipeline is found by name in the configuration in force.
 * NGX_DECLINED: it is not configured here; "run" is NULL when out of
 * memory.
 */

static ngx_int_t
ngx_http_llm_run_from(ngx_http_request_t *r, ngx_http_llm_job_t *job,
    ngx_http_llm_run_t **run)
{
    json_t                         *state;
    ngx_str_t                       name;
    ngx_uint_t                      i;
    ngx_http_llm_run_conf_t         rc;
    ngx_http_llm_loc_conf_t        *llcf;
    ngx_http_llm_main_conf_t       *lmcf;
    ngx_http_llm_pipeline_conf_t  **pl, *conf;

    *run = NULL;

    state = json_loadb((char *) job->pipeline_state, job->pipeline_state_len,
                       0, NULL);

    name.data = (u_char *) json_string_value(json_object_get(state,
                                                             "pipeline"));
    name.len = name.data ? ngx_strlen(name.data) : 0;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llm_module);
    conf = NULL;
    pl = lmcf->pipelines ? lmcf->pipelines->elts : NULL;

    for (i = 0; pl && i < lmcf->pipelines->nelts; i++) {
        if (pl[i]->name.len == name.len
            && ngx_strncmp(pl[i]->name.data, name.data, name.len) == 0)
        {
            conf = pl[i];
            break;
        }
    }

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    if (conf == NULL || ngx_http_llm_run_conf(r, llcf, &rc) != NGX_OK) {
        json_decref(state);
        return NGX_DECLINED;
    }

    *run = ngx_http_llm_pipeline_continue(conf, &rc, state, ngx_cycle->log);

    json_decref(state);

    return NGX_OK;
}


/*
 * A pipeline's job followed here whose worker is gone (job.c finds that
 * out and claims it in the store): it goes on here, with the settings of
 * the location of its first follower, as a continue would, but as the
 * same job: the same id, its events going on after a gap.
 */

static ngx_int_t
ngx_http_llm_takeover(ngx_http_llm_job_t *job)
{
    ngx_http_llm_ctx_t        *ctx;
    ngx_http_llm_run_t        *run;
    ngx_http_request_t        *r;
    ngx_http_llm_job_opts_t    opts;

    ctx = ngx_queue_data(ngx_queue_head(&job->subscribers),
                         ngx_http_llm_ctx_t, queue);
    r = ctx->request;

    if (ngx_http_llm_run_from(r, job, &run) != NGX_OK || run == NULL) {
        return NGX_ERROR;
    }

    ngx_http_llm_job_opts(r, &opts);

    return ngx_http_llm_job_adopt_run(job, run, &opts);
}


/*
 * POST on a failed or cancelled pipeline's job: a new job that goes on
 * from its first unfinished step, reusing every stored output, with what
 * this location says for what the steps do not set.
 */

static void
ngx_http_llm_continue(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_job_t *job)
{
    ngx_int_t                       lrc;
    ngx_str_t                       msg;
    ngx_msec_t                      retry_after;
    ngx_http_llm_run_t             *run;
    ngx_http_llm_job_t             *next;
    ngx_http_llm_job_opts_t         opts;
    ngx_http_llm_loc_conf_t        *llcf;

    if (job->pipeline_state == NULL
        || (job->state != NGX_HTTP_LLM_FAILED
            && job->state != NGX_HTTP_LLM_CANCELLED))
    {
        ngx_str_set(&msg, "only a failed or cancelled pipeline can be "
                          "continued");
        ngx_http_finalize_request(r,
                        ngx_http_llm_send_json_error(r, NGX_HTTP_CONFLICT,
                                                     "cannot_continue",
                                                     &msg));
        return;
    }

    if (ngx_http_llm_run_from(r, job, &run) != NGX_OK) {
        ngx_str_set(&msg, "the job's pipeline is not configured here");
        ngx_http_finalize_request(r,
                        ngx_http_llm_send_json_error(r, NGX_HTTP_CONFLICT,
                                                     "cannot_continue",
                                                     &msg));
        return;
    }

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    ngx_http_llm_job_opts(r, &opts);

    opts.owner = job->has_owner ? job->owner : NULL;
    opts.background = ngx_http_llm_prefers_async(r);

    /* a continued job counts like a new one */

    if (run) {
        lrc = ngx_http_llm_limit_acquire(r, llcf->limits, &opts.limits,
                                         &opts.nlimits, &retry_after);

        if (lrc != NGX_OK) {
            ngx_http_llm_pipeline_free(run);
            ngx_http_finalize_request(r, lrc == NGX_BUSY
                        ? ngx_http_llm_limit_refuse(r, retry_after)
                        : NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }
    }

    next = run ? ngx_http_llm_job_start_run(run, &opts, r->connection->log)
               : NULL;

    if (next == NULL) {
        ngx_str_set(&msg, "cannot start the generation");
        ngx_http_finalize_request(r,
                        ngx_http_llm_send_json_error(r,
                                  NGX_HTTP_SERVICE_UNAVAILABLE,
                                  "unavailable", &msg));
        return;
    }

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "llm: job %s continues job %s", next->id, job->id);

    ngx_http_llm_answer(r, ctx, next);
}


/* a blocking request: answer once the job is over */

void
ngx_http_llm_wait_wake(ngx_http_llm_ctx_t *ctx)
{
    ngx_int_t               rc;
    ngx_uint_t              status;
    ngx_http_llm_job_t     *job;
    ngx_http_llm_fmt_ctx_t  fc;

    job = ctx->job;

    if (job->state == NGX_HTTP_LLM_RUNNING || job->held || ctx->finished) {
        return;
    }

    ctx->finished = 1;

    status = (job->state == NGX_HTTP_LLM_COMPLETED) ? NGX_HTTP_OK
                                                    : NGX_HTTP_BAD_GATEWAY;

    /* the app's own shape, when the location's format gives one */

    ngx_memzero(&fc, sizeof(ngx_http_llm_fmt_ctx_t));
    fc.request = ctx->request;
    fc.job = job;
    fc.first = job->nevents - 1;
    fc.last = job->nevents - 1;
    fc.status = status;

    rc = ngx_http_llm_send_formatted(ctx->request, status,
                                     status == NGX_HTTP_OK
                                     ? NGX_HTTP_LLM_K_RESPONSE
                                     : NGX_HTTP_LLM_K_REFUSAL,
                                     &fc);

    if (rc == NGX_DECLINED) {
        rc = ngx_http_llm_send_job(ctx->request, job, status);
    }

    ngx_http_finalize_request(ctx->request, rc);
}


ngx_int_t
ngx_http_llm_send_job(ngx_http_request_t *r, ngx_http_llm_job_t *job,
    ngx_uint_t status)
{
    json_t  *o, *usage, *st, *v;

    static const char  *states[] = {
        "running", "completed", "failed", "cancelled"
    };

    o = json_pack("{ssssss%sIsIsI}",
                  "job", (char *) job->id,
                  "state", (job->state == NGX_HTTP_LLM_RUNNING
                            && job->paused) ? "paused" : states[job->state],
                  "text", job->text ? (char *) job->text : "", job->text_len,
                  "created", (json_int_t) job->created,
                  "updated", (json_int_t) job->updated,
                  "events", (json_int_t) job->nevents);
    if (o == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (job->finished) {
        json_object_set_new(o, "finished", json_integer(job->finished));
    }

    if (job->state == NGX_HTTP_LLM_RUNNING && (job->pause || job->paused)) {
        /* asked for, and while it waits for the running step: pausing */
        json_object_set_new(o, "pause", json_true());
    }

    if (job->outcome.finish_len) {
        json_object_set_new(o, "finish_reason",
                            json_stringn((char *) job->outcome.finish,
                                         job->outcome.finish_len));
    }

    if (job->outcome.input_tokens >= 0 || job->outcome.output_tokens >= 0) {
        usage = json_object();

        if (job->outcome.input_tokens >= 0) {
            json_object_set_new(usage, "input_tokens",
                                json_integer(job->outcome.input_tokens));
        }

        if (job->outcome.output_tokens >= 0) {
            json_object_set_new(usage, "output_tokens",
                                json_integer(job->outcome.output_tokens));
        }

        if (job->outcome.input_tokens >= 0 && job->outcome.output_tokens >= 0) {
            json_object_set_new(usage, "total_tokens",
                                json_integer(job->outcome.input_tokens
                                             + job->outcome.output_tokens));
        }

        json_object_set_new(o, "usage", usage);
    }

    /* a pipeline's job: its name and its steps, from the state it keeps */

    if (job->pipeline_state) {
        st = json_loadb((char *) job->pipeline_state, job->pipeline_state_len,
                        0, NULL);

        v = json_object_get(st, "pipeline");
        if (json_is_string(v)) {
            json_object_set(o, "pipeline", v);
        }

        v = json_object_get(st, "steps");
        if (json_is_array(v)) {
            json_object_set(o, "steps", v);
        }

        json_decref(st);
    }

    if (job->outcome.code_len) {
        json_object_set_new(o, "error",
                            json_pack("{ss%ss%}",
                                      "code", (char *) job->outcome.code,
                                      job->outcome.code_len,
                                      "message",
                                      job->outcome.message
                                      ? (char *) job->outcome.message : "",
                                      job->outcome.message_len));
    }

    return ngx_http_llm_send_json(r, status, o);
}


/* a background job: 202 with its id and, if configured, its URL */

ngx_int_t
ngx_http_llm_send_accepted(ngx_http_request_t *r, ngx_http_llm_job_t *job)
{
    json_t                   *o;
    ngx_str_t                 url;
    ngx_table_elt_t          *h;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    o = json_pack("{ssss}", "job", (char *) job->id, "state", "running");
    if (o == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (llcf->job_url) {
        if (ngx_http_complex_value(r, llcf->job_url, &url) != NGX_OK) {
            json_decref(o);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        json_object_set_new(o, "url", json_stringn((char *) url.data,
                                                    url.len));

        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            json_decref(o);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Location");
        h->value = url;
    }

    return ngx_http_llm_send_json(r, NGX_HTTP_ACCEPTED, o);
}


/* $llm_job_id: the job this request started or follows */

ngx_int_t
ngx_http_llm_job_id_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL || ctx->id[0] == '\0') {
        v->not_found = 1;
        return NGX_OK;
    }

    v->data = ctx->id;
    v->len = NGX_HTTP_LLM_JOB_ID_LEN;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}
