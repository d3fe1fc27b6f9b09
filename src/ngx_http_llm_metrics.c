
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * Metrics: counters, gauges and histograms in one shared memory zone,
 * added to by every worker with atomic operations (no lock on the token
 * path), and the "llm_metrics" location that renders them as Prometheus
 * text exposition (format 0.0.4).
 *
 * Labels are bounded: a job's "location" label is its location's
 * llm_metrics_label (by default the pipeline's name or the location's
 * name), given a slot when the zone is set up; a model gets a slot the
 * first time a transfer names it, until the table is full, and "other"
 * after that; error codes are the module's own.  The rest of the module
 * calls the hooks below, one line each; a hook does nothing when the
 * configuration has no location of the module.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_pipeline.h"
#include "ngx_http_llm_store.h"


#define NGX_HTTP_LLM_M_LABELS      64      /* the last one is "other" */
#define NGX_HTTP_LLM_M_MODELS      32      /* the last one is "other" */
#define NGX_HTTP_LLM_M_NAME        64
#define NGX_HTTP_LLM_M_BUCKETS     12
#define NGX_HTTP_LLM_M_CODES       16      /* room for the codes below */
#define NGX_HTTP_LLM_M_ZONE_SIZE   (256 * 1024)

#define NGX_HTTP_LLM_M_ZONE        "llm_metrics"


typedef struct {
    ngx_atomic_t                   bucket[NGX_HTTP_LLM_M_BUCKETS + 1];
    ngx_atomic_t                   sum;         /* ms */
} ngx_http_llm_hist_t;


/* a label's or a model's name; len 0: the slot is free */
typedef struct {
    u_char                         data[NGX_HTTP_LLM_M_NAME];
    size_t                         len;
} ngx_http_llm_m_name_t;


typedef struct {
    ngx_http_llm_m_name_t          name;
    ngx_atomic_t                   running;
    ngx_atomic_t                   jobs[3];     /* completed, failed, ... */
    ngx_atomic_t                   attempts;
    ngx_atomic_t                   retries;
    ngx_atomic_t                   check_failures;
    ngx_atomic_t                   limit_refusals;
    ngx_http_llm_hist_t            ttft;
    ngx_http_llm_hist_t            duration;
} ngx_http_llm_m_label_t;


typedef struct {
    ngx_http_llm_m_name_t          name;
    ngx_atomic_t                   input_tokens;
    ngx_atomic_t                   output_tokens;
} ngx_http_llm_m_model_t;


typedef struct {
    ngx_atomic_t                   nlabels;
    ngx_atomic_t                   nmodels;
    ngx_http_llm_m_label_t         labels[NGX_HTTP_LLM_M_LABELS];
    ngx_http_llm_m_model_t         models[NGX_HTTP_LLM_M_MODELS];

    ngx_atomic_t                   streams;
    ngx_atomic_t                   resumes;
    ngx_atomic_t                   cancels;
    ngx_atomic_t                   disconnects;
    ngx_atomic_t                   abandoned;
    ngx_atomic_t                   failures[NGX_HTTP_LLM_M_CODES];
    ngx_atomic_t                   store_writes[2];
    ngx_atomic_t                   store_failures[2];
    ngx_atomic_t                   orphans;
    ngx_atomic_t                   flushes[2];  /* ok, failed */
    ngx_http_llm_hist_t            flush;
} ngx_http_llm_m_sh_t;


/* a label the configuration names, and the slot the zone gave it */
typedef struct {
    ngx_str_t                      name;
    ngx_uint_t                     slot;
} ngx_http_llm_m_conf_label_t;


/* the main configuration's: the zone and the labels */
typedef struct {
    ngx_shm_zone_t                *zone;
    ngx_array_t                    labels;      /* conf_label pointers */
    ngx_slab_pool_t               *shpool;
    ngx_http_llm_m_sh_t           *sh;
} ngx_http_llm_m_conf_t;


/*
 * The labels or the models: slots 0 to count - 1 named in order, the last
 * slot "other", named when first used.
 */
typedef struct {
    u_char                        *slots;
    size_t                         stride;
    ngx_uint_t                     size;
    ngx_atomic_t                  *count;
} ngx_http_llm_m_table_t;

#define ngx_http_llm_m_slot_name(t, i)                                       \
    ((ngx_http_llm_m_name_t *) ((t)->slots + (i) * (t)->stride))


typedef struct {
    u_char                        *pos;
    u_char                        *last;
} ngx_http_llm_m_out_t;


static ngx_int_t ngx_http_llm_metrics_init_zone(ngx_shm_zone_t *zone,
    void *data);
static size_t ngx_http_llm_metrics_cut(u_char *name, size_t len);
static void ngx_http_llm_metrics_table(ngx_http_llm_m_sh_t *sh,
    ngx_uint_t models, ngx_http_llm_m_table_t *t);
static ngx_uint_t ngx_http_llm_metrics_find(ngx_http_llm_m_table_t *t,
    u_char *name, size_t len);
static ngx_uint_t ngx_http_llm_metrics_add(ngx_http_llm_m_table_t *t,
    u_char *name, size_t len);
static ngx_uint_t ngx_http_llm_metrics_other(ngx_http_llm_m_table_t *t);
static ngx_uint_t ngx_http_llm_metrics_shown(ngx_http_llm_m_table_t *t,
    ngx_uint_t i);
static void ngx_http_llm_metrics_observe(ngx_http_llm_hist_t *h,
    const ngx_msec_t *bounds, int64_t ms);
static ngx_int_t ngx_http_llm_metrics_handler(ngx_http_request_t *r);
static void ngx_http_llm_m_head(ngx_http_llm_m_out_t *o, const char *name,
    const char *type, const char *help);
static void ngx_http_llm_m_value(ngx_http_llm_m_out_t *o, const char *name,
    const char *label, u_char *value, size_t len, const char *label2,
    const char *value2, ngx_atomic_uint_t n);
static void ngx_http_llm_m_hist(ngx_http_llm_m_out_t *o, const char *name,
    const char *label, u_char *value, size_t len, ngx_http_llm_hist_t *h,
    const ngx_msec_t *bounds);
static void ngx_http_llm_m_escaped(ngx_http_llm_m_out_t *o, u_char *p,
    size_t len);


/* the one zone of this configuration, set when it is initialised */
static ngx_http_llm_m_sh_t  *ngx_http_llm_m_sh;
static ngx_slab_pool_t      *ngx_http_llm_m_shpool;


/* histogram bounds, ms; the last bucket is +Inf */

static const ngx_msec_t  ngx_http_llm_m_ttft_bounds[] = {
    50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000, 30000, 60000, 120000
};

static const ngx_msec_t  ngx_http_llm_m_duration_bounds[] = {
    100, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000, 600000,
    1800000
};

static const ngx_msec_t  ngx_http_llm_m_flush_bounds[] = {
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000
};


/* the codes of a failed transfer; the last is "other" */

static const char  *ngx_http_llm_m_codes[] = {
    NGX_HTTP_LLM_E_STATUS,
    NGX_HTTP_LLM_E_CONNECT,
    NGX_HTTP_LLM_E_UPSTREAM,
    NGX_HTTP_LLM_E_TRUNCATED,
    NGX_HTTP_LLM_E_INVALID,
    NGX_HTTP_LLM_E_CONNECT_TMO,
    NGX_HTTP_LLM_E_FIRST_TMO,
    NGX_HTTP_LLM_E_IDLE_TMO,
    NGX_HTTP_LLM_E_TIMEOUT,
    NGX_HTTP_LLM_E_TEXT_LIMIT,
    NGX_HTTP_LLM_E_SHUTDOWN,
    NGX_HTTP_LLM_E_INTERNAL,
    "other",
    NULL
};

static const char  *ngx_http_llm_m_states[] = {
    "completed", "failed", "cancelled"
};

static const char  *ngx_http_llm_m_stores[] = {
    "memory", "redis"
};


/* a series with one value: where it is in the zone, a label or a model */
typedef struct {
    const char                    *name;
    const char                    *type;
    const char                    *help;
    size_t                         offset;
} ngx_http_llm_m_series_t;


static ngx_http_llm_m_series_t  ngx_http_llm_m_global_series[] = {

    { "llm_streams_open", "gauge", "Event streams open now.",
      offsetof(ngx_http_llm_m_sh_t, streams) },

    { "llm_resumes_total", "counter",
      "Streams that followed a job they did not start.",
      offsetof(ngx_http_llm_m_sh_t, resumes) },

    { "llm_cancels_total", "counter",
      "Jobs cancelled on request (DELETE).",
      offsetof(ngx_http_llm_m_sh_t, cancels) },

    { "llm_client_disconnects_total", "counter",
      "Requests whose client left a running job.",
      offsetof(ngx_http_llm_m_sh_t, disconnects) },

    { "llm_disconnect_cancels_total", "counter",
      "Jobs ended by llm_on_disconnect.",
      offsetof(ngx_http_llm_m_sh_t, abandoned) },

    { "llm_store_orphans_total", "counter",
      "Jobs freed before Redis had them, written later.",
      offsetof(ngx_http_llm_m_sh_t, orphans) },

    { NULL, NULL, NULL, 0 }
};


static ngx_http_llm_m_series_t  ngx_http_llm_m_label_series[] = {

    { "llm_jobs_running", "gauge", "Jobs running now, by location.",
      offsetof(ngx_http_llm_m_label_t, running) },

    { "llm_pipeline_step_attempts_total", "counter",
      "Pipeline steps started, retries included.",
      offsetof(ngx_http_llm_m_label_t, attempts) },

    { "llm_pipeline_retries_total", "counter",
      "Pipeline steps started again after a failure.",
      offsetof(ngx_http_llm_m_label_t, retries) },

    { "llm_pipeline_check_failures_total", "counter",
      "Pipeline step checks that failed.",
      offsetof(ngx_http_llm_m_label_t, check_failures) },

    { "llm_limit_refusals_total", "counter",
      "Jobs refused by a job limit of their location.",
      offsetof(ngx_http_llm_m_label_t, limit_refusals) },

    { NULL, NULL, NULL, 0 }
};


static ngx_http_llm_m_series_t  ngx_http_llm_m_model_series[] = {

    { "llm_input_tokens_total", "counter",
      "Prompt tokens the upstream reported, by model.",
      offsetof(ngx_http_llm_m_model_t, input_tokens) },

    { "llm_output_tokens_total", "counter",
      "Generated tokens the upstream reported, by model.",
      offsetof(ngx_http_llm_m_model_t, output_tokens) },

    { NULL, NULL, NULL, 0 }
};


/*
 * A location of the module: its label registered, the zone added.  The
 * label is llm_metrics_label, else the pipeline's name, else the
 * location's.
 */

char *
ngx_http_llm_metrics_merge(ngx_conf_t *cf, ngx_http_llm_loc_conf_t *conf)
{
    ngx_str_t                     name;
    ngx_uint_t                    i;
    ngx_http_llm_m_conf_t        *mc;
    ngx_http_core_loc_conf_t     *clcf;
    ngx_http_llm_m_conf_label_t  *lb, **lbs;

    mc = ngx_http_llm_metrics_conf(cf);
    if (mc == NULL) {
        return NGX_CONF_ERROR;
    }

    if (conf->metrics_label.len) {
        name = conf->metrics_label;

    } else if (conf->pipeline) {
        name = conf->pipeline->name;

    } else {
        clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
        name = clcf->name;
    }

    name.len = ngx_http_llm_metrics_cut(name.data, name.len);

    lbs = mc->labels.elts;

    for (i = 0; i < mc->labels.nelts; i++) {
        if (lbs[i]->name.len == name.len
            && ngx_strncmp(lbs[i]->name.data, name.data, name.len) == 0)
        {
            conf->metrics = lbs[i];
            return NGX_CONF_OK;
        }
    }

    lb = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_m_conf_label_t));
    if (lb == NULL) {
        return NGX_CONF_ERROR;
    }

    lb->name = name;

    lbs = ngx_array_push(&mc->labels);
    if (lbs == NULL) {
        return NGX_CONF_ERROR;
    }

    *lbs = lb;
    conf->metrics = lb;

    return NGX_CONF_OK;
}


/* the zone, added once per configuration; NULL on failure */

void *
ngx_http_llm_metrics_conf(ngx_conf_t *cf)
{
    ngx_str_t                  name;
    ngx_http_llm_m_conf_t     *mc;
    ngx_http_llm_main_conf_t  *lmcf;

    lmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_llm_module);

    if (lmcf->metrics) {
        return lmcf->metrics;
    }

    mc = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_m_conf_t));
    if (mc == NULL) {
        return NULL;
    }

    if (ngx_array_init(&mc->labels, cf->pool, 8,
                       sizeof(ngx_http_llm_m_conf_label_t *))
        != NGX_OK)
    {
        return NULL;
    }

    ngx_str_set(&name, NGX_HTTP_LLM_M_ZONE);

    mc->zone = ngx_shared_memory_add(cf, &name, NGX_HTTP_LLM_M_ZONE_SIZE,
                                     &ngx_http_llm_module);
    if (mc->zone == NULL) {
        return NULL;
    }

    if (mc->zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "the shared memory zone \"%V\" is the module's "
                           "metrics zone", &name);
        return NULL;
    }

    mc->zone->init = ngx_http_llm_metrics_init_zone;
    mc->zone->data = mc;

    lmcf->metrics = mc;

    return mc;
}


/*
 * In the master, before the workers start: a zone kept over a reload
 * keeps its counts, and the labels of the new configuration get the
 * slots they had, or new ones.
 */

static ngx_int_t
ngx_http_llm_metrics_init_zone(ngx_shm_zone_t *zone, void *data)
{
    ngx_http_llm_m_conf_t *old = data;

    ngx_uint_t                    i;
    ngx_http_llm_m_table_t        t;
    ngx_http_llm_m_conf_t        *mc;
    ngx_http_llm_m_conf_label_t **lbs;

    mc = zone->data;

    if (old) {
        mc->shpool = old->shpool;
        mc->sh = old->sh;

    } else {
        mc->shpool = (ngx_slab_pool_t *) zone->shm.addr;

        if (zone->shm.exists) {
            mc->sh = mc->shpool->data;

        } else {
            mc->sh = ngx_slab_calloc(mc->shpool,
                                     sizeof(ngx_http_llm_m_sh_t));
            if (mc->sh == NULL) {
                return NGX_ERROR;
            }

            mc->shpool->data = mc->sh;
        }
    }

    lbs = mc->labels.elts;
    ngx_http_llm_metrics_table(mc->sh, 0, &t);

    ngx_shmtx_lock(&mc->shpool->mutex);

    for (i = 0; i < mc->labels.nelts; i++) {
        lbs[i]->slot = ngx_http_llm_metrics_add(&t, lbs[i]->name.data,
                                                lbs[i]->name.len);
    }

    ngx_shmtx_unlock(&mc->shpool->mutex);

    ngx_http_llm_m_sh = mc->sh;
    ngx_http_llm_m_shpool = mc->shpool;

    return NGX_OK;
}


/* a name's length within a slot, cut on a UTF-8 character */

static size_t
ngx_http_llm_metrics_cut(u_char *name, size_t len)
{
    if (len <= NGX_HTTP_LLM_M_NAME) {
        return len;
    }

    len = NGX_HTTP_LLM_M_NAME;

    while (len && (name[len] & 0xc0) == 0x80) {
        len--;
    }

    return len;
}


static void
ngx_http_llm_metrics_table(ngx_http_llm_m_sh_t *sh, ngx_uint_t models,
    ngx_http_llm_m_table_t *t)
{
    if (models) {
        t->slots = (u_char *) sh->models;
        t->stride = sizeof(ngx_http_llm_m_model_t);
        t->size = NGX_HTTP_LLM_M_MODELS;
        t->count = &sh->nmodels;

    } else {
        t->slots = (u_char *) sh->labels;
        t->stride = sizeof(ngx_http_llm_m_label_t);
        t->size = NGX_HTTP_LLM_M_LABELS;
        t->count = &sh->nlabels;
    }
}


/* a name's slot, or the table's size; "other" and "" are "other" */

static ngx_uint_t
ngx_http_llm_metrics_find(ngx_http_llm_m_table_t *t, u_char *name,
    size_t len)
{
    ngx_uint_t              i, n;
    ngx_http_llm_m_name_t  *nm;

    if (len == 0 || ngx_http_llm_str_is(name, len, "other")) {
        return ngx_http_llm_metrics_other(t);
    }

    n = ngx_min(*t->count, t->size - 1);

    /* the names are written before the count that shows them */
    ngx_memory_barrier();

    for (i = 0; i < n; i++) {
        nm = ngx_http_llm_m_slot_name(t, i);

        if (nm->len == len && ngx_memcmp(nm->data, name, len) == 0) {
            return i;
        }
    }

    return t->size;
}


/* under the zone's mutex: a slot for the name, "other" when full */

static ngx_uint_t
ngx_http_llm_metrics_add(ngx_http_llm_m_table_t *t, u_char *name,
    size_t len)
{
    ngx_uint_t              i;
    ngx_http_llm_m_name_t  *nm;

    len = ngx_http_llm_metrics_cut(name, len);

    i = ngx_http_llm_metrics_find(t, name, len);

    if (i < t->size) {
        return i;
    }

    i = *t->count;

    if (i >= t->size - 1) {
        return ngx_http_llm_metrics_other(t);
    }

    nm = ngx_http_llm_m_slot_name(t, i);
    ngx_memcpy(nm->data, name, len);
    nm->len = len;

    ngx_memory_barrier();
    (*t->count)++;

    return i;
}


/*
 * The last slot, named when it is first used; by several workers at once
 * at worst, who write the same bytes.
 */

static ngx_uint_t
ngx_http_llm_metrics_other(ngx_http_llm_m_table_t *t)
{
    ngx_http_llm_m_name_t  *nm;

    nm = ngx_http_llm_m_slot_name(t, t->size - 1);

    if (nm->len == 0) {
        ngx_memcpy(nm->data, "other", sizeof("other") - 1);
        ngx_memory_barrier();
        nm->len = sizeof("other") - 1;
    }

    return t->size - 1;
}


/* whether slot i has a name to be shown with */

static ngx_uint_t
ngx_http_llm_metrics_shown(ngx_http_llm_m_table_t *t, ngx_uint_t i)
{
    ngx_uint_t  n;

    n = *t->count;
    ngx_memory_barrier();

    return (i < n && i < t->size - 1)
           || (i == t->size - 1 && ngx_http_llm_m_slot_name(t, i)->len);
}


/* the slot of a location's label, for the jobs it starts */

ngx_uint_t
ngx_http_llm_metrics_label(ngx_http_llm_loc_conf_t *llcf)
{
    ngx_http_llm_m_conf_label_t  *lb;

    lb = llcf->metrics;

    return lb ? lb->slot : NGX_HTTP_LLM_M_LABELS;
}


/* the slot of a model, for a transfer's tokens; on the event loop */

ngx_uint_t
ngx_http_llm_metrics_model(ngx_str_t *model)
{
    ngx_uint_t              i;
    ngx_http_llm_m_table_t  t;

    if (ngx_http_llm_m_sh == NULL) {
        return NGX_HTTP_LLM_M_MODELS;
    }

    ngx_http_llm_metrics_table(ngx_http_llm_m_sh, 1, &t);

    i = ngx_http_llm_metrics_find(&t, model->data,
                                  ngx_http_llm_metrics_cut(model->data,
                                                           model->len));

    if (i < NGX_HTTP_LLM_M_MODELS) {
        return i;
    }

    /* a new model: once per model name, not per token */

    ngx_shmtx_lock(&ngx_http_llm_m_shpool->mutex);
    i = ngx_http_llm_metrics_add(&t, model->data, model->len);
    ngx_shmtx_unlock(&ngx_http_llm_m_shpool->mutex);

    return i;
}


static void
ngx_http_llm_metrics_observe(ngx_http_llm_hist_t *h,
    const ngx_msec_t *bounds, int64_t ms)
{
    ngx_uint_t  i;

    if (ms < 0) {
        ms = 0;
    }

    for (i = 0; i < NGX_HTTP_LLM_M_BUCKETS; i++) {
        if ((ngx_msec_t) ms <= bounds[i]) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&h->bucket[i], 1);
    (void) ngx_atomic_fetch_add(&h->sum, (ngx_atomic_int_t) ms);
}


/* a job that this worker runs has started */

void
ngx_http_llm_metrics_job_start(ngx_http_llm_job_t *job,
    ngx_http_llm_job_opts_t *opts)
{
    if (ngx_http_llm_m_sh == NULL || opts->label >= NGX_HTTP_LLM_M_LABELS) {
        return;
    }

    job->stats.label = opts->label;
    job->stats.counted = 1;

    (void) ngx_atomic_fetch_add(&ngx_http_llm_m_sh->labels[opts->label]
                                .running, 1);
}


/* a delta: the first one gives the time to first token */

void
ngx_http_llm_metrics_delta(ngx_http_llm_job_t *job)
{
    if (job->stats.first) {
        return;
    }

    job->stats.first = ngx_http_llm_now_ms();

    if (job->stats.counted) {
        ngx_http_llm_metrics_observe(
                      &ngx_http_llm_m_sh->labels[job->stats.label].ttft,
                      ngx_http_llm_m_ttft_bounds,
                      job->stats.first - job->created);
    }
}


/* an engine job's output: its last batch has the upstream's status */

void
ngx_http_llm_metrics_output(ngx_http_llm_job_t *job,
    ngx_http_llm_output_t *out)
{
    if (out->done) {
        job->stats.status = out->status;
    }
}


/*
 * A pipeline's event: attempts, retries, checks that failed, and how far
 * the run got (the number of the last step started).  The "step" events,
 * which carry the outputs, are not read again.
 */

void
ngx_http_llm_metrics_run_event(ngx_http_llm_job_t *job,
    ngx_http_llm_event_type_e type, u_char *payload, size_t len)
{
    json_t                  *o;
    json_int_t               index;
    ngx_http_llm_m_label_t  *lb;

    if (type != NGX_HTTP_LLM_EV_STEP_START && type != NGX_HTTP_LLM_EV_CHECK)
    {
        return;
    }

    o = json_loadb((char *) payload, len, 0, NULL);

    if (type == NGX_HTTP_LLM_EV_STEP_START) {
        job->stats.attempts++;

        index = json_integer_value(json_object_get(o, "index"));

        if (index > 0) {
            job->stats.steps = (ngx_uint_t) index;
        }
    }

    if (o == NULL || !job->stats.counted) {
        json_decref(o);
        return;
    }

    lb = &ngx_http_llm_m_sh->labels[job->stats.label];

    if (type == NGX_HTTP_LLM_EV_STEP_START) {
        (void) ngx_atomic_fetch_add(&lb->attempts, 1);

        if (json_integer_value(json_object_get(o, "attempt")) > 1) {
            (void) ngx_atomic_fetch_add(&lb->retries, 1);
        }

    } else if (json_is_false(json_object_get(o, "passed"))) {
        (void) ngx_atomic_fetch_add(&lb->check_failures, 1);
    }

    json_decref(o);
}


/* the disconnect policy is about to end the job */

void
ngx_http_llm_metrics_abandon(ngx_http_llm_job_t *job)
{
    job->stats.abandoned = 1;
}


/* a job that this worker ran is over */

void
ngx_http_llm_metrics_job_end(ngx_http_llm_job_t *job)
{
    ngx_http_llm_m_sh_t     *sh;
    ngx_http_llm_m_label_t  *lb;

    if (!job->stats.counted || job->state == NGX_HTTP_LLM_RUNNING) {
        return;
    }

    job->stats.counted = 0;

    sh = ngx_http_llm_m_sh;
    lb = &sh->labels[job->stats.label];

    (void) ngx_atomic_fetch_add(&lb->running, -1);
    (void) ngx_atomic_fetch_add(&lb->jobs[job->state - 1], 1);

    ngx_http_llm_metrics_observe(&lb->duration,
                                 ngx_http_llm_m_duration_bounds,
                                 job->finished - job->created);

    if (job->state == NGX_HTTP_LLM_CANCELLED) {
        (void) ngx_atomic_fetch_add(job->stats.abandoned ? &sh->abandoned
                                                         : &sh->cancels, 1);
    }
}


/* on the loop, a transfer's last output: its tokens, its failure */

void
ngx_http_llm_metrics_xfer(ngx_http_llm_spec_t *spec,
    ngx_http_llm_output_t *out)
{
    ngx_uint_t               i;
    ngx_http_llm_m_model_t  *m;

    if (!out->done || ngx_http_llm_m_sh == NULL) {
        return;
    }

    if (spec->model < NGX_HTTP_LLM_M_MODELS) {
        m = &ngx_http_llm_m_sh->models[spec->model];

        if (out->outcome.input_tokens > 0) {
            (void) ngx_atomic_fetch_add(&m->input_tokens,
                                        out->outcome.input_tokens);
        }

        if (out->outcome.output_tokens > 0) {
            (void) ngx_atomic_fetch_add(&m->output_tokens,
                                        out->outcome.output_tokens);
        }
    }

    /* a transfer let go of is no failure of the upstream */

    if (!out->failed
        || ngx_http_llm_str_is(out->outcome.code, out->outcome.code_len,
                               NGX_HTTP_LLM_E_CANCELLED))
    {
        return;
    }

    for (i = 0; ngx_http_llm_m_codes[i + 1]; i++) {
        if (out->outcome.code_len == ngx_strlen(ngx_http_llm_m_codes[i])
            && ngx_strncmp(out->outcome.code, ngx_http_llm_m_codes[i],
                           out->outcome.code_len) == 0)
        {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&ngx_http_llm_m_sh->failures[i], 1);
}


void
ngx_http_llm_metrics_stream_open(void)
{
    if (ngx_http_llm_m_sh) {
        (void) ngx_atomic_fetch_add(&ngx_http_llm_m_sh->streams, 1);
    }
}


/* a stream follows a job it did not start */

void
ngx_http_llm_metrics_resume(ngx_http_llm_ctx_t *ctx)
{
    ctx->resumed = 1;

    if (ngx_http_llm_m_sh) {
        (void) ngx_atomic_fetch_add(&ngx_http_llm_m_sh->resumes, 1);
    }
}


/*
 * A request of the module is freed: a stream closes; one that leaves a
 * running job was left by its client.
 */

void
ngx_http_llm_metrics_request_end(ngx_http_llm_ctx_t *ctx)
{
    if (ngx_http_llm_m_sh == NULL) {
        return;
    }

    if (ctx->streaming) {
        (void) ngx_atomic_fetch_add(&ngx_http_llm_m_sh->streams, -1);
    }

    if (ctx->job && ctx->job->state == NGX_HTTP_LLM_RUNNING) {
        (void) ngx_atomic_fetch_add(&ngx_http_llm_m_sh->disconnects, 1);
    }
}


/* a job's save that a store wrote, or could not */

void
ngx_http_llm_metrics_store_write(ngx_uint_t store, ngx_uint_t ok)
{
    if (ngx_http_llm_m_sh) {
        (void) ngx_atomic_fetch_add(ok ? &ngx_http_llm_m_sh->store_writes[store]
                                       : &ngx_http_llm_m_sh
                                         ->store_failures[store], 1);
    }
}


/* a Redis batch is back, after "ms" */

void
ngx_http_llm_metrics_flush(ngx_uint_t ok, ngx_msec_t ms)
{
    if (ngx_http_llm_m_sh) {
        (void) ngx_atomic_fetch_add(&ngx_http_llm_m_sh->flushes[ok ? 0 : 1],
                                    1);
        ngx_http_llm_metrics_observe(&ngx_http_llm_m_sh->flush,
                                     ngx_http_llm_m_flush_bounds, ms);
    }
}


/* a released job's unsaved part kept for a later Redis write */

void
ngx_http_llm_metrics_orphan(void)
{
    if (ngx_http_llm_m_sh) {
        (void) ngx_atomic_fetch_add(&ngx_http_llm_m_sh->orphans, 1);
    }
}


/* a job that llm_limit_jobs refused to start, counted by its location */

void
ngx_http_llm_metrics_limit_refused(ngx_http_request_t *r)
{
    ngx_uint_t  label;

    label = ngx_http_llm_metrics_label(ngx_http_get_module_loc_conf(r,
                                                     ngx_http_llm_module));

    if (ngx_http_llm_m_sh && label < NGX_HTTP_LLM_M_LABELS) {
        (void) ngx_atomic_fetch_add(&ngx_http_llm_m_sh->labels[label]
                                    .limit_refusals, 1);
    }
}


/* the jobs running in every worker, for llm_status; -1: no zone */

ngx_int_t
ngx_http_llm_metrics_running(void)
{
    ngx_int_t   running;
    ngx_uint_t  i;

    if (ngx_http_llm_m_sh == NULL) {
        return -1;
    }

    running = 0;

    for (i = 0; i < NGX_HTTP_LLM_M_LABELS; i++) {
        running += (ngx_atomic_int_t) ngx_http_llm_m_sh->labels[i].running;
    }

    return running;
}


/* llm_metrics; */

char *
ngx_http_llm_metrics_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_http_core_loc_conf_t  *clcf;

    if (llcf->serve) {
        return llcf->serve == NGX_HTTP_LLM_SERVE_METRICS
               ? "is duplicate"
               : "cannot be used together with \"llm_status\"";
    }

    if (ngx_http_llm_metrics_conf(cf) == NULL) {
        return NGX_CONF_ERROR;
    }

    llcf->serve = NGX_HTTP_LLM_SERVE_METRICS;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_llm_metrics_handler;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_llm_metrics_handler(ngx_http_request_t *r)
{
    size_t                    size;
    ngx_int_t                 rc;
    ngx_buf_t                *b;
    ngx_uint_t                i, j;
    ngx_chain_t               out;
    ngx_atomic_t             *a;
    ngx_http_llm_m_sh_t      *sh;
    ngx_http_llm_m_out_t      o;
    ngx_http_llm_m_label_t   *lb;
    ngx_http_llm_m_model_t   *m;
    ngx_http_llm_m_table_t    lt, mt;
    ngx_http_llm_m_series_t  *se;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    sh = ngx_http_llm_m_sh;

    ngx_http_llm_metrics_table(sh, 0, &lt);
    ngx_http_llm_metrics_table(sh, 1, &mt);

    /* every line of every slot shown ("other" too), names escaped */
    size = 16384
           + (ngx_min(*lt.count, lt.size - 1) + 1) * 48
             * (2 * NGX_HTTP_LLM_M_NAME + 128)
           + (ngx_min(*mt.count, mt.size - 1) + 1) * 2
             * (2 * NGX_HTTP_LLM_M_NAME + 128);

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    o.pos = b->pos;
    o.last = b->end;

    for (se = ngx_http_llm_m_global_series; se->name; se++) {
        a = (ngx_atomic_t *) ((u_char *) sh + se->offset);
        ngx_http_llm_m_head(&o, se->name, se->type, se->help);
        ngx_http_llm_m_value(&o, se->name, NULL, NULL, 0, NULL, NULL, *a);
    }

    for (se = ngx_http_llm_m_label_series; se->name; se++) {
        ngx_http_llm_m_head(&o, se->name, se->type, se->help);

        for (i = 0; i < NGX_HTTP_LLM_M_LABELS; i++) {
            if (!ngx_http_llm_metrics_shown(&lt, i)) {
                continue;
            }

            lb = &sh->labels[i];
            a = (ngx_atomic_t *) ((u_char *) lb + se->offset);
            ngx_http_llm_m_value(&o, se->name, "location", lb->name.data,
                                 lb->name.len, NULL, NULL, *a);
        }
    }

    for (se = ngx_http_llm_m_model_series; se->name; se++) {
        ngx_http_llm_m_head(&o, se->name, se->type, se->help);

        for (i = 0; i < NGX_HTTP_LLM_M_MODELS; i++) {
            if (!ngx_http_llm_metrics_shown(&mt, i)) {
                continue;
            }

            m = &sh->models[i];
            a = (ngx_atomic_t *) ((u_char *) m + se->offset);
            ngx_http_llm_m_value(&o, se->name, "model", m->name.data,
                                 m->name.len, NULL, NULL, *a);
        }
    }

    ngx_http_llm_m_head(&o, "llm_jobs_total", "counter",
                        "Jobs ended, by location and state.");

    for (i = 0; i < NGX_HTTP_LLM_M_LABELS; i++) {
        if (!ngx_http_llm_metrics_shown(&lt, i)) {
            continue;
        }

        lb = &sh->labels[i];

        for (j = 0; j < 3; j++) {
            ngx_http_llm_m_value(&o, "llm_jobs_total", "location",
                                 lb->name.data, lb->name.len, "state",
                                 ngx_http_llm_m_states[j], lb->jobs[j]);
        }
    }

    ngx_http_llm_m_head(&o, "llm_time_to_first_token_seconds", "histogram",
                        "Time from a job's start to its first text.");

    for (i = 0; i < NGX_HTTP_LLM_M_LABELS; i++) {
        if (!ngx_http_llm_metrics_shown(&lt, i)) {
            continue;
        }

        lb = &sh->labels[i];
        ngx_http_llm_m_hist(&o, "llm_time_to_first_token_seconds",
                            "location", lb->name.data, lb->name.len, &lb->ttft,
                            ngx_http_llm_m_ttft_bounds);
    }

    ngx_http_llm_m_head(&o, "llm_job_duration_seconds", "histogram",
                        "Time from a job's start to its end.");

    for (i = 0; i < NGX_HTTP_LLM_M_LABELS; i++) {
        if (!ngx_http_llm_metrics_shown(&lt, i)) {
            continue;
        }

        lb = &sh->labels[i];
        ngx_http_llm_m_hist(&o, "llm_job_duration_seconds", "location",
                            lb->name.data, lb->name.len, &lb->duration,
                            ngx_http_llm_m_duration_bounds);
    }

    ngx_http_llm_m_head(&o, "llm_upstream_failures_total", "counter",
                        "Upstream requests that failed, by error code.");

    for (i = 0; ngx_http_llm_m_codes[i]; i++) {
        ngx_http_llm_m_value(&o, "llm_upstream_failures_total", "code",
                             (u_char *) ngx_http_llm_m_codes[i],
                             ngx_strlen(ngx_http_llm_m_codes[i]), NULL, NULL,
                             sh->failures[i]);
    }

    ngx_http_llm_m_head(&o, "llm_store_writes_total", "counter",
                        "Job writes a store made, by store.");

    for (i = 0; i < 2; i++) {
        ngx_http_llm_m_value(&o, "llm_store_writes_total", "store",
                             (u_char *) ngx_http_llm_m_stores[i],
                             ngx_strlen(ngx_http_llm_m_stores[i]), NULL, NULL,
                             sh->store_writes[i]);
    }

    ngx_http_llm_m_head(&o, "llm_store_write_failures_total", "counter",
                        "Job writes a store could not make, by store.");

    for (i = 0; i < 2; i++) {
        ngx_http_llm_m_value(&o, "llm_store_write_failures_total", "store",
                             (u_char *) ngx_http_llm_m_stores[i],
                             ngx_strlen(ngx_http_llm_m_stores[i]), NULL, NULL,
                             sh->store_failures[i]);
    }

    ngx_http_llm_m_head(&o, "llm_store_flushes_total", "counter",
                        "Batches sent to Redis, by result.");
    ngx_http_llm_m_value(&o, "llm_store_flushes_total", "result",
                         (u_char *) "ok", 2, NULL, NULL, sh->flushes[0]);
    ngx_http_llm_m_value(&o, "llm_store_flushes_total", "result",
                         (u_char *) "failed", 6, NULL, NULL, sh->flushes[1]);

    ngx_http_llm_m_head(&o, "llm_store_flush_seconds", "histogram",
                        "Time a batch took to be written to Redis.");
    ngx_http_llm_m_hist(&o, "llm_store_flush_seconds", NULL, NULL, 0,
                        &sh->flush, ngx_http_llm_m_flush_bounds);

    b->last = o.pos;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type, "text/plain; version=0.0.4");
    r->headers_out.content_type_len = sizeof("text/plain") - 1;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static void
ngx_http_llm_m_head(ngx_http_llm_m_out_t *o, const char *name,
    const char *type, const char *help)
{
    o->pos = ngx_slprintf(o->pos, o->last, "# HELP %s %s\n# TYPE %s %s\n",
                          name, help, name, type);
}


/* name{label="value",label2="value2"} n */

static void
ngx_http_llm_m_value(ngx_http_llm_m_out_t *o, const char *name,
    const char *label, u_char *value, size_t len, const char *label2,
    const char *value2, ngx_atomic_uint_t n)
{
    o->pos = ngx_slprintf(o->pos, o->last, "%s", name);

    if (label) {
        o->pos = ngx_slprintf(o->pos, o->last, "{%s=\"", label);
        ngx_http_llm_m_escaped(o, value, len);
        o->pos = ngx_slprintf(o->pos, o->last, "\"");

        if (label2) {
            o->pos = ngx_slprintf(o->pos, o->last, ",%s=\"%s\"", label2,
                                  value2);
        }

        o->pos = ngx_slprintf(o->pos, o->last, "}");
    }

    o->pos = ngx_slprintf(o->pos, o->last, " %uA\n", n);
}


/* the buckets cumulated; the count is the +Inf bucket's */

static void
ngx_http_llm_m_hist(ngx_http_llm_m_out_t *o, const char *name,
    const char *label, u_char *value, size_t len, ngx_http_llm_hist_t *h,
    const ngx_msec_t *bounds)
{
    u_char             le[32], *p;
    ngx_uint_t         i;
    ngx_atomic_uint_t  n, sum;

    n = 0;
    sum = h->sum;

    for (i = 0; i <= NGX_HTTP_LLM_M_BUCKETS; i++) {
        n += h->bucket[i];

        if (i < NGX_HTTP_LLM_M_BUCKETS) {
            /* seconds, as short as they go: 0.05, 1, 2.5 */
            p = ngx_sprintf(le, "%M.%03M", bounds[i] / 1000,
                            bounds[i] % 1000);

            while (p[-1] == '0') {
                p--;
            }

            if (p[-1] == '.') {
                p--;
            }

            *p = '\0';

        } else {
            *ngx_cpymem(le, "+Inf", 4) = '\0';
        }

        o->pos = ngx_slprintf(o->pos, o->last, "%s_bucket{", name);

        if (label) {
            o->pos = ngx_slprintf(o->pos, o->last, "%s=\"", label);
            ngx_http_llm_m_escaped(o, value, len);
            o->pos = ngx_slprintf(o->pos, o->last, "\",");
        }

        o->pos = ngx_slprintf(o->pos, o->last, "le=\"%s\"} %uA\n", le, n);
    }

    o->pos = ngx_slprintf(o->pos, o->last, "%s_sum", name);

    if (label) {
        o->pos = ngx_slprintf(o->pos, o->last, "{%s=\"", label);
        ngx_http_llm_m_escaped(o, value, len);
        o->pos = ngx_slprintf(o->pos, o->last, "\"}");
    }

    o->pos = ngx_slprintf(o->pos, o->last, " %uA.%03uA\n", sum / 1000,
                          sum % 1000);

    o->pos = ngx_slprintf(o->pos, o->last, "%s_count", name);

    if (label) {
        o->pos = ngx_slprintf(o->pos, o->last, "{%s=\"", label);
        ngx_http_llm_m_escaped(o, value, len);
        o->pos = ngx_slprintf(o->pos, o->last, "\"}");
    }

    o->pos = ngx_slprintf(o->pos, o->last, " %uA\n", n);
}


/* a label value: backslash, double quote and line feed escaped */

static void
ngx_http_llm_m_escaped(ngx_http_llm_m_out_t *o, u_char *p, size_t len)
{
    u_char  *last;

    for (last = p + len; p < last && o->pos + 2 <= o->last; p++) {

        if (*p == '\\' || *p == '"') {
            *o->pos++ = '\\';
            *o->pos++ = *p;

        } else if (*p == '\n') {
            *o->pos++ = '\\';
            *o->pos++ = 'n';

        } else {
            *o->pos++ = *p;
        }
    }
}
