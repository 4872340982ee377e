"""What the ASGI runners (baton_uvicorn.py, baton_hypercorn.py) share."""

import os

# How long idle keep-alive connections are kept through a drain, in seconds.
GRACE_S = float(os.environ.get("DRAIN_GRACE_S", "5"))


class CloseWhenDraining:
    """ASGI middleware: once draining, every response says `Connection: close`
    (the server then closes the connection after it)."""

    def __init__(self, app):
        self.app = app
        self.draining = False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_closing(message):
            if self.draining and message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        return await self.app(scope, receive, send_closing)
