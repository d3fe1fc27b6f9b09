
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * The embedded store: a shared memory zone, so that every worker of the
 * instance sees every job.  Saves and reads are copies under the zone's
 * mutex, done at once.  When the zone is full the oldest finished jobs go
 * first; a running job that still does not fit is marked truncated: its
 * stored copy ends with a "store_full" error and the error log says so.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_store.h"


#define NGX_HTTP_LLM_ZONE_SIZE   (32 * 1024 * 1024)

/* a running job not saved for this long lost its worker */
#define NGX_HTTP_LLM_STALE_MS    60000


typedef struct {
    ngx_rbtree_t                   rbtree;
    ngx_rbtree_node_t              sentinel;
    ngx_queue_t                    finished;    /* oldest first */
    ngx_queue_t                    running;
} ngx_http_llm_mem_sh_t;


typedef struct {
    ngx_http_llm_mem_sh_t         *sh;
    ngx_slab_pool_t               *shpool;
} ngx_http_llm_mem_t;


typedef struct {
    ngx_rbtree_node_t              node;        /* key: crc32 of the id */
    ngx_queue_t                    queue;
    u_char                         id[NGX_HTTP_LLM_JOB_ID_LEN];

    ngx_http_llm_record_t          rec;         /* arrays below instead */

    ngx_http_llm_event_t          *events;
    ngx_uint_t                     events_cap;
    u_char                        *text;
    size_t                         text_cap;
    u_char                        *meta;
    size_t                         meta_cap;
    u_char                        *pipeline_state;  /* rec's length */
    u_char                        *message;
    int64_t                        expires;

    unsigned                       truncated:1;
} ngx_http_llm_mem_job_t;


static ngx_int_t ngx_http_llm_mem_init_zone(ngx_shm_zone_t *zone,
    void *data);
static void ngx_http_llm_mem_save(ngx_http_llm_store_t *st,
    ngx_http_llm_snapshot_t *snap, ngx_http_llm_saved_t *res);
static void ngx_http_llm_mem_release(ngx_http_llm_store_t *st,
    ngx_http_llm_snapshot_t *snap);
static ngx_int_t ngx_http_llm_mem_fetch(ngx_http_llm_store_t *st, u_char *id,
    ngx_uint_t from_event, size_t from_text, size_t from_meta,
    ngx_http_llm_fetch_pt handler, void *data);
static ngx_int_t ngx_http_llm_mem_control(ngx_http_llm_store_t *st,
    u_char *id, ngx_http_llm_control_e what);
static ngx_int_t ngx_http_llm_mem_claim(ngx_http_llm_store_t *st,
    u_char *id, int64_t updated, ngx_http_llm_fetch_pt handler, void *data);
static ngx_http_llm_mem_job_t *ngx_http_llm_mem_lookup(ngx_http_llm_mem_t *m,
    u_char *id, int64_t now);
static ngx_http_llm_mem_job_t *ngx_http_llm_mem_create(ngx_http_llm_mem_t *m,
    ngx_http_llm_snapshot_t *snap);
static ngx_int_t ngx_http_llm_mem_copy(ngx_http_llm_mem_t *m,
    ngx_http_llm_mem_job_t *mj, ngx_http_llm_snapshot_t *snap);
static void *ngx_http_llm_mem_alloc(ngx_http_llm_mem_t *m, size_t size);
static void ngx_http_llm_mem_expire(ngx_http_llm_mem_t *m, int64_t now,
    ngx_uint_t force);
static void ngx_http_llm_mem_free(ngx_http_llm_mem_t *m,
    ngx_http_llm_mem_job_t *mj);
static void ngx_http_llm_mem_rbtree_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);


const ngx_http_llm_store_ops_t  ngx_http_llm_store_memory = {
    "memory",
    NULL,
    NULL,
    ngx_http_llm_mem_save,
    ngx_http_llm_mem_release,
    ngx_http_llm_mem_fetch,
    ngx_http_llm_mem_control,
    ngx_http_llm_mem_claim
};


/* llm_store memory [zone=NAME:SIZE] */

char *
ngx_http_llm_store_memory_conf(ngx_conf_t *cf, ngx_http_llm_store_t *st,
    ngx_str_t *args, ngx_uint_t nargs)
{
    u_char              *p;
    ssize_t              size;
    ngx_str_t            name, s;
    ngx_uint_t           i;
    ngx_shm_zone_t      *zone;
    ngx_http_llm_mem_t  *m;

    ngx_str_set(&name, "llm_jobs");
    size = NGX_HTTP_LLM_ZONE_SIZE;

    for (i = 1; i < nargs; i++) {

        if (ngx_strncmp(args[i].data, "zone=", 5) != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\" in \"llm_store\"",
                               &args[i]);
            return NGX_CONF_ERROR;
        }

        name.data = args[i].data + 5;
        p = (u_char *) ngx_strchr(name.data, ':');

        if (p == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid zone \"%V\" in \"llm_store\": "
                               "NAME:SIZE expected", &args[i]);
            return NGX_CONF_ERROR;
        }

        name.len = p - name.data;

        s.data = p + 1;
        s.len = args[i].data + args[i].len - s.data;

        size = ngx_parse_size(&s);

        if (name.len == 0 || size == NGX_ERROR || size < 64 * 1024) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid zone \"%V\" in \"llm_store\": "
                               "a name and at least 64k expected",
                               &args[i]);
            return NGX_CONF_ERROR;
        }
    }

    zone = ngx_shared_memory_add(cf, &name, size, &ngx_http_llm_module);
    if (zone == NULL) {
        return NGX_CONF_ERROR;
    }

    m = zone->data;

    if (m == NULL) {
        m = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_mem_t));
        if (m == NULL) {
            return NGX_CONF_ERROR;
        }

        zone->init = ngx_http_llm_mem_init_zone;
        zone->data = m;
    }

    /* zone->data outlives the store: a zone may serve several of them */
    st->data = m;
    st->poll = 100;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_llm_mem_init_zone(ngx_shm_zone_t *zone, void *data)
{
    ngx_http_llm_mem_t *old = data;

    ngx_http_llm_mem_t  *m;

    m = zone->data;

    if (old) {
        m->sh = old->sh;
        m->shpool = old->shpool;
        return NGX_OK;
    }

    m->shpool = (ngx_slab_pool_t *) zone->shm.addr;

    if (zone->shm.exists) {
        m->sh = m->shpool->data;
        return NGX_OK;
    }

    m->sh = ngx_slab_alloc(m->shpool, sizeof(ngx_http_llm_mem_sh_t));
    if (m->sh == NULL) {
        return NGX_ERROR;
    }

    m->shpool->data = m->sh;

    ngx_rbtree_init(&m->sh->rbtree, &m->sh->sentinel,
                    ngx_http_llm_mem_rbtree_insert);
    ngx_queue_init(&m->sh->finished);
    ngx_queue_init(&m->sh->running);

    m->shpool->log_nomem = 0;

    return NGX_OK;
}


static void
ngx_http_llm_mem_save(ngx_http_llm_store_t *st, ngx_http_llm_snapshot_t *snap,
    ngx_http_llm_saved_t *res)
{
    ngx_http_llm_mem_t *m = st->data;

    int64_t                  now;
    ngx_uint_t               full;
    ngx_http_llm_mem_job_t  *mj;

    now = ngx_http_llm_now_ms();
    full = 0;

    ngx_shmtx_lock(&m->shpool->mutex);

    /*
     * The record is found again at every save, never kept across them:
     * another worker may have dropped it meanwhile (a running job is
     * dropped a ttl after its last save, and the clock can jump), and a
     * pointer kept from the last save would then write into freed shared
     * memory.  A record that is gone is made again, from the start.
     */

    mj = ngx_http_llm_mem_lookup(m, snap->id, now);

    if (mj == NULL) {
        mj = ngx_http_llm_mem_create(m, snap);

        if (mj == NULL) {
            ngx_shmtx_unlock(&m->shpool->mutex);

            /* said once: the job is not stored, and not tried again */
            res->dropped = 1;
            ngx_http_llm_metrics_store_write(NGX_HTTP_LLM_METRICS_MEMORY, 0);

            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "llm: job %s: the memory store is full, "
                          "the job is not stored", snap->id);
            return;
        }

        snap->saved_events = 0;
        snap->saved_text = 0;
        snap->saved_meta = 0;
        snap->saved_state = 0;
    }

    if (mj->truncated) {
        /* the stored copy was cut: it stays so */

    } else if (ngx_http_llm_mem_copy(m, mj, snap) == NGX_OK) {
        res->saved_events = snap->nevents;
        res->saved_text = snap->text_len;
        res->saved_meta = snap->meta_len;
        res->saved_state = snap->state_version;

    } else {
        mj->truncated = 1;
        mj->rec.state = NGX_HTTP_LLM_FAILED;
        mj->rec.outcome.code_len = sizeof("store_full") - 1;
        ngx_memcpy(mj->rec.outcome.code, "store_full",
                   mj->rec.outcome.code_len);
        full = 1;
    }

    /*
     * Both queues are kept in expiry order.  A job stays with the running
     * ones, which are never evicted, for as long as its worker runs it
     * (and saves it every second), even when its stored copy was cut.
     */

    ngx_queue_remove(&mj->queue);

    if (snap->state == NGX_HTTP_LLM_RUNNING) {
        mj->expires = now + ngx_max(st->ttl, NGX_HTTP_LLM_STALE_MS);
        ngx_queue_insert_tail(&m->sh->running, &mj->queue);

    } else {
        mj->expires = now + st->ttl;

        if (mj->rec.finished == 0) {
            mj->rec.finished = now;
        }

        ngx_queue_insert_tail(&m->sh->finished, &mj->queue);
    }

    res->cancel = mj->rec.cancel;
    res->pause = mj->rec.pause;
    res->pause_seq = mj->rec.pause_seq;
    res->watched = mj->rec.watched;

    ngx_shmtx_unlock(&m->shpool->mutex);

    ngx_http_llm_metrics_store_write(NGX_HTTP_LLM_METRICS_MEMORY, !full);

    if (full) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "llm: job %s: the memory store is full, its stored "
                      "copy ends here (store_full)", snap->id);
    }
}


/* saves are made at once: nothing is pending, the job keeps no pointer */

static void
ngx_http_llm_mem_release(ngx_http_llm_store_t *st,
    ngx_http_llm_snapshot_t *snap)
{
}


/*
 * The copies are made under the zone's mutex, into memory allocated
 * outside it: the sizes are read first, and if the job grew meanwhile the
 * memory is allocated again for the new sizes.
 */

static ngx_int_t
ngx_http_llm_mem_fetch(ngx_http_llm_store_t *st, u_char *id,
    ngx_uint_t from_event, size_t from_text, size_t from_meta,
    ngx_http_llm_fetch_pt handler, void *data)
{
    ngx_http_llm_mem_t *m = st->data;

    size_t                   n, nev, ntext, nmeta, nstate, nmsg;
    int64_t                  now;
    ngx_uint_t               tries;
    ngx_http_llm_record_t    rec;
    ngx_http_llm_event_t    *events;
    u_char                  *text, *meta, *state, *msg;
    ngx_http_llm_mem_job_t  *mj;

    events = NULL;
    text = NULL;
    meta = NULL;
    state = NULL;
    msg = NULL;
    nev = 0;
    ntext = 0;
    nmeta = 0;
    nstate = 0;
    nmsg = 0;

    for (tries = 0; /* void */; tries++) {

        now = ngx_http_llm_now_ms();

        ngx_shmtx_lock(&m->shpool->mutex);

        mj = ngx_http_llm_mem_lookup(m, id, now);

        if (mj == NULL) {
            ngx_shmtx_unlock(&m->shpool->mutex);
            free(events);
            free(text);
            free(meta);
            free(state);
            free(msg);
            handler(data, NGX_DECLINED, NULL);
            return NGX_OK;
        }

        /*
         * The zone is shared by every worker, and a worker that crashed
         * while holding it (the lock is then forced) may have left a
         * record half written: one whose sizes exceed what it has is not
         * read.
         */

        if (mj->rec.nevents > mj->events_cap
            || mj->rec.text_len > mj->text_cap
            || mj->rec.meta_len > mj->meta_cap
            || (mj->rec.pipeline_state_len && mj->pipeline_state == NULL)
            || (mj->rec.outcome.message_len && mj->message == NULL)
            || mj->rec.state > NGX_HTTP_LLM_CANCELLED)
        {
            ngx_shmtx_unlock(&m->shpool->mutex);
            free(events);
            free(text);
            free(meta);
            free(state);
            free(msg);

            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "llm: memory store: job %*s: corrupt record",
                          (size_t) NGX_HTTP_LLM_JOB_ID_LEN, id);

            handler(data, NGX_ABORT, NULL);
            return NGX_OK;
        }

        from_event = ngx_min(from_event, mj->rec.nevents);
        from_text = ngx_min(from_text, mj->rec.text_len);
        from_meta = ngx_min(from_meta, mj->rec.meta_len);

        if (mj->rec.nevents - from_event <= nev
            && mj->rec.text_len - from_text <= ntext
            && mj->rec.meta_len - from_meta <= nmeta
            && mj->rec.pipeline_state_len <= nstate
            && mj->rec.outcome.message_len <= nmsg)
        {
            break;
        }

        nev = mj->rec.nevents - from_event;
        ntext = mj->rec.text_len - from_text;
        nmeta = mj->rec.meta_len - from_meta;
        nstate = mj->rec.pipeline_state_len;
        nmsg = mj->rec.outcome.message_len;

        ngx_shmtx_unlock(&m->shpool->mutex);

        free(events);
        free(text);
        free(meta);
        free(state);
        free(msg);

        /* a job that grows faster than it can be read: not now */

        events = (tries < 4 && nev) ? malloc(nev * sizeof(*events)) : NULL;
        text = (tries < 4 && ntext) ? malloc(ntext) : NULL;
        meta = (tries < 4 && nmeta) ? malloc(nmeta) : NULL;
        state = (tries < 4 && nstate) ? malloc(nstate) : NULL;
        msg = (tries < 4 && nmsg) ? malloc(nmsg) : NULL;

        if (tries == 4 || (nev && events == NULL)
            || (ntext && text == NULL) || (nmeta && meta == NULL)
            || (nstate && state == NULL) || (nmsg && msg == NULL))
        {
            free(events);
            free(text);
            free(meta);
            free(state);
            free(msg);
            handler(data, NGX_ERROR, NULL);
            return NGX_OK;
        }
    }

    mj->rec.watched = now;

    rec = mj->rec;
    rec.from_event = from_event;
    rec.from_text = from_text;
    rec.from_meta = from_meta;
    rec.events = events;
    rec.text = text;
    rec.meta = meta;
    rec.pipeline_state = state;
    rec.outcome.message = msg;

    n = rec.nevents - from_event;

    if (n) {
        ngx_memcpy(rec.events, mj->events + from_event,
                   n * sizeof(ngx_http_llm_event_t));
    }

    n = rec.text_len - from_text;

    if (n) {
        ngx_memcpy(rec.text, mj->text + from_text, n);
    }

    n = rec.meta_len - from_meta;

    if (n) {
        ngx_memcpy(rec.meta, mj->meta + from_meta, n);
    }

    if (rec.pipeline_state_len) {
        ngx_memcpy(rec.pipeline_state, mj->pipeline_state,
                   rec.pipeline_state_len);
    }

    if (rec.outcome.message_len) {
        ngx_memcpy(rec.outcome.message, mj->message,
                   rec.outcome.message_len);
    }

    ngx_shmtx_unlock(&m->shpool->mutex);

    handler(data, NGX_OK, &rec);
    ngx_http_llm_record_free(&rec);

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_mem_claim(ngx_http_llm_store_t *st, u_char *id,
    int64_t updated, ngx_http_llm_fetch_pt handler, void *data)
{
    ngx_http_llm_mem_t *m = st->data;

    int64_t                  now;
    ngx_int_t                rc;
    ngx_http_llm_mem_job_t  *mj;

    now = ngx_http_llm_now_ms();

    ngx_shmtx_lock(&m->shpool->mutex);

    mj = ngx_http_llm_mem_lookup(m, id, now);

    if (mj && mj->rec.state == NGX_HTTP_LLM_RUNNING
        && mj->rec.updated == updated)
    {
        mj->rec.updated = now;
        rc = NGX_OK;

    } else {
        rc = NGX_DECLINED;
    }

    ngx_shmtx_unlock(&m->shpool->mutex);

    handler(data, rc, NULL);

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_mem_control(ngx_http_llm_store_t *st, u_char *id,
    ngx_http_llm_control_e what)
{
    ngx_http_llm_mem_t *m = st->data;

    ngx_int_t                rc;
    ngx_http_llm_mem_job_t  *mj;

    ngx_shmtx_lock(&m->shpool->mutex);

    mj = ngx_http_llm_mem_lookup(m, id, ngx_http_llm_now_ms());

    if (mj) {
        if (what == NGX_HTTP_LLM_CTL_CANCEL) {
            mj->rec.cancel = 1;

        } else {
            mj->rec.pause = (what == NGX_HTTP_LLM_CTL_PAUSE);
            mj->rec.pause_seq++;
        }

        rc = NGX_OK;

    } else {
        rc = NGX_DECLINED;
    }

    ngx_shmtx_unlock(&m->shpool->mutex);

    return rc;
}


static ngx_http_llm_mem_job_t *
ngx_http_llm_mem_lookup(ngx_http_llm_mem_t *m, u_char *id, int64_t now)
{
    ngx_int_t                rc;
    uint32_t                 hash;
    ngx_rbtree_node_t       *node, *sentinel;
    ngx_http_llm_mem_job_t  *mj;

    ngx_http_llm_mem_expire(m, now, 0);

    hash = ngx_crc32_short(id, NGX_HTTP_LLM_JOB_ID_LEN);

    node = m->sh->rbtree.root;
    sentinel = m->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash != node->key) {
            node = (hash < node->key) ? node->left : node->right;
            continue;
        }

        mj = (ngx_http_llm_mem_job_t *) node;
        rc = ngx_memcmp(id, mj->id, NGX_HTTP_LLM_JOB_ID_LEN);

        if (rc == 0) {
            return mj;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


static ngx_http_llm_mem_job_t *
ngx_http_llm_mem_create(ngx_http_llm_mem_t *m, ngx_http_llm_snapshot_t *snap)
{
    ngx_http_llm_mem_job_t  *mj;

    mj = ngx_http_llm_mem_alloc(m, sizeof(ngx_http_llm_mem_job_t));
    if (mj == NULL) {
        return NULL;
    }

    ngx_memzero(mj, sizeof(ngx_http_llm_mem_job_t));

    ngx_memcpy(mj->id, snap->id, NGX_HTTP_LLM_JOB_ID_LEN);
    mj->node.key = ngx_crc32_short(snap->id, NGX_HTTP_LLM_JOB_ID_LEN);

    mj->rec.created = snap->created;
    mj->rec.outcome.input_tokens = -1;
    mj->rec.outcome.output_tokens = -1;
    mj->rec.background = snap->background;
    mj->rec.has_owner = snap->has_owner;
    ngx_memcpy(mj->rec.owner, snap->owner, NGX_HTTP_LLM_OWNER_LEN);

    ngx_rbtree_insert(&m->sh->rbtree, &mj->node);
    ngx_queue_insert_tail(&m->sh->running, &mj->queue);

    return mj;
}


/* bring the stored copy up to date; the zone's mutex is held */

static ngx_int_t
ngx_http_llm_mem_copy(ngx_http_llm_mem_t *m, ngx_http_llm_mem_job_t *mj,
    ngx_http_llm_snapshot_t *snap)
{
    size_t                   cap;
    u_char                  *p;
    ngx_http_llm_event_t    *ev;
    ngx_http_llm_outcome_t  *oc;

    oc = snap->outcome;

    /* the copy grows by doubling, as the job does */

    if (snap->nevents > mj->events_cap) {
        cap = ngx_max(mj->events_cap * 2, snap->nevents + 1);
        cap = ngx_max(cap, 16);

        ev = ngx_http_llm_mem_alloc(m, cap * sizeof(ngx_http_llm_event_t));
        if (ev == NULL) {
            return NGX_ERROR;
        }

        if (mj->events) {
            ngx_memcpy(ev, mj->events,
                       mj->rec.nevents * sizeof(ngx_http_llm_event_t));
            ngx_slab_free_locked(m->shpool, mj->events);
        }

        mj->events = ev;
        mj->events_cap = cap;
    }

    if (snap->text_len > mj->text_cap) {
        cap = ngx_max(mj->text_cap * 2, snap->text_len);
        cap = ngx_max(cap, 1024);

        p = ngx_http_llm_mem_alloc(m, cap);
        if (p == NULL) {
            return NGX_ERROR;
        }

        if (mj->text) {
            ngx_memcpy(p, mj->text, mj->rec.text_len);
            ngx_slab_free_locked(m->shpool, mj->text);
        }

        mj->text = p;
        mj->text_cap = cap;
    }

    if (snap->meta_len > mj->meta_cap) {
        cap = ngx_max(mj->meta_cap * 2, snap->meta_len);
        cap = ngx_max(cap, 1024);

        p = ngx_http_llm_mem_alloc(m, cap);
        if (p == NULL) {
            return NGX_ERROR;
        }

        if (mj->meta) {
            ngx_memcpy(p, mj->meta, mj->rec.meta_len);
            ngx_slab_free_locked(m->shpool, mj->meta);
        }

        mj->meta = p;
        mj->meta_cap = cap;
    }

    /* the pipeline's state is replaced whole when it changed */

    if (snap->pipeline_state && snap->state_version != snap->saved_state) {
        p = ngx_http_llm_mem_alloc(m, ngx_max(snap->pipeline_state_len, 1));
        if (p == NULL) {
            return NGX_ERROR;
        }

        if (mj->pipeline_state) {
            ngx_slab_free_locked(m->shpool, mj->pipeline_state);
        }

        ngx_memcpy(p, snap->pipeline_state, snap->pipeline_state_len);
        mj->pipeline_state = p;
        mj->rec.pipeline_state_len = snap->pipeline_state_len;
        mj->rec.state_version = snap->state_version;
    }

    if (oc->message_len && mj->message == NULL) {
        mj->message = ngx_http_llm_mem_alloc(m, oc->message_len);
        if (mj->message == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(mj->message, oc->message, oc->message_len);
        mj->rec.outcome.message_len = oc->message_len;
    }

    ngx_memcpy(mj->events + snap->saved_events,
               snap->events + snap->saved_events,
               (snap->nevents - snap->saved_events)
               * sizeof(ngx_http_llm_event_t));
    ngx_memcpy(mj->text + snap->saved_text, snap->text + snap->saved_text,
               snap->text_len - snap->saved_text);
    ngx_memcpy(mj->meta + snap->saved_meta, snap->meta + snap->saved_meta,
               snap->meta_len - snap->saved_meta);

    mj->rec.nevents = snap->nevents;
    mj->rec.text_len = snap->text_len;
    mj->rec.meta_len = snap->meta_len;

    mj->rec.state = snap->state;
    mj->rec.paused = snap->paused;
    mj->rec.updated = snap->updated;
    mj->rec.outcome.input_tokens = oc->input_tokens;
    mj->rec.outcome.output_tokens = oc->output_tokens;

    ngx_memcpy(mj->rec.outcome.finish, oc->finish, oc->finish_len);
    mj->rec.outcome.finish_len = oc->finish_len;

    ngx_memcpy(mj->rec.outcome.code, oc->code, oc->code_len);
    mj->rec.outcome.code_len = oc->code_len;

    return NGX_OK;
}


/* a slab allocation that makes room by dropping the oldest finished jobs */

static void *
ngx_http_llm_mem_alloc(ngx_http_llm_mem_t *m, size_t size)
{
    void  *p;

    for ( ;; ) {
        p = ngx_slab_alloc_locked(m->shpool, size);

        if (p || ngx_queue_empty(&m->sh->finished)) {
            return p;
        }

        ngx_http_llm_mem_expire(m, 0, 1);
    }
}


/*
 * Drop expired jobs: finished ones a ttl after they finished, running ones
 * a ttl after their last save (their worker is gone); with "force", the
 * oldest finished job, to make room.
 */

static void
ngx_http_llm_mem_expire(ngx_http_llm_mem_t *m, int64_t now, ngx_uint_t force)
{
    ngx_queue_t             *q, *queues[2];
    ngx_uint_t               i;
    ngx_http_llm_mem_job_t  *mj;

    if (force) {
        q = ngx_queue_head(&m->sh->finished);
        ngx_http_llm_mem_free(m, ngx_queue_data(q, ngx_http_llm_mem_job_t,
                                                queue));
        return;
    }

    queues[0] = &m->sh->finished;
    queues[1] = &m->sh->running;

    for (i = 0; i < 2; i++) {
        while (!ngx_queue_empty(queues[i])) {
            q = ngx_queue_head(queues[i]);
            mj = ngx_queue_data(q, ngx_http_llm_mem_job_t, queue);

            if (now < mj->expires) {
                break;
            }

            ngx_http_llm_mem_free(m, mj);
        }
    }
}


static void
ngx_http_llm_mem_free(ngx_http_llm_mem_t *m, ngx_http_llm_mem_job_t *mj)
{
    ngx_queue_remove(&mj->queue);
    ngx_rbtree_delete(&m->sh->rbtree, &mj->node);

    if (mj->events) {
        ngx_slab_free_locked(m->shpool, mj->events);
    }

    if (mj->text) {
        ngx_slab_free_locked(m->shpool, mj->text);
    }

    if (mj->meta) {
        ngx_slab_free_locked(m->shpool, mj->meta);
    }

    if (mj->pipeline_state) {
        ngx_slab_free_locked(m->shpool, mj->pipeline_state);
    }

    if (mj->message) {
        ngx_slab_free_locked(m->shpool, mj->message);
    }

    ngx_slab_free_locked(m->shpool, mj);
}


static void
ngx_http_llm_mem_rbtree_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t  **p;

    for ( ;; ) {

        /* (hash, id) order, as ngx_http_llm_mem_lookup() walks it */

        if (node->key != temp->key) {
            p = (node->key < temp->key) ? &temp->left : &temp->right;

        } else {
            p = (ngx_memcmp(((ngx_http_llm_mem_job_t *) node)->id,
                            ((ngx_http_llm_mem_job_t *) temp)->id,
                            NGX_HTTP_LLM_JOB_ID_LEN)
                 < 0) ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}
