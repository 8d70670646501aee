"""Logging to stderr; under systemd each line carries its syslog priority (``<3>``)."""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class PriorityFormatter(logging.Formatter):
    """Prefixes every line with ``<N>`` so journald keeps the level (sd-daemon(3))."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record.

    A handler bound to the stream of the moment would keep writing to a stream that
    was since replaced (and closed) when migd's CLI runs in-process, as tests do.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # type: ignore[no-untyped-def]
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def under_journald() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


def setup_logging(debug: bool = False, priority_prefix: bool | None = None) -> None:
    if priority_prefix is None:
        priority_prefix = under_journald()
    handler = _StderrHandler()
    if priority_prefix:
        handler.setFormatter(PriorityFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("migd: %(levelname)s: %(message)s"))
    root = logging.getLogger("migd")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False
