"""Config file watching: reports that the file may have changed, nothing more.

The watcher watches the *directory* holding the config file, not the file: an
editor's atomic save (write a temporary file, rename it over the old one) and a
Kubernetes ConfigMap update (a new timestamped directory, then the ``..data``
symlink renamed over the old one) both replace the file, and a watch on the old
inode would never see the new one. When the file is a symlink into another
directory, that directory is watched too.

Deciding what a change means is not done here: the watcher only calls
``on_change`` (which posts an event to the daemon's loop). The loop debounces, and
compares :func:`file_digest` with the digest it last saw, so a touch that leaves the
content unchanged does nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from migd.formats.files import sha256

if TYPE_CHECKING:
    from watchdog.observers.api import BaseObserver

log = logging.getLogger("migd.daemon.watch")


def file_digest(path: str | os.PathLike[str]) -> str | None:
    """sha256 hex of the file's bytes (the same digest as ``Config.digest``), None if unreadable."""
    digest = sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 16):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def watched_directories(path: str | os.PathLike[str]) -> tuple[Path, ...]:
    """The directory of ``path`` and, when the file resolves elsewhere, the target's directory."""
    given = Path(os.path.abspath(path)).parent
    resolved = Path(os.path.realpath(path)).parent
    dirs = [given]
    if resolved != given and resolved.is_dir():
        dirs.append(resolved)
    return tuple(dirs)


def _start_observer(path: str | os.PathLike[str], on_change: Callable[[], None]) -> BaseObserver:
    # watchdog is imported here, when the daemon starts watching (after READY=1), so
    # that it costs nothing before.
    from watchdog.events import (
        DirCreatedEvent,
        DirDeletedEvent,
        DirModifiedEvent,
        DirMovedEvent,
        FileClosedEvent,
        FileCreatedEvent,
        FileDeletedEvent,
        FileModifiedEvent,
        FileMovedEvent,
        FileSystemEventHandler,
    )
    from watchdog.observers import Observer

    # Events that can change what reading the config yields. Opens and reads are left
    # out on purpose: the daemon reading the file would otherwise wake itself forever.
    change_events = [
        FileCreatedEvent,
        FileModifiedEvent,
        FileClosedEvent,
        FileMovedEvent,
        FileDeletedEvent,
        DirCreatedEvent,
        DirModifiedEvent,
        DirMovedEvent,
        DirDeletedEvent,
    ]

    class Forward(FileSystemEventHandler):  # type: ignore[misc]
        def on_any_event(self, event: Any) -> None:
            on_change()

    observer = Observer()
    handler = Forward()
    for directory in watched_directories(path):
        try:
            observer.schedule(handler, str(directory), recursive=False, event_filter=change_events)
        except OSError as exc:
            log.warning("cannot watch %s for config changes: %s", directory, exc)
    observer.daemon = True
    observer.start()
    return observer


class ConfigWatcher:
    """Calls ``on_change`` (from the watcher's thread) whenever the config may have changed."""

    def __init__(self, path: str | os.PathLike[str], on_change: Callable[[], None]) -> None:
        self._path = path
        self._on_change = on_change
        self._observer: BaseObserver | None = None

    def start(self) -> None:
        """Start watching. A directory that cannot be watched is logged, not fatal:
        SIGHUP and ``migd reload`` still work without the watcher."""
        self._observer = _start_observer(self._path, self._on_change)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
