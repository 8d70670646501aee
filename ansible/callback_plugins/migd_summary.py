"""One table of every node at the end of a migd roll-out, whatever happened.

The role keeps each node's line in the fact ``migd_summary`` (from ``migd status
--json``); a node that failed shows the first line of its failure instead, and a node
the roll never reached (an earlier batch failed, or the preflight refused a config)
says so. Ansible runs no later play once a batch has failed, so the table is printed
from here, when the run ends.
"""

from __future__ import annotations

import re
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: migd_summary
    type: aggregate
    short_description: print one table of the migd roll-out's nodes at the end of a run
    description:
      - At the end of a run of migd.yml, one line per node of the inventory seen by the
        run - its result (changed, in place, failed, not reached), the config it holds,
        how many GPUs are in sync, whether it was rebooted, and migd's status line or
        the failure.
    requirements:
      - enabled in ansible.cfg (callbacks_enabled = migd_summary)
"""

_COLUMNS = ("node", "result", "config", "GPUs in sync", "rebooted", "detail")


def _natural(name: str) -> list[Any]:
    """gpu2 before gpu10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _host(result: Any) -> str:
    return str((getattr(result, "host", None) or result._host).get_name())


def _result(result: Any) -> dict[str, Any]:
    # ansible-core 2.19 names it `result`; earlier versions only `_result`.
    found = getattr(result, "result", None)
    return dict(found if found is not None else result._result)


def _task(result: Any) -> str:
    return str((getattr(result, "task", None) or result._task).get_name())


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "migd_summary"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._nodes: list[str] = []
        self._lines: dict[str, dict[str, Any]] = {}
        self._failures: dict[str, str] = {}

    def _meet(self, host: str) -> None:
        if host not in self._nodes:
            self._nodes.append(host)

    def v2_runner_on_ok(self, result: Any) -> None:
        host = _host(result)
        self._meet(host)
        facts = _result(result).get("ansible_facts") or {}
        if "migd_summary" in facts:
            self._lines[host] = dict(facts["migd_summary"])

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._meet(_host(result))

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        host = _host(result)
        self._meet(host)
        if not ignore_errors and host not in self._failures:
            text = str(_result(result).get("msg") or _result(result).get("stderr") or "failed")
            first = text.strip().splitlines()[0] if text.strip() else "failed"
            self._failures[host] = f"{_task(result)}: {first}"

    def v2_runner_on_unreachable(self, result: Any) -> None:
        host = _host(result)
        self._meet(host)
        self._failures.setdefault(host, "unreachable")

    def v2_playbook_on_stats(self, stats: Any) -> None:
        if not self._nodes:
            return
        rows = [self._row(host) for host in sorted(self._nodes, key=_natural)]
        widths = [max(len(str(r[i])) for r in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]
        self._display.banner("MIGD ROLL-OUT SUMMARY")
        for row in [_COLUMNS, *rows]:
            line = "  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row))
            self._display.display(line.rstrip())

    def _row(self, host: str) -> tuple[str, ...]:
        line = self._lines.get(host)
        if host in self._failures:
            result, detail = "FAILED", self._failures[host]
        elif line is None:
            result, detail = "not reached", "not touched"
        else:
            result, detail = str(line.get("change", "")), str(line.get("status", ""))
        if line is None:
            return (host, result, "", "", "", detail)
        return (
            host,
            result,
            str(line.get("config", "")),
            f"{line.get('gpus_in_sync', '?')}/{line.get('gpus', '?')}",
            "yes" if str(line.get("rebooted")).lower() == "true" else "no",
            detail,
        )
