#!/usr/bin/env python3
"""uvicorn, with a stop that fails no request, for ASGI apps run as baton workers.

    baton serve --workers 2 -- python3 baton_uvicorn.py --fd 3 myapp:app

It is uvicorn's own command line (every uvicorn option works; leave
`--workers` to baton) with one change: how a worker stops on SIGTERM.

uvicorn's stop closes every idle keep-alive connection at once. A client
about to reuse one sends its next request into a socket that is closing and
gets a reset. On baton's drain signal this runner instead:

- stops accepting at once (the other workers take the shared queue), without
  touching open connections;
- answers every later request with `Connection: close`, so each client leaves
  after its next answer;
- keeps idle keep-alive connections for DRAIN_GRACE_S seconds (default 5), so
  that each client's next request is answered, then lets uvicorn's own stop
  close those still idle and finish.

Keep DRAIN_GRACE_S longer than your clients' think time and below baton's
--drain-timeout. Idle connections are kept at least as long as the grace
(`--timeout-keep-alive` is raised to it), for the same race happens when
uvicorn's keep-alive timer closes a connection a client is about to reuse.
"""

import asyncio
import importlib
import sys

import uvicorn

from baton_asgi import GRACE_S, CloseWhenDraining


class DrainingServer(uvicorn.Server):
    async def _serve(self, sockets=None):
        config = self.config
        if not config.loaded:
            config.load()
        self.drain = CloseWhenDraining(config.loaded_app)
        config.loaded_app = self.drain
        config.timeout_keep_alive = max(config.timeout_keep_alive, GRACE_S + 5)
        await super()._serve(sockets)

    async def shutdown(self, sockets=None):
        for server in self.servers:
            server.close()
        self.drain.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GRACE_S
        while self.server_state.connections and loop.time() < deadline and not self.force_exit:
            await asyncio.sleep(0.05)
        await super().shutdown(sockets)


if __name__ == "__main__":
    # The module, not the `uvicorn.main` function the package exports.
    cli = importlib.import_module("uvicorn.main")
    cli.Server = DrainingServer
    sys.exit(cli.main())
