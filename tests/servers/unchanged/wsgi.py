"""A WSGI application for gunicorn and waitress: answers with its pid and
the size of the body it read."""

import os


def app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    data = f"Process handled by pid: {os.getpid()}, received {len(body)} bytes".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
