"""MIG profiles as NVML defines them: names, profile indices, and what fits in what.

Facts about NVML that every part of migd shares, each written once: the grammar of a
profile name (``[<C>c.]<G>g[.<GB>gb][+attr]``), the slice count and name suffix of
every NVML_GPU_INSTANCE_PROFILE_* and NVML_COMPUTE_INSTANCE_PROFILE_* index (nvml.h 13,
as go-nvlib reads them), which index is the *standard* profile of a size (what a
memory-agnostic ``3g`` means), the rule for which compute-instance sizes a GPU
instance offers, and how the driver spells a profile (``MIG 1g.18gb``).

Used by the config language (names), selection (standard indices), the NVML adapter
(names, the rule-based compute-instance table) and the GPU model tables the
simulator and ``migd validate --gpu-model`` read.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from dataclasses import dataclass

# ---------------------------------------------------------------------------
# Profile indices (nvml.h)
# ---------------------------------------------------------------------------

# NVML_GPU_INSTANCE_PROFILE_COUNT / NVML_COMPUTE_INSTANCE_PROFILE_COUNT in nvml.h 13.
GI_PROFILE_INDEX_COUNT = 18
CI_PROFILE_INDEX_COUNT = 9

# Compute slices per NVML_GPU_INSTANCE_PROFILE_* index, as go-nvlib and nvml.h define them.
GI_INDEX_SLICES: Mapping[int, int] = types.MappingProxyType(
    {
        0: 1,  # 1_SLICE
        1: 2,  # 2_SLICE
        2: 3,  # 3_SLICE
        3: 4,  # 4_SLICE
        4: 7,  # 7_SLICE
        5: 8,  # 8_SLICE
        6: 6,  # 6_SLICE
        7: 1,  # 1_SLICE_REV1 (+me)
        8: 2,  # 2_SLICE_REV1 (+me)
        9: 1,  # 1_SLICE_REV2 (double memory, no suffix)
        10: 1,  # 1_SLICE_GFX
        11: 2,  # 2_SLICE_GFX
        12: 4,  # 4_SLICE_GFX
        13: 1,  # 1_SLICE_NO_ME
        14: 2,  # 2_SLICE_NO_ME
        15: 1,  # 1_SLICE_ALL_ME
        16: 2,  # 2_SLICE_ALL_ME
        17: 3,  # 3_SLICE_GFX
    }
)

# Name suffix per GI profile index (nvml.md "Profile names"); the others have none.
GI_INDEX_SUFFIX: Mapping[int, str] = types.MappingProxyType(
    {
        7: "+me",
        8: "+me",
        10: "+gfx",
        11: "+gfx",
        12: "+gfx",
        17: "+gfx",
        13: "-me",
        14: "-me",
        15: "+me.all",
        16: "+me.all",
    }
)

# Compute slices per NVML_COMPUTE_INSTANCE_PROFILE_* index (7 = 1_SLICE_REV1, 8 = 7_SLICE_NVL).
CI_INDEX_SLICES: Mapping[int, int] = types.MappingProxyType(
    {0: 1, 1: 2, 2: 3, 3: 4, 4: 7, 5: 8, 6: 6, 7: 1, 8: 7}
)


def gi_indices_with_suffix(suffix: str) -> frozenset[int]:
    """The GI profile indices whose names end in ``suffix`` (``+me``, ``-me``, …)."""
    return frozenset(index for index, s in GI_INDEX_SUFFIX.items() if s == suffix)


def standard_gi_index(slices: int, attributes: tuple[str, ...], negated: bool) -> int | None:
    """The index of the standard GI profile of this size and these attributes.

    What a memory-agnostic name (``3g``, ``1g+me``) stands for: the lowest index with
    that slice count and suffix, so ``1g`` is 1_SLICE, never the double-memory
    1_SLICE_REV2 (index 9).
    """
    suffix = ("-" if negated else "+") + ",".join(attributes) if attributes else ""
    matching = [
        index
        for index, count in GI_INDEX_SLICES.items()
        if count == slices and GI_INDEX_SUFFIX.get(index, "") == suffix
    ]
    return min(matching, default=None)


def standard_ci_index(slices: int) -> int | None:
    """The index of the plain CI profile of ``slices`` compute slices, when a GI offers
    more than one (1_SLICE_REV1 and 7_SLICE_NVL are the odd ones out): the lowest."""
    return min((i for i, count in CI_INDEX_SLICES.items() if count == slices), default=None)


def ci_fits(ci_slices: int, gi_slices: int) -> bool:
    """Whether a GI of ``gi_slices`` offers CIs of ``ci_slices`` compute slices.

    The driver's rule (reference/nvml.md): c ≤ g and, unless c == g, 2c ≤ g+1.
    """
    return ci_slices <= gi_slices and (ci_slices == gi_slices or 2 * ci_slices <= gi_slices + 1)


# ---------------------------------------------------------------------------
# How the driver spells a profile
# ---------------------------------------------------------------------------

# NVML's profile names carry this prefix ("MIG 1g.18gb"); migd names them without it.
DRIVER_NAME_PREFIX = "MIG "


def short_name(driver_name: str) -> str:
    """``MIG 1g.18gb`` → ``1g.18gb``: the name exactly as the GPU reports it, unprefixed."""
    return driver_name.removeprefix(DRIVER_NAME_PREFIX)


def canonical_or_raw(name: str) -> str:
    """A name spelled canonically (``1c.1g.18gb`` is ``1g.18gb``); one outside the
    grammar is kept as it is (it never matches a config)."""
    try:
        return str(ProfileName.parse(name))
    except ProfileNameError:
        return name


# ---------------------------------------------------------------------------
# Profile names
# ---------------------------------------------------------------------------

# NVML names GPU- and compute-instance profiles of the slice counts its profile indices
# have (NVML_GPU_INSTANCE_PROFILE_{1,2,3,4,6,7,8}_SLICE) and with the attributes its
# suffixes name; a name with any other count or attribute can never match a GPU, so it
# is a typo to report, not a profile to look for.
SLICE_COUNTS = frozenset(GI_INDEX_SLICES.values())
KNOWN_ATTRIBUTES = frozenset(
    attribute for suffix in GI_INDEX_SUFFIX.values() for attribute in suffix[1:].split(",")
)

# mig-parted's grammar, plus migd's memory-agnostic form (``3g``, ``1c.3g``, ``1g+me``).
# Digit runs are bounded so that int() never meets a number too long to convert.
# Patterns, not compiled objects: ``re`` compiles one on its first use and caches it,
# so that importing migd compiles nothing.
_PROFILE_RE = (
    r"^(?:(?P<c>[1-9][0-9]{0,2})c\.)?"
    r"(?P<g>[1-9][0-9]{0,2})g"
    r"(?:\.(?P<gb>[1-9][0-9]{0,5})gb)?"
    r"(?:(?P<sign>[+-])(?P<attrs>.+))?$"
)
_ATTR_RE = r"^[A-Za-z][A-Za-z0-9.]*$"


class ProfileNameError(ValueError):
    """A string is not a valid MIG profile name; the message says why."""


@dataclass(frozen=True, order=True)
class ProfileName:
    """A parsed MIG profile name.

    ``ci_slices`` is None when the name denotes a whole GPU instance (``2g.35gb``);
    ``1c.1g.18gb`` is normalised to ``1g.18gb`` (a CI spanning its whole GI).
    ``memory_gb`` is None for a memory-agnostic name (``3g``).
    ``attributes`` are kept sorted; ``negated`` marks the ``-me`` form.
    """

    gi_slices: int
    memory_gb: int | None = None
    ci_slices: int | None = None
    attributes: tuple[str, ...] = ()
    negated: bool = False

    @classmethod
    def parse(cls, text: str) -> ProfileName:
        if not isinstance(text, str):
            raise ProfileNameError(f"a profile name must be a string, not {type(text).__name__}")
        if text != text.strip() or any(ch.isspace() for ch in text):
            raise ProfileNameError(f"profile name {text!r} contains spaces")
        m = re.match(_PROFILE_RE, text)
        if not m:
            raise ProfileNameError(
                f"{text!r} is not a MIG profile name; expected [<C>c.]<G>g.<GB>gb[+attr], "
                "e.g. 1g.18gb, 1g.18gb+me, 1c.2g.35gb, or a memory-agnostic 3g"
            )
        gi = int(m["g"])
        ci = int(m["c"]) if m["c"] else None
        for slices in (gi, ci):
            if slices is not None and slices not in SLICE_COUNTS:
                counts = ", ".join(str(n) for n in sorted(SLICE_COUNTS))
                raise ProfileNameError(
                    f"{text!r}: no MIG profile has {slices} slices (NVML knows {counts})"
                )
        if ci is not None and ci > gi:
            raise ProfileNameError(
                f"{text!r}: a {ci}-slice compute instance cannot fit a {gi}-slice GPU instance"
            )
        if ci == gi:
            ci = None
        attrs: tuple[str, ...] = ()
        if m["attrs"] is not None:
            raw = m["attrs"]
            if "+" in raw or "-" in raw:
                raise ProfileNameError(f"{text!r}: use either '+' or '-' once, not both")
            parts = raw.split(",")
            for part in parts:
                if not part:
                    raise ProfileNameError(f"{text!r}: empty attribute")
                if not re.match(_ATTR_RE, part) or part.endswith("."):
                    raise ProfileNameError(
                        f"{text!r}: attribute {part!r} must be alphanumeric or '.', "
                        "start with a letter and not end with '.'"
                    )
            if len(set(parts)) != len(parts):
                raise ProfileNameError(f"{text!r}: repeated attribute")
            unknown = [p for p in parts if p not in KNOWN_ATTRIBUTES]
            if unknown:
                known = ", ".join(sorted(KNOWN_ATTRIBUTES))
                raise ProfileNameError(
                    f"{text!r}: unknown attribute {unknown[0]!r} (known: {known})"
                )
            attrs = tuple(sorted(parts))
        return cls(
            gi_slices=gi,
            memory_gb=int(m["gb"]) if m["gb"] else None,
            ci_slices=ci,
            attributes=attrs,
            negated=m["sign"] == "-",
        )

    @property
    def gi_name(self) -> ProfileName:
        """The GPU-instance part of this name (``1c.2g.35gb`` → ``2g.35gb``)."""
        return ProfileName(self.gi_slices, self.memory_gb, None, self.attributes, self.negated)

    @property
    def memory_agnostic(self) -> bool:
        return self.memory_gb is None

    def __str__(self) -> str:
        text = f"{self.gi_slices}g"
        if self.memory_gb is not None:
            text += f".{self.memory_gb}gb"
        if self.attributes:
            text += ("-" if self.negated else "+") + ",".join(self.attributes)
        if self.ci_slices is not None:
            text = f"{self.ci_slices}c.{text}"
        return text
