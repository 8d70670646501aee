"""Scrape: ``GET /metrics`` latency on an 8×7-instance node, idle and during an apply.

The daemon runs on eight simulated H200s each holding seven 1g.18gb instances (56
MIG devices: the largest inventory an 8-GPU H200 node can have). Each scrape opens a
new connection, sends ``GET /metrics`` and reads the whole answer; its latency runs
from connect to the last byte.

- idle: the daemon has nothing to do;
- during an apply: the config is switched between all-1g and balanced with the
  latencies of ``bench.apply_time`` set in the simulator, so each apply lasts long
  enough to scrape through it; only scrapes that begin after the daemon's
  ``RELOADING=1`` and end before its ``READY=1`` count.

Baseline: Python's plain ``http.server`` in its own process answering ``GET`` with
a static body of the same size as migd's answer, scraped the same way in the same
run. The during-apply figure is also given against idle.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from typing import Any

from bench.apply_time import LATENCIES_MS
from bench.daemon import (
    NotifyListener,
    clean_environ,
    daemon_config,
    free_port,
    running,
    write_atomically,
)
from bench.layouts import ALL_1G, BALANCED, text
from bench.simnode import clear_faults, init_node, set_latencies
from bench.stats import ratio, summary
from bench.tools import migd_apply

PLAIN_SERVER = r"""
import socket, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, size, address = int(sys.argv[1]), int(sys.argv[2]), "\0" + sys.argv[3][1:]
body = (b"# a static body of the size of a migd scrape\n" * (size // 46 + 1))[:size]

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", address)
server.serve_forever()
"""


def scrape(port: int) -> tuple[float, int]:
    """One scrape on a new connection: (seconds from connect to last byte, body bytes)."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET /metrics on :{port} answered {response.status}")
    finally:
        conn.close()
    return time.monotonic() - started, len(body)


def _plain_server(samples: int, size: int) -> list[float]:
    port = free_port()
    listener = NotifyListener()
    proc = subprocess.Popen(
        [sys.executable, "-c", PLAIN_SERVER, str(port), str(size), listener.address],
        stdin=subprocess.DEVNULL,
        env=clean_environ(),
    )
    try:
        listener.wait(lambda m: m.has("READY=1"), "http.server READY=1", timeout=30)
        scrape(port)  # warm-up, as for migd
        return [scrape(port)[0] for _ in range(samples)]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        listener.close()


def measure(
    workdir: str, *, samples: int, gpus: int = 8, latency_scale: float = 1.0, max_applies: int = 20
) -> dict[str, Any]:
    directory = os.path.join(workdir, "scrape")
    os.makedirs(directory, exist_ok=True)
    state = os.path.join(directory, "node.json")
    config = os.path.join(directory, "config.yaml")
    port = free_port()
    layouts = {"all-1g": ALL_1G, "balanced": BALANCED}
    init_node(state, gpus)
    migd_apply(state, dict.fromkeys(range(gpus), ALL_1G))
    write_atomically(config, daemon_config("all-1g", layouts, metrics=f"127.0.0.1:{port}"))
    idle: list[float] = []
    during: list[float] = []
    applies = 0
    with running(directory, state, config) as daemon:
        daemon.ready()
        _, size = scrape(port)  # warm-up; also the size the baseline serves
        idle = [scrape(port)[0] for _ in range(samples)]
        set_latencies(state, {s: ms * latency_scale for s, ms in LATENCIES_MS.items()})
        notify = daemon.notify
        names = list(layouts)
        current = 0
        while len(during) < samples and applies < max_applies:
            current = 1 - current
            applies += 1
            mark = notify.count()
            write_atomically(
                config, daemon_config(names[current], layouts, metrics=f"127.0.0.1:{port}")
            )
            pos, _ = notify.wait(lambda m: m.has("RELOADING=1"), "RELOADING=1", after=mark)
            while len(during) < samples:
                seconds, _ = scrape(port)
                ended = time.monotonic()
                ready = [m for m in notify.since(pos) if m.has("READY=1")]
                if ready and ready[0].at <= ended:
                    break  # the apply may have ended before this scrape did: not counted
                during.append(seconds)
                if ready:
                    break
            notify.wait(lambda m: m.has("READY=1"), "READY=1", after=pos)
        clear_faults(state)
    plain = _plain_server(samples, size)
    idle_s, during_s, plain_s = summary(idle), summary(during), summary(plain)
    return {
        "gpus": gpus,
        "instances": gpus * len(ALL_1G),
        "layouts": {k: text(v) for k, v in layouts.items()},
        "body_bytes": size,
        "applies": applies,
        "latency_scale": latency_scale,
        "idle": idle_s,
        "during_apply": during_s,
        "plain_http_server": plain_s,
        "ratios": {
            "idle_vs_plain_p50": ratio(idle_s["p50"], plain_s["p50"]),
            "idle_vs_plain_p99": ratio(idle_s["p99"], plain_s["p99"]),
            "during_vs_idle_p50": ratio(during_s["p50"], idle_s["p50"]),
            "during_vs_idle_p99": ratio(during_s["p99"], idle_s["p99"]),
            "during_vs_plain_p50": ratio(during_s["p50"], plain_s["p50"]),
        },
    }
