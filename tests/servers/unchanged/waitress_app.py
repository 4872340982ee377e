"""waitress serving wsgi.app on the listener baton passes at descriptor 3.
waitress has no graceful stop: SIGTERM ends it at once."""

import socket

import waitress

from wsgi import app

waitress.serve(app, sockets=[socket.socket(fileno=3)], threads=4, _quiet=True)
