"""migd's systemd unit: its text, and the rendering ``migd install-unit`` writes.

The unit lives here rather than only in ``systemd/migd.service`` so that an
installed migd (a wheel in a virtualenv) can write it with its own executable's
path. ``systemd/migd.service`` is this text rendered for ``/usr/bin/migd``; a test
keeps the two equal.

Why each directive is there is said beside it, in the unit itself, so that an
operator reading ``systemctl cat migd`` learns it too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

UNIT_NAME = "migd.service"
DEFAULT_EXECUTABLE = "/usr/bin/migd"
# Directories systemd's ProtectHome= hides; a migd installed below one needs read access.
HOME_DIRECTORIES = ("/home", "/root", "/run/user")

UNIT_TEMPLATE = """\
# migd keeps the MIG geometry of this node's NVIDIA GPUs as /etc/migd/config.yaml says.
# It reports ready only once every GPU holds its layout, so the units ordered after it
# (kubelet, slurmd, DCGM, the device plugin) never see a half-configured GPU.
# Reload it after editing the config with: systemctl reload migd
[Unit]
Description=migd: MIG geometry of the NVIDIA GPUs
# The driver and the daemons that hold the GPUs come first.
After=systemd-modules-load.service nvidia-persistenced.service nvidia-fabricmanager.service
# GPU consumers start once migd is ready. To keep one down when migd fails at boot
# (boot-policy: strict), give it Requires=migd.service in a drop-in.
Before=kubelet.service slurmd.service nvidia-dcgm.service
Before=dcgm-exporter.service nvidia-device-plugin.service

[Service]
# READY=1 once the GPUs are right; RELOADING=1 … READY=1 around every reload.
Type=notify
# Only the daemon notifies; `migd reload` waits for its answer in /run/migd instead.
NotifyAccess=main
ExecStart={exec_start}
# Signals the daemon and waits for the outcome: a refused config fails the reload.
ExecReload={exec_reload}
{environment}\
Restart=on-failure
RestartSec=5s
# 2: the config is invalid (boot-policy strict); 4: a reboot is required. A restart
# fixes neither.
RestartPreventExitStatus=2 4
# A MIG mode change with a GPU reset takes minutes; the daemon extends the timeout
# (EXTEND_TIMEOUT_USEC) for every further step of a long change.
TimeoutStartSec=10min
# A stop lets the change in progress finish or roll back: never a half-built GPU.
TimeoutStopSec=10min
# SIGTERM to the daemon only: a GPU reset command it runs must not be cut short.
KillMode=mixed
# Pings come from the main loop; they stop while an NVML call is stuck for over 30 s.
WatchdogSec=60s
ConfigurationDirectory=migd
RuntimeDirectory=migd
# Keep /run/migd (state for `migd status`) across a watchdog restart.
RuntimeDirectoryPreserve=restart
StateDirectory=migd

# Hardening that keeps /dev/nvidia* usable (GPU resets write to sysfs, so the kernel
# tunables stay writable).
ProtectSystem=strict
ProtectHome={protect_home}
PrivateTmp=yes
PrivateDevices=no
DevicePolicy=closed
DeviceAllow=char-nvidia* rw
# The /dev/nvidia-caps/nvidia-cap* nodes of new MIG devices are created here.
DeviceAllow=char-nvidia-caps rwm
# The node-feature-discovery label file and the CDI spec are rewritten after a change.
ReadWritePaths=-/etc/kubernetes/node-feature-discovery/features.d -/etc/cdi -/var/run/cdi
{read_write_paths}\
NoNewPrivileges=yes
ProtectControlGroups=yes
ProtectHostname=yes
ProtectClock=yes
ProtectKernelLogs=yes
# Unix sockets (systemd, the journal, nvidia-persistenced), IP for the metrics endpoint.
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
UMask=0022
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class UnitOptions:
    """What ``migd install-unit`` puts into the unit besides the shipped text."""

    command: tuple[str, ...] = (DEFAULT_EXECUTABLE,)  # how to run migd
    run_args: tuple[str, ...] = ()  # extra arguments of `migd run` (-f FILE, -c NAME)
    environment: Mapping[str, str] = field(default_factory=dict)
    read_write_paths: tuple[str, ...] = ()  # e.g. the simulated node's directory


def quote(arg: str) -> str:
    """One argument as systemd's command-line and Environment= parsers read it back."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if escaped and not any(c.isspace() or c in "\"'\\;" for c in escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _command_line(argv: Sequence[str]) -> str:
    return " ".join(quote(a) for a in argv)


def needs_home(paths: Sequence[str]) -> bool:
    """Whether any of ``paths`` lies below a directory ProtectHome=yes would hide."""
    for path in paths:
        real = os.path.realpath(path)
        for home in HOME_DIRECTORIES:
            if any(p == home or p.startswith(home + "/") for p in (path, real)):
                return True
    return False


def render_unit(options: UnitOptions, *, home_paths: Sequence[str] = ()) -> str:
    """The unit text. ``home_paths`` are files migd needs that may lie in home directories
    (its executable, the interpreter, the config): if one does, ProtectHome= becomes
    read-only instead of hiding them."""
    environment = "".join(
        f"Environment={quote(f'{name}={value}')}\n" for name, value in options.environment.items()
    )
    read_write = "".join(f"ReadWritePaths={quote(p)}\n" for p in options.read_write_paths)
    return UNIT_TEMPLATE.format(
        exec_start=_command_line([*options.command, "run", *options.run_args]),
        exec_reload=_command_line([*options.command, "reload"]),
        environment=environment,
        protect_home="read-only" if needs_home(home_paths) else "yes",
        read_write_paths=read_write,
    )
