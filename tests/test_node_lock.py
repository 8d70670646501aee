"""The node lock and the daemon's presence marker (``migd.node.lock``), in one process.

flock locks belong to open file descriptions, so two holders in one process conflict
as two processes would.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from migd.errors import EXIT_BUSY, NodeBusy
from migd.node.lock import DaemonPresent, NodeLock, node_lock_path, one_shot_change


def test_where_the_lock_lives() -> None:
    assert node_lock_path({}, None) == Path("/run/migd/node.lock")
    assert node_lock_path({}, "/var/tmp/node.json") == Path("/var/tmp/node.json.node.lock")
    moved = {"MIGD_NODE_LOCK": "/srv/lock/gpu.lock"}
    assert node_lock_path(moved, "/var/tmp/node.json") == Path("/srv/lock/gpu.lock")
    assert NodeLock(Path("/srv/lock/gpu.lock")).daemon_path == Path("/srv/lock/gpu.daemon")


def test_a_daemon_is_present_while_it_holds_its_marker_and_not_after(tmp_path: Path) -> None:
    lock = NodeLock(tmp_path / "node.lock")
    assert lock.daemon() is None
    held = lock.claim_daemon(4242, "/etc/migd/config.yaml")
    assert lock.daemon() == DaemonPresent(4242, "/etc/migd/config.yaml")
    with pytest.raises(NodeBusy, match=r"another migd daemon \(pid 4242\) owns this node"):
        lock.claim_daemon(4343, "/etc/migd/config.yaml")
    held.release()
    # The file stays behind (a killed daemon leaves it too): unlocked, it names nobody.
    assert lock.daemon_path.exists() and lock.daemon() is None


def test_a_one_shot_change_is_refused_under_a_daemon_before_its_block_runs(
    tmp_path: Path,
) -> None:
    lock = NodeLock(tmp_path / "node.lock")
    held = lock.claim_daemon(os.getpid(), "/etc/migd/config.yaml")
    ran = []
    with (
        pytest.raises(NodeBusy) as refused,
        one_shot_change(lock, "migd apply", override_daemon=False, timeout=5, say=print),
    ):
        ran.append(True)
    held.release()
    assert not ran and refused.value.exit_code == EXIT_BUSY
    assert "edit /etc/migd/config.yaml and run 'systemctl reload migd'" in str(refused.value)


def test_a_second_holder_waits_then_gives_up_naming_the_first(tmp_path: Path) -> None:
    lock = NodeLock(tmp_path / "node.lock")
    heard: list[str] = []
    with lock.hold("migd apply", timeout=1):
        assert lock.holder() == f"pid {os.getpid()} (migd apply)"
        with (
            pytest.raises(NodeBusy, match=r"held by pid \d+ \(migd apply\) for more than 0.1 s"),
            lock.hold("migd restore", timeout=0.1, on_wait=heard.append),
        ):
            pass
        with lock.attempt("a drift check") as holder:
            assert holder == f"pid {os.getpid()} (migd apply)"
    assert heard == [
        f"waiting for the node lock {lock.path}, held by pid {os.getpid()} (migd apply)"
    ]
    with lock.attempt("a drift check") as holder:
        assert holder is None
