
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * The worker's own channel from threads to the event loop: a list of items
 * under a mutex and a non-blocking pipe registered as a channel event.  A
 * byte is written only when the list goes from empty to not empty, so the
 * pipe never fills.  ngx_notify() is not an option: it has a single
 * handler slot, owned by the thread pools.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <ngx_channel.h>

#include "ngx_http_llm_module.h"


static void ngx_http_llm_channel_handler(ngx_event_t *ev);


ngx_http_llm_channel_t  ngx_http_llm_channel = {
    .fd = { -1, -1 }
};


ngx_int_t
ngx_http_llm_channel_init_process(ngx_cycle_t *cycle)
{
    ngx_http_llm_channel_t  *ch;

    ch = &ngx_http_llm_channel;
    ch->log = cycle->log;

    if (ngx_thread_mutex_create(&ch->mutex, cycle->log) != NGX_OK) {
        return NGX_ERROR;
    }

    if (pipe(ch->fd) == -1) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "llm: pipe() failed");
        return NGX_ERROR;
    }

    if (ngx_nonblocking(ch->fd[0]) == -1
        || ngx_nonblocking(ch->fd[1]) == -1)
    {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_socket_errno,
                      ngx_nonblocking_n " failed on llm channel");
        return NGX_ERROR;
    }

    return ngx_add_channel_event(cycle, ch->fd[0], NGX_READ_EVENT,
                                 ngx_http_llm_channel_handler);
}


void
ngx_http_llm_channel_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_llm_channel_t  *ch;

    ch = &ngx_http_llm_channel;

    if (ch->fd[1] != -1) {
        (void) close(ch->fd[1]);
        ch->fd[1] = -1;
    }

    (void) ngx_thread_mutex_destroy(&ch->mutex, cycle->log);
}


/* with the channel mutex held; returns 1 when the loop must be woken */

ngx_uint_t
ngx_http_llm_channel_queue(ngx_http_llm_chan_item_t *item)
{
    ngx_http_llm_channel_t  *ch;

    ch = &ngx_http_llm_channel;

    if (item->queued) {
        return 0;
    }

    item->queued = 1;
    item->next = NULL;

    if (ch->tail) {
        ch->tail->next = item;

    } else {
        ch->head = item;
    }

    ch->tail = item;

    if (ch->notified) {
        return 0;
    }

    ch->notified = 1;

    return 1;
}


void
ngx_http_llm_channel_wake(void)
{
    /* a full pipe already wakes the loop: the result does not matter */
    (void) write(ngx_http_llm_channel.fd[1], "", 1);
}


/* any thread */

void
ngx_http_llm_channel_post(ngx_http_llm_chan_item_t *item)
{
    ngx_uint_t               wake;
    ngx_http_llm_channel_t  *ch;

    ch = &ngx_http_llm_channel;

    (void) ngx_thread_mutex_lock(&ch->mutex, ch->log);
    wake = ngx_http_llm_channel_queue(item);
    (void) ngx_thread_mutex_unlock(&ch->mutex, ch->log);

    if (wake) {
        ngx_http_llm_channel_wake();
    }
}


static void
ngx_http_llm_channel_handler(ngx_event_t *ev)
{
    u_char                     buf[64];
    ngx_http_llm_channel_t    *ch;
    ngx_http_llm_chan_item_t  *item, *next;

    ch = &ngx_http_llm_channel;

    /*
     * One read: a byte is written only when the list was empty and not yet
     * taken, so there is hardly ever more than one, and a byte written
     * after this read is only an early wake with nothing, or little, to do.
     */
    (void) read(ch->fd[0], buf, sizeof(buf));

    (void) ngx_thread_mutex_lock(&ch->mutex, ch->log);

    item = ch->head;
    ch->head = NULL;
    ch->tail = NULL;
    ch->notified = 0;

    (void) ngx_thread_mutex_unlock(&ch->mutex, ch->log);

    /* once unqueued an item may be queued again at once: read next first */

    for ( /* void */ ; item; item = next) {
        (void) ngx_thread_mutex_lock(&ch->mutex, ch->log);
        next = item->next;
        item->queued = 0;
        (void) ngx_thread_mutex_unlock(&ch->mutex, ch->log);

        item->handler(item);
    }
}
