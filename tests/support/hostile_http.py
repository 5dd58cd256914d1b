"""A hostile HTTP upstream for tests and benchmarks: one threaded server on 127.0.0.1 that misbehaves per path.

``HostileServer.PATHS`` names every path and what it does. Dripping and silent handlers wait on the server's
closing event between bytes, and ``close()`` shuts down every open connection and joins every handler thread,
so no thread outlives the server (``close()`` raises if one does). Every loop is bounded in count and time.

    with HostileServer(interval_s=0.5) as srv:
        fetch(srv.url("/drip-body"))
"""

from __future__ import annotations

import io
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

from PIL import Image, ImageDraw

PATHS: dict[str, str] = {
    "/good.jpg": "200 with a real small JPEG and its Content-Length",
    "/drip-status": "the status line and headers of a good answer, one byte per interval",
    "/drip-headers": "a prompt status line, then headers one byte per interval",
    "/drip-body": "prompt headers with Content-Length, then the JPEG one byte per interval",
    "/silent": "reads the request and never answers",
    "/not-http": "a status line that is not HTTP, then close",
    "/long-status": "a status line longer than http.client's 64 KiB line limit",
    "/broken-chunked": "chunked encoding whose second chunk-size line is not hex",
    "/short-body": "Content-Length of the JPEG, half of it, then close",
    "/huge": "200 without Content-Length and an endless body, as fast as the client reads",
    "/huge-length": "Content-Length of 1 TB, then nothing",
    "/endless-headers": "a prompt status line, then headers without end, as fast as the client reads",
    "/redirect-out": "302 to http://169.254.169.254/ (the cloud metadata address)",
    "/redirect-loop": "302 to itself",
    "/redirect-good": "302 to /good.jpg",
    "/missing.jpg": "404",
}

MAX_DRIP_BYTES = 100_000
"""Most bytes one dripping handler sends before it gives up on its own."""

MAX_STREAM_BYTES = 1 << 30
"""Most bytes an endless handler (``/huge``, ``/endless-headers``) writes to one client."""

MAX_HOLD_S = 120.0
"""Longest a handler keeps a connection open (``/silent``, drips) if the server is not closed first."""


def good_jpeg() -> bytes:
    """A small real JPEG (96 × 80, a gradient and a shape) made with Pillow."""
    im = Image.linear_gradient("L").resize((96, 80)).convert("RGB")
    ImageDraw.Draw(im).ellipse((20, 15, 70, 60), fill=(200, 30, 30))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """``(cert.pem, key.pem)`` for ``127.0.0.1`` and ``localhost``, made with the ``openssl`` command.

    Raises:
        FileNotFoundError: no ``openssl`` command on this machine.
    """
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


class _Closing(Exception):
    """The server is closing or the client left: the handler stops."""


class _Handler(socketserver.BaseRequestHandler):
    server: HostileServer._Server

    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(5.0)
        try:
            if isinstance(conn, ssl.SSLSocket):
                conn.do_handshake()
            path = self._read_request(conn)
            if path is not None:
                self.server.owner._hits_add(path)
                self._answer(conn, path)
        except (_Closing, OSError, ssl.SSLError):
            pass

    def _read_request(self, conn: socket.socket) -> str | None:
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = conn.recv(4096)
            if not chunk:
                return None
            data += chunk
        parts = data.split(b"\r\n", 1)[0].split()
        return parts[1].decode("latin-1").split("?", 1)[0] if len(parts) >= 2 else None

    # ------------------------------------------------------------------ helpers
    def _send(self, conn: socket.socket, data: bytes) -> None:
        if self.server.owner.closing.is_set():
            raise _Closing
        conn.sendall(data)

    def _drip(self, conn: socket.socket, data: bytes) -> None:
        """``data`` one byte per interval, stopping when the server closes or the client leaves."""
        owner = self.server.owner
        started = time.monotonic()
        for i in range(min(len(data), MAX_DRIP_BYTES)):
            self._send(conn, data[i : i + 1])
            if owner.closing.wait(owner.interval_s) or time.monotonic() - started > MAX_HOLD_S:
                raise _Closing

    def _stream(self, conn: socket.socket, block: bytes) -> None:
        """``block`` again and again until the client leaves, the server closes or ``MAX_STREAM_BYTES``."""
        for _ in range(MAX_STREAM_BYTES // len(block)):
            self._send(conn, block)

    def _answer(self, conn: socket.socket, path: str) -> None:
        owner = self.server.owner
        jpeg = owner.jpeg
        head = f"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
        if path == "/good.jpg":
            self._send(conn, head + jpeg)
        elif path == "/drip-status":
            self._drip(conn, head + jpeg)
        elif path == "/drip-headers":
            self._send(conn, b"HTTP/1.1 200 OK\r\n")
            self._drip(conn, head.split(b"\r\n", 1)[1] + jpeg)
        elif path == "/drip-body":
            self._send(conn, head)
            self._drip(conn, jpeg)
        elif path == "/silent":
            owner.closing.wait(MAX_HOLD_S)
        elif path == "/not-http":
            self._send(conn, b"SSH-2.0-OpenSSH_9.6\r\nProtocol mismatch.\r\n")
        elif path == "/long-status":
            self._send(conn, b"HTTP/1.1 200 " + b"O" * 70_000 + b"\r\n\r\n")
        elif path == "/broken-chunked":
            self._send(
                conn,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"10\r\n"
                + jpeg[:16]
                + b"\r\nzz-not-hex\r\n"
                + jpeg[16:64],
            )
        elif path == "/short-body":
            self._send(conn, head + jpeg[: len(jpeg) // 2])
        elif path == "/huge":
            self._send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n\r\n" + jpeg[:2])
            self._stream(conn, b"\0" * 65536)
        elif path == "/huge-length":
            self._send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 1000000000000\r\n\r\n")
            owner.closing.wait(MAX_HOLD_S)
        elif path == "/endless-headers":
            self._send(conn, b"HTTP/1.1 200 OK\r\n")
            self._stream(conn, b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 40) for i in range(64)))
        elif path == "/redirect-out":
            self._send(conn, b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n")
        elif path == "/redirect-loop":
            self._send(conn, b"HTTP/1.1 302 Found\r\nLocation: /redirect-loop\r\nContent-Length: 0\r\n\r\n")
        elif path == "/redirect-good":
            self._send(conn, b"HTTP/1.1 302 Found\r\nLocation: /good.jpg\r\nContent-Length: 0\r\n\r\n")
        else:
            self._send(conn, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")


class HostileServer:
    """The hostile upstream: ``PATHS`` on ``127.0.0.1``, plain HTTP or TLS.

    Args:
        interval_s: seconds between two dripped bytes.
        tls: ``(cert.pem, key.pem)`` to serve HTTPS (see ``self_signed_cert``); None serves HTTP.

    Attributes:
        port, base_url: where it listens (``http://127.0.0.1:PORT`` or ``https://...``).
        host_entry: the allow-list entry for it (``127.0.0.1:PORT``).
        jpeg: the body of ``/good.jpg``.
        closing: set by ``close()``; every handler waits on it.
    """

    class _Server(socketserver.ThreadingTCPServer):
        daemon_threads = True  # joined by HostileServer.close(), which bounds the wait
        allow_reuse_address = True
        request_queue_size = 128  # many clients at once must not wait out a SYN retransmit (1 s)
        owner: HostileServer

    def __init__(self, interval_s: float = 1.0, tls: tuple[Path, Path] | None = None) -> None:
        self.interval_s = interval_s
        self.jpeg = good_jpeg()
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._hits: list[str] = []
        self._tls = None
        if tls is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(str(tls[0]), str(tls[1]))
        owner = self

        class _Server(HostileServer._Server):
            def get_request(self) -> tuple[socket.socket, object]:
                conn, addr = self.socket.accept()
                if owner._tls is not None:  # the handshake happens in the handler's thread
                    conn = owner._tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                return conn, addr

            def process_request(self, request: socket.socket, client_address: object) -> None:
                with owner._lock:
                    if owner.closing.is_set():
                        self.shutdown_request(request)
                        return
                    owner._conns.append(request)
                    t = threading.Thread(
                        target=self.process_request_thread,
                        args=(request, client_address),
                        name="hostile-http-handler",
                        daemon=True,
                    )
                    owner._threads.append(t)
                    t.start()

        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.owner = self
        self.port = self.server.server_address[1]
        self.host_entry = f"127.0.0.1:{self.port}"
        self.base_url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._serve = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="hostile-http-serve", daemon=True
        )
        self._serve.start()

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def hits(self) -> list[str]:
        """Paths requested so far, in order."""
        with self._lock:
            return list(self._hits)

    def _hits_add(self, path: str) -> None:
        with self._lock:
            self._hits.append(path)

    def threads_alive(self) -> list[threading.Thread]:
        """Handler and serving threads still running."""
        with self._lock:
            threads = [*self._threads, self._serve]
        return [t for t in threads if t.is_alive()]

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop serving, end every open connection and join every thread.

        Raises:
            RuntimeError: a thread still runs after ``timeout_s``.
        """
        with self._lock:
            self.closing.set()
            conns = list(self._conns)
        self.server.shutdown()
        self.server.server_close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        end = time.monotonic() + timeout_s
        for t in [self._serve, *self._threads]:
            t.join(max(0.0, end - time.monotonic()))
        for c in conns:
            c.close()
        alive = self.threads_alive()
        if alive:
            raise RuntimeError(f"hostile server threads still running after close: {[t.name for t in alive]}")

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
