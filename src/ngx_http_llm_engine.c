
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * The engine: per worker and thread pool, one long-lived task in the pool
 * drives every upstream transfer with a single libcurl multi handle, so
 * the number of streams is not bound by the number of threads.  It runs
 * libcurl's socket interface on an epoll set of its own: the work per
 * wakeup follows the sockets that are ready, not the number of transfers.
 * Parsed output goes back to the event loop through the worker's own
 * channel (ngx_notify() belongs to the thread pools); the transfers live
 * in ngx_http_llm_xfer.c.  The task returns when it has nothing to do and
 * is posted again on the next submit, so reload and exit never wait for
 * it.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <sys/epoll.h>
#include <sys/eventfd.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_engine.h"


#define NGX_HTTP_LLM_POLL_MS       250
#define NGX_HTTP_LLM_SCAN_MS       50
#define NGX_HTTP_LLM_LINGER_MS     2000
#define NGX_HTTP_LLM_EVENTS        256
#define NGX_HTTP_LLM_WAKE_AFTER    16     /* outputs a wake may wait for */
#define NGX_HTTP_LLM_WAKE_MS       1      /* and milliseconds */


static ngx_http_llm_engine_t *ngx_http_llm_engine_get(ngx_thread_pool_t *pool,
    ngx_log_t *log);
static ngx_int_t ngx_http_llm_engine_post(ngx_http_llm_engine_t *e);
static void ngx_http_llm_engine_thread(void *data, ngx_log_t *log);
static void ngx_http_llm_engine_completed(ngx_event_t *ev);
static void ngx_http_llm_engine_take(ngx_http_llm_engine_t *e);
static void ngx_http_llm_engine_done(ngx_http_llm_engine_t *e);
static void ngx_http_llm_engine_scan(ngx_http_llm_engine_t *e,
    ngx_msec_t now);
static void ngx_http_llm_engine_abort_all(ngx_http_llm_engine_t *e,
    const char *code, const char *msg);
static void ngx_http_llm_engine_flush(ngx_http_llm_engine_t *e);
static void ngx_http_llm_engine_wake(ngx_http_llm_engine_t *e);
static int ngx_http_llm_engine_socket(CURL *easy, curl_socket_t s, int what,
    void *data, void *socketp);
static int ngx_http_llm_engine_timer(CURLM *multi, long ms, void *data);

static ngx_http_llm_engine_t  *ngx_http_llm_engines;


ngx_int_t
ngx_http_llm_engine_init_process(ngx_cycle_t *cycle)
{
    if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "llm: curl_global_init() failed");
        return NGX_ERROR;
    }

    return NGX_OK;
}


void
ngx_http_llm_engine_exit_process(ngx_cycle_t *cycle)
{
    ngx_queue_t            *q;
    ngx_http_llm_engine_t  *e, *next;

    /*
     * The thread pools have been joined: every engine task has returned.
     * Transfers still referenced (by their callers, or by output nobody
     * drained) are freed here; their callers do not touch them at exit.
     */

    for (e = ngx_http_llm_engines; e; e = next) {
        next = e->next;

        while (!ngx_queue_empty(&e->xfers)) {
            q = ngx_queue_head(&e->xfers);
            ngx_queue_remove(q);
            ngx_http_llm_xfer_free(ngx_queue_data(q, ngx_http_llm_xfer_t,
                                                  link));
        }

        curl_multi_cleanup(e->multi);
        (void) close(e->epfd);
        (void) close(e->wakefd);
        ngx_free(e);
    }

    ngx_http_llm_engines = NULL;

    curl_global_cleanup();
}


/*
 * Start a transfer; takes the spec.  The handler gets its output on the
 * loop, always ending with one output marked done (also when the transfer
 * cannot start), unless the caller let go of the handle before.
 */

ngx_http_llm_xfer_t *
ngx_http_llm_engine_submit(ngx_thread_pool_t *pool, ngx_http_llm_spec_t *spec,
    ngx_http_llm_output_pt handler, void *data, ngx_log_t *log)
{
    ngx_uint_t               start;
    ngx_http_llm_xfer_t     *x;
    ngx_http_llm_engine_t   *e;
    ngx_http_llm_channel_t  *ch;

    ch = &ngx_http_llm_channel;

    e = ngx_http_llm_engine_get(pool, log);
    if (e == NULL) {
        return NULL;
    }

    x = ngx_http_llm_xfer_create(e, spec, handler, data, log);
    if (x == NULL) {
        return NULL;
    }

    (void) ngx_thread_mutex_lock(&ch->mutex, log);

    ngx_queue_insert_tail(&e->xfers, &x->link);

    x->next_submit = e->submitted;
    e->submitted = x;

    start = !e->running;
    e->running = 1;

    (void) ngx_thread_mutex_unlock(&ch->mutex, log);

    if (!start) {
        ngx_http_llm_engine_wake(e);
        return x;
    }

    if (e->posted) {
        /* the previous run has returned, its completion is on its way */
        e->repost = 1;
        return x;
    }

    if (ngx_http_llm_engine_post(e) != NGX_OK) {
        /* the caller still gets its final output, through the channel */
        ngx_http_llm_engine_abort_all(e, NGX_HTTP_LLM_E_INTERNAL,
                                      "the thread pool is overloaded");
    }

    return x;
}


/*
 * The caller lets go of a transfer it no longer wants: cancelled if still
 * running, freed when the engine lets go too; its handler is not called
 * again.
 */

void
ngx_http_llm_engine_release(ngx_http_llm_xfer_t *x)
{
    ngx_http_llm_engine_t   *e;
    ngx_http_llm_channel_t  *ch;

    ch = &ngx_http_llm_channel;
    e = x->engine;

    x->handler = NULL;

    (void) ngx_thread_mutex_lock(&ch->mutex, ch->log);

    if (!x->cancel && !x->out.done) {
        x->cancel = 1;
        x->refs++;
        x->next_cancel = e->cancelled;
        e->cancelled = x;
    }

    (void) ngx_thread_mutex_unlock(&ch->mutex, ch->log);

    ngx_http_llm_engine_wake(e);

    ngx_http_llm_xfer_release(x);
}


static ngx_http_llm_engine_t *
ngx_http_llm_engine_get(ngx_thread_pool_t *pool, ngx_log_t *log)
{
    struct epoll_event      ev;
    ngx_http_llm_engine_t  *e;

    for (e = ngx_http_llm_engines; e; e = e->next) {
        if (e->pool == pool) {
            return e;
        }
    }

    e = ngx_calloc(sizeof(ngx_http_llm_engine_t), log);
    if (e == NULL) {
        return NULL;
    }

    e->task = ngx_thread_task_alloc(ngx_cycle->pool, 0);
    if (e->task == NULL) {
        ngx_free(e);
        return NULL;
    }

    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    e->wakefd = eventfd(0, EFD_NONBLOCK|EFD_CLOEXEC);
    e->multi = curl_multi_init();

    ev.events = EPOLLIN;
    ev.data.fd = e->wakefd;

    if (e->epfd == -1 || e->wakefd == -1 || e->multi == NULL
        || epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->wakefd, &ev) == -1)
    {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      "llm: cannot set up the engine");

        if (e->multi) {
            curl_multi_cleanup(e->multi);
        }

        if (e->epfd != -1) {
            (void) close(e->epfd);
        }

        if (e->wakefd != -1) {
            (void) close(e->wakefd);
        }

        ngx_free(e);
        return NULL;
    }

    curl_multi_setopt(e->multi, CURLMOPT_SOCKETFUNCTION,
                      ngx_http_llm_engine_socket);
    curl_multi_setopt(e->multi, CURLMOPT_SOCKETDATA, e);
    curl_multi_setopt(e->multi, CURLMOPT_TIMERFUNCTION,
                      ngx_http_llm_engine_timer);
    curl_multi_setopt(e->multi, CURLMOPT_TIMERDATA, e);

    e->pool = pool;
    e->task->ctx = e;
    e->task->handler = ngx_http_llm_engine_thread;
    e->task->event.handler = ngx_http_llm_engine_completed;
    e->task->event.data = e;
    ngx_queue_init(&e->active);
    ngx_queue_init(&e->xfers);

    e->next = ngx_http_llm_engines;
    ngx_http_llm_engines = e;

    return e;
}


static ngx_int_t
ngx_http_llm_engine_post(ngx_http_llm_engine_t *e)
{
    if (ngx_thread_task_post(e->pool, e->task) != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, ngx_http_llm_channel.log, 0,
                      "llm: cannot start the engine: thread pool queue "
                      "is full");
        return NGX_ERROR;
    }

    e->posted = 1;

    return NGX_OK;
}


/* event loop: the engine task has returned */

static void
ngx_http_llm_engine_completed(ngx_event_t *ev)
{
    ngx_http_llm_engine_t  *e = ev->data;

    e->posted = 0;

    if (!e->repost) {
        return;
    }

    e->repost = 0;

    if (ngx_http_llm_engine_post(e) != NGX_OK) {
        ngx_http_llm_engine_abort_all(e, NGX_HTTP_LLM_E_INTERNAL,
                                      "the thread pool is overloaded");
    }
}


/*
 * When the engine cannot run (on the loop) or must stop (on its thread):
 * fail every transfer it has or that waits for it.
 */

static void
ngx_http_llm_engine_abort_all(ngx_http_llm_engine_t *e, const char *code,
    const char *msg)
{
    ngx_queue_t             *q;
    ngx_http_llm_xfer_t     *x, *next, *can;
    ngx_http_llm_channel_t  *ch;

    ch = &ngx_http_llm_channel;

    while (!ngx_queue_empty(&e->active)) {
        q = ngx_queue_head(&e->active);
        x = ngx_queue_data(q, ngx_http_llm_xfer_t, active);
        ngx_http_llm_sink_fail_str(x, code, msg);
        ngx_http_llm_xfer_finish(x, CURLE_OK);
    }

    (void) ngx_thread_mutex_lock(&ch->mutex, ch->log);
    x = e->submitted;
    can = e->cancelled;
    e->submitted = NULL;
    e->cancelled = NULL;
    e->running = 0;
    (void) ngx_thread_mutex_unlock(&ch->mutex, ch->log);

    for ( /* void */ ; x; x = next) {
        next = x->next_submit;
        ngx_http_llm_sink_fail_str(x, code, msg);
        ngx_http_llm_xfer_finish(x, CURLE_OK);
    }

    /* the cancel list's references: those transfers are finished above */

    for (x = can; x; x = next) {
        next = x->next_cancel;
        ngx_http_llm_xfer_release(x);
    }
}


/* engine thread */

static void
ngx_http_llm_engine_thread(void *data, ngx_log_t *log)
{
    ngx_http_llm_engine_t *e = data;

    int                      i, n, running, pending, flags;
    uint64_t                 count;
    ngx_msec_t               now, last_scan, idle_since, wait;
    struct epoll_event       events[NGX_HTTP_LLM_EVENTS];
    ngx_http_llm_channel_t  *ch;

    ch = &ngx_http_llm_channel;
    last_scan = 0;
    idle_since = ngx_http_llm_engine_now();
    e->batch = 1;

    for ( ;; ) {

        ngx_http_llm_engine_take(e);

        if (ngx_terminate || ngx_quit || ngx_exiting) {
            ngx_http_llm_engine_abort_all(e, NGX_HTTP_LLM_E_SHUTDOWN,
                                          "the server is shutting down");
            break;
        }

        now = ngx_http_llm_engine_now();

        /* exit flags and timeouts are checked at least this often */
        wait = ngx_queue_empty(&e->active) ? NGX_HTTP_LLM_POLL_MS
                                           : NGX_HTTP_LLM_SCAN_MS;

        if (e->deadline) {
            wait = (e->deadline > now) ? ngx_min(wait, e->deadline - now) : 0;
        }

        ngx_http_llm_engine_flush(e);

        n = epoll_wait(e->epfd, events, NGX_HTTP_LLM_EVENTS, (int) wait);

        for (i = 0; i < n; i++) {

            if (events[i].data.fd == e->wakefd) {
                (void) read(e->wakefd, &count, sizeof(count));
                continue;
            }

            flags = 0;

            if (events[i].events & EPOLLIN) {
                flags |= CURL_CSELECT_IN;
            }

            if (events[i].events & EPOLLOUT) {
                flags |= CURL_CSELECT_OUT;
            }

            if (events[i].events & (EPOLLERR|EPOLLHUP)) {
                flags |= CURL_CSELECT_ERR;
            }

            (void) curl_multi_socket_action(e->multi, events[i].data.fd,
                                            flags, &running);

            /* a socket may take long (a TLS handshake): an owed wake goes */

            if (e->wake && ngx_http_llm_engine_now() - e->wake_since
                           >= NGX_HTTP_LLM_WAKE_MS)
            {
                ngx_http_llm_engine_flush(e);
            }
        }

        now = ngx_http_llm_engine_now();

        if (e->deadline && now >= e->deadline) {
            e->deadline = 0;
            (void) curl_multi_socket_action(e->multi, CURL_SOCKET_TIMEOUT, 0,
                                            &running);
        }

        ngx_http_llm_engine_done(e);

        if (now - last_scan >= NGX_HTTP_LLM_SCAN_MS) {
            /* a clock read after every callback: no read is newer */
            now = ngx_http_llm_engine_now();
            ngx_http_llm_engine_scan(e, now);
            last_scan = now;
        }

        if (!ngx_queue_empty(&e->active)) {
            idle_since = now;
            continue;
        }

        if (now - idle_since < NGX_HTTP_LLM_LINGER_MS) {
            continue;
        }

        (void) ngx_thread_mutex_lock(&ch->mutex, log);

        pending = (e->submitted != NULL);
        if (!pending) {
            e->running = 0;
        }

        (void) ngx_thread_mutex_unlock(&ch->mutex, log);

        if (!pending) {
            break;
        }
    }

    ngx_http_llm_engine_flush(e);
    e->batch = 0;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, log, 0, "llm engine: idle, returns");
}


/*
 * Engine thread: output was queued, and the loop must be woken for it if
 * "wake".  The wake waits for the end of the pass, for a few more outputs
 * or for a millisecond, whichever comes first: the first output of a long
 * pass is not held for all of it, nor is what other threads queue on the
 * channel meanwhile (their items wake nobody while this wake is owed).
 */

void
ngx_http_llm_engine_defer(ngx_http_llm_engine_t *e, ngx_uint_t wake)
{
    if (wake && !e->wake) {
        e->wake = 1;
        e->wake_since = ngx_http_llm_engine_now();
    }

    if (e->wake && ++e->deferred >= NGX_HTTP_LLM_WAKE_AFTER) {
        ngx_http_llm_engine_flush(e);
    }
}


/* engine thread: wake the loop for the output of the pass just done */

static void
ngx_http_llm_engine_flush(ngx_http_llm_engine_t *e)
{
    if (e->wake) {
        e->wake = 0;
        e->deferred = 0;
        ngx_http_llm_channel_wake();
    }
}


/* libcurl tells which sockets to watch, and for what */

static int
ngx_http_llm_engine_socket(CURL *easy, curl_socket_t s, int what, void *data,
    void *socketp)
{
    ngx_http_llm_engine_t *e = data;

    int                 op;
    struct epoll_event  ev;

    if (what == CURL_POLL_REMOVE) {
        (void) epoll_ctl(e->epfd, EPOLL_CTL_DEL, s, NULL);
        return 0;
    }

    ev.events = 0;
    ev.data.fd = s;

    if (what & CURL_POLL_IN) {
        ev.events |= EPOLLIN;
    }

    if (what & CURL_POLL_OUT) {
        ev.events |= EPOLLOUT;
    }

    /* a socket that libcurl closed and opened again is new to it only */

    op = (socketp == NULL) ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;

    if (epoll_ctl(e->epfd, op, s, &ev) == -1) {
        op = (op == EPOLL_CTL_ADD) ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;

        if (epoll_ctl(e->epfd, op, s, &ev) == -1) {
            return -1;
        }
    }

    curl_multi_assign(e->multi, s, e);

    return 0;
}


static int
ngx_http_llm_engine_timer(CURLM *multi, long ms, void *data)
{
    ngx_http_llm_engine_t *e = data;

    /* the monotonic clock is never 0 ms: 0 can mean "no timer" */
    e->deadline = (ms < 0) ? 0 : ngx_http_llm_engine_now() + (ngx_msec_t) ms;

    return 0;
}


/* any thread: the engine has new work */

static void
ngx_http_llm_engine_wake(ngx_http_llm_engine_t *e)
{
    uint64_t  one;

    one = 1;

    /* a full counter still wakes the engine: the result does not matter */
    (void) write(e->wakefd, &one, sizeof(one));
}


/* engine thread: pick up new and cancelled transfers */

static void
ngx_http_llm_engine_take(ngx_http_llm_engine_t *e)
{
    ngx_http_llm_xfer_t     *sub, *can, *x, *next, *rev;
    ngx_http_llm_channel_t  *ch;

    ch = &ngx_http_llm_channel;

    (void) ngx_thread_mutex_lock(&ch->mutex, ch->log);
    sub = e->submitted;
    can = e->cancelled;
    e->submitted = NULL;
    e->cancelled = NULL;
    (void) ngx_thread_mutex_unlock(&ch->mutex, ch->log);

    /* submit order: the list is LIFO */
    rev = NULL;
    for (x = sub; x; x = next) {
        next = x->next_submit;
        x->next_submit = rev;
        rev = x;
    }

    for (x = rev; x; x = next) {
        next = x->next_submit;
        ngx_http_llm_xfer_start(e, x);
    }

    for (x = can; x; x = next) {
        next = x->next_cancel;

        /* no easy handle: it has finished on its own already */

        if (x->easy) {
            ngx_http_llm_sink_fail_str(x, NGX_HTTP_LLM_E_CANCELLED,
                                       "the generation was cancelled");
            ngx_http_llm_xfer_finish(x, CURLE_OK);
        }

        ngx_http_llm_xfer_release(x);
    }
}


/* engine thread: reap finished transfers */

static void
ngx_http_llm_engine_done(ngx_http_llm_engine_t *e)
{
    int                   left;
    CURLMsg              *msg;
    ngx_http_llm_xfer_t  *x;

    while ((msg = curl_multi_info_read(e->multi, &left)) != NULL) {

        if (msg->msg != CURLMSG_DONE) {
            continue;
        }

        x = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &x);

        if (x == NULL) {
            continue;
        }

        ngx_http_llm_xfer_finish(x, msg->data.result);
    }
}


static void
ngx_http_llm_engine_scan(ngx_http_llm_engine_t *e, ngx_msec_t now)
{
    ngx_queue_t          *q, *next;
    ngx_http_llm_xfer_t  *x;
    ngx_http_llm_spec_t  *s;

    for (q = ngx_queue_head(&e->active);
         q != ngx_queue_sentinel(&e->active);
         q = next)
    {
        next = ngx_queue_next(q);
        x = ngx_queue_data(q, ngx_http_llm_xfer_t, active);
        s = &x->spec;

        if (x->ended) {
            /* the end marker came, the end of the response has not */
            if (now - x->last_read < NGX_HTTP_LLM_SCAN_MS) {
                continue;
            }

        } else if (s->timeout && now - x->started >= s->timeout) {
            ngx_http_llm_sink_fail_str(x, NGX_HTTP_LLM_E_TIMEOUT,
                                       "the generation took too long "
                                       "(llm_timeout)");

        } else if (!x->got_text && s->first_token_timeout
                   && now - x->started >= s->first_token_timeout)
        {
            ngx_http_llm_sink_fail_str(x, NGX_HTTP_LLM_E_FIRST_TMO,
                                       "no token from the upstream in time "
                                       "(llm_first_token_timeout)");

        } else if (x->got_text && s->idle_timeout
                   && now - x->last_read >= s->idle_timeout)
        {
            ngx_http_llm_sink_fail_str(x, NGX_HTTP_LLM_E_IDLE_TMO,
                                       "the upstream stopped sending "
                                       "(llm_idle_timeout)");

        } else {
            continue;
        }

        ngx_http_llm_xfer_finish(x, CURLE_OK);
    }
}


/* the engine's clock: ngx_time() is not updated on threads */

ngx_msec_t
ngx_http_llm_engine_now(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (ngx_msec_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
