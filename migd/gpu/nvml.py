"""The NVML adapter: the only module of migd that imports pynvml.

It turns raw pynvml/ctypes calls into the typed values of ``migd.core.layout`` (a
``NodeSnapshot`` of every GPU with its profile table, instances and processes) and
offers the handful of mutations migd needs, each with an explicit placement. Every
``pynvml.NVMLError`` becomes a ``migd.errors.NvmlError`` that keeps the NVML code and
its name (``IN_USE``); nothing above this module sees pynvml, ctypes or return codes.

The adapter is safe to use from several threads at once (NVML is thread-safe, and
the executor runs one thread per GPU). It records when each outstanding NVML call
started, so the daemon can withhold watchdog pings while a call hangs in the driver.
"""

from __future__ import annotations

import ctypes
import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import pynvml

from migd.core.layout import (
    CiProfile,
    ComputeInstance,
    GiProfile,
    GpuInstance,
    GpuState,
    NodeSnapshot,
    Placement,
)
from migd.core.profiles import (
    CI_INDEX_SLICES,
    canonical_or_raw,
    ci_fits,
    short_name,
    standard_ci_index,
)
from migd.errors import NvmlError, ReadOnlyError

T = TypeVar("T")

# NVML return codes by name, read from pynvml itself so new codes need no edit here.
_ERROR_NAMES: dict[int, str] = {
    pynvml.NVML_SUCCESS: "SUCCESS",
    **{
        getattr(pynvml, attr): attr[len("NVML_ERROR_") :]
        for attr in dir(pynvml)
        if attr.startswith("NVML_ERROR_") and isinstance(getattr(pynvml, attr), int)
    },
}

# List buffers are never sized from a count the driver gives: the real driver was seen
# to write 7 placements into a 2-entry buffer. 64 exceeds every placement axis (≤ 12).
_LIST_BUFFER = 64
# Profile indices are enumerated until INVALID_ARGUMENT; this bound only guards
# against a driver that never says so.
_MAX_PROFILE_INDEX = 64
_NOT_MIG = 0xFFFFFFFF  # gpuInstanceId / computeInstanceId of a process outside MIG

# Errors that concern the library or the driver rather than one GPU: met while
# reading a GPU they still fail the whole snapshot, since every GPU would answer alike.
_NODE_ERRORS = frozenset(
    {
        "UNINITIALIZED",
        "DRIVER_NOT_LOADED",
        "LIB_RM_VERSION_MISMATCH",
        "LIBRARY_NOT_FOUND",
        "FUNCTION_NOT_FOUND",
    }
)


def error_name(code: int) -> str:
    """The NVML name of a return code (``19`` → ``IN_USE``; ``0`` → ``SUCCESS``)."""
    return _ERROR_NAMES.get(code, f"CODE_{code}")


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _short_profile_name(raw: bytes | str) -> str:
    """``b"MIG 1g.18gb"`` → ``1g.18gb``: the name exactly as the GPU reports it."""
    return short_name(_text(raw).strip())


def rule_ci_profiles(gi: GiProfile) -> tuple[CiProfile, ...]:
    """The CI profiles a GI profile offers, by rule, for when no GI exists to ask.

    NVML can only describe CI profiles through an existing GI; migd does not create
    one just to look. One standard CI profile per size the GI offers, with ids equal
    to their index (as seen on real GPUs); placements follow the first-fit model
    (every start 0..g-c). The executor maps these onto the real table once the GI
    exists.
    """
    g = gi.slice_count
    profiles = []
    for index in sorted({standard_ci_index(c) for c in CI_INDEX_SLICES.values()}):
        c = CI_INDEX_SLICES[index]
        if not ci_fits(c, g):
            continue
        profiles.append(
            CiProfile(
                index=index,
                id=index,
                name=gi.name if c == g else f"{c}c.{gi.name}",
                slice_count=c,
                instance_count=g // c,
                multiprocessor_count=gi.multiprocessor_count * c // g,
                placements=tuple(Placement(s, c) for s in range(g - c + 1)),
            )
        )
    return tuple(profiles)


@dataclass(frozen=True)
class _Identity:
    """What a device is: fixed for the life of one nvmlInit."""

    name: str
    uuid: str
    bus_id: str
    pci_device_id: int
    pci_subsystem_id: int
    memory_total_bytes: int

    @property
    def model(self) -> tuple[int, int, int]:
        """GPUs alike in these have the same profile tables."""
        return (self.pci_device_id, self.pci_subsystem_id, self.memory_total_bytes)


class _Calls:
    """Start times of the NVML calls in flight, shared by every thread of one adapter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}
        self._tokens = itertools.count()

    @contextmanager
    def track(self) -> Iterator[None]:
        token = next(self._tokens)
        with self._lock:
            self._started[token] = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                del self._started[token]

    def oldest(self) -> float | None:
        with self._lock:
            return min(self._started.values(), default=None)


class NvmlAdapter:
    """Typed reads and the few mutations migd needs, over pynvml.

    Open it with ``with NvmlAdapter.open(read_only=...) as nvml:``. GPUs are addressed
    by NVML index; GPU and compute instances by their ids, so no handle ever leaves
    this class (handles are opaque pointers, meaningless to compare by value).
    """

    def __init__(
        self,
        *,
        read_only: bool = False,
        on_error: Callable[[str, str], None] | None = None,
    ) -> None:
        self.read_only = read_only
        self._on_error = on_error
        self._calls = _Calls()
        self._handles: dict[int, Any] = {}
        self._identities: dict[int, _Identity] = {}
        self._lock = threading.Lock()
        # Real CI tables learned from existing GIs, keyed by GPU model and GI profile id:
        # a CI table is a property of the model, so one GI teaches it for all alike GPUs.
        self._ci_tables: dict[tuple[int, int, int, int], tuple[CiProfile, ...]] = {}
        # GI profile tables by GPU model: fixed for the life of the driver, and alike
        # GPUs have the same one (as for the CI tables), so read once per model.
        self._gi_tables: dict[tuple[int, int, int], tuple[GiProfile, ...]] = {}

    # -- lifecycle -------------------------------------------------------------------

    @classmethod
    @contextmanager
    def open(
        cls,
        *,
        read_only: bool = False,
        on_error: Callable[[str, str], None] | None = None,
    ) -> Iterator[NvmlAdapter]:
        """nvmlInit, yield an adapter, nvmlShutdown (also when the body raises)."""
        adapter = cls(read_only=read_only, on_error=on_error)
        adapter._call("nvmlInit", pynvml.nvmlInit)
        try:
            yield adapter
        except BaseException:
            # The body's error is the one to report, not a shutdown failing after it.
            with suppress(NvmlError):
                adapter._call("nvmlShutdown", pynvml.nvmlShutdown)
            raise
        adapter._call("nvmlShutdown", pynvml.nvmlShutdown)

    def oldest_call_started(self) -> float | None:
        """``time.monotonic()`` at which the oldest NVML call still running began."""
        return self._calls.oldest()

    # -- plumbing --------------------------------------------------------------------

    def _call(
        self,
        operation: str,
        fn: Callable[..., T],
        *args: Any,
        expected: tuple[str, ...] = (),
    ) -> T:
        """Run one pynvml call, tracked while in flight, NVMLError → NvmlError.

        ``expected`` names errors that are answers rather than failures (the
        INVALID_ARGUMENT that ends a profile enumeration): they still raise, but are
        not reported to ``on_error``.
        """
        with self._calls.track():
            try:
                return fn(*args)
            except pynvml.NVMLError as exc:
                code = int(exc.value)
                name = error_name(code)
                try:
                    text = str(exc)
                except Exception:  # the error text is a courtesy; never mask the error
                    text = f"NVML error {code}"
                if self._on_error is not None and name not in expected:
                    self._on_error(operation, name)
                raise NvmlError(operation, code, name, text) from None

    def _list(self, operation: str, fn: Callable[..., Any], item: Any, *args: Any) -> list[Any]:
        """The items an NVML list call returns: ``fn(*args, array, &count)``.

        ``array`` holds ``_LIST_BUFFER`` ``item`` structs whatever the driver's count says.
        """
        buf = (item * _LIST_BUFFER)()
        count = ctypes.c_uint(_LIST_BUFFER)
        self._call(operation, fn, *args, buf, ctypes.byref(count))
        return buf[: count.value]

    def _profile_infos(
        self, operation: str, fn: Callable[..., Any], handle: Any, *args: Any
    ) -> Iterator[tuple[int, Any]]:
        """``(index, fn(handle, index, *args))`` for profile indices from 0 on.

        The driver ends the table with INVALID_ARGUMENT and answers NOT_SUPPORTED for
        an index this GPU (or GI) lacks, which is skipped.
        """
        for index in range(_MAX_PROFILE_INDEX):
            try:
                info = self._call(
                    operation,
                    fn,
                    handle,
                    index,
                    *args,
                    expected=("INVALID_ARGUMENT", "NOT_SUPPORTED"),
                )
            except NvmlError as exc:
                if exc.name == "INVALID_ARGUMENT":
                    return
                if exc.name == "NOT_SUPPORTED":
                    continue
                raise
            yield index, info

    def _mutating(self, operation: str) -> None:
        if self.read_only:
            raise ReadOnlyError(f"{operation}: the NVML adapter was opened read-only")

    def _device(self, index: int) -> Any:
        # Handles by index stay valid for the life of one nvmlInit.
        with self._lock:
            handle = self._handles.get(index)
        if handle is None:
            handle = self._call(
                "nvmlDeviceGetHandleByIndex", pynvml.nvmlDeviceGetHandleByIndex, index
            )
            with self._lock:
                self._handles[index] = handle
        return handle

    def _gpu_instance(self, device: Any, gi_id: int) -> Any:
        return self._call(
            "nvmlDeviceGetGpuInstanceById", pynvml.nvmlDeviceGetGpuInstanceById, device, gi_id
        )

    # -- reads -----------------------------------------------------------------------

    def device_count(self) -> int:
        return self._call("nvmlDeviceGetCount", pynvml.nvmlDeviceGetCount)

    def snapshot(self) -> NodeSnapshot:
        """Every GPU of the node as read now, with the driver and NVML versions.

        A GPU whose read fails (it fell off the bus: GPU_IS_LOST) is listed as
        unreadable instead of failing the snapshot, so the other GPUs can still be
        reconciled; an error that concerns the library or the driver as a whole fails
        the snapshot, as does failing to count the GPUs.
        """
        gpus = tuple(self._gpu_or_unreadable(i) for i in range(self.device_count()))
        return NodeSnapshot(
            gpus=gpus,
            driver_version=self._version(
                "nvmlSystemGetDriverVersion", pynvml.nvmlSystemGetDriverVersion
            ),
            nvml_version=self._version("nvmlSystemGetNVMLVersion", pynvml.nvmlSystemGetNVMLVersion),
        )

    def _gpu_or_unreadable(self, index: int) -> GpuState:
        try:
            return self.gpu(index)
        except NvmlError as exc:
            if exc.name in _NODE_ERRORS:
                raise
            return self._unreadable(index, exc)

    def _unreadable(self, index: int, exc: NvmlError) -> GpuState:
        """GPU ``index`` marked unreadable, with the identity read before, if any."""
        with self._lock:
            ident = self._identities.get(index)
        return GpuState(
            index=index,
            uuid=ident.uuid if ident else "",
            name=ident.name if ident else "",
            pci_device_id=ident.pci_device_id if ident else 0,
            pci_subsystem_id=ident.pci_subsystem_id if ident else 0,
            bus_id=ident.bus_id if ident else "",
            memory_total_bytes=ident.memory_total_bytes if ident else 0,
            # Unknown, not off: callers test ``readable`` before trusting these.
            mig_capable=False,
            mig_enabled=False,
            mig_pending=False,
            error=exc.name,
            error_call=exc.operation,
        )

    def _version(self, operation: str, fn: Callable[[], bytes | str]) -> str:
        # Versions are informative; a library without the call still yields a snapshot.
        try:
            return _text(self._call(operation, fn, expected=("FUNCTION_NOT_FOUND",)))
        except NvmlError as exc:
            if exc.name in ("FUNCTION_NOT_FOUND", "NOT_SUPPORTED"):
                return ""
            raise

    def _identity(self, index: int, dev: Any) -> _Identity:
        # What a device at an index is cannot change during one nvmlInit: read it once.
        with self._lock:
            known = self._identities.get(index)
        if known is not None:
            return known
        pci = self._call("nvmlDeviceGetPciInfo", pynvml.nvmlDeviceGetPciInfo, dev)
        memory = self._call("nvmlDeviceGetMemoryInfo", pynvml.nvmlDeviceGetMemoryInfo, dev)
        identity = _Identity(
            name=_text(self._call("nvmlDeviceGetName", pynvml.nvmlDeviceGetName, dev)),
            uuid=_text(self._call("nvmlDeviceGetUUID", pynvml.nvmlDeviceGetUUID, dev)),
            bus_id=_text(pci.busId),
            pci_device_id=int(pci.pciDeviceId),
            pci_subsystem_id=int(pci.pciSubSystemId),
            memory_total_bytes=int(memory.total),
        )
        with self._lock:
            self._identities[index] = identity
        return identity

    def gpu(self, index: int) -> GpuState:
        """Re-read one GPU: MIG mode, profile table, instances, processes."""
        dev = self._device(index)
        ident = self._identity(index, dev)
        try:
            current, pending = self._call(
                "nvmlDeviceGetMigMode",
                pynvml.nvmlDeviceGetMigMode,
                dev,
                expected=("NOT_SUPPORTED",),
            )
        except NvmlError as exc:
            if exc.name != "NOT_SUPPORTED":
                raise
            capable, enabled, pending_enabled = False, False, False
        else:
            capable = True
            enabled = current == pynvml.NVML_DEVICE_MIG_ENABLE
            pending_enabled = pending == pynvml.NVML_DEVICE_MIG_ENABLE

        profiles: tuple[GiProfile, ...] = ()
        instances: tuple[GpuInstance, ...] = ()
        if capable:
            table = self._gi_table(ident.model, dev)
            # Instances exist only while MIG is on; skipping the scan saves ~20 calls.
            if enabled:
                instances = self._instances(dev, table, ident.model)
            with self._lock:
                learned = {p.id: self._ci_tables.get((*ident.model, p.id)) for p in table}
            profiles = tuple(
                dataclasses.replace(p, ci_profiles=learned[p.id] or rule_ci_profiles(p))
                for p in table
            )
            if instances:
                instances = self._attach_processes(dev, instances)
        slot_count = max((pl.end for p in profiles for pl in p.placements), default=8)
        return GpuState(
            index=index,
            uuid=ident.uuid,
            name=ident.name,
            pci_device_id=ident.pci_device_id,
            pci_subsystem_id=ident.pci_subsystem_id,
            bus_id=ident.bus_id,
            memory_total_bytes=ident.memory_total_bytes,
            mig_capable=capable,
            mig_enabled=enabled,
            mig_pending=pending_enabled,
            profiles=profiles,
            instances=instances,
            slot_count=slot_count,
        )

    def _gi_profiles(self, dev: Any) -> tuple[GiProfile, ...]:
        """GI profiles from index 0 until INVALID_ARGUMENT, skipping NOT_SUPPORTED ones."""
        profiles: list[GiProfile] = []
        seen: set[int] = set()
        for index, info in self._profile_infos(
            "nvmlDeviceGetGpuInstanceProfileInfo",
            pynvml.nvmlDeviceGetGpuInstanceProfileInfo,
            dev,
            2,
        ):
            if info.id in seen:
                continue
            seen.add(info.id)
            placements = self._list(
                "nvmlDeviceGetGpuInstancePossiblePlacements",
                pynvml.nvmlDeviceGetGpuInstancePossiblePlacements,
                pynvml.c_nvmlGpuInstancePlacement_t,
                dev,
                info.id,
            )
            profiles.append(
                GiProfile(
                    index=index,
                    id=int(info.id),
                    name=_short_profile_name(info.name),
                    slice_count=int(info.sliceCount),
                    instance_count=int(info.instanceCount),
                    memory_mb=int(info.memorySizeMB),
                    multiprocessor_count=int(info.multiprocessorCount),
                    placements=tuple(Placement(int(p.start), int(p.size)) for p in placements),
                )
            )
        return tuple(profiles)

    def _instances(
        self,
        dev: Any,
        table: tuple[GiProfile, ...],
        model: tuple[int, int, int],
    ) -> tuple[GpuInstance, ...]:
        found: list[GpuInstance] = []
        for profile in table:
            for handle in self._list(
                "nvmlDeviceGetGpuInstances",
                pynvml.nvmlDeviceGetGpuInstances,
                pynvml.c_nvmlGpuInstance_t,
                dev,
                profile.id,
            ):
                info = self._call("nvmlGpuInstanceGetInfo", pynvml.nvmlGpuInstanceGetInfo, handle)
                cis_table = self._learn_ci_table(handle, profile, model)
                found.append(
                    GpuInstance(
                        id=int(info.id),
                        profile_id=int(info.profileId),
                        placement=Placement(int(info.placement.start), int(info.placement.size)),
                        compute_instances=self._compute_instances(handle, cis_table),
                    )
                )
        return tuple(sorted(found, key=lambda gi: gi.id))

    def _learn_ci_table(
        self, gi_handle: Any, profile: GiProfile, model: tuple[int, int, int]
    ) -> tuple[CiProfile, ...]:
        key = (*model, profile.id)
        with self._lock:
            known = self._ci_tables.get(key)
        if known is not None:
            return known
        table = self._read_ci_profiles(gi_handle, profile)
        with self._lock:
            self._ci_tables[key] = table
        return table

    def _read_ci_profiles(self, gi_handle: Any, profile: GiProfile) -> tuple[CiProfile, ...]:
        """The CI profiles an existing GI offers, with their possible placements."""
        profiles: list[CiProfile] = []
        for index, info in self._profile_infos(
            "nvmlGpuInstanceGetComputeInstanceProfileInfo",
            pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo,
            gi_handle,
            pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
            2,
        ):
            placements = self._list(
                "nvmlGpuInstanceGetComputeInstancePossiblePlacements",
                pynvml.nvmlGpuInstanceGetComputeInstancePossiblePlacements,
                pynvml.c_nvmlComputeInstancePlacement_t,
                gi_handle,
                info.id,
            )
            slices = int(info.sliceCount)
            reported = _short_profile_name(info.name)
            fallback = (
                profile.name if slices == profile.slice_count else f"{slices}c.{profile.name}"
            )
            profiles.append(
                CiProfile(
                    index=index,
                    id=int(info.id),
                    name=canonical_or_raw(reported) if reported else fallback,
                    slice_count=slices,
                    instance_count=int(info.instanceCount),
                    multiprocessor_count=int(info.multiprocessorCount),
                    placements=tuple(Placement(int(p.start), int(p.size)) for p in placements),
                )
            )
        return tuple(profiles)

    def _compute_instances(
        self, gi_handle: Any, table: tuple[CiProfile, ...]
    ) -> tuple[ComputeInstance, ...]:
        found: list[ComputeInstance] = []
        for ci_profile in table:
            for handle in self._list(
                "nvmlGpuInstanceGetComputeInstances",
                pynvml.nvmlGpuInstanceGetComputeInstances,
                pynvml.c_nvmlComputeInstance_t,
                gi_handle,
                ci_profile.id,
            ):
                info = self._call(
                    "nvmlComputeInstanceGetInfo", pynvml.nvmlComputeInstanceGetInfo, handle
                )
                found.append(
                    ComputeInstance(
                        id=int(info.id),
                        profile_id=int(info.profileId),
                        placement=Placement(int(info.placement.start), int(info.placement.size)),
                    )
                )
        return tuple(sorted(found, key=lambda ci: ci.id))

    def _attach_processes(
        self, dev: Any, instances: tuple[GpuInstance, ...]
    ) -> tuple[GpuInstance, ...]:
        # There is no per-GI process call: the parent GPU's list carries GI and CI ids.
        processes = self._call(
            "nvmlDeviceGetComputeRunningProcesses",
            pynvml.nvmlDeviceGetComputeRunningProcesses,
            dev,
        )
        placed = [
            (int(p.pid), int(p.gpuInstanceId), int(p.computeInstanceId))
            for p in processes
            if int(p.gpuInstanceId) != _NOT_MIG
        ]
        result = []
        for gi in instances:
            cis = tuple(
                ComputeInstance(
                    id=ci.id,
                    profile_id=ci.profile_id,
                    placement=ci.placement,
                    pids=tuple(sorted(pid for pid, g, c in placed if g == gi.id and c == ci.id)),
                )
                for ci in gi.compute_instances
            )
            pids = tuple(sorted({pid for pid, g, _ in placed if g == gi.id}))
            result.append(
                GpuInstance(
                    id=gi.id,
                    profile_id=gi.profile_id,
                    placement=gi.placement,
                    compute_instances=cis,
                    pids=pids,
                )
            )
        return tuple(result)

    def _gi_table(self, model: tuple[int, int, int], dev: Any) -> tuple[GiProfile, ...]:
        with self._lock:
            cached = self._gi_tables.get(model)
        if cached is None:
            cached = self._gi_profiles(dev)
            with self._lock:
                self._gi_tables[model] = cached
        return cached

    def compute_instance_profiles(self, index: int, gi_id: int) -> tuple[CiProfile, ...]:
        """The real CI profile table of an existing GI (learned once per GPU model).

        The executor asks this right after creating a GI, to place its CIs with the
        ids and placements the driver really offers.
        """
        dev = self._device(index)
        ident = self._identity(index, dev)
        gi_handle = self._gpu_instance(dev, gi_id)
        info = self._call("nvmlGpuInstanceGetInfo", pynvml.nvmlGpuInstanceGetInfo, gi_handle)
        table = self._gi_table(ident.model, dev)
        profile = next((p for p in table if p.id == int(info.profileId)), None)
        if profile is None:
            raise NvmlError(
                "nvmlGpuInstanceGetInfo",
                pynvml.NVML_ERROR_NOT_FOUND,
                "NOT_FOUND",
                f"GPU {index}: GI {gi_id} has profile id {info.profileId}, not in its table",
            )
        return self._learn_ci_table(gi_handle, profile, ident.model)

    def mig_mode(self, index: int) -> tuple[bool, bool]:
        """(current, pending) MIG mode of a MIG-capable GPU: two cheap calls, no table scan."""
        current, pending = self._call(
            "nvmlDeviceGetMigMode", pynvml.nvmlDeviceGetMigMode, self._device(index)
        )
        enable = pynvml.NVML_DEVICE_MIG_ENABLE
        return current == enable, pending == enable

    # -- mutations -------------------------------------------------------------------

    def set_mig_mode(self, index: int, enabled: bool) -> str:
        """Request MIG on or off; returns the activation status name.

        ``SUCCESS`` when the mode took effect, ``IN_USE`` when it stays pending until a
        GPU reset, ``RESET_REQUIRED`` when only a reboot can activate it. NVML returns
        the status as a plain int rather than raising, so it is named here.
        """
        self._mutating("nvmlDeviceSetMigMode")
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if enabled else pynvml.NVML_DEVICE_MIG_DISABLE
        status = self._call(
            "nvmlDeviceSetMigMode", pynvml.nvmlDeviceSetMigMode, self._device(index), mode
        )
        return error_name(int(status))

    def create_gpu_instance(self, index: int, profile_id: int, placement: Placement) -> int:
        """Create a GI of ``profile_id`` at ``placement``; returns its GI id."""
        self._mutating("nvmlDeviceCreateGpuInstanceWithPlacement")
        spot = pynvml.c_nvmlGpuInstancePlacement_t(placement.start, placement.size)
        handle = self._call(
            "nvmlDeviceCreateGpuInstanceWithPlacement",
            pynvml.nvmlDeviceCreateGpuInstanceWithPlacement,
            self._device(index),
            profile_id,
            ctypes.byref(spot),
        )
        info = self._call("nvmlGpuInstanceGetInfo", pynvml.nvmlGpuInstanceGetInfo, handle)
        return int(info.id)

    def create_compute_instance(
        self, index: int, gi_id: int, ci_profile_id: int, placement: Placement
    ) -> int:
        """Create a CI of ``ci_profile_id`` at ``placement`` inside GI ``gi_id``; its CI id."""
        self._mutating("nvmlGpuInstanceCreateComputeInstanceWithPlacement")
        gi_handle = self._gpu_instance(self._device(index), gi_id)
        spot = pynvml.c_nvmlComputeInstancePlacement_t(placement.start, placement.size)
        handle = self._call(
            "nvmlGpuInstanceCreateComputeInstanceWithPlacement",
            pynvml.nvmlGpuInstanceCreateComputeInstanceWithPlacement,
            gi_handle,
            ci_profile_id,
            ctypes.byref(spot),
        )
        info = self._call("nvmlComputeInstanceGetInfo", pynvml.nvmlComputeInstanceGetInfo, handle)
        return int(info.id)

    def destroy_compute_instance(self, index: int, gi_id: int, ci_id: int) -> None:
        self._mutating("nvmlComputeInstanceDestroy")
        gi_handle = self._gpu_instance(self._device(index), gi_id)
        handle = self._call(
            "nvmlGpuInstanceGetComputeInstanceById",
            pynvml.nvmlGpuInstanceGetComputeInstanceById,
            gi_handle,
            ci_id,
        )
        self._call("nvmlComputeInstanceDestroy", pynvml.nvmlComputeInstanceDestroy, handle)

    def destroy_gpu_instance(self, index: int, gi_id: int) -> None:
        self._mutating("nvmlGpuInstanceDestroy")
        handle = self._gpu_instance(self._device(index), gi_id)
        self._call("nvmlGpuInstanceDestroy", pynvml.nvmlGpuInstanceDestroy, handle)
