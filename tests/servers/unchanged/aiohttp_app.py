"""aiohttp's documented `web.run_app`, on the listener baton passes at
descriptor 3; it stops gracefully on SIGTERM itself."""

import os
import socket

from aiohttp import web


async def handle(request):
    body = await request.read()
    return web.Response(text=f"Process handled by pid: {os.getpid()}, received {len(body)} bytes")


app = web.Application()
app.router.add_route("*", "/{tail:.*}", handle)
web.run_app(app, sock=socket.socket(fileno=3), print=None, access_log=None)
