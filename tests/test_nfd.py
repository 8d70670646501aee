"""The node-feature-discovery feature file: its content across states, and how it is written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from migd.core.layout import NodeSnapshot
from migd.gpu.executor import GpuOutcome, GpuResult, ReconcileResult
from migd.node.nfd import (
    HEADER,
    NodeLabels,
    render,
    state_of,
    valid_label_value,
    write_labels,
)

# Kubernetes label key syntax (apimachinery validation): an optional prefix that is a
# DNS subdomain, a slash, and a name with the syntax of a value. migd's keys are
# constants; this checks them.
_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_PREFIX_RE = re.compile(rf"^{_DNS_LABEL}(?:\.{_DNS_LABEL})*$")


def valid_label_key(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and (not _PREFIX_RE.match(prefix) or len(prefix) > 253):
        return False
    return bool(name) and valid_label_value(name)


def result_of(*outcomes: GpuOutcome) -> ReconcileResult:
    gpus = tuple(GpuResult(i, outcome) for i, outcome in enumerate(outcomes))
    return ReconcileResult("all-balanced", gpus, (), NodeSnapshot(()))


def labels_in(path: Path) -> dict[str, str]:
    """The labels NFD would make of the file: key=value lines, comments skipped."""
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.mark.parametrize(
    ("outcomes", "state"),
    [
        ((GpuOutcome.APPLIED, GpuOutcome.NOOP, GpuOutcome.SKIPPED), "success"),
        ((), "success"),
        ((GpuOutcome.APPLIED, GpuOutcome.FAILED), "failed"),
        ((GpuOutcome.BLOCKED,), "failed"),
        ((GpuOutcome.APPLIED, GpuOutcome.REBOOT_REQUIRED), "rebooting"),
        ((GpuOutcome.REBOOT_REQUIRED, GpuOutcome.FAILED), "failed"),
    ],
)
def test_the_state_a_reconcile_leaves(outcomes: tuple[GpuOutcome, ...], state: str) -> None:
    assert state_of(result_of(*outcomes)) == state


def test_pending_then_success(tmp_path: Path) -> None:
    path = tmp_path / "features.d" / "migd"
    assert write_labels(str(path), NodeLabels("all-balanced", "pending", False)) is None
    assert path.read_text() == (
        HEADER
        + "nvidia.com/mig.config=all-balanced\n"
        + "nvidia.com/mig.config.state=pending\n"
        + "migd/in-sync=false\n"
    )
    write_labels(str(path), NodeLabels("all-balanced", "success", True, strategy_compatible=True))
    assert labels_in(path) == {
        "nvidia.com/mig.config": "all-balanced",
        "nvidia.com/mig.config.state": "success",
        "migd/in-sync": "true",
        "migd/strategy-compatible": "true",
    }


@pytest.mark.parametrize("state", ["failed", "rebooting"])
def test_pending_then_failed_or_rebooting(tmp_path: Path, state: str) -> None:
    path = tmp_path / "migd"
    write_labels(str(path), NodeLabels("all-1g.18gb", "pending", False))
    write_labels(str(path), NodeLabels("all-1g.18gb", state, False, strategy_compatible=False))  # type: ignore[arg-type]
    assert labels_in(path) == {
        "nvidia.com/mig.config": "all-1g.18gb",
        "nvidia.com/mig.config.state": state,
        "migd/in-sync": "false",
        "migd/strategy-compatible": "false",
    }


def test_every_label_key_and_value_is_valid_for_kubernetes() -> None:
    labels = NodeLabels("all-1g.18gb.me", "rebooting", True, True, contested=(1, 12))
    text = render(labels)
    assert "migd/contested-gpus=1.12\n" in text
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, value = line.split("=", 1)
        assert valid_label_key(key), key
        assert valid_label_value(value), value


def test_the_contested_label_appears_only_while_a_gpu_is_contested() -> None:
    assert "contested" not in render(NodeLabels("all-balanced", "success", True))
    text = render(NodeLabels("all-balanced", "failed", False, contested=(3,)))
    assert "migd/contested-gpus=3\n" in text


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("nvidia.com/mig.config.state", True),
        ("migd/in-sync", True),
        ("in-sync", True),
        ("Migd/in-sync", False),  # prefixes are lower-case DNS names
        ("migd/-in-sync", False),
        ("migd/" + "x" * 64, False),
        ("/in-sync", False),
        ("migd/", False),
    ],
)
def test_label_key_syntax(key: str, valid: bool) -> None:
    assert valid_label_key(key) is valid


def test_a_config_name_that_is_no_label_value_is_left_out(tmp_path: Path) -> None:
    path = tmp_path / "migd"
    write_labels(str(path), NodeLabels("my config", "success", True))
    assert "nvidia.com/mig.config" not in labels_in(path)
    assert "# nvidia.com/mig.config left out" in path.read_text()
    write_labels(str(path), NodeLabels("x" * 64, "success", True))
    assert "nvidia.com/mig.config" not in labels_in(path)
    write_labels(str(path), NodeLabels(None, "failed", False))
    assert labels_in(path) == {"nvidia.com/mig.config.state": "failed", "migd/in-sync": "false"}


def test_the_file_is_replaced_atomically_and_only_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "migd"
    write_labels(str(path), NodeLabels("a", "pending", False))
    first = os.stat(path)
    write_labels(str(path), NodeLabels("a", "pending", False))
    assert os.stat(path).st_ino == first.st_ino  # same content: not rewritten
    write_labels(str(path), NodeLabels("a", "success", True))
    assert os.stat(path).st_ino != first.st_ino  # a new file renamed over the old one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["migd"]  # no temporary left


def test_a_file_that_cannot_be_written_is_reported_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    problem = write_labels(str(blocker / "migd"), NodeLabels("a", "success", True))
    assert problem is not None and problem.startswith("cannot write the NFD feature file")
