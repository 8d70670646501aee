"""The daemon verbs: run, reload, status, install-unit.

``run`` sets up the daemon's edges (runtime directory, systemd notifier, observers,
NVML) and hands over to ``migd.daemon.loop.Daemon``; the others are small clients of the
runtime directory the daemon keeps (``migd.daemon.runtime``).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from migd.commands.common import add_config_file, add_selected_config, reset_command
from migd.daemon import default_runtime_dir
from migd.errors import EXIT_FAILED, EXIT_INVALID, EXIT_OK, ConfigError, MigdError
from migd.node import UNIT_NAME

# The daemon is imported by the handlers that use it, so that building the parser for
# any verb imports nothing of it (nor prometheus_client, http.server or watchdog).
if TYPE_CHECKING:
    import socket

    from migd.daemon.metrics import MetricsEndpoint
    from migd.daemon.view import DaemonObserver


# How long `migd reload` waits by default: the unit's TimeoutStartSec, which also
# bounds ExecReload.
RELOAD_TIMEOUT_SECONDS = 600.0
RELOAD_POLL_SECONDS = 0.05
DEFAULT_UNIT_DIR = "/etc/systemd/system"


def _add_runtime_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runtime-dir",
        metavar="DIR",
        default=default_runtime_dir(os.environ),
        help="the daemon's runtime directory: pid file, state file, reload answers "
        "(default: $MIGD_RUNTIME_DIR or /run/migd)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    run = subparsers.add_parser(
        "run",
        help="run as the node daemon (under systemd: Type=notify)",
        description=RUN_DESCRIPTION,
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_file(run, use="watched for changes")
    add_selected_config(run)
    run.add_argument(
        "--boot-policy",
        choices=("continue", "strict"),
        default=os.environ.get("MIGD_BOOT_POLICY") or None,
        help="what a failed first reconcile does: continue (report ready, degraded) or "
        "strict (exit non-zero); overrides boot-policy: in the file, and is the only "
        "way to choose strict for a file that is invalid ($MIGD_BOOT_POLICY)",
    )
    run.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        default=None,
        help="serve Prometheus metrics on HOST:PORT ([V6]:PORT for IPv6; '' = no endpoint); "
        "overrides settings.metrics.address (default 127.0.0.1:9402)",
    )
    _add_runtime_dir(run)
    run.set_defaults(handler=run_daemon, needs_nvml=True)

    reload = subparsers.add_parser(
        "reload",
        help="make the running daemon reload its config and wait for the outcome",
        description=RELOAD_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    reload.add_argument(
        "--timeout",
        type=float,
        default=RELOAD_TIMEOUT_SECONDS,
        metavar="S",
        help=f"give up after S seconds (default {RELOAD_TIMEOUT_SECONDS:g})",
    )
    _add_runtime_dir(reload)
    reload.set_defaults(handler=run_reload)

    status = subparsers.add_parser(
        "status",
        help="show the running daemon's view of the node",
        description=STATUS_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("--json", action="store_true", help="print the state file's JSON")
    _add_runtime_dir(status)
    status.set_defaults(handler=run_status)

    install = subparsers.add_parser(
        "install-unit",
        help="write migd.service for this migd installation",
        description=INSTALL_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    install.add_argument(
        "--unit-dir",
        metavar="DIR",
        default=DEFAULT_UNIT_DIR,
        help=f"where to write {UNIT_NAME} (default {DEFAULT_UNIT_DIR})",
    )
    install.add_argument(
        "--dry-run", action="store_true", help="print the unit instead of writing it"
    )
    install.add_argument(
        "-f",
        "--config-file",
        dest="config_file",
        metavar="FILE",
        help="pass -f FILE to `migd run` (default: the daemon's default)",
    )
    install.add_argument(
        "-c",
        "--selected-config",
        dest="selected_config",
        metavar="NAME",
        help="pass -c NAME to `migd run`",
    )
    install.add_argument(
        "--setenv",
        action="append",
        default=[],
        metavar="VAR=VALUE",
        help="add Environment=VAR=VALUE to the unit (repeatable)",
    )
    install.set_defaults(handler=run_install_unit)


# ---------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------

RUN_DESCRIPTION = """\
Run as the node daemon. At start: read the config, bring every GPU to its layout,
then tell systemd READY=1 (Type=notify), so units ordered after migd.service start
only once the GPUs are right. Then keep them right:

  - config file edits (in place, editor atomic saves, Kubernetes ConfigMap updates)
    are applied within a second; a touch that leaves the content unchanged does nothing;
  - SIGHUP, 'migd reload' and 'systemctl reload migd' reload the config;
  - every drift-check interval (and at once on SIGUSR1) the GPUs are compared with
    the config, what changed is named per GPU and, under policy repair, put back
    (policy report only reports); a GPU that drifts again after max-repairs repairs
    within the window is contested: left alone until a reload or a config edit;
  - a failed reconcile is retried with exponential backoff, without any edit.

An invalid config is refused with every problem as FILE:LINE:COL: key: message: the
last good config stays in force and no GPU is touched. An invalid config at start,
or a first reconcile that fails: boot-policy continue (the default) reports ready
with a degraded status, strict exits non-zero (2 for an invalid config).

systemd sees STATUS= lines, RELOADING=1 and READY=1 around every reload,
EXTEND_TIMEOUT_USEC during long changes, WATCHDOG=1 when WatchdogSec= is set (withheld
while an NVML call is stuck, so systemd restarts a daemon wedged in the driver) and
STOPPING=1 on SIGTERM. A stop lets a change in progress finish or roll back, starts
nothing new (no retry, reload or drift repair), then exits 0.

The daemon owns the node: each of its changes holds the node lock (/run/migd/node.lock,
$MIGD_NODE_LOCK), and while it runs one-shot 'apply' and 'restore' (also as
nvidia-mig-parted) refuse with exit 5 unless given --override-daemon.
"""

RUN_EPILOG = """\
examples:
  migd run                                          as systemd runs it
  migd run -f /etc/migd/config.yaml -c all-balanced
  migd --simulate /var/tmp/node.json run -f configs/demo.yaml --runtime-dir /var/tmp/migd
"""


def run_daemon(args: argparse.Namespace) -> int:
    from migd.core.config import Settings
    from migd.daemon.listen import listen_for_metrics
    from migd.daemon.loop import Daemon, DaemonOptions, Loaded, NvmlGpus, load_selected
    from migd.daemon.notify import Notifier, watchdog_interval
    from migd.daemon.runtime import RuntimeDir
    from migd.daemon.view import LateObserver
    from migd.log import setup_logging
    from migd.node.lock import NodeLock, node_lock_path

    environ = dict(os.environ)
    notifier = Notifier.from_environ(environ)
    if notifier.enabled or environ.get("JOURNAL_STREAM"):
        # Under systemd every line carries its priority, so journald keeps levels.
        setup_logging(debug=args.debug, priority_prefix=True)
    if args.config_file == "-":
        raise MigdError("migd run needs a config file it can watch; -f - is for one-shot verbs")
    config_file = os.path.abspath(args.config_file)
    runtime = RuntimeDir(Path(args.runtime_dir))
    lock = runtime.claim(os.getpid())
    node = NodeLock(node_lock_path(environ, args.simulate))
    metrics: MetricsEndpoint | None = None
    listener: socket.socket | None = None
    try:
        owner = node.claim_daemon(os.getpid(), config_file)
    except MigdError:
        lock.release()
        raise
    try:
        try:
            startup: Loaded | ConfigError = load_selected(
                config_file, args.selected_config, environ
            )
        except ConfigError as exc:
            startup = exc
        observers: list[DaemonObserver] = []
        # Observers beyond the state file and STATUS= go here. The metrics endpoint
        # follows the settings read at start (an invalid file: the defaults).
        settings = startup.settings if isinstance(startup, Loaded) else Settings()
        # Its address is bound now (a taken port is reported at once, an early scrape
        # waits in the backlog); the server and prometheus_client are loaded after
        # READY=1, and hear everything that happened before from a stand-in.
        listener = listen_for_metrics(settings.metrics, args.metrics_address)
        after_start = []
        if listener is not None:
            late = LateObserver()
            observers.append(late)

            def start_metrics() -> None:
                nonlocal metrics, listener
                from migd.daemon.metrics import MetricsObserver, start_endpoint

                # Told everything so far before the server answers the scrapes waiting.
                observer = MetricsObserver()
                late.attach(observer)
                metrics = start_endpoint(
                    settings.metrics, args.metrics_address, listener=listener, observer=observer
                )
                listener = None  # the endpoint owns it now (and closed it if it failed)
                if metrics is None:
                    late.drop()  # logged; keep nothing for an endpoint that will not come

            after_start.append(start_metrics)

        options = DaemonOptions(
            config_file=config_file,
            config_name=args.selected_config,
            environ=environ,
            boot_policy=args.boot_policy,
            reset_command=functools.partial(reset_command, args),
            watchdog_interval=watchdog_interval(environ, os.getpid()),
        )
        daemon = Daemon(
            options,
            NvmlGpus(node=node),
            startup,
            runtime=runtime,
            notifier=notifier,
            observers=observers,
            after_start=after_start,
        )
        return daemon.run()
    finally:
        if metrics is not None:
            metrics.server.stop()
        if listener is not None:
            listener.close()
        notifier.close()
        owner.release()
        lock.release()


# ---------------------------------------------------------------------------
# reload
# ---------------------------------------------------------------------------

RELOAD_DESCRIPTION = """\
Make the daemon running on the runtime directory reload its config file, and wait
for the outcome of that reload (one that read the file after this request):

  exit 0   the config is valid and applied (or already in force)
  exit 2   the config is invalid or does not fit this node: every problem is printed
           on stderr as FILE:LINE:COL: key: message; the last good config stays
  exit 1/3/4  applying failed / is blocked by running processes / needs a reboot

This is the unit's ExecReload=, so 'systemctl reload migd' fails visibly on a bad
edit (even one the file watcher had already refused).
"""


def run_reload(args: argparse.Namespace) -> int:
    from migd.daemon.runtime import RuntimeDir, pid_alive

    runtime = RuntimeDir(Path(args.runtime_dir))
    pid = runtime.read_pid()
    try:
        token = runtime.request_reload()
    except OSError as exc:
        raise MigdError(f"cannot ask for a reload in {runtime.reload_dir}: {exc}") from None
    try:
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + args.timeout
        while (answer := runtime.read_answer(token)) is None:
            if not pid_alive(pid):
                raise MigdError(f"migd (pid {pid}) exited before answering the reload")
            if time.monotonic() > deadline:
                raise MigdError(f"migd (pid {pid}) did not answer within {args.timeout:g} s")
            time.sleep(RELOAD_POLL_SECONDS)
    finally:
        runtime.forget(token)
    if answer.ok:
        print(f"reloaded: {answer.message}")
        return EXIT_OK
    what = "config refused" if answer.exit_code == EXIT_INVALID else "reload failed"
    print(f"migd reload: {what}:", file=sys.stderr)
    for line in answer.message.splitlines():
        print(f"  {line}", file=sys.stderr)
    return answer.exit_code


# ---------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------

STATUS_DESCRIPTION = """\
Show the running daemon's view of the node, from the state file it keeps in its
runtime directory: the selected config, each GPU (in sync, blocked, failed, reboot
required, with the reason), the last reconcile, the last reload and the last error.

Exit status: 0 when the daemon runs and is ready (every GPU in sync), 1 otherwise.
"""


def _time(value: float | None) -> str:
    if value is None:
        return "never"
    return datetime.datetime.fromtimestamp(value).isoformat(sep=" ", timespec="seconds")


def format_status(doc: dict[str, Any], running: bool) -> list[str]:
    """``migd status`` as text, from the state document."""
    who = f"migd (pid {doc['pid']})" if running else "migd (not running; last state)"
    lines = [f"{who}: {doc['status']}"]
    config = doc.get("selected_config") or "none"
    digest = (doc.get("config_digest") or "")[:12]
    lines.append(
        f"config:     {doc['config_file']} ({config}{', sha256 ' + digest if digest else ''})"
    )
    reload = "ok" if doc["last_reload_ok"] else "refused"
    lines.append(
        f"reload:     {reload} (generation {doc['reload_generation']}, "
        f"last accepted {_time(doc['last_reload_success_time'])})"
    )
    for problem in (doc.get("last_reload_error") or "").splitlines():
        lines.append(f"            {problem}")
    lines.append(
        f"reconcile:  last {_time(doc['last_reconcile_time'])}, "
        f"last success {_time(doc['last_success_time'])}"
    )
    if doc.get("last_error"):
        lines.append(f"last error: {doc['last_error']}")
    for gpu in doc.get("gpus", []):
        state = "in sync" if gpu["in_sync"] else gpu["outcome"].replace("_", " ")
        layout = gpu.get("desired") or gpu.get("current") or ""
        detail = gpu["reason"] if not gpu["in_sync"] else layout
        lines.append(f"GPU {gpu['index']:<3} {state:<16} {detail}")
    return lines


def run_status(args: argparse.Namespace) -> int:
    from migd.daemon.runtime import NotRunning, RuntimeDir

    runtime = RuntimeDir(Path(args.runtime_dir))
    doc = runtime.read_state()
    try:
        running = runtime.read_pid() == doc.get("pid")
    except NotRunning:
        running = False
    if args.json:
        print(json.dumps({**doc, "running": running}, indent=2, ensure_ascii=False))
    else:
        print("\n".join(format_status(doc, running)))
    return EXIT_OK if running and doc.get("phase") == "ready" else EXIT_FAILED


# ---------------------------------------------------------------------------
# install-unit
# ---------------------------------------------------------------------------

INSTALL_DESCRIPTION = """\
Write migd.service for the migd that runs this command: ExecStart= and ExecReload=
name its absolute path, so a migd installed in a virtualenv needs no hand editing.
With the global --simulate STATE the unit runs against that simulated node
(Environment=MIGD_SIMULATE=STATE, its directory writable), for demos and tests.
Then: systemctl daemon-reload && systemctl enable --now migd
"""


def migd_command() -> tuple[str, ...]:
    """How to run the migd that runs now: its script, else ``python -m migd``."""
    argv0 = sys.argv[0]
    if os.path.basename(argv0) == "migd" and os.path.isfile(argv0):
        return (os.path.abspath(argv0),)
    found = shutil.which("migd")
    if found:
        return (os.path.abspath(found),)
    return (sys.executable, "-m", "migd")


def _interpreter(script: str) -> str | None:
    """The interpreter named on a script's #! line."""
    try:
        with open(script, "rb") as f:
            first = f.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    parts = first[2:].decode(errors="replace").split()
    return parts[0] if parts else None


def run_install_unit(args: argparse.Namespace) -> int:
    from migd.formats.files import atomic_write
    from migd.node.unit import UnitOptions, render_unit

    command = migd_command()
    run_args: list[str] = []
    config_file = os.path.abspath(args.config_file) if args.config_file else None
    if config_file:
        run_args += ["-f", config_file]
    if args.selected_config:
        run_args += ["-c", args.selected_config]
    environment: dict[str, str] = {}
    read_write: list[str] = []
    if args.simulate:
        state = os.path.abspath(args.simulate)
        environment["MIGD_SIMULATE"] = state
        # The simulated "hardware" is the state file and its neighbours (lock, call log).
        read_write.append(os.path.dirname(state))
    for assignment in args.setenv:
        name, sep, value = assignment.partition("=")
        if not sep or not name:
            print(
                f"migd install-unit: --setenv needs VAR=VALUE, not {assignment!r}", file=sys.stderr
            )
            return EXIT_INVALID
        environment[name] = value
    # Files the daemon must be able to read under ProtectHome=.
    needed = [p for p in (command[0], _interpreter(command[0]), config_file) if p]
    text = render_unit(
        UnitOptions(command, tuple(run_args), environment, tuple(read_write)), home_paths=needed
    )
    if args.dry_run:
        sys.stdout.write(text)
        return EXIT_OK
    unit_dir = Path(args.unit_dir)
    unit_dir.mkdir(parents=True, exist_ok=True)
    path = unit_dir / UNIT_NAME
    atomic_write(path, text.encode())
    print(f"wrote {path}; now: systemctl daemon-reload && systemctl enable --now migd")
    return EXIT_OK
