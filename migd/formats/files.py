"""Which files migd trusts when it runs as root: one policy, in one place.

migd running as root acts on what its config file says: it reconfigures GPUs, runs
reset commands and hooks, stops and starts units. Whoever can write that file can
make root do those things, so a root migd refuses a file that anyone but root could
have written. Only the file itself is checked, not its directories: the file is what
the daemon reads, and package managers and ConfigMap mounts own the directories.
"""

from __future__ import annotations

import stat

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
