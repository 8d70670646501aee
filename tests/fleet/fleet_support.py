"""A fleet of GPU nodes on one machine, for the Ansible roll-out (ansible/) to manage.

Each node (:class:`Host`) is a real systemd in a PID and mount namespace of its own,
booted on an overlay of the machine's root with a disk of its own
(``Systemd(..., overlay_root=True, disk=..., private_network=False)``): apt installs
the migd package there, and /etc, /var and the enabled units survive a reboot, while
the machine's own dpkg database, /usr and /etc are never written. The nodes share the
machine's network namespace, and every one listens only on its own loopback address
(127.0.0.2, 127.0.0.3, …) on ports chosen free for the run: its sshd (Debian's
openssh-server, with a unit and config of the test's own: host keys made for the run,
root logins by the run's key) and migd's metrics endpoint (set by the inventory).

Each node's migd runs on a simulated GPU node of its own (a drop-in sets MIGD_SIMULATE,
and sshd gives every login the same variable, so `migd assert` over SSH reads the same
GPUs as the daemon). When a node's systemd reboots (Ansible's reboot module runs
``shutdown -r``), its PID 1 ends; a watcher thread notices, applies ``migd sim reboot``
to its simulated node (what a reboot does to the GPUs) and boots the node again on the
same disk, with sshd back on the same address. ``Host.reboots`` counts those reboots.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from daemon_support import clean_environ, sim
from paths import REPO
from reliability_support import mutating_calls
from systemd_harness import Systemd, simulated_node_drop_in

ANSIBLE_DIR = REPO / "ansible"
VENV_BIN = Path(sys.executable).parent
SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
BOOT_TIMEOUT = 60.0  # a boot, or a reboot and the boot after it
# What tells Ansible's reboot module that a node booted again: the start time of the
# node's PID 1. (Its default, the kernel's boot_id, is the machine's in a namespace.)
BOOT_TIME_COMMAND = 'cut -d " " -f 22 /proc/1/stat'

# A node boots what it enabled (multi-user.target, as a server does), its sshd, and
# D-Bus with logind, which `shutdown -r` (Ansible's reboot command) asks to reboot.
TARGET = """\
[Unit]
Description=a GPU node of the fleet test
Wants=multi-user.target systemd-journald-dev-log.socket dbus.socket systemd-logind.service
Wants=migd-test-sshd.service
"""

SSHD_UNIT = """\
[Unit]
Description=sshd of a fleet test node, on {address}:{port} only

[Service]
ExecStartPre={sshd} -t -f {config}
ExecStart={sshd} -D -e -f {config}
RuntimeDirectory=sshd
RuntimeDirectoryMode=0755
Restart=on-failure
"""

SSHD_CONFIG = """\
ListenAddress {address}:{port}
HostKey {host_key}
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# The key files are the test's own, in its build directory.
StrictModes no
PrintMotd no
Subsystem sftp /usr/lib/openssh/sftp-server
# Every login talks to this node's simulated GPUs, as the daemon does.
SetEnv MIGD_SIMULATE={state}
"""


def unavailable() -> str | None:
    """Why the fleet cannot be made here, or None when it can."""
    if not os.path.exists(SSHD):
        return "needs sshd: apt-get install openssh-server"
    for tool in ("ssh", "ansible-playbook"):
        if not shutil.which(tool, path=f"{VENV_BIN}:{os.environ.get('PATH', '')}"):
            return f"needs {tool} (openssh-client; pip install -e '.[fleet]')"
    return None


def free_port(address: str) -> int:
    """A TCP port free on ``address`` now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def keygen(path: Path) -> str:
    """An ed25519 key pair at ``path`` (and ``path``.pub); the public key's text."""
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


@dataclass(frozen=True)
class NodeSpec:
    """A node of the fleet: its inventory name, loopback address and simulated GPUs."""

    name: str
    address: str
    gpus: tuple[str, ...]  # `migd sim init --gpu` values
    passthrough: bool = False


class Host:
    """One node: systemd, sshd and migd's simulated GPUs (see the module docstring)."""

    def __init__(self, spec: NodeSpec, directory: Path, client_key: str) -> None:
        self.spec = spec
        self.name, self.address = spec.name, spec.address
        self.directory = directory
        self.ssh_port = free_port(spec.address)
        self.metrics_port = free_port(spec.address)
        node = directory / "node"
        node.mkdir(parents=True)
        self.state = node / "node.json"
        flags = ["--passthrough"] if spec.passthrough else []
        sim("init", str(self.state), *(a for g in spec.gpus for a in ("--gpu", g)), *flags)
        ssh = directory / "ssh"
        ssh.mkdir()
        self.host_key = keygen(ssh / "ssh_host_ed25519_key")
        (ssh / "authorized_keys").write_text(client_key + "\n")
        config = ssh / "sshd_config"
        config.write_text(
            SSHD_CONFIG.format(
                address=self.address,
                port=self.ssh_port,
                host_key=ssh / "ssh_host_ed25519_key",
                authorized_keys=ssh / "authorized_keys",
                state=self.state,
            )
        )
        units = {
            "migd-test.target": TARGET,
            "migd-test-sshd.service": SSHD_UNIT.format(
                address=self.address, port=self.ssh_port, sshd=SSHD, config=config
            ),
            "migd.service.d/simulate.conf": simulated_node_drop_in(self.state, node),
        }
        self.systemd = Systemd(
            directory, units, overlay_root=True, disk=directory / "disk", private_network=False
        )
        self.reboots = 0
        # False: a reboot leaves MIG modes pending (one that needs a power cycle, say).
        self.reboot_activates = True
        self._lock = threading.Lock()
        self._closing = False
        self._watcher: threading.Thread | None = None
        self.watch_error: BaseException | None = None

    # -- life ---------------------------------------------------------------------------

    def boot(self) -> Host:
        self.systemd.boot(timeout=BOOT_TIMEOUT)
        # A container image's policy-rc.d forbids starting services on install; a node
        # has none (it is removed on the node's disk, not on the machine). Nor does the
        # node rebuild its man page index after each install (seconds per package).
        self.must("rm", "-f", "/usr/sbin/policy-rc.d", "/var/lib/man-db/auto-update")
        self.wait_for_ssh()
        self._watcher = threading.Thread(target=self._watch, name=f"watch {self.name}")
        self._watcher.start()
        return self

    def _watch(self) -> None:
        """Boot the node again each time it reboots, until it is closed."""
        try:
            while not self._closing:
                how = self.systemd.wait_down(timeout=0.5)
                if how is None:
                    continue
                with self._lock:
                    if self._closing or how != "reboot":
                        return
                    if self.reboot_activates:
                        sim("reboot", str(self.state))
                    self.reboots += 1
                    self.systemd.boot(timeout=BOOT_TIMEOUT)
                    self.wait_for_ssh()
        except BaseException as exc:  # reported by close()
            self.watch_error = exc

    def wait_for_ssh(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.address, self.ssh_port), timeout=1) as server,
            ):
                if server.recv(4).startswith(b"SSH-"):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no sshd on {self.address}:{self.ssh_port}")
            time.sleep(0.1)

    def close(self) -> None:
        with self._lock:
            self._closing = True
        if self._watcher is not None:
            self._watcher.join(timeout=BOOT_TIMEOUT)
        self.systemd.close()
        if self.watch_error is not None:
            raise RuntimeError(f"{self.name}: booting after a reboot failed") from self.watch_error

    # -- looking at it ------------------------------------------------------------------

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        with self._lock:  # never while it reboots
            return self.systemd.run(*argv, timeout=timeout)

    def must(self, *argv: str) -> str:
        done = self.run(*argv)
        assert done.returncode == 0, f"{self.name}: {' '.join(argv)}: {done.stderr}"
        return done.stdout

    def mutating_calls(self) -> int:
        return mutating_calls(self.state)

    def sim(self, verb: str, *args: str) -> str:
        """``migd sim VERB STATE ARGS…`` on this node's GPUs (a process starting, say)."""
        return sim(verb, str(self.state), *args)

    def layouts(self) -> dict[int, dict[str, int]]:
        """Per GPU, how many GPU instances of each profile the simulated node holds."""
        return {
            gpu["index"]: _count(gi["profile"] for gi in gpu["gpu_instances"])
            for gpu in self.show()["gpus"]
        }

    def mig_modes(self) -> list[dict[str, int]]:
        return [gpu["mig"] for gpu in self.show()["gpus"]]

    def show(self) -> dict[str, Any]:
        return json.loads(sim("show", str(self.state), "--json"))

    def read(self, path: str) -> str | None:
        """A file on the node's disk, or None."""
        done = self.run("cat", path)
        return done.stdout if done.returncode == 0 else None

    def installed(self) -> bool:
        done = self.run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", "migd")
        return done.stdout.strip() == "ii"


def _count(names: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return counts


@dataclass(frozen=True)
class Run:
    """One ansible-playbook run: exit status, output, and the recap per host."""

    returncode: int
    output: str
    recap: dict[str, dict[str, int]]

    def summary(self) -> dict[str, list[str]]:
        """The MIGD ROLL-OUT SUMMARY table: node -> its cells (split on 2+ spaces)."""
        table = self.output.split("MIGD ROLL-OUT SUMMARY", 1)[-1].splitlines()[1:]
        rows = {}
        for line in table:
            cells = re.split(r"\s{2,}", line.strip())
            if cells[0] in self.recap:
                rows[cells[0]] = cells
        return rows


_RECAP = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$")


def recap_of(output: str) -> dict[str, dict[str, int]]:
    recap: dict[str, dict[str, int]] = {}
    for line in output.split("PLAY RECAP", 1)[-1].splitlines():
        match = _RECAP.match(line.strip())
        if match:
            counts = dict(item.split("=") for item in match[2].split())
            recap[match[1]] = {k: int(v) for k, v in counts.items()}
    return recap


class Fleet:
    """The nodes, the controller's key and known hosts, and the Ansible runs."""

    def __init__(self, directory: Path, specs: Iterable[NodeSpec], package: Path) -> None:
        self.directory = directory
        self.package = package
        self.key = directory / "id_ed25519"
        client = keygen(self.key)
        self.hosts = [Host(spec, directory / spec.name, client) for spec in specs]
        self.known_hosts = directory / "known_hosts"
        self.known_hosts.write_text(
            "".join(f"[{h.address}]:{h.ssh_port} {h.host_key}\n" for h in self.hosts)
        )
        self.runs = 0

    def __getitem__(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def boot(self) -> Fleet:
        for host in self.hosts:
            host.boot()
        return self

    def close(self) -> None:
        errors = []
        for host in self.hosts:
            try:
                host.close()
            except Exception as exc:  # close the others first
                errors.append(exc)
        shutil.rmtree(self.directory, ignore_errors=True)
        if errors:
            raise errors[0]

    def connection_vars(self) -> dict[str, Any]:
        return {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.key),
            "ansible_ssh_common_args": (
                f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes"
                " -o ConnectTimeout=5"
            ),
            "ansible_python_interpreter": "/usr/bin/python3",
            "migd_package": str(self.package),
            "migd_reboot_boot_time_command": BOOT_TIME_COMMAND,
            "migd_reboot_timeout": int(BOOT_TIMEOUT * 2),
        }

    def host_vars(self, host: Host) -> dict[str, Any]:
        return {
            "ansible_host": host.address,
            "ansible_port": host.ssh_port,
            # Each node's metrics endpoint on its own address, not the default 127.0.0.1.
            "migd_settings": {"metrics": {"address": f"{host.address}:{host.metrics_port}"}},
        }

    def playbook(self, inventory: Mapping[str, Any], *args: str, timeout: float = 300) -> Run:
        """Run ansible/migd.yml from ansible/, as the README says, on ``inventory``."""
        self.runs += 1
        path = self.directory / f"inventory-{self.runs}.yml"
        path.write_text(yaml.safe_dump(dict(inventory), sort_keys=False))
        home = self.directory / "ansible-home"
        env = clean_environ(
            {
                "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                "ANSIBLE_HOME": str(home),
                "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
                "ANSIBLE_SSH_CONTROL_PATH_DIR": str(home / "cp"),
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_RETRY_FILES_ENABLED": "0",
            }
        )
        env.pop("ANSIBLE_CONFIG", None)
        done = subprocess.run(
            [str(VENV_BIN / "ansible-playbook"), "-i", str(path), "migd.yml", *args],
            cwd=ANSIBLE_DIR,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        output = done.stdout + done.stderr
        print(f"--- ansible-playbook {' '.join(args)} (exit {done.returncode}) ---\n{output}")
        return Run(done.returncode, output, recap_of(done.stdout))
