"""`migd validate` as an operator runs it: a real subprocess, exit codes, stderr lines."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from ci_policy import skip_allowed_in_ci
from paths import REPO, anchor

INVALID = REPO / "tests" / "data" / "invalid"
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("MIGD_", "MIG_PARTED_"))}


def validate(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``migd validate ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "migd", "validate", *args],
        input=stdin.decode("latin-1") if stdin is not None else None,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**CLEAN_ENV, **(env or {})},
        timeout=60,
    )


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout


def assert_valid(result: subprocess.CompletedProcess[str]) -> None:
    """Exit 0 and nothing on stderr but the ownership warning (a checkout may not be root's)."""
    assert result.returncode == 0, result.stderr
    assert all(": warning: " in line for line in result.stderr.splitlines()), result.stderr


# ---------------------------------------------------------------------------
# Valid files: mig-parted's own and ours
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["config.yaml", "dgx-station-80gb-config.yaml", "config-default.yaml"]
)
def test_mig_parted_configs_validate(name: str) -> None:
    path = anchor(name)
    result = validate("-f", str(path))
    assert_valid(result)
    assert result.stdout.startswith(f"{path}: valid, ")


def test_gpu_operator_configmap_config_validates_from_stdin() -> None:
    configmap = yaml.safe_load(anchor("gpu-operator-0400_configmap.yaml").read_text())
    result = validate("-f", "-", stdin=configmap["data"]["config.yaml"].encode())
    assert (result.returncode, result.stderr) == (0, "")  # stdin has no owner to warn about
    assert result.stdout == "-: valid, 81 mig-configs\n"


def test_shipped_default_config_validates() -> None:
    result = validate("-f", "configs/config.yaml")
    assert_valid(result)
    assert result.stdout.startswith("configs/config.yaml: valid, ")


def test_demo_config_validates_and_names_its_selection() -> None:
    result = validate("-f", "configs/demo.yaml")
    assert_valid(result)
    assert "selected: all-balanced (selected-config in the file)" in result.stdout


def test_selection_can_be_checked_on_the_command_line() -> None:
    shipped = "configs/config.yaml"
    assert "selected: all-1g (--selected-config)" in validate("-f", shipped, "-c", "all-1g").stdout
    missing = validate("-f", shipped, "--selected-config", "all-balancd")
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"{shipped}: selected mig-config not present: 'all-balancd'")
    assert "all-balanced" in missing.stderr


@pytest.mark.parametrize("variable", ["MIGD_SELECTED_CONFIG", "MIG_PARTED_SELECTED_CONFIG"])
def test_selection_from_the_environment_must_exist(variable: str) -> None:
    result = validate("-f", "configs/demo.yaml", env={variable: "nope"})
    assert result.returncode == 2
    assert f"(from {variable})" in result.stderr


@pytest.mark.parametrize("variable", ["MIGD_CONFIG_FILE", "MIG_PARTED_CONFIG_FILE"])
def test_config_file_from_the_environment(variable: str) -> None:
    result = validate(env={variable: "configs/demo.yaml"})
    assert_valid(result)
    assert result.stdout.startswith("configs/demo.yaml: valid")


def test_default_config_file_is_etc_migd() -> None:
    result = validate()
    if Path("/etc/migd/config.yaml").exists():
        skip_allowed_in_ci("this machine has its own /etc/migd/config.yaml")
    assert result.returncode == 2
    assert (
        result.stderr == "/etc/migd/config.yaml: cannot read the file: No such file or directory\n"
    )


def test_help_teaches_with_an_example() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "migd", "validate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "FILE:LINE:COL: key.path: message" in result.stdout
    assert "migd validate -f /etc/migd/config.yaml" in result.stdout
    assert "--selected-config" in result.stdout


def test_a_file_root_would_refuse_is_valid_with_a_warning(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the ownership warning is for root")
    path = tmp_path / "config.yaml"
    path.write_bytes((REPO / "configs" / "demo.yaml").read_bytes())
    path.chmod(0o666)
    result = validate("-f", str(path))
    assert result.returncode == 0
    assert result.stderr.startswith(f"{path}: warning: migd running as root would refuse")
    assert "chmod go-w" in result.stderr


def test_two_mib_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"version: v1\n" + b"# padding to two MiB\n" * (2 * 1024 * 1024 // 21))
    result = validate("-f", str(path))
    assert_no_traceback(result)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}: the file is larger than 1024 KiB")


# ---------------------------------------------------------------------------
# Invalid files: every one exits 2 with a located message and no traceback
# ---------------------------------------------------------------------------

# file -> (line, key path, part of the message); line and key are None where the
# problem has no position (binary junk, a whole-document property) or no key.
EXPECTED = {
    "alias-bomb.yaml": (None, None, "alias bomb"),
    "alias-recursive.yaml": (2, None, "recursive alias"),
    "binary-junk.bin": (None, None, "binary file"),
    "config-no-entries.yaml": (3, "mig-configs.all-disabled", "no entries"),
    "config-not-a-list.yaml": (4, "mig-configs.all-disabled", "must be a list of entries"),
    "count-negative.yaml": (7, 'mig-configs.custom[0].mig-devices."1g.18gb"', "≥ 0"),
    "count-not-a-number.yaml": (7, 'mig-configs.custom[0].mig-devices."1g.18gb"', "'two'"),
    "counts-all-zero.yaml": (7, "mig-configs.custom[0].mig-devices", "every count"),
    "devices-bogus-string.yaml": (4, "mig-configs.some[0].devices", "'bogus'"),
    "devices-mapping.yaml": (4, "mig-configs.some[0].devices", "not a mapping"),
    "devices-negative-index.yaml": (4, "mig-configs.some[0].devices[1]", "-1"),
    "devices-scalar.yaml": (4, "mig-configs.one-gpu[0].devices", "write devices: [7]"),
    "disabled-with-mig-devices.yaml": (
        6,
        "mig-configs.all-disabled[0].mig-devices",
        "mig-enabled is false",
    ),
    "duplicate-config-name.yaml": (6, "mig-configs.all-disabled", "duplicate key"),
    "duplicate-profile.yaml": (
        9,
        'mig-configs.custom[0].mig-devices."1g.18gb"',
        "already set on line 7",
    ),
    "enabled-without-mig-devices.yaml": (4, "mig-configs.all-enabled[0]", "mig-devices: {}"),
    "entry-missing-devices.yaml": (4, "mig-configs.all-enabled[0]", "no devices:"),
    "entry-missing-mig-enabled.yaml": (4, "mig-configs.all-disabled[0]", "no mig-enabled:"),
    "entry-unknown-key.yaml": (
        6,
        "mig-configs.all-disabled[0].mig-device",
        "did you mean 'mig-devices'?",
    ),
    "filter-extra-part.yaml": (4, "mig-configs.h100[0].device-filter", "0xDDDDVVVV"),
    "filter-mapping.yaml": (4, "mig-configs.h100[0].device-filter", "not a mapping"),
    "filter-model-name.yaml": (4, "mig-configs.a100[0].device-filter[1]", "A100-SXM4-40GB"),
    "filter-too-short.yaml": (4, "mig-configs.h100[0].device-filter", "never match"),
    "filter-unquoted.yaml": (4, "mig-configs.h100[0].device-filter", 'quotes: "0x233010DE"'),
    "mig-configs-empty.yaml": (2, "mig-configs", "empty"),
    "mig-enabled-quoted.yaml": (5, "mig-configs.all-disabled[0].mig-enabled", "no quotes"),
    "non-utf8.yaml": (2, None, "not UTF-8"),
    "not-a-mapping.yaml": (1, None, "must be a YAML mapping"),
    "profile-bogus.yaml": (7, "mig-configs.custom[0].mig-devices.bogus", "not a MIG profile"),
    "profile-impossible-slices.yaml": (
        7,
        'mig-configs.custom[0].mig-devices."5g.90gb"',
        "no MIG profile has 5 slices",
    ),
    "profile-plus-and-minus.yaml": (
        7,
        'mig-configs.custom[0].mig-devices."1g.24gb+gfx-me"',
        "not both",
    ),
    "profile-unknown-attribute.yaml": (
        7,
        'mig-configs.custom[0].mig-devices."1g.18gb+nvdec"',
        "unknown attribute 'nvdec'",
    ),
    "profile-with-space.yaml": (
        7,
        'mig-configs.custom[0].mig-devices."1g. 18gb"',
        "contains spaces",
    ),
    "selected-config-unknown.yaml": (2, "selected-config", "selected mig-config not present"),
    "settings-command-placeholder.yaml": (3, "settings.reset-command[3]", "{bus_ids}"),
    "settings-command-string.yaml": (3, "settings.reset-command", "never runs a shell"),
    "settings-duration.yaml": (4, "settings.drift-check.interval", "'5 minutes'"),
    "settings-metrics-address.yaml": (4, "settings.metrics.address", "in brackets"),
    "settings-policy.yaml": (4, "settings.drift-check.policy", "repair, report"),
    "settings-relative-path.yaml": (3, "settings.hooks-file", "absolute path"),
    "settings-retry-order.yaml": (3, "settings.retry", "longer than retry.max"),
    "settings-strategy.yaml": (3, "settings.device-plugin.strategy", "did you mean mixed?"),
    "settings-tls-incomplete.yaml": (5, "settings.metrics.tls", "needs key-file"),
    "settings-unit-name.yaml": (4, "settings.gpu-clients.units[1]", "not a systemd unit"),
    "settings-unknown-key.yaml": (3, "settings.drift_check", "did you mean 'drift-check'?"),
    "top-level-unknown-key.yaml": (2, "mig-config", "did you mean 'mig-configs'?"),
    "version-missing.yaml": (1, None, "version is missing"),
    "version-v2.yaml": (1, "version", "unknown version 'v2'"),
    "yaml-control-character.yaml": (5, None, "control character U+0007"),
    "yaml-deep-nesting.yaml": (2, None, "nested more than 64 levels"),
    "yaml-python-tag.yaml": (4, "mig-configs.all-disabled[0].devices", "!!python/object"),
    "yaml-tab-indent.yaml": (4, None, "tabs"),
    "yaml-two-documents.yaml": (6, None, "single document"),
    "yaml-unclosed-bracket.yaml": (5, None, "begun on line 4"),
}


def test_every_invalid_file_has_an_expectation() -> None:
    assert sorted(p.name for p in INVALID.iterdir()) == sorted(EXPECTED)
    assert len(EXPECTED) >= 30


@pytest.fixture(scope="module")
def invalid_results() -> dict[str, subprocess.CompletedProcess[str]]:
    """Every invalid file through the real command, run side by side to save time."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        runs = {
            name: pool.submit(validate, "-f", f"tests/data/invalid/{name}") for name in EXPECTED
        }
        return {name: run.result() for name, run in runs.items()}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_invalid_file(
    name: str, invalid_results: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    result = invalid_results[name]
    line, key, fragment = EXPECTED[name]
    assert_no_traceback(result)
    assert (result.returncode, result.stdout) == (2, "")
    first = result.stderr.splitlines()[0]
    where = f"tests/data/invalid/{name}:" + (f"{line}:" if line is not None else " ")
    assert first.startswith(where), first
    if key is not None:
        assert f": {key}: " in first, first
    assert fragment in first, first
