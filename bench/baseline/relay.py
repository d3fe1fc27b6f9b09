"""The baseline: the seeds' architecture, a Python relay.

FastAPI + uvicorn (Debian's packages), one StreamingResponse per request
that re-emits the upstream's OpenAI streaming tokens as SSE, in the same
event format as ngx_http_llm_module (retry, then id/event/data frames:
start, delta..., complete or error), so one load client reads both.  It
runs behind nginx with "proxy_buffering off" (see bench/run.sh).

    RELAY_UPSTREAM=http://127.0.0.1:PORT/v1/chat/completions \
    RELAY_CLIENT=aiohttp|httpx \
    python3 -m uvicorn relay:app --workers 2 --port P

GET /generate?QUERY: QUERY (tps, tokens, ttft...) goes to the upstream,
with stamp=1.  The upstream client is created once per worker with no
connection limit: httpx's and aiohttp's default pools stop at 100
connections, which would cap the baseline far below what it can do.
"""

import json
import os
import secrets

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

UPSTREAM = os.environ.get("RELAY_UPSTREAM",
                          "http://127.0.0.1:8088/v1/chat/completions")
CLIENT = os.environ.get("RELAY_CLIENT", "aiohttp")

BODY = {
    "model": "bench",
    "stream": True,
    "stream_options": {"include_usage": True},
    "messages": [{"role": "user", "content": "Write a story."}],
}

app = FastAPI()
state = {}


@app.on_event("startup")
async def startup():
    if CLIENT == "httpx":
        import httpx
        state["client"] = httpx.AsyncClient(
            timeout=httpx.Timeout(None),
            limits=httpx.Limits(max_connections=None,
                                max_keepalive_connections=1000))
    else:
        import aiohttp
        state["client"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None))


@app.on_event("shutdown")
async def shutdown():
    client = state.pop("client", None)
    if client is None:
        return
    if CLIENT == "httpx":
        await client.aclose()
    else:
        await client.close()


async def upstream_lines(url):
    """The upstream's response lines, as str; raises on a non-200."""
    client = state["client"]
    if CLIENT == "httpx":
        async with client.stream("POST", url, json=BODY) as r:
            if r.status_code != 200:
                raise RuntimeError(f"upstream status {r.status_code}")
            async for line in r.aiter_lines():
                # httpx 0.23 keeps the line endings
                yield line.rstrip("\r\n")
    else:
        async with client.post(url, json=BODY) as r:
            if r.status != 200:
                raise RuntimeError(f"upstream status {r.status}")
            async for line in r.content:
                yield line.decode("utf-8").rstrip("\r\n")


def frame(job, n, event, data):
    data = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"id: {job}:{n}\nevent: {event}\ndata: {data}\n\n"


async def events(url):
    job = secrets.token_urlsafe(16)
    n = 1
    yield "retry: 3000\n\n" + frame(job, n, "start", {"job": job})

    text = []
    finish = None
    usage = None

    try:
        async for line in upstream_lines(url):
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(chunk["error"].get("message", "error"))
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    text.append(content)
                    n += 1
                    yield frame(job, n, "delta", {"text": content})
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]

    except Exception as e:  # noqa: BLE001 - any failure ends the stream
        n += 1
        yield frame(job, n, "error", {"code": "upstream", "message": str(e)})
        return

    done = {"text": "".join(text), "finish_reason": finish or "stop"}
    if usage:
        done["usage"] = {
            "input_tokens": usage.get("prompt_tokens"),
            "output_tokens": usage.get("completion_tokens"),
            "total_tokens": usage.get("total_tokens"),
        }
    n += 1
    yield frame(job, n, "complete", done)


@app.get("/generate")
async def generate(request: Request):
    url = UPSTREAM + "?stamp=1"
    if request.url.query:
        url += "&" + request.url.query
    return StreamingResponse(events(url), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache",
                                      "X-Accel-Buffering": "no"})
