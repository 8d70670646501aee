"""The metrics endpoint: a small threaded WSGI server that answers ``GET /metrics`` only.

prometheus-client's ``start_http_server`` serves the registry on every path and accepts
clients without a certificate unless told otherwise, so migd runs its own server over
``wsgiref``: one thread per connection (daemon threads, capped in number), a byte budget
and a deadline for the request head, a socket timeout for everything after, TLS ≥ 1.2
with optional required client certificates, and the TLS handshake done in the
connection's own thread so a slow client never stalls the accept loop.

The server only reads what the collectors hand it; it never touches NVML, so it keeps
answering while the daemon's loop is busy with a long apply.
"""

from __future__ import annotations

import logging
import selectors
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app

from migd.core.config import TlsSettings
from migd.daemon.listen import MAX_CONNECTIONS, listen, split_address

__all__ = ["MAX_CONNECTIONS", "MetricsServer", "split_address"]

log = logging.getLogger("migd.daemon.metrics")

METRICS_PATH = "/metrics"
MAX_REQUEST_HEAD_BYTES = 8 * 1024  # request line + headers; a scrape needs a few hundred
CLIENT_TIMEOUT_SECONDS = 10.0  # whole request head, and each later socket operation

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def make_tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """A server context: TLS ≥ 1.2, and client certificates required when a CA is given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=tls.cert_file, keyfile=tls.key_file)
    if tls.client_certs_required:
        context.load_verify_locations(cafile=tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def only_metrics(app: WsgiApp) -> WsgiApp:
    """Wraps the exposition app: ``GET``/``HEAD /metrics`` reach it; other paths get 404,
    other methods 405; an exception while collecting becomes a logged 500."""

    def route(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        if environ.get("PATH_INFO") != METRICS_PATH:
            return _plain(start_response, "404 Not Found", b"only /metrics is served here\n")
        if method not in ("GET", "HEAD"):
            return _plain(
                start_response,
                "405 Method Not Allowed",
                b"use GET or HEAD\n",
                [("Allow", "GET, HEAD")],
            )
        captured: list[Any] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            captured[:] = [status, headers]

        try:
            body = b"".join(app({**environ, "REQUEST_METHOD": "GET"}, capture))
        except Exception:
            log.exception("collecting metrics failed")
            return _plain(start_response, "500 Internal Server Error", b"collection failed\n")
        status, headers = captured
        # Content-Length is set here so a HEAD answer carries the length of the GET body.
        headers = [*headers, ("Content-Length", str(len(body)))]
        start_response(status, headers)
        return [] if method == "HEAD" else [body]

    return route


def cached(app: WsgiApp, version: Callable[[], object]) -> WsgiApp:
    """Wraps the exposition app: while ``version()`` returns the same value, the last
    answer for the same Accept and Accept-Encoding headers is served again as it was.

    The registry's content changes only when the daemon publishes a view or counts an
    event, and ``version`` says which of those it holds; so a scrape between two of them
    is a lookup, not a collection. The version is read before collecting: an answer
    collected while the version moves on is stored under the older one, and the next
    scrape collects again. Queries (``?name[]=...``) are not cached.
    """
    last: tuple[object, tuple[str, list[tuple[str, str]], bytes]] | None = None

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        nonlocal last
        if environ.get("QUERY_STRING"):
            return app(environ, start_response)
        key = (version(), environ.get("HTTP_ACCEPT"), environ.get("HTTP_ACCEPT_ENCODING"))
        stored = last  # one reference, swapped whole: key and answer always match
        if stored is None or stored[0] != key:
            captured: list[Any] = []

            def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
                captured[:] = [status, headers]

            body = b"".join(app(environ, capture))
            stored = (key, (captured[0], captured[1], body))
            last = stored
        status, headers, body = stored[1]
        start_response(status, list(headers))
        return [body]

    return serve


def _plain(
    start_response: Callable[..., Any],
    status: str,
    body: bytes,
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    start_response(status, headers + (extra or []))
    return [body]


class _HeadTooLarge(Exception):
    pass


class _HeadReader:
    """The request's input stream, bounded in bytes and in time.

    Reads straight from the socket with the timeout set to what is left of the deadline,
    so a client trickling one byte at a time cannot hold a thread past the deadline, and
    one sending endless headers cannot make the server buffer more than the budget.
    """

    def __init__(self, sock: socket.socket, budget: int, deadline: float) -> None:
        self._sock = sock
        self._budget = budget
        self._deadline = deadline
        self._buffer = bytearray()
        self._eof = False

    def _fill(self) -> None:
        if self._budget <= 0:
            raise _HeadTooLarge
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request head not received in time")
        self._sock.settimeout(remaining)
        chunk = self._sock.recv(min(4096, self._budget))
        self._budget -= len(chunk)
        self._eof = not chunk
        self._buffer += chunk

    def readline(self, limit: int = -1) -> bytes:
        while True:
            newline = self._buffer.find(b"\n")
            end = newline + 1 if newline >= 0 else None
            if end is None and (self._eof or 0 <= limit <= len(self._buffer)):
                end = len(self._buffer)
            if end is not None:
                if limit >= 0:
                    end = min(end, limit)
                line = bytes(self._buffer[:end])
                del self._buffer[:end]
                return line
            self._fill()

    def read(self, size: int = -1) -> bytes:
        # A scrape has no body; this serves a client that sends one anyway, within budget.
        while not self._eof and (size < 0 or len(self._buffer) < size):
            self._fill()
        end = len(self._buffer) if size < 0 else min(size, len(self._buffer))
        data = bytes(self._buffer[:end])
        del self._buffer[:end]
        return data

    def close(self) -> None:
        self._buffer.clear()


class _ServerHandler(ServerHandler):
    server_software = "migd"  # no Python version in the Server header


class _Handler(WSGIRequestHandler):
    """One connection, one request (wsgiref speaks HTTP/1.0 and closes afterwards)."""

    server: _ThreadingServer

    def version_string(self) -> str:
        return "migd"

    def setup(self) -> None:
        self.timeout = self.server.client_timeout  # StreamRequestHandler sets it on the socket
        super().setup()
        self.rfile.close()  # replaced by a reader with a byte budget and a deadline
        self.rfile = _HeadReader(  # type: ignore[assignment]
            self.connection,
            MAX_REQUEST_HEAD_BYTES,
            time.monotonic() + self.server.client_timeout,
        )

    def handle(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(MAX_REQUEST_HEAD_BYTES + 1)
        except _HeadTooLarge:
            self._refuse(414, "request line too long")
            return
        if len(self.raw_requestline) > MAX_REQUEST_HEAD_BYTES:
            self._refuse(414, "request line too long")
            return
        try:
            if not self.parse_request():  # has already answered 400/505 and why
                return
        except _HeadTooLarge:
            self._refuse(431, "request headers too large")
            return
        # The head is in; from here on a plain per-operation timeout bounds the writes.
        self.connection.settimeout(self.server.client_timeout)
        handler = _ServerHandler(
            self.rfile,
            self.wfile,
            self.get_stderr(),
            self.get_environ(),
            multithread=True,
        )
        handler.request_handler = self  # type: ignore[attr-defined]
        handler.run(self.server.get_app())

    def _refuse(self, code: int, message: str) -> None:
        # May run before parse_request, which is what normally sets these.
        self.requestline = getattr(self, "requestline", "")
        self.command = getattr(self, "command", None) or ""
        self.request_version = "HTTP/1.0"
        self.close_connection = True
        self.connection.settimeout(self.server.client_timeout)
        self.send_error(code, message)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics endpoint: %s %s", self.address_string(), format % args)


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck client never delays the daemon's exit
    block_on_close = False

    def __init__(
        self,
        listener: socket.socket,
        app: WsgiApp,
        tls_context: ssl.SSLContext | None,
        client_timeout: float,
        max_connections: int,
    ) -> None:
        self.address_family = listener.family
        self._tls_context = tls_context
        self.client_timeout = client_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        # A wake-up pair instead of serve_forever's polling: the accept loop sleeps
        # until a client comes or stop() writes a byte, and stops at once.
        self._wake_reader, self._wake_writer = socket.socketpair()
        # The socket is bound and listening already (migd.daemon.listen): serve it.
        super().__init__(listener.getsockname(), _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.server_bind()
        self.set_app(app)

    def serve_until_woken(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while True:
                ready = selector.select()
                if any(key.fileobj is self._wake_reader for key, _ in ready):
                    return
                self._handle_request_noblock()  # accepts and hands over to a thread

    def wake(self) -> None:
        self._wake_writer.send(b"\0")

    def server_close(self) -> None:
        super().server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can hang on a broken
        # resolver; the name is only used in CGI variables nobody reads here.
        self.server_address = self.socket.getsockname()
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.debug("metrics endpoint: too many connections, closing one from %s", client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self._tls_context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(self.client_timeout)  # bounds the handshake too
        try:
            tls_socket = self._tls_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("metrics endpoint: TLS handshake with %s failed: %s", client_address, exc)
            return
        try:
            super().finish_request(tls_socket, client_address)
        finally:
            tls_socket.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that vanished or misbehaved is not worth a traceback on stderr.
        log.debug("metrics endpoint: error serving %s", client_address, exc_info=True)


class MetricsServer:
    """Serves ``registry`` on ``GET /metrics`` at ``address`` (HOST:PORT) from its own threads.

    ``port`` is the bound port once started (bind port 0 to get a free one).
    ``listener``, when given, is the socket already bound to ``address`` (see
    :mod:`migd.daemon.listen`); else ``start`` binds one. ``version``, when given, says
    what the registry holds (see :func:`cached`): answers are then rendered once per
    version, not once per scrape.
    ``client_timeout`` bounds how long one client may take to send its request and
    each later socket operation; ``max_connections`` caps the connections served at once.
    """

    def __init__(
        self,
        address: str,
        tls: TlsSettings | None = None,
        *,
        registry: CollectorRegistry,
        version: Callable[[], object] | None = None,
        listener: socket.socket | None = None,
        client_timeout: float = CLIENT_TIMEOUT_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.host, self._requested_port = split_address(address)
        self.tls = tls
        self.registry = registry
        self.version = version
        self._listener = listener
        self.client_timeout = client_timeout
        self.max_connections = max_connections
        self._server: _ThreadingServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            if self._listener is not None:
                return int(self._listener.getsockname()[1])
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{METRICS_PATH}"

    def start(self) -> None:
        """Binds and starts serving; raises OSError (address in use, …) or ssl.SSLError."""
        if self._server is not None:
            return
        listener, self._listener = self._listener, None
        try:
            context = make_tls_context(self.tls) if self.tls else None
            if listener is None:
                host = f"[{self.host}]" if ":" in self.host else self.host
                listener = listen(f"{host}:{self._requested_port}")
            app = make_wsgi_app(self.registry)
            if self.version is not None:
                app = cached(app, self.version)
            self._server = _ThreadingServer(
                listener,
                only_metrics(app),
                context,
                self.client_timeout,
                self.max_connections,
            )
        except BaseException:
            # A bound socket nobody serves would let scrapes hang instead of failing.
            if listener is not None:
                listener.close()
            raise
        self._thread = threading.Thread(
            target=self._server.serve_until_woken,
            name="migd-metrics",
            daemon=True,
        )
        self._thread.start()
        log.info("serving metrics on %s", self.url)

    def stop(self) -> None:
        """Stops accepting and closes the socket; connections in flight end on their own."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if self._listener is not None:  # bound, never started
            self._listener.close()
            self._listener = None
        if server is None:
            return
        server.wake()
        if thread is not None:
            thread.join()
        server.server_close()

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
