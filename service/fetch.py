"""Image by reference: fetch an ``http(s)`` URI, only from allow-listed hosts, with a size cap and a total deadline.

Off unless ``uri_fetch_enabled``. No scheme other than ``http`` and ``https`` is ever fetched, and every
redirect hop is checked against the allow-list again (an allowed host cannot bounce us to a private one).

The deadline is the whole fetch, not a socket read: a record waits behind its fetch, and the partition behind
the record, so an upstream that answers one byte a second must cost ``timeout_s`` and no more. Every socket
operation therefore waits at most until the fetch's deadline (DNS runs in a helper thread waited on for the
same), and a fetch ends in bytes or a ``FetchError``, whatever the other end sends.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable
from typing import Any

ALLOWED_SCHEMES = ("http", "https")

MAX_REDIRECTS = 5
"""Redirect hops followed before a fetch is given up (a loop ends here long before the deadline)."""

MAX_PENDING_LOOKUPS = 16
"""Name lookups that may be running at once in this process. A lookup cannot be interrupted, so one that
outlives its fetch keeps running in its thread; this caps how many such threads a hung resolver can pile up."""

READ_CHUNK_BYTES = 64 * 1024

METADATA_ADDRESSES = frozenset({ipaddress.ip_address("fd00:ec2::254")})
"""Cloud metadata endpoints outside link-local space (AWS IMDS over IPv6), refused like 169.254.169.254."""

_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Request-target characters sent as they are; anything else (spaces, controls, non-ASCII) is percent-encoded.
_TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"
_lookup_slots = threading.BoundedSemaphore(MAX_PENDING_LOOKUPS)


class FetchError(Exception):
    """A ``uri`` that cannot or may not be fetched.

    Attributes:
        reason: ``uri_not_allowed``, ``uri_fetch_failed`` or ``too_large``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def host_allowed(netloc_host: str, port: int | None, allowed: Iterable[str]) -> bool:
    """Whether ``host`` (and ``port``) is on the allow-list.

    Entries are exact host names or IPs (``images.example.com``), ``host:port`` for one port only, or
    ``*.example.com`` for any sub-domain (not ``example.com`` itself).
    """
    host = netloc_host.lower().rstrip(".")
    for entry in allowed:
        e = entry.lower().strip()
        if not e:
            continue
        if e.startswith("*."):
            if host.endswith(e[1:]) and host != e[2:]:
                return True
            continue
        if e.count(":") == 1:  # host:port (IPv6 literals are not supported in the allow-list)
            eh, _, ep = e.partition(":")
            if host == eh and port is not None and str(port) == ep:
                return True
            continue
        if host == e:
            return True
    return False


def address_refused(address: str) -> bool:
    """Whether ``address`` (an IP literal) is never connected to, whatever the allow-list says.

    Link-local addresses (169.254.0.0/16, fe80::/10) hold the cloud metadata services and never an image host,
    so an allow-listed name that resolves there is an attack on the worker's credentials; unspecified addresses
    (``0.0.0.0`` reaches this host) and multicast are never image hosts either. IPv4 addresses embedded in IPv6
    (mapped, 6to4, NAT64) are judged as the IPv4 address they reach.
    """
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in METADATA_ADDRESSES:
            return True
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.is_link_local or ip.is_unspecified or ip.is_multicast


class _DeadlineExceeded(TimeoutError):
    pass


class _Deadline:
    """The end of one fetch on the monotonic clock."""

    __slots__ = ("end",)

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left; raises ``_DeadlineExceeded`` when none are."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise _DeadlineExceeded
        return left

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.end


class _DeadlineSocket(socket.socket):
    """A TCP socket whose every receive and send waits at most until the fetch's deadline.

    A socket timeout alone bounds one ``recv``; an upstream dripping a byte at a time satisfies every ``recv``
    and never trips it. Setting the timeout to the time left before each call bounds them all together.
    ``http.client`` reads through ``makefile()``, which calls ``recv_into`` on this object.
    """

    __slots__ = ("deadline",)
    deadline: _Deadline

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self.settimeout(self.deadline.remaining())
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self.settimeout(self.deadline.remaining())
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        self.settimeout(self.deadline.remaining())
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self.settimeout(self.deadline.remaining())  # since 3.5 the timeout bounds the whole sendall
        super().sendall(data, flags)


class _DeadlineSSLSocket(ssl.SSLSocket):
    """The TLS counterpart of ``_DeadlineSocket``. ``wrap_socket`` builds a new socket object, so the deadline
    is set on it after the handshake (which the raw socket's timeout, the time left at connect, bounds).
    ``SSLSocket.sendall`` sends through ``send``."""

    deadline: _Deadline | None = None

    def _wait_at_most_remaining(self) -> None:
        if self.deadline is not None:
            self.settimeout(self.deadline.remaining())

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        self._wait_at_most_remaining()
        return super().recv(buflen, flags)

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        self._wait_at_most_remaining()
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        self._wait_at_most_remaining()
        return super().send(data, flags)


def _lookup(host: str, port: int, deadline: _Deadline) -> list[tuple[int, Any]]:
    """``(family, sockaddr)`` of ``host``, waiting at most until ``deadline``.

    ``getaddrinfo`` cannot be interrupted, so it runs in a daemon thread that we stop waiting for at the
    deadline; the thread ends when the resolver gives up on its own.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:  # a literal: nothing to look up
        return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (host, port))]
    if not _lookup_slots.acquire(timeout=deadline.remaining()):
        raise _DeadlineExceeded
    done = threading.Event()
    answer: dict[str, Any] = {}

    def resolve() -> None:
        try:
            answer["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as e:  # noqa: BLE001 - handed to the waiting fetch, which reports it
            answer["error"] = e
        finally:
            _lookup_slots.release()
            done.set()

    try:
        threading.Thread(target=resolve, name="uri-fetch-lookup", daemon=True).start()
    except BaseException:
        _lookup_slots.release()
        raise
    if not done.wait(deadline.remaining()):
        raise _DeadlineExceeded
    if "error" in answer:
        raise answer["error"]
    return [(family, sockaddr) for family, _, _, _, sockaddr in answer["infos"]]


def _connector(addresses: list[tuple[int, Any]], deadline: _Deadline) -> Any:
    """A stand-in for ``socket.create_connection`` that connects to the already checked ``addresses`` (not to
    a second lookup of the name, which could answer differently) within the deadline."""

    def connect(address: object, timeout: object = None, source_address: object = None) -> socket.socket:
        last: OSError | None = None
        for family, sockaddr in addresses:
            sock = _DeadlineSocket(family, socket.SOCK_STREAM)
            sock.deadline = deadline
            try:
                sock.settimeout(deadline.remaining())
                sock.connect(sockaddr)
                sock.settimeout(deadline.remaining())  # what is left bounds the TLS handshake
                return sock
            except _DeadlineExceeded:
                sock.close()
                raise
            except OSError as e:
                sock.close()
                last = e
        raise last or OSError("no address to connect to")

    return connect


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, addresses: list[tuple[int, Any]], deadline: _Deadline) -> None:
        super().__init__(host, port)
        self._create_connection = _connector(addresses, deadline)


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(
        self, host: str, port: int, addresses: list[tuple[int, Any]], deadline: _Deadline, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, context=context)
        self._create_connection = _connector(addresses, deadline)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self.sock.deadline = self._deadline  # type: ignore[union-attr]  # a _DeadlineSSLSocket


def _request_target(parts: urllib.parse.SplitResult) -> str:
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return urllib.parse.quote(target, safe=_TARGET_SAFE)


def _short(text: str, limit: int = 200) -> str:
    """``text`` fit for a dead-letter message: capped, with controls and lone surrogates escaped (a URI or an
    upstream's status line may hold either, and a surrogate cannot be encoded as UTF-8)."""
    text = text if len(text) <= limit else text[:limit] + "..."
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _one_line(text: str, limit: int = 300) -> str:
    """An upstream's words in a dead-letter message: whitespace collapsed, then as ``_short``."""
    return _short(" ".join(text.split()), limit)


class UriFetcher:
    """Fetches images by URI under the worker's rules. Safe to share between threads.

    Args:
        enabled: ``uri_fetch_enabled``; when False every URI is refused.
        allowed_hosts: the allow-list (see ``host_allowed``). A name that resolves to a refused address (see
            ``address_refused``) is refused as ``uri_not_allowed`` even when listed.
        max_bytes: largest body read; a longer one is refused as ``too_large``.
        timeout_s: total deadline of one fetch: name lookup, connect, TLS, every redirect hop, status line,
            headers and body together.
    """

    def __init__(self, enabled: bool, allowed_hosts: Iterable[str], max_bytes: int, timeout_s: float) -> None:
        self.enabled = enabled
        self.allowed_hosts = [h.lower() for h in allowed_hosts]
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._tls: ssl.SSLContext | None = None
        self._tls_lock = threading.Lock()

    def check(self, uri: str) -> urllib.parse.SplitResult:
        """Raise ``FetchError('uri_not_allowed')`` unless ``uri`` may be fetched."""
        if not self.enabled:
            raise FetchError("uri_not_allowed", "fetching images by uri is disabled on this worker")
        try:
            parts = urllib.parse.urlsplit(uri)
            port = parts.port
        except ValueError as e:
            raise FetchError("uri_not_allowed", f"malformed uri: {_one_line(str(e))}") from e
        if parts.scheme.lower() not in ALLOWED_SCHEMES:
            raise FetchError("uri_not_allowed", f"scheme {parts.scheme!r} is not allowed (http, https only)")
        if parts.username or parts.password:
            raise FetchError("uri_not_allowed", "credentials in uri are not allowed")
        if not parts.hostname or not host_allowed(parts.hostname, port, self.allowed_hosts):
            raise FetchError("uri_not_allowed", f"host {parts.hostname!r} is not on the allow-list")
        return parts

    def fetch(self, uri: str) -> bytes:
        """Download the body of ``uri`` (at most ``max_bytes``) within ``timeout_s`` in all.

        Raises:
            FetchError: ``uri_not_allowed``, ``too_large`` or ``uri_fetch_failed``, and never anything else:
                whatever the upstream sends (a non-HTTP reply, a broken chunked body, endless headers) is one
                record's failure, not the worker's.
        """
        deadline = _Deadline(self.timeout_s)
        current = uri
        try:
            for _ in range(MAX_REDIRECTS + 1):
                location, body = self._get(self.check(current), deadline)
                if location is None:
                    return body
                current = urllib.parse.urljoin(current, location)
            raise FetchError("uri_fetch_failed", f"more than {MAX_REDIRECTS} redirects from {_short(uri)}")
        except FetchError:
            raise
        except Exception as e:  # noqa: BLE001 - the contract: every failure of an upstream is a FetchError
            if isinstance(e, _DeadlineExceeded) or deadline.expired:
                raise FetchError(
                    "uri_fetch_failed", f"no complete answer from {_short(current)} within {self.timeout_s:g} s"
                ) from e
            raise FetchError(
                "uri_fetch_failed", f"cannot fetch {_short(current)}: {type(e).__name__}: {_one_line(str(e))}"
            ) from e

    def _get(self, parts: urllib.parse.SplitResult, deadline: _Deadline) -> tuple[str | None, bytes]:
        """One hop: ``(Location, b'')`` for a redirect, else ``(None, body)``."""
        assert parts.hostname is not None  # check() refused a URI without one
        host = parts.hostname
        tls = parts.scheme.lower() == "https"
        port = parts.port or (443 if tls else 80)
        addresses = _lookup(host, port, deadline)
        for _, sockaddr in addresses:
            if address_refused(sockaddr[0]):
                raise FetchError("uri_not_allowed", f"host {host!r} resolves to {sockaddr[0]}, which is refused")
        conn: http.client.HTTPConnection
        if tls:
            conn = _HTTPSConnection(host, port, addresses, deadline, self._tls_context())
        else:
            conn = _HTTPConnection(host, port, addresses, deadline)
        resp: http.client.HTTPResponse | None = None
        try:
            conn.request(
                "GET",
                _request_target(parts),
                headers={"User-Agent": "dangerclip-worker", "Accept": "image/*", "Connection": "close"},
            )
            resp = conn.getresponse()
            if resp.status in _REDIRECT_CODES:
                location = resp.getheader("Location")
                if not location:
                    raise FetchError("uri_fetch_failed", f"HTTP {resp.status} without a Location")
                return location, b""
            if not 200 <= resp.status < 300:
                raise FetchError("uri_fetch_failed", f"HTTP {resp.status} from {_short(parts.geturl())}")
            if resp.length is not None and resp.length > self.max_bytes:
                raise FetchError("too_large", f"uri body is {resp.length} bytes, limit is {self.max_bytes}")
            return None, self._read_body(resp)
        finally:
            if resp is not None:  # a response to "Connection: close" owns the socket; conn.close() leaves it open
                resp.close()
            conn.close()

    def _read_body(self, resp: http.client.HTTPResponse) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = resp.read(min(READ_CHUNK_BYTES, self.max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > self.max_bytes:
                raise FetchError("too_large", f"uri body exceeds {self.max_bytes} bytes")
        if resp.length:  # http.client ends a body cut short by the server quietly; a truncated image is no image
            raise http.client.IncompleteRead(b"".join(chunks), resp.length)
        return b"".join(chunks)

    def _tls_context(self) -> ssl.SSLContext:
        with self._tls_lock:
            if self._tls is None:
                ctx = ssl.create_default_context()
                ctx.sslsocket_class = _DeadlineSSLSocket
                self._tls = ctx
            return self._tls
