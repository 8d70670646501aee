"""Bad input through the running daemon: nothing touched, the old layout in force.

Every file of the invalid-config corpus (``tests/data/invalid/``) and documents from
the config tests' hypothesis strategies are written over the config of a running
``migd run`` (an editor's atomic save, then ``migd reload`` for the corpus; the file
watcher for the fuzzed documents). Each must be refused (``migd reload`` exits 2 and
names the file), with no mutating NVML call made (``migd sim stats``), the node as it
was (``migd sim show``), the daemon up and the last good config in force.

A config file (the file itself, not its directory) that is not owned by root, or
that its group or others can write, is refused while migd runs as root, with the
reason and the fix. Whatever a config says, migd runs its hooks and commands
without a shell: metacharacters reach the program as literal arguments, a command
with spaces is a file name, and the values of a hook's environment never reach the log.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import daemon_support
import pytest
from daemon_support import BALANCED, SMALL, Daemon, all_hold, config_text, running
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reliability_support import (
    alive,
    free_port,
    metric,
    mutating_calls,
    replace_file,
    scrape,
    settled,
    shown,
    status_json,
    summary,
)
from test_config_invalid import mutated_documents

from migd.core.config import select_config
from migd.daemon.watch import file_digest
from migd.errors import ConfigError
from migd.formats.config_file import parse_config

CORPUS = Path(__file__).resolve().parents[1] / "data" / "invalid"
CORPUS_FILES = sorted(CORPUS.iterdir())
FUZZ_EXAMPLES = 40  # the default run; the soak runs SOAK_FUZZ_EXAMPLES
SOAK_FUZZ_EXAMPLES = 400
NOT_ROOT = 1000


@contextlib.contextmanager
def daemon(directory: Path, config: str = "", *args: str) -> Iterator[tuple[Daemon, str]]:
    """A daemon holding ``balanced`` on two H200s, with its metrics endpoint."""
    port = free_port()
    with running(
        directory,
        config or config_text(),
        "--metrics-address",
        f"127.0.0.1:{port}",
        *args,
    ) as started:
        started.ready()
        assert all_hold(started.state, BALANCED)
        yield started, f"http://127.0.0.1:{port}/metrics"


class Untouched:
    """What the node and the daemon hold now, to compare with after a refusal."""

    def __init__(self, started: Daemon) -> None:
        self.daemon = started
        self.node = shown(started.state)
        self.mutations = mutating_calls(started.state)

    def problems(self) -> list[str]:
        found = []
        if mutating_calls(self.daemon.state) != self.mutations:
            found.append("a mutating NVML call was made")
        if shown(self.daemon.state) != self.node:
            found.append("the node changed")
        if not alive(self.daemon.pid):
            found.append("the daemon died")
        doc = self.daemon.state_doc()
        if doc.get("selected_config") != "balanced" or doc.get("last_reload_ok"):
            found.append(f"not refused, keeping balanced: {doc.get('status')}")
        return found


def test_every_file_of_the_invalid_corpus_is_refused_and_nothing_touched(
    tmp_path: Path,
) -> None:
    problems: dict[str, list[str]] = {}
    with daemon(tmp_path) as (started, url):
        before = scrape(url)
        for path in CORPUS_FILES:
            untouched = Untouched(started)
            replace_file(started.config, path.read_bytes())
            reloaded = started.reload()
            found = untouched.problems()
            if reloaded.returncode != 2:
                found.append(f"migd reload exit {reloaded.returncode}: {reloaded.stdout}")
            if f"{started.config}:" not in reloaded.stderr:
                found.append(f"the file is not named: {reloaded.stderr}")
            status = status_json(started)["status"]
            if "config refused, keeping balanced" not in status:
                found.append(f"status: {status}")
            problems[path.name] = found
        after = scrape(url)
        assert metric(after, "migd_config_last_reload_successful") == 0
        refusals = metric(after, "migd_config_reloads_total", result="failure") - metric(
            before, "migd_config_reloads_total", result="failure"
        )
        assert refusals >= len(CORPUS_FILES)  # the watcher may refuse a file before reload
        assert metric(after, "migd_reconciles_total") == metric(before, "migd_reconciles_total")
        assert all_hold(started.state, BALANCED)
    refused = sum(not found for found in problems.values())
    summary(
        "bad input, invalid corpus",
        f"{refused}/{len(CORPUS_FILES)} files refused through the running daemon "
        "(file edit + migd reload exit 2), 0 mutating calls, node unchanged",
    )
    failed = [f"{name}: {p}" for name, found in problems.items() for p in found]
    assert not failed, "\n".join(failed)


def _usable(data: bytes) -> bool:
    """Whether the daemon would accept ``data`` as its config (selected from the file)."""
    try:
        select_config(parse_config(data, "fuzz.yaml"), None, {})
    except ConfigError:
        return False
    return True


def fuzz_through_the_daemon(directory: Path, examples: int) -> None:
    tried = [0]
    with daemon(directory) as (started, _):
        untouched = Untouched(started)

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(st.one_of(mutated_documents(), st.binary(max_size=512)))
        def refused(data: bytes) -> None:
            assume(not _usable(data))
            assume(file_digest(started.config) != _sha256(data))
            generation = started.state_doc()["reload_generation"]
            replace_file(started.config, data)
            doc = settled(started, generation + 1)
            assert not doc["last_reload_ok"], doc["status"]
            assert doc["last_reload_error"], doc
            assert untouched.problems() == []
            tried[0] += 1

        refused()
    summary(
        "bad input, fuzzed documents",
        f"{tried[0]}/{tried[0]} hypothesis documents (the config tests' mutated YAML and "
        "raw bytes) refused through the file watcher, 0 mutating calls, node unchanged",
    )


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_fuzzed_documents_are_refused_by_the_running_daemon(tmp_path: Path) -> None:
    fuzz_through_the_daemon(tmp_path, FUZZ_EXAMPLES)


@pytest.mark.soak
def test_many_fuzzed_documents_are_refused_by_the_running_daemon(tmp_path: Path) -> None:
    fuzz_through_the_daemon(tmp_path, SOAK_FUZZ_EXAMPLES)


# ---------------------------------------------------------------------------
# A config file someone other than root could have written
# ---------------------------------------------------------------------------

UNTRUSTED = [
    ("group-writable", 0o664, None, "it is writable by its group (mode 0664)"),
    ("world-writable", 0o646, None, "it is writable by everyone (mode 0646)"),
    ("not-root-owned", 0o644, NOT_ROOT, f"it is owned by uid {NOT_ROOT}, not root"),
]


@pytest.mark.skipif(os.geteuid() != 0, reason="the policy applies to a migd running as root")
def test_a_config_file_others_could_write_is_refused_with_the_reason(tmp_path: Path) -> None:
    small = config_text("small").encode()
    refused = 0
    with daemon(tmp_path) as (started, _):
        for name, mode, owner, reason in UNTRUSTED:
            untouched = Untouched(started)
            replace_file(started.config, small, mode, owner)
            reloaded = started.reload()
            assert reloaded.returncode == 2, (name, reloaded.stdout, reloaded.stderr)
            message = reloaded.stderr
            assert f"{started.config}: refusing this file as root: {reason}" in message, message
            assert "fix: " in message and str(started.config) in message
            assert untouched.problems() == [], name
            assert reason in status_json(started)["status"]
            refused += 1
        # The directory does not matter, only the file: a world-writable directory
        # holding a root-owned 0644 file is fine.
        os.chmod(started.config.parent, 0o777)
        replace_file(started.config, small, 0o644)
        reloaded = started.reload()
        assert reloaded.returncode == 0, reloaded.stderr
        assert all_hold(started.state, SMALL)
        os.chmod(started.config.parent, 0o755)
    summary(
        "bad input, untrusted config file",
        f"{refused}/{len(UNTRUSTED)} refused (group-writable, world-writable, not owned by "
        "root) with the reason and the fix; a world-writable directory does not matter",
    )


# ---------------------------------------------------------------------------
# Never a shell
# ---------------------------------------------------------------------------

# Writes its argv and environment to a file: what the program really received.
RECORDER = """\
import json, os, sys
with open(sys.argv[1], "w") as f:
    json.dump({"argv": sys.argv[2:], "env": dict(os.environ)}, f)
"""
SECRET = "hunter2-migd-test-secret"


def shell_words(marker: Path) -> list[str]:
    """Arguments that a shell would turn into a command creating ``marker``-something."""
    m = str(marker)
    return [
        f"; touch {m}-semicolon",
        f"$(touch {m}-dollar)",
        f"`touch {m}-backtick`",
        f"&& touch {m}-and",
        f"| touch {m}-pipe",
        f"> {m}-redirect",
        f"\ntouch {m}-newline",
        "${IFS}*",
        "'\"",
    ]


def hooks_file(directory: Path, recorder: Path, marker: Path) -> str:
    args = json.dumps([str(recorder), str(directory / "hook.json"), *shell_words(marker)])
    return f"""\
version: v1
hooks:
  apply-start:
    - command: {sys.executable}
      args: {args}
      workdir: {directory}
      envs:
        TOKEN: "{SECRET}"
        TRAP: "$(touch {marker}-env)"
  apply-exit:
    - command: "/bin/sh -c 'touch {marker}-command'"
"""


def test_hooks_and_commands_run_without_a_shell_whatever_the_config_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every migd the test runs logs debug detail (global option -d).
    monkeypatch.setattr(daemon_support, "MIGD", (*daemon_support.MIGD, "--debug"))
    recorder = tmp_path / "recorder.py"
    recorder.write_text(RECORDER)
    marker = tmp_path / "created"
    hooks = tmp_path / "hooks.yaml"
    hooks.write_text(hooks_file(tmp_path, recorder, marker))
    cdi = [sys.executable, str(recorder), str(tmp_path / "cdi.json"), *shell_words(marker)]
    settings_lines = (
        f"  hooks-file: {hooks}\n"
        f"  cdi-refresh-command: {json.dumps(cdi)}\n"
        f"  mig-caps-command: {json.dumps(['/bin/echo hello; touch ' + str(marker) + '-caps'])}\n"
    )

    def with_settings(selected: str) -> str:
        return config_text(selected).replace("settings:\n", "settings:\n" + settings_lines)

    with daemon(tmp_path / "d", with_settings("balanced")) as (started, _):
        replace_file(started.config, with_settings("small").encode())
        reloaded = started.reload()
        assert reloaded.returncode == 0, reloaded.stderr
        assert all_hold(started.state, SMALL)
        hook = json.loads((tmp_path / "hook.json").read_text())
        assert hook["argv"] == shell_words(marker)
        assert hook["env"]["TRAP"] == f"$(touch {marker}-env)"
        assert hook["env"]["TOKEN"] == SECRET
        assert json.loads((tmp_path / "cdi.json").read_text())["argv"] == shell_words(marker)
        log = started.log()
        # The command with spaces is one file name that does not exist; it failed.
        assert "command not found" in log
        assert SECRET not in log
        assert SECRET not in json.dumps(status_json(started))
    created = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(marker.name))
    assert created == [], created
    summary(
        "bad input, never a shell",
        f"{len(shell_words(marker))} shell metacharacter arguments reached a hook and the "
        "cdi-refresh-command literally, commands with spaces ran as file names, 0 files "
        "created, the hook's secret environment value absent from the debug log",
    )
