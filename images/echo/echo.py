"""An HTTP and WebSocket echo server: the upstream of the proxy tests.

GET|HEAD|POST|PUT|DELETE|PATCH /anything  -> JSON: method, path, query, headers, body
POST|PUT /upload                          -> JSON: size and sha256 of the body, read streamed
GET /stream?chunks=N&delay=S&size=B       -> N chunks of B bytes, S seconds apart, chunked
GET /delay?seconds=S                      -> waits S seconds before answering
GET /redirect?to=/x                       -> 302 to `to` (absolute path or URL)
GET /small                                -> 2 bytes, for benchmarks
GET /ws                                   -> WebSocket echo (text and binary); a text
                                             "close:CODE" closes with that code
"""

import asyncio
import hashlib
import json
import os
import sys

from aiohttp import WSMsgType, web


async def echo(request):
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path,
            "query": request.query_string,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode("utf-8", "replace"),
            "peer": request.remote,
        }
    )


async def upload(request):
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"size": size, "sha256": digest.hexdigest()})


async def stream(request):
    chunks = int(request.query.get("chunks", "5"))
    delay = float(request.query.get("delay", "0.2"))
    size = int(request.query.get("size", "16"))
    response = web.StreamResponse()
    response.content_type = "application/octet-stream"
    await response.prepare(request)
    for i in range(chunks):
        await response.write(bytes([48 + i % 10]) * size)
        if i + 1 < chunks:
            await asyncio.sleep(delay)
    await response.write_eof()
    return response


async def delay(request):
    await asyncio.sleep(float(request.query.get("seconds", "1")))
    return web.Response(text="late")


async def redirect(request):
    raise web.HTTPFound(request.query.get("to", "/"))


async def small(request):
    return web.Response(body=b"ok", content_type="text/plain")


async def websocket(request):
    ws = web.WebSocketResponse(autoclose=False, max_msg_size=0)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            if msg.data.startswith("close:"):
                await ws.close(code=int(msg.data[6:]), message=b"asked to close")
                break
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
        elif msg.type == WSMsgType.CLOSE:
            await ws.close(code=msg.data, message=(msg.extra or "").encode())
            break
    return ws


def main():
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/upload", upload)
    app.router.add_get("/stream", stream)
    app.router.add_get("/delay", delay)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/small", small)
    app.router.add_get("/ws", websocket)
    app.router.add_route("*", "/{tail:.*}", echo)
    port = int(os.environ.get("PORT", "8080"))
    print(f"echo listening on {port}", flush=True)
    web.run_app(app, port=port, print=None, access_log=None)


if __name__ == "__main__":
    sys.exit(main())
