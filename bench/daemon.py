"""``migd run`` as systemd runs it, seen from systemd's side: a process and a NOTIFY_SOCKET.

The daemon runs in its own process against a simulated node and speaks sd_notify to
a datagram socket the benchmark owns, which stamps every message with
``time.monotonic()`` on arrival. ``RELOADING=1`` also carries the daemon's own
``MONOTONIC_USEC=`` (CLOCK_MONOTONIC, the clock of ``time.monotonic()`` on Linux), so
the moment a reload was taken up is known exactly, not just when its message came.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping

from clean_env import clean_environ as _clean_environ  # shared with the tests
from notify_receiver import NotifyMessage, NotifyReceiver

from bench.layouts import Layout, counts

MIGD = (sys.executable, "-m", "migd")


def clean_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every process the benchmarks time: the tests' clean one, and
    Python free to keep compiled bytecode, as an installed migd has it (with
    PYTHONDONTWRITEBYTECODE every start would compile every module it loads)."""
    env = _clean_environ(extra)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def free_port() -> int:
    """A TCP port nobody listens on now (other benchmarks and tests share the host)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def daemon_config(
    selected: str,
    configs: Mapping[str, Layout],
    *,
    metrics: str | None = None,
    drift: str = "0",
) -> str:
    """A config for H200s with the named layouts on every GPU and the daemon's settings."""
    address = f'"{metrics}"' if metrics else "null"
    lines = [
        "version: v1",
        f"selected-config: {selected}",
        "settings:",
        f"  metrics: {{address: {address}}}",
        f"  drift-check: {{interval: {drift}, policy: repair}}",
        "mig-configs:",
    ]
    for name, layout in configs.items():
        devices = ", ".join(f'"{n}": {c}' for n, c in counts(layout).items())
        lines += [
            f"  {name}:",
            "    - devices: all",
            "      mig-enabled: true",
            f"      mig-devices: {{{devices}}}",
        ]
    return "\n".join(lines) + "\n"


def write_atomically(path: str, text: str) -> float:
    """An editor's save: a temporary file renamed over the old one.

    Returns ``time.monotonic()`` taken just before the rename, the moment the new
    content becomes visible (anything that notices it notices it after this).
    """
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.swp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    saved = time.monotonic()
    os.replace(tmp, path)
    return saved


class NotifyListener(NotifyReceiver):
    """The receiving end of sd_notify (``notify_receiver.NotifyReceiver``) with the
    benchmarks' deadline: a wait gives up after 60 s unless the caller gives its own."""

    def __init__(self) -> None:
        super().__init__("migd-bench", timeout=60.0)


class DaemonProcess:
    """``migd --simulate STATE run -f CONFIG --runtime-dir DIR`` with its own NOTIFY_SOCKET."""

    def __init__(self, directory: str, state: str, config: str) -> None:
        self.directory = directory
        self.state = state
        self.config = config
        self.runtime = os.path.join(directory, "run")
        self.log_path = os.path.join(directory, "migd.log")
        self.notify = NotifyListener()
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> DaemonProcess:
        argv = [*MIGD, "--simulate", self.state, "run", "-f", self.config]
        argv += ["--runtime-dir", self.runtime]
        env = clean_environ({"NOTIFY_SOCKET": self.notify.address})
        with open(self.log_path, "ab") as log:
            self.started_at = time.monotonic()
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def ready(self, timeout: float = 120) -> NotifyMessage:
        """The first READY=1 (a daemon reports ready once the GPUs hold their layout)."""
        return self.notify.wait(lambda m: m.has("READY=1"), "READY=1", timeout=timeout)[1]

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL if it does not go (only this process, by its pid)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.notify.close()


@contextlib.contextmanager
def running(directory: str, state: str, config: str) -> Iterator[DaemonProcess]:
    """A started daemon, stopped at the end whatever happens; its log is shown on failure."""
    daemon = DaemonProcess(directory, state, config)
    try:
        yield daemon.start()
    except BaseException:
        print(f"--- migd log ({daemon.log_path}) ---\n{daemon.log()[-4000:]}", file=sys.stderr)
        raise
    finally:
        daemon.stop()


def run_migd(*args: str, timeout: float = 120) -> tuple[int, float]:
    """Run one migd CLI command; its exit status and wall time (process start to exit)."""
    started = time.monotonic()
    proc = subprocess.run(
        [*MIGD, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=clean_environ(),
        timeout=timeout,
        check=False,
    )
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"migd {' '.join(args)} exited {proc.returncode}: {proc.stderr!r}")
    return proc.returncode, elapsed
