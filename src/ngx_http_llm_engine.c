
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * The engine: per worker and thread pool, one long-lived task in the pool
 * drives every upstream transfer with a single libcurl multi handle, so
 * the number of streams is not bound by the number of threads.  It runs
 * libcurl's socket interface on an epoll set of its own: the work per
 * wakeup follows the sockets that are ready, not the number of transfers.  Parsed
 * output goes back to the event loop through the worker's own channel (a
 * pipe registered as a channel event; ngx_notify() belongs to the thread
 * pools).  The task returns when it has nothing to do and is posted again
 * on the next submit, so reload and exit never wait for it.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <curl/curl.h>

#include "ngx_http_llm_module.h"


#define NGX_HTTP_LLM_POLL_MS       250
#define NGX_HTTP_LLM_SCAN_MS       50
#define NGX_HTTP_LLM_LINGER_MS     2000
#define NGX_HTTP_LLM_EVENTS        256


struct ngx_http_llm_engine_s {
    ngx_thread_pool_t             *pool;
    ngx_thread_task_t             *task;
    CURLM                         *multi;
    int                            epfd;
    int                            wakefd;      /* eventfd: new work */
    ngx_http_llm_engine_t         *next;

    /* shared, under the channel mutex */
    ngx_http_llm_xfer_t           *submitted;
    ngx_http_llm_xfer_t           *cancelled;
    unsigned                       running:1;

    /* event loop only */
    unsigned                       posted:1;
    unsigned                       repost:1;

    /* engine thread only */
    ngx_queue_t                    active;
    ngx_msec_t                     deadline;    /* libcurl's timer, or 0 */
};


struct ngx_http_llm_xfer_s {
    ngx_http_llm_spec_t            spec;
    ngx_http_llm_engine_t         *engine;
    ngx_http_llm_job_t            *job;         /* event loop only */

    /* engine thread only */
    CURL                          *easy;
    void                          *pstate;
    ngx_http_llm_usse_t            parser;
    ngx_http_llm_sink_t            sink;
    ngx_queue_t                    active;
    struct curl_slist             *headers;
    ngx_msec_t                     started;
    ngx_msec_t                     last_read;
    long                           status;
    u_char                        *errbody;
    size_t                         errlen;
    char                           errbuf[CURL_ERROR_SIZE];
    unsigned                       got_text:1;
    unsigned                       ended:1;
    unsigned                       failed:1;
    unsigned                       in_multi:1;

    /* shared, under the channel mutex */
    ngx_http_llm_chan_item_t       item;
    ngx_http_llm_output_t          out;
    ngx_uint_t                     refs;
    unsigned                       cancel:1;
    ngx_http_llm_xfer_t           *next_submit;
    ngx_http_llm_xfer_t           *next_cancel;
};


static ngx_http_llm_engine_t *ngx_http_llm_engine_get(ngx_thread_pool_t *pool,
    ngx_log_t *log);
static ngx_int_t ngx_http_llm_engine_post(ngx_http_llm_engine_t *e);
static void ngx_http_llm_engine_thread(void *data, ngx_log_t *log);
static void ngx_http_llm_engine_completed(ngx_event_t *ev);
static void ngx_http_llm_engine_take(ngx_http_llm_engine_t *e);
static void ngx_http_llm_engine_add(ngx_http_llm_engine_t *e,
    ngx_http_llm_xfer_t *x);
static void ngx_http_llm_engine_done(ngx_http_llm_engine_t *e);
static void ngx_http_llm_engine_scan(ngx_http_llm_engine_t *e,
    ngx_msec_t now);
static void ngx_http_llm_engine_abort_all(ngx_http_llm_engine_t *e,
    const char *code, const char *msg);
static ngx_msec_t ngx_http_llm_now(void);
static void ngx_http_llm_engine_wake(ngx_http_llm_engine_t *e);
static int ngx_http_llm_engine_socket(CURL *easy, curl_socket_t s, int what,
    void *data, void *socketp);
static int ngx_http_llm_engine_timer(CURLM *multi, long ms, void *data);

static size_t ngx_http_llm_xfer_write(char *ptr, size_t size, size_t n,
    void *data);
static ngx_int_t ngx_http_llm_xfer_event(void *ctx, ngx_str_t *event,
    ngx_str_t *data);
static void ngx_http_llm_xfer_finish(ngx_http_llm_xfer_t *x,
    CURLcode rc);
static void ngx_http_llm_xfer_release(ngx_http_llm_xfer_t *x);
static void ngx_http_llm_xfer_free(ngx_http_llm_xfer_t *x);

static void ngx_http_llm_sink_text(void *data, u_char *p, size_t len);
static void ngx_http_llm_sink_finish(void *data, u_char *reason,
    size_t len);
static void ngx_http_llm_sink_usage(void *data, ngx_int_t input,
    ngx_int_t output);
static void ngx_http_llm_sink_fail(void *data, const char *code,
    u_char *msg, size_t len);
static void ngx_http_llm_sink_fail_str(ngx_http_llm_xfer_t *x,
    const char *code, const char *msg);

static void ngx_http_llm_xfer_push(ngx_http_llm_xfer_t *x);
static void ngx_http_llm_xfer_drain(ngx_http_llm_chan_item_t *item);


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
    ngx_http_llm_engine_t  *e, *next;

    /* the thread pools have been joined: every engine task has returned */

    for (e = ngx_http_llm_engines; e; e = next) {
        next = e->next;
        curl_multi_cleanup(e->multi);
        (void) close(e->epfd);
        (void) close(e->wakefd);
        ngx_free(e);
    }

    ngx_http_llm_engines = NULL;

    curl_global_cleanup();
}


ngx_http_llm_xfer_t *
ngx_http_llm_engine_submit(ngx_thread_pool_t *pool, ngx_http_llm_spec_t *spec,
    ngx_http_llm_job_t *job, ngx_log_t *log)
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
    x->job = job;
    x->refs = 2;
    x->item.handler = ngx_http_llm_xfer_drain;
    x->out.input_tokens = -1;
    x->out.output_tokens = -1;

    (void) ngx_thread_mutex_lock(&ch->mutex, log);

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
        /* the job still gets its final event, through the channel */
        ngx_http_llm_engine_abort_all(e, NGX_HTTP_LLM_E_INTERNAL,
                                      "the thread pool is overloaded");
    }

    return x;
}


void
ngx_http_llm_engine_cancel(ngx_http_llm_xfer_t *x)
{
    ngx_http_llm_engine_t   *e;
    ngx_http_llm_channel_t  *ch;

    ch = &ngx_http_llm_channel;
    e = x->engine;

    x->job = NULL;

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
    idle_since = ngx_http_llm_now();

    for ( ;; ) {

        ngx_http_llm_engine_take(e);

        if (ngx_terminate || ngx_quit || ngx_exiting) {
            ngx_http_llm_engine_abort_all(e, NGX_HTTP_LLM_E_SHUTDOWN,
                                          "the server is shutting down");
            break;
        }

        now = ngx_http_llm_now();

        /* exit flags and timeouts are checked at least this often */
        wait = ngx_queue_empty(&e->active) ? NGX_HTTP_LLM_POLL_MS
                                           : NGX_HTTP_LLM_SCAN_MS;

        if (e->deadline) {
            wait = (e->deadline > now) ? ngx_min(wait, e->deadline - now) : 0;
        }

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
        }

        now = ngx_http_llm_now();

        if (e->deadline && now >= e->deadline) {
            e->deadline = 0;
            (void) curl_multi_socket_action(e->multi, CURL_SOCKET_TIMEOUT, 0,
                                            &running);
        }

        ngx_http_llm_engine_done(e);

        if (now - last_scan >= NGX_HTTP_LLM_SCAN_MS) {
            /* a clock read after every callback: no read is newer */
            now = ngx_http_llm_now();
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

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, log, 0, "llm engine: idle, returns");
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
    e->deadline = (ms < 0) ? 0 : ngx_http_llm_now() + (ngx_msec_t) ms;

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
        ngx_http_llm_engine_add(e, x);
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


static void
ngx_http_llm_engine_add(ngx_http_llm_engine_t *e, ngx_http_llm_xfer_t *x)
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

    x->started = ngx_http_llm_now();
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

        if (s->timeout && now - x->started >= s->timeout) {
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


static ngx_msec_t
ngx_http_llm_now(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (ngx_msec_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


/* engine thread: libcurl's write callback */

static size_t
ngx_http_llm_xfer_write(char *ptr, size_t size, size_t n, void *data)
{
    ngx_http_llm_xfer_t *x = data;

    size_t     len, room;
    ngx_int_t  rc;

    len = size * n;
    x->last_read = ngx_http_llm_now();

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

    rc = ngx_http_llm_usse_feed(&x->parser, (u_char *) ptr, len,
                                ngx_http_llm_xfer_event, x);

    if (rc == NGX_DONE) {
        x->ended = 1;
        return 0;
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

static void
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
    (void) ngx_thread_mutex_unlock(&ch->mutex, ch->log);

    ngx_http_llm_xfer_push(x);
    ngx_http_llm_xfer_release(x);
}


static void
ngx_http_llm_xfer_release(ngx_http_llm_xfer_t *x)
{
    ngx_uint_t               refs;
    ngx_http_llm_channel_t  *ch;

    ch = &ngx_http_llm_channel;

    (void) ngx_thread_mutex_lock(&ch->mutex, ch->log);
    refs = --x->refs;
    (void) ngx_thread_mutex_unlock(&ch->mutex, ch->log);

    if (refs == 0) {
        ngx_http_llm_xfer_free(x);
    }
}


static void
ngx_http_llm_xfer_free(ngx_http_llm_xfer_t *x)
{
    ngx_http_llm_spec_free(&x->spec);
    free(x->out.text);
    free(x->out.message);
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
    len = ngx_min(len, sizeof(x->out.finish));

    (void) ngx_thread_mutex_lock(&ch->mutex, ch->log);
    ngx_memcpy(x->out.finish, reason, len);
    x->out.finish_len = len;
    (void) ngx_thread_mutex_unlock(&ch->mutex, ch->log);
}


static void
ngx_http_llm_sink_usage(void *data, ngx_int_t input, ngx_int_t output)
{
    ngx_http_llm_xfer_t *x = data;

    ngx_http_llm_channel_t  *ch;

    ch = &ngx_http_llm_channel;

    (void) ngx_thread_mutex_lock(&ch->mutex, ch->log);

    if (input >= 0) {
        x->out.input_tokens = input;
    }

    if (output >= 0) {
        x->out.output_tokens = output;
    }

    (void) ngx_thread_mutex_unlock(&ch->mutex, ch->log);
}


static void
ngx_http_llm_sink_fail(void *data, const char *code, u_char *msg,
    size_t len)
{
    ngx_http_llm_xfer_t *x = data;

    u_char                  *m;
    ngx_http_llm_channel_t  *ch;

    if (x->failed) {
        return;
    }

    ch = &ngx_http_llm_channel;
    x->failed = 1;

    m = malloc(len ? len : 1);
    if (m != NULL) {
        ngx_memcpy(m, msg, len);
    }

    (void) ngx_thread_mutex_lock(&ch->mutex, ch->log);
    x->out.failed = 1;
    x->out.code = code;
    x->out.message = m;
    x->out.message_len = m ? len : 0;
    (void) ngx_thread_mutex_unlock(&ch->mutex, ch->log);
}


static void
ngx_http_llm_sink_fail_str(ngx_http_llm_xfer_t *x, const char *code,
    const char *msg)
{
    ngx_http_llm_sink_fail(x, code, (u_char *) msg, ngx_strlen(msg));
}


/* any thread: queue the transfer's output for the event loop */

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

    if (wake) {
        ngx_http_llm_channel_wake();
    }
}


/* event loop: hand what the transfer made to its job */

static void
ngx_http_llm_xfer_drain(ngx_http_llm_chan_item_t *item)
{
    ngx_http_llm_job_t      *job;
    ngx_http_llm_xfer_t     *x;
    ngx_http_llm_output_t    out;
    ngx_http_llm_channel_t  *ch;

    ch = &ngx_http_llm_channel;
    x = (ngx_http_llm_xfer_t *) ((u_char *) item
                                 - offsetof(ngx_http_llm_xfer_t, item));

    (void) ngx_thread_mutex_lock(&ch->mutex, ch->log);

    out = x->out;

    x->out.text = NULL;
    x->out.text_len = 0;
    x->out.text_cap = 0;

    /* the outcome is read once, with the end of the transfer */
    if (out.done) {
        x->out.message = NULL;
        x->out.message_len = 0;

    } else {
        out.message = NULL;
    }

    (void) ngx_thread_mutex_unlock(&ch->mutex, ch->log);

    job = x->job;

    if (job != NULL) {
        if (out.done) {
            job->xfer = NULL;
            x->job = NULL;
        }

        ngx_http_llm_job_output(job, &out);

        if (out.done) {
            ngx_http_llm_xfer_release(x);
        }
    }

    free(out.text);
    free(out.message);

    ngx_http_llm_xfer_release(x);
}
