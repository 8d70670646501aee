"""The STATE file on disk: locked reads, atomic read-modify-write, and the call log.

Beside ``STATE`` live two more files:

- ``STATE.lock`` — the ``fcntl.flock`` lock every process takes (shared to read,
  exclusive to change the node). Its first 8 bytes hold a generation number that every
  write bumps, so a reader can tell in one ``pread`` whether its cached node is still
  current without parsing the file again.
- ``STATE.calls`` — the call log: one ``<symbol> <RESULT>`` line per NVML call, written
  with ``O_APPEND`` so lines from many processes never interleave; ``migd sim stats``
  counts them.

A write goes to a temporary file, is fsynced, and replaces STATE by ``rename``, so a
process killed at any moment leaves either the old node or the new one, never a torn
file. The generation is bumped *before* the rename, under the exclusive lock: a reader
that finds the generation changed takes the shared lock (waiting for the writer) and
reloads; a writer killed between the bump and the rename costs one needless reload.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import os
import struct
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from migd.sim.state import NodeState, from_json, to_json

T = TypeVar("T")

_GEN = struct.Struct("<Q")


class Transaction:
    """The node as read under the exclusive lock; :meth:`commit` writes a new one."""

    def __init__(self, store: StateStore, lock_fd: int, node: NodeState) -> None:
        self._store = store
        self._lock_fd = lock_fd
        self.node = node

    def commit(self, node: NodeState) -> None:
        """Write ``node`` as the new state (nothing is written if it did not change)."""
        if node != self.node:
            self._store._write(self._lock_fd, node)
            self.node = node


class StateStore:
    """One STATE file, shared by every process that simulates this node."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.lock_path = self.path + ".lock"
        self.log_path = self.path + ".calls"
        self._cache: tuple[tuple[int, ...], NodeState] | None = None
        self._gen_fd: int | None = None
        self._log_fd: int | None = None
        self._fd_lock = threading.Lock()  # opening the kept file descriptors once

    # -- locking ------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[int]:
        # A fresh open file description per acquisition: flock locks belong to the
        # description, so two threads sharing one descriptor would not exclude each other.
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def _generation(self) -> int:
        if self._gen_fd is None:
            with self._fd_lock:
                if self._gen_fd is None:
                    self._gen_fd = os.open(self.lock_path, os.O_RDONLY | os.O_CREAT, 0o644)
        raw = os.pread(self._gen_fd, _GEN.size, 0)
        return _GEN.unpack(raw)[0] if len(raw) == _GEN.size else 0

    def _key(self) -> tuple[int, ...]:
        st = os.stat(self.path)
        return (self._generation(), st.st_ino, st.st_mtime_ns, st.st_size)

    # -- reading and writing --------------------------------------------------

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def read(self) -> NodeState:
        """The current node. Raises FileNotFoundError, or StateError for a foreign file.

        Served from the cache while the generation and the file are unchanged (the
        common case: a full scan of a node makes hundreds of calls and no write).
        """
        cached = self._cache
        if cached is not None and cached[0] == self._key():
            return cached[1]
        with self._locked(exclusive=False):
            return self._load()

    def _load(self) -> NodeState:
        # Called with the lock held, so the key and the content belong together.
        key = self._key()
        cached = self._cache
        if cached is not None and cached[0] == key:
            return cached[1]
        with open(self.path, "rb") as f:
            node = from_json(json.loads(f.read()))
        self._cache = (key, node)
        return node

    def transaction(self, fn: Callable[[Transaction], T]) -> T:
        """Run ``fn`` under the exclusive lock with the current node; return its result."""
        with self._locked(exclusive=True) as lock_fd:
            return fn(Transaction(self, lock_fd, self._load()))

    def create(self, node: NodeState) -> None:
        """Write a fresh node (``migd sim init``) and start an empty call log."""
        with self._locked(exclusive=True) as lock_fd:
            self._write(lock_fd, node)
            # Truncated in place, not replaced: processes that still hold the log open
            # with O_APPEND keep writing to the file ``sim stats`` reads.
            os.close(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))

    def _write(self, lock_fd: int, node: NodeState) -> None:
        data = json.dumps(to_json(node), indent=1).encode() + b"\n"
        tmp = f"{self.path}.tmp.{os.getpid()}.{threading.get_ident()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        raw = os.pread(lock_fd, _GEN.size, 0)
        generation = _GEN.unpack(raw)[0] if len(raw) == _GEN.size else 0
        os.pwrite(lock_fd, _GEN.pack(generation + 1), 0)
        os.replace(tmp, self.path)
        dir_fd = os.open(os.path.dirname(self.path), os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash of the machine
        finally:
            os.close(dir_fd)
        self._cache = (self._key(), node)

    # -- the call log -----------------------------------------------------------

    def log_call(self, symbol: str, result: str) -> None:
        """Append one ``<symbol> <result>`` line (one write: atomic with O_APPEND)."""
        try:
            if self._log_fd is None:
                with self._fd_lock:
                    if self._log_fd is None:
                        self._log_fd = os.open(
                            self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
                        )
            os.write(self._log_fd, f"{symbol} {result}\n".encode())
        except OSError:
            # Statistics must never change what a call returns.
            pass

    def stats(self) -> dict[str, dict[str, int]]:
        """``{symbol: {result: count}}`` over every call logged since ``sim init``."""
        counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 2:
                        counts[parts[0]][parts[1]] += 1
        except FileNotFoundError:
            pass
        return {symbol: dict(sorted(c.items())) for symbol, c in sorted(counts.items())}

    def close(self) -> None:
        """Close the descriptors kept open (the generation and the log)."""
        with self._fd_lock:
            for fd in (self._gen_fd, self._log_fd):
                if fd is not None:
                    os.close(fd)
            self._gen_fd = self._log_fd = None
        self._cache = None
