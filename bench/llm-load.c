/*
 * llm-load.c -- an SSE load client for the ngx_http_llm_module benchmarks.
 *
 * Opens thousands of concurrent streams (HTTP/1.0, so every body ends by
 * close), single thread, epoll.  The tokens come from util/llm-mock with
 * stamp=1: each token's text is its send time in microseconds since the
 * epoch, so every stamp found in a received event gives one relay latency
 * sample (receive time minus stamp).  A delta that merges several tokens
 * gives one sample per stamp.
 *
 *   llm-load --url http://127.0.0.1:PORT/PATH?QUERY [--proto sse|openai]
 *            --levels N[,N...] [--ramp-rate CONN/S] [--settle S] [--hold S]
 *            [--tps N] [--stop-added-ms MS] [--floor N:P99US[,...]]
 *            [--sample NAME=PID[,PID...]]... [--series FILE]
 *            [--deadline S] [--label STR] [--redis HOST:PORT]
 *
 * The run is a staircase: for each level the client ramps (at most
 * --ramp-rate new connections a second) to that many open streams,
 * waits --settle seconds, then measures for --hold seconds.  A stream
 * that ends is replaced, so the count stays at the level.  Each level
 * prints one JSON line on stdout: latency, time to first event and first
 * token, events and tokens per second, errors, incomplete streams (closed
 * by the server without "event: complete" or "data: [DONE]"), and for
 * every --sample group the summed VmRSS and utime+stime of its processes.
 *
 *   --proto sse     GET, the module's events: "event: delta" frames with
 *                   {"text":"..."}, then "event: complete" (the default);
 *   --proto openai  POST a chat completion request straight to the mock:
 *                   "data: {...\"content\":\"...\"...}", "data: [DONE]".
 *
 * With --stop-added-ms the staircase stops after the first level that
 * fails: an error or incomplete stream, fewer than 90% of the expected
 * tokens (--tps), or a p99 latency above the floor's p99 at that level
 * (--floor, from a run straight against the mock) plus MS.
 *
 * Streams that end during the hold ("event: complete", "data: [DONE]")
 * give their duration, from connect.
 *
 * A pipeline's events (docs/pipelines.md) are read too: each "event:
 * step" carries the step's "duration" (seconds, as the module measured
 * it).  For every pipeline of two steps or more that completes during the
 * hold the client keeps its time between steps: (receive time of its
 * last "step" event - receive time of its first "step_start" event - the
 * sum of its steps' durations) / (steps - 1); and, when the steps'
 * outputs are the mock's stamps, the time from one step's first token to
 * the next's at the mock: (the last step's first stamp - the first's) /
 * (steps - 1).
 *
 * With --redis (a Redis server that the relay uses as its store) the
 * client reads INFO all from that server just before and just after each
 * hold, over a connection of its own, and prints the differences: commands
 * processed (in all and by command), socket reads and writes, bytes, new
 * connections and CPU seconds.  The probe's own INFO, read, write and
 * connection are taken out.
 */

#define _GNU_SOURCE

#include <sys/types.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>


#define LOAD_MAX_LEVELS     64
#define LOAD_MAX_GROUPS     6
#define LOAD_MAX_PIDS       16
#define LOAD_READ           16384
#define LOAD_SAMPLE_US      250000
#define LOAD_MAX_LINE       (8 * 1024 * 1024)
#define LOAD_REDIS_CMDS     48
#define LOAD_REDIS_MAX      (1024 * 1024)
#define LOAD_GAP_ZERO       100000000   /* gaps may be negative */


enum { P_SSE, P_OPENAI };
enum { C_CONNECTING, C_HEAD, C_BODY };
enum { E_NONE, E_DELTA, E_COMPLETE, E_ERROR, E_STEP_START, E_STEP,
       E_OTHER };
enum { PH_RAMP, PH_SETTLE, PH_HOLD };


typedef struct conn_s  conn_t;

struct conn_s {
    int                  fd;
    int                  state;
    int                  event;      /* the "event:" of the current frame */
    int                  done;       /* saw the end of the stream */
    int                  failed;     /* already counted as an error */
    int                  got_event;
    int                  got_token;
    uint64_t             t_start;    /* wall clock, us */
    uint64_t             t_steps;    /* the first step_start received */
    uint64_t             t_step;     /* the last step received */
    double               step_dur;   /* us, the steps' "duration"s */
    int                  nsteps;
    uint64_t             stamp0;     /* the first step's first stamp */
    uint64_t             stamp1;     /* the last step's */
    int                  nstamps;
    char                *buf;
    size_t               len;
    size_t               cap;
    size_t               sent;
    conn_t              *next_free;
};


typedef struct {
    uint32_t            *v;
    size_t               n;
    size_t               cap;
} samples_t;


typedef struct {
    char                 name[32];
    int                  npids;
    int                  pids[LOAD_MAX_PIDS];
    long                 idle_rss;    /* kB, before the first connection */
    long                 idle_pss;
    long                 idle_shm;
    long                 rss;         /* kB, the last sample: VmRSS */
    long                 pss;         /* Pss: shared pages split */
    long                 shm;         /* RssShmem */
    long                 rss_max;
    double               rss_sum;     /* over the hold's samples */
    double               pss_sum;
    double               shm_sum;
    long                 rss_n;
    long long            ticks;       /* the last sample */
    long long            ticks0;      /* at the start of the hold */
    long long            last[LOAD_MAX_PIDS];
    int                  gone[LOAD_MAX_PIDS];
    int                  ngone;       /* processes that exited */
    int                  ngone_reported;
} group_t;


typedef struct {
    uint64_t             started;
    uint64_t             completed;
    uint64_t             incomplete;
    uint64_t             err_connect;
    uint64_t             err_http;
    uint64_t             err_sse;
    uint64_t             err_io;
    uint64_t             deltas;      /* in the hold */
    uint64_t             tokens;      /* in the hold */
    uint64_t             merged;      /* deltas with more than one token */
    uint64_t             all_tokens;  /* ramp and settle included */
    samples_t            lat;         /* us, in the hold */
    samples_t            ttft;        /* us, streams of this level */
    samples_t            ttfe;
    samples_t            dur;         /* us, streams completed in the hold */
    samples_t            gap;         /* us + LOAD_GAP_ZERO, between steps */
    uint64_t             steps;       /* of the pipelines in gap */
    double               step_dur;    /* us, their durations summed */
    double               gap_sum;     /* us, their time between steps */
    uint64_t             gaps;
    samples_t            cycle;       /* us, step to step at the mock */
    double               cycle_sum;
    uint64_t             cycles;
} stats_t;


/* INFO all of the --redis server: the counters read at one moment */

enum {
    RI_COMMANDS, RI_READS, RI_WRITES, RI_NET_IN, RI_NET_OUT,
    RI_CONNECTIONS, RI_CPU_SYS, RI_CPU_USER, RI_USED_MEMORY, RI_N
};

static const char  *ri_names[RI_N] = {
    "total_commands_processed", "total_reads_processed",
    "total_writes_processed", "total_net_input_bytes",
    "total_net_output_bytes", "total_connections_received",
    "used_cpu_sys", "used_cpu_user", "used_memory"
};

typedef struct {
    int                  ok;
    int                  has[RI_N];
    double               v[RI_N];
    size_t               reply;       /* bytes of the INFO reply */
    int                  ncmd;
    char                 cmd[LOAD_REDIS_CMDS][40];
    double               calls[LOAD_REDIS_CMDS];
    double               usec[LOAD_REDIS_CMDS];
} redis_info_t;


static struct {
    char                 host[64];
    int                  port;
    char                *path;
    int                  proto;
    long                 levels[LOAD_MAX_LEVELS];
    int                  nlevels;
    double               ramp_rate;
    double               settle;
    double               hold;
    double               tps;
    double               stop_added_ms;
    long                 floor_level[LOAD_MAX_LEVELS];
    double               floor_p99[LOAD_MAX_LEVELS];
    int                  nfloor;
    group_t              groups[LOAD_MAX_GROUPS];
    int                  ngroups;
    const char          *series;
    const char          *label;
    double               deadline;
    int                  redis;
    struct sockaddr_in   redis_addr;
} cfg;


static int                 g_ep;
static char               *g_req;
static size_t              g_req_len;
static struct sockaddr_in  g_addr;
static conn_t             *g_free;
static long                g_open;
static int                 g_phase;
static stats_t             g_st;
static uint64_t            g_total_tokens;
static uint64_t            g_total_deltas;
static uint64_t            g_total_started;
static FILE               *g_series;
static redis_info_t        g_redis0, g_redis1;
static uint64_t            g_hold_wall;     /* the hold's start */
static volatile sig_atomic_t  g_stop;


/* utilities */

static void *
xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (p == NULL) {
        fprintf(stderr, "llm-load: out of memory\n");
        exit(2);
    }
    return p;
}


static uint64_t
mono_us(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}


static uint64_t
wall_us(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}


static void
samples_add(samples_t *s, uint64_t v)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        s->v = xrealloc(s->v, s->cap * sizeof(uint32_t));
    }

    s->v[s->n++] = v > UINT32_MAX ? UINT32_MAX : (uint32_t) v;
}


static int
cmp_u32(const void *a, const void *b)
{
    uint32_t  x = *(const uint32_t *) a, y = *(const uint32_t *) b;

    return x < y ? -1 : x > y;
}


/* nearest rank; the array must be sorted */

static double
pct(samples_t *s, double q)
{
    size_t  k;

    if (s->n == 0) {
        return -1;
    }

    k = (size_t) ceil(q * (double) s->n);
    if (k == 0) {
        k = 1;
    }

    return s->v[k - 1];
}


static double
dur_mean(samples_t *s)
{
    size_t  i;
    double  sum;

    if (s->n == 0) {
        return -1;
    }

    for (sum = 0, i = 0; i < s->n; i++) {
        sum += s->v[i];
    }

    return sum / s->n;
}


/* a percentile of the gaps, stored with LOAD_GAP_ZERO added */

static double
gap_pct(samples_t *s, double q)
{
    return s->n ? pct(s, q) - LOAD_GAP_ZERO : -1;
}


static void
stats_reset(stats_t *st)
{
    samples_t  lat, ttft, ttfe, dur, gap, cycle;

    lat = st->lat;
    ttft = st->ttft;
    ttfe = st->ttfe;
    dur = st->dur;
    gap = st->gap;
    cycle = st->cycle;
    memset(st, 0, sizeof(stats_t));
    st->lat = lat;
    st->ttft = ttft;
    st->ttfe = ttfe;
    st->dur = dur;
    st->gap = gap;
    st->cycle = cycle;
    st->lat.n = st->ttft.n = st->ttfe.n = st->dur.n = st->gap.n = 0;
    st->cycle.n = 0;
}


/*
 * process sampling: VmRSS and RssShmem from /proc/PID/status, Pss from
 * /proc/PID/smaps_rollup (shared pages, such as a shared memory zone both
 * workers touch, divided among the processes that map them), utime+stime
 * from /proc/PID/stat
 */

static long
proc_kb(const char *path, const char *key, long *key2_kb, const char *key2)
{
    char    line[256];
    long    kb;
    size_t  n, n2;
    FILE   *f;

    f = fopen(path, "r");
    if (f == NULL) {
        return 0;
    }

    kb = 0;
    n = strlen(key);
    n2 = key2 ? strlen(key2) : 0;

    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, key, n) == 0) {
            kb = strtol(line + n, NULL, 10);

        } else if (key2 && strncmp(line, key2, n2) == 0) {
            *key2_kb = strtol(line + n2, NULL, 10);
        }
    }

    fclose(f);
    return kb;
}


static long
proc_rss(int pid, long *shm, long *pss)
{
    char  path[64];

    *shm = 0;
    *pss = 0;

    snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", pid);
    *pss = proc_kb(path, "Pss:", NULL, NULL);

    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    return proc_kb(path, "VmRSS:", shm, "RssShmem:");
}


/* -1: the process is gone */

static long long
proc_ticks(int pid)
{
    int         fd, i;
    char        path[64], buf[1024], *p;
    ssize_t     n;
    long long   ut, st;

    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    fd = open(path, O_RDONLY);
    if (fd < 0) {
        return -1;
    }

    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) {
        return -1;
    }

    buf[n] = '\0';

    /* the fields after the command, which may hold spaces */
    p = strrchr(buf, ')');
    if (p == NULL) {
        return 0;
    }

    p += 2;

    /* p is at field 3 (state); utime and stime are fields 14 and 15 */
    for (i = 3; i < 14 && p; i++) {
        p = strchr(p, ' ');
        if (p) {
            p++;
        }
    }

    if (p == NULL || sscanf(p, "%lld %lld", &ut, &st) != 2) {
        return 0;
    }

    return ut + st;
}


static void
sample_groups(int in_hold)
{
    int        g, i;
    long       rss, pss, shm, p, h;
    long long  t;
    group_t   *gr;

    for (g = 0; g < cfg.ngroups; g++) {
        gr = &cfg.groups[g];
        rss = pss = shm = 0;
        gr->ticks = 0;

        for (i = 0; i < gr->npids; i++) {
            t = gr->gone[i] ? -1 : proc_ticks(gr->pids[i]);

            if (t < 0) {
                /* a crash, say: keep the CPU it had used */
                if (!gr->gone[i]) {
                    gr->gone[i] = 1;
                    gr->ngone++;
                    fprintf(stderr, "llm-load: %s process %d exited\n",
                            gr->name, gr->pids[i]);
                }
                gr->ticks += gr->last[i];
                continue;
            }

            gr->last[i] = t;
            gr->ticks += t;
            rss += proc_rss(gr->pids[i], &h, &p);
            shm += h;
            pss += p;
        }

        gr->rss = rss;
        gr->pss = pss;
        gr->shm = shm;

        if (in_hold) {
            gr->rss_sum += rss;
            gr->pss_sum += pss;
            gr->shm_sum += shm;
            gr->rss_n++;
            if (rss > gr->rss_max) {
                gr->rss_max = rss;
            }
        }
    }
}


/* /proc/stat: ticks of user+nice+system, irq+softirq, steal */

static void
machine_ticks(long long t[3])
{
    FILE       *f;
    long long   v[8];

    t[0] = t[1] = t[2] = 0;

    f = fopen("/proc/stat", "r");
    if (f == NULL) {
        return;
    }

    memset(v, 0, sizeof(v));

    if (fscanf(f, "cpu %lld %lld %lld %lld %lld %lld %lld %lld", &v[0],
               &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) >= 7)
    {
        t[0] = v[0] + v[1] + v[2];
        t[1] = v[5] + v[6];
        t[2] = v[7];
    }

    fclose(f);
}


static double
self_cpu(void)
{
    struct rusage  ru;

    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6
           + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}


/*
 * --redis: INFO all, over a blocking connection of its own (loopback, at
 * most a second each way), parsed into the counters above.  It runs at
 * the edges of the hold, where a fraction of a millisecond of blocking
 * does not show.
 */

static void
redis_parse_line(redis_info_t *ri, char *line)
{
    int     i;
    char   *colon, *p;

    colon = strchr(line, ':');
    if (colon == NULL) {
        return;
    }

    *colon = '\0';

    if (strncmp(line, "cmdstat_", 8) == 0) {
        /* cmdstat_exec:calls=N,usec=N,usec_per_call=... */
        if (ri->ncmd == LOAD_REDIS_CMDS) {
            return;
        }

        i = ri->ncmd;
        snprintf(ri->cmd[i], sizeof(ri->cmd[i]), "%s", line + 8);

        p = strstr(colon + 1, "calls=");
        if (p == NULL) {
            return;
        }
        ri->calls[i] = strtod(p + 6, NULL);

        p = strstr(colon + 1, "usec=");
        ri->usec[i] = p ? strtod(p + 5, NULL) : 0;

        ri->ncmd++;
        return;
    }

    for (i = 0; i < RI_N; i++) {
        if (strcmp(line, ri_names[i]) == 0) {
            ri->v[i] = strtod(colon + 1, NULL);
            ri->has[i] = 1;
            return;
        }
    }
}


static void
redis_probe(redis_info_t *ri)
{
    int             fd;
    char           *buf, *p, *e, *nl;
    size_t          len, cap, need;
    ssize_t         n;
    struct timeval  tv = { 1, 0 };

    memset(ri, 0, sizeof(*ri));

    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return;
    }

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));

    if (connect(fd, (struct sockaddr *) &cfg.redis_addr,
                sizeof(cfg.redis_addr)) != 0
        || write(fd, "INFO all\r\n", 10) != 10)
    {
        fprintf(stderr, "llm-load: redis: %s\n", strerror(errno));
        close(fd);
        return;
    }

    /* "$LEN\r\n" LEN bytes "\r\n" */

    cap = 65536;
    buf = xrealloc(NULL, cap + 1);
    len = 0;
    need = 0;

    for ( ;; ) {
        if (len == cap) {
            if (cap >= LOAD_REDIS_MAX) {
                break;
            }
            cap *= 2;
            buf = xrealloc(buf, cap + 1);
        }

        n = read(fd, buf + len, cap - len);
        if (n <= 0) {
            break;
        }
        len += n;
        buf[len] = '\0';

        if (need == 0 && (nl = strstr(buf, "\r\n")) != NULL) {
            if (buf[0] != '$') {
                break;
            }
            need = (nl - buf) + 2 + strtoul(buf + 1, NULL, 10) + 2;
        }

        if (need && len >= need) {
            break;
        }
    }

    close(fd);

    if (need == 0 || len < need) {
        fprintf(stderr, "llm-load: redis: no INFO reply\n");
        free(buf);
        return;
    }

    ri->reply = need;
    p = strstr(buf, "\r\n") + 2;
    e = buf + need - 2;
    *e = '\0';

    while (p < e) {
        nl = strstr(p, "\r\n");
        if (nl) {
            *nl = '\0';
        }
        redis_parse_line(ri, p);
        if (nl == NULL) {
            break;
        }
        p = nl + 2;
    }

    free(buf);
    ri->ok = ri->has[RI_COMMANDS];
}


static double
redis_calls(redis_info_t *ri, const char *cmd, double *usec)
{
    int  i;

    for (i = 0; i < ri->ncmd; i++) {
        if (strcmp(ri->cmd[i], cmd) == 0) {
            if (usec) {
                *usec = ri->usec[i];
            }
            return ri->calls[i];
        }
    }

    if (usec) {
        *usec = 0;
    }
    return 0;
}


/* the "redis" member of a level's JSON line: after - before */

static void
redis_json(redis_info_t *a, redis_info_t *b)
{
    int          i, first;
    double       d, u0, u1, own;
    const char  *names[RI_N] = {
        "commands", "reads", "writes", "net_in", "net_out", "connections",
        "cpu_sys", "cpu_user", "used_memory"
    };

    if (!a->ok || !b->ok) {
        printf("\"redis\":{\"ok\":false},");
        return;
    }

    printf("\"redis\":{\"ok\":true");

    for (i = 0; i < RI_N; i++) {
        if (!a->has[i] || !b->has[i]) {
            printf(",\"%s\":-1", names[i]);
            continue;
        }

        if (i == RI_USED_MEMORY) {
            printf(",\"%s\":%.0f", names[i], b->v[i]);
            continue;
        }

        /*
         * the first probe's INFO is counted after it ran (a command, its
         * reply's write and bytes), the second's read and connection
         * before INFO runs: neither is the relay's
         */
        own = 0;
        if (i == RI_COMMANDS || i == RI_READS || i == RI_WRITES
            || i == RI_CONNECTIONS)
        {
            own = 1;
        } else if (i == RI_NET_IN) {
            own = 10;
        } else if (i == RI_NET_OUT) {
            own = (double) a->reply;
        }

        d = b->v[i] - a->v[i] - own;
        if (d < 0) {
            d = 0;
        }

        printf(i == RI_CPU_SYS || i == RI_CPU_USER ? ",\"%s\":%.3f"
               : ",\"%s\":%.0f", names[i], d);
    }

    printf(",\"calls\":{");
    first = 1;

    for (i = 0; i < b->ncmd; i++) {
        if (strcmp(b->cmd[i], "info") == 0) {
            continue;
        }
        d = b->calls[i] - redis_calls(a, b->cmd[i], &u0);
        if (d <= 0) {
            continue;
        }
        printf("%s\"%s\":%.0f", first ? "" : ",", b->cmd[i], d);
        first = 0;
    }

    printf("},\"usec\":{");
    first = 1;

    for (i = 0; i < b->ncmd; i++) {
        if (strcmp(b->cmd[i], "info") == 0) {
            continue;
        }
        d = b->calls[i] - redis_calls(a, b->cmd[i], &u0);
        if (d <= 0) {
            continue;
        }
        u1 = b->usec[i];
        printf("%s\"%s\":%.0f", first ? "" : ",", b->cmd[i], u1 - u0);
        first = 0;
    }

    printf("}},");
}


/* connections */

static void
conn_free(conn_t *c)
{
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }

    c->len = 0;
    if (c->cap > 65536) {
        free(c->buf);
        c->buf = NULL;
        c->cap = 0;
    }

    c->next_free = g_free;
    g_free = c;
    g_open--;
}


/* the stream is over: closed by the server or broken */

static void
conn_end(conn_t *c, int io_error)
{
    if (!c->failed) {
        if (c->done) {
            g_st.completed++;

        } else if (io_error) {
            g_st.err_io++;

        } else {
            g_st.incomplete++;
        }
    }

    conn_free(c);
}


static void
conn_fail(conn_t *c, uint64_t *counter)
{
    (*counter)++;
    c->failed = 1;
    conn_free(c);
}


static int
conn_open(void)
{
    int                 fd, one;
    conn_t             *c;
    struct epoll_event  ev;

    g_st.started++;
    g_total_started++;

    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        g_st.err_connect++;
        return -1;
    }

    one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    if (connect(fd, (struct sockaddr *) &g_addr, sizeof(g_addr)) != 0
        && errno != EINPROGRESS)
    {
        close(fd);
        g_st.err_connect++;
        return -1;
    }

    if (g_free) {
        c = g_free;
        g_free = c->next_free;

    } else {
        c = xrealloc(NULL, sizeof(conn_t));
        memset(c, 0, sizeof(conn_t));
    }

    c->fd = fd;
    c->state = C_CONNECTING;
    c->event = E_NONE;
    c->done = c->failed = c->got_event = c->got_token = 0;
    c->t_steps = c->t_step = 0;
    c->step_dur = 0;
    c->nsteps = 0;
    c->stamp0 = c->stamp1 = 0;
    c->nstamps = 0;
    c->len = c->sent = 0;
    c->t_start = wall_us();
    c->next_free = NULL;
    g_open++;

    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP;
    ev.data.ptr = c;

    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
        conn_fail(c, &g_st.err_connect);
        return -1;
    }

    return 0;
}


static void
conn_send(conn_t *c)
{
    ssize_t             n;
    int                 err;
    socklen_t           sl;
    struct epoll_event  ev;

    if (c->state == C_CONNECTING) {
        err = 0;
        sl = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &sl);
        if (err) {
            conn_fail(c, &g_st.err_connect);
            return;
        }
        c->state = C_HEAD;
    }

    while (c->sent < g_req_len) {
        n = send(c->fd, g_req + c->sent, g_req_len - c->sent, MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += n;
            continue;
        }

        if (n < 0 && errno == EINTR) {
            continue;
        }

        if (n < 0 && errno == EAGAIN) {
            return;
        }

        conn_fail(c, &g_st.err_connect);
        return;
    }

    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.ptr = c;
    epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev);
}


/*
 * The JSON string value of a key, "key": "..."; NULL if there is none.
 * An occurrence not followed by ':' is a value ("type": "content"), not
 * the key: the search goes on after it.
 */

static const char *
json_str(const char *p, const char *end, const char *key, size_t klen)
{
    const char  *k;

    while ((k = memmem(p, end - p, key, klen)) != NULL) {
        p = k + klen;

        while (p < end && *p == ' ') {
            p++;
        }

        if (p == end || *p != ':') {
            continue;
        }

        p++;

        while (p < end && *p == ' ') {
            p++;
        }

        return (p < end && *p == '"') ? p + 1 : NULL;
    }

    return NULL;
}


/* the JSON number value of a key, "key": N; -1 if there is none */

static double
json_num(const char *p, const char *end, const char *key, size_t klen)
{
    char         num[40];
    size_t       n;
    const char  *k;

    while ((k = memmem(p, end - p, key, klen)) != NULL) {
        p = k + klen;

        while (p < end && *p == ' ') {
            p++;
        }

        if (p == end || *p != ':') {
            continue;
        }

        p++;

        while (p < end && *p == ' ') {
            p++;
        }

        for (n = 0; p + n < end && n < sizeof(num) - 1
                    && strchr("0123456789.eE+-", p[n]); n++)
        {
            num[n] = p[n];
        }

        if (n == 0) {
            return -1;
        }

        num[n] = '\0';
        return strtod(num, NULL);
    }

    return -1;
}


/* the stamps in a delta's "text" (or "content") string; their count */

static int
take_stamps(conn_t *c, const char *p, const char *end, uint64_t now)
{
    int          n;
    uint64_t     v;
    const char  *s;

    s = json_str(p, end, "\"text\"", 6);
    if (s == NULL) {
        s = json_str(p, end, "\"content\"", 9);
        if (s == NULL) {
            return 0;
        }
    }

    p = s;
    n = 0;

    while (p < end && *p != '"') {
        if (*p < '0' || *p > '9') {
            p++;
            continue;
        }

        v = 0;
        while (p < end && *p >= '0' && *p <= '9') {
            v = v * 10 + (*p++ - '0');
        }

        n++;
        g_st.all_tokens++;
        g_total_tokens++;

        if (!c->got_token) {
            c->got_token = 1;
            samples_add(&g_st.ttft, now - c->t_start);
        }

        if (g_phase == PH_HOLD) {
            g_st.tokens++;
            samples_add(&g_st.lat, now > v ? now - v : 0);
        }
    }

    return n;
}


static void
saw_event(conn_t *c, uint64_t now)
{
    if (!c->got_event) {
        c->got_event = 1;
        samples_add(&g_st.ttfe, now - c->t_start);
    }
}


/* "event: complete": the stream's duration and its time between steps */

static void
stream_done(conn_t *c, uint64_t now)
{
    double  gap;

    if (g_phase != PH_HOLD) {
        return;
    }

    samples_add(&g_st.dur, now - c->t_start);

    if (c->nstamps >= 2 && c->stamp1 >= c->stamp0) {
        samples_add(&g_st.cycle, (c->stamp1 - c->stamp0) / (c->nstamps - 1));
        g_st.cycle_sum += c->stamp1 - c->stamp0;
        g_st.cycles += c->nstamps - 1;
    }

    if (c->nsteps < 2 || c->t_steps == 0 || c->t_step < c->t_steps) {
        return;
    }

    gap = ((double) (c->t_step - c->t_steps) - c->step_dur)
          / (c->nsteps - 1);

    g_st.steps += c->nsteps;
    g_st.step_dur += c->step_dur;
    g_st.gap_sum += gap * (c->nsteps - 1);
    g_st.gaps += c->nsteps - 1;

    gap += LOAD_GAP_ZERO;
    samples_add(&g_st.gap, gap > 0 ? (uint64_t) (gap + 0.5) : 0);
}


/* one line of the body, without its end of line; returns -1 to close */

static int
conn_line(conn_t *c, char *p, size_t len, uint64_t now)
{
    int          n;
    char        *end;
    double       d;
    uint64_t     v;
    const char  *s;

    end = p + len;

    if (len == 0) {
        /* the end of a frame */
        if (c->event == E_COMPLETE && !c->done) {
            c->done = 1;
            stream_done(c, now);
        }
        c->event = E_NONE;
        return 0;
    }

    if (len > 7 && memcmp(p, "event: ", 7) == 0) {
        p += 7;
        len -= 7;
        saw_event(c, now);

        if (len == 5 && memcmp(p, "delta", 5) == 0) {
            c->event = E_DELTA;

        } else if (len == 8 && memcmp(p, "complete", 8) == 0) {
            c->event = E_COMPLETE;

        } else if (len == 10 && memcmp(p, "step_start", 10) == 0) {
            c->event = E_STEP_START;

        } else if (len == 4 && memcmp(p, "step", 4) == 0) {
            c->event = E_STEP;

        } else if (len == 5 && memcmp(p, "error", 5) == 0) {
            c->event = E_ERROR;
            if (!c->failed) {
                g_st.err_sse++;
                c->failed = 1;
            }

        } else {
            c->event = E_OTHER;
        }

        return 0;
    }

    if (len < 6 || memcmp(p, "data: ", 6) != 0) {
        /* retry:, id:, comments */
        return 0;
    }

    p += 6;

    if (cfg.proto == P_OPENAI) {
        saw_event(c, now);

        if (end - p == 6 && memcmp(p, "[DONE]", 6) == 0) {
            if (!c->done) {
                c->done = 1;
                stream_done(c, now);
            }
            return 0;
        }

        if (end - p > 9 && memcmp(p, "{\"error\"", 8) == 0) {
            if (!c->failed) {
                g_st.err_sse++;
                c->failed = 1;
            }
            return 0;
        }

    } else if (c->event == E_STEP_START) {
        if (c->t_steps == 0) {
            c->t_steps = now;
        }
        return 0;

    } else if (c->event == E_STEP) {
        d = json_num(p, end, "\"duration\"", 10);
        if (d >= 0) {
            c->step_dur += d * 1e6;
            c->nsteps++;
            c->t_step = now;
        }

        /* the first stamp of its output, if it is the mock's */
        s = json_str(p, end, "\"output\"", 8);
        for (v = 0; s && s < end && *s >= '0' && *s <= '9'; s++) {
            v = v * 10 + (*s - '0');
        }

        if (v > 1000000000000000ULL) {
            if (c->nstamps++ == 0) {
                c->stamp0 = v;
            }
            c->stamp1 = v;
        }

        return 0;

    } else if (c->event != E_DELTA) {
        return 0;
    }

    n = take_stamps(c, p, end, now);

    if (n > 0) {
        g_total_deltas++;
        if (g_phase == PH_HOLD) {
            g_st.deltas++;
            if (n > 1) {
                g_st.merged++;
            }
        }
    }

    return 0;
}


static int
conn_head(conn_t *c)
{
    char  *e;
    int    status;

    e = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (e == NULL) {
        return c->len > 65536 ? -1 : 0;
    }

    if (c->len < 12 || memcmp(c->buf, "HTTP/1.", 7) != 0) {
        return -1;
    }

    status = atoi(c->buf + 9);
    if (status != 200) {
        return -1;
    }

    e += 4;
    c->len -= e - c->buf;
    memmove(c->buf, e, c->len);
    c->state = C_BODY;

    return 1;
}


static void
conn_read(conn_t *c)
{
    int       rc;
    char     *p, *nl, *end;
    size_t    len;
    ssize_t   n;
    uint64_t  now;

    for ( ;; ) {
        if (c->cap - c->len < LOAD_READ) {
            if (c->cap >= LOAD_MAX_LINE) {
                conn_fail(c, &g_st.err_io);
                return;
            }
            c->cap = c->cap ? c->cap * 2 : LOAD_READ * 2;
            c->buf = xrealloc(c->buf, c->cap);
        }

        n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);

        if (n == 0) {
            conn_end(c, 0);
            return;
        }

        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }

            if (errno == EAGAIN) {
                return;
            }

            conn_end(c, 1);
            return;
        }

        now = wall_us();
        c->len += n;

        if (c->state == C_HEAD) {
            rc = conn_head(c);
            if (rc < 0) {
                conn_fail(c, &g_st.err_http);
                return;
            }
            if (rc == 0) {
                continue;
            }
        }

        p = c->buf;
        end = c->buf + c->len;

        while (p < end && (nl = memchr(p, '\n', end - p)) != NULL) {
            len = nl - p;
            if (len && p[len - 1] == '\r') {
                len--;
            }

            conn_line(c, p, len, now);
            p = nl + 1;
        }

        c->len = end - p;
        if (c->len && p != c->buf) {
            memmove(c->buf, p, c->len);
        }

        if ((size_t) n < LOAD_READ) {
            return;
        }
    }
}


static void
conn_event(conn_t *c, uint32_t ev)
{
    if (c->state == C_CONNECTING || c->sent < g_req_len) {
        if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
            conn_send(c);
        }
        return;
    }

    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        conn_read(c);
    }
}


/* the configuration */

static int
parse_url(const char *url)
{
    const char  *p, *slash, *colon;
    size_t       n;

    if (strncmp(url, "http://", 7) != 0) {
        return -1;
    }

    p = url + 7;
    slash = strchr(p, '/');
    if (slash == NULL) {
        slash = p + strlen(p);
    }

    colon = memchr(p, ':', slash - p);
    n = (colon ? colon : slash) - p;
    if (n == 0 || n >= sizeof(cfg.host)) {
        return -1;
    }

    memcpy(cfg.host, p, n);
    cfg.host[n] = '\0';
    cfg.port = colon ? atoi(colon + 1) : 80;
    cfg.path = strdup(*slash ? slash : "/");

    memset(&g_addr, 0, sizeof(g_addr));
    g_addr.sin_family = AF_INET;
    g_addr.sin_port = htons(cfg.port);

    return inet_pton(AF_INET, cfg.host, &g_addr.sin_addr) == 1 ? 0 : -1;
}


static int
parse_list(const char *s, long *out, int max)
{
    int    n;
    char  *e;

    n = 0;

    while (*s && n < max) {
        out[n++] = strtol(s, &e, 10);
        if (e == s || out[n - 1] <= 0) {
            return -1;
        }
        s = (*e == ',') ? e + 1 : e;
    }

    return n;
}


static int
parse_floor(const char *s)
{
    char  *e;

    while (*s && cfg.nfloor < LOAD_MAX_LEVELS) {
        cfg.floor_level[cfg.nfloor] = strtol(s, &e, 10);
        if (*e != ':') {
            return -1;
        }
        cfg.floor_p99[cfg.nfloor++] = strtod(e + 1, &e);
        s = (*e == ',') ? e + 1 : e;
    }

    return 0;
}


static int
parse_group(const char *s)
{
    group_t     *g;
    const char  *eq;
    char        *e;

    if (cfg.ngroups == LOAD_MAX_GROUPS) {
        return -1;
    }

    g = &cfg.groups[cfg.ngroups++];
    eq = strchr(s, '=');
    if (eq == NULL || eq == s || (size_t) (eq - s) >= sizeof(g->name)) {
        return -1;
    }

    memcpy(g->name, s, eq - s);
    s = eq + 1;

    while (*s && g->npids < LOAD_MAX_PIDS) {
        g->pids[g->npids++] = (int) strtol(s, &e, 10);
        if (e == s) {
            return -1;
        }
        s = (*e == ',') ? e + 1 : e;
    }

    return 0;
}


static int
parse_redis(const char *s)
{
    char        host[64];
    const char *colon;

    colon = strrchr(s, ':');
    if (colon == NULL || (size_t) (colon - s) >= sizeof(host)) {
        return -1;
    }

    memcpy(host, s, colon - s);
    host[colon - s] = '\0';

    memset(&cfg.redis_addr, 0, sizeof(cfg.redis_addr));
    cfg.redis_addr.sin_family = AF_INET;
    cfg.redis_addr.sin_port = htons((uint16_t) atoi(colon + 1));

    if (inet_pton(AF_INET, host, &cfg.redis_addr.sin_addr) != 1) {
        return -1;
    }

    cfg.redis = 1;
    return 0;
}


static void
usage(void)
{
    fprintf(stderr,
        "usage: llm-load --url http://HOST:PORT/PATH [--proto sse|openai]\n"
        "                --levels N[,N...] [--ramp-rate CONN/S]"
        " [--settle S] [--hold S]\n"
        "                [--tps N] [--stop-added-ms MS]"
        " [--floor N:P99US,...]\n"
        "                [--sample NAME=PID,...]... [--series FILE]"
        " [--deadline S]\n"
        "                [--label STR] [--redis HOST:PORT]\n");
}


static int
parse_args(int argc, char **argv)
{
    int          i;
    const char  *a, *v, *url;

    url = NULL;
    cfg.proto = P_SSE;
    cfg.ramp_rate = 1000;
    cfg.settle = 2;
    cfg.hold = 10;
    cfg.deadline = 600;
    cfg.label = "";

    for (i = 1; i < argc; i++) {
        a = argv[i];

        if (i + 1 >= argc) {
            usage();
            return -1;
        }

        v = argv[++i];

        if (strcmp(a, "--url") == 0) {
            url = v;
        } else if (strcmp(a, "--proto") == 0) {
            if (strcmp(v, "sse") == 0) {
                cfg.proto = P_SSE;
            } else if (strcmp(v, "openai") == 0) {
                cfg.proto = P_OPENAI;
            } else {
                usage();
                return -1;
            }
        } else if (strcmp(a, "--levels") == 0) {
            cfg.nlevels = parse_list(v, cfg.levels, LOAD_MAX_LEVELS);
            if (cfg.nlevels <= 0) {
                usage();
                return -1;
            }
        } else if (strcmp(a, "--ramp-rate") == 0) {
            cfg.ramp_rate = atof(v);
        } else if (strcmp(a, "--settle") == 0) {
            cfg.settle = atof(v);
        } else if (strcmp(a, "--hold") == 0) {
            cfg.hold = atof(v);
        } else if (strcmp(a, "--tps") == 0) {
            cfg.tps = atof(v);
        } else if (strcmp(a, "--stop-added-ms") == 0) {
            cfg.stop_added_ms = atof(v);
        } else if (strcmp(a, "--floor") == 0) {
            if (parse_floor(v) != 0) {
                usage();
                return -1;
            }
        } else if (strcmp(a, "--sample") == 0) {
            if (parse_group(v) != 0) {
                usage();
                return -1;
            }
        } else if (strcmp(a, "--series") == 0) {
            cfg.series = v;
        } else if (strcmp(a, "--deadline") == 0) {
            cfg.deadline = atof(v);
        } else if (strcmp(a, "--label") == 0) {
            cfg.label = v;
        } else if (strcmp(a, "--redis") == 0) {
            if (parse_redis(v) != 0) {
                usage();
                return -1;
            }
        } else {
            usage();
            return -1;
        }
    }

    if (url == NULL || parse_url(url) != 0 || cfg.nlevels == 0
        || cfg.ramp_rate <= 0 || cfg.hold <= 0)
    {
        usage();
        return -1;
    }

    return 0;
}


static void
build_request(void)
{
    static const char  body[] =
        "{\"model\":\"bench\",\"stream\":true,\"messages\":"
        "[{\"role\":\"user\",\"content\":\"Write a story.\"}]}";
    size_t             n;

    n = strlen(cfg.path) + sizeof(body) + 512;
    g_req = xrealloc(NULL, n);

    if (cfg.proto == P_OPENAI) {
        g_req_len = snprintf(g_req, n, "POST %s HTTP/1.0\r\n"
                             "Host: %s:%d\r\n"
                             "Content-Type: application/json\r\n"
                             "Accept: text/event-stream\r\n"
                             "Content-Length: %zu\r\n\r\n%s",
                             cfg.path, cfg.host, cfg.port,
                             sizeof(body) - 1, body);

    } else {
        g_req_len = snprintf(g_req, n, "GET %s HTTP/1.0\r\n"
                             "Host: %s:%d\r\n"
                             "Accept: text/event-stream\r\n\r\n",
                             cfg.path, cfg.host, cfg.port);
    }
}


/* the report of one level */

static double
floor_for(long level)
{
    int     i;
    long    best;
    double  p99;

    best = -1;
    p99 = -1;

    /* the floor of this level, or of the closest level below it */
    for (i = 0; i < cfg.nfloor; i++) {
        if (cfg.floor_level[i] <= level && cfg.floor_level[i] > best) {
            best = cfg.floor_level[i];
            p99 = cfg.floor_p99[i];
        }
    }

    if (best >= 0) {
        return p99;
    }

    /* below every floor level: the lowest one */
    for (i = 0; i < cfg.nfloor; i++) {
        if (best < 0 || cfg.floor_level[i] < best) {
            best = cfg.floor_level[i];
            p99 = cfg.floor_p99[i];
        }
    }

    return p99;
}


static int
report_level(long level, double secs, double client_cpu, long long m0[3])
{
    int          g, fail;
    uint64_t     errors;
    double       expected, delivery, floor, p99;
    char         reason[128];
    group_t     *gr;
    long         tck;
    long long    m1[3];
    double       ours, tasks;
    int          exited;

    qsort(g_st.lat.v, g_st.lat.n, sizeof(uint32_t), cmp_u32);
    qsort(g_st.ttft.v, g_st.ttft.n, sizeof(uint32_t), cmp_u32);
    qsort(g_st.ttfe.v, g_st.ttfe.n, sizeof(uint32_t), cmp_u32);
    qsort(g_st.dur.v, g_st.dur.n, sizeof(uint32_t), cmp_u32);
    qsort(g_st.gap.v, g_st.gap.n, sizeof(uint32_t), cmp_u32);
    qsort(g_st.cycle.v, g_st.cycle.n, sizeof(uint32_t), cmp_u32);

    errors = g_st.err_connect + g_st.err_http + g_st.err_sse + g_st.err_io;
    expected = cfg.tps * level * secs;
    delivery = expected > 0 ? g_st.tokens / expected : -1;
    p99 = pct(&g_st.lat, 0.99);
    floor = floor_for(level);

    fail = 0;
    reason[0] = '\0';
    exited = 0;

    for (g = 0; g < cfg.ngroups; g++) {
        exited += cfg.groups[g].ngone - cfg.groups[g].ngone_reported;
        cfg.groups[g].ngone_reported = cfg.groups[g].ngone;
    }

    if (exited) {
        fail = 1;
        snprintf(reason, sizeof(reason), "%d sampled process(es) exited, "
                 "%llu errors, %llu incomplete", exited,
                 (unsigned long long) errors,
                 (unsigned long long) g_st.incomplete);

    } else if (errors || g_st.incomplete) {
        fail = 1;
        snprintf(reason, sizeof(reason), "%llu errors, %llu incomplete",
                 (unsigned long long) errors,
                 (unsigned long long) g_st.incomplete);

    } else if (expected > 0 && delivery < 0.9) {
        fail = 1;
        snprintf(reason, sizeof(reason), "%.0f%% of the expected tokens",
                 delivery * 100);

    } else if (cfg.stop_added_ms > 0 && floor >= 0
               && p99 - floor > cfg.stop_added_ms * 1000)
    {
        fail = 1;
        snprintf(reason, sizeof(reason), "p99 added %.1f ms",
                 (p99 - floor) / 1000);
    }

    tck = sysconf(_SC_CLK_TCK);

    /*
     * The machine's CPU over the hold: task time (user, nice, system),
     * interrupt time (loopback TCP runs much of its work in softirqs),
     * steal.  "other" is the task time of processes not sampled here:
     * whatever else runs on the machine.
     */
    machine_ticks(m1);
    tasks = (double) (m1[0] - m0[0]) / tck / secs;
    ours = client_cpu / secs;
    for (g = 0; g < cfg.ngroups; g++) {
        gr = &cfg.groups[g];
        ours += (double) (gr->ticks - gr->ticks0) / tck / secs;
    }

    printf("{\"label\":\"%s\",\"level\":%ld,\"open\":%ld,\"secs\":%.3f,"
           "\"started\":%llu,\"completed\":%llu,\"incomplete\":%llu,"
           "\"err_connect\":%llu,\"err_http\":%llu,\"err_sse\":%llu,"
           "\"err_io\":%llu,\"errors\":%llu,"
           "\"deltas\":%llu,\"tokens\":%llu,\"merged\":%llu,"
           "\"expected_tokens\":%.0f,\"delivery\":%.4f,"
           "\"eps\":%.1f,\"tokps\":%.1f,",
           cfg.label, level, g_open, secs,
           (unsigned long long) g_st.started,
           (unsigned long long) g_st.completed,
           (unsigned long long) g_st.incomplete,
           (unsigned long long) g_st.err_connect,
           (unsigned long long) g_st.err_http,
           (unsigned long long) g_st.err_sse,
           (unsigned long long) g_st.err_io,
           (unsigned long long) errors,
           (unsigned long long) g_st.deltas,
           (unsigned long long) g_st.tokens,
           (unsigned long long) g_st.merged,
           expected, delivery,
           g_st.deltas / secs, g_st.tokens / secs);

    printf("\"lat_n\":%zu,\"lat_p50\":%.0f,\"lat_p90\":%.0f,"
           "\"lat_p99\":%.0f,\"lat_max\":%.0f,"
           "\"ttft_n\":%zu,\"ttft_p50\":%.0f,\"ttft_p90\":%.0f,"
           "\"ttft_p99\":%.0f,\"ttft_max\":%.0f,"
           "\"ttfe_p50\":%.0f,\"ttfe_p99\":%.0f,"
           "\"floor_p99\":%.0f,\"client_cpu\":%.3f,"
           "\"total_started\":%llu,\"total_tokens\":%llu,"
           "\"machine_tasks\":%.3f,\"machine_irq\":%.3f,"
           "\"machine_steal\":%.3f,\"other_cpu\":%.3f,",
           g_st.lat.n, pct(&g_st.lat, 0.5), pct(&g_st.lat, 0.9), p99,
           pct(&g_st.lat, 1.0),
           g_st.ttft.n, pct(&g_st.ttft, 0.5), pct(&g_st.ttft, 0.9),
           pct(&g_st.ttft, 0.99), pct(&g_st.ttft, 1.0),
           pct(&g_st.ttfe, 0.5), pct(&g_st.ttfe, 0.99),
           floor, client_cpu, (unsigned long long) g_total_started,
           (unsigned long long) g_total_tokens, tasks,
           (double) (m1[1] - m0[1]) / tck / secs,
           (double) (m1[2] - m0[2]) / tck / secs,
           tasks > ours ? tasks - ours : 0);

    /* streams completed in the hold; pipelines: the time between steps */
    printf("\"dur_n\":%zu,\"dur_mean\":%.0f,\"dur_p50\":%.0f,"
           "\"dur_p99\":%.0f,\"dur_max\":%.0f,"
           "\"pipelines\":%zu,\"steps\":%llu,\"step_dur_mean\":%.0f,"
           "\"gap_n\":%llu,\"gap_mean\":%.1f,\"gap_p50\":%.0f,"
           "\"gap_p90\":%.0f,\"gap_p99\":%.0f,"
           "\"cycle_n\":%llu,\"cycle_mean\":%.1f,\"cycle_p50\":%.0f,"
           "\"cycle_p99\":%.0f,",
           g_st.dur.n, dur_mean(&g_st.dur), pct(&g_st.dur, 0.5),
           pct(&g_st.dur, 0.99), pct(&g_st.dur, 1.0), g_st.gap.n,
           (unsigned long long) g_st.steps,
           g_st.steps ? g_st.step_dur / g_st.steps : -1,
           (unsigned long long) g_st.gaps,
           g_st.gaps ? g_st.gap_sum / g_st.gaps : -1,
           gap_pct(&g_st.gap, 0.5), gap_pct(&g_st.gap, 0.9),
           gap_pct(&g_st.gap, 0.99),
           (unsigned long long) g_st.cycles,
           g_st.cycles ? g_st.cycle_sum / g_st.cycles : -1,
           pct(&g_st.cycle, 0.5), pct(&g_st.cycle, 0.99));

    if (cfg.redis) {
        redis_json(&g_redis0, &g_redis1);
    }

    /* wall clock: run.sh's own probes (scenario 8) line up with the hold */
    printf("\"hold_from\":%.3f,\"hold_to\":%.3f,", g_hold_wall / 1e6,
           wall_us() / 1e6);

    printf("\"groups\":{");

    for (g = 0; g < cfg.ngroups; g++) {
        gr = &cfg.groups[g];
        printf("%s\"%s\":{\"pids\":%d,\"idle_rss_kb\":%ld,\"rss_kb\":%.0f,"
               "\"rss_max_kb\":%ld,\"idle_pss_kb\":%ld,\"pss_kb\":%.0f,"
               "\"idle_shm_kb\":%ld,\"shm_kb\":%.0f,\"exited\":%d,"
               "\"cpu_s\":%.2f}",
               g ? "," : "", gr->name, gr->npids, gr->idle_rss,
               gr->rss_n ? gr->rss_sum / gr->rss_n : (double) gr->rss,
               gr->rss_max, gr->idle_pss,
               gr->rss_n ? gr->pss_sum / gr->rss_n : (double) gr->pss,
               gr->idle_shm,
               gr->rss_n ? gr->shm_sum / gr->rss_n : (double) gr->shm,
               gr->ngone,
               (double) (gr->ticks - gr->ticks0) / (double) tck);
    }

    printf("},\"ok\":%s,\"reason\":\"%s\"}\n", fail ? "false" : "true",
           reason);
    fflush(stdout);

    fprintf(stderr, "llm-load %s: %6ld streams: p50 %7.2f p99 %8.2f ms, "
            "ttft p99 %7.1f ms, %8.0f tok/s (%5.1f%%), other cpu %.2f, "
            "err %llu inc %llu%s%s\n", cfg.label, level,
            pct(&g_st.lat, 0.5) / 1000, p99 / 1000,
            pct(&g_st.ttft, 0.99) / 1000, g_st.tokens / secs,
            delivery * 100, tasks > ours ? tasks - ours : 0,
            (unsigned long long) errors,
            (unsigned long long) g_st.incomplete, fail ? ": " : "", reason);

    return fail;
}


static void
on_signal(int signo)
{
    (void) signo;
    g_stop = 1;
}


int
main(int argc, char **argv)
{
    int                 i, n, lv, fail, g;
    long                target, level, base;
    double              t, cpu0;
    long long           m0[3];
    uint64_t            now, start, phase_at, next_sample, ramp_at;
    struct rlimit       rl;
    struct epoll_event  evs[1024];

    if (parse_args(argc, argv) != 0) {
        return 1;
    }

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);

    build_request();

    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep < 0) {
        perror("llm-load: epoll_create1");
        return 1;
    }

    if (cfg.series) {
        g_series = fopen(cfg.series, "w");
        if (g_series) {
            fprintf(g_series, "# t_s level open tokens deltas");
            for (g = 0; g < cfg.ngroups; g++) {
                fprintf(g_series, " %s_rss_kb %s_ticks", cfg.groups[g].name,
                        cfg.groups[g].name);
            }
            fprintf(g_series, "\n");
        }
    }

    sample_groups(0);
    for (g = 0; g < cfg.ngroups; g++) {
        cfg.groups[g].idle_rss = cfg.groups[g].rss;
        cfg.groups[g].idle_pss = cfg.groups[g].pss;
        cfg.groups[g].idle_shm = cfg.groups[g].shm;
    }

    start = mono_us();
    next_sample = start;
    lv = 0;
    level = cfg.levels[0];
    base = 0;
    g_phase = PH_RAMP;
    phase_at = start;
    ramp_at = start;
    cpu0 = 0;
    fail = 0;

    while (!g_stop) {
        now = mono_us();

        if ((now - start) / 1e6 > cfg.deadline) {
            fprintf(stderr, "llm-load: deadline reached\n");
            break;
        }

        /* keep the level: ramp, and replace the streams that ended */
        t = (now - ramp_at) / 1e6;
        target = base + (long) (t * cfg.ramp_rate);
        if (target > level) {
            target = level;
        }

        while (g_open < target) {
            if (conn_open() != 0) {
                break;
            }
        }

        if (g_phase == PH_RAMP && g_open >= level) {
            g_phase = PH_SETTLE;
            phase_at = now;

        } else if (g_phase == PH_SETTLE
                   && (now - phase_at) / 1e6 >= cfg.settle)
        {
            /* the measurement starts: latency samples from now on */
            if (cfg.redis) {
                redis_probe(&g_redis0);
                now = mono_us();
            }
            g_phase = PH_HOLD;
            phase_at = now;
            g_hold_wall = wall_us();
            g_st.lat.n = 0;
            g_st.deltas = g_st.tokens = g_st.merged = 0;
            for (g = 0; g < cfg.ngroups; g++) {
                cfg.groups[g].rss_sum = 0;
                cfg.groups[g].pss_sum = 0;
                cfg.groups[g].shm_sum = 0;
                cfg.groups[g].rss_n = 0;
                cfg.groups[g].rss_max = 0;
            }
            sample_groups(1);
            for (g = 0; g < cfg.ngroups; g++) {
                cfg.groups[g].ticks0 = cfg.groups[g].ticks;
            }
            cpu0 = self_cpu();
            machine_ticks(m0);

        } else if (g_phase == PH_HOLD
                   && (now - phase_at) / 1e6 >= cfg.hold)
        {
            if (cfg.redis) {
                redis_probe(&g_redis1);
            }
            sample_groups(1);
            fail = report_level(level, (now - phase_at) / 1e6,
                                self_cpu() - cpu0, m0);

            if ((fail && cfg.stop_added_ms > 0) || ++lv == cfg.nlevels) {
                break;
            }

            stats_reset(&g_st);
            base = g_open;
            level = cfg.levels[lv];
            g_phase = PH_RAMP;
            ramp_at = now;
            continue;
        }

        if (now >= next_sample) {
            next_sample += LOAD_SAMPLE_US;
            sample_groups(g_phase == PH_HOLD);

            if (g_series) {
                fprintf(g_series, "%.2f %ld %ld %llu %llu",
                        (now - start) / 1e6, level, g_open,
                        (unsigned long long) g_total_tokens,
                        (unsigned long long) g_total_deltas);
                for (g = 0; g < cfg.ngroups; g++) {
                    fprintf(g_series, " %ld %lld", cfg.groups[g].rss,
                            cfg.groups[g].ticks);
                }
                fprintf(g_series, "\n");
            }
        }

        n = epoll_wait(g_ep, evs, 1024, g_phase == PH_RAMP ? 2 : 20);

        for (i = 0; i < n; i++) {
            conn_event(evs[i].data.ptr, evs[i].events);
        }
    }

    if (g_series) {
        fclose(g_series);
    }

    /* the streams still open are closed here: they are not counted */
    return g_stop ? 1 : 0;
}
