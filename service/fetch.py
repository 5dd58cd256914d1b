"""Image by reference: fetch an ``http(s)`` URI, only from allow-listed hosts, with a size cap and a timeout.

Off unless ``uri_fetch_enabled``. No scheme other than ``http`` and ``https`` is ever fetched, and every
redirect hop is checked against the allow-list again (an allowed host cannot bounce us to a private one).
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

ALLOWED_SCHEMES = ("http", "https")


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


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, fetcher: UriFetcher) -> None:
        super().__init__()
        self.fetcher = fetcher

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        self.fetcher.check(newurl)  # raises FetchError for a hop off the allow-list
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class UriFetcher:
    """Fetches images by URI under the worker's rules.

    Args:
        enabled: ``uri_fetch_enabled``; when False every URI is refused.
        allowed_hosts: the allow-list (see ``host_allowed``).
        max_bytes: largest body read; a longer one is refused as ``too_large``.
        timeout_s: connect and read timeout.
    """

    def __init__(self, enabled: bool, allowed_hosts: Iterable[str], max_bytes: int, timeout_s: float) -> None:
        self.enabled = enabled
        self.allowed_hosts = [h.lower() for h in allowed_hosts]
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        # No proxy from the environment: the allow-list must describe where we actually connect.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _CheckedRedirects(self))

    def check(self, uri: str) -> urllib.parse.SplitResult:
        """Raise ``FetchError('uri_not_allowed')`` unless ``uri`` may be fetched."""
        if not self.enabled:
            raise FetchError("uri_not_allowed", "fetching images by uri is disabled on this worker")
        try:
            parts = urllib.parse.urlsplit(uri)
            port = parts.port
        except ValueError as e:
            raise FetchError("uri_not_allowed", f"malformed uri: {e}") from e
        if parts.scheme.lower() not in ALLOWED_SCHEMES:
            raise FetchError("uri_not_allowed", f"scheme {parts.scheme!r} is not allowed (http, https only)")
        if parts.username or parts.password:
            raise FetchError("uri_not_allowed", "credentials in uri are not allowed")
        if not parts.hostname or not host_allowed(parts.hostname, port, self.allowed_hosts):
            raise FetchError("uri_not_allowed", f"host {parts.hostname!r} is not on the allow-list")
        return parts

    def fetch(self, uri: str) -> bytes:
        """Download the body of ``uri`` (at most ``max_bytes``).

        Raises:
            FetchError: ``uri_not_allowed``, ``too_large`` or ``uri_fetch_failed``.
        """
        self.check(uri)
        req = urllib.request.Request(uri, headers={"User-Agent": "dangerclip-worker", "Accept": "image/*"})
        try:
            with self._opener.open(req, timeout=self.timeout_s) as resp:
                length = resp.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) > self.max_bytes:
                    raise FetchError("too_large", f"uri body is {length} bytes, limit is {self.max_bytes}")
                body = resp.read(self.max_bytes + 1)
        except FetchError:
            raise
        except urllib.error.HTTPError as e:
            raise FetchError("uri_fetch_failed", f"HTTP {e.code} from {uri}") from e
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise FetchError("uri_fetch_failed", f"cannot fetch {uri}: {e}") from e
        if len(body) > self.max_bytes:
            raise FetchError("too_large", f"uri body exceeds {self.max_bytes} bytes")
        return body
