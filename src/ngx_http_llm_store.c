
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/* The store layer: the llm_store directive and what every store shares. */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llm_module.h"
#include "ngx_http_llm_store.h"


#define NGX_HTTP_LLM_STORE_TTL  3600000


static ngx_http_llm_store_t *ngx_http_llm_store_new(ngx_conf_t *cf);




char *
ngx_http_llm_store_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    char                  *rv;
    u_char                *p;
    ngx_str_t             *value, args[8];
    ngx_uint_t             i, n;
    ngx_http_llm_store_t  *st;

    if (llcf->store != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    st = ngx_http_llm_store_new(cf);
    if (st == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    /* the backends get the store and its options, less the common ttl= */

    args[0] = value[1];
    n = 1;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "ttl=", 4) == 0) {
            value[i].data += 4;
            value[i].len -= 4;

            st->ttl = ngx_parse_time(&value[i], 0);

            if (st->ttl == (ngx_msec_t) NGX_ERROR || st->ttl == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid ttl \"%V\" in \"llm_store\"",
                                   &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (n == sizeof(args) / sizeof(ngx_str_t)) {
            return "has too many parameters";
        }

        args[n++] = value[i];
    }

    if (ngx_strcmp(value[1].data, "memory") == 0) {
        st->ops = &ngx_http_llm_store_memory;
        rv = ngx_http_llm_store_memory_conf(cf, st, args, n);

    } else if (ngx_strncmp(value[1].data, "redis://", 8) == 0
               || ngx_strncmp(value[1].data, "redis-sentinel://", 17) == 0
               || ngx_strncmp(value[1].data, "redis-cluster://", 16) == 0
               || ngx_strncmp(value[1].data, "unix:", 5) == 0)
    {
        st->ops = &ngx_http_llm_store_redis;
        rv = ngx_http_llm_store_redis_conf(cf, st, args, n);

    } else {
        /* a URL may carry a password: only its scheme is repeated */

        p = ngx_strlchr(value[1].data, value[1].data + value[1].len, ':');

        if (p) {
            value[1].len = p - value[1].data;

            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid store \"%V:...\" in \"llm_store\": "
                               "\"memory\", \"redis://\", "
                               "\"redis-sentinel://\", "
                               "\"redis-cluster://\" or \"unix:\" "
                               "expected", &value[1]);

        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid store \"%V\" in \"llm_store\": "
                               "\"memory\", \"redis://\", "
                               "\"redis-sentinel://\", "
                               "\"redis-cluster://\" or \"unix:\" "
                               "expected", &value[1]);
        }

        return NGX_CONF_ERROR;
    }

    if (rv != NGX_CONF_OK) {
        return rv;
    }

    llcf->store = st;

    return NGX_CONF_OK;
}


/* where jobs go when no llm_store is configured: a shared memory zone */

ngx_http_llm_store_t *
ngx_http_llm_store_default(ngx_conf_t *cf)
{
    ngx_str_t                  arg;
    ngx_http_llm_store_t      *st;
    ngx_http_llm_main_conf_t  *lmcf;

    lmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_llm_module);

    if (lmcf->default_store) {
        return lmcf->default_store;
    }

    st = ngx_http_llm_store_new(cf);
    if (st == NULL) {
        return NULL;
    }

    st->ops = &ngx_http_llm_store_memory;
    ngx_str_set(&arg, "memory");

    if (ngx_http_llm_store_memory_conf(cf, st, &arg, 1) != NGX_CONF_OK) {
        return NULL;
    }

    lmcf->default_store = st;

    return st;
}


static ngx_http_llm_store_t *
ngx_http_llm_store_new(ngx_conf_t *cf)
{
    ngx_http_llm_store_t      *st;
    ngx_http_llm_main_conf_t  *lmcf;

    /* the list belongs to its configuration: a failed reload keeps the old */

    lmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_llm_module);

    st = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_store_t));
    if (st == NULL) {
        return NULL;
    }

    st->ttl = NGX_HTTP_LLM_STORE_TTL;
    st->next = lmcf->stores;
    lmcf->stores = st;

    return st;
}


ngx_int_t
ngx_http_llm_stores_init_process(ngx_cycle_t *cycle)
{
    ngx_http_llm_store_t      *st;
    ngx_http_llm_main_conf_t  *lmcf;

    lmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_llm_module);

    if (lmcf == NULL) {
        return NGX_OK;
    }

    for (st = lmcf->stores; st; st = st->next) {
        if (st->ops->init_process
            && st->ops->init_process(st, cycle) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


void
ngx_http_llm_stores_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_llm_store_t      *st;
    ngx_http_llm_main_conf_t  *lmcf;

    lmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_llm_module);

    if (lmcf == NULL) {
        return;
    }

    for (st = lmcf->stores; st; st = st->next) {
        if (st->ops->exit_process) {
            st->ops->exit_process(st, cycle);
        }
    }
}


void
ngx_http_llm_record_free(ngx_http_llm_record_t *rec)
{
    free(rec->outcome.message);
    free(rec->events);
    free(rec->text);
    free(rec->meta);
    free(rec->pipeline_state);

    rec->outcome.message = NULL;
    rec->events = NULL;
    rec->text = NULL;
    rec->meta = NULL;
    rec->pipeline_state = NULL;
}


/* a save's result before the store says anything: nothing changed */

void
ngx_http_llm_saved_init(ngx_http_llm_saved_t *res,
    ngx_http_llm_snapshot_t *snap)
{
    ngx_memzero(res, sizeof(ngx_http_llm_saved_t));

    res->saved_events = snap->saved_events;
    res->saved_text = snap->saved_text;
    res->saved_meta = snap->saved_meta;
    res->saved_state = snap->saved_state;
    res->store_data = snap->store_data;
    res->watched = snap->watched;
    res->pause = snap->pause;
    res->pause_seq = snap->pause_seq;
}


int64_t
ngx_http_llm_now_ms(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (int64_t) tp->sec * 1000 + tp->msec;
}
