#!/usr/bin/env python3
"""The tutorial's server in Python (standard library only), as a baton worker.

    baton serve --workers 2 -- python3 examples/python/server.py

It takes the listening socket baton passes (descriptor 3, LISTEN_FDS,
LISTEN_PID), tells baton it is ready with READY=1 on $NOTIFY_SOCKET (so
`--ready notify` works too), and drains on SIGTERM: it stops accepting,
answers later requests with `Connection: close`, closes idle keep-alive
connections after a grace period, and exits when none is left.

With STATUS_FILE set, every answer carries the status that file holds when
the worker starts: a release that is up but broken, to try `--health` with.
"""

import http.server
import os
import signal
import socket
import sys
import threading
import time

GRACE_S = float(os.environ.get("DRAIN_GRACE_S", "3"))
STATUS = 200
if os.environ.get("STATUS_FILE"):
    with open(os.environ["STATUS_FILE"]) as f:
        STATUS = int(f.read().strip() or "200")

if os.environ.get("LISTEN_PID") != str(os.getpid()) or int(os.environ.get("LISTEN_FDS", "0")) < 1:
    sys.exit("no listening socket was passed: run me as `baton serve -- python3 server.py`")

draining = threading.Event()
connections = set()  # handlers with an open connection
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body are written apart: without TCP_NODELAY the body
    # waits for the client's delayed ACK, 40 ms per keep-alive request.
    disable_nagle_algorithm = True

    def setup(self):
        super().setup()
        self.busy = False
        with lock:
            connections.add(self)

    def finish(self):
        with lock:
            connections.discard(self)
        super().finish()

    def parse_request(self):
        self.busy = True  # a request line has arrived
        return super().parse_request()

    def do_GET(self):
        self.answer(f"Process handled by pid: {os.getpid()}")

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        received = len(self.rfile.read(length))
        self.answer(f"Process handled by pid: {os.getpid()}, received {received} bytes")

    def answer(self, text):
        body = text.encode()
        self.send_response(STATUS)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if draining.is_set():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
        self.busy = False

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that goes away mid-request is not worth a traceback.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def server_bind(self):
        pass  # the socket comes from baton, already bound and listening

    def server_activate(self):
        pass


server = Server(("", 0), Handler, bind_and_activate=False)
server.socket.close()
# Leave the socket non-blocking, as baton set it: the flag is shared by every
# worker, and another worker may take a connection between this one's poll
# and its accept (socketserver then just polls again).
server.socket = socket.socket(fileno=3)


def drain():
    draining.set()
    server.shutdown()  # stop accepting: the other workers take the queue
    server.socket.close()
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline:
        with lock:
            if not connections:
                break
        time.sleep(0.01)
    with lock:
        idle = [c for c in connections if not c.busy]
    for handler in idle:
        try:
            handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    while True:
        with lock:
            if not connections:
                break
        time.sleep(0.01)
    os._exit(0)


signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=drain).start())


def notify(message):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), path)


notify("READY=1\nSTATUS=serving")
server.serve_forever(poll_interval=0.05)
threading.Event().wait()  # serve_forever returned: drain() is running
