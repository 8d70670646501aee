"""`migd validate`: check a config file without touching any GPU."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from migd.commands.common import add_config_file, add_selected_config
from migd.errors import EXIT_INVALID, EXIT_OK, ConfigError, Problem

# The config reader is imported by the handler, so that building the parser for any verb
# stays cheap.
if TYPE_CHECKING:
    from migd.core.config import Config

DESCRIPTION = """\
Check a migd config file (mig-parted's v1 format plus migd's settings) and report
every problem in it, each as FILE:LINE:COL: key.path: message. Nothing is read from
or done to the GPUs, so it is safe anywhere: in CI, in a pre-commit hook, on a laptop.

If -c, MIGD_SELECTED_CONFIG or MIG_PARTED_SELECTED_CONFIG names a config, it must
exist in the file. With --gpu-model, every MIG-enabled entry of the selected config
(of every config when none is selected) whose device filters admit that GPU is also
checked against the model's own profile table: each profile exists, the counts fit,
and one placement holds them all. Exit status: 0 valid, 2 invalid.
"""

EPILOG = """\
examples:
  migd validate -f /etc/migd/config.yaml
  migd validate -f configs/config.yaml -c all-balanced
  migd validate -f configs/demo.yaml --gpu-model H200
  kubectl get cm mig-parted-config -o jsonpath='{.data.config\\.yaml}' | migd validate -f -

output on error (one line per problem, on stderr):
  config.yaml:13:9: mig-configs.all-balanced[1].mig-devices."1g.18gbb": '1g.18gbb' is not \
a MIG profile name; …
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check a config file and report every problem in it",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_file(parser)
    add_selected_config(parser, use="the config to select; it must exist in the file")
    parser.add_argument(
        "--gpu-model",
        metavar="MODEL",
        default=None,
        help="also check the layouts against this GPU model's profile table, "
        "e.g. H200, A100-SXM4-40GB, A30 (the models 'migd sim init --gpu' knows)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from migd.core.config import find_selection
    from migd.formats.config_file import load_config
    from migd.formats.files import ownership_warning

    # A file a root daemon would refuse is still checked: its owner and mode are a
    # matter of where it is installed, which is often not where it is validated.
    try:
        config = load_config(args.config_file, enforce_ownership=False)
        selection = find_selection(config, args.selected_config, os.environ)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    if args.gpu_model is not None:
        names = (selection.name,) if selection is not None else config.names
        problems = _model_problems(config, names, args.gpu_model)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            return EXIT_INVALID
    warning = ownership_warning(args.config_file)
    if warning is not None:
        print(
            f"{args.config_file}: warning: migd running as root would refuse this file: {warning}",
            file=sys.stderr,
        )
    count = len(config.mig_configs)
    summary = f"{config.source}: valid, {count} mig-config{'' if count == 1 else 's'}"
    if selection is not None:
        summary += f"; selected: {selection.name} ({selection.origin})"
    if args.gpu_model is not None:
        summary += f"; fits {args.gpu_model}"
    print(summary)
    return EXIT_OK


def _model_problems(config: Config, names: tuple[str, ...], model_name: str) -> list[str]:
    """Problems of the named configs' layouts on one GPU of ``model_name``, as lines."""
    # Selection, the planner's rules and the model tables are imported here, so plain
    # validation stays as light as it is.
    from migd.core.gpu_models import blank_gpu
    from migd.core.selection import model_fit_problems
    from migd.formats.gpu_models import load_model

    try:
        gpu = blank_gpu(load_model(model_name))
    except ValueError as exc:
        return [f"--gpu-model: {exc}"]
    return [
        str(Problem(config.source, entry.line, entry.column, entry.path, f"on {gpu.name}: {text}"))
        for name in names
        for entry, text in model_fit_problems(config.entries(name), gpu)
    ]
