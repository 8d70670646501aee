"""Test support for ``migd run``: a daemon process on a simulated node, and a NOTIFY_SOCKET.

The daemon runs as systemd would run it, in its own process (``migd --simulate STATE
run``), and speaks sd_notify to a datagram socket the test owns. The simulated node
is inspected and changed with the ``migd sim`` commands, as an operator would.
Waits are liveness deadlines ("within 5 s"), never timing assertions.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from clean_env import clean_environ as clean_environ  # shared with the benchmarks
from notify_receiver import NotifyMessage, NotifyReceiver

T = TypeVar("T")

MIGD = (sys.executable, "-m", "migd")

BALANCED = {"1g.18gb": 2, "2g.35gb": 1, "3g.71gb": 1}
SMALL = {"1g.18gb": 7}


def config_text(
    selected: str = "balanced",
    *,
    drift: str = "0",
    policy: str = "repair",
    retry_initial: str = "1s",
    retry_max: str = "4s",
    boot_policy: str = "continue",
) -> str:
    """A config with two layouts for H200s, metrics off, timers as the test needs."""
    return f"""\
version: v1
selected-config: {selected}
settings:
  metrics:
    address: null
  boot-policy: {boot_policy}
  drift-check:
    interval: {drift}
    policy: {policy}
  retry:
    initial: {retry_initial}
    max: {retry_max}
mig-configs:
  balanced:
    - devices: all
      mig-enabled: true
      mig-devices:
        "1g.18gb": 2
        "2g.35gb": 1
        "3g.71gb": 1
  small:
    - devices: all
      mig-enabled: true
      mig-devices:
        "1g.18gb": 7
"""


def migd(
    *args: str, timeout: float = 60, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MIGD, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_environ(env),
        stdin=subprocess.DEVNULL,
        check=False,
    )


def sim(*args: str) -> str:
    proc = migd("sim", *args)
    assert proc.returncode == 0, f"migd sim {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def layouts(state: Path) -> dict[int, dict[str, int]]:
    """Per GPU, the GPU-instance profiles the simulated node holds and how many of each."""
    doc = json.loads(sim("show", str(state), "--json"))
    result: dict[int, dict[str, int]] = {}
    for gpu in doc["gpus"]:
        counts: dict[str, int] = {}
        for gi in gpu["gpu_instances"]:
            counts[gi["profile"]] = counts.get(gi["profile"], 0) + 1
        result[gpu["index"]] = counts
    return result


def all_hold(state: Path, layout: Mapping[str, int]) -> bool:
    return all(held == layout for held in layouts(state).values())


def free_port() -> int:
    """A loopback TCP port nobody listens on just now (for a daemon's metrics endpoint)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    check: Callable[[], T | None], what: str, timeout: float = 5.0, interval: float = 0.1
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(interval)


DESTROY_ONE_INSTANCE = """\
import sys
from migd import sim
sim.activate(sys.argv[1])
from migd.gpu.nvml import NvmlAdapter
index = int(sys.argv[2])
with NvmlAdapter.open() as nvml:
    gi = nvml.gpu(index).instances[0]
    for ci in gi.compute_instances:
        nvml.destroy_compute_instance(index, gi.id, ci.id)
    nvml.destroy_gpu_instance(index, gi.id)
print(gi.id)
"""


def destroy_one_instance(state: Path, gpu: int) -> int:
    """Destroy a GPU instance behind the daemon's back (another process, through NVML)."""
    proc = subprocess.run(
        [sys.executable, "-c", DESTROY_ONE_INSTANCE, str(state), str(gpu)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


# ---------------------------------------------------------------------------
# sd_notify, seen from systemd's side
# ---------------------------------------------------------------------------


class NotifyListener(NotifyReceiver):
    """The receiving end of sd_notify (``notify_receiver.NotifyReceiver``) with the tests'
    liveness deadline: a wait fails after 5 s unless the test gives its own."""

    def __init__(self) -> None:
        super().__init__("migd-test", timeout=5.0)


# ---------------------------------------------------------------------------
# The daemon process
# ---------------------------------------------------------------------------


class Daemon:
    """``migd --simulate STATE run`` in a directory of the test's own."""

    def __init__(self, directory: Path, config: str, *, gpus: str = "H200x2") -> None:
        self.directory = directory
        self.state = directory / "node.json"
        self.config = directory / "config.yaml"
        self.runtime = directory / "run"
        self.log_path = directory / "migd.log"
        self.config.write_text(config)
        sim("init", str(self.state), "--gpu", gpus)
        self.notify = NotifyListener()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *args: str, env: Mapping[str, str] | None = None) -> Daemon:
        environ = clean_environ({"NOTIFY_SOCKET": self.notify.address, **(env or {})})
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    *MIGD,
                    "--simulate",
                    str(self.state),
                    "run",
                    "-f",
                    str(self.config),
                    "--runtime-dir",
                    str(self.runtime),
                    *args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=environ,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def ready(self, timeout: float = 30.0) -> NotifyMessage:
        """Wait for the first READY=1 (a fresh daemon applies its layout first)."""
        return self.notify.wait(lambda m: "READY=1" in m, "READY=1", timeout=timeout)[1]

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def state_doc(self) -> dict[str, Any]:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            return json.loads((self.runtime / "state.json").read_text())
        return {}

    def reload(self, *args: str) -> subprocess.CompletedProcess[str]:
        return migd("reload", "--runtime-dir", str(self.runtime), *args)

    def status(self, *args: str) -> subprocess.CompletedProcess[str]:
        return migd("status", "--runtime-dir", str(self.runtime), *args)

    def stop(self) -> None:
        """End the process however it stands (test teardown)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.notify.close()


@contextlib.contextmanager
def running(
    directory: Path,
    config: str,
    *args: str,
    gpus: str = "H200x2",
    env: Mapping[str, str] | None = None,
    faults: Sequence[Sequence[str]] = (),
    prepare: Callable[[Daemon], None] | None = None,
) -> Iterator[Daemon]:
    """A started daemon; before it starts, ``faults`` are set (each the arguments of one
    ``migd sim fault``) and ``prepare`` is called. Its log is printed when the test
    fails, and it is stopped at the end."""
    directory.mkdir(parents=True, exist_ok=True)
    daemon = Daemon(directory, config, gpus=gpus)
    try:
        for fault in faults:
            sim("fault", str(daemon.state), *fault)
        if prepare is not None:
            prepare(daemon)
        yield daemon.start(*args, env=env)
    except BaseException:
        if daemon.log_path.exists():
            print(f"--- migd log ({daemon.log_path}) ---\n{daemon.log()}")
        print("--- notifications ---", *daemon.notify.snapshot(), sep="\n")
        raise
    finally:
        daemon.stop()


def write_atomically(path: Path, text: str) -> None:
    """An editor's save: a temporary file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


def sequence_of(messages: Sequence[NotifyMessage], *assignments: str) -> bool:
    """Whether the messages contain the assignments in this order (others may come between)."""
    wanted = list(assignments)
    for message in messages:
        if wanted and wanted[0] in message:
            wanted.pop(0)
    return not wanted
