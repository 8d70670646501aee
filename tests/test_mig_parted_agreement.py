"""migd reads configs as mig-parted does, case by case from mig-parted's own test tables.

tests/data/mig-parted-agreement.yaml transcribes mig-parted's spec tests and go-nvlib's
profile-name tests (the sources and commits are in the file). Every case must come out
as mig-parted's test expects, except where the case names a deliberate difference, and
each such difference must be a row of the README's table "Differences from mig-parted".
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from paths import DATA, REPO

from migd.core.profiles import ProfileName, ProfileNameError
from migd.errors import ConfigError
from migd.formats.config_file import parse_config

TABLE = yaml.safe_load((DATA / "mig-parted-agreement.yaml").read_text())


def _accepts(text: str) -> bool:
    try:
        parse_config(text.encode(), "case.yaml")
    except ConfigError:
        return False
    return True


def _expected(case: dict[str, Any], key: str = "mig-parted") -> Any:
    """What migd must answer: mig-parted's answer, unless a difference is named."""
    return case.get("migd", case[key])


def _ids(cases: list[dict[str, Any]]) -> list[str]:
    return [c["case"] for c in cases]


def _one_entry(entry: str) -> str:
    return f'{{"version": "v1", "mig-configs": {{"case": [\n{entry}\n]}}}}' if entry else ""


@pytest.mark.parametrize("case", TABLE["spec"], ids=_ids(TABLE["spec"]))
def test_spec_documents(case: dict[str, Any]) -> None:
    assert _accepts(case["doc"]) is (_expected(case) == "accept")


@pytest.mark.parametrize("case", TABLE["entry"], ids=_ids(TABLE["entry"]))
def test_config_entries(case: dict[str, Any]) -> None:
    assert _accepts(_one_entry(case["doc"])) is (_expected(case) == "accept")


@pytest.mark.parametrize("case", TABLE["filter"], ids=_ids(TABLE["filter"]))
def test_device_filters(case: dict[str, Any]) -> None:
    entry = {"device-filter": case["filter"], "devices": "all", "mig-enabled": False}
    text = json.dumps({"version": "v1", "mig-configs": {"case": [entry]}})
    expected = _expected(case)
    if expected == "refuse":
        assert not _accepts(text)
        return
    (parsed,) = parse_config(text.encode(), "case.yaml").entries("case")
    hardware = TABLE["filter-hardware"]
    assert parsed.matches(0, hardware["device"], hardware["subsystem"]) is (expected == "match")


@pytest.mark.parametrize("case", TABLE["profile"], ids=_ids(TABLE["profile"]))
def test_profile_names(case: dict[str, Any]) -> None:
    entry = {"devices": "all", "mig-enabled": True, "mig-devices": {case["name"]: 1}}
    text = json.dumps({"version": "v1", "mig-configs": {"case": [entry]}})
    assert _accepts(text) is (_expected(case) == "accept")


@pytest.mark.parametrize("case", TABLE["equal"], ids=_ids(TABLE["equal"]))
def test_profile_names_denote_the_same_profile(case: dict[str, Any]) -> None:
    try:
        a, b = ProfileName.parse(case["a"]), ProfileName.parse(case["b"])
    except ProfileNameError as exc:  # every name of this table is valid for both
        pytest.fail(str(exc))
    assert (a == b) is _expected(case)


def _readme_differences() -> list[str]:
    """The first cells of the README's table under "Differences from mig-parted"."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Differences from mig-parted", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [re.split(r"\s*\|\s*", row.strip("| "))[0] for row in rows[2:]]


def test_every_difference_is_in_the_readme() -> None:
    named = {
        case["difference"]
        for cases in TABLE.values()
        if isinstance(cases, list)
        for case in cases
        if "difference" in case
    }
    documented = _readme_differences()
    assert named, "the table names no difference"
    missing = [d for d in sorted(named) if not any(d in row for row in documented)]
    assert not missing, f"differences not in the README's table: {missing}"


def test_the_cases_cover_every_upstream_row() -> None:
    """The transcription is whole: as many cases as the upstream tables have rows."""
    counts = {k: len(v) for k, v in TABLE.items() if isinstance(v, list)}
    assert counts == {"spec": 8, "entry": 15, "filter": 6, "profile": 52, "equal": 8}
