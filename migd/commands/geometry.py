"""The one-shot geometry verbs: plan, apply, assert, export, generate-config, checkpoint, restore.

Flags and environment variables follow mig-parted where it has them, so scripts and
units written for ``nvidia-mig-parted`` keep working. Each verb parses its flags,
calls the library (adapter, selection, planner, executor, export, checkpoint) and
turns the result into text and an exit code; no decision is made here.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from migd.commands.common import (
    add_config_file,
    add_selected_config,
    env,
    env_flag,
    reset_command,
)
from migd.commands.mig_parted import (
    RESET_SKIPPED_AS_ASKED,
    pending_resets_skipped,
    reset_skipped_summary,
)
from migd.errors import EXIT_BLOCKED, EXIT_FAILED, EXIT_OK, MigdError
from migd.formats import DEFAULT_LABEL
from migd.node import DEFAULT_NODE_LOCK, DEFAULT_WAIT_SECONDS, NODE_LOCK_ENV

# Each verb imports the library it uses inside its handler: building the parser stays
# cheap, so a one-shot verb pays for its own path only (no planner for export, no
# executor for plan).
if TYPE_CHECKING:
    from migd.core.config import Config
    from migd.core.layout import NodeSnapshot
    from migd.core.plan import NodePlan
    from migd.gpu.executor import ReconcileOptions
    from migd.node.change import ChangeReport

EXIT_CODES = """\
exit codes: 0 ok or nothing to do, 1 failed (GPU restored), 2 invalid input (nothing
            touched), 3 blocked by running processes, 4 reboot required, 5 the node
            is owned by the migd daemon or busy with another change (nothing touched)
"""


# ---------------------------------------------------------------------------
# Shared flags
# ---------------------------------------------------------------------------


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    add_config_file(parser)
    add_selected_config(parser)


def _add_mode_only(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "-m",
        "--mode-only",
        dest="mode_only",
        action="store_true",
        default=env_flag("MIG_PARTED_MODE_CHANGE_ONLY"),
        help=f"{what} the MIG mode only, not the instances ($MIG_PARTED_MODE_CHANGE_ONLY)",
    )


def _add_execution_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--force",
        action="store_true",
        help="destroy instances that run processes when the new layout cannot keep them "
        "(without it such a GPU is left unchanged and reported blocked); implies "
        "--override-daemon",
    )
    parser.add_argument(
        "-s",
        "--skip-reset",
        dest="skip_reset",
        action="store_true",
        default=env_flag("MIG_PARTED_SKIP_RESET"),
        help="never reset a GPU to activate a pending MIG mode change: a GPU with nothing "
        "else left to do counts as done, as in mig-parted (exit 0, the change reported "
        "pending); one that needs instances after the reset needs a reboot (exit 4) "
        "($MIG_PARTED_SKIP_RESET)",
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="change one GPU after another instead of all in parallel",
    )
    parser.add_argument(
        "--override-daemon",
        dest="override_daemon",
        action="store_true",
        help="change the GPUs even though a migd daemon owns the node (without it the "
        "verb refuses, exit 5): waits for the daemon's change in flight, then tells the "
        "daemon to check the GPUs at once",
    )
    parser.add_argument(
        "--lock-timeout",
        dest="lock_timeout",
        type=float,
        metavar="S",
        default=DEFAULT_WAIT_SECONDS,
        help="how long to wait for another change on this node to end before giving up, "
        f"exit 5 (default {DEFAULT_WAIT_SECONDS:g}; node lock: ${NODE_LOCK_ENV}, else "
        f"{DEFAULT_NODE_LOCK}, or beside the --simulate state)",
    )


def _add_hooks_file(parser: argparse.ArgumentParser, default: str = "") -> None:
    parser.add_argument(
        "-k",
        "--hooks-file",
        dest="hooks_file",
        metavar="FILE",
        default=env("MIGD_HOOKS_FILE", "MIG_PARTED_HOOKS_FILE"),
        help=f"a mig-parted hooks file to run around the change (default: {default}"
        "$MIGD_HOOKS_FILE, $MIG_PARTED_HOOKS_FILE)",
    )


def _add_checkpoint_file(parser: argparse.ArgumentParser, what: str) -> None:
    # Required unless the environment names the file, as in mig-parted.
    parser.add_argument(
        "-f",
        "--checkpoint-file",
        dest="file",
        metavar="FILE",
        default=env("MIG_PARTED_CHECKPOINT_FILE"),
        required=env("MIG_PARTED_CHECKPOINT_FILE") is None,
        help=f"{what} ($MIG_PARTED_CHECKPOINT_FILE)",
    )


def _add_output_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output-format",
        dest="output_format",
        choices=("yaml", "json"),
        default=env("MIG_PARTED_OUTPUT_FORMAT") or "yaml",
        help="yaml (default) or json ($MIG_PARTED_OUTPUT_FORMAT)",
    )


def _parser(
    subparsers: argparse._SubParsersAction,
    name: str,
    summary: str,
    description: str,
    examples: str,
    handler: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=description,
        epilog=f"examples:\n{examples}\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler, needs_nvml=True)
    return parser


# ---------------------------------------------------------------------------
# Helpers shared by the verbs
# ---------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> tuple[Config, str]:
    from migd.core.config import select_config
    from migd.formats.config_file import load_config

    config = load_config(args.config_file)
    return config, select_config(config, args.selected_config, os.environ)


def _say(line: str) -> None:
    print(line, flush=True)


def _options(args: argparse.Namespace, config: Config | None) -> ReconcileOptions:
    from migd.gpu.executor import ReconcileOptions

    return ReconcileOptions(
        force=args.force,
        mode_only=getattr(args, "mode_only", False),
        skip_reset=args.skip_reset,
        parallel=not args.sequential,
        reset_command=reset_command(args, config),
        progress=_say,
    )


def _as_only_writer(args: argparse.Namespace, verb: str) -> contextlib.AbstractContextManager[None]:
    """The node lock around a change (``migd.node.lock``): refused while a daemon owns it.

    ``--force`` overrides the daemon too: a forced change is the operator's explicit word.
    """
    from migd.node.lock import NodeLock, node_lock_path, one_shot_change

    lock = NodeLock(node_lock_path(os.environ, args.simulate))
    return one_shot_change(
        lock,
        f"migd {verb}",
        override_daemon=args.override_daemon or args.force,
        timeout=args.lock_timeout,
        say=_say,
    )


# ---------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------

PLAN_DESCRIPTION = """\
Show what 'migd apply' would do on each GPU, and change nothing (NVML is opened
read-only). For every GPU the selected config covers: the current layout, the wanted
one, and the steps: instances kept (with their processes), destroyed, and created at
explicit placements, MIG mode changes and resets, and anything that blocks the change
because an instance to destroy runs a process.
"""

PLAN_EXAMPLES = """\
  migd plan -f /etc/migd/config.yaml -c all-balanced
  migd plan -f configs/demo.yaml --json | jq '.gpus[] | {gpu, create}'
"""


def run_plan(args: argparse.Namespace) -> int:
    import json

    from migd.core.plan import Action, format_plan, plan_to_dict
    from migd.core.planner import plan_node
    from migd.core.selection import desired_layouts
    from migd.gpu.nvml import NvmlAdapter

    config, name = _load(args)
    with NvmlAdapter.open(read_only=True) as nvml:
        snapshot = nvml.snapshot()
    desired = desired_layouts(snapshot, config.entries(name))
    plan = plan_node(snapshot, desired, force=args.force)
    if args.json:
        covered = [p for p in plan.gpus if p.target is not None]
        doc = {"config": name, "gpus": [plan_to_dict(p) for p in covered]}
        print(json.dumps(doc, indent=2))
    else:
        print(f"plan for mig-config {name!r} from {config.source}:")
        print(format_plan(plan))
    if any(p.action is Action.UNREADABLE for p in plan.gpus):
        return EXIT_FAILED  # what apply would answer: that GPU would fail
    return EXIT_BLOCKED if any(p.blockers for p in plan.gpus) else EXIT_OK


def _whole_node(snapshot: NodeSnapshot, what: str) -> NodeSnapshot:
    """``snapshot`` when every GPU was read; a record of part of the node would lie."""
    lost = [g for g in snapshot.gpus if not g.readable]
    if lost:
        gpus = "; ".join(f"GPU {g.index}: {g.unreadable_reason}" for g in lost)
        raise MigdError(f"cannot {what}: {gpus}")
    return snapshot


# ---------------------------------------------------------------------------
# apply
# ---------------------------------------------------------------------------

APPLY_DESCRIPTION = """\
Bring every GPU the selected config covers to its layout. Instances the new layout can
keep are kept; new ones are created at explicit placements; an instance that runs a
process is never destroyed unless --force is given (the GPU is reported blocked and
left unchanged). GPUs change in parallel; a GPU whose change fails is put back as it
was, the others keep their new layout. A pending MIG mode change (Ampere) is activated
by resetting only the GPUs that need it, with the config's reset command. An invalid
config or an unknown profile touches no GPU at all. A second run does nothing.

One writer per node: while 'migd run' owns the node, apply refuses before touching
anything (exit 5): edit the daemon's config and 'systemctl reload migd' instead, or
give --override-daemon. Another apply or restore in flight is waited for, up to
--lock-timeout seconds.
"""

APPLY_EXAMPLES = """\
  migd apply -f /etc/migd/config.yaml -c all-balanced
  MIG_PARTED_SELECTED_CONFIG=all-1g.18gb migd apply
  migd apply -f /etc/migd/config.yaml -m        only switch MIG on/off
  migd --simulate /tmp/node.json apply -f configs/demo.yaml
"""


def run_apply(args: argparse.Namespace) -> int:
    from migd.gpu.nvml import NvmlAdapter
    from migd.node.change import NodeServices, apply_with_services

    config, name = _load(args)
    # Hooks, GPU client units, post-change refreshes and NFD labels (migd.node.change): the
    # hooks and gpu-clients files are read here, so a bad one touches no GPU.
    services = NodeServices.from_settings(config.settings, hooks_file=args.hooks_file)
    with _as_only_writer(args, "apply"), NvmlAdapter.open() as nvml:
        report = apply_with_services(
            nvml,
            config,
            name,
            _options(args, config),
            services,
            post_boot=True,
            hooks_when_idle=True,
        )
    return _report_change(report, args)


def _report_change(report: ChangeReport, args: argparse.Namespace) -> int:
    """Print what apply or restore did; the exit code, with --skip-reset as mig-parted has it."""
    from migd.gpu.executor import format_result

    result = report.result
    assert result is not None
    skipped = pending_resets_skipped(result, mode_only=args.mode_only) if args.skip_reset else ()
    for gpu, line in zip(result.gpus, format_result(result), strict=True):
        print(f"GPU {gpu.index}: {RESET_SKIPPED_AS_ASKED}" if gpu.index in skipped else line)
    for line in report.lines():
        print(line)
    if skipped:
        print(reset_skipped_summary(skipped))
        return EXIT_OK
    return result.exit_code


# ---------------------------------------------------------------------------
# assert
# ---------------------------------------------------------------------------

ASSERT_DESCRIPTION = """\
Check that every GPU the selected config covers holds its layout (MIG mode, profiles
and counts, compared canonically: 1c.1g.18gb is 1g.18gb, zero counts are ignored).
GPUs the config does not cover are not judged. Exit 0 when all match, 1 otherwise,
listing each difference. With -a, only check that the config is valid for this node
(every profile exists on the GPUs it names, every layout fits). Read-only.
"""

ASSERT_EXAMPLES = """\
  migd assert -f /etc/migd/config.yaml -c all-balanced && echo in sync
  migd assert -f /etc/migd/config.yaml -a        is the config valid here?
  migd assert -m                                 only the MIG mode
"""


def run_assert(args: argparse.Namespace) -> int:
    from migd.core.compare import mismatches
    from migd.core.selection import desired_layouts
    from migd.gpu.nvml import NvmlAdapter

    config, name = _load(args)
    with NvmlAdapter.open(read_only=True) as nvml:
        snapshot = nvml.snapshot()
    desired = desired_layouts(snapshot, config.entries(name))
    if args.valid_config:
        print(f"Selected MIG configuration {name!r} is valid for this node")
        return EXIT_OK
    found = mismatches(snapshot, desired, mode_only=args.mode_only)
    if found:
        print(f"Selected MIG configuration {name!r} is not applied:")
        for m in found:
            what = f"holds {m.holds}, wanted {m.wants}" if m.readable else m.unreadable
            print(f"  GPU {m.index}: {what}")
        return EXIT_FAILED
    print(f"Selected MIG configuration {name!r} currently applied")
    return EXIT_OK


# ---------------------------------------------------------------------------
# export, generate-config
# ---------------------------------------------------------------------------

EXPORT_DESCRIPTION = """\
Print the node's current MIG geometry as a mig-parted config, merged exactly as
mig-parted merges it: GPUs with the same layout share one entry, 'devices: all' when
an entry covers every GPU of its models, device filters only where the node mixes GPU
models. Applying the output reproduces the geometry. Read-only.
"""

EXPORT_EXAMPLES = """\
  migd export > /etc/migd/config.yaml
  migd export -o json -l before-upgrade
"""


def run_export(args: argparse.Namespace) -> int:
    from migd.formats.export import export_config, render
    from migd.gpu.nvml import NvmlAdapter

    with NvmlAdapter.open(read_only=True) as nvml:
        snapshot = nvml.snapshot()
    snapshot = _whole_node(snapshot, "export the node's geometry")
    sys.stdout.write(render(export_config(snapshot, args.config_label), args.output_format))
    return EXIT_OK


GENERATE_DESCRIPTION = """\
Print a config with a layout for every profile the node's GPUs offer, built from their
own profile tables: all-disabled, all-enabled (MIG on, no instances), all-balanced and
one all-<profile> per GPU-instance profile with its maximum count (config names as
mig-parted spells them: '+' becomes '.', so 1g.18gb+me is all-1g.18gb.me). Device
filters are added when the node mixes GPU models. Read-only.
"""

GENERATE_EXAMPLES = """\
  migd generate-config > /etc/migd/config.yaml
  migd generate-config -o json -f /tmp/generated.json
"""


def run_generate(args: argparse.Namespace) -> int:
    from migd.formats.export import generate_config, render
    from migd.gpu.nvml import NvmlAdapter

    with NvmlAdapter.open(read_only=True) as nvml:
        snapshot = nvml.snapshot()
    text = render(generate_config(snapshot), args.output_format)
    if args.output_file:
        with open(args.output_file, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


# ---------------------------------------------------------------------------
# checkpoint, restore
# ---------------------------------------------------------------------------

CHECKPOINT_DESCRIPTION = """\
Save the exact MIG geometry of every MIG-capable GPU (MIG mode, every GPU instance's
profile and placement, every compute instance's profile and placement) to a versioned
JSON file, for 'migd restore'. Read-only.
"""

CHECKPOINT_EXAMPLES = """\
  migd checkpoint -f /var/lib/migd/before-maintenance.json
  migd checkpoint -f - | jq .
"""


def run_checkpoint(args: argparse.Namespace) -> int:
    from migd.core.checkpoint import capture
    from migd.formats import checkpoint_file
    from migd.gpu.nvml import NvmlAdapter

    with NvmlAdapter.open(read_only=True) as nvml:
        snapshot = nvml.snapshot()
    saved = capture(_whole_node(snapshot, "checkpoint the node"))
    checkpoint_file.write(args.file, saved)
    if args.file != "-":
        print(f"saved the geometry of {len(saved.gpus)} GPU(s) to {args.file}")
    return EXIT_OK


RESTORE_DESCRIPTION = """\
Put every GPU recorded in a checkpoint file back to its exact geometry, with explicit
placements (GPU instance ids may differ; profiles and placements match). GPUs are
found by UUID. Instances that match are kept; instances running a process are not
destroyed unless --force is given. A GPU whose restore fails is put back as it was.
Refused while 'migd run' owns the node, as apply is (exit 5; --override-daemon).
"""

RESTORE_EXAMPLES = """\
  migd restore -f /var/lib/migd/before-maintenance.json
"""


def run_restore(args: argparse.Namespace) -> int:
    from migd.core.checkpoint import Checkpoint
    from migd.core.config import DEFAULT_RESET_TIMEOUT
    from migd.core.parted_checkpoint import recorded_modes, resolve
    from migd.core.planner import plan_node
    from migd.formats import checkpoint_file
    from migd.formats.hooks_file import NO_HOOKS, load_hooks
    from migd.gpu.nvml import NvmlAdapter
    from migd.node.change import NodeServices, reconcile_with_services

    saved = checkpoint_file.read(args.file)
    hooks = load_hooks(args.hooks_file) if args.hooks_file else NO_HOOKS
    services = NodeServices(hooks=hooks)
    options = _options(args, None)

    def plan_for(snapshot: NodeSnapshot) -> NodePlan:
        # Restoring is planning towards the recorded geometry, then carrying it out.
        goal = saved if isinstance(saved, Checkpoint) else resolve(saved, snapshot)
        if options.mode_only:
            modes = recorded_modes(goal, snapshot)
            return plan_node(snapshot, modes, force=options.force, mode_only=True)
        return plan_node(snapshot, goal, force=options.force)

    with _as_only_writer(args, "restore"), NvmlAdapter.open() as nvml:
        report = reconcile_with_services(
            nvml,
            plan_for,
            options,
            services,
            name="checkpoint",
            source=args.file,
            post_boot=True,
            reset_timeout=DEFAULT_RESET_TIMEOUT,
            hooks_when_idle=True,
        )
    return _report_change(report, args)


# ---------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    p = _parser(
        subparsers,
        "plan",
        "show what apply would change, and change nothing",
        PLAN_DESCRIPTION,
        PLAN_EXAMPLES,
        run_plan,
    )
    _add_config_flags(p)
    p.add_argument(
        "--force", action="store_true", help="plan as 'apply --force' would (busy instances)"
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")

    p = _parser(
        subparsers,
        "apply",
        "bring the GPUs to the selected config's layout",
        APPLY_DESCRIPTION,
        APPLY_EXAMPLES,
        run_apply,
    )
    _add_config_flags(p)
    _add_mode_only(p, "change")
    _add_execution_flags(p)
    _add_hooks_file(p, default="settings.hooks-file; ")

    p = _parser(
        subparsers,
        "assert",
        "check that the GPUs hold the selected config's layout",
        ASSERT_DESCRIPTION,
        ASSERT_EXAMPLES,
        run_assert,
    )
    _add_config_flags(p)
    _add_mode_only(p, "check")
    p.add_argument(
        "-a",
        "--valid-config",
        dest="valid_config",
        action="store_true",
        default=env_flag("MIG_PARTED_VALID_CONFIG"),
        help="only check that the selected config is valid for this node "
        "($MIG_PARTED_VALID_CONFIG)",
    )

    p = _parser(
        subparsers,
        "export",
        "print the current geometry as a mig-parted config",
        EXPORT_DESCRIPTION,
        EXPORT_EXAMPLES,
        run_export,
    )
    _add_output_format(p)
    p.add_argument(
        "-l",
        "--config-label",
        dest="config_label",
        metavar="LABEL",
        default=env("MIG_PARTED_CONFIG_LABEL") or DEFAULT_LABEL,
        help=f"name of the exported mig-config (default {DEFAULT_LABEL}; $MIG_PARTED_CONFIG_LABEL)",
    )

    p = _parser(
        subparsers,
        "generate-config",
        "print a config with a layout for every profile the GPUs offer",
        GENERATE_DESCRIPTION,
        GENERATE_EXAMPLES,
        run_generate,
    )
    _add_output_format(p)
    p.add_argument(
        "-f",
        "--output-file",
        dest="output_file",
        metavar="FILE",
        default=env("MIG_PARTED_OUTPUT_FILE"),
        help="write to FILE instead of standard output ($MIG_PARTED_OUTPUT_FILE)",
    )

    p = _parser(
        subparsers,
        "checkpoint",
        "save the exact MIG geometry to a file",
        CHECKPOINT_DESCRIPTION,
        CHECKPOINT_EXAMPLES,
        run_checkpoint,
    )
    _add_checkpoint_file(p, "the checkpoint file to write, - for standard output")

    p = _parser(
        subparsers,
        "restore",
        "restore the exact MIG geometry saved by 'migd checkpoint'",
        RESTORE_DESCRIPTION,
        RESTORE_EXAMPLES,
        run_restore,
    )
    _add_checkpoint_file(p, "the checkpoint file to read, - for standard input")
    _add_mode_only(p, "restore")
    _add_execution_flags(p)
    _add_hooks_file(p)
