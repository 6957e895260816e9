"""A real HTTP server on 127.0.0.1 for tests that need one over the network (other processes,
clients that cannot take an in-process transport): it answers JSON from a function."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# (method, path, request body) -> (status, JSON-serialisable answer, or bytes sent as they are)
Answer = Callable[[str, str, bytes], tuple[int, object]]


@contextmanager
def serving_json(answer: Answer) -> Iterator[str]:
    """Serve `answer` on a free port, keep-alive, each request in a thread; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a client's pool really holds a connection

        def _answer(self) -> None:
            request = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, payload = answer(self.command, self.path, request)
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
