
/*
 * Copyright (C) ngx_http_llm_module authors
 */


/*
 * The Redis store's replies, as the store thread reads them from its
 * connection: a read's transaction becomes a record that the job then
 * checks against its mirror, a write's answers, a cancel's.  The input:
 * a byte choosing the command and 4 bytes of numbers (where the read
 * starts, which answers of the write matter), then what Redis sent.
 */


#include "ngx_http_llm_fuzz.h"
#include "ngx_http_llm_store_redis.h"


static void ngx_http_llm_fuzz_fetch(ngx_http_llm_redis_t *rd,
    const uint8_t *n, const uint8_t *data, size_t size);
static void ngx_http_llm_fuzz_write(ngx_http_llm_redis_t *rd,
    const uint8_t *n);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                        fd;
    ngx_http_llm_redis_t       rd;
    ngx_http_llm_redis_op_t    op;
    ngx_http_llm_redis_conf_t  conf;

    if (size < 5) {
        return 0;
    }

    /* what is not in the reader's buffer ends the "connection" at once */

    fd = open("/dev/null", O_RDONLY);
    if (fd == -1) {
        return 0;
    }

    ngx_memzero(&rd, sizeof(ngx_http_llm_redis_t));
    ngx_memzero(&conf, sizeof(ngx_http_llm_redis_conf_t));
    ngx_str_set(&conf.name, "fuzz");
    rd.conf = &conf;
    rd.log = &ngx_http_llm_fuzz_log;

    rd.ctx = redisConnectFd(fd);
    if (rd.ctx == NULL) {
        close(fd);
        return 0;
    }

    if (redisReaderFeed(rd.ctx->reader, (const char *) data + 5, size - 5)
        != REDIS_OK)
    {
        goto done;
    }

    switch (data[0] % 3) {

    case 0:
        ngx_http_llm_fuzz_fetch(&rd, data + 1, data + 5, size - 5);
        break;

    case 1:
        ngx_http_llm_fuzz_write(&rd, data + 1);
        break;

    default:
        ngx_memzero(&op, sizeof(ngx_http_llm_redis_op_t));
        ngx_memset(op.id, 'c', NGX_HTTP_LLM_JOB_ID_LEN);
        op.rc = NGX_ERROR;
        ngx_http_llm_redis_read_control(&rd, &op);
    }

done:

    redisFree(rd.ctx);

    return 0;
}


/*
 * A mirror asks from its own event, text and meta lengths on; the meta
 * it has is the start of the input (what a payload event before the
 * read may point into)
 */

static void
ngx_http_llm_fuzz_fetch(ngx_http_llm_redis_t *rd, const uint8_t *n,
    const uint8_t *data, size_t size)
{
    ngx_http_llm_job_t       job;
    ngx_http_llm_redis_op_t  op;

    ngx_memzero(&job, sizeof(ngx_http_llm_job_t));
    job.nevents = n[0] % 8;
    job.text_len = n[1] % 32;
    job.meta_len = ngx_min(size, n[2] % 32);
    job.state_version = n[3] % 4;

    if (job.meta_len) {
        job.meta = malloc(job.meta_len);
        if (job.meta == NULL) {
            return;
        }

        ngx_memcpy(job.meta, data, job.meta_len);
    }

    ngx_memzero(&op, sizeof(ngx_http_llm_redis_op_t));
    ngx_memset(op.id, 'f', NGX_HTTP_LLM_JOB_ID_LEN);
    op.from_event = job.nevents;
    op.from_text = job.text_len;
    op.from_meta = job.meta_len;
    op.rc = NGX_ERROR;

    ngx_http_llm_redis_read_fetch(rd, &op);

    if (op.rc == NGX_OK) {
        (void) ngx_http_llm_record_check(&job, &op.rec);
    }

    ngx_http_llm_record_free(&op.rec);
    free(job.meta);
}


/* a transaction of 1 to 16 commands with its XADDs, HSET and HMGET */

static void
ngx_http_llm_fuzz_write(ngx_http_llm_redis_t *rd, const uint8_t *n)
{
    ngx_http_llm_redis_write_t  w;

    ngx_memzero(&w, sizeof(ngx_http_llm_redis_write_t));
    ngx_memset(w.id, 'w', NGX_HTTP_LLM_JOB_ID_LEN);

    w.ncmds = 1 + n[0] % 16;
    w.xadd = n[1] % w.ncmds;
    w.nxadd = (n[1] >> 4) % (w.ncmds - w.xadd + 1);
    w.hset = n[2] % w.ncmds;
    w.hmget = n[3] % w.ncmds;
    w.known = (n[0] >> 4) & 1;
    w.rewrite = (n[0] >> 5) & 1;

    ngx_http_llm_redis_read_write(rd, &w);
}
