"""mig-parted's command line, as units, scripts and playbooks call ``nvidia-mig-parted``.

migd is installed under that name too (``pyproject.toml``), so a caller needs no edit.
mig-parted's CLI (urfave/cli v3, ``cmd/nvidia-mig-parted/main.go``) accepts more than
argparse does by itself; this module turns those spellings into migd's before parsing:

- the global ``-d``/``--debug`` after the verb (urfave's flags are inherited by every
  command): ``nvidia-mig-parted apply -d`` is ``nvidia-mig-parted -d apply``;
- ``help`` and ``h`` as a verb: ``help`` is ``--help``, ``help apply`` is
  ``apply --help``;
- ``-v`` for ``--version`` and ``MIG_PARTED_DEBUG`` are flags of ``migd.cli``.

It also decides what ``apply --skip-reset`` answers when a MIG mode change is left
pending (:func:`pending_resets_skipped`): mig-parted's caller asked to reset the GPUs
itself, so that is success, said plainly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from migd.gpu.executor import ReconcileResult

# The name mig-parted's units, scripts and playbooks call.
MIG_PARTED_PROG = "nvidia-mig-parted"

# mig-parted's verbs: the ones its inherited global flags reach.
MIG_PARTED_VERBS = frozenset(
    {"apply", "assert", "export", "generate-config", "checkpoint", "restore"}
)
DEBUG_FLAGS = frozenset({"-d", "--debug"})
HELP_VERBS = frozenset({"help", "h"})
# migd's global options that take a value (so that value is not taken for the verb).
GLOBAL_WITH_VALUE = frozenset({"--simulate"})

# The executor's error label for a mode change left pending because resets were skipped.
RESET_SKIPPED = "RESET_SKIPPED"
RESET_SKIPPED_AS_ASKED = (
    "MIG mode change pending; the GPU reset was skipped as asked (--skip-reset)"
)


def reset_skipped_summary(gpus: Sequence[int]) -> str:
    """The last line of an apply whose only step left is the reset it was asked to skip."""
    listed = ", ".join(str(i) for i in gpus)
    return (
        f"MIG mode change pending on GPU(s) {listed}: the GPU reset was skipped as asked "
        "(--skip-reset); reset those GPUs (apply without --skip-reset does it) or reboot "
        "to activate it"
    )


def program_name(argv0: str) -> str:
    """The name to show in usage and help: the one the command was called by."""
    return MIG_PARTED_PROG if os.path.basename(argv0) == MIG_PARTED_PROG else "migd"


def verb_index(argv: Sequence[str]) -> int | None:
    """Where the verb is in ``argv``: the first word that is neither an option nor its value."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return i + 1 if i + 1 < len(argv) else None
        if arg in GLOBAL_WITH_VALUE:
            i += 2
            continue
        if not arg.startswith("-"):
            return i
        i += 1
    return None


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with mig-parted's spellings (module docstring) turned into migd's."""
    args = list(argv)
    at = verb_index(args)
    if at is None:
        return args
    verb = args[at]
    if verb in HELP_VERBS:
        rest = args[at + 1 :]
        target = [rest[0]] if rest and not rest[0].startswith("-") else []
        return [*args[:at], *target, "--help"]
    if verb not in MIG_PARTED_VERBS:
        return args
    head, tail = args[: at + 1], args[at + 1 :]
    end = tail.index("--") if "--" in tail else len(tail)
    moved = [a for a in tail[:end] if a in DEBUG_FLAGS]
    if not moved:
        return args
    kept = [a for a in tail[:end] if a not in DEBUG_FLAGS] + tail[end:]
    return ["--debug", *head, *kept]


def pending_resets_skipped(result: ReconcileResult, *, mode_only: bool) -> tuple[int, ...]:
    """The GPUs whose only step left is the GPU reset ``--skip-reset`` asked to skip.

    Non-empty only when that is everything keeping the apply from success: every other
    GPU is done, and each of these needs nothing after its reset (``--mode-only``, or a
    layout with no instances to create once MIG is on). mig-parted answers 0 there, as
    its ``service.sh`` expects before it resets the GPUs itself.
    """
    from migd.gpu.executor import GpuOutcome  # the CLI parses argv without loading NVML code

    wanted = {d.index: d for d in result.desired}
    skipped: list[int] = []
    for gpu in result.gpus:
        if gpu.outcome in (GpuOutcome.BLOCKED, GpuOutcome.FAILED):
            return ()
        if gpu.outcome is not GpuOutcome.REBOOT_REQUIRED:
            continue
        target = wanted.get(gpu.index)
        if gpu.error != RESET_SKIPPED or target is None:
            return ()
        if not mode_only and target.instances:
            return ()
        skipped.append(gpu.index)
    return tuple(skipped)
