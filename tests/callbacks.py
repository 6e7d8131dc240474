"""A loopback HTTP server that records what is POSTed to it: the callbacks of async calls."""
from __future__ import annotations

import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class CallbackReceiver:
    """An HTTP server that records callbacks; the first ``fail_first`` answers are 503."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: "queue.Queue[dict]" = queue.Queue()
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.put({"headers": dict(self.headers), "body": body})
                failing = receiver.fail_first > 0
                receiver.fail_first -= 1
                self.send_response(503 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/done"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next(self, timeout: float = 30.0) -> dict:
        return self.received.get(timeout=timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
