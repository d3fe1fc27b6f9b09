"""Renders the benchmark's raw results as bench/results/<date>.md.

    python3 bench/report.py build/bench bench/results/DAY.md \
        bench/results/DAY.png

Reads the JSON lines that bench/llm-load.c printed (one per level) for each
run of bench/run.sh, writes the Markdown report and the data files that
bench/plot.gp draws (build/bench/s2-*.dat).  Standard library only.
"""

import json
import os
import sys

GOAL_STREAMS = 10000
GOAL_KB_PER_STREAM = 16
GOAL_P99_ADDED_MS = 2.0
GOAL_RATIO = 10
GOAL_REDIS_RT_PER_TOKEN = 0.1   # at most one round trip per 10 tokens
GOAL_REDIS_ADDED_MS = 1.0       # p99, Redis store against memory store
GOAL_FORMAT_RATIO = 1.10        # user template against the default format
CAP_ADDED_MS = 100
# round two (issue 14)
GOAL2_STREAMS_PER_CONN = 50     # upstream connections, HTTPS
GOAL2_HTTPS_KB = 16
GOAL2_PLAIN_KB = 12
GOAL2_STREAMS = 20000
GOAL2_CAP_ADDED_MS = 50
GOAL2_CPU_MTOK = 42.9 / 2       # half of round one's figure
BUSY_CORE = 0.8          # a helper above this may be the bottleneck
OTHER_CORE = 0.2         # CPU of processes that are not part of the run
SATURATED = 1.8          # all of it: the 2 cores are (nearly) used up


def load(work, name):
    path = os.path.join(work, name + ".json")
    if not os.path.exists(path):
        return None
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows or None


def load_obj(work, name):
    path = os.path.join(work, name)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def ms(us):
    if us is None or us < 0:
        return "n/a"
    v = us / 1000.0
    if v < 10:
        return "%.2f" % v
    if v < 100:
        return "%.1f" % v
    return "%.0f" % v


def num(v, fmt="%.0f"):
    if v is None:
        return "n/a"
    return fmt % v


def grp(row, name, key):
    g = row.get("groups", {}).get(name)
    return None if g is None else g.get(key)


def relay_cpu(row):
    """CPU seconds of the relay: nginx workers (+ uvicorn workers)."""
    total = 0.0
    for name in ("nginx", "uvicorn"):
        v = grp(row, name, "cpu_s")
        if v is not None:
            total += v
    return total


def relay_rss_delta(row):
    """kB the relay's processes grew by, from idle (nginx + uvicorn)."""
    total = 0.0
    for name in ("nginx", "uvicorn"):
        g = row.get("groups", {}).get(name)
        if g is not None:
            total += g["rss_kb"] - g["idle_rss_kb"]
    return total


def relay_delta(row, key):
    """kB of KEY (rss, pss, shm) the relay's processes grew by."""
    total = None
    for name in ("nginx", "uvicorn"):
        g = row.get("groups", {}).get(name)
        if g is not None and (key + "_kb") in g:
            total = (total or 0.0) + g[key + "_kb"] - g["idle_" + key + "_kb"]
    return total


def per_stream(v, n):
    return "n/a" if v is None else "%.1f" % (v / n)


def cores(row, name):
    v = grp(row, name, "cpu_s")
    return None if v is None else v / row["secs"]


def busy_helpers(row):
    """Names of the helpers (mock, load client) that were near a core,
    and other processes of the machine that took CPU."""
    out = []
    o = row.get("other_cpu", 0)
    if o >= OTHER_CORE:
        out.append("other processes on the machine %.2f cores" % o)
    total = relay_cpu(row) / row["secs"] + (cores(row, "mock") or 0) \
        + (cores(row, "redis") or 0) + (cores(row, "front") or 0) \
        + row["client_cpu"] / row["secs"] + o
    if total >= SATURATED:
        out.append("the machine was saturated: relay, mock, client and "
                   "others used %.2f of the 2 cores" % total)
    c = cores(row, "mock")
    if c is not None and c >= BUSY_CORE:
        out.append("mock %.2f cores" % c)
    c = row["client_cpu"] / row["secs"]
    if c >= BUSY_CORE:
        out.append("load client %.2f cores" % c)
    return out


def cpu_per_mtok(row, cpu=None):
    cpu = relay_cpu(row) if cpu is None else cpu
    if not row["tokens"]:
        return None
    return cpu / row["tokens"] * 1e6


def nproxy_ref(r, wait, stream):
    """RSS per stream of the nginx proxy_pass reference, as text."""
    out = []
    for name, state in ((wait, "waiting"), (stream, "streaming")):
        for row in r.get(name) or []:
            out.append("%.1f KB (%s, %d)" % (
                relay_rss_delta(row) / row["level"], state, row["level"]))
    return ", ".join(out)


def held(rows):
    """The largest level that passed, and the first failure."""
    best, fail = 0, None
    for r in rows:
        if r["ok"]:
            best = max(best, r["level"])
        elif fail is None:
            fail = r
    return best, fail


def held_at(rows, added_ms):
    """The largest level of a staircase held with a p99 added over the
    floor of at most added_ms, before the first level that was not."""
    best = 0
    for x in rows:
        if not x["ok"] or x.get("floor_p99", -1) < 0 \
           or x["lat_p99"] - x["floor_p99"] > added_ms * 1000:
            break
        best = x["level"]
    return best


def floor_at(frows, level):
    """The floor row of a level: that level, else the closest one below,
    else the lowest (the same rule as llm-load's --floor)."""
    if not frows:
        return None
    below = [x for x in frows if x["level"] <= level]
    if below:
        return max(below, key=lambda x: x["level"])
    return min(frows, key=lambda x: x["level"])


def yes(ok):
    return "yes" if ok else "**no**"


def redis_figures(row, store):
    """Scenario 5: what the Redis store cost during the hold, per token.
    None without the probe's figures (llm-load --redis)."""
    rd = row.get("redis")
    if not rd or not rd.get("ok") or not row["tokens"]:
        return None
    tok = float(row["tokens"])
    calls = rd.get("calls", {})
    flush = store.get("flush_ms", 100)
    workers = store.get("workers", 2)
    # one pipelined round trip per flush and worker at most
    rt_max = row["secs"] * 1000.0 / flush * workers
    cpu = None
    if rd.get("cpu_sys", -1) >= 0 and rd.get("cpu_user", -1) >= 0:
        cpu = rd["cpu_sys"] + rd["cpu_user"]
    elif grp(row, "redis", "cpu_s") is not None:
        cpu = grp(row, "redis", "cpu_s")
    return {
        "cmds": rd["commands"] / tok,
        "exec": calls.get("exec", 0) / tok,
        "rt_max": rt_max,
        "rt": rt_max / tok,
        "reads": rd["reads"],
        "reads_tok": rd["reads"] / tok if rd["reads"] >= 0 else None,
        "net_in_tok": rd["net_in"] / tok if rd["net_in"] >= 0 else None,
        "connections": rd["connections"],
        "cpu": cpu,
        "cores": None if cpu is None else cpu / row["secs"],
        "calls": calls,
        "usec": rd.get("usec", {}),
    }


def ratio(a, b):
    """a / b, None when b is not positive."""
    if a is None or b is None or b <= 0:
        return None
    return a / float(b)


def times(a, b):
    """a / b as "N.NNx", "n/a" when b is not positive."""
    if a is None or b is None or b <= 0:
        return "n/a"
    return "%.2fx" % (a / float(b))


def format_cost(r):
    """Scenario 6: the story format against the default, per measure.
    The CPU ratio from scenario 4's load, the p99 added ratio from
    scenario 1's; None when neither pair ran."""
    f, d, s = r["s6-floor"], r["s6-default"], r["s6-story"]
    cd, cs = r["s6-cpu-default"], r["s6-cpu-story"]
    out = {"cpu": None, "p99": None, "parts": [], "met": None}
    oks = []
    if cd and cs:
        a, b = cpu_per_mtok(cd[0]), cpu_per_mtok(cs[0])
        k = ratio(b, a)
        out["cpu"] = k
        if k is None:
            out["parts"].append("CPU per million tokens n/a (no tokens)")
            oks.append(False)
        else:
            out["parts"].append("CPU per million tokens %.2fx (%.1f / %.1f "
                                "s)" % (k, b, a))
            oks.append(k <= GOAL_FORMAT_RATIO)
    if f and d and s:
        da = d[0]["lat_p99"] - f[0]["lat_p99"]
        sa = s[0]["lat_p99"] - f[0]["lat_p99"]
        k = ratio(sa, da)
        out["p99"] = k
        out["p99_added"] = (da, sa)
        if not s[0]["tokens"] or d[0]["lat_p99"] < 0 or s[0]["lat_p99"] < 0:
            out["parts"].append("p99 added n/a (no latency samples)")
            oks.append(False)
        elif k is None:
            # the default added nothing over the floor: the template may
            # not either
            out["parts"].append("p99 added %s ms against %s ms (the "
                                "default's is not above the floor: no "
                                "ratio)" % (ms(sa), ms(da)))
            oks.append(sa <= 0)
        else:
            out["parts"].append("p99 added %.2fx (%s / %s ms)" % (
                k, ms(sa), ms(da)))
            oks.append(k <= GOAL_FORMAT_RATIO)
    if not out["parts"]:
        return None
    out["measured"] = "; ".join(out["parts"])
    # met only when both measures ran and passed
    out["met"] = all(oks) if len(oks) == 2 else (False if not all(oks)
                                                  else None)
    return out


def us(v, fmt="%.2f"):
    """Microseconds as milliseconds, signed (the time between steps may
    come out below zero); n/a for None."""
    return "n/a" if v is None else fmt % (v / 1000.0)


def pipeline_cost(r, steps):
    """Scenario 7 b): the 7-step pipeline against one prompt of the same
    tokens; None unless both ran."""
    f, one, seven = r["s7-floor"], r["s7-one"], r["s7-seven"]
    if not (one and seven):
        return None
    o, s = one[0], seven[0]
    out = {}
    if f and o["lat_p99"] >= 0 and s["lat_p99"] >= 0:
        oa = o["lat_p99"] - f[0]["lat_p99"]
        sa = s["lat_p99"] - f[0]["lat_p99"]
        out["p99"] = (oa, sa, ratio(sa, oa))
    out["cpu"] = (cpu_per_mtok(o), cpu_per_mtok(s),
                  ratio(cpu_per_mtok(s), cpu_per_mtok(o)))
    od, sd = o.get("dur_mean", -1), s.get("dur_mean", -1)
    if od > 0 and sd > 0:
        out["dur"] = (od, sd, ratio(sd, od), (sd - od) / max(steps - 1, 1))
    return out


def front_probe(work, name, row):
    """Scenario 8: the probe's samples inside the hold.  Each line is
    "time established accepts handled requests"; every sample made one
    connection and one request to the front itself (stub_status), which
    are taken out."""
    path = os.path.join(work, name + ".probe")
    if not os.path.exists(path):
        return None
    rows = []
    with open(path) as f:
        for line in f:
            v = line.split()
            if len(v) == 5:
                rows.append([float(v[0])] + [int(x) for x in v[1:]])
    inside = [x for x in rows
              if row["hold_from"] <= x[0] <= row["hold_to"]]
    if len(inside) < 2:
        return None
    a, b = inside[0], inside[-1]
    n = len(inside) - 1
    est = [x[1] for x in inside]
    conns = b[2] - a[2] - n
    gens = b[4] - a[4] - n
    return {"est_mean": sum(est) / float(len(est)), "est_max": max(est),
            "new_conns": conns, "generations": gens, "secs": b[0] - a[0],
            "per_gen": conns / float(gens) if gens > 0 else None}


def front_log(work, port):
    """Scenario 8: the front's access log for one listener over the whole
    run (ramp included): requests, connections, TLS sessions resumed,
    protocols."""
    path = os.path.join(work, "front", "logs", "access.log")
    if not os.path.exists(path):
        return None
    reqs, conns, reused, protos = 0, set(), set(), {}
    with open(path) as f:
        for line in f:
            v = line.split()
            if len(v) != 7 or v[1] != str(port):
                continue
            reqs += 1
            conns.add(v[2])
            if v[4] == "r":
                reused.add(v[2])
            protos[v[5]] = protos.get(v[5], 0) + 1
    return {"requests": reqs, "connections": len(conns),
            "reused": len(reused), "protocols": protos}


def long_figures(x):
    """Scenario 9: one long job's figures."""
    tokens = (x.get("usage") or {}).get("output_tokens") \
        or x.get("tokens_asked")
    f = {"tokens": tokens}
    for side in ("owner", "other"):
        s = x.get(side)
        if s:
            f[side + "_kb"] = s["max_kb"] - s["idle_kb"]
            f[side + "_end_kb"] = s["end_kb"] - s["idle_kb"]
    keys = x.get("redis_keys")
    if keys is not None:
        f["redis_bytes"] = sum(k["bytes"] for k in keys.values())
        f["redis_keys"] = len(keys)
    for name in ("start", "middle"):
        rows = x.get("resume", {}).get(name) or []
        if rows:
            n = float(len(rows))
            f[name] = {
                "n": len(rows),
                "ok": all(r["status"] == 200 and r["complete"]
                          for r in rows),
                "first_ms": sum(r["first_ms"] for r in rows) / n,
                "total_ms": sum(r["total_ms"] for r in rows) / n,
                "max_ms": max(r["total_ms"] for r in rows),
                "bytes": rows[0]["bytes"],
                "cpu_ms": sum(r["cpu_s"] for r in rows) * 1000 / n,
                "owner": sum(1 for r in rows if r["owner"])}
    return f


def s8_rows(r, work):
    """Scenario 8's rows with their probe and log figures."""
    meta = load_obj(work, "s8-meta.json")
    out = []
    for m, label in (("plain", "plain HTTP/1.1"),
                     ("h1", "HTTPS, HTTP/1.1 (ALPN)"),
                     ("h2", "HTTPS, HTTP/2 (ALPN)")):
        rows = r.get("s8-" + m)
        if not rows:
            continue
        x = rows[0]
        out.append((m, label, x, front_probe(work, "s8-" + m, x),
                    front_log(work, meta.get(m))))
    return out


def main():
    work, out_md, out_png = sys.argv[1], sys.argv[2], sys.argv[3]
    meta = load_obj(work, "meta.json")
    meta_end = load_obj(work, "meta-end.json")
    skipped = []
    sk = os.path.join(work, "skipped.json")
    if os.path.exists(sk):
        with open(sk) as f:
            skipped = [json.loads(l) for l in f if l.strip()]

    r = {}
    for name in ("s1-floor", "s1-module", "s1-baseline",
                 "s2-floor", "s2-module", "s2-baseline",
                 "s3-module-wait", "s3-module-stream", "s3-baseline-wait",
                 "s3-nproxy-wait", "s3-nproxy-stream",
                 "s4-floor", "s4-module", "s4-baseline", "s4-nproxy",
                 "s5-floor", "s5-memory", "s5-redis",
                 "s6-floor", "s6-default", "s6-story",
                 "s6-cpu-default", "s6-cpu-story",
                 "s7-steps-floor", "s7-steps", "s7-floor", "s7-one",
                 "s7-seven", "s8-plain", "s8-h1", "s8-h2"):
        r[name] = load(work, name)

    L = []
    w = L.append
    day = meta.get("day", "?")

    w("# ngx_http_llm_module benchmark, %s" % day)
    w("")
    w("Generated by `make bench` (bench/run.sh, bench/report.py); see "
      "bench/README.md for what each scenario measures.  Latencies are "
      "relay latencies: the time a token was received by the load client "
      "minus the time the mock stamped it when sending; *added* is a "
      "relay's percentile minus the floor's (the load client reading the "
      "mock directly) at the same load.")
    w("")
    w("- Machine: %s cores (%s), Linux %s, RLIMIT_NOFILE %s; "
      "%s cores busy just before the run; load average %s at the start, "
      "%s at the end; %s s in all." % (
          meta.get("cpus", "?"), meta.get("cpu_model", "?"),
          meta.get("kernel", "?"), meta.get("nofile", "?"),
          meta.get("busy_before", "?"),
          meta.get("loadavg_start", "?"), meta_end.get("loadavg_end", "?"),
          meta_end.get("elapsed", "?")))
    w("- Module: commit %s, built %s; nginx %s from Debian, "
      "`worker_processes 2`, `llm_pass` to the mock, default thread pool, "
      "`access_log off`." % (meta.get("git", "?"),
                             meta.get("module_built", "?"),
                             meta.get("nginx", "?")))
    w("- Baseline (the seeds' architecture): nginx, `worker_processes 2`, "
      "`proxy_buffering off`, upstream keepalive, in front of "
      "`uvicorn --workers 2 --loop uvloop --http httptools` running a "
      "FastAPI `StreamingResponse` relay (bench/baseline/relay.py, "
      "Python %s, aiohttp upstream client without a pool limit)." %
      meta.get("python", "?"))
    w("- Floor: the load client straight to build/llm-mock (OpenAI "
      "streaming, one thread).  Mock, load client and relays share the "
      "same 2 cores.")
    others = sorted(x.get("other_cpu", 0) for rows in r.values()
                    for x in rows or [])
    if others and others[len(others) // 2] >= 0.5:
        w("- **Not representative: processes outside the benchmark took "
          "%.1f of the 2 cores (median over the measured levels; see the "
          "*other CPU* columns).  Rerun on a quiet machine before quoting "
          "any figure; CPU seconds per token suffer least.**" %
          others[len(others) // 2])
    if meta.get("quick"):
        w("- **BENCH_QUICK run: short holds, low levels; a smoke test of "
          "the instrument, not figures to quote.**")
    w("")

    # --- goals
    s1f, s1m, s1b = r["s1-floor"], r["s1-module"], r["s1-baseline"]
    s2f, s2m, s2b = r["s2-floor"], r["s2-module"], r["s2-baseline"]
    w("## Goals (reported, not asserted)")
    w("")
    w("| Goal | Target | Measured | Met |")
    w("|---|---|---|---|")
    if s2m:
        hm, _ = held(s2m)
        top = max(x["level"] for x in s2m)
        w("| Concurrent streams on one instance | >= %d | %d held "
          "(of %d tried) | %s |" % (GOAL_STREAMS, hm, top,
                                     yes(hm >= GOAL_STREAMS)))
    mem = []
    for name, state in (("s3-module-wait", "waiting"),
                        ("s3-module-stream", "streaming")):
        for row in r[name] or []:
            kb = relay_rss_delta(row) / row["level"]
            mem.append((state, row["level"], kb))
    if mem:
        worst = max(kb for _, _, kb in mem)
        w("| Worker RSS per open stream | <= %d KB | %s | %s |" % (
            GOAL_KB_PER_STREAM,
            ", ".join("%.1f KB (%s, %d)" % (kb, s, n) for s, n, kb in mem),
            yes(worst <= GOAL_KB_PER_STREAM)))
    if s1f and s1m:
        added = (s1m[0]["lat_p99"] - s1f[0]["lat_p99"]) / 1000.0
        w("| p99 added relay latency, 100 streams x 50 tokens/s | <= %g ms "
          "| %.2f ms | %s |" % (GOAL_P99_ADDED_MS, added,
                                yes(added <= GOAL_P99_ADDED_MS)))
    if s2m and s2b:
        hm, _ = held(s2m)
        hb, _ = held(s2b)
        if hb:
            ratio = hm / float(hb)
            w("| Capacity against the baseline, same p99 rule | >= %dx "
              "| %.1fx (%d / %d streams) | %s |" % (
                  GOAL_RATIO, ratio, hm, hb, yes(ratio >= GOAL_RATIO)))
        else:
            w("| Capacity against the baseline | >= %dx | the baseline "
              "held no level | n/a |" % GOAL_RATIO)
    s5f, s5m, s5r = r["s5-floor"], r["s5-memory"], r["s5-redis"]
    store = load_obj(work, "s5-store.json")
    rf = redis_figures(s5r[0], store) if s5r else None
    if rf:
        w("| Redis round trips per token, Redis store, default flush "
          "| <= %g (1 per %d tokens) | <= %.4f (at most %.0f flushes for "
          "%d tokens; an upper bound from the flush interval) | %s |" % (
              GOAL_REDIS_RT_PER_TOKEN, round(1 / GOAL_REDIS_RT_PER_TOKEN),
              rf["rt"], rf["rt_max"], s5r[0]["tokens"],
              yes(rf["rt"] <= GOAL_REDIS_RT_PER_TOKEN)))
    if s5m and s5r:
        added = (s5r[0]["lat_p99"] - s5m[0]["lat_p99"]) / 1000.0
        w("| p99 added by the Redis store (against the memory store, "
          "scenario 1's load, back to back) | <= %g ms | %.2f ms | %s |" % (
              GOAL_REDIS_ADDED_MS, added, yes(added <= GOAL_REDIS_ADDED_MS)))
    fc = format_cost(r)
    if fc:
        w("| Delta event through a user template (`llm_format story` "
          "against the default format, back to back) | within %.0f%%: "
          "<= %.2fx CPU per million tokens (1,000 x 10 tokens/s) and "
          "p99 added (100 x 50 tokens/s) | %s | %s |" % (
              (GOAL_FORMAT_RATIO - 1) * 100, GOAL_FORMAT_RATIO,
              fc["measured"], yes(fc["met"]) if fc["met"] is not None
              else "n/a"))
    w("")

    # --- goals of round two (issue 14)
    s8 = s8_rows(r, work)
    s8d = dict((m, (label, x, pr, lg)) for m, label, x, pr, lg in s8)
    w("## Goals of round two (issue 14; reported, not asserted)")
    w("")
    w("| Goal | Target | Measured | Met |")
    w("|---|---|---|---|")
    if "h2" in s8d and s8d["h2"][2]:
        _, x, pr, _ = s8d["h2"]
        per = x["level"] / max(pr["est_mean"], 1e-9)
        w("| HTTPS upstream, HTTP/2 offered: connections shared "
          "(multiplexed) | <= 1 per %d concurrent streams | %.1f "
          "connections for %d streams (1 per %.0f; scenario 8) | %s |" % (
              GOAL2_STREAMS_PER_CONN, pr["est_mean"], x["level"], per,
              yes(per >= GOAL2_STREAMS_PER_CONN)))
    if "h1" in s8d and s8d["h1"][2]:
        _, x, pr, _ = s8d["h1"]
        per = x["level"] / max(pr["est_mean"], 1e-9)
        w("| HTTPS upstream, HTTP/1.1 only: connections shared "
          "(kept alive and reused) | reused; <= 1 per %d concurrent "
          "streams | reused (%d new connections for %d new generations "
          "in the hold), but %.0f connections for %d streams (1 per "
          "%.1f): HTTP/1.1 carries one stream at a time | %s |" % (
              GOAL2_STREAMS_PER_CONN, pr["new_conns"], pr["generations"],
              pr["est_mean"], x["level"], per,
              yes(per >= GOAL2_STREAMS_PER_CONN)))
    kb = []
    for m in ("h1", "h2"):
        if m in s8d:
            x = s8d[m][1]
            kb.append((m, relay_rss_delta(x) / x["level"]))
    if kb:
        w("| Worker RSS per stream, HTTPS upstream | <= %d KB | %s | %s |"
          % (GOAL2_HTTPS_KB, ", ".join(
              "%.1f KB (%s, %d streams)" % (v, "HTTP/2" if m == "h2"
                                            else "HTTP/1.1",
                                            s8d[m][1]["level"])
              for m, v in kb),
             "HTTP/2 " + yes(dict(kb).get("h2", 1e9) <= GOAL2_HTTPS_KB)
             + ", HTTP/1.1 " + yes(dict(kb).get("h1", 1e9)
                                   <= GOAL2_HTTPS_KB)))
    hs = [(m, s8d[m][2]) for m in ("h1", "h2") if m in s8d and s8d[m][2]]
    if hs:
        w("| No TLS handshake per generation once warm | 0 | %s | %s |" % (
            ", ".join("%s: %d handshakes for %d generations in the hold "
                      "(%.3f each)" % ("HTTP/2" if m == "h2" else
                                        "HTTP/1.1", p["new_conns"],
                                        p["generations"],
                                        p["per_gen"] or 0)
                      for m, p in hs),
            ", ".join("%s %s" % ("HTTP/2" if m == "h2" else "HTTP/1.1",
                                 yes(p["new_conns"] <= 0
                                     and p["generations"] > 0))
                      for m, p in hs)))
    if mem:
        worst = max(kb for _, _, kb in mem)
        ref = nproxy_ref(r, "s3-nproxy-wait", "s3-nproxy-stream")
        w("| Worker RSS per stream, plain HTTP (scenario 3) | <= %d KB "
          "| %s%s | %s |" % (
              GOAL2_PLAIN_KB,
              ", ".join("%.1f KB (%s, %d)" % (kb, s, n)
                        for s, n, kb in mem),
              "; nginx's own proxy_pass, for reference: " + ref
              if ref else "",
              yes(worst <= GOAL2_PLAIN_KB)))
    if s2m:
        hm = held_at(s2m, GOAL2_CAP_ADDED_MS)
        w("| Capacity: streams at 5 tokens/s on the 2 cores, p99 added "
          "<= %d ms | >= %d | %d (scenario 2; its staircase goes to %s "
          "streams at most here: RLIMIT_NOFILE %s) | %s |" % (
              GOAL2_CAP_ADDED_MS, GOAL2_STREAMS, hm,
              meta.get("max_streams", "?"), meta.get("nofile", "?"),
              yes(hm >= GOAL2_STREAMS)))
        if s2b:
            hb = held_at(s2b, GOAL2_CAP_ADDED_MS)
            k = hm / float(hb) if hb else None
            w("| Capacity against the baseline at equal p99 (added <= %d "
              "ms) | >= %dx | %s (%d / %d streams) | %s |" % (
                  GOAL2_CAP_ADDED_MS, GOAL_RATIO,
                  "%.1fx" % k if k else "n/a", hm, hb,
                  yes(k is not None and k >= GOAL_RATIO)))
    s4m, s4n = r["s4-module"], r["s4-nproxy"]
    if s4m:
        c = cpu_per_mtok(s4m[0])
        w("| CPU per million tokens (scenario 4) | <= %.2f s (half of "
          "42.9 s) | %.1f s%s | %s |" % (
              GOAL2_CPU_MTOK, c,
              "; nginx's own proxy_pass, for reference: %.1f s (the module "
              "%.2fx)" % (cpu_per_mtok(s4n[0]),
                          c / max(cpu_per_mtok(s4n[0]), 1e-9))
              if s4n else "", yes(c <= GOAL2_CPU_MTOK)))
    w("")

    # --- 1. latency
    w("## 1. Relay latency: 100 streams x 50 tokens/s")
    w("")
    if s1f and s1m:
        w("5-second streams (250 tokens, first token after 100 ms), "
          "replaced as they end; %s s measured after a settle.  "
          "Latency in ms." % num(s1m[0]["secs"]))
        w("")
        w("| | p50 | p90 | p99 | max | added p50 | added p99 | TTFT p50 "
          "| TTFT p99 | tokens/s | events/s | merged | completed "
          "| errors | incomplete | relay CPU (cores) | other CPU |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---"
          "|---|---|")
        f = s1f[0]
        for label, rows in (("floor (mock)", s1f), ("module", s1m),
                            ("baseline", s1b)):
            if not rows:
                w("| %s | not run |||||||||||||||" % label)
                continue
            x = rows[0]
            is_floor = rows is s1f
            w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %.0f | %.0f "
              "| %d | %d | %d | %d | %s | %.2f |" % (
                  label, ms(x["lat_p50"]), ms(x["lat_p90"]),
                  ms(x["lat_p99"]), ms(x["lat_max"]),
                  "-" if is_floor else ms(x["lat_p50"] - f["lat_p50"]),
                  "-" if is_floor else ms(x["lat_p99"] - f["lat_p99"]),
                  ms(x["ttft_p50"]), ms(x["ttft_p99"]), x["tokps"],
                  x["eps"], x["merged"], x["completed"], x["errors"],
                  x["incomplete"],
                  "-" if is_floor else "%.2f" % (relay_cpu(x) / x["secs"]),
                  x.get("other_cpu", 0)))
        if s1b:
            b, m = s1b[0], s1m[0]
            w("")
            k = relay_cpu(b) / max(relay_cpu(m), 1e-9)
            w("Module against the baseline: p99 added %s ms against %s ms "
              "(p99 %.1fx lower); relay CPU %.1fx %s." % (
                  ms(m["lat_p99"] - f["lat_p99"]),
                  ms(b["lat_p99"] - f["lat_p99"]),
                  b["lat_p99"] / max(m["lat_p99"], 1),
                  k if k >= 1 else 1 / k,
                  "lower" if k >= 1 else "**higher**"))
    else:
        w("Not run.")
    w("")

    # --- 2. capacity
    w("## 2. Capacity: streams at 5 tokens/s until p99 added > %d ms or "
      "errors" % CAP_ADDED_MS)
    w("")
    if s2m:
        hm, fm = held(s2m)
        line = "Module: **%d streams held**" % hm
        if fm:
            line += " (failed at %d: %s)" % (fm["level"], fm["reason"])
        else:
            line += " (every level passed; the staircase stops at %d, " \
                    "the file-descriptor budget of RLIMIT_NOFILE %s)" % (
                        max(x["level"] for x in s2m),
                        meta.get("nofile", "?"))
        w(line + ".")
        if s2b:
            hb, fb = held(s2b)
            line = "Baseline: **%d streams held**" % hb
            if fb:
                line += " (failed at %d: %s)" % (fb["level"], fb["reason"])
            w(line + ".")
            if hb:
                w("Ratio: **%.1fx**." % (hm / float(hb)))
        w("")
        w("Each level: ramp (%s new streams/s), %s s settle, %s s "
          "measured.  Latency in ms; RSS is the relay processes' growth "
          "over idle divided by the streams; CPU in cores (1.0 = one core "
          "busy) and seconds per million relayed tokens; *other CPU* is what "
          "processes outside the run took from the machine meanwhile." % (
              meta.get("ramp", "?"), meta.get("settle", "?"),
              meta.get("hold", "?")))
        w("")
        w("| | streams | p50 | p99 | max | added p99 | tokens/s "
          "| delivered | errors | relay CPU | CPU s/Mtok | RSS KB/stream "
          "| mock CPU | client CPU | other CPU | result |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---"
          "|---|")
        for label, rows in (("floor", s2f), ("module", s2m),
                            ("baseline", s2b)):
            for x in rows or []:
                f = floor_at(s2f, x["level"])
                is_floor = rows is s2f
                added = "-" if is_floor or not f else \
                    ms(x["lat_p99"] - f["lat_p99"])
                if f and not is_floor and f["level"] != x["level"]:
                    added += " (floor at %d)" % f["level"]
                rc = relay_cpu(x)
                w("| %s | %d | %s | %s | %s | %s | %.0f | %.1f%% | %d "
                  "| %s | %s | %s | %.2f | %.2f | %.2f | %s |" % (
                      label, x["level"], ms(x["lat_p50"]),
                      ms(x["lat_p99"]), ms(x["lat_max"]), added,
                      x["tokps"], 100 * x["delivery"],
                      x["errors"] + x["incomplete"],
                      "-" if is_floor else "%.2f" % (rc / x["secs"]),
                      "-" if is_floor else num(cpu_per_mtok(x)),
                      "-" if is_floor else
                      "%.1f" % (relay_rss_delta(x) / x["level"]),
                      cores(x, "mock") or 0, x["client_cpu"] / x["secs"],
                      x.get("other_cpu", 0),
                      "ok" if x["ok"] else x["reason"]))
    else:
        w("Not run.")
    w("")
    w("![p99 and p50 relay latency against concurrent streams](%s)" %
      os.path.basename(out_png))
    w("")

    # --- 3. memory
    w("## 3. Memory: RSS per open stream")
    w("")
    rows3 = []
    for name, label, state in (
            ("s3-module-wait", "module", "waiting for the first token"),
            ("s3-module-stream", "module", "streaming, 1 token/s"),
            ("s3-baseline-wait", "baseline (nginx + uvicorn)",
             "waiting for the first token"),
            ("s3-nproxy-wait", "reference: nginx proxy_pass",
             "waiting for the first token"),
            ("s3-nproxy-stream", "reference: nginx proxy_pass",
             "streaming, 1 token/s")):
        for x in r[name] or []:
            rows3.append((label, state, x))
    if rows3:
        w("A fresh nginx (and relay) for each state.  RSS: VmRSS summed "
          "over the worker processes, the mean of the samples taken while "
          "the level was held, minus the same before the first connection; "
          "divided by the streams.  PSS counts a page shared by the workers "
          "(a shared memory zone) once in all, not once per worker; "
          "*shm* is the growth of shared memory (RssShmem, summed).  "
          "*Reference*: nginx (no module) with `proxy_pass` straight to "
          "the mock, `proxy_buffering off`, upstream keepalive: what "
          "nginx itself holds for a client connection, a request and an "
          "upstream connection when it relays the bytes without reading "
          "them (no events, no job, no resume).")
        w("")
        w("| | state | streams | idle RSS MB | RSS MB | RSS KB/stream "
          "| PSS KB/stream | shm KB/stream | tokens per stream so far |")
        w("|---|---|---|---|---|---|---|---|---|")
        for label, state, x in rows3:
            idle = sum(g["idle_rss_kb"] for n, g in x["groups"].items()
                       if n != "mock")
            now = sum(g["rss_kb"] for n, g in x["groups"].items()
                      if n != "mock")
            # streaming: the tokens a stream had received, on average
            per = "0" if "waiting" in state else "%.0f" % (
                x.get("total_tokens", 0) / max(x.get("total_started", 1), 1))
            w("| %s | %s | %d | %.1f | %.1f | %.1f | %s | %s | %s |" % (
                label, state, x["level"], idle / 1024.0, now / 1024.0,
                relay_rss_delta(x) / x["level"],
                per_stream(relay_delta(x, "pss"), x["level"]),
                per_stream(relay_delta(x, "shm"), x["level"]), per))
    else:
        w("Not run.")
    w("")

    # --- 4. CPU
    w("## 4. CPU: seconds per million relayed tokens")
    w("")
    s4f, s4m, s4b = r["s4-floor"], r["s4-module"], r["s4-baseline"]
    s4n = r["s4-nproxy"]
    if s4m:
        w("1,000 streams x 10 tokens/s; CPU time (utime + stime from "
          "/proc/PID/stat) of the relay's processes over the measured "
          "%s s, divided by the tokens the client received." %
          num(s4m[0]["secs"]))
        w("")
        w("| | tokens | tokens/s | nginx CPU s | uvicorn CPU s "
          "| CPU s per M tokens | cores | p99 ms | mock CPU s/Mtok "
          "| other CPU |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for label, rows in (("floor (mock)", s4f), ("module", s4m),
                            ("baseline", s4b),
                            ("reference: nginx proxy_pass", s4n)):
            if not rows:
                w("| %s | not run ||||||||" % label)
                continue
            x = rows[0]
            is_floor = rows is s4f
            mock = grp(x, "mock", "cpu_s") or 0
            w("| %s | %d | %.0f | %s | %s | %s | %s | %s | %.1f | %.2f |" % (
                label, x["tokens"], x["tokps"],
                num(grp(x, "nginx", "cpu_s"), "%.2f"),
                num(grp(x, "uvicorn", "cpu_s"), "%.2f"),
                "-" if is_floor else num(cpu_per_mtok(x), "%.1f"),
                "-" if is_floor else "%.2f" % (relay_cpu(x) / x["secs"]),
                ms(x["lat_p99"]), mock / max(x["tokens"], 1) * 1e6,
                x.get("other_cpu", 0)))
        if s4b:
            k = cpu_per_mtok(s4b[0]) / max(cpu_per_mtok(s4m[0]), 1e-9)
            w("")
            if k >= 1:
                w("Module against the baseline: **%.1fx less** CPU per "
                  "token." % k)
            else:
                w("Module against the baseline: **%.1fx more** CPU per "
                  "token." % (1 / k))
        if s4n:
            w("")
            w("The reference (nginx's own `proxy_pass` straight to the "
              "mock, `proxy_buffering off`: one read and one write per "
              "token, nothing parsed) costs %.1f s per million tokens: "
              "the module takes %.2fx what nginx takes to move the same "
              "bytes." % (cpu_per_mtok(s4n[0]),
                          cpu_per_mtok(s4m[0])
                          / max(cpu_per_mtok(s4n[0]), 1e-9)))
    else:
        w("Not run.")
    w("")

    # --- 5. persistence
    w("## 5. Persistence (Redis job store)")
    w("")
    if s5r:
        w("Scenario 1's load (100 streams x 50 tokens/s, 250-token streams) "
          "three times back to back: the floor, the module with the default "
          "memory store, the module with `llm_store redis://...` (a private "
          "redis-server %s on loopback, no RDB, no AOF; default flush "
          "%s ms, %s workers); %s s measured after a settle.  The load "
          "client read Redis's `INFO all` just before and just after the "
          "hold: *commands* is `total_commands_processed` (each command of "
          "a MULTI/EXEC counts, MULTI and EXEC included), *EXEC* is one "
          "job's write; *round trips* is an upper bound, the flushes that "
          "could have happened (seconds x 1000 / flush x workers), since "
          "Redis does not count pipelines.  Latency in ms; CPU in "
          "cores." % (store.get("redis", "?"), store.get("flush_ms", "?"),
                      store.get("workers", "?"), num(s5r[0]["secs"])))
        w("")
        w("| | p50 | p99 | max | added p99 over the floor | tokens/s "
          "| errors | nginx CPU | Redis commands/token | EXEC/token "
          "| round trips/token (at most) | Redis CPU | other CPU |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        f = s5f[0] if s5f else None
        for label, rows in (("floor (mock)", s5f),
                            ("module, memory store", s5m),
                            ("module, Redis store", s5r)):
            if not rows:
                w("| %s | not run ||||||||||||" % label)
                continue
            x = rows[0]
            is_floor = rows is s5f
            fig = redis_figures(x, store) if rows is s5r else None
            w("| %s | %s | %s | %s | %s | %.0f | %d | %s | %s | %s | %s "
              "| %s | %.2f |" % (
                  label, ms(x["lat_p50"]), ms(x["lat_p99"]),
                  ms(x["lat_max"]),
                  "-" if is_floor or not f else
                  ms(x["lat_p99"] - f["lat_p99"]),
                  x["tokps"], x["errors"] + x["incomplete"],
                  "-" if is_floor else "%.2f" % (relay_cpu(x) / x["secs"]),
                  "%.2f" % fig["cmds"] if fig else "-",
                  "%.3f" % fig["exec"] if fig else "-",
                  "%.4f" % fig["rt"] if fig else "-",
                  num(fig and fig["cores"], "%.2f") if fig else "-",
                  x.get("other_cpu", 0)))
        w("")
        x = s5r[0]
        if s5m:
            m = s5m[0]
            k = relay_cpu(x) / max(relay_cpu(m), 1e-9)
            w("Redis store against the memory store: p50 %+.2f ms, p99 "
              "%+.2f ms, max %+.1f ms; nginx CPU %.2fx." % (
                  (x["lat_p50"] - m["lat_p50"]) / 1000.0,
                  (x["lat_p99"] - m["lat_p99"]) / 1000.0,
                  (x["lat_max"] - m["lat_max"]) / 1000.0, k))
            w("")
        if rf:
            top = sorted(rf["calls"].items(), key=lambda kv: -kv[1])
            w("Redis commands during the hold, per token: %s (%s tokens "
              "received; %d deltas carried more than one)." % (
                  ", ".join("%s %.3f" % (c, n / float(x["tokens"]))
                            for c, n in top),
                  x["tokens"], x["merged"]))
            w("")
            extra = []
            if rf["reads_tok"] is not None:
                extra.append("Redis read %d times from its sockets "
                             "(%.4f per token; every round trip takes at "
                             "least one read, a pipeline larger than "
                             "Redis's 16 KB read buffer several)" % (
                                 rf["reads"], rf["reads_tok"]))
            if rf["net_in_tok"] is not None:
                extra.append("%.0f bytes sent to Redis per token" %
                             rf["net_in_tok"])
            if rf["connections"] >= 0:
                extra.append("%d new connections during the hold (the "
                             "store keeps one per worker)" %
                             rf["connections"])
            usec = sum(rf["usec"].values())
            if usec:
                extra.append("Redis spent %.2f s executing commands "
                             "(%.1f us per token)" % (
                                 usec / 1e6, usec / float(x["tokens"])))
            if store.get("keys", -1) >= 0:
                extra.append("after the run it held %d keys in %.1f MB "
                             "(the run's jobs, 3 keys each, ttl 1 h)" % (
                                 store["keys"],
                                 store.get("used_memory", 0) / 1048576.0))
            if extra:
                w("During the hold " + "; ".join(extra) + ".")
                w("")
        path = os.path.join(work, "s5-redis.errlog")
        errs = []
        if os.path.exists(path):
            with open(path) as fh:
                errs = [l.strip() for l in fh if "redis" in l.lower()]
        if errs:
            w("**The module logged Redis store errors during the run:** "
              "%s." % "; ".join("`%s`" % e for e in errs))
        else:
            w("The module logged no Redis store error during the run.")
    else:
        s5 = [x for x in skipped if x.get("scenario") == "5"]
        w("**Skipped: %s.**" % (s5[0]["skipped"] if s5 else "not run"))
    w("")

    # --- 6. formats
    w("## 6. Event formats: the delta event through a user template")
    w("")
    s6f, s6d, s6s = r["s6-floor"], r["s6-default"], r["s6-story"]
    s6cd, s6cs = r["s6-cpu-default"], r["s6-cpu-story"]
    if s6d or s6s or s6cd or s6cs:
        w("The same module, back to back, each run in a fresh nginx with "
          "the story app's events defined at the http level as "
          "`llm_format story { ... }` (named events `start`, `delta`, "
          "`complete`, `error`; the delta is `{\"content\": $llm_delta, "
          "\"type\": \"content\"}`): *default* does not choose it, "
          "*story* says `llm_format story;` in the location.  Scenario 1's "
          "load (100 streams x 50 tokens/s, 250-token streams, the floor "
          "just before) for latency, scenario 4's (1,000 streams x 10 "
          "tokens/s) for CPU; %s s measured after a settle.  Latency in ms; "
          "CPU in cores and seconds per million relayed tokens." %
          num((s6d or s6s or s6cd or s6cs)[0]["secs"]))
        w("")
        w("| | load | p50 | p99 | max | added p99 | tokens/s | events/s "
          "| merged | errors | nginx CPU | CPU s/Mtok | other CPU |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        f = s6f[0] if s6f else None
        for label, load_, rows in (
                ("floor (mock)", "100 x 50/s", s6f),
                ("module, default format", "100 x 50/s", s6d),
                ("module, story format", "100 x 50/s", s6s),
                ("module, default format", "1,000 x 10/s", s6cd),
                ("module, story format", "1,000 x 10/s", s6cs)):
            if not rows:
                w("| %s | %s | not run |||||||||||" % (label, load_))
                continue
            x = rows[0]
            is_floor = rows is s6f
            w("| %s | %s | %s | %s | %s | %s | %.0f | %.0f | %d | %d | %s "
              "| %s | %.2f |" % (
                  label, load_, ms(x["lat_p50"]), ms(x["lat_p99"]),
                  ms(x["lat_max"]),
                  "-" if is_floor or not f or rows is s6cd or rows is s6cs else
                  ms(x["lat_p99"] - f["lat_p99"]),
                  x["tokps"], x["eps"], x["merged"],
                  x["errors"] + x["incomplete"],
                  "-" if is_floor else "%.2f" % (relay_cpu(x) / x["secs"]),
                  "-" if is_floor else num(cpu_per_mtok(x), "%.1f"),
                  x.get("other_cpu", 0)))
        w("")
        fc = format_cost(r)
        if fc:
            w("Story format / default format: %s; goal within %.0f%% "
              "(<= %.2fx) on both: **%s**." % (
                  fc["measured"], (GOAL_FORMAT_RATIO - 1) * 100,
                  GOAL_FORMAT_RATIO,
                  "n/a" if fc["met"] is None else
                  ("met" if fc["met"] else "not met")))
            w("")
        for rows, name in ((s6s, "scenario 1's"), (s6cs, "scenario 4's")):
            if rows and not rows[0]["tokens"]:
                w("**The load client read no tokens from the story format "
                  "under %s load: its figures are not a measurement (did "
                  "its parser find the stamps in the delta?).**" % name)
                w("")
        w("A p99 added latency of a few tenths of a millisecond moves by "
          "more than 10% between two runs of the same build: read the "
          "p99 ratio together with the absolute difference, and rerun "
          "before calling a miss.")
    else:
        w("Not run.")
    w("")

    # --- 7. pipelines
    w("## 7. Pipelines: the module's time between steps, 7 steps against "
      "one prompt")
    w("")
    s7s, s7f, s7o, s7v = (r["s7-steps"], r["s7-floor"], r["s7-one"],
                          r["s7-seven"])
    s7meta = load_obj(work, "s7-meta.json")
    nsteps = s7meta.get("steps", 7)
    per = s7meta.get("tokens_per_step")
    if s7s or s7o or s7v:
        w("Two pipelines of %d steps defined at the http level, run by "
          "`llm_pipeline NAME;` in /generate, each step taking the "
          "location's `llm_pass` (so the client's query paces every step) "
          "and the previous step's output in its prompt; the default "
          "(memory) job store, a fresh nginx for each run." % nsteps)
        w("")
        w("**a) Time between two steps.**  %d non-streamed steps of one "
          "token each, the mock answering at once (`tokens=1&ttft=0&"
          "tps=0`: a model that takes no time), 1 then 50 pipelines at a "
          "time, each replaced as it completes; the same request straight "
          "from the load client to the mock, one at a time, just before "
          "(the floor); %s s measured per level after a settle.  For "
          "every pipeline completed in the hold:" % (
              nsteps, num(s7s[0]["secs"]) if s7s else "?"))
        w("")
        w("- *step to step* = (the last step's output - the first's) / "
          "%d: each step's output is the mock's stamp, the microsecond "
          "it sent the step's token, so this is one step's whole cycle "
          "at the mock: the end of the answer, the module taking it, "
          "its work between the steps (the `step` event, the state "
          "written to the job, the next `step_start` and `progress`, "
          "the next prompt and request), a new loopback connection and "
          "the request to the mock.  The model's own time is zero." % (
              nsteps - 1))
        w("- *request to the mock* = the floor's duration, connect to "
          "`[DONE]`, of the same request: the upstream's share of that "
          "cycle.  **The module's own time per step** = step to step - "
          "request to the mock, at 1 pipeline at a time (the floor "
          "runs one request at a time; at 50 the cycle is mostly "
          "queueing).")
        w("- *events' formula* = (receive time of the last `step` event "
          "- receive time of the first `step_start` - the sum of the "
          "steps' `duration`) / %d.  The module computes a step's "
          "`duration` and starts the next step in the same call, on "
          "nginx's cached millisecond clock, so this is zero by "
          "construction within that clock's resolution: it shows that "
          "nothing waits between two steps (no timer, no store round "
          "trip), not how long the work takes." % (nsteps - 1))
        w("")
        if s7s:
            sf = r["s7-steps-floor"]
            fdur = sf[0].get("dur_mean", -1) if sf else -1
            w("| pipelines at a time | pipelines completed | steps/s "
              "| pipeline duration mean | p99 | **step to step mean** | p50 "
              "| p99 | request to the mock | **module's own time per "
              "step** | events' formula mean | p50 | p99 | nginx CPU "
              "| **nginx CPU per step** | errors | other CPU |")
            w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---"
              "|---|---|---|")
            for x in s7s:
                gn, cn = x.get("gap_n", 0), x.get("cycle_n", 0)
                steps = x.get("steps", 0)
                own = x["cycle_mean"] - fdur if cn and fdur > 0 \
                    and x["level"] == 1 else None
                w("| %d | %d | %.0f | %s | %s | **%s** | %s | %s | %s "
                  "| **%s** | %s | %s | %s | %.2f | **%s** | %d | %.2f |" % (
                      x["level"], x.get("pipelines", 0),
                      steps / x["secs"],
                      ms(x.get("dur_mean")), ms(x.get("dur_p99")),
                      ms(x["cycle_mean"]) if cn else "n/a",
                      ms(x["cycle_p50"]) if cn else "n/a",
                      ms(x["cycle_p99"]) if cn else "n/a",
                      ms(fdur) if x["level"] == 1 else "-",
                      us(own) if own is not None else "-",
                      us(x["gap_mean"]) if gn else "n/a",
                      us(x["gap_p50"]) if gn else "n/a",
                      us(x["gap_p99"]) if gn else "n/a",
                      relay_cpu(x) / x["secs"],
                      "%.3f" % (relay_cpu(x) / steps * 1000)
                      if steps else "n/a",
                      x["errors"] + x["incomplete"],
                      x.get("other_cpu", 0)))
            w("")
            w("Milliseconds, except nginx CPU (cores).  *nginx CPU per "
              "step* is the workers' CPU time (all threads) over the hold "
              "divided by the steps of the pipelines completed in it (it "
              "carries each pipeline's client request, job and stream, "
              "once for %d steps).  *Request to the mock*: the floor, "
              "%s requests, %s at p99." % (
                  nsteps, sf[0].get("dur_n", 0) if sf else 0,
                  ms(sf[0].get("dur_p99")) if sf else "n/a"))
            w("")
            one = [x for x in s7s if x["level"] == 1 and x.get("cycle_n")
                   and x.get("steps")]
            if one and fdur > 0:
                x = one[0]
                own = x["cycle_mean"] - fdur
                cpu = relay_cpu(x) / x["steps"] * 1e6
                line = ("At 1 pipeline at a time a step takes the module "
                        "%s ms of its own (%s ms step to step less %s ms "
                        "for the request to the mock) and %.0f us of "
                        "nginx CPU" %
                        (us(own), ms(x["cycle_mean"]), ms(fdur), cpu))
                o = r["s7-one"]
                if o and cpu_per_mtok(o[0]):
                    line += (", as much as relaying %.0f tokens in one "
                             "stream (b, below)" % (
                                 cpu / cpu_per_mtok(o[0])))
                w(line + ".")
                w("")
            if any(not x.get("cycle_n") for x in s7s):
                w("**No pipeline completed in a level's hold, or the "
                  "load client read no stamp in the `step` events' "
                  "outputs: no step to step figure there.**")
                w("")
        else:
            w("Not run.")
            w("")
        w("**b) %d streamed steps against one prompt of the same tokens"
          ".**  The pipeline's %d steps stream %s tokens each "
          "(`stream on;`), against /generate with one prompt of %s "
          "tokens, both at 50 tokens/s with the first token after one "
          "token's interval (20 ms: N tokens take the mock N / 50 s, so "
          "the model's time is the same for both), 100 at a time "
          "(scenario 1's load), each replaced as it completes, the "
          "floor (the load client on the long stream straight from the "
          "mock) just before; %s s measured after a settle.  Latency in "
          "ms; *duration* is connect to `complete` (or `[DONE]`) of the "
          "streams completed in the hold." % (
              nsteps, nsteps, num(per), num(per and per * nsteps),
              num((s7v or s7o or s7f)[0]["secs"])
              if (s7v or s7o or s7f) else "?"))
        w("")
        w("| | p50 | p99 | max | added p99 | tokens/s | events/s "
          "| completed | errors | nginx CPU | CPU s/Mtok | duration mean "
          "| duration p99 | other CPU |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        f = s7f[0] if s7f else None
        for label, rows in (
                ("floor (mock), 1 x %s tokens" % num(per and per * nsteps),
                 s7f),
                ("module, one prompt of %s tokens" %
                 num(per and per * nsteps), s7o),
                ("module, pipeline of %d x %s tokens" % (nsteps, num(per)),
                 s7v)):
            if not rows:
                w("| %s | not run |||||||||||||" % label)
                continue
            x = rows[0]
            is_floor = rows is s7f
            w("| %s | %s | %s | %s | %s | %.0f | %.0f | %d | %d | %s | %s "
              "| %s | %s | %.2f |" % (
                  label, ms(x["lat_p50"]), ms(x["lat_p99"]),
                  ms(x["lat_max"]),
                  "-" if is_floor or not f else
                  ms(x["lat_p99"] - f["lat_p99"]),
                  x["tokps"], x["eps"], x["completed"],
                  x["errors"] + x["incomplete"],
                  "-" if is_floor else "%.2f" % (relay_cpu(x) / x["secs"]),
                  "-" if is_floor else num(cpu_per_mtok(x), "%.1f"),
                  ms(x.get("dur_mean")), ms(x.get("dur_p99")),
                  x.get("other_cpu", 0)))
        w("")
        pc = pipeline_cost(r, nsteps)
        if pc:
            parts = []
            if "p99" in pc:
                oa, sa, k = pc["p99"]
                parts.append("p99 added %s (%s / %s ms)" % (
                    "%.2fx" % k if k is not None else "n/a (the one "
                    "prompt's is not above the floor)", ms(sa), ms(oa)))
            a, b, k = pc["cpu"]
            parts.append("CPU per million tokens %s (%s / %s s)" % (
                "%.2fx" % k if k is not None else "n/a",
                num(b, "%.1f"), num(a, "%.1f")))
            if "dur" in pc:
                od, sd, k, step = pc["dur"]
                parts.append("duration %.3fx (%s / %s ms, %+.1f ms: %+.2f "
                             "ms per step after the first)" % (
                                 k, ms(sd), ms(od), (sd - od) / 1000.0,
                                 step / 1000.0))
            w("Pipeline / one prompt: %s." % "; ".join(parts))
            w("")
            w("The pipeline's steps start together (the streams of a "
              "level start together and every step takes the same "
              "time), so each step boundary is a burst of 100 upstream "
              "requests; its latency is measured through them.")
        elif s7o or s7v:
            w("No ratio: only one of the two module runs ran.")
    else:
        w("Not run.")
    w("")

    # --- 8. HTTPS upstream
    w("## 8. HTTPS upstream: the mock behind TLS, HTTP/1.1 and HTTP/2")
    w("")
    if s8:
        x0 = s8[0][2]
        w("A second nginx (the *front*, `worker_processes 2`) in front of "
          "the mock, as a provider's edge: a plain listener, a TLS "
          "listener without `http2` (ALPN gives HTTP/1.1) and one with "
          "`http2` (libcurl takes h2 when ALPN offers it), each "
          "`proxy_pass` to the mock with `proxy_buffering off` and a "
          "keepalive pool; a self-signed P-256 certificate "
          "(`llm_ssl_verify off`), a shared TLS session cache, "
          "`keepalive_requests 1000000`.  The module passes to one "
          "listener at a time, a fresh nginx each: %d streams of `%s`, "
          "replaced as they end (the streams start together, so they "
          "end and are replaced in bursts); %s s measured after a "
          "settle.  *Connections*: the module "
          "workers' ESTABLISHED connections to the listener (`ss`, every "
          "0.5 s during the hold, mean and max); *new connections* and "
          "*generations*: the front's accepted connections and requests "
          "over the hold (stub_status, the probe's own taken out): on a "
          "TLS listener every accepted connection is a TLS handshake.  "
          "Latency in ms; RSS is the module workers' growth over idle "
          "per stream." % (x0["level"],
                           load_obj(work, "s8-meta.json").get("query"),
                           num(x0["secs"])))
        w("")
        w("| upstream | streams | p50 | p99 | tokens/s | errors "
          "| connections (mean) | max | streams per connection "
          "| new connections in the hold | generations in the hold "
          "| handshakes per generation | RSS KB/stream | nginx CPU "
          "| CPU s/Mtok | front CPU | other CPU |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---"
          "|---|---|")
        for m, label, x, pr, lg in s8:
            w("| %s | %d | %s | %s | %.0f | %d | %s | %s | %s | %s | %s "
              "| %s | %.1f | %.2f | %s | %s | %.2f |" % (
                  label, x["level"], ms(x["lat_p50"]), ms(x["lat_p99"]),
                  x["tokps"], x["errors"],
                  "%.1f" % pr["est_mean"] if pr else "n/a",
                  pr["est_max"] if pr else "n/a",
                  "%.1f" % (x["level"] / pr["est_mean"])
                  if pr and pr["est_mean"] else "n/a",
                  pr["new_conns"] if pr else "n/a",
                  pr["generations"] if pr else "n/a",
                  "%.3f" % pr["per_gen"]
                  if pr and pr["per_gen"] is not None else "n/a",
                  relay_rss_delta(x) / x["level"],
                  relay_cpu(x) / x["secs"],
                  num(cpu_per_mtok(x), "%.1f"),
                  "%.2f" % cores(x, "front")
                  if cores(x, "front") is not None else "n/a",
                  x.get("other_cpu", 0)))
        w("")
        logs = [(label, lg) for m, label, x, pr, lg in s8 if lg]
        if logs:
            w("The front's access log over each whole run (ramp "
              "included): %s." % "; ".join(
                  "%s: %d requests on %d connections (%.1f per "
                  "connection), %d TLS sessions resumed, %s" % (
                      label, lg["requests"], lg["connections"],
                      lg["requests"] / float(max(lg["connections"], 1)),
                      lg["reused"],
                      ", ".join("%d %s" % (n, p) for p, n in
                                sorted(lg["protocols"].items())))
                  for label, lg in logs))
            w("")
        if "plain" in s8d:
            p = s8d["plain"][1]
            for m in ("h1", "h2"):
                if m not in s8d:
                    continue
                x = s8d[m][1]
                w("- %s against plain HTTP: RSS per stream %s, CPU per "
                  "million tokens %s, p99 %s." % (
                      s8d[m][0],
                      times(relay_rss_delta(x) / x["level"],
                            relay_rss_delta(p) / p["level"]),
                      times(cpu_per_mtok(x), cpu_per_mtok(p)),
                      times(x["lat_p99"], p["lat_p99"])))
            w("")
    else:
        w("Not run.")
    w("")

    # --- 9. long generations
    w("## 9. Long generations: one job of 100,000 tokens")
    w("")
    s9 = [(lbl, load_obj(work, "s9-%s.json" % n))
          for n, lbl in (("memory", "memory store"),
                         ("redis", "Redis store"))]
    s9 = [(lbl, x) for lbl, x in s9 if x]
    if s9:
        q = s9[0][1]["query"]
        w("The assessment app's 38-minute generation (100,000 tokens at "
          "44 a second), compressed: `%s` (4-byte tokens), one job in "
          "the background (`POST` with `Prefer: respond-async`, no "
          "client of its own), one follower on each worker from the "
          "start (`GET /jobs/ID`, `Accept: text/event-stream`: on the "
          "worker running the job it reads the job itself, on the other "
          "a mirror of the store's copy), a fresh nginx for each store "
          "(bench/longgen.py).  *Memory*: each worker's VmRSS growth "
          "over idle, sampled every 100 ms, at its largest (and at the "
          "end).  *Resume*: after the job ended, a client comes back "
          "with `Last-Event-ID: ID` (from the start) or `ID:N` with N "
          "half the job's events (from the middle) and reads to the "
          "`complete` event; the mean of %d resumes each, time to the "
          "response's first bytes and to its end, and both workers' CPU "
          "per resume (clock ticks of 10 ms summed over the resumes)." % (
              q, long_figures(s9[0][1]).get("start", {}).get("n", 0)))
        w("")
        w("| store | state | tokens | events | text bytes | job s "
          "| worker running the job (+ its follower) KB | at the end KB "
          "| other worker (follower through a mirror) KB | at the end KB "
          "| follower bytes (same, other) |")
        w("|---|---|---|---|---|---|---|---|---|---|---|")
        for lbl, x in s9:
            f = long_figures(x)
            fo = (x.get("owner") or {}).get("follower") or {}
            fx = (x.get("other") or {}).get("follower") or {}
            w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s "
              "| %s, %s |" % (
                  lbl, x.get("state") or x.get("error"), f["tokens"],
                  x.get("events"), x.get("text_bytes"),
                  x.get("job_secs"), f.get("owner_kb", "n/a"),
                  f.get("owner_end_kb", "n/a"), f.get("other_kb", "n/a"),
                  f.get("other_end_kb", "n/a"), fo.get("bytes", "n/a"),
                  fx.get("bytes", "n/a")))
        w("")
        w("| store | resume from | response bytes | first bytes ms "
          "| end ms (mean) | max | worker CPU ms per resume "
          "| on the job's worker | all complete |")
        w("|---|---|---|---|---|---|---|---|---|")
        for lbl, x in s9:
            f = long_figures(x)
            for name, where in (("start", "the start"),
                                ("middle", "the middle (event %s)" %
                                 x.get("resume_mid_event"))):
                g = f.get(name)
                if not g:
                    continue
                w("| %s | %s | %d | %.2f | %.2f | %.2f | %.1f | %d of %d "
                  "| %s |" % (lbl, where, g["bytes"], g["first_ms"],
                              g["total_ms"], g["max_ms"], g["cpu_ms"],
                              g["owner"], g["n"], yes(g["ok"])))
        w("")
        for lbl, x in s9:
            f = long_figures(x)
            if "redis_bytes" not in f:
                continue
            w("Redis store: the job is %d keys, %d bytes (`MEMORY USAGE "
              "... SAMPLES 0`: %s), **%.1f bytes per token**, %.2f per "
              "byte of text; Redis's `used_memory` grew by %d bytes over "
              "the job." % (
                  f["redis_keys"], f["redis_bytes"],
                  ", ".join("%s %s %d" % (k.rsplit(":", 1)[-1], v["type"],
                                          v["bytes"])
                            for k, v in sorted(x["redis_keys"].items())),
                  f["redis_bytes"] / float(f["tokens"]),
                  f["redis_bytes"] / float(max(x["text_bytes"], 1)),
                  x.get("redis_used_memory_growth", -1)))
            w("")
    else:
        w("Not run.")
    w("")

    # --- server logs
    w("## What the servers logged")
    w("")
    logged = []
    for name in sorted(r):
        path = os.path.join(work, name + ".errlog")
        if os.path.exists(path) and os.path.getsize(path):
            with open(path) as f:
                logged.append((name, f.read().rstrip("\n")))
    if logged:
        w("Warnings and worse in the nginx error logs (and uvicorn's "
          "output) during each run, counted by message (ids and pids "
          "elided):")
        w("")
        for name, text in logged:
            w("%s:" % name)
            w("")
            w("```")
            L.extend(text.split("\n"))
            w("```")
            w("")
    else:
        w("Nothing at warn level or worse.")
        w("")

    # --- caveats
    w("## Where the instrument may be the bottleneck")
    w("")
    notes = []
    for name, rows in sorted(r.items()):
        for x in rows or []:
            b = busy_helpers(x)
            if b:
                notes.append("- %s, %d streams: %s." % (
                    name, x["level"], ", ".join(b)))
    if notes:
        w("Levels where the mock or the load client used most of a core "
          "(each is single-threaded; near 1 core its own delays enter "
          "the latencies, floor included), where processes outside the "
          "run took more than %.1f cores (their figures are pessimistic), "
          "or where everything together used %.1f cores or more (the "
          "level measures the machine as much as the relay):"
          % (OTHER_CORE, SATURATED))
        w("")
        L.extend(notes)
    else:
        w("No level had the mock or the load client near a full core, "
          "and nothing else on the machine took more than %.1f cores." %
          OTHER_CORE)
    w("")
    w("- All processes share 2 cores: at high levels the relay competes "
      "with the mock and the load client for CPU, so capacity is a "
      "property of this machine, not of the relay alone.")
    w("- The machine may be shared with other work (see the load "
      "averages above): figures from one run vary by a few tens of per "
      "cent; compare runs, not digits.")
    w("- Latency percentiles are per token; a merged delta gives one "
      "sample per token it carries.  The client reads HTTP/1.0 "
      "(close-delimited) responses.")
    for x in skipped:
        if x.get("scenario") != "5":
            w("- Scenario %s skipped: %s." % (x["scenario"], x["skipped"]))
    w("")

    with open(out_md, "w") as f:
        f.write("\n".join(L))

    # data for plot.gp: level p50_ms p99_ms max_ms (ok levels and the
    # first failed one)
    for name in ("s2-floor", "s2-module", "s2-baseline"):
        with open(os.path.join(work, name + ".dat"), "w") as f:
            f.write("# streams p50_ms p99_ms max_ms ok\n")
            for x in r[name] or []:
                if x["lat_p99"] < 0:
                    continue
                f.write("%d %.3f %.3f %.3f %d\n" % (
                    x["level"], x["lat_p50"] / 1000.0,
                    x["lat_p99"] / 1000.0, x["lat_max"] / 1000.0,
                    1 if x["ok"] else 0))


if __name__ == "__main__":
    main()
