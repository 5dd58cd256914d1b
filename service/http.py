"""One small HTTP server for ``/metrics`` (Prometheus text format), ``/healthz`` (alive) and ``/readyz``.

It runs in a daemon thread next to the worker; the probes are callables so the server knows nothing of
Kafka or the model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, exposition

log = logging.getLogger(__name__)


class HealthServer:
    """Serves metrics and health probes.

    Args:
        registry: the metrics registry to expose.
        host: bind address (``127.0.0.1`` by default; ``0.0.0.0`` in a container).
        port: bind port; 0 picks a free one (see ``port`` after ``start``).
        alive: returns ``(ok, detail)`` for ``/healthz``.
        ready: returns ``(ok, detail)`` for ``/readyz``.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        alive: Callable[[], tuple[bool, str]],
        ready: Callable[[], tuple[bool, str]],
    ) -> None:
        self.registry = registry
        self.alive = alive
        self.ready = ready
        server = self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    accept = self.headers.get("Accept", "")
                    encoder, content_type = exposition.choose_encoder(accept)
                    self._send(200, encoder(server.registry), content_type)
                elif path in ("/healthz", "/livez"):
                    ok, detail = server.alive()
                    self._send(200 if ok else 503, (detail + "\n").encode(), "text/plain; charset=utf-8")
                elif path == "/readyz":
                    ok, detail = server.ready()
                    self._send(200 if ok else 503, (detail + "\n").encode(), "text/plain; charset=utf-8")
                else:
                    self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - probes are noisy
                log.debug("http %s", format % args)

        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    def start(self) -> HealthServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="dangerclip-http", daemon=True)
        self._thread.start()
        log.info("metrics and health on http://%s:%d/metrics (/healthz, /readyz)", self.host, self.port)
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
