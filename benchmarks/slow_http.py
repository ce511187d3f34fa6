"""A local HTTP server that answers every request after a fixed delay (the old way's peer).

``python -m benchmarks.slow_http PORT DELAY_MS``: 127.0.0.1 only, one thread per connection.
"""

from __future__ import annotations

import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as PostgREST clients use it
    delay_s = 0.05

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        time.sleep(self.delay_s)
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    port, delay_ms = int(sys.argv[1]), float(sys.argv[2])
    _Handler.delay_s = delay_ms / 1000
    ThreadingHTTPServer(("127.0.0.1", port), _Handler).serve_forever()


if __name__ == "__main__":
    main()
