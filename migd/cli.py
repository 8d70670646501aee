"""The `migd` command: global options, then one verb.

Verbs live in small modules under ``migd/commands/`` (as mig-parted keeps one package
per verb): each parses its own flags and calls the library; no decision is made here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from migd import __version__
from migd.commands.common import env_flag
from migd.commands.mig_parted import normalize_argv, program_name, verb_index
from migd.errors import EXIT_FAILED, EXIT_INVALID, MigdError
from migd.log import setup_logging

# Each module offers ``register(subparsers)``, adding these verbs with a ``handler``
# default. A command names its verb, so only that module's parsers are built: building
# every verb's flags costs each one-shot command and the daemon's start a few ms.
# ``migd --help``, no verb or an unknown one build them all, so the list is complete.
VERB_MODULES: dict[str, tuple[str, ...]] = {
    "migd.commands.validate": ("validate",),
    "migd.commands.geometry": (
        "plan",
        "apply",
        "assert",
        "export",
        "generate-config",
        "checkpoint",
        "restore",
    ),
    "migd.commands.daemon": ("run", "reload", "status", "install-unit"),
    "migd.commands.sim": ("sim",),
}

DESCRIPTION = """\
migd owns the MIG (Multi-Instance GPU) geometry of an NVIDIA GPU node.

It reads a declarative YAML file (mig-parted's format, unchanged), brings every GPU
to the layout the file selects with explicit placements, never destroys an instance
that runs a process unless forced, and puts a GPU back as it was when a change fails.
"""

EPILOG = """\
examples:
  migd validate -f /etc/migd/config.yaml          check a config file
  migd plan -f /etc/migd/config.yaml -c all-balanced
                                                  show what apply would change
  migd apply -f /etc/migd/config.yaml             apply the selected config
  migd run                                        run as the node daemon (systemd)
  migd sim init /tmp/node.json --gpu H200x8       make a simulated 8xH200 node
  migd --simulate /tmp/node.json apply -f configs/demo.yaml
                                                  apply against the simulated node

exit codes: 0 ok or nothing to do, 1 failed (GPU restored), 2 invalid input,
            3 blocked by running processes, 4 reboot required,
            5 the node is owned by the migd daemon or busy with another change
"""


def build_parser(prog: str = "migd", verb: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with ``verb`` (one of ``VERB_MODULES``) only that verb's module."""
    modules = [m for m, verbs in VERB_MODULES.items() if verb in verbs] or list(VERB_MODULES)
    parser = argparse.ArgumentParser(
        prog=prog,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--version", action="version", version=f"migd {__version__}")
    parser.add_argument(
        "-d",
        "--debug",
        action="store_true",
        default=env_flag("MIG_PARTED_DEBUG"),
        help="log debug detail ($MIG_PARTED_DEBUG)",
    )
    parser.add_argument(
        "--simulate",
        metavar="STATE",
        default=os.environ.get("MIGD_SIMULATE") or None,
        help="run against the simulated node in STATE instead of the NVIDIA driver "
        "(also MIGD_SIMULATE); create one with 'migd sim init'",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Called as nvidia-mig-parted, migd answers to mig-parted's spellings and name.
    prog = program_name(sys.argv[0]) if argv is None else "migd"
    words = normalize_argv(sys.argv[1:] if argv is None else argv)
    at = verb_index(words)
    parser = build_parser(prog, words[at] if at is not None and at < len(words) else None)
    args = parser.parse_args(words)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_INVALID
    setup_logging(debug=args.debug)
    if args.simulate and getattr(args, "needs_nvml", False):
        from migd import sim

        sim.activate(args.simulate)
    try:
        code = int(args.handler(args))
        sys.stdout.flush()  # a closed pipe is found here, not in Python's exit
        return code
    except MigdError as exc:
        logging.getLogger("migd").error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader went away (`migd status | head`): what it did not read is not an
        # error of migd's. Python would complain again at exit while flushing stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
