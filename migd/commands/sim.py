"""``migd sim``: make, inspect and misuse a simulated GPU node (no GPU needed).

The node lives in one JSON file (STATE) that the simulated NVML library reads and
writes; ``migd --simulate STATE <verb>`` (or MIGD_SIMULATE) runs any verb against it.
These sub-verbs take STATE themselves and never open NVML.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from migd.errors import EXIT_OK, InvalidRequest

# The simulator is imported by the handlers that use it, so that building the parser
# for any verb imports nothing of it.
if TYPE_CHECKING:
    from migd.sim.state import CallFault, NodeState
    from migd.sim.store import StateStore

SIM_DESCRIPTION = """\
Manage a simulated GPU node. The node (GPUs, MIG modes, GPU and compute instances,
processes, injected faults) lives in the JSON file STATE; the simulated NVML library
that 'migd --simulate STATE ...' installs under pynvml reads and changes it, so a
daemon, these commands and a test share one node.
"""

SIM_EPILOG = """\
examples:
  migd sim init /tmp/node.json --gpu H200x8
  migd sim init /tmp/mixed.json --gpu A100-SXM4-40GBx4 --gpu L40S --passthrough
  migd sim show /tmp/node.json
  migd sim process /tmp/node.json add --gpu 0 --gi 1 --ci 0 --pid 4242
  migd sim fault /tmp/node.json --call nvmlDeviceCreateGpuInstanceWithPlacement \\
      --code INSUFFICIENT_RESOURCES --after 2 --count 1 --gpu 3
  migd sim reset /tmp/node.json --bus-id 00000000:18:00.0,00000000:2A:00.0
  migd sim reboot /tmp/node.json
  migd sim stats /tmp/node.json --json
"""

_GPU_SPEC = r"^(?P<name>.+?)[xX](?P<count>[0-9]+)$"
_MAX_GPUS = 4096  # what a simulated handle can address


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "sim",
        help="make and inspect a simulated GPU node (no GPU needed)",
        description=SIM_DESCRIPTION,
        epilog=SIM_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="sim_verb", metavar="SUBVERB")
    sub.required = True
    _register_init(sub)
    _register_show(sub)
    _register_process(sub)
    _register_fault(sub)
    _register_reset(sub)
    _register_reboot(sub)
    _register_stats(sub)


def _add(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    handler: Callable[[argparse.Namespace], int],
    help_text: str,
    description: str,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("state", metavar="STATE", help="the simulated node's state file")
    parser.set_defaults(handler=handler)
    return parser


def _store(args: argparse.Namespace) -> StateStore:
    from migd.sim.store import StateStore

    return StateStore(args.state)


def _read(store: StateStore) -> NodeState:
    from migd.sim.state import StateError

    try:
        return store.read()
    except FileNotFoundError:
        raise InvalidRequest(
            f"{store.path}: no simulated node here; create one with 'migd sim init'"
        ) from None
    except (StateError, ValueError) as exc:
        raise InvalidRequest(f"{store.path}: {exc}") from None


def _change(store: StateStore, change: Callable[[NodeState], NodeState]) -> NodeState:
    """Apply ``change`` to the node under the exclusive lock; bad input exits 2."""
    from migd.sim.store import Transaction

    _read(store)  # a clear message for a missing or foreign file

    def run(tx: Transaction) -> NodeState:
        try:
            new = change(tx.node)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        tx.commit(new)
        return new

    return store.transaction(run)


# ---------------------------------------------------------------------------
# init
# ---------------------------------------------------------------------------


def _register_init(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = _add(
        sub,
        "init",
        _run_init,
        "make a fresh simulated node (MIG disabled, no instances)",
        "Write a fresh simulated node to STATE, replacing any node there, and start an\n"
        "empty call log. Every GPU boots with MIG disabled and no instances.",
    )
    parser.add_argument(
        "--gpu",
        action="append",
        required=True,
        metavar="MODEL[xN]",
        help="add N GPUs (default 1) of MODEL, e.g. H200x8; repeat for a mixed node "
        "(an unknown MODEL lists the known ones)",
    )
    parser.add_argument(
        "--no-clients",
        action="store_true",
        help="no system client (nvidia-persistenced, DCGM) holds the GPUs: an Ampere "
        "MIG mode change applies at once instead of waiting for a reset",
    )
    parser.add_argument(
        "--passthrough",
        action="store_true",
        help="behave as GPUs passed through to a VM: a GPU cannot be reset, so an Ampere "
        "mode change needs a reboot (activationStatus RESET_REQUIRED)",
    )
    parser.add_argument(
        "--non-root",
        action="store_true",
        help="the caller is not root: every NVML mutation fails with NO_PERMISSION",
    )


def _gpu_models(spec: str) -> list[str]:
    """Model keys for one ``--gpu`` value: ``H200``, ``H200x8``, ``A100-SXM4-40GBx2``."""
    from migd.formats.gpu_models import ModelDataError, load_model, model_names

    try:
        return [load_model(spec).key]
    except ModelDataError as exc:
        raise InvalidRequest(str(exc)) from None
    except ValueError:
        pass
    match = re.match(_GPU_SPEC, spec)
    if match:
        try:
            key = load_model(match["name"]).key
        except ModelDataError as exc:
            raise InvalidRequest(str(exc)) from None
        except ValueError:
            pass
        else:
            count = int(match["count"])
            if count < 1:
                raise InvalidRequest(f"--gpu {spec}: a node needs at least one GPU of a model")
            return [key] * count
    raise InvalidRequest(f"--gpu {spec}: unknown GPU model; known: {', '.join(model_names())}")


def _run_init(args: argparse.Namespace) -> int:
    import contextlib
    import dataclasses

    from migd.sim import node as sim
    from migd.sim.state import Flags

    keys = [key for spec in args.gpu for key in _gpu_models(spec)]
    if len(keys) > _MAX_GPUS:
        raise InvalidRequest(f"a simulated node holds at most {_MAX_GPUS} GPUs")
    store = _store(args)
    if not os.path.isdir(os.path.dirname(store.path)):
        raise InvalidRequest(f"{store.path}: the directory does not exist")
    flags = Flags(
        system_clients=not args.no_clients, passthrough=args.passthrough, root=not args.non_root
    )
    node = sim.new_node(keys, seed=os.path.basename(store.path), flags=flags)
    # Serials go on from the old node, so a handle a running client kept from it can
    # never name an instance of the new one (as after a reboot).
    with contextlib.suppress(OSError, ValueError):
        node = dataclasses.replace(node, next_serial=store.read().next_serial)
    store.create(node)
    print(f"{store.path}: {len(keys)} GPU(s), MIG disabled, no instances")
    for gpu in node.gpus:
        print(f"  GPU {gpu.index}  {gpu.model:<28} {gpu.bus_id}  {gpu.uuid}")
    return EXIT_OK


# ---------------------------------------------------------------------------
# show
# ---------------------------------------------------------------------------


def _register_show(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = _add(
        sub,
        "show",
        _run_show,
        "show the simulated node",
        "Show every GPU of the node: model, MIG mode (current/pending), GPU instances\n"
        "(id, profile id and name, placement) with their compute instances, processes,\n"
        "and the faults set.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _mode(value: int) -> str:
    return "enabled" if value == 1 else "disabled"


def describe(node: NodeState) -> dict[str, Any]:
    """The node as ``migd sim show --json`` prints it (names resolved from the models)."""
    from migd.core import nvml_codes
    from migd.sim import node as sim

    gpus = []
    for gpu in node.gpus:
        model = sim.model_of(gpu)
        gis = []
        for gi in gpu.gpu_instances:
            gi_model = model.gi_by_id(gi.profile_id)
            cis = []
            for ci in gi.compute_instances:
                ci_model = gi_model.ci_by_id(ci.profile_id) if gi_model else None
                cis.append(
                    {
                        "id": ci.id,
                        "profile_id": ci.profile_id,
                        "profile": ci_model.short_name if ci_model else None,
                        "placement": {"start": ci.start, "size": ci.size},
                        "mig_uuid": sim.mig_uuid(gpu, gi, ci),
                    }
                )
            gis.append(
                {
                    "id": gi.id,
                    "profile_id": gi.profile_id,
                    "profile": gi_model.short_name if gi_model else None,
                    "placement": {"start": gi.start, "size": gi.size},
                    "compute_instances": cis,
                }
            )
        gpus.append(
            {
                "index": gpu.index,
                "model": gpu.model,
                "name": model.name,
                "uuid": gpu.uuid,
                "bus_id": gpu.bus_id,
                "mig_capable": model.mig_capable,
                "mig": {"current": gpu.mig_current, "pending": gpu.mig_pending},
                "lost": gpu.index in node.faults.lost_gpus,
                "gpu_instances": gis,
                "processes": [
                    {"pid": p.pid, "gi": p.gi, "ci": p.ci}
                    for p in node.processes
                    if p.gpu == gpu.index
                ],
            }
        )
    kill = node.faults.kill
    return {
        "flags": {
            "system_clients": node.flags.system_clients,
            "passthrough": node.flags.passthrough,
            "root": node.flags.root,
        },
        "gpus": gpus,
        "faults": {
            "calls": [
                {
                    "call": f.call,
                    "gpu": f.gpu,
                    "code": None if f.code is None else nvml_codes.code_name(f.code),
                    "hang_s": f.hang_s,
                    "latency_ms": f.latency_ms,
                    "after": f.after,
                    "count": f.count,
                    "seen": f.seen,
                }
                for f in node.faults.calls
            ],
            "kill_at": None
            if kill is None
            else {"at": kill.at, "after_effect": kill.after_effect, "seen": kill.seen},
            "lost_gpus": list(node.faults.lost_gpus),
        },
    }


def _text(node: NodeState, path: str) -> list[str]:
    from migd.sim import faults as sim_faults

    flags = node.flags

    def yes(value: bool) -> str:
        return "yes" if value else "no"

    lines = [
        f"{path}: {len(node.gpus)} GPU(s); system clients: {yes(flags.system_clients)}, "
        f"passthrough: {yes(flags.passthrough)}, root: {yes(flags.root)}"
    ]
    for gpu in describe(node)["gpus"]:
        lost = "  LOST" if gpu["lost"] else ""
        lines.append(f"GPU {gpu['index']}  {gpu['name']} ({gpu['model']})  {gpu['bus_id']}{lost}")
        if not gpu["mig_capable"]:
            lines.append("  MIG: not supported")
        else:
            mig = gpu["mig"]
            pending = (
                "" if mig["pending"] == mig["current"] else f" (pending: {_mode(mig['pending'])})"
            )
            lines.append(f"  MIG: {_mode(mig['current'])}{pending}")
        for gi in gpu["gpu_instances"]:
            p = gi["placement"]
            lines.append(
                f"  GI {gi['id']:>2}  profile {gi['profile_id']:>2}  {gi['profile'] or '?':<16}"
                f" placement {p['start']}:{p['size']}"
            )
            for ci in gi["compute_instances"]:
                c = ci["placement"]
                lines.append(
                    f"      CI {ci['id']}  profile {ci['profile_id']}  {ci['profile'] or '?':<16}"
                    f" placement {c['start']}:{c['size']}  {ci['mig_uuid']}"
                )
        for proc in gpu["processes"]:
            where = "whole GPU" if proc["gi"] is None else f"GI {proc['gi']}"
            if proc["ci"] is not None:
                where += f" CI {proc['ci']}"
            lines.append(f"  process {proc['pid']} on {where}")
    if node.faults.calls or node.faults.kill or node.faults.lost_gpus:
        lines.append("faults:")
        lines.extend(f"  {sim_faults.describe(f)}" for f in node.faults.calls)
        kill = node.faults.kill
        if kill is not None:
            when = "after it takes effect" if kill.after_effect else "before it takes effect"
            lines.append(f"  SIGKILL at mutating call {kill.at} ({kill.seen} seen), {when}")
        if node.faults.lost_gpus:
            lines.append(f"  lost GPU(s): {', '.join(map(str, node.faults.lost_gpus))}")
    return lines


def _run_show(args: argparse.Namespace) -> int:
    import json

    store = _store(args)
    node = _read(store)
    if args.json:
        print(json.dumps(describe(node), indent=2))
    else:
        print("\n".join(_text(node, store.path)))
    return EXIT_OK


# ---------------------------------------------------------------------------
# process
# ---------------------------------------------------------------------------


def _register_process(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = _add(
        sub,
        "process",
        _run_process,
        "start or stop a simulated process on a GPU, GI or CI",
        "A simulated process makes its instance busy: destroying it (or the GI holding\n"
        "it) fails with IN_USE, a MIG mode change on its GPU stays pending, and a reset\n"
        "of its GPU is refused.",
    )
    actions = parser.add_subparsers(dest="process_action", metavar="ACTION")
    actions.required = True
    add = actions.add_parser("add", help="start a process")
    add.add_argument("--gpu", type=int, required=True, metavar="I", help="GPU index")
    add.add_argument("--gi", type=int, metavar="ID", help="GPU instance id (MIG on)")
    add.add_argument("--ci", type=int, metavar="ID", help="compute instance id in that GI")
    add.add_argument("--pid", type=int, required=True, metavar="N")
    remove = actions.add_parser("remove", help="stop a process")
    remove.add_argument("--pid", type=int, required=True, metavar="N")


def _run_process(args: argparse.Namespace) -> int:
    from migd.sim import node as sim

    store = _store(args)
    if args.process_action == "add":
        if args.ci is not None and args.gi is None:
            raise InvalidRequest("--ci needs --gi")
        _change(store, lambda n: sim.add_process(n, args.pid, args.gpu, args.gi, args.ci))
        print(f"process {args.pid} started on GPU {args.gpu}")
    else:
        _change(store, lambda n: sim.remove_process(n, args.pid))
        print(f"process {args.pid} stopped")
    return EXIT_OK


# ---------------------------------------------------------------------------
# fault
# ---------------------------------------------------------------------------

FAULT_DESCRIPTION = """\
Set a fault on the node. Faults count across every process that uses STATE, from
when they are set.

  --call F --code C   calls to F return C instead of reaching the driver
  --call F --hang S   a call to F sleeps S seconds first (default: once)
  --call F --latency MS   every call to F takes MS milliseconds longer
      with --after N / --count K: calls N+1 .. N+K to F are affected (by default every
      call for --code and --latency, one call for --hang); --gpu I: only calls on GPU I.
      F is the C symbol as pynvml fetches it (nvmlDeviceCreateGpuInstanceWithPlacement,
      nvmlDeviceGetCount_v2), or * for every call. C is a return name without its
      prefix (INSUFFICIENT_RESOURCES, IN_USE, UNKNOWN) or its number. Delays are spent
      outside the state lock, so calls on other GPUs go on meanwhile.
  --kill-at N         SIGKILL the process making the N-th mutating NVML call from now
                      (set/destroy/create calls, counted across processes), before the
                      call takes effect; with --after-effect, once its change is written
                      but before it returns
  --lost-gpu I        GPU I falls off the bus: every call on it returns GPU_IS_LOST
  --clear             remove every fault (applied first when combined)
"""


def _register_fault(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = _add(sub, "fault", _run_fault, "inject failures, delays, crashes", FAULT_DESCRIPTION)
    parser.add_argument("--call", metavar="F", help="the C symbol to act on, or *")
    effect = parser.add_mutually_exclusive_group()
    effect.add_argument("--code", metavar="C", help="return code instead of the call")
    effect.add_argument("--hang", type=float, metavar="S", help="sleep S seconds before the call")
    effect.add_argument("--latency", type=float, metavar="MS", help="add MS milliseconds")
    parser.add_argument("--after", type=int, default=0, metavar="N", help="let N calls pass first")
    parser.add_argument("--count", type=int, metavar="K", help="affect K calls")
    parser.add_argument("--gpu", type=int, metavar="I", help="only calls on GPU I")
    parser.add_argument(
        "--kill-at", type=int, metavar="N", help="SIGKILL at the N-th mutating call"
    )
    parser.add_argument(
        "--after-effect",
        action="store_true",
        help="with --kill-at: kill once the call's change is written, before it returns",
    )
    parser.add_argument("--lost-gpu", type=int, metavar="I", help="GPU I is lost")
    parser.add_argument("--clear", action="store_true", help="remove every fault")


def _call_fault(args: argparse.Namespace) -> CallFault | None:
    from migd.core import nvml_codes
    from migd.sim.state import CallFault
    from migd.sim.symbols import check_call_name

    has_effect = args.code is not None or args.hang is not None or args.latency is not None
    if args.call is None:
        if has_effect or args.count is not None or args.after or args.gpu is not None:
            raise InvalidRequest(
                "--code, --hang, --latency, --after, --count and --gpu need --call"
            )
        return None
    if not has_effect:
        raise InvalidRequest("--call needs one of --code, --hang, --latency")
    try:
        call = check_call_name(args.call)
        code = None if args.code is None else nvml_codes.parse_code(args.code)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    if code == nvml_codes.SUCCESS:
        raise InvalidRequest("--code SUCCESS would not be a fault")
    if args.after < 0 or (args.count is not None and args.count < 1):
        raise InvalidRequest("--after must be >= 0 and --count >= 1")
    if (args.hang is not None and args.hang < 0) or (args.latency is not None and args.latency < 0):
        raise InvalidRequest("--hang and --latency must be >= 0")
    count = args.count
    if count is None and args.hang is not None:
        count = 1  # "a call hangs": once, unless told otherwise
    return CallFault(
        call=call,
        gpu=args.gpu,
        code=code,
        hang_s=args.hang or 0.0,
        latency_ms=args.latency or 0.0,
        after=args.after,
        count=count,
    )


def _run_fault(args: argparse.Namespace) -> int:
    from migd.sim import faults as sim_faults

    fault = _call_fault(args)
    if args.after_effect and args.kill_at is None:
        raise InvalidRequest("--after-effect goes with --kill-at")
    if not (fault or args.kill_at is not None or args.lost_gpu is not None or args.clear):
        raise InvalidRequest("nothing to do: give --call ..., --kill-at, --lost-gpu or --clear")

    def change(node: NodeState) -> NodeState:
        if args.clear:
            node = sim_faults.clear(node)
        if fault is not None:
            node = sim_faults.add_call_fault(node, fault)
        if args.kill_at is not None:
            node = sim_faults.set_kill(node, args.kill_at, args.after_effect)
        if args.lost_gpu is not None:
            node = sim_faults.add_lost_gpu(node, args.lost_gpu)
        return node

    node = _change(_store(args), change)
    if args.clear:
        print("faults cleared")
    if fault is not None:
        print(f"fault set: {sim_faults.describe(node.faults.calls[-1])}")
    if args.kill_at is not None:
        print(f"SIGKILL at mutating call {args.kill_at} from now")
    if args.lost_gpu is not None:
        print(f"GPU {args.lost_gpu} is lost")
    return EXIT_OK


# ---------------------------------------------------------------------------
# reset
# ---------------------------------------------------------------------------


def _register_reset(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = _add(
        sub,
        "reset",
        _run_reset,
        "reset GPUs, as 'nvidia-smi -r -i' does",
        "Reset GPUs as 'nvidia-smi -r -i' does: apply each pending MIG mode and destroy\n"
        "every GPU and compute instance. Refused (exit 1, nothing changed) while a\n"
        "process runs on one of them, for a lost GPU, and on a node made with\n"
        "--passthrough (a VM must reboot).",
    )
    parser.add_argument(
        "--gpu", action="append", default=[], metavar="I", help="GPU index (repeat, or I,J,...)"
    )
    parser.add_argument(
        "--bus-id",
        action="append",
        default=[],
        metavar="ID",
        help="PCI bus id, e.g. 00000000:18:00.0 (repeat, or ID,ID,...)",
    )


def _split(values: list[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _run_reset(args: argparse.Namespace) -> int:
    from migd.sim import node as sim
    from migd.sim.store import Transaction

    store = _store(args)
    node = _read(store)
    indices: list[int] = []
    for text in _split(args.gpu):
        try:
            indices.append(int(text))
        except ValueError:
            raise InvalidRequest(f"--gpu {text}: not a GPU index") from None
    for text in _split(args.bus_id):
        gpu = sim.find_gpu_by_bus_id(node, text)
        if gpu is None:
            raise InvalidRequest(f"--bus-id {text}: no GPU with this PCI bus id")
        indices.append(gpu.index)
    if not indices:
        raise InvalidRequest("name the GPUs to reset with --gpu or --bus-id")

    def run(tx: Transaction) -> tuple[NodeState, NodeState]:
        before = tx.node
        after = sim.reset_gpus(before, indices)
        tx.commit(after)
        return before, after

    before, after = store.transaction(run)
    for index in sorted(set(indices)):
        old, new = before.gpus[index], after.gpus[index]
        gone = len(old.gpu_instances)
        print(
            f"GPU {index} ({new.bus_id}) reset: MIG {_mode(new.mig_current)}"
            + (f", {gone} GPU instance(s) destroyed" if gone else "")
        )
    return EXIT_OK


# ---------------------------------------------------------------------------
# reboot
# ---------------------------------------------------------------------------


def _register_reboot(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    _add(
        sub,
        "reboot",
        _run_reboot,
        "reboot the node: pending MIG modes take effect, every instance is gone",
        "What a reboot of the machine does to its GPUs: each pending MIG mode becomes the\n"
        "current one (the way to finish a mode change on a --passthrough node, which\n"
        "cannot reset a GPU), every GPU and compute instance is gone, and so is every\n"
        "simulated process. MIG mode persists. Faults and the call log stay.",
    )


def _run_reboot(args: argparse.Namespace) -> int:
    from migd.sim import node as sim
    from migd.sim.store import Transaction

    store = _store(args)
    _read(store)

    def run(tx: Transaction) -> tuple[NodeState, NodeState]:
        before = tx.node
        after = sim.reboot(before)
        tx.commit(after)
        return before, after

    before, after = store.transaction(run)
    print(f"{store.path}: rebooted, {len(before.processes)} process(es) gone")
    for old, new in zip(before.gpus, after.gpus, strict=True):
        gone = len(old.gpu_instances)
        changed = " (was pending)" if old.mig_current != new.mig_current else ""
        print(
            f"  GPU {new.index}  MIG {_mode(new.mig_current)}{changed}"
            + (f", {gone} GPU instance(s) gone" if gone else "")
        )
    return EXIT_OK


# ---------------------------------------------------------------------------
# stats
# ---------------------------------------------------------------------------


def _register_stats(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = _add(
        sub,
        "stats",
        _run_stats,
        "count the NVML calls made on the node",
        "Count the NVML calls every process made on the node since 'migd sim init',\n"
        "per C symbol and result.",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"<C symbol>": {"<RESULT>": count}} (RESULT as SUCCESS, IN_USE, ...)',
    )


def _run_stats(args: argparse.Namespace) -> int:
    import json

    store = _store(args)
    _read(store)
    stats = store.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
        return EXIT_OK
    if not stats:
        print("no NVML calls yet")
    for symbol, results in stats.items():
        total = sum(results.values())
        detail = ", ".join(f"{name} {n}" for name, n in results.items())
        print(f"{total:>8}  {symbol}  ({detail})")
    return EXIT_OK
