"""A real systemd for tests: systemd 252 as PID 1 of a new PID and mount namespace.

Booting systemd is dangerous on a shared machine: its boot runs
``systemd-tmpfiles --boot`` (Debian's tmp.conf empties /tmp), starts every unit the
machine has enabled, and writes under /etc, /var and /run. So before systemd starts,
the boot script gives the namespace private scratch filesystems:

- a private copy of /etc (``/etc/migd`` that ``ConfigurationDirectory=`` creates, the
  machine-id, anything a unit writes there stays in the namespace);
- tmpfs on /tmp, /var/tmp, /run, /var/lib, /var/log, /var/cache and
  /etc/systemd/system (where the test's own units are then written);
- tmpfs on every ``*.wants`` directory of /lib/systemd/system, so nothing is pulled
  in that would act on the machine (sysctl, udev triggers, module loading);

and it boots a target of the test's own (``migd-test.target``, which always pulls in
journald first, so PID 1 and every unit log to a journal inside the namespace). PID 1's
console is /dev/null, and journald does not read the machine's kernel log. The
namespace also has its own UTS, IPC and network namespaces, so hostname and loopback
setup touch nothing outside. Paths the test needs that would be hidden by those mounts (a
checkout below /tmp, say) are bound back in from a view of the old root, and into the
namespace of every service with its own private /tmp (``BindPaths=`` in a drop-in).

With ``overlay_root=True`` the namespace gets instead a root of its own: an overlay
whose lower layer is the machine's root filesystem and whose upper layer is a tmpfs
inside the namespace, made the namespace's root with pivot_root. Everything under it is
writable, and every write lands in the upper layer: ``dpkg -i``, ``apt-get remove`` and
``systemctl enable`` run against the machine's own dpkg database, /usr and /etc as
they are, yet change none of them. /var/lib and /var/cache then stay as they are (dpkg
and apt need them); the other scratch directories are fresh tmpfs as above. Paths in
``keep`` (and the test's directory) are bound in from the machine, so files written
there are shared with the test: that is how a test hands a .deb in or reads a state
file out.

With ``disk=DIR`` as well, the namespace is a machine that keeps its disk: the upper
layer lives in DIR on the machine instead of a tmpfs, so packages installed, /etc and
/var survive when it boots again (``boot()`` once more after it went down);
/etc/systemd/system is part of that disk too (an overlay-opaque directory, so the
machine's own enabled units never show through), and the test's units are copied into it
at every boot. Its systemd runs with ``container=`` set, as under a container manager,
so that a clean shutdown or reboot only ends the namespace: systemd-shutdown otherwise
deactivates swap and detaches loop and DM devices, all of which belong to the machine.
A ``reboot`` inside ends the namespace's PID 1 with SIGHUP (the kernel's answer to
reboot(2) in a PID namespace), which :meth:`Systemd.wait_down` reports as ``"reboot"``.

``private_network=False`` keeps the machine's network namespace instead of a new one,
for services that must be reached from outside the namespace (an sshd bound to its own
loopback address, 127.0.0.N): everything that listens in it must then bind an address
and port of the test's own.

The harness talks to that systemd with ``nsenter -t PID -m -p systemctl …`` and ends
it with SIGKILL to its PID, which ends everything in the namespace.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from paths import REPO

from migd.node.unit import needs_home

SYSTEMD = "/lib/systemd/systemd"
MIGD = Path(sys.executable).parent / "migd"  # the virtualenv's migd script
TARGET = "migd-test.target"
# Mounted over before systemd starts (see the module docstring).
HIDDEN = ("/tmp", "/var/tmp", "/run", "/var/lib", "/var/log", "/var/cache", "/etc/systemd/system")
# The same on an overlay root, where dpkg and apt need /var/lib and /var/cache as they are.
HIDDEN_ON_OVERLAY = tuple(d for d in HIDDEN if d not in ("/var/lib", "/var/cache"))
# Where the boot script keeps its view of the old root; must exist and not be needed.
HOLD = "/mnt"
# Units masked in the namespace: they would act on the machine's kernel or devices.
MASKED = ("systemd-remount-fs.service", "systemd-journald-audit.socket")


def unavailable() -> str | None:
    """Why a real systemd cannot be booted here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (a PID and mount namespace, and systemd as its PID 1)"
    for tool in (SYSTEMD, shutil.which("unshare"), shutil.which("nsenter")):
        if not tool or not os.path.exists(tool):
            return "needs systemd, unshare and nsenter (Debian packages systemd, util-linux)"
    if not os.path.isdir(HOLD):
        return f"needs the directory {HOLD}"
    probe = subprocess.run(
        ["unshare", "--fork", "--pid", "--mount", "--mount-proc", "--propagation", "private",
         "--uts", "--ipc", "--net", "true"],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        return f"namespaces are not permitted here: {probe.stderr.strip()}"
    return None


def overlay_unavailable() -> str | None:
    """Why a namespace cannot boot on an overlay root here, or None when it can."""
    reason = unavailable()
    if reason is not None:
        return reason
    if not shutil.which("pivot_root"):
        return "needs pivot_root (Debian package util-linux)"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-ec",
         f"mount -t tmpfs migd-probe {HOLD}; cd {HOLD}; mkdir l u w r; "
         "mount -t overlay migd-probe -o lowerdir=l,upperdir=u,workdir=w r"],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        return f"overlayfs cannot be mounted here: {probe.stderr.strip()}"
    return None


def requires_systemd(*, overlay_root: bool = False) -> list[pytest.MarkDecorator]:
    """The marks of a test module that boots a real systemd (on an overlay root, with
    ``overlay_root``): skipped, with the reason, where that cannot be done here."""
    reason = overlay_unavailable() if overlay_root else unavailable()
    return [
        pytest.mark.systemd,
        pytest.mark.skipif(reason is not None, reason=f"real systemd: {reason}"),
    ]


def _below(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


PRIVATE_TMP = re.compile(r"^PrivateTmp=(?:yes|true|on|1)\s*$", re.MULTILINE)


def below_private_tmp(paths: Iterable[str]) -> list[str]:
    """Those of ``paths`` that a unit's PrivateTmp= hides, without the ones inside another."""
    hidden = {p for p in map(os.path.realpath, paths) if _below(p, "/tmp") or _below(p, "/var/tmp")}
    return sorted(p for p in hidden if not any(p != q and _below(p, q) for q in hidden))


def simulated_node_drop_in(state: Path, writable: Path) -> str:
    """A drop-in for a packaged migd.service that points it at the simulated node in
    ``state``, as ``migd install-unit --simulate`` does: ``writable`` (the node's
    directory) may be written, and is seen through ProtectHome= and PrivateTmp=."""
    lines = ["[Service]", f"Environment=MIGD_SIMULATE={state}", f"ReadWritePaths={writable}"]
    if needs_home([str(state)]):
        lines.append("ProtectHome=read-only")
    hidden = below_private_tmp([str(writable)])
    if hidden:
        lines.append(f"BindPaths={' '.join(hidden)}")
    return "\n".join(lines) + "\n"


def boot_script(
    units: Path,
    keep: Iterable[str],
    *,
    overlay_root: bool = False,
    lower: str = "/",
    disk: Path | None = None,
) -> str:
    """The script that prepares the namespace and execs systemd (run by unshare)."""
    keep = sorted({os.path.realpath(p) for p in keep})
    lines = [
        "#!/bin/sh",
        "set -eu",
        "# A view of the old root, to copy /etc from and to bind needed paths back.",
        f"mount -t tmpfs -o mode=0755 migd-test {HOLD}",
        f"mkdir {HOLD}/old",
        f"mount --rbind / {HOLD}/old",
    ]
    if overlay_root:
        root, hidden = f"{HOLD}/root", HIDDEN_ON_OVERLAY
        if disk is None:
            upper, work = f"{HOLD}/upper", f"{HOLD}/work"
            lines += [
                "# The new root: the machine's root filesystem (or `lower`) under a tmpfs",
                "# that takes every write.",
                f"mkdir {upper} {work} {root}",
            ]
        else:
            hidden = tuple(d for d in hidden if d != "/etc/systemd/system")
            where = f"{HOLD}/old{os.path.realpath(disk)}"
            upper, work = f"{where}/upper", f"{where}/work"
            lines += [
                "# The new root: the machine's root filesystem (or `lower`) under the",
                "# namespace's own disk, which takes every write and outlives this boot.",
                f"mkdir {root}",
            ]
        lines += [
            "mount -t overlay migd-test-root -o "
            + shlex.quote(
                f"lowerdir={HOLD}/old{os.path.realpath(lower).rstrip('/')},"
                f"upperdir={upper},workdir={work}"
            )
            + f" {root}",
            f"mount -t proc proc {root}/proc",
            f"mount --rbind /sys {root}/sys",
            f"mount --rbind /dev {root}/dev",
        ]
    else:
        root, hidden = "", HIDDEN
        lines += [
            f"mkdir {HOLD}/etc",
            f"cp -a /etc/. {HOLD}/etc/",
            f"mount --bind {HOLD}/etc /etc",
        ]
    lines += [f"mount -t tmpfs tmpfs {root}{d}" for d in hidden]
    lines.append(f'for d in {root}/lib/systemd/system/*.wants; do mount -t tmpfs tmpfs "$d"; done')
    for path in keep:
        if overlay_root or any(_below(path, d) for d in hidden):
            q = shlex.quote(root + path)
            lines.append(f"mkdir -p {q} && mount --bind {shlex.quote(HOLD + '/old' + path)} {q}")
    lines += [
        f"cp -a --remove-destination {shlex.quote(HOLD + '/old' + str(units))}/."
        f" {root}/etc/systemd/system/",
        "# PID 1 writes nothing on the machine's console (not a tty: its output is dropped",
        "# until journald runs), and journald does not read the machine's kernel log.",
        f"mount --bind /dev/null {root}/dev/console",
        f"mkdir -p {root}/etc/systemd/journald.conf.d",
        f"printf '[Journal]\\nReadKMsg=no\\n' > {root}/etc/systemd/journald.conf.d/migd-test.conf",
        "# Never boot on the machine's own scratch directories.",
        *(f"mountpoint -q {root}{d}" for d in hidden),
    ]
    if overlay_root:
        lines += [
            "# The overlay becomes / (the old root, with the tmpfs holding the upper layer,",
            "# goes below it and is then detached), so nsenter -m lands in it too.",
            f"cd {root}",
            f"pivot_root . .{HOLD}",
            f"umount -l {HOLD}",
            "cd /",
            f"mountpoint -q / && ! mountpoint -q {HOLD}",
        ]
    lines += [
        "# PID 1 raises kernel settings as it boots (net.unix.max_dgram_qlen, fs.file-max,",
        "# fs.nr_open): the machine's own, or its network namespace's when the namespace",
        "# shares it. /proc/sys is read-only here, as systemd-nspawn gives a container.",
        "mount --bind /proc/sys /proc/sys",
        "mount -o remount,bind,ro /proc/sys",
    ]
    # A namespace that keeps its disk may shut itself down (a reboot): as in a container,
    # its systemd-shutdown then leaves the machine's swap, loop and DM devices alone.
    container = "env container=migd-test " if disk is not None else ""
    lines.append(
        f"exec {container}{SYSTEMD} --system --unit={TARGET} --log-target=journal --show-status=no"
    )
    return "\n".join(lines) + "\n"


class Systemd:
    """One booted systemd; ``units`` (file name → text) are installed before it boots.

    ``keep``: paths of the machine the namespace must see as they are (and share with
    the test). ``overlay_root``: boot on a writable overlay of the machine's root
    (see the module docstring), for tests that install packages or otherwise write
    where a test must never write on the machine itself; ``lower``: the root
    filesystem under that overlay, the machine's by default, or a directory holding
    another system (one made by debootstrap, say) with systemd installed in it. ``disk``:
    a directory that holds the overlay's upper layer across boots (see the module
    docstring; it needs ``overlay_root``). ``private_network``: a network namespace of its
    own (the default), or the machine's.
    """

    def __init__(
        self,
        directory: Path,
        units: Mapping[str, str],
        keep: Iterable[str] = (),
        *,
        overlay_root: bool = False,
        lower: str = "/",
        disk: Path | None = None,
        private_network: bool = True,
    ) -> None:
        if lower != "/" and not overlay_root:
            raise ValueError("lower= is the root under an overlay: it needs overlay_root=True")
        if disk is not None and not overlay_root:
            raise ValueError("disk= holds an overlay's upper layer: it needs overlay_root=True")
        self.directory = directory
        self.overlay_root = overlay_root
        self.private_network = private_network
        if disk is not None:
            _new_disk(disk)
        self.units = directory / "units"
        self.units.mkdir(parents=True)
        target = units.get(TARGET) or self._target(units)
        for name, text in {**units, TARGET: target}.items():
            path = self.units / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for name, text in units.items():
            self._bind_checkout(name, text, [*keep, str(directory)])
        for name in MASKED:
            (self.units / name).symlink_to("/dev/null")
        # journald first, whatever the target says: PID 1 logs to the journal from then on.
        journal = self.units / f"{TARGET}.d" / "journal.conf"
        journal.parent.mkdir(exist_ok=True)
        journal.write_text("[Unit]\nWants=systemd-journald.service\n")
        self.script = directory / "boot.sh"
        self.script.write_text(
            boot_script(
                self.units,
                [*keep, str(directory)],
                overlay_root=overlay_root,
                lower=lower,
                disk=disk,
            )
        )
        self.console = directory / "console.log"
        self._unshare: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    def _bind_checkout(self, name: str, text: str, paths: Iterable[str]) -> None:
        """A service with its own private /tmp would not see a checkout (or a virtualenv)
        below /tmp or /var/tmp: bind those paths into its namespace, so the service runs
        the same wherever the checkout sits."""
        hidden = below_private_tmp(paths)
        if hidden and "/" not in name and name.endswith(".service") and PRIVATE_TMP.search(text):
            drop_in = self.units / f"{name}.d" / "zz-checkout.conf"
            drop_in.parent.mkdir(exist_ok=True)
            drop_in.write_text(f"[Service]\nBindPaths={' '.join(hidden)}\n")

    @staticmethod
    def _target(units: Mapping[str, str]) -> str:
        wanted = " ".join(n for n in units if n.endswith((".service", ".socket")) and "/" not in n)
        return f"[Unit]\nDescription=migd test\nWants=systemd-journald-dev-log.socket {wanted}\n"

    def boot(self, timeout: float = 30.0) -> Systemd:
        """Boot (or, once the namespace went down, boot again) and wait until systemd
        has started its target."""
        if self._unshare is not None and self._unshare.poll() is None:
            raise RuntimeError(f"{self.directory.name} is still up")
        self.pid = None
        network = ["--net"] if self.private_network else []
        with open(self.console, "ab") as console:
            self._unshare = subprocess.Popen(
                ["unshare", "--fork", "--pid", "--mount", "--mount-proc",
                 "--propagation", "private", "--uts", "--ipc", *network,
                 "/bin/sh", str(self.script)],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=console,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while self.pid is None:
            children = Path(f"/proc/{self._unshare.pid}/task/{self._unshare.pid}/children")
            try:
                found = children.read_text().split()
            except FileNotFoundError:
                found = []
            if found:
                self.pid = int(found[0])
            elif self._unshare.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the namespace did not start: {self.console.read_text()}")
            else:
                time.sleep(0.02)
        while True:
            state = self.systemctl("is-system-running").stdout.strip()
            if state in ("running", "degraded"):
                return self
            if self._unshare.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"systemd did not boot (state {state!r}): {self.console.read_text()}"
                )
            time.sleep(0.1)

    def wait_down(self, timeout: float | None = None) -> str | None:
        """How the namespace went down: ``"reboot"`` (its systemd rebooted), ``"poweroff"``
        (powered off or halted) or ``"ended"`` (killed, say); None while it is still up
        after ``timeout`` seconds."""
        assert self._unshare is not None
        try:
            code = self._unshare.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        # unshare ends itself with the signal that ended the namespace's PID 1, and the
        # kernel ends that PID 1 with SIGHUP for a reboot, SIGINT for a power-off or halt.
        return {-signal.SIGHUP: "reboot", -signal.SIGINT: "poweroff"}.get(code, "ended")

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A command inside the namespace."""
        assert self.pid is not None
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-p", "-u", "-i", "-n", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def systemctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def inside(self, path: str | os.PathLike[str]) -> Path:
        """``path`` as the namespace sees it, for reading from the test (through
        /proc/PID/root: on an overlay root, the overlay)."""
        assert self.pid is not None
        return Path(f"/proc/{self.pid}/root") / os.fspath(path).lstrip("/")

    def journal(self, *args: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "short-monotonic", *args).stdout

    def close(self) -> None:
        """Print the journal (pytest shows it when the test failed), shut down, clean up."""
        try:
            print(f"--- journal of {self.directory.name} ---\n{self.journal()}")
        finally:
            self.shutdown()
            shutil.rmtree(self.directory, ignore_errors=True)

    def shutdown(self) -> None:
        """SIGKILL to the namespace's PID 1 ends every process in it."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self._unshare is not None:
            try:
                self._unshare.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self._unshare.pid, signal.SIGKILL)
                self._unshare.wait()


def _new_disk(disk: Path) -> None:
    """An empty disk for an overlay root: its upper and work directories, and an
    /etc/systemd/system of its own (opaque: the machine's enabled units stay below it)."""
    units = disk / "upper" / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    (disk / "work").mkdir()
    os.setxattr(units, "trusted.overlay.opaque", b"y")


def scratch_directory(name: str) -> Path:
    """A new directory for one test's systemd: under build/ in the checkout, because
    the namespace hides /tmp and the other scratch directories."""
    directory = REPO / "build" / f"{name}-{uuid.uuid4().hex[:8]}"
    directory.mkdir(parents=True)
    return directory


def installed_unit(state: Path, config: Path, unit_dir: Path) -> str:
    """migd.service as ``migd install-unit`` writes it for the simulated node in ``state``."""
    installed = subprocess.run(
        [str(MIGD), "--simulate", str(state), "install-unit",
         "--unit-dir", str(unit_dir), "-f", str(config)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    return (unit_dir / "migd.service").read_text()


def python_paths() -> list[str]:
    """What the daemon's Python needs to see: the virtualenv, the interpreter, migd's source."""
    import migd

    return [
        sys.prefix,
        sys.base_prefix,
        str(Path(os.path.realpath(sys.executable)).parent.parent),
        str(Path(migd.__file__).resolve().parent.parent),
    ]


# A stand-in for a GPU client (DCGM, an exporter, the device plugin): it logs its own
# starts and stops to one file, so the log is the sequence systemd really ran. (Unit
# timestamps would not do: systemd unloads an inactive unit and forgets them, and
# ExecStopPost= races with the cgroup's removal.)
_STANDIN_UNIT = """\
[Unit]
Description=stand-in {name}
{ordering}
[Service]
Type=simple
ExecStart=/bin/sh -c 'echo start %N >> {log}; exec /bin/sleep infinity'
ExecStop=/bin/sh -c 'echo stop %N >> {log}; kill $MAINPID'
"""


def standin_units(names: Iterable[str], log: Path, *, after_migd: bool = False) -> dict[str, str]:
    """Unit files for stand-in services ``names`` logging ``start NAME``/``stop NAME`` to
    ``log``; ``after_migd`` orders them after migd.service, as GPU clients are on a node."""
    ordering = "After=migd.service\n" if after_migd else ""
    return {
        n: _STANDIN_UNIT.format(name=n.removesuffix(".service"), log=log, ordering=ordering)
        for n in names
    }


def logged_events(log: Path, since: int = 0) -> list[str]:
    """``stop client-c``, ``start client-a``…: the stand-ins' log from line ``since`` on."""
    return log.read_text().splitlines()[since:] if log.exists() else []
