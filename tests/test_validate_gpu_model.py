"""`migd validate --gpu-model`: a config checked against a GPU model's own table."""

from __future__ import annotations

from pathlib import Path

import pytest
from paths import REPO, anchor
from test_validate_cli import assert_no_traceback, assert_valid, validate


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("version: v1\nmig-configs:\n" + body)
    return path


def test_demo_fits_the_h200() -> None:
    result = validate("-f", "configs/demo.yaml", "--gpu-model", "H200")
    assert_valid(result)
    assert "fits H200" in result.stdout


@pytest.mark.parametrize("model", ["H200", "A100-SXM4-40GB", "A30", "H100-NVL", "B200"])
@pytest.mark.parametrize(
    "name", ["all-disabled", "all-enabled", "all-1g", "all-2g", "all-balanced"]
)
def test_default_config_fits_every_common_model(model: str, name: str) -> None:
    """The shipped default uses device filters and memory-agnostic names for this."""
    assert_valid(validate("-f", "configs/config.yaml", "-c", name, "--gpu-model", model))


def test_default_config_says_where_a_layout_does_not_exist(tmp_path: Path) -> None:
    """all-3g is for 8-slice GPUs: on an A30, which has no 3-slice profile, it is refused.
    (Every config is judged when none is selected; the shipped file selects one.)"""
    text = (REPO / "configs" / "config.yaml").read_text()
    assert "\nselected-config: unmanaged\n" in text
    unselected = tmp_path / "config.yaml"
    unselected.write_text(text.replace("\nselected-config: unmanaged\n", "\n"))
    result = validate("-f", str(unselected), "--gpu-model", "A30")
    assert result.returncode == 2
    assert "mig-configs.all-3g[0]: on NVIDIA A30: unknown profile '3g'" in result.stderr
    assert "all-balanced" not in result.stderr  # its A30 entry wins over the generic one


def test_anchor_balanced_layout_fits_the_a100_it_was_written_for() -> None:
    result = validate(
        "-f", str(anchor("config.yaml")), "-c", "all-balanced", "--gpu-model", "A100-40GB"
    )
    assert_valid(result)


def test_a100_profile_on_an_h200_names_file_line_key_and_valid_choices(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "  all-disabled:\n    - devices: all\n      mig-enabled: false\n"
        "  all-1g.5gb:\n    - devices: all\n      mig-enabled: true\n"
        '      mig-devices: {"1g.5gb": 7}\n',
    )
    result = validate("-f", str(path), "-c", "all-1g.5gb", "--gpu-model", "H200")
    assert result.returncode == 2
    assert_no_traceback(result)
    (line,) = result.stderr.splitlines()
    assert line.startswith(f'{path}:7:7: mig-configs."all-1g.5gb"[0]: ')
    assert "unknown profile '1g.5gb'" in line
    assert "1g.18gb" in line  # the valid choices are listed


def test_layout_that_cannot_be_placed_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "  too-much:\n  - devices: all\n    mig-enabled: true\n"
        "    mig-devices: {4g.71gb: 1, 3g.71gb: 1, 1g.18gb: 1}\n",
    )
    result = validate("-f", str(path), "--gpu-model", "H200")
    assert result.returncode == 2
    assert "cannot be placed" in result.stderr
    assert "too-much" in result.stderr


def test_entries_filtered_to_other_gpus_are_not_judged(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '  mixed:\n  - devices: all\n    device-filter: "0x20B010DE"\n    mig-enabled: true\n'
        "    mig-devices: {1g.5gb: 7}\n"
        '  - devices: all\n    device-filter: "0x233510DE"\n    mig-enabled: true\n'
        "    mig-devices: {1g.18gb: 7}\n",
    )
    assert_valid(validate("-f", str(path), "--gpu-model", "H200"))
    assert_valid(validate("-f", str(path), "--gpu-model", "A100-SXM4-40GB"))


def test_a_gpu_without_mig_is_reported_for_enabled_entries(tmp_path: Path) -> None:
    path = write(tmp_path, "  on:\n  - devices: all\n    mig-enabled: true\n    mig-devices: {}\n")
    result = validate("-f", str(path), "--gpu-model", "L40S")
    assert result.returncode == 2
    assert "not MIG-capable" in result.stderr


def test_unknown_model_lists_the_known_ones() -> None:
    result = validate("-f", "configs/demo.yaml", "--gpu-model", "Z9000")
    assert result.returncode == 2
    assert_no_traceback(result)
    assert "H200" in result.stderr and "A100-SXM4-40GB" in result.stderr
