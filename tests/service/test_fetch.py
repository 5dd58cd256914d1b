"""Image by reference: only http(s), only allow-listed hosts, size cap, timeout, checked redirects."""

from __future__ import annotations

import pytest

from service.fetch import FetchError, UriFetcher, host_allowed
from tests.service.conftest import jpeg_bytes


@pytest.mark.parametrize(
    ("host", "port", "allowed", "ok"),
    [
        ("images.example.com", None, ["images.example.com"], True),
        ("IMAGES.example.com", 443, ["images.example.com"], True),
        ("evil.com", None, ["images.example.com"], False),
        ("a.cdn.example.com", None, ["*.cdn.example.com"], True),
        ("cdn.example.com", None, ["*.cdn.example.com"], False),
        ("xcdn.example.com", None, ["*.cdn.example.com"], False),
        ("127.0.0.1", 8080, ["127.0.0.1:8080"], True),
        ("127.0.0.1", 8081, ["127.0.0.1:8080"], False),
        ("anything", None, [], False),
    ],
)
def test_allow_list(host: str, port: int | None, allowed: list[str], ok: bool) -> None:
    assert host_allowed(host, port, allowed) is ok


def test_fetches_only_from_allowed_hosts(image_server) -> None:
    f = UriFetcher(True, [f"127.0.0.1:{image_server.port}"], max_bytes=1_000_000, timeout_s=5)
    assert f.fetch(image_server.url + "/good.jpg") == jpeg_bytes(99)
    with pytest.raises(FetchError) as e:
        f.fetch(image_server.url + "/missing.jpg")
    assert e.value.reason == "uri_fetch_failed"
    for uri in ("file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1/", "http://localhost/x",
                f"http://user:pw@127.0.0.1:{image_server.port}/good.jpg", "http://[::1/"):
        with pytest.raises(FetchError) as e:
            f.fetch(uri)
        assert e.value.reason == "uri_not_allowed", uri


def test_redirects_off_the_allow_list_are_refused(image_server) -> None:
    f = UriFetcher(True, [f"127.0.0.1:{image_server.port}"], max_bytes=1_000_000, timeout_s=5)
    with pytest.raises(FetchError) as e:
        f.fetch(image_server.url + "/redirect")
    assert e.value.reason == "uri_not_allowed"


def test_size_cap_and_disabled(image_server) -> None:
    small = UriFetcher(True, [f"127.0.0.1:{image_server.port}"], max_bytes=100, timeout_s=5)
    with pytest.raises(FetchError) as e:
        small.fetch(image_server.url + "/good.jpg")
    assert e.value.reason == "too_large"
    off = UriFetcher(False, [f"127.0.0.1:{image_server.port}"], max_bytes=10**6, timeout_s=5)
    with pytest.raises(FetchError) as e:
        off.fetch(image_server.url + "/good.jpg")
    assert e.value.reason == "uri_not_allowed"
