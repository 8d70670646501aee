"""Node labels without API credentials: a node-feature-discovery feature file.

NFD's ``local`` source turns each ``key=value`` line of a file under
``/etc/kubernetes/node-feature-discovery/features.d/`` into a label of this node
(``#`` lines are comments, hidden files are skipped), so a host daemon can publish
labels without a kubeconfig. Off unless ``settings.nfd.path`` names the file; under
the shipped hardening its directory must be writable (``ReadWritePaths=``).

The labels:

``nvidia.com/mig.config=<selected config>``
    the layout this node applies, as the k8s MIG manager's label names it;
``nvidia.com/mig.config.state=pending|success|failed|rebooting``
    the k8s MIG manager's states: ``pending`` while a change runs, ``success`` when
    every GPU holds its layout, ``failed`` when a GPU could not be changed (failed or
    blocked), ``rebooting`` when a MIG mode change waits for a reboot (migd never
    reboots a node itself: it waits for one);
``migd/in-sync=true|false``
    every GPU the config covers holds its layout right now;
``migd/strategy-compatible=true|false``
    the layout suits the device plugin's MIG strategy (``migd.node.strategy``);
``migd/contested-gpus=1.5``
    only while some GPU is contested (another controller keeps changing it, and migd
    stopped repairing it): their indexes, joined by ``.``; the state is then ``failed``
    and ``migd/in-sync`` false.

migd's own labels use the prefix ``migd/``: short, and not a domain migd could
pretend to own (NVIDIA's ``nvidia.com`` is kept for the two labels the k8s MIG manager
defines). NFD 0.13 and later accept any prefix outside ``kubernetes.io``; older ones
need ``migd`` and ``nvidia.com`` in nfd-master's ``extraLabelNs``.

A config name that is not a valid label value (more than 63 characters, or characters
other than letters, digits, ``-_.``) is left out, with a comment saying why, rather
than making NFD drop the whole file.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from migd.formats.files import atomic_write
from migd.gpu.executor import GpuOutcome, ReconcileResult

log = logging.getLogger("migd.node.nfd")

MIG_CONFIG = "nvidia.com/mig.config"
MIG_CONFIG_STATE = "nvidia.com/mig.config.state"
IN_SYNC = "migd/in-sync"
STRATEGY_COMPATIBLE = "migd/strategy-compatible"
CONTESTED = "migd/contested-gpus"

State = Literal["pending", "success", "failed", "rebooting"]

HEADER = "# Written by migd (node-feature-discovery labels); it is replaced on every change.\n"

# Kubernetes label syntax (apimachinery validation): a value is at most 63 characters
# of [A-Za-z0-9_.-], starting and ending alphanumeric.
_VALUE_RE = r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"


def valid_label_value(value: str) -> bool:
    return bool(re.match(_VALUE_RE, value))


@dataclass(frozen=True)
class NodeLabels:
    """What the feature file says about the node."""

    selected_config: str | None
    state: State
    in_sync: bool
    strategy_compatible: bool | None = None  # None: not checked
    contested: tuple[int, ...] = ()  # GPUs migd stopped repairing (another controller)


def state_of(result: ReconcileResult) -> State:
    """The ``nvidia.com/mig.config.state`` a finished reconcile leaves."""
    worst = result.worst()
    if worst is GpuOutcome.REBOOT_REQUIRED:
        return "rebooting"
    if worst in (GpuOutcome.FAILED, GpuOutcome.BLOCKED):
        return "failed"
    return "success"


def render(labels: NodeLabels) -> str:
    """The feature file's text: a comment, then one ``key=value`` line per label."""
    lines = [HEADER]
    name = labels.selected_config
    if name is not None and valid_label_value(name):
        lines.append(f"{MIG_CONFIG}={name}\n")
    elif name is not None:
        lines.append(
            f"# {MIG_CONFIG} left out: the config name is not a valid label value "
            "(at most 63 letters, digits, '-', '_', '.')\n"
        )
    lines.append(f"{MIG_CONFIG_STATE}={labels.state}\n")
    lines.append(f"{IN_SYNC}={'true' if labels.in_sync else 'false'}\n")
    if labels.strategy_compatible is not None:
        value = "true" if labels.strategy_compatible else "false"
        lines.append(f"{STRATEGY_COMPATIBLE}={value}\n")
    if labels.contested:
        lines.append(f"{CONTESTED}={'.'.join(str(i) for i in labels.contested)}\n")
    return "".join(lines)


def write_labels(path: str, labels: NodeLabels) -> str | None:
    """Replace the feature file at ``path`` atomically when its content changes.

    The file is written beside itself under a hidden name and renamed over (NFD skips
    hidden files and never sees half a file). Returns None on success, else why the
    file could not be written (labels are best-effort: a failure is logged, never
    fatal to the change).
    """
    target = Path(path)
    text = render(labels)
    try:
        if target.read_text(encoding="utf-8") == text:
            return None
    except (OSError, UnicodeDecodeError):
        pass  # absent or unreadable: write it
    try:
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(target, text.encode())
    except OSError as exc:
        problem = f"cannot write the NFD feature file {path}: {exc.strerror or exc}"
        log.warning("%s", problem)
        return problem
    log.info("NFD labels: %s=%s", MIG_CONFIG_STATE, labels.state)
    return None
