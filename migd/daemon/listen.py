"""The metrics endpoint's listening socket, bound before the server behind it is loaded.

``migd run`` binds the endpoint's address at start, so that a taken port is reported
at once and a scrape that comes early waits in the socket's backlog rather than being
refused, and loads the HTTP server and prometheus_client only after READY=1
(``migd.daemon.httpserver`` then serves this socket). Only the standard library's
socket module is needed here.
"""

from __future__ import annotations

import logging
import socket

from migd.core.config import MetricsSettings, split_listen_address

log = logging.getLogger("migd.daemon.metrics")

MAX_CONNECTIONS = 64  # beyond this, new connections are closed at once


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port), as the config language reads ``metrics.address``
    (ValueError says what is wrong); port 0 is also accepted here and binds a free port."""
    host, _, port = address.rpartition(":")
    if port == "0":  # only programs (tests) ask for it; the config itself wants 1-65535
        return split_listen_address(f"{host}:1")[0], 0
    return split_listen_address(address)


def listen(address: str) -> socket.socket:
    """A socket bound to ``address`` (HOST:PORT) and listening; OSError or ValueError."""
    host, port = split_address(address)
    # The host as bytes: the config admits ASCII names and addresses only, and a str
    # would load the IDNA codec for nothing.
    family, kind, proto, _, where = socket.getaddrinfo(
        host.encode("ascii"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        # socketserver's default backlog of 5 makes a burst of scrapers (several
        # Prometheus replicas, a federation) wait for their SYN retry.
        sock.listen(MAX_CONNECTIONS)
    except BaseException:
        sock.close()
        raise
    return sock


def endpoint_address(settings: MetricsSettings, address: str | None = None) -> str:
    """The address to serve on: ``address`` (``--metrics-address``) overrides the
    settings' own; ``""`` when the endpoint is off."""
    if address is None:
        address = settings.address or ""
    return address


def listen_for_metrics(
    settings: MetricsSettings, address: str | None = None
) -> socket.socket | None:
    """The endpoint's socket, or None when it is off or cannot be bound (logged: the
    daemon runs on without metrics, and Prometheus's ``up`` shows the endpoint missing)."""
    address = endpoint_address(settings, address)
    if not address:
        return None
    try:
        return listen(address)
    except (OSError, ValueError) as exc:
        log.error("metrics endpoint on %s not started: %s", address, exc)
        return None
