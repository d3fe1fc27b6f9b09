
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * llm_status: the module's health as JSON, for load balancers and
 * orchestrators.  The location's store is asked for a job that does not
 * exist (a read that writes nothing): an answer, found or not, shows it
 * reachable; a store that cannot answer makes the status 503.  With it
 * go the thread pool, the jobs running and the streams open in every
 * worker (from the metrics zone) and the use of the module's zones.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_store.h"


/* a well-formed id that no job has: ids are 128 random bits */
#define NGX_HTTP_LLM_PROBE_ID  "llm-status-probe------"


typedef struct {
    ngx_http_request_t            *request;
    ngx_pool_cleanup_t            *cln;
} ngx_http_llm_probe_t;


static ngx_int_t ngx_http_llm_status_handler(ngx_http_request_t *r);
static void ngx_http_llm_status_cleanup(void *data);
static void ngx_http_llm_status_probed(void *data, ngx_int_t rc,
    ngx_http_llm_record_t *rec);
static ngx_int_t ngx_http_llm_status_send(ngx_http_request_t *r,
    ngx_uint_t reachable);
static json_t *ngx_http_llm_status_zones(void);


/* the probe is answered at once (the memory store), inside the handler */
static ngx_uint_t  ngx_http_llm_probing;


/* llm_status; */

char *
ngx_http_llm_status_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_http_core_loc_conf_t  *clcf;

    if (llcf->serve) {
        return llcf->serve == NGX_HTTP_LLM_SERVE_STATUS
               ? "is duplicate"
               : "cannot be used together with \"llm_metrics\"";
    }

    /* the jobs and streams of every worker are the metrics' */

    if (ngx_http_llm_metrics_conf(cf) == NULL) {
        return NGX_CONF_ERROR;
    }

    llcf->serve = NGX_HTTP_LLM_SERVE_STATUS;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_llm_status_handler;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_llm_status_handler(ngx_http_request_t *r)
{
    ngx_int_t                 rc;
    ngx_pool_cleanup_t       *cln;
    ngx_http_llm_probe_t     *pr;
    ngx_http_llm_loc_conf_t  *llcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    /* the answer may come after the request has gone: then it frees pr */

    pr = ngx_alloc(sizeof(ngx_http_llm_probe_t), r->connection->log);
    if (pr == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        ngx_free(pr);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    pr->request = r;
    pr->cln = cln;
    cln->handler = ngx_http_llm_status_cleanup;
    cln->data = pr;

    r->main->count++;

    ngx_http_llm_probing = 1;

    rc = llcf->store->ops->fetch(llcf->store,
                                 (u_char *) NGX_HTTP_LLM_PROBE_ID, 0, 0, 0,
                                 ngx_http_llm_status_probed, pr);

    ngx_http_llm_probing = 0;

    if (rc != NGX_OK) {
        /* no answer will come */
        cln->handler = NULL;
        ngx_free(pr);
        ngx_http_finalize_request(r, ngx_http_llm_status_send(r, 0));
    }

    return NGX_DONE;
}


static void
ngx_http_llm_status_cleanup(void *data)
{
    ngx_http_llm_probe_t *pr = data;

    pr->request = NULL;
}


static void
ngx_http_llm_status_probed(void *data, ngx_int_t rc,
    ngx_http_llm_record_t *rec)
{
    ngx_http_llm_probe_t *pr = data;

    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = pr->request;

    if (r == NULL) {
        ngx_free(pr);
        return;
    }

    pr->cln->handler = NULL;
    ngx_free(pr);

    c = r->connection;

    /* found, not found, or corrupt: the store answered */

    ngx_http_finalize_request(r, ngx_http_llm_status_send(r,
                                                          rc != NGX_ERROR));

    /*
     * Inside the handler, the request must not be closed before it
     * returns: nginx runs the posted requests after it.
     */

    if (!ngx_http_llm_probing) {
        ngx_http_run_posted_requests(c);
    }
}


static ngx_int_t
ngx_http_llm_status_send(ngx_http_request_t *r, ngx_uint_t reachable)
{
    json_t                   *o, *store, *pool;
    ngx_int_t                 running;
    ngx_uint_t                healthy, status;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    store = json_pack("{sssb}", "type", llcf->store->ops->name,
                      "reachable", (int) reachable);

    /* the pool this worker's engine would run on */
    pool = json_pack("{ss%sb}",
                     "name", llcf->thread_pool_name.data,
                     llcf->thread_pool_name.len,
                     "ok", ngx_thread_pool_get((ngx_cycle_t *) ngx_cycle,
                                               &llcf->thread_pool_name)
                           != NULL);

    healthy = reachable && json_is_true(json_object_get(pool, "ok"));
    status = healthy ? NGX_HTTP_OK : NGX_HTTP_SERVICE_UNAVAILABLE;

    running = ngx_http_llm_metrics_running();

    o = json_pack("{sssosososo}",
                  "status", healthy ? "ok" : "unavailable",
                  "store", store,
                  "thread_pool", pool,
                  "jobs_running", json_integer(running),
                  "zones", ngx_http_llm_status_zones());

    return ngx_http_llm_send_json(r, status, o);
}


/* the module's shared memory zones: size and pages in use */

static json_t *
ngx_http_llm_status_zones(void)
{
    size_t            size, used;
    json_t           *a;
    ngx_uint_t        i;
    ngx_shm_zone_t   *zone;
    ngx_slab_pool_t  *shpool;
    ngx_list_part_t  *part;

    a = json_array();
    if (a == NULL) {
        return NULL;
    }

    part = (ngx_list_part_t *) &ngx_cycle->shared_memory.part;
    zone = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            zone = part->elts;
            i = 0;
        }

        if (zone[i].tag != &ngx_http_llm_module) {
            continue;
        }

        shpool = (ngx_slab_pool_t *) zone[i].shm.addr;
        size = zone[i].shm.size;

        ngx_shmtx_lock(&shpool->mutex);
        used = (size_t) (shpool->end - shpool->start)
               - shpool->pfree * ngx_pagesize;
        ngx_shmtx_unlock(&shpool->mutex);

        json_array_append_new(a,
                              json_pack("{ss%sIsI}",
                                        "name", zone[i].shm.name.data,
                                        zone[i].shm.name.len,
                                        "size", (json_int_t) size,
                                        "used", (json_int_t) used));
    }

    return a;
}
