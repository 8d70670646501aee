"""A hang longer than the watchdog in the middle of a change, under a real systemd 252.

``tests/systemd/test_systemd.py`` shows the watchdog restarting migd when a drift
check hangs with nothing in flight. Here the hang is a mutating call in the middle of
a change (one GPU instance created of several, instances already destroyed): systemd
kills migd there, restarts it (``Restart=on-failure``), and the new daemon must bring
the half-built GPUs to the layout and report ready. Same machine, same unit, same
drop-in (``WatchdogSec=3s``) as the systemd tests: their ``machine`` fixture.
"""

from __future__ import annotations

from collections.abc import Callable

from daemon_support import SMALL, all_hold, config_text, sim, wait_for, write_atomically
from reliability_support import summary
from systemd_harness import requires_systemd
from test_systemd import Machine, machine  # noqa: F401 (the fixture)

pytestmark = requires_systemd()


def test_a_hang_in_the_middle_of_a_change_ends_in_a_watchdog_restart_that_converges(
    machine: Callable[..., Machine],  # noqa: F811
) -> None:
    m = machine()
    m.wait_ready()
    # The change to small: its second GPU-instance create hangs for two minutes.
    sim("fault", str(m.state), "--call", "nvmlDeviceCreateGpuInstanceWithPlacement",
        "--hang", "120", "--after", "1", "--count", "1")  # fmt: skip
    write_atomically(m.config, config_text("small", drift="1s"))
    wait_for(
        lambda: int(m.systemd.show("migd", "NRestarts")["NRestarts"]) >= 1,
        "a watchdog restart",
        timeout=60,
        interval=0.2,
    )
    journal = m.systemd.journal("-u", "migd")
    assert "withholding watchdog pings" in journal
    assert "Watchdog timeout" in journal
    # Killed in the middle: instances had been destroyed and one created.
    before_kill = journal.split("Watchdog timeout")[0]
    assert "destroyed GI" in before_kill and "created 1g.18gb" in before_kill, before_kill
    m.wait_ready("migd ready again after the restart", timeout=60)
    assert all_hold(m.state, SMALL)
    assert 'Status: "ready: small, 2/2 GPUs in sync"' in m.status()
    summary(
        "fault matrix, watchdog",
        "an NVML create hung mid-change for longer than WatchdogSec: systemd restarted "
        "migd, which converged the half-built GPUs and reported ready",
    )
