"""A real Prometheus server scrapes `migd run` on a simulated 8×H200 node.

What an operator would see in Prometheus: the daemon ready, every GPU in sync with the
demo layout, the instances per profile, the startup reconcile; then, after a config edit
that fails on one GPU, the failure counted, that GPU out of sync, and the series of the
destroyed instances gone; and scrapes answered all along while a slowed apply runs.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_support import free_port
from paths import REPO

PROMETHEUS = Path("/usr/bin/prometheus")
DEADLINE = 60.0  # liveness only: how long to wait for something that must happen
SCRAPE_DEADLINE = 2.0  # a scrape during an apply must be answered within this

pytestmark = pytest.mark.skipif(
    not PROMETHEUS.exists(),
    reason="/usr/bin/prometheus not installed (Debian package 'prometheus'; .ci/run installs it)",
)

GPUS = 8
ALL_1G = """
  all-1g:
    - devices: all
      mig-enabled: true
      mig-devices:
        "1g.18gb": 7
"""
CREATE = "nvmlDeviceCreateGpuInstanceWithPlacement"


def migd(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "migd", *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=REPO,
    )
    assert done.returncode == 0, f"migd {' '.join(args)}: {done.stdout}{done.stderr}"
    return done


@contextlib.contextmanager
def background(argv: list[str], log: Path, **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A process in its own session, stopped with SIGTERM (then SIGKILL) at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)


def wait_for(what: str, probe: Callable[[], Any], logs: tuple[Path, ...] = ()) -> Any:
    """Polls ``probe`` until it returns something truthy; fails after DEADLINE."""
    deadline = time.monotonic() + DEADLINE
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.25)
    tails = "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-3000:]}" for p in logs)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})\n{tails}")


class PrometheusApi:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.base + path, timeout=10) as response:
            return bytes(response.read())

    def query(self, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Instant query → {sorted labels without __name__/job/instance: value}."""
        body = json.loads(self.get("/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
        assert body["status"] == "success", body
        return {
            tuple(
                sorted(
                    (k, v)
                    for k, v in item["metric"].items()
                    if k not in ("__name__", "job", "instance")
                )
            ): float(item["value"][1])
            for item in body["data"]["result"]
        }

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        assert len(result) <= 1, result
        return next(iter(result.values()), None)


def scrape_directly(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=SCRAPE_DEADLINE)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        conn.close()


def test_prometheus_sees_the_node_and_its_changes(tmp_path: Path) -> None:
    state = tmp_path / "node.json"
    config = tmp_path / "config.yaml"
    config.write_text((REPO / "configs" / "demo.yaml").read_text())
    migd("sim", "init", str(state), "--gpu", f"H200x{GPUS}")

    metrics_port, prometheus_port = free_port(), free_port()
    prometheus_config = tmp_path / "prometheus.yml"
    prometheus_config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: migd\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    daemon_log, prometheus_log = tmp_path / "migd.log", tmp_path / "prometheus.log"
    logs = (daemon_log, prometheus_log)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)

    with (
        background(
            [
                sys.executable,
                "-m",
                "migd",
                "--simulate",
                str(state),
                "run",
                "-f",
                str(config),
                "--runtime-dir",
                str(tmp_path / "run"),
                "--metrics-address",
                f"127.0.0.1:{metrics_port}",
            ],
            daemon_log,
            cwd=REPO,
            env=env,
        ) as daemon,
        background(
            [
                str(PROMETHEUS),
                f"--config.file={prometheus_config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
                "--log.level=warn",
            ],
            prometheus_log,
            cwd=tmp_path,
        ),
    ):
        api = PrometheusApi(prometheus_port)
        wait_for("Prometheus to be ready", lambda: api.get("/-/ready"), logs)

        # -- the demo layout applied at startup --------------------------------------
        wait_for("migd_ready 1 in Prometheus", lambda: api.scalar("migd_ready") == 1, logs)
        in_sync = api.query("migd_gpu_config_in_sync")
        assert in_sync == {(("gpu", str(i)),): 1.0 for i in range(GPUS)}
        devices = api.query("migd_mig_devices")
        assert devices == {
            (("gpu", str(i)), ("profile", profile)): count
            for i in range(GPUS)
            for profile, count in (("1g.18gb", 2.0), ("2g.35gb", 1.0), ("3g.71gb", 1.0))
        }
        assert api.scalar("count(migd_mig_device_info)") == 4 * GPUS
        assert api.scalar('sum(migd_reconciles_total{trigger="startup"})') == 1
        assert api.scalar('migd_reconciles_total{trigger="startup",result="applied"}') == 1
        assert api.scalar("migd_reconcile_duration_seconds_count") == 1
        assert api.scalar("migd_config_last_reload_successful") == 1
        assert api.scalar('count(migd_config_info{selected="all-balanced"})') == 1
        assert api.scalar('count(migd_gpu_info{model=~".*H200.*"})') == GPUS

        # -- a change that fails on GPU 1, applied slowly --------------------------------
        migd("sim", "fault", str(state), "--call", CREATE, "--code", "UNKNOWN", "--gpu", "1")
        migd("sim", "fault", str(state), "--call", CREATE, "--latency", "300")

        phases: list[str] = []
        probe_errors: list[BaseException] = []
        stop_probing = threading.Event()

        def probe() -> None:
            # Scrapes the daemon directly throughout the apply: each must be answered
            # within SCRAPE_DEADLINE (the client's timeout), whatever the loop is doing.
            while not stop_probing.is_set():
                try:
                    text = scrape_directly(metrics_port)
                except BaseException as exc:
                    probe_errors.append(exc)
                    return
                phases.extend(
                    line.split('"')[1]
                    for line in text.splitlines()
                    if line.startswith("migd_phase{") and line.endswith(" 1.0")
                )
                time.sleep(0.05)

        prober = threading.Thread(target=probe, daemon=True)
        changed_at = time.monotonic()
        prober.start()
        try:
            text = config.read_text().replace(
                "selected-config: all-balanced", "selected-config: all-1g"
            )
            replacement = tmp_path / "config.yaml.new"
            replacement.write_text(text + ALL_1G)
            replacement.replace(config)  # an editor's atomic save; the watcher picks it up

            wait_for(
                "a failed reconcile in Prometheus",
                lambda: (api.scalar('sum(migd_reconciles_total{result="failed"})') or 0) >= 1,
                logs,
            )
            wait_for(
                "the daemon to settle after the apply",
                lambda: "applying" in phases and phases[-1] == "degraded",
                logs,
            )
        finally:
            stop_probing.set()
            prober.join(timeout=DEADLINE)
        assert not probe_errors, f"a scrape was not answered during the apply: {probe_errors}"
        assert "applying" in phases  # the probes did run while the apply was in progress

        wait_for(
            "GPU 1 out of sync in Prometheus",
            lambda: api.scalar('migd_gpu_config_in_sync{gpu="1"}') == 0,
            logs,
        )
        in_sync = api.query("migd_gpu_config_in_sync")
        assert in_sync == {(("gpu", str(i)),): 0.0 if i == 1 else 1.0 for i in range(GPUS)}
        assert api.scalar("migd_ready") == 0
        assert (api.scalar('migd_apply_errors_total{gpu="1",reason="UNKNOWN"}') or 0) >= 1
        assert api.scalar('migd_mig_devices_desired{gpu="1",profile="1g.18gb"}') == 7

        # The other GPUs hold seven 1g.18gb now: the series of their destroyed 2g.35gb
        # and 3g.71gb instances are gone, not left at their last value.
        def gpu0_settled() -> bool:
            return api.query('migd_mig_devices{gpu="0"}') == {
                (("gpu", "0"), ("profile", "1g.18gb")): 7.0
            }

        wait_for("GPU 0's old instances to vanish from Prometheus", gpu0_settled, logs)
        assert api.scalar('count(migd_mig_device_info{gpu="0"})') == 7
        assert (
            api.scalar('count(migd_mig_device_info{profile=~"2g.35gb|3g.71gb",gpu!="1"})') is None
        )
        # Prometheus missed no scrape since the change either.
        window = int(time.monotonic() - changed_at) + 1
        assert api.scalar(f'min_over_time(up{{job="migd"}}[{window}s])') == 1

        assert daemon.poll() is None, daemon_log.read_text()
