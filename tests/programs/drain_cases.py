"""A COMMAND worker for the rescue's edge cases (tests/integration/rescue.rs),
on Python's standard library only: it serves the socket baton passes on
descriptor 3 and, on SIGTERM, stops accepting, finishes what it serves and
exits.

- GET /slow: answers after 2 s, with a Content-Length.
- GET /eof: answers after 1 s with `Connection: close` and a body that ends
  when the connection closes (no length, not chunked).
- anything else: a short answer, keep-alive.

While it stops, every answer closes its connection (`Connection: close`).
Each request is announced on stderr first ("handling /slow"), so that a
test can wait for the program to have it.
"""

import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


stopping = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        print(f"handling {self.path}", file=sys.stderr, flush=True)
        pid = os.getpid()
        if self.path == "/slow":
            time.sleep(2)
            self.answer(f"slow answer from {pid}".encode())
        elif self.path == "/eof":
            time.sleep(1)
            self.wfile.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            self.wfile.write(f"eof answer from {pid}".encode())
            self.wfile.flush()
            self.close_connection = True
        else:
            self.answer(f"answer from {pid}".encode())

    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if stopping.is_set():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)


def main():
    listener = socket.socket(fileno=3)
    server = ThreadingHTTPServer(listener.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = listener
    server.daemon_threads = False

    def stop(*_):
        stopping.set()
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    print("serving", file=sys.stderr, flush=True)
    server.serve_forever()
    server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
