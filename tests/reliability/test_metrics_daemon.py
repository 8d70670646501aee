"""The metrics endpoint of a running ``migd run``, attacked from outside.

``tests/test_metrics_endpoint.py`` covers the server class on its own; here the
endpoint is the daemon's: only ``GET``/``HEAD /metrics`` answers, malformed and
oversized requests and a flood of idle connections leave the daemon reconciling
(a reload during the flood is applied) and the endpoint answering afterwards, and
with TLS and a client CA configured, clients without a certificate signed by that
CA are refused during the handshake.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_support import BALANCED, SMALL, Daemon, all_hold, config_text, running, wait_for
from reliability_support import (
    alive,
    free_port,
    metric,
    parse_metrics,
    scrape,
    status_json,
    summary,
)
from test_metrics_endpoint import OPENSSL, client_context, pki  # noqa: F401 (a fixture)

DEADLINE = 20.0  # liveness only


@contextlib.contextmanager
def daemon_with_endpoint(directory: Path, config: str = "") -> Iterator[tuple[Daemon, int]]:
    port = free_port()
    with running(
        directory, config or config_text(), "--metrics-address", f"127.0.0.1:{port}"
    ) as started:
        started.ready()
        yield started, port


def request(
    port: int, method: str, path: str, context: ssl.SSLContext | None = None
) -> tuple[int, bytes]:
    if context is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=DEADLINE
        )
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=DEADLINE, context=context)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def send_raw(port: int, data: bytes, *, hang_up: bool = True) -> bytes:
    """Send ``data`` as is; what the endpoint answered before it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
            if hang_up:
                sock.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            received += chunk
        return received


PATHS_404 = ["/", "/metrics/", "/metrics.txt", "/Metrics", "/../metrics", "/debug"]
METHODS_405 = ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"]


def test_only_get_and_head_metrics_answer_on_a_running_daemon(tmp_path: Path) -> None:
    with daemon_with_endpoint(tmp_path) as (started, port):
        status, body = request(port, "GET", "/metrics")
        assert status == 200
        samples = parse_metrics(body.decode())
        assert metric(samples, "migd_ready") == 1
        assert metric(samples, "migd_mig_devices", gpu="0", profile="1g.18gb") == 2
        status, body = request(port, "HEAD", "/metrics")
        assert (status, body) == (200, b"")
        for path in PATHS_404:
            status, body = request(port, "GET", path)
            assert status == 404 and b"migd_" not in body, path
        for method in METHODS_405:
            status, body = request(port, method, "/metrics")
            assert status == 405 and b"migd_" not in body, method
        assert alive(started.pid)
    summary(
        "metrics endpoint, paths and methods",
        f"GET and HEAD /metrics answered; {len(PATHS_404)} other paths 404, "
        f"{len(METHODS_405)} other methods 405, on a running migd run",
    )


# What bad clients send: each must be refused or dropped, never answered with metrics.
BAD_REQUESTS: list[tuple[str, bytes]] = [
    ("garbage", b"GARBAGE\r\n\r\n"),
    ("bad version", b"GET /metrics HTTP/9.9\r\n\r\n"),
    ("1 MiB request line", b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\n\r\n"),
    ("64 KiB header", b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n"),
    ("5000 headers", b"GET /metrics HTTP/1.1\r\n" + b"X-Many: y\r\n" * 5000 + b"\r\n"),
    ("binary", bytes(range(256)) * 64),
    ("TLS hello on plain HTTP", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64)),
    ("half a request", b"GET /metr"),
    ("nothing", b""),
    ("NUL in path", b"GET /met\x00rics HTTP/1.1\r\n\r\n"),
    (
        "huge POST body",
        b"POST /metrics HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n" + b"x" * 65536,
    ),
    ("absolute URI", b"GET http://evil/metrics HTTP/1.1\r\nHost: evil\r\n\r\n"),
]
IDLE_CONNECTIONS = 80  # more than the endpoint serves at once (64)


def test_bad_clients_do_not_stop_the_daemon_reconciling_or_answering(tmp_path: Path) -> None:
    with daemon_with_endpoint(tmp_path) as (started, port):
        answers: dict[str, bytes] = {}

        def attack(name: str, data: bytes) -> None:
            answers[name] = send_raw(port, data)

        idle: list[socket.socket] = []

        def connect() -> None:
            with contextlib.suppress(OSError):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=DEADLINE))

        # The bad requests first, all at once, while an edit is applied: the daemon
        # keeps its job and reports it.
        threads = [threading.Thread(target=attack, args=item) for item in BAD_REQUESTS]
        for thread in threads:
            thread.start()
        started.config.write_text(config_text("small"))
        reloaded = started.reload()
        assert reloaded.returncode == 0, reloaded.stderr
        assert all_hold(started.state, SMALL)
        for thread in threads:
            thread.join(timeout=60)
        # Then more idle connections than the endpoint serves at once, during a reload.
        connecting = [threading.Thread(target=connect) for _ in range(IDLE_CONNECTIONS)]
        try:
            for thread in connecting:
                thread.start()
            for thread in connecting:
                thread.join(timeout=60)
            started.config.write_text(config_text("balanced"))
            reloaded = started.reload()
            assert reloaded.returncode == 0, reloaded.stderr
            assert all_hold(started.state, BALANCED)
        finally:
            for sock in idle:
                sock.close()
        assert not any(t.is_alive() for t in threads)
        for name, answer in answers.items():
            assert b"migd_" not in answer, name
        assert alive(started.pid)
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        assert metric(samples, "migd_mig_devices", gpu="1", profile="3g.71gb") == 1
        assert metric(samples, "migd_ready") == 1
        assert status_json(started)["phase"] == "ready"
    summary(
        "metrics endpoint, bad clients",
        f"{len(BAD_REQUESTS)} malformed or oversized requests and {IDLE_CONNECTIONS} idle "
        "connections: none answered with metrics, reloads meanwhile applied, the endpoint "
        "answering afterwards",
    )


def tls_config(certs: Path, port: int) -> str:
    return config_text().replace(
        "  metrics:\n    address: null\n",
        f"""\
  metrics:
    address: "127.0.0.1:{port}"
    tls:
      cert-file: {certs / "server.pem"}
      key-file: {certs / "server.key"}
      client-ca-file: {certs / "ca.pem"}
""",
    )


def refused(url: str, context: ssl.SSLContext) -> bool:
    try:
        scrape(url, context)
    except (
        ssl.SSLError,
        ConnectionError,
        OSError,
        urllib.error.URLError,
        http.client.HTTPException,
    ):
        return True
    return False


@pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")
def test_tls_with_client_certificates_refuses_clients_without_one(
    tmp_path: Path,
    pki: Path,  # noqa: F811 (the fixture from test_metrics_endpoint)
) -> None:
    port = free_port()
    url = f"https://127.0.0.1:{port}/metrics"
    with running(tmp_path, tls_config(pki, port)) as started:
        started.ready()
        # The server loads right after READY=1 (its socket is bound before).
        wait_for(lambda: "serving metrics on https://" in started.log(), "serving over TLS")
        assert refused(url, client_context(pki))  # no certificate
        assert refused(url, client_context(pki, "rogue"))  # signed by another CA
        assert b"migd_" not in send_raw(port, b"GET /metrics HTTP/1.0\r\n\r\n")  # plain HTTP
        samples = scrape(url, client_context(pki, "client"))
        assert metric(samples, "migd_mig_devices", gpu="0", profile="3g.71gb") == 1
        # Refused clients did not hurt the daemon: it applies an edit and reports it.
        started.config.write_text(tls_config(pki, port).replace("balanced\n", "small\n", 1))
        assert started.reload().returncode == 0
        assert all_hold(started.state, SMALL)
        samples = scrape(url, client_context(pki, "client"))
        assert metric(samples, "migd_mig_devices", gpu="0", profile="1g.18gb") == 7
        assert alive(started.pid)
    summary(
        "metrics endpoint, TLS",
        "with a client CA on a running migd run: no certificate refused, a certificate of "
        "another CA refused, plain HTTP answered with nothing, the CA's client served",
    )
