"""Real-client load for baton's tests: httpx (PyPI) clients, each with its
own connection pool, sending GETs with 10-100 ms think times until STOP_FILE
exists. Prints one JSON line: {"ok": N, "failed": F, "errors": {kind: n}}.

Usage: httpx_load.py URL h2|h1 CLIENTS STOP_FILE
"""
import collections
import json
import os
import random
import sys
import threading
import time

import httpx

url, protocol, clients, stop_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
ok = 0
errors = collections.Counter()
lock = threading.Lock()


def client():
    global ok
    options = dict(http2=True, http1=False) if protocol == "h2" else dict(http1=True)
    with httpx.Client(timeout=10, **options) as session:
        while not os.path.exists(stop_file):
            try:
                response = session.get(url)
                with lock:
                    if response.status_code == 200:
                        ok += 1
                    else:
                        errors["status %d" % response.status_code] += 1
            except Exception as e:
                with lock:
                    errors["%s: %s" % (type(e).__name__, str(e)[:120])] += 1
            time.sleep(random.uniform(0.01, 0.1))


threads = [threading.Thread(target=client) for _ in range(clients)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({"ok": ok, "failed": sum(errors.values()), "errors": errors}))
