"""A faithful model of how mig-parted v0.15.0 applies a layout to one GPU, over plain pynvml.

What it models (reference/mig-parted.md "Apply algorithm"; read from
``pkg/mig/config/config.go`` and ``pkg/types/mig_config.go`` at bd7160f4):

1. ``assert``: read the GPU's current config (profile name -> count, walking every
   GI profile index and, inside each GI, every CI profile index); when it equals
   the desired one the GPU is left alone.
2. ``Flatten``: the desired list, one entry per instance, sorted by G descending,
   C descending, attribute string descending (so ``+me`` first). Go's sort of up to
   12 entries is an insertion sort, hence stable, so profiles that tie (1g.18gb and
   1g.35gb: same G, same C, no attribute) keep the order in which Go's *random* map
   iteration produced them. :func:`tie_orders` lists every such order; the model is
   run for each.
3. ``iteratePermutationsUntilSuccess``: the swap-based recursion that tries each
   distinct permutation of that list (equal profiles are the same pointer in Go, so
   swapping two of them is skipped). For each ordering: if the GPU holds anything,
   clear it (every CI, then its GI; one attempt); then, for each entry, create the GI
   with NO placement (the driver picks: ``nvmlDeviceCreateGpuInstance``) and its CI.
   When the previous entry had the same GI profile it first tries to put the CI into
   the previous GI (``reuseGI``: it fails on a full GI and a new GI is made) — a
   failed CI create per repeated profile, as the real tool makes. Any failed create
   ends the ordering; the next one starts by clearing the GPU.
4. When every ordering failed ("all orderings failed"): clear the GPU and leave it
   empty.

Which CI goes into a GI: the one spanning it with the GI's own SMs (the default CI
``nvidia-smi mig -C`` makes). The model finds its index by asking the first GI of
each profile (reads only, so no mutating call is added).

Everything goes through pynvml's own functions, so the simulator under pynvml sees
exactly the calls the Go tool would make and counts them in its call log.
"""

from __future__ import annotations

import ctypes
import itertools
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pynvml

# Instances a list call can return; more than any GPU holds (7 GIs, 8 CIs per GI).
_LIST_BUFFER = 64
_SHARED = pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED


@dataclass(frozen=True)
class GiProfileRow:
    """One GI profile of the GPU, as mig-parted's profile table holds it."""

    index: int  # NVML_GPU_INSTANCE_PROFILE_* (what mig-parted calls GIProfileID)
    id: int  # info.id, what the create call takes
    name: str  # "1g.18gb+me"
    slices: int
    multiprocessors: int

    @property
    def attributes(self) -> str:
        """The attribute string mig-parted sorts on: "me" for 1g.18gb+me, else ""."""
        return self.name.partition("+")[2]


@dataclass(frozen=True)
class ModelResult:
    """How one apply on one GPU went."""

    orderings: int  # orderings tried (0 when the GPU already held the layout)
    succeeded: bool  # False: all orderings failed, the GPU was left empty
    skipped: bool  # the GPU already held the layout (assert passed)


def _name(info: Any) -> str:
    raw = info.name.decode() if isinstance(info.name, bytes) else str(info.name)
    return raw.removeprefix("MIG ")


def _expected(fn: Callable[..., Any], *args: Any) -> Any | None:
    """Call ``fn``; None for the answers that mean "no such profile here"."""
    try:
        return fn(*args)
    except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_InvalidArgument):
        return None


def gi_profile_table(device: Any) -> tuple[GiProfileRow, ...]:
    """Every GI profile index the GPU answers (go-nvlib's walk over all indices)."""
    rows = []
    for index in range(pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT):
        info = _expected(pynvml.nvmlDeviceGetGpuInstanceProfileInfo, device, index)
        if info is None:
            continue
        rows.append(
            GiProfileRow(
                index=index,
                id=int(info.id),
                name=_name(info),
                slices=int(info.sliceCount),
                multiprocessors=int(info.multiprocessorCount),
            )
        )
    return tuple(rows)


def sort_key(row: GiProfileRow) -> tuple[int, int, tuple[int, ...]]:
    """Flatten's order: G descending, C descending (C = G for a whole-GI profile), then
    the attribute string descending (a key of negated code points sorts it so)."""
    return (-row.slices, -row.slices, (*(-ord(ch) for ch in row.attributes), 1))


@dataclass(frozen=True)
class TieOrder:
    """One order Go's map iteration can give the profiles that tie in Flatten's sort."""

    order: tuple[str, ...]  # every profile name, in preference order
    label: str  # the tied names only: "1g.18gb before 1g.35gb"; "" without ties


def tie_orders(rows: Sequence[GiProfileRow]) -> list[TieOrder]:
    """Every order the tied profiles can come in (one when nothing ties)."""
    groups: dict[tuple[int, int, tuple[int, ...]], list[str]] = {}
    for row in sorted(rows, key=lambda r: (sort_key(r), r.index)):
        groups.setdefault(sort_key(row), []).append(row.name)
    per_group = [list(itertools.permutations(names)) for names in groups.values()]
    orders = []
    for choice in itertools.product(*per_group):
        tied = "; ".join(" before ".join(group) for group in choice if len(group) > 1)
        orders.append(TieOrder(tuple(n for group in choice for n in group), tied))
    return orders


def flatten(
    desired: Mapping[str, int], rows: Sequence[GiProfileRow], tie_order: Sequence[str]
) -> list[GiProfileRow]:
    """mig-parted's ``MigConfig.Flatten``: one entry per instance, sorted, ties in
    ``tie_order`` (the map iteration order Go happened to pick)."""
    by_name = {r.name: r for r in rows}
    rank = {name: i for i, name in enumerate(tie_order)}
    keys = sorted((n for n, c in desired.items() if c > 0), key=lambda n: rank.get(n, len(rank)))
    entries = [by_name[n] for n in keys for _ in range(desired[n])]
    # Stable, like Go's insertion sort for short lists: ties keep the map order.
    return sorted(entries, key=sort_key)


def permutations(mps: list[GiProfileRow]) -> Iterator[list[GiProfileRow]]:
    """``iteratePermutationsUntilSuccess``'s visiting order, swap for swap.

    Two entries of one profile are the same pointer in Go, so ``shouldSwap`` skips
    swapping in a profile already tried at this position.
    """

    def iterate(i: int) -> Iterator[list[GiProfileRow]]:
        if i >= len(mps):
            yield mps
            return
        for j in range(i, len(mps)):
            if any(mps[k].index == mps[j].index for k in range(i, j)):
                continue
            mps[i], mps[j] = mps[j], mps[i]
            yield from iterate(i + 1)
            mps[i], mps[j] = mps[j], mps[i]

    yield from iterate(0)


class _OrderingFailed(Exception):
    """An ordering failed; the next one is tried (mig-parted logs and goes on)."""


class MigPartedModel:
    """mig-parted's ``SetMigConfig`` for one GPU, over pynvml (NVML must be initialised)."""

    def __init__(self, tie_order: Sequence[str] = ()) -> None:
        self.tie_order = tuple(tie_order)
        self._full_ci_index: dict[int, int] = {}  # GI profile id -> index of its full CI

    # -- reading what the GPU holds (GetMigConfig) --------------------------------------

    def _gpu_instances(self, device: Any, rows: Sequence[GiProfileRow]) -> list[Any]:
        found = []
        for row in rows:
            buf = (pynvml.c_nvmlGpuInstance_t * _LIST_BUFFER)()
            count = ctypes.c_uint(_LIST_BUFFER)
            pynvml.nvmlDeviceGetGpuInstances(device, row.id, buf, ctypes.byref(count))
            found += [(row, buf[i]) for i in range(count.value)]
        return found

    def _compute_instances(self, gi: Any) -> list[tuple[Any, Any]]:
        found = []
        for index in range(pynvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
            info = _expected(
                pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo, gi, index, _SHARED
            )
            if info is None:
                continue
            buf = (pynvml.c_nvmlComputeInstance_t * _LIST_BUFFER)()
            count = ctypes.c_uint(_LIST_BUFFER)
            pynvml.nvmlGpuInstanceGetComputeInstances(gi, info.id, buf, ctypes.byref(count))
            found += [(info, buf[i]) for i in range(count.value)]
        return found

    def current_config(self, device: Any, rows: Sequence[GiProfileRow]) -> Counter[str]:
        """Profile name -> count, one per CI, named as mig-parted names them."""
        config: Counter[str] = Counter()
        for row, gi in self._gpu_instances(device, rows):
            for info, _ in self._compute_instances(gi):
                c = int(info.sliceCount)
                config[row.name if c == row.slices else f"{c}c.{row.name}"] += 1
        return config

    def clear(self, device: Any, rows: Sequence[GiProfileRow]) -> None:
        """``ClearMigConfig``: every CI of a GI, then the GI, walking the profiles."""
        for _, gi in self._gpu_instances(device, rows):
            for _, ci in self._compute_instances(gi):
                pynvml.nvmlComputeInstanceDestroy(ci)
            pynvml.nvmlGpuInstanceDestroy(gi)

    # -- creating -----------------------------------------------------------------------

    def _ci_index(self, gi: Any, row: GiProfileRow) -> int:
        """The index of the CI profile spanning a GI of ``row`` with all its SMs."""
        known = self._full_ci_index.get(row.id)
        if known is not None:
            return known
        spanning = []
        for index in range(pynvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
            info = _expected(
                pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo, gi, index, _SHARED
            )
            if info is not None and int(info.sliceCount) == row.slices:
                spanning.append((int(info.multiprocessorCount) == row.multiprocessors, index))
        if not spanning:
            raise _OrderingFailed(f"{row.name} offers no CI spanning it")
        chosen = max(spanning, key=lambda s: (s[0], -s[1]))[1]
        self._full_ci_index[row.id] = chosen
        return chosen

    def _try_ordering(
        self, device: Any, rows: Sequence[GiProfileRow], mps: list[GiProfileRow]
    ) -> None:
        for attempt in range(2):  # maxClearAttempts = 1
            if not self.current_config(device, rows):
                break
            if attempt == 1:
                raise _OrderingFailed("exceeded maximum attempts to clear MigConfig")
            try:
                self.clear(device, rows)
            except pynvml.NVMLError as exc:
                raise _OrderingFailed(f"error clearing MigConfig: {exc}") from None
        last_profile = -1
        gi: Any = None
        for mp in mps:
            pynvml.nvmlDeviceGetGpuInstanceProfileInfo(device, mp.index)
            reuse = gi is not None and last_profile == mp.index
            last_profile = mp.index
            while True:
                if not reuse:
                    try:
                        gi = pynvml.nvmlDeviceCreateGpuInstance(device, mp.id)
                    except pynvml.NVMLError as exc:
                        raise _OrderingFailed(f"creating GI {mp.name}: {exc}") from None
                try:
                    index = self._ci_index(gi, mp)
                    info = pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, index, _SHARED)
                    pynvml.nvmlGpuInstanceCreateComputeInstance(gi, info.id)
                except (pynvml.NVMLError, _OrderingFailed) as exc:
                    if reuse:
                        reuse = False
                        continue
                    raise _OrderingFailed(f"creating CI {mp.name}: {exc}") from None
                break

    def apply(self, gpu: int, desired: Mapping[str, int]) -> ModelResult:
        """``assert`` then ``SetMigConfig`` on GPU ``gpu`` for ``desired`` (name -> count)."""
        device = pynvml.nvmlDeviceGetHandleByIndex(gpu)
        rows = gi_profile_table(device)
        wanted = Counter({n: c for n, c in desired.items() if c > 0})
        if self.current_config(device, rows) == wanted:
            return ModelResult(orderings=0, succeeded=True, skipped=True)
        orderings = 0
        for mps in permutations(flatten(wanted, rows, self.tie_order)):
            orderings += 1
            try:
                self._try_ordering(device, rows, mps)
            except _OrderingFailed:
                continue
            return ModelResult(orderings=orderings, succeeded=True, skipped=False)
        # "all orderings failed": the GPU is cleared and left empty.
        self.clear(device, rows)
        return ModelResult(orderings=orderings, succeeded=False, skipped=False)


def apply_mode(gpus: Sequence[int], enabled: Mapping[int, bool]) -> tuple[int, ...]:
    """mig-parted's mode step, once ``assert --mode-only`` failed for some GPU.

    For EVERY matched GPU, not only those whose mode differs: clear its instances (when
    MIG is on) and call ``SetMigMode``; returns the GPUs to reset: all of them when any
    mode change is pending (``nvidia-smi -r -i <every bus id>``), else none.
    """
    model = MigPartedModel()
    pending = False
    for index in gpus:
        device = pynvml.nvmlDeviceGetHandleByIndex(index)
        current, _ = pynvml.nvmlDeviceGetMigMode(device)
        if current == pynvml.NVML_DEVICE_MIG_ENABLE:
            model.clear(device, gi_profile_table(device))
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if enabled[index] else pynvml.NVML_DEVICE_MIG_DISABLE
        pynvml.nvmlDeviceSetMigMode(device, mode)
        current, wanted = pynvml.nvmlDeviceGetMigMode(device)
        pending = pending or current != wanted
    return tuple(gpus) if pending else ()
