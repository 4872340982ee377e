#!/usr/bin/env python3
"""hypercorn, with a stop that fails no request, for ASGI apps run as baton workers.

    baton serve --workers 2 -- python3 baton_hypercorn.py myapp:app [hypercorn.toml]

It serves the socket baton passes (descriptor 3) through hypercorn's own
programmatic API (`hypercorn.asyncio.serve`), with hypercorn's settings from
the optional TOML file, and changes one thing: how a worker stops.

hypercorn's stop closes every idle keep-alive connection at once. A client
about to reuse one sends its next request into a socket that is closing and
gets a reset or an early EOF. On baton's drain signal (SIGTERM) this runner
instead stops accepting (the other workers take the shared queue) while
serving every connection already accepted, answers
every later request with `Connection: close`, keeps idle connections for
DRAIN_GRACE_S seconds (default 5) or until every client has left, and only
then lets hypercorn's own stop run. hypercorn's keep-alive timeout is raised
to the grace, for its timer would race clients the same way.
"""

import asyncio
import importlib
import os
import signal
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config

from baton_asgi import GRACE_S, CloseWhenDraining


async def serve_draining(app, config):
    loop = asyncio.get_running_loop()
    # hypercorn opens its listening servers inside serve(): record them, and
    # count open connections, to stop accepting and to end the grace early.
    servers = []
    open_connections = 0
    start_server = asyncio.start_server

    async def recording_start_server(callback, *args, **kwargs):
        async def counted(reader, writer):
            nonlocal open_connections
            open_connections += 1
            try:
                await callback(reader, writer)
            finally:
                open_connections -= 1

        server = await start_server(counted, *args, **kwargs)
        servers.append(server)
        return server

    asyncio.start_server = recording_start_server

    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def drained():
        await stop.wait()
        # Stop accepting without closing the servers: asyncio accepts
        # several connections per wake-up and attaches each to its server a
        # loop turn later, so `Server.close()` here would drop (reset) the
        # ones accepted but not yet attached. Taking the listening sockets
        # out of the loop stops new accepts and lets those finish; hypercorn
        # closes the servers itself when this returns.
        for server in servers:
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())
        app.draining = True
        # Connections accepted just before are handed to hypercorn in the
        # next turns of the loop: count them before deciding none is left.
        await asyncio.sleep(0.1)
        deadline = loop.time() + GRACE_S
        while open_connections and loop.time() < deadline:
            await asyncio.sleep(0.05)

    await serve(app, config, shutdown_trigger=drained)


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: baton_hypercorn.py MODULE:APP [hypercorn.toml]")
    config = Config.from_toml(sys.argv[2]) if len(sys.argv) == 3 else Config()
    config.bind = ["fd://3"]
    config.keep_alive_timeout = max(config.keep_alive_timeout, GRACE_S + 5)
    module, _, name = sys.argv[1].partition(":")
    sys.path.insert(0, os.getcwd())
    app = CloseWhenDraining(getattr(importlib.import_module(module), name or "app"))
    asyncio.run(serve_draining(app, config))


if __name__ == "__main__":
    main()
