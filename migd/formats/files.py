"""How migd reads the files it acts on and writes the files others read.

Which files migd trusts when it runs as root, one policy in one place: migd running
as root acts on what its config file says: it reconfigures GPUs, runs reset commands
and hooks, stops and starts units. Whoever can write that file can make root do those
things, so a root migd refuses a file that anyone but root could have written (the
config, the hooks file, the gpu-clients file). Only the file itself is checked, not
its directories: the file is what the daemon reads, and package managers and
ConfigMap mounts own the directories.

Files migd writes for others (the runtime state, NFD labels, checkpoints, the unit)
are replaced atomically: a reader sees the old file or the new one, whole.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from migd.errors import ConfigError
from migd.formats.yaml_reader import MAX_CONFIG_BYTES

# SHA-256 of what migd reads (a config's digest): CPython's own implementation, the
# one hashlib falls back to. hashlib itself loads OpenSSL's libcrypto on import, about
# 3.5 MiB of RSS and a few ms in every process that reads a config, for the one digest
# it needs; the digest is the same.
try:
    from _sha2 import sha256 as _sha256  # type: ignore[import-not-found]  # Python 3.12+
except ImportError:
    try:
        from _sha256 import sha256 as _sha256  # type: ignore[import-not-found,no-redef]
    except ImportError:  # a Python built without them: hashlib has OpenSSL's
        from hashlib import sha256 as _sha256  # type: ignore[assignment]
sha256 = _sha256

# The effective uid for which the policy applies (the daemon under systemd).
ROOT_EUID = 0
# The only owner a trusted file may have.
TRUSTED_OWNER_UID = 0
# Write bits that let someone other than the owner change the file.
UNTRUSTED_WRITE_BITS = stat.S_IWGRP | stat.S_IWOTH


def policy_applies(euid: int) -> bool:
    """True when a process with this effective uid must refuse untrusted files."""
    return euid == ROOT_EUID


def untrusted_reason(uid: int, mode: int, path: str = "FILE") -> str | None:
    """Why a file with this owner and mode must not be trusted, or None when it may be.

    ``uid`` and ``mode`` are ``st_uid`` and ``st_mode`` of the opened file; ``path``
    names it in the fix. The reason is a clause, to follow "refusing this file: ".
    """
    reasons: list[str] = []
    fixes: list[str] = []
    if uid != TRUSTED_OWNER_UID:
        reasons.append(f"it is owned by uid {uid}, not root")
        fixes.append(f"chown root: {path}")
    if mode & UNTRUSTED_WRITE_BITS:
        who = " and ".join(
            name
            for bit, name in ((stat.S_IWGRP, "its group"), (stat.S_IWOTH, "everyone"))
            if mode & bit
        )
        reasons.append(f"it is writable by {who} (mode {stat.S_IMODE(mode):04o})")
        fixes.append(f"chmod go-w {path}")
    if not reasons:
        return None
    return (
        f"{', and '.join(reasons)}, so someone other than root could decide what migd "
        f"does to the GPUs (fix: {' && '.join(fixes)})"
    )


# ---------------------------------------------------------------------------
# Reading a file migd acts on
# ---------------------------------------------------------------------------


def read_trusted_file(
    path: str, *, euid: int | None = None, enforce_ownership: bool = True
) -> bytes:
    """The bytes of a file migd acts on (at most ``MAX_CONFIG_BYTES`` + 1 of them).

    As root (``euid``, default ``os.geteuid()``), a file anyone but root could have
    written is refused (the policy above) unless ``enforce_ownership`` is False. Every
    failure is a ConfigError naming the file.
    """
    try:
        with open(path, "rb") as f:
            if enforce_ownership:
                # fstat of the open file: the file checked is the file read.
                reason = _untrusted_reason(os.fstat(f.fileno()), path, euid)
                if reason is not None:
                    raise ConfigError.of_file(path, f"refusing this file as root: {reason}")
            return f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError.of_file(path, f"cannot read the file: {exc.strerror or exc}") from None


def ownership_warning(path: str, *, euid: int | None = None) -> str | None:
    """Why a root migd would refuse the file at ``path``, or None (also when unreadable)."""
    if path == "-":
        return None
    try:
        return _untrusted_reason(os.stat(path), path, euid)
    except OSError:
        return None


def _untrusted_reason(st: os.stat_result, path: str, euid: int | None) -> str | None:
    if not policy_applies(os.geteuid() if euid is None else euid):
        return None
    return untrusted_reason(st.st_uid, st.st_mode, path)


# ---------------------------------------------------------------------------
# Writing a file others read
# ---------------------------------------------------------------------------


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new file, whole.

    ``durable``: the data is on disk before the file is replaced (a checkpoint must
    survive a crash); files rewritten at every change of the daemon's state skip that.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
