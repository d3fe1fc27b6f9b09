
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * Limits on running jobs (llm_limit_jobs_zone, llm_limit_jobs): what
 * limit_conn cannot see, since a job outlives its connection (background
 * jobs, the disconnect grace period).  A zone counts the running jobs of
 * each key for every worker of the instance; a new job takes a slot in
 * each limit of its location before it starts, or is refused with 429,
 * and gives the slots back when it ends.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"


/* a key and its running jobs; the key's bytes follow */
typedef struct {
    ngx_str_node_t                 sn;
    ngx_uint_t                     jobs;
} ngx_http_llm_limit_node_t;


typedef struct {
    ngx_rbtree_t                   rbtree;
    ngx_rbtree_node_t              sentinel;
} ngx_http_llm_limit_sh_t;


typedef struct {
    ngx_http_llm_limit_sh_t       *sh;
    ngx_slab_pool_t               *shpool;
    ngx_http_complex_value_t       key;
} ngx_http_llm_limit_zone_t;


/* one line of llm_limit_jobs */
typedef struct {
    ngx_shm_zone_t                *zone;
    ngx_uint_t                     max;
    ngx_msec_t                     retry_after;
} ngx_http_llm_limit_t;


static ngx_int_t ngx_http_llm_limit_init_zone(ngx_shm_zone_t *zone,
    void *data);


/*
 * Takes a slot in every limit of the location.  NGX_BUSY: one of them is
 * full, or its zone has no room for a new key, as limit_conn does
 * ("retry_after" says when to come back; nothing is taken); NGX_ERROR:
 * no memory, or the key cannot be evaluated.
 */

ngx_int_t
ngx_http_llm_limit_acquire(ngx_http_request_t *r, ngx_array_t *limits,
    ngx_http_llm_limit_hold_t **holds, ngx_uint_t *nholds,
    ngx_msec_t *retry_after)
{
    uint32_t                    hash;
    ngx_int_t                   rc;
    ngx_str_t                   key;
    ngx_uint_t                  i;
    ngx_http_llm_limit_t       *lim;
    ngx_http_llm_limit_node_t  *ln;
    ngx_http_llm_limit_zone_t  *z;
    ngx_http_llm_limit_hold_t  *h;

    *holds = NULL;
    *nholds = 0;

    if (limits == NULL || limits->nelts == 0) {
        return NGX_OK;
    }

    h = ngx_alloc(limits->nelts * sizeof(ngx_http_llm_limit_hold_t),
                  r->connection->log);
    if (h == NULL) {
        return NGX_ERROR;
    }

    lim = limits->elts;
    rc = NGX_OK;

    for (i = 0; i < limits->nelts; i++) {
        z = lim[i].zone->data;

        if (ngx_http_complex_value(r, &z->key, &key) != NGX_OK) {
            rc = NGX_ERROR;
            break;
        }

        /* as limit_conn: an empty key is not counted, a long one refused */

        if (key.len == 0) {
            continue;
        }

        if (key.len > 255) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "llm: the key of llm_limit_jobs zone \"%V\" is "
                          "longer than 255 bytes", &lim[i].zone->shm.name);
            rc = NGX_ERROR;
            break;
        }

        hash = ngx_crc32_short(key.data, key.len);

        ngx_shmtx_lock(&z->shpool->mutex);

        ln = (ngx_http_llm_limit_node_t *)
                 ngx_str_rbtree_lookup(&z->sh->rbtree, &key, hash);

        if (ln == NULL) {
            ln = ngx_slab_alloc_locked(z->shpool,
                                       sizeof(ngx_http_llm_limit_node_t)
                                       + key.len);

            if (ln == NULL) {
                ngx_shmtx_unlock(&z->shpool->mutex);
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "llm: llm_limit_jobs zone \"%V\" is full",
                              &lim[i].zone->shm.name);
                *retry_after = lim[i].retry_after;
                rc = NGX_BUSY;
                break;
            }

            ln->sn.node.key = hash;
            ln->sn.str.len = key.len;
            ln->sn.str.data = (u_char *) (ln + 1);
            ln->jobs = 0;
            ngx_memcpy(ln->sn.str.data, key.data, key.len);

            ngx_rbtree_insert(&z->sh->rbtree, &ln->sn.node);
        }

        if (ln->jobs >= lim[i].max) {

            ngx_shmtx_unlock(&z->shpool->mutex);

            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "llm: limiting jobs by zone \"%V\": %ui running",
                          &lim[i].zone->shm.name, lim[i].max);

            *retry_after = lim[i].retry_after;
            rc = NGX_BUSY;
            break;
        }

        ln->jobs++;

        ngx_shmtx_unlock(&z->shpool->mutex);

        h[*nholds].zone = lim[i].zone;
        h[*nholds].node = &ln->sn.node;
        (*nholds)++;
    }

    if (rc != NGX_OK) {
        ngx_http_llm_limit_release(h, *nholds);
        *nholds = 0;
        return rc;
    }

    if (*nholds == 0) {
        ngx_free(h);
        return NGX_OK;
    }

    *holds = h;

    return NGX_OK;
}


/* the job is over: its slots go back (and "holds" is freed) */

void
ngx_http_llm_limit_release(ngx_http_llm_limit_hold_t *holds, ngx_uint_t n)
{
    ngx_uint_t                  i;
    ngx_http_llm_limit_node_t  *ln;
    ngx_http_llm_limit_zone_t  *z;

    for (i = 0; i < n; i++) {
        z = holds[i].zone->data;
        ln = (ngx_http_llm_limit_node_t *) holds[i].node;

        ngx_shmtx_lock(&z->shpool->mutex);

        /* a slot held keeps its node: nobody else frees it */

        if (--ln->jobs == 0) {
            ngx_rbtree_delete(&z->sh->rbtree, holds[i].node);
            ngx_slab_free_locked(z->shpool, holds[i].node);
        }

        ngx_shmtx_unlock(&z->shpool->mutex);
    }

    ngx_free(holds);
}


/* 429 with Retry-After, before any stream */

ngx_int_t
ngx_http_llm_limit_refuse(ngx_http_request_t *r, ngx_msec_t retry_after)
{
    ngx_str_t         msg;
    ngx_table_elt_t  *h;

    ngx_http_llm_metrics_limit_refused(r);

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->value.data = ngx_pnalloc(r->pool, NGX_TIME_T_LEN);
    if (h->value.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Retry-After");
    h->value.len = ngx_sprintf(h->value.data, "%M",
                               (retry_after + 999) / 1000)
                   - h->value.data;

    ngx_str_set(&msg, "too many jobs are running for this client");

    return ngx_http_llm_send_json_error(r, NGX_HTTP_TOO_MANY_REQUESTS,
                                        "too_many_jobs", &msg);
}


static ngx_int_t
ngx_http_llm_limit_init_zone(ngx_shm_zone_t *zone, void *data)
{
    ngx_http_llm_limit_zone_t *oz = data;

    size_t                      len;
    ngx_http_llm_limit_zone_t  *z;

    z = zone->data;

    if (oz) {
        /* a reload keeps the counts of the jobs that still run */
        z->sh = oz->sh;
        z->shpool = oz->shpool;
        return NGX_OK;
    }

    z->shpool = (ngx_slab_pool_t *) zone->shm.addr;

    if (zone->shm.exists) {
        z->sh = z->shpool->data;
        return NGX_OK;
    }

    z->sh = ngx_slab_alloc(z->shpool, sizeof(ngx_http_llm_limit_sh_t));
    if (z->sh == NULL) {
        return NGX_ERROR;
    }

    z->shpool->data = z->sh;

    ngx_rbtree_init(&z->sh->rbtree, &z->sh->sentinel,
                    ngx_str_rbtree_insert_value);

    len = sizeof(" in llm_limit_jobs_zone \"\"") + zone->shm.name.len;

    z->shpool->log_ctx = ngx_slab_alloc(z->shpool, len);
    if (z->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(z->shpool->log_ctx, " in llm_limit_jobs_zone \"%V\"%Z",
                &zone->shm.name);

    return NGX_OK;
}


/* llm_limit_jobs_zone KEY zone=NAME:SIZE: http context */

char *
ngx_http_llm_limit_zone_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    u_char                            *p;
    ssize_t                            size;
    ngx_str_t                         *value, name, s;
    ngx_uint_t                         i;
    ngx_shm_zone_t                    *shm_zone;
    ngx_http_llm_limit_zone_t         *z;
    ngx_http_compile_complex_value_t   ccv;

    value = cf->args->elts;

    z = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_limit_zone_t));
    if (z == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = &z->key;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    size = 0;
    name.len = 0;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "zone=", 5) != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\" in "
                               "\"llm_limit_jobs_zone\"", &value[i]);
            return NGX_CONF_ERROR;
        }

        name.data = value[i].data + 5;
        p = (u_char *) ngx_strchr(name.data, ':');

        if (p == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid zone size \"%V\" in "
                               "\"llm_limit_jobs_zone\"", &value[i]);
            return NGX_CONF_ERROR;
        }

        name.len = p - name.data;

        s.data = p + 1;
        s.len = value[i].data + value[i].len - s.data;

        size = ngx_parse_size(&s);

        if (size == NGX_ERROR || size < (ssize_t) (8 * ngx_pagesize)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid zone size \"%V\" in "
                               "\"llm_limit_jobs_zone\" (at least %uzk)",
                               &value[i], 8 * ngx_pagesize / 1024);
            return NGX_CONF_ERROR;
        }
    }

    if (name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"llm_limit_jobs_zone\" must have the \"zone\" "
                           "parameter");
        return NGX_CONF_ERROR;
    }

    shm_zone = ngx_shared_memory_add(cf, &name, size,
                                     &ngx_http_llm_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_limit_jobs_zone \"%V\" is already defined "
                           "(or a zone of that name is)", &name);
        return NGX_CONF_ERROR;
    }

    shm_zone->init = ngx_http_llm_limit_init_zone;
    shm_zone->data = z;

    return NGX_CONF_OK;
}


/* llm_limit_jobs ZONE NUMBER [retry_after=TIME] */

char *
ngx_http_llm_limit_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_int_t              n;
    ngx_str_t             *value, s;
    ngx_uint_t             i;
    ngx_shm_zone_t        *shm_zone;
    ngx_http_llm_limit_t  *lim;

    value = cf->args->elts;

    shm_zone = ngx_shared_memory_add(cf, &value[1], 0, &ngx_http_llm_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (llcf->limits == NULL) {
        llcf->limits = ngx_array_create(cf->pool, 1,
                                        sizeof(ngx_http_llm_limit_t));
        if (llcf->limits == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    lim = llcf->limits->elts;

    for (i = 0; i < llcf->limits->nelts; i++) {
        if (shm_zone == lim[i].zone) {
            return "is duplicate";
        }
    }

    n = ngx_atoi(value[2].data, value[2].len);

    if (n <= 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid number of jobs \"%V\" in "
                           "\"llm_limit_jobs\"", &value[2]);
        return NGX_CONF_ERROR;
    }

    lim = ngx_array_push(llcf->limits);
    if (lim == NULL) {
        return NGX_CONF_ERROR;
    }

    lim->zone = shm_zone;
    lim->max = n;
    lim->retry_after = 5000;

    for (i = 3; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "retry_after=", 12) == 0) {
            s.data = value[i].data + 12;
            s.len = value[i].len - 12;

            lim->retry_after = ngx_parse_time(&s, 0);

            if (lim->retry_after != (ngx_msec_t) NGX_ERROR
                && lim->retry_after > 0)
            {
                continue;
            }
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\" in \"llm_limit_jobs\"",
                           &value[i]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* every zone named by llm_limit_jobs is defined by llm_limit_jobs_zone */

char *
ngx_http_llm_limit_check(ngx_conf_t *cf, ngx_array_t *limits)
{
    ngx_uint_t             i;
    ngx_http_llm_limit_t  *lim;

    if (limits == NULL) {
        return NGX_CONF_OK;
    }

    lim = limits->elts;

    for (i = 0; i < limits->nelts; i++) {
        if (lim[i].zone->init != ngx_http_llm_limit_init_zone) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "unknown llm_limit_jobs zone \"%V\" "
                               "(llm_limit_jobs_zone defines it)",
                               &lim[i].zone->shm.name);
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}
