"""The metrics endpoint as a client sees it: paths, methods, bad requests, slow clients, TLS."""

from __future__ import annotations

import http.client
import logging
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ci_policy import skip_allowed_in_ci

from migd.core.config import MetricsSettings, TlsSettings
from migd.daemon.httpserver import MetricsServer, split_address
from migd.daemon.metrics import MetricsObserver, start_endpoint

DEADLINE = 20.0  # liveness only: generous for a loaded CI machine


@pytest.fixture
def observer() -> MetricsObserver:
    return MetricsObserver()


@pytest.fixture
def server(observer: MetricsObserver) -> Iterator[MetricsServer]:
    with MetricsServer("127.0.0.1:0", registry=observer.registry, client_timeout=1.0) as srv:
        yield srv


def request(
    srv: MetricsServer,
    method: str = "GET",
    path: str = "/metrics",
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    if context is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection(
            "127.0.0.1", srv.port, timeout=DEADLINE
        )
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", srv.port, timeout=DEADLINE, context=context)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def send_raw(srv: MetricsServer, data: bytes) -> bytes:
    """Sends ``data`` as is, then reads until the server closes (it must, in time)."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=DEADLINE) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may already have answered and closed: that is fine
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        return received


def assert_scrape_works(srv: MetricsServer) -> None:
    status, _, body = request(srv)
    assert status == 200
    assert b"\nmigd_ready " in body


# ---------------------------------------------------------------------------
# Paths and methods
# ---------------------------------------------------------------------------


def test_get_metrics_answers_with_the_exposition(server: MetricsServer) -> None:
    status, headers, body = request(server)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"# TYPE migd_ready gauge" in body
    assert b"migd_reconciles_total{" in body
    assert headers["Server"] == "migd"


def test_head_answers_with_headers_only(server: MetricsServer) -> None:
    _, get_headers, body = request(server, "GET")
    status, headers, head_body = request(server, "HEAD")
    assert status == 200
    assert head_body == b""
    assert int(headers["Content-Length"]) == len(body)
    assert headers["Content-Type"] == get_headers["Content-Type"]


def test_a_query_string_is_fine(server: MetricsServer) -> None:
    status, _, body = request(server, path="/metrics?name[]=migd_ready")
    assert status == 200 and b"migd_ready" in body


@pytest.mark.parametrize(
    "path", ["/", "/metrics/", "/favicon.ico", "/metricsx", "/Metrics", "/debug/vars"]
)
def test_every_other_path_is_404(server: MetricsServer, path: str) -> None:
    status, _, body = request(server, path=path)
    assert status == 404
    assert b"migd_ready" not in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"])
def test_other_methods_are_405(server: MetricsServer, method: str) -> None:
    status, headers, body = request(server, method)
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    assert b"migd_ready" not in body


# ---------------------------------------------------------------------------
# Bad clients
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "answer"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/9.9\r\n\r\n", b"505"),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", b"414"),
        (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", b"431"),
        (b"GET /metrics HTTP/1.1\r\n" + b"X-Many: y\r\n" * 1500 + b"\r\n", b"431"),
        (b"\x00\xff\xfe\x16\x03\x01" * 100, b"400"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64), b""),  # a TLS hello
        (b"GET /metr", b""),  # half a request, then the client hangs up
        (b"", b""),  # connect and hang up
    ],
    ids=[
        "garbage",
        "bad-version",
        "long-line",
        "big-header",
        "many-headers",
        "binary",
        "tls-hello",
        "half",
        "empty",
    ],
)
def test_malformed_requests_are_refused_and_the_endpoint_keeps_answering(
    server: MetricsServer, data: bytes, answer: bytes
) -> None:
    received = send_raw(server, data)
    assert answer in received[:200]
    assert b"migd_ready" not in received
    assert_scrape_works(server)


def test_a_silent_client_is_dropped_and_does_not_delay_others(server: MetricsServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as idle:
        assert_scrape_works(server)  # while the silent client holds its connection
        assert idle.recv(1024) == b""  # closed by the server after its client timeout


def test_a_client_trickling_its_request_is_cut_off(server: MetricsServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as slow:
        started = time.monotonic()
        try:
            while time.monotonic() - started < DEADLINE:
                slow.sendall(b"X")  # one byte at a time, never a full line
                time.sleep(0.1)
        except OSError:
            pass  # connection closed by the server: what we want
        else:
            pytest.fail("the server kept a trickling client past the deadline")
    assert_scrape_works(server)


def test_many_idle_connections_do_not_pile_up_threads(observer: MetricsObserver) -> None:
    with MetricsServer(
        "127.0.0.1:0", registry=observer.registry, client_timeout=1.0, max_connections=4
    ) as srv:
        before = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(30)]
        try:
            time.sleep(0.3)  # let the accept loop see them all
            assert threading.active_count() - before <= 4
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + DEADLINE
        while True:  # the idle ones time out, then scrapes are served again
            try:
                assert_scrape_works(srv)
                break
            except (AssertionError, OSError, http.client.HTTPException):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def test_a_collector_error_is_a_500_not_a_dead_endpoint(
    server: MetricsServer, observer: MetricsObserver
) -> None:
    class Broken:
        def collect(self) -> list[object]:
            raise RuntimeError("boom")

    broken = Broken()
    observer.registry.register(broken)  # type: ignore[arg-type]
    status, _, body = request(server)
    assert status == 500
    assert b"boom" not in body
    observer.registry.unregister(broken)  # type: ignore[arg-type]
    assert_scrape_works(server)


# ---------------------------------------------------------------------------
# Life cycle and addresses
# ---------------------------------------------------------------------------


def test_stop_releases_the_port(observer: MetricsObserver) -> None:
    srv = MetricsServer("127.0.0.1:0", registry=observer.registry)
    srv.start()
    port = srv.port
    assert port != 0
    assert_scrape_works(srv)
    srv.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=DEADLINE).close()
    # And the same port can be bound again right away (a restart of the daemon).
    with MetricsServer(f"127.0.0.1:{port}", registry=observer.registry) as again:
        assert_scrape_works(again)


def test_a_busy_port_fails_at_start(server: MetricsServer, observer: MetricsObserver) -> None:
    with pytest.raises(OSError):
        MetricsServer(f"127.0.0.1:{server.port}", registry=observer.registry).start()


def test_ipv6_loopback(observer: MetricsObserver) -> None:
    if not socket.has_ipv6:
        skip_allowed_in_ci("no IPv6 on this machine")
    try:
        srv = MetricsServer("[::1]:0", registry=observer.registry)
        srv.start()
    except OSError as exc:
        skip_allowed_in_ci(f"cannot bind ::1 here: {exc}")
    try:
        conn = http.client.HTTPConnection("::1", srv.port, timeout=DEADLINE)
        conn.request("GET", "/metrics")
        assert conn.getresponse().status == 200
        conn.close()
        assert srv.url == f"http://[::1]:{srv.port}/metrics"
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9402", ("127.0.0.1", 9402)),
        ("0.0.0.0:9402", ("0.0.0.0", 9402)),
        ("[::1]:9402", ("::1", 9402)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_addresses(address: str, expected: tuple[str, int]) -> None:
    assert split_address(address) == expected


@pytest.mark.parametrize("address", ["9402", "::1:9402", "host:port", "127.0.0.1:70000", ":9402"])
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValueError):
        split_address(address)


# ---------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")


def _openssl(cwd: Path, *args: str) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(cwd: Path, name: str) -> None:
    _openssl(
        cwd,
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-days", "2", "-subj", f"/CN={name}"),
        *("-keyout", f"{name}.key", "-out", f"{name}.pem"),
    )


def _make_cert(cwd: Path, ca: str, name: str, extensions: str) -> None:
    (cwd / f"{name}.ext").write_text(extensions + "\n")
    _openssl(
        cwd,
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr"),
    )
    _openssl(
        cwd,
        *("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key"),
        *("-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext"),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1, a client certificate from the same CA,
    and a client certificate from another CA."""
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed")
    cwd = tmp_path_factory.mktemp("pki")
    _make_ca(cwd, "ca")
    _make_ca(cwd, "rogue-ca")
    _make_cert(
        cwd,
        "ca",
        "server",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth",
    )
    _make_cert(cwd, "ca", "client", "extendedKeyUsage=clientAuth")
    _make_cert(cwd, "rogue-ca", "rogue", "extendedKeyUsage=clientAuth")
    return cwd


def client_context(pki: Path, cert: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert is not None:
        context.load_cert_chain(str(pki / f"{cert}.pem"), str(pki / f"{cert}.key"))
    return context


def tls_settings(pki: Path, client_ca: bool) -> TlsSettings:
    return TlsSettings(
        cert_file=str(pki / "server.pem"),
        key_file=str(pki / "server.key"),
        client_ca_file=str(pki / "ca.pem") if client_ca else None,
    )


def refused(srv: MetricsServer, context: ssl.SSLContext) -> bool:
    try:
        status, _, body = request(srv, context=context)
    except (ssl.SSLError, ConnectionError, OSError, http.client.HTTPException):
        return True
    return status != 200 or b"migd_ready" not in body


@needs_openssl
def test_tls_with_client_certificates(pki: Path, observer: MetricsObserver) -> None:
    tls = tls_settings(pki, client_ca=True)
    with MetricsServer("127.0.0.1:0", tls, registry=observer.registry) as srv:
        assert srv.url.startswith("https://")
        assert refused(srv, client_context(pki))  # no certificate
        assert refused(srv, client_context(pki, "rogue"))  # a certificate from another CA
        status, _, body = request(srv, context=client_context(pki, "client"))
        assert status == 200 and b"migd_ready" in body
        # Plain HTTP on the TLS port gets nothing, and does not hurt the endpoint.
        assert b"migd_ready" not in send_raw(srv, b"GET /metrics HTTP/1.0\r\n\r\n")
        status, _, _ = request(srv, path="/", context=client_context(pki, "client"))
        assert status == 404
        status, _, _ = request(srv, context=client_context(pki, "client"))
        assert status == 200


@needs_openssl
def test_tls_without_a_client_ca_accepts_any_client(pki: Path, observer: MetricsObserver) -> None:
    with MetricsServer(
        "127.0.0.1:0", tls_settings(pki, client_ca=False), registry=observer.registry
    ) as srv:
        status, _, body = request(srv, context=client_context(pki))
        assert status == 200 and b"migd_ready" in body


@needs_openssl
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_refuses_versions_before_1_2(pki: Path, observer: MetricsObserver) -> None:
    context = client_context(pki, "client")
    try:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):
        skip_allowed_in_ci("this Python's OpenSSL cannot even offer TLS 1.1")
    with MetricsServer(
        "127.0.0.1:0", tls_settings(pki, client_ca=True), registry=observer.registry
    ) as srv:
        assert refused(srv, context)


@needs_openssl
def test_a_stalled_tls_handshake_does_not_block_other_clients(
    pki: Path, observer: MetricsObserver
) -> None:
    with (
        MetricsServer(
            "127.0.0.1:0",
            tls_settings(pki, client_ca=True),
            registry=observer.registry,
            client_timeout=1.0,
        ) as srv,
        socket.create_connection(("127.0.0.1", srv.port), timeout=DEADLINE) as stalled,
    ):
        status, _, _ = request(srv, context=client_context(pki, "client"))
        assert status == 200
        assert stalled.recv(1024) == b""  # dropped after the client timeout


# ---------------------------------------------------------------------------
# The endpoint as `migd run` starts it
# ---------------------------------------------------------------------------


def test_start_endpoint_follows_the_settings_and_the_override() -> None:
    assert start_endpoint(MetricsSettings(address=None)) is None
    assert start_endpoint(MetricsSettings(), "") is None  # --metrics-address ''
    endpoint = start_endpoint(MetricsSettings(address="127.0.0.1:9"), "127.0.0.1:0")
    assert endpoint is not None
    try:
        assert_scrape_works(endpoint.server)
        assert endpoint.server.registry is endpoint.observer.registry
    finally:
        endpoint.server.stop()


def test_an_endpoint_that_cannot_start_is_logged_not_fatal(
    server: MetricsServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # migd's CLI stops its logger from propagating; caplog listens on the root logger.
    monkeypatch.setattr(logging.getLogger("migd"), "propagate", True)
    busy = f"127.0.0.1:{server.port}"
    assert start_endpoint(MetricsSettings(address=busy)) is None
    missing = TlsSettings(str(tmp_path / "none.pem"), str(tmp_path / "none.key"))
    assert start_endpoint(MetricsSettings(address="127.0.0.1:0", tls=missing)) is None
    # A record can reach caplog's handler twice when an earlier in-process CLI run left
    # the handler on the "migd" logger too; count each record once.
    records = {id(r): r for r in caplog.records if r.levelname == "ERROR"}
    errors = [r.getMessage() for r in records.values()]
    assert len(errors) == 2 and all("metrics endpoint" in e for e in errors)


def test_a_scrape_shows_every_published_view_and_counted_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Answers are rendered once per view or event, and never go stale: each scrape
    after a publication or a count shows it, and between them the registry is not
    collected again."""
    from prometheus_client.parser import text_string_to_metric_families
    from test_metrics import BALANCED, h200, holding, view

    from migd.daemon.view import Trigger
    from migd.gpu.executor import GpuOutcome, GpuResult, ReconcileResult

    def sample(body: bytes, name: str, **labels: str) -> float | None:
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return s.value
        return None

    endpoint = start_endpoint(MetricsSettings(), "127.0.0.1:0")
    assert endpoint is not None
    observer, srv = endpoint.observer, endpoint.server
    collected: list[int] = []
    real_collect = observer.inventory.collect
    monkeypatch.setattr(
        observer.inventory, "collect", lambda: (collected.append(1), (yield from real_collect()))
    )
    try:
        observer.published(view((h200(0),)))
        first = request(srv)[2]
        assert sample(first, "migd_mig_devices", gpu="0", profile="3g.71gb") is None
        assert request(srv)[2] == first and len(collected) == 1

        observer.published(view((holding(h200(0), *BALANCED),)))
        second = request(srv)[2]
        assert sample(second, "migd_mig_devices", gpu="0", profile="3g.71gb") == 1
        assert request(srv)[2] == second and len(collected) == 2

        snapshot = view((h200(0),)).snapshot
        assert snapshot is not None
        done = ReconcileResult("c", (GpuResult(0, GpuOutcome.APPLIED),), (), snapshot)
        observer.reconciled(Trigger.FILE, done)
        third = request(srv)[2]
        assert sample(third, "migd_reconciles_total", trigger="file", result="applied") == 1
        observer.reload_attempted(False)
        assert sample(request(srv)[2], "migd_config_reloads_total", result="failure") == 1
        observer.drifted(0)
        assert sample(request(srv)[2], "migd_gpu_drift_events_total", gpu="0") == 1
        assert len(collected) == 5
    finally:
        srv.stop()
