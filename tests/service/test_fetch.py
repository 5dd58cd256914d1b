"""Image by reference: only http(s), only allow-listed hosts, size cap, checked redirects, and a total deadline
that a hostile upstream (``tests/support/hostile_http.py``) cannot stretch."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service.fetch import FetchError, UriFetcher, address_refused, host_allowed
from tests.support.hostile_http import PATHS, HostileServer, self_signed_cert
from tests.support.service import jpeg_bytes


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
    for uri in (
        "file:///etc/passwd",
        "ftp://127.0.0.1/x",
        "gopher://127.0.0.1/",
        "http://localhost/x",
        f"http://user:pw@127.0.0.1:{image_server.port}/good.jpg",
        "http://[::1/",
    ):
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


# ---------------------------------------------------------------------------- a hostile upstream
TIMEOUT_S = 1.0
MARGIN_S = 1.0  # two shared cores: thread start-up and scheduling, not the upstream
DRIP_S = 0.2  # below TIMEOUT_S, so a per-read timeout alone never fires

HOSTILE = {
    "/drip-status": "uri_fetch_failed",
    "/drip-headers": "uri_fetch_failed",
    "/drip-body": "uri_fetch_failed",
    "/silent": "uri_fetch_failed",
    "/not-http": "uri_fetch_failed",
    "/long-status": "uri_fetch_failed",
    "/broken-chunked": "uri_fetch_failed",
    "/short-body": "uri_fetch_failed",
    "/huge": "too_large",
    "/huge-length": "too_large",
    "/endless-headers": "uri_fetch_failed",
    "/redirect-out": "uri_not_allowed",
    "/redirect-loop": "uri_fetch_failed",
    "/missing.jpg": "uri_fetch_failed",
}


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    srv = HostileServer(interval_s=DRIP_S)
    yield srv
    srv.close()  # raises if a handler thread outlives the server


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def hostile_tls(tls_cert: tuple[Path, Path]) -> Iterator[HostileServer]:
    srv = HostileServer(interval_s=DRIP_S, tls=tls_cert)
    yield srv
    srv.close()


def timed_fetch(fetcher: UriFetcher, uri: str) -> tuple[float, bytes | FetchError]:
    """``(seconds, body or the FetchError)``; any other exception fails the test by propagating."""
    t0 = time.monotonic()
    try:
        out: bytes | FetchError = fetcher.fetch(uri)
    except FetchError as e:
        out = e
    return time.monotonic() - t0, out


def test_every_path_is_described_and_covered() -> None:
    assert set(HOSTILE) | {"/good.jpg", "/redirect-good"} == set(PATHS)


@pytest.mark.parametrize("path", sorted(HOSTILE))
def test_hostile_upstream_ends_within_the_deadline_with_its_reason(hostile: HostileServer, path: str) -> None:
    f = UriFetcher(True, [hostile.host_entry], max_bytes=1_000_000, timeout_s=TIMEOUT_S)
    took, out = timed_fetch(f, hostile.url(path))
    assert isinstance(out, FetchError), f"{path} gave {len(out)} bytes"
    assert out.reason == HOSTILE[path], (path, str(out))
    assert took <= TIMEOUT_S + MARGIN_S, (path, took)


def test_the_deadline_covers_the_whole_fetch_not_each_read(hostile: HostileServer) -> None:
    # dripping the whole answer at DRIP_S a byte would take minutes; every read alone is well within the timeout
    assert len(hostile.jpeg) * DRIP_S > 60 * TIMEOUT_S
    f = UriFetcher(True, [hostile.host_entry], max_bytes=1_000_000, timeout_s=TIMEOUT_S)
    for path in ("/drip-status", "/drip-headers", "/drip-body"):
        took, out = timed_fetch(f, hostile.url(path))
        assert isinstance(out, FetchError) and out.reason == "uri_fetch_failed"
        assert TIMEOUT_S * 0.9 <= took <= TIMEOUT_S + MARGIN_S, (path, took)


def test_good_answers_and_allowed_redirects_still_arrive(hostile: HostileServer) -> None:
    f = UriFetcher(True, [hostile.host_entry], max_bytes=1_000_000, timeout_s=TIMEOUT_S)
    assert f.fetch(hostile.url("/good.jpg")) == hostile.jpeg
    assert f.fetch(hostile.url("/redirect-good")) == hostile.jpeg
    assert f.fetch(hostile.url("/good.jpg?size=small#frag")) == hostile.jpeg
    exact = UriFetcher(True, [hostile.host_entry], max_bytes=len(hostile.jpeg), timeout_s=TIMEOUT_S)
    assert exact.fetch(hostile.url("/good.jpg")) == hostile.jpeg


def test_a_redirect_loop_stops_after_a_few_hops(hostile: HostileServer) -> None:
    f = UriFetcher(True, [hostile.host_entry], max_bytes=1_000_000, timeout_s=10)
    before = hostile.hits.count("/redirect-loop")
    with pytest.raises(FetchError) as e:
        f.fetch(hostile.url("/redirect-loop"))
    assert e.value.reason == "uri_fetch_failed"
    assert 1 < hostile.hits.count("/redirect-loop") - before <= 10


def test_concurrent_hostile_fetches_each_end_on_time(hostile: HostileServer) -> None:
    f = UriFetcher(True, [hostile.host_entry], max_bytes=1_000_000, timeout_s=TIMEOUT_S)
    paths = ["/drip-status", "/drip-body", "/silent", "/drip-headers", "/good.jpg", "/not-http"]
    t0 = time.monotonic()
    with ThreadPoolExecutor(len(paths)) as pool:
        results = list(pool.map(lambda p: timed_fetch(f, hostile.url(p)), paths))
    assert time.monotonic() - t0 <= TIMEOUT_S + 2 * MARGIN_S
    assert results[paths.index("/good.jpg")][1] == hostile.jpeg
    for path, (took, out) in zip(paths, results, strict=True):
        assert took <= TIMEOUT_S + 2 * MARGIN_S, (path, took)
        if path != "/good.jpg":
            assert isinstance(out, FetchError) and out.reason == "uri_fetch_failed", path


@pytest.mark.parametrize("path", ["/drip-status", "/drip-body", "/silent", "/not-http", "/huge", "/redirect-out"])
def test_tls_upstream_is_held_to_the_same_deadline(
    hostile_tls: HostileServer, tls_cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_cert[0]))  # the default context trusts the test certificate
    f = UriFetcher(True, [hostile_tls.host_entry], max_bytes=1_000_000, timeout_s=TIMEOUT_S)
    assert f.fetch(hostile_tls.url("/good.jpg")) == hostile_tls.jpeg
    took, out = timed_fetch(f, hostile_tls.url(path))
    assert isinstance(out, FetchError) and out.reason == HOSTILE[path], (path, out)
    assert took <= TIMEOUT_S + MARGIN_S, (path, took)


def test_tls_failures_are_fetch_errors(hostile: HostileServer, hostile_tls: HostileServer) -> None:
    f = UriFetcher(True, [hostile.host_entry, hostile_tls.host_entry], max_bytes=10**6, timeout_s=TIMEOUT_S)
    # a certificate nobody vouches for
    took, out = timed_fetch(f, hostile_tls.url("/good.jpg"))
    assert isinstance(out, FetchError) and out.reason == "uri_fetch_failed" and took <= TIMEOUT_S + MARGIN_S
    # https to a plain-HTTP server, which waits for a request line that never comes: the handshake is bounded
    took, out = timed_fetch(f, hostile.url("/good.jpg").replace("http://", "https://"))
    assert isinstance(out, FetchError) and out.reason == "uri_fetch_failed" and took <= TIMEOUT_S + MARGIN_S


def test_closing_the_server_ends_its_dripping_handlers() -> None:
    srv = HostileServer(interval_s=0.5)
    f = UriFetcher(True, [srv.host_entry], max_bytes=1_000_000, timeout_s=30)
    with ThreadPoolExecutor(2) as pool:
        pending = [pool.submit(timed_fetch, f, srv.url(p)) for p in ("/drip-body", "/silent")]
        deadline = time.monotonic() + 10
        while len(srv.hits) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(srv.hits) == ["/drip-body", "/silent"]
        t0 = time.monotonic()
        srv.close(timeout_s=5)  # raises if a handler is still running
        assert time.monotonic() - t0 < 3
        assert srv.threads_alive() == []
        for p in pending:  # the client sees the connection end, long before its own 30 s
            took, out = p.result(timeout=10)
            assert isinstance(out, FetchError) and out.reason == "uri_fetch_failed" and took < 10


# ---------------------------------------------------------------------------- names and addresses
@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("169.254.169.254", True),
        ("169.254.0.1", True),
        ("fe80::1", True),
        ("::ffff:169.254.169.254", True),
        ("64:ff9b::a9fe:a9fe", True),
        ("2002:a9fe:a9fe::1", True),
        ("fd00:ec2::254", True),
        ("0.0.0.0", True),
        ("::", True),
        ("224.0.0.1", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("::1", False),
        ("93.184.216.34", False),
        ("2606:2800:220:1:248:1893:25c8:1946", False),
    ],
)
def test_link_local_and_metadata_addresses_are_refused(address: str, refused: bool) -> None:
    assert address_refused(address) is refused


def test_an_allow_listed_link_local_address_is_still_refused() -> None:
    f = UriFetcher(True, ["169.254.169.254", "[fe80::1]"], max_bytes=10**6, timeout_s=TIMEOUT_S)
    took, out = timed_fetch(f, "http://169.254.169.254/latest/meta-data/")
    assert isinstance(out, FetchError) and out.reason == "uri_not_allowed"
    assert took < 0.5  # refused before any connection attempt


@pytest.mark.parametrize(
    "answer",
    [["169.254.169.254"], ["127.0.0.1", "169.254.169.254"], ["::ffff:169.254.169.254"], ["fe80::1"]],
)
def test_a_name_that_resolves_to_link_local_is_refused(
    hostile: HostileServer, monkeypatch: pytest.MonkeyPatch, answer: list[str]
) -> None:
    def fake_getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list:
        assert host == "images.example.com"
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answer]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    f = UriFetcher(True, ["images.example.com"], max_bytes=10**6, timeout_s=TIMEOUT_S)
    with pytest.raises(FetchError) as e:
        f.fetch("http://images.example.com/good.jpg")
    assert e.value.reason == "uri_not_allowed"


def test_a_name_is_connected_to_at_the_address_it_resolved_to(hostile: HostileServer) -> None:
    f = UriFetcher(True, [f"localhost:{hostile.port}"], max_bytes=10**6, timeout_s=5)
    assert f.fetch(f"http://localhost:{hostile.port}/good.jpg") == hostile.jpeg


def test_a_hung_name_lookup_is_held_to_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def hung_getaddrinfo(*args: object, **kwargs: object) -> list:
        release.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "resolver gave up")

    monkeypatch.setattr(socket, "getaddrinfo", hung_getaddrinfo)
    f = UriFetcher(True, ["images.example.com"], max_bytes=10**6, timeout_s=TIMEOUT_S)
    try:
        took, out = timed_fetch(f, "http://images.example.com/a.jpg")
    finally:
        release.set()
    assert isinstance(out, FetchError) and out.reason == "uri_fetch_failed"
    assert took <= TIMEOUT_S + MARGIN_S


def test_a_failed_name_lookup_is_a_fetch_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_such_name(*args: object, **kwargs: object) -> list:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    f = UriFetcher(True, ["images.example.com"], max_bytes=10**6, timeout_s=TIMEOUT_S)
    with pytest.raises(FetchError) as e:
        f.fetch("http://images.example.com/a.jpg")
    assert e.value.reason == "uri_fetch_failed"


def test_odd_uris_end_in_a_fetch_error_or_the_image(hostile: HostileServer) -> None:
    f = UriFetcher(True, [hostile.host_entry, "*.invalid"], max_bytes=10**6, timeout_s=TIMEOUT_S)
    base = hostile.url("")
    odd = [
        base + "/ünïcödé.jpg",
        base + "/a b\x00c\x7f.jpg",
        base + "/good.jpg?q=\u2603&x=%zz",
        base + "/%ff%fe",
        "http://" + "a" * 70 + ".invalid/x.jpg",  # a DNS label longer than 63: IDNA refuses it
        "http://\u2603\ud800.invalid/x.jpg",  # a lone surrogate in the host
        "http://.invalid/",
        "https://" + "b" * 300 + ".invalid:99999/",
    ]
    for uri in odd:
        took, out = timed_fetch(f, uri)
        if isinstance(out, FetchError):
            assert out.reason in {"uri_fetch_failed", "uri_not_allowed"}, (uri, out)
            str(out).encode("utf-8")  # the message goes into a dead letter as it is
        else:  # the server ignores the query string
            assert "/good.jpg?" in uri and out == hostile.jpeg, uri
        assert took <= TIMEOUT_S + MARGIN_S, uri


def test_a_fetch_that_gives_up_hangs_up() -> None:
    # the FetchErrors (and their tracebacks) are kept: they must not keep the upstream's connections open
    with HostileServer(interval_s=0.02) as srv:
        f = UriFetcher(True, [srv.host_entry], max_bytes=100_000, timeout_s=0.3)
        errors = []
        for path in ("/huge", "/drip-status", "/drip-body", "/short-body", "/huge"):
            with pytest.raises(FetchError) as e:
                f.fetch(srv.url(path))
            errors.append(e.value)
        # a handler ends when its client hangs up; one whose client holds on stays blocked for 5 s
        deadline = time.monotonic() + 2
        while len(srv.threads_alive()) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [t.name for t in srv.threads_alive()] == ["hostile-http-serve"]
        assert [e.reason for e in errors] == ["too_large"] + ["uri_fetch_failed"] * 3 + ["too_large"]
