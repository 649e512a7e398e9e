"""A stand-in prediction server for the deploy tests: the serving API's shape, no model.

GET /health, /ready (503 while READY=0), /metadata; POST /predict and /invocations answer with
MODEL_VERSION. SIGTERM closes the listener, finishes the requests in flight and closes
kept-alive connections after their next answer (or 5 s idle), like uvicorn's graceful stop:
without that, a proxy's pooled connection would keep an old replica answering.
"""

import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ.get("MODEL_VERSION", "0")
READY = os.environ.get("READY", "1") != "0"
STOPPING = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections end after this (longer than the gateways' own idle timeouts).
    timeout = 5
    # Headers and body are two writes: without TCP_NODELAY the body waits ~40 ms for the
    # proxy's delayed ACK (measured: every answer took 44 ms through the swarm's gateway).
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if STOPPING.is_set():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self._send(200, {"status": "ok"})
        elif self.path == "/ready":
            self._send(200 if READY else 503, {"ready": READY})
        elif self.path == "/metadata":
            self._send(200, {"model_name": "fake", "model_version": VERSION})
        else:
            self._send(404, {"detail": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path in ("/predict", "/invocations"):
            self._send(200, {"model_version": VERSION, "predictions": [0]})
        else:
            self._send(404, {"detail": "not found"})


# socketserver's default accept backlog is 5: a replica that takes over a dead one's load
# (a burst of new connections while its CPU quota throttles it) would drop SYNs. uvicorn's is
# 2048.
ThreadingHTTPServer.request_queue_size = 1024
server = ThreadingHTTPServer(("0.0.0.0", 8000), Handler)
server.daemon_threads = False


def stop(*_):
    STOPPING.set()
    threading.Thread(target=server.shutdown).start()


signal.signal(signal.SIGTERM, stop)
server.serve_forever()
server.server_close()
