"""The tutorial's server as a plain ASGI application, for any ASGI server:

    baton serve --workers 2 -- python3 baton_uvicorn.py --fd 3 asgi_app:app

It knows nothing of baton: the runner gives it the socket and the drain.
"""

import os


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": f"Process handled by pid: {os.getpid()}".encode()})
