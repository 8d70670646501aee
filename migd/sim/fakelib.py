"""The simulated libnvidia-ml: an object pynvml takes for the C library.

pynvml resolves every C function with ``getattr(pynvml.nvmlLib, name)`` and calls it
with ctypes arguments: handles as pointer objects, outputs as ``byref()`` targets,
caller-allocated arrays with an in/out count. :class:`FakeNvmlLibrary` answers those
names with :class:`Symbol` objects that take exactly those arguments, write results
where the C library would, and return an ``nvmlReturn_t`` int, so pynvml's own
wrappers, structures and error classes run unchanged above it.

Each call: (1) checks the library is initialised; (2) reads the node from the STATE
file (cached while unchanged); (3) applies the faults that name it — counting the call
under the exclusive lock where a fault counts calls — and sleeps any injected delay
*outside* the lock; (4) answers GPU_IS_LOST for a lost GPU; (5) runs the call: a query
over the node it read, or a mutation as one read-modify-write under the exclusive
lock, where the kill fault is counted; (6) appends ``<symbol> <RESULT>`` to the call
log. Handles are pointer values that name the GPU and the instance's serial
(:mod:`migd.sim.handles`); a handle whose instance is gone gets INVALID_ARGUMENT.

Where the real library would corrupt memory the simulator refuses loudly instead, so
that such code fails in tests rather than on a GPU node: a placement structure passed
by value (the C function takes a pointer) gets INVALID_ARGUMENT, and a placement or
instance array shorter than what must be written gets INSUFFICIENT_SIZE (the real
driver was seen to write past a short placement buffer).
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pynvml

from migd.core import nvml_codes
from migd.core.gpu_models import CiModel, GiModel, GpuModel
from migd.core.profiles import CI_PROFILE_INDEX_COUNT, DRIVER_NAME_PREFIX, short_name
from migd.sim import faults, handles
from migd.sim import node as sim
from migd.sim.handles import Handle, Kind
from migd.sim.state import ComputeInstance, Gpu, GpuInstance, NodeState, StateError
from migd.sim.store import StateStore, Transaction
from migd.sim.symbols import MUTATING

T = TypeVar("T")

# What the real H200 node answered (fixtures/h200-nvml-readout.json).
DRIVER_VERSION = "580.159.04"
NVML_VERSION = "13.580.159.04"

_MIB = 1 << 20
_RESERVED_BYTES = 512 * _MIB  # memory the driver keeps on a whole GPU
_NO_INSTANCE = 0xFFFFFFFF  # gpuInstanceId / computeInstanceId of a process outside MIG
NVML_GPU_VIRTUALIZATION_MODE_NONE = 0
NVML_GPU_VIRTUALIZATION_MODE_PASSTHROUGH = 1

_CArgObject = type(ctypes.byref(ctypes.c_int()))


class _BadArgument(Exception):
    """An argument the C library could not have used: INVALID_ARGUMENT."""


def _fail(code: int, reason: str = "") -> sim.NvmlFailure:
    return sim.NvmlFailure(code, reason)


# ---------------------------------------------------------------------------
# ctypes arguments
# ---------------------------------------------------------------------------


def _uint(arg: Any) -> int:
    """An ``unsigned int`` argument: a Python int or a ctypes integer, wrapped like C."""
    if isinstance(arg, bool):
        raise _BadArgument
    if isinstance(arg, int):
        return arg & 0xFFFFFFFF
    value = getattr(arg, "value", None)
    if isinstance(value, int) and not isinstance(arg, ctypes.Array):
        return value & 0xFFFFFFFF
    raise _BadArgument


def _pointer_value(arg: Any) -> int:
    """The address an opaque handle argument carries (0 for NULL)."""
    if arg is None:
        return 0
    if isinstance(arg, int) and not isinstance(arg, bool):
        return arg
    if isinstance(arg, ctypes._Pointer):
        return ctypes.cast(arg, ctypes.c_void_p).value or 0
    if isinstance(arg, ctypes.c_void_p):
        return arg.value or 0
    raise _BadArgument


def _target(arg: Any) -> Any:
    """What a pointer argument points at: the ``byref()`` object, a pointer's contents,
    or an array (which C receives as a pointer to its first element). None for NULL."""
    if arg is None:
        return None
    if isinstance(arg, _CArgObject):
        return arg._obj
    if isinstance(arg, ctypes._Pointer):
        return arg.contents if arg else None
    if isinstance(arg, ctypes.Array):
        return arg
    # A ctypes Structure here was passed by value where C takes a pointer: the real
    # library would read its bytes as an address.
    raise _BadArgument


def _field_names(cls: type) -> list[str]:
    return [f[0] for f in getattr(cls, "_fields_", ())]


def _out_struct(arg: Any, expected: type) -> Any:
    """The structure an output pointer points at; it must have ``expected``'s layout."""
    obj = _target(arg)
    if obj is None or _field_names(type(obj)) != _field_names(expected):
        raise _BadArgument
    return obj


def _out_scalar(arg: Any) -> Any:
    obj = _target(arg)
    if not isinstance(obj, ctypes._SimpleCData):
        raise _BadArgument
    return obj


def _set_scalar(arg: Any, value: int) -> None:
    _out_scalar(arg).value = value


def _out_pointer(arg: Any) -> Any:
    """The pointer-sized slot an output handle argument points at."""
    obj = _target(arg)
    if not isinstance(obj, (ctypes._Pointer, ctypes.c_void_p)):
        raise _BadArgument
    return obj


def _store_pointer(slot: Any, value: int) -> None:
    # The cast pynvml users know: ctypes.cast(byref(h), POINTER(c_void_p))[0] = value.
    ctypes.c_void_p.from_address(ctypes.addressof(slot)).value = value


def _text_in(arg: Any) -> bytes:
    if isinstance(arg, ctypes.c_char_p):
        value = arg.value
    elif isinstance(arg, bytes):
        value = arg
    else:
        raise _BadArgument
    if value is None:
        raise _BadArgument
    return value


def _write_text(buf_arg: Any, length_arg: Any, text: str) -> int:
    """Copy ``text`` and its NUL into a caller buffer of ``length`` bytes."""
    buf = _target(buf_arg)
    length = _uint(length_arg)
    data = text.encode() + b"\0"
    if buf is None:
        raise _BadArgument
    capacity = ctypes.sizeof(buf)
    if length < len(data) or capacity < len(data):
        return nvml_codes.INSUFFICIENT_SIZE
    ctypes.memmove(ctypes.addressof(buf), data, len(data))
    return nvml_codes.SUCCESS


@dataclass(frozen=True)
class _ArrayOut:
    """A caller-allocated output array: where it starts, its element type, its length."""

    base: int
    element: type
    length: int | None  # None when only a pointer to the first element was passed

    def at(self, i: int) -> Any:
        return self.element.from_address(self.base + i * ctypes.sizeof(self.element))


def _array_out(arg: Any) -> _ArrayOut | None:
    obj = _target(arg)
    if obj is None:
        return None
    if isinstance(obj, ctypes.Array):
        return _ArrayOut(ctypes.addressof(obj), obj._type_, len(obj))
    return _ArrayOut(ctypes.addressof(obj), type(obj), None)


def _fill(
    array_arg: Any,
    count_arg: Any,
    items: list[Any],
    write: Callable[[Any, Any], None],
    element_ok: Callable[[type], bool],
    null_array_ok: bool,
) -> int:
    """The list-call protocol: count in = the caller's capacity, count out = what exists.

    A NULL array asks for the count (SUCCESS where nvml.h documents that, otherwise
    INSUFFICIENT_SIZE once there is anything to list); a short array gets
    INSUFFICIENT_SIZE with the needed count.
    """
    count = _out_scalar(count_arg)
    array = _array_out(array_arg)
    if array is None:
        count.value = len(items)
        return nvml_codes.SUCCESS if null_array_ok or not items else nvml_codes.INSUFFICIENT_SIZE
    if not element_ok(array.element):
        raise _BadArgument
    capacity = count.value if array.length is None else min(count.value, array.length)
    if capacity < len(items):
        count.value = len(items)
        return nvml_codes.INSUFFICIENT_SIZE
    for i, item in enumerate(items):
        write(array.at(i), item)
    count.value = len(items)
    return nvml_codes.SUCCESS


def _is_placement(cls: type) -> bool:
    return _field_names(cls) == ["start", "size"]


def _is_handle_slot(cls: type) -> bool:
    return issubclass(cls, (ctypes._Pointer, ctypes.c_void_p))


def _write_placement(slot: Any, placement: tuple[int, int]) -> None:
    slot.start, slot.size = placement


def _placement_in(arg: Any) -> tuple[int, int]:
    obj = _target(arg)
    if obj is None or not _is_placement(type(obj)):
        raise _BadArgument
    return (obj.start, obj.size)


# ---------------------------------------------------------------------------
# The symbol table
# ---------------------------------------------------------------------------

GpuOf = Callable[[NodeState, tuple[Any, ...]], "int | None"]


@dataclass(frozen=True)
class _Spec:
    name: str
    fn: Callable[..., Any]
    gpu_of: GpuOf | None  # which GPU a call concerns (for per-GPU faults and lost GPUs)
    needs_init: bool


_SPECS: dict[str, _Spec] = {}  # filled once below, by the @_symbol definitions


def _symbol(
    name: str, gpu_of: GpuOf | None = None, needs_init: bool = True
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        _SPECS[name] = _Spec(name=name, fn=fn, gpu_of=gpu_of, needs_init=needs_init)
        return fn

    return register


def _by_handle(position: int) -> GpuOf:
    def gpu_of(node: NodeState, args: tuple[Any, ...]) -> int | None:
        try:
            handle = handles.decode(_pointer_value(args[position]))
        except (_BadArgument, IndexError):
            return None
        return handle.gpu if handle is not None else None

    return gpu_of


def _by_index(node: NodeState, args: tuple[Any, ...]) -> int | None:
    try:
        return _uint(args[0])
    except (_BadArgument, IndexError):
        return None


def _by_uuid(node: NodeState, args: tuple[Any, ...]) -> int | None:
    try:
        found = _find_uuid(node, _text_in(args[0]).decode(errors="replace"))
    except (_BadArgument, IndexError):
        return None
    return found.gpu if found is not None else None


def _by_bus_id(node: NodeState, args: tuple[Any, ...]) -> int | None:
    try:
        gpu = _find_bus_id(node, _text_in(args[0]).decode(errors="replace"))
    except (_BadArgument, IndexError):
        return None
    return gpu.index if gpu is not None else None


class Symbol:
    """One C function of the fake library.

    A small callable object rather than a bound method: pynvml assigns attributes to
    the function objects it fetches (``fn.restype = c_char_p`` for nvmlErrorString).
    """

    def __init__(self, lib: FakeNvmlLibrary, spec: _Spec) -> None:
        self.__name__ = spec.name
        self.restype: Any = ctypes.c_int
        self.argtypes: Any = None
        self._lib = lib
        self._spec = spec

    def __call__(self, *args: Any) -> Any:
        return self._lib._invoke(self._spec, args)

    def __repr__(self) -> str:
        return f"<simulated {self.__name__}>"


def _kill_self() -> None:
    # SIGKILL, as a crash would: no cleanup, no flush; the kernel drops the flock.
    os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)  # not reached: a signal sent to oneself is delivered before kill returns


class FakeNvmlLibrary:
    """What ``pynvml.nvmlLib`` is while the simulator is active (see :func:`migd.sim.activate`)."""

    def __init__(self, state_path: str | os.PathLike[str]) -> None:
        self.store = StateStore(state_path)
        self.init_count = 0  # nvmlInitWithFlags minus nvmlShutdown, as NVML counts
        self._count_lock = threading.Lock()

    @property
    def state_path(self) -> str:
        return self.store.path

    def __getattr__(self, name: str) -> Symbol:
        spec = _SPECS.get(name)
        if spec is None:
            # pynvml turns this into NVMLError_FunctionNotFound, as for an old driver.
            raise AttributeError(name)
        symbol = Symbol(self, spec)
        self.__dict__[name] = symbol
        return symbol

    def close(self) -> None:
        self.store.close()

    # -- one call -------------------------------------------------------------

    def _invoke(self, spec: _Spec, args: tuple[Any, ...]) -> Any:
        try:
            result = self._dispatch(spec, args)
        except sim.NvmlFailure as failure:
            result = failure.code
        except _BadArgument:
            result = nvml_codes.INVALID_ARGUMENT
        except (OSError, StateError):
            # The STATE file vanished or was spoiled under a running client.
            result = nvml_codes.UNKNOWN
        name = "SUCCESS" if isinstance(result, bytes) else nvml_codes.code_name(result)
        self.store.log_call(spec.name, name)
        return result

    def _dispatch(self, spec: _Spec, args: tuple[Any, ...]) -> Any:
        if spec.needs_init and self.init_count == 0:
            return nvml_codes.UNINITIALIZED
        if spec.name == "nvmlErrorString":
            return spec.fn(self, None, *args)
        try:
            node = self.store.read()
        except (OSError, StateError):
            if spec.name == "nvmlInitWithFlags":
                return nvml_codes.DRIVER_NOT_LOADED  # no node: as if no driver were loaded
            raise
        gpu = spec.gpu_of(node, args) if spec.gpu_of is not None else None
        effect = faults.effect_without_counting(node.faults, spec.name, gpu)
        if effect is None:
            effect = self.store.transaction(lambda tx: self._take_fault(tx, spec.name, gpu))
        if effect.delay_s > 0:
            time.sleep(effect.delay_s)  # outside the lock: other calls go on meanwhile
            node = self.store.read()
        if effect.code is not None:
            return effect.code
        if gpu is not None and gpu in node.faults.lost_gpus:
            return nvml_codes.GPU_IS_LOST
        return spec.fn(self, node, *args)

    @staticmethod
    def _take_fault(tx: Transaction, name: str, gpu: int | None) -> faults.Effect:
        node, effect = faults.take(tx.node, name, gpu)
        tx.commit(node)
        return effect

    def mutate(self, apply: Callable[[NodeState], tuple[NodeState, T]]) -> T:
        """Run one mutating call as a read-modify-write under the exclusive lock.

        The kill fault is counted here: it SIGKILLs the caller before ``apply`` runs,
        or (``after_effect``) once the new node is on disk but before the call returns.
        A refused call still writes the moved counter.
        """

        def run(tx: Transaction) -> T:
            node, kill = faults.count_mutation(tx.node)
            if kill is not None and not kill.after_effect:
                tx.commit(node)
                _kill_self()
            try:
                new_node, result = apply(node)
            except sim.NvmlFailure:
                tx.commit(node)
                raise
            tx.commit(new_node)
            if kill is not None:
                _kill_self()
            return result

        return self.store.transaction(run)


# ---------------------------------------------------------------------------
# Resolving handles
# ---------------------------------------------------------------------------


def _gpu_of_handle(node: NodeState, arg: Any) -> tuple[Gpu, Handle]:
    handle = handles.decode(_pointer_value(arg))
    if handle is None or handle.gpu >= len(node.gpus):
        raise _fail(nvml_codes.INVALID_ARGUMENT, "not a handle of this node")
    return node.gpus[handle.gpu], handle


def _device(node: NodeState, arg: Any) -> tuple[Gpu, GpuModel]:
    """A whole-GPU device handle (a MIG device handle is refused)."""
    gpu, handle = _gpu_of_handle(node, arg)
    if handle.kind != Kind.DEVICE:
        raise _fail(nvml_codes.INVALID_ARGUMENT, "a GPU handle is needed")
    return gpu, sim.model_of(gpu)


def _any_device(
    node: NodeState, arg: Any
) -> tuple[Gpu, GpuModel, tuple[GpuInstance, ComputeInstance] | None]:
    """A GPU handle or a MIG device handle (then with its GI and CI)."""
    gpu, handle = _gpu_of_handle(node, arg)
    if handle.kind == Kind.DEVICE:
        return gpu, sim.model_of(gpu), None
    if handle.kind == Kind.MIG_DEVICE:
        found = sim.find_ci(gpu, handle.serial)
        if found is not None and gpu.mig_current == 1:
            return gpu, sim.model_of(gpu), found
    raise _fail(nvml_codes.INVALID_ARGUMENT, "not a device handle")


def _gpu_instance(node: NodeState, arg: Any) -> tuple[Gpu, GpuInstance]:
    gpu, handle = _gpu_of_handle(node, arg)
    gi = sim.find_gi(gpu, handle.serial) if handle.kind == Kind.GPU_INSTANCE else None
    if gi is None:
        raise _fail(nvml_codes.INVALID_ARGUMENT, "stale or foreign GPU instance handle")
    return gpu, gi


def _compute_instance(node: NodeState, arg: Any) -> tuple[Gpu, GpuInstance, ComputeInstance]:
    gpu, handle = _gpu_of_handle(node, arg)
    found = sim.find_ci(gpu, handle.serial) if handle.kind == Kind.COMPUTE_INSTANCE else None
    if found is None:
        raise _fail(nvml_codes.INVALID_ARGUMENT, "stale or foreign compute instance handle")
    return gpu, found[0], found[1]


def _mig_capable(model: GpuModel) -> None:
    if not model.mig_capable:
        raise _fail(nvml_codes.NOT_SUPPORTED, f"{model.name} has no MIG")


def _device_handle(gpu: Gpu) -> int:
    return Handle(Kind.DEVICE, gpu.index).value


def _gi_handle(gpu: Gpu, gi: GpuInstance) -> int:
    return Handle(Kind.GPU_INSTANCE, gpu.index, gi.serial).value


def _ci_handle(gpu: Gpu, ci: ComputeInstance) -> int:
    return Handle(Kind.COMPUTE_INSTANCE, gpu.index, ci.serial).value


def _mig_handle(gpu: Gpu, ci: ComputeInstance) -> int:
    return Handle(Kind.MIG_DEVICE, gpu.index, ci.serial).value


def _find_uuid(node: NodeState, text: str) -> Handle | None:
    for gpu in node.gpus:
        if gpu.uuid == text:
            return Handle(Kind.DEVICE, gpu.index)
        for gi, ci in sim.mig_devices(gpu):
            if sim.mig_uuid(gpu, gi, ci) == text:
                return Handle(Kind.MIG_DEVICE, gpu.index, ci.serial)
    return None


def _find_bus_id(node: NodeState, text: str) -> Gpu | None:
    return sim.find_gpu_by_bus_id(node, text)


def _gi_profile_by_index(model: GpuModel, index: int) -> GiModel:
    _mig_capable(model)
    code = model.profile_index_error(index)
    if code is not None:
        raise _fail(code, f"GI profile index {index}")
    gi_model = model.gi_by_index(index)
    assert gi_model is not None, "an index without an error names a profile"
    return gi_model


def _gi_profile_by_id(model: GpuModel, profile_id: int) -> GiModel:
    _mig_capable(model)
    gi_model = model.gi_by_id(profile_id)
    if gi_model is None:
        raise _fail(nvml_codes.INVALID_ARGUMENT, f"no GI profile id {profile_id}")
    return gi_model


def _ci_profile_by_id(gi_model: GiModel, profile_id: int) -> CiModel:
    if profile_id >= CI_PROFILE_INDEX_COUNT:
        raise _fail(nvml_codes.INVALID_ARGUMENT, f"no CI profile id {profile_id}")
    ci_model = gi_model.ci_by_id(profile_id)
    if ci_model is None:
        raise _fail(nvml_codes.NOT_SUPPORTED, f"{gi_model.name} offers no CI profile {profile_id}")
    return ci_model


# ---------------------------------------------------------------------------
# Library and system
# ---------------------------------------------------------------------------


@_symbol("nvmlInitWithFlags", needs_init=False)
def _init(lib: FakeNvmlLibrary, node: NodeState, flags: Any) -> int:
    _uint(flags)
    with lib._count_lock:
        lib.init_count += 1
    return nvml_codes.SUCCESS


@_symbol("nvmlShutdown")
def _shutdown(lib: FakeNvmlLibrary, node: NodeState) -> int:
    with lib._count_lock:
        lib.init_count = max(0, lib.init_count - 1)
    return nvml_codes.SUCCESS


@_symbol("nvmlErrorString", needs_init=False)
def _error_string(lib: FakeNvmlLibrary, node: None, result: Any) -> bytes:
    try:
        code = int(getattr(result, "value", result))
    except (TypeError, ValueError):
        code = nvml_codes.UNKNOWN
    return nvml_codes.error_string(code).encode()


@_symbol("nvmlSystemGetDriverVersion")
def _driver_version(lib: FakeNvmlLibrary, node: NodeState, buf: Any, length: Any) -> int:
    return _write_text(buf, length, DRIVER_VERSION)


@_symbol("nvmlSystemGetNVMLVersion")
def _nvml_version(lib: FakeNvmlLibrary, node: NodeState, buf: Any, length: Any) -> int:
    return _write_text(buf, length, NVML_VERSION)


# ---------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------


@_symbol("nvmlDeviceGetCount_v2")
def _count(lib: FakeNvmlLibrary, node: NodeState, count: Any) -> int:
    _set_scalar(count, len(node.gpus))
    return nvml_codes.SUCCESS


@_symbol("nvmlDeviceGetHandleByIndex_v2", gpu_of=_by_index)
def _handle_by_index(lib: FakeNvmlLibrary, node: NodeState, index: Any, device: Any) -> int:
    i = _uint(index)
    slot = _out_pointer(device)
    if i >= len(node.gpus):
        return nvml_codes.INVALID_ARGUMENT
    _store_pointer(slot, _device_handle(node.gpus[i]))
    return nvml_codes.SUCCESS


@_symbol("nvmlDeviceGetHandleByUUID", gpu_of=_by_uuid)
def _handle_by_uuid(lib: FakeNvmlLibrary, node: NodeState, uuid: Any, device: Any) -> int:
    text = _text_in(uuid).decode(errors="replace")
    slot = _out_pointer(device)
    found = _find_uuid(node, text)
    if found is None:
        return nvml_codes.NOT_FOUND
    _store_pointer(slot, found.value)
    return nvml_codes.SUCCESS


@_symbol("nvmlDeviceGetHandleByPciBusId_v2", gpu_of=_by_bus_id)
def _handle_by_bus_id(lib: FakeNvmlLibrary, node: NodeState, bus_id: Any, device: Any) -> int:
    text = _text_in(bus_id).decode(errors="replace")
    slot = _out_pointer(device)
    if sim.parse_bus_id(text) is None:
        return nvml_codes.INVALID_ARGUMENT
    gpu = _find_bus_id(node, text)
    if gpu is None:
        return nvml_codes.NOT_FOUND
    _store_pointer(slot, _device_handle(gpu))
    return nvml_codes.SUCCESS


@_symbol("nvmlDeviceGetIndex", gpu_of=_by_handle(0))
def _index(lib: FakeNvmlLibrary, node: NodeState, device: Any, index: Any) -> int:
    gpu, _ = _device(node, device)
    _set_scalar(index, gpu.index)
    return nvml_codes.SUCCESS


@_symbol("nvmlDeviceGetName", gpu_of=_by_handle(0))
def _name(lib: FakeNvmlLibrary, node: NodeState, device: Any, buf: Any, length: Any) -> int:
    _, model, mig = _any_device(node, device)
    if mig is None:
        return _write_text(buf, length, model.name)
    gi, ci = mig
    ci_model = sim.gi_model_of(model, gi).ci_by_id(ci.profile_id)
    profile = short_name(ci_model.name) if ci_model else "?"
    return _write_text(buf, length, f"{model.name} {DRIVER_NAME_PREFIX}{profile}")


@_symbol("nvmlDeviceGetUUID", gpu_of=_by_handle(0))
def _uuid(lib: FakeNvmlLibrary, node: NodeState, device: Any, buf: Any, length: Any) -> int:
    gpu, _, mig = _any_device(node, device)
    text = gpu.uuid if mig is None else sim.mig_uuid(gpu, *mig)
    return _write_text(buf, length, text)


@_symbol("nvmlDeviceGetPciInfo_v3", gpu_of=_by_handle(0))
def _pci_info(lib: FakeNvmlLibrary, node: NodeState, device: Any, info: Any) -> int:
    gpu, model, _ = _any_device(node, device)  # a MIG device answers with its parent's
    out = _out_struct(info, pynvml.nvmlPciInfo_t)
    parsed = sim.parse_bus_id(gpu.bus_id)
    assert parsed is not None
    domain, bus, dev = parsed
    out.busIdLegacy = f"{domain:04X}:{bus:02X}:{dev:02X}.0".encode()
    out.domain, out.bus, out.device = domain, bus, dev
    out.pciDeviceId = model.pci_device_id
    out.pciSubSystemId = model.pci_subsystem_id
    out.busId = gpu.bus_id.encode()
    return nvml_codes.SUCCESS


def _memory(node: NodeState, gpu: Gpu, model: GpuModel, mig: Any) -> tuple[int, int, int]:
    """(total, reserved, used) bytes of a GPU or a MIG device."""
    if mig is None:
        procs = sim.processes_on(node, gpu.index)
        total, reserved = model.memory_total_bytes, _RESERVED_BYTES
    else:
        gi, ci = mig
        procs = sim.processes_on(node, gpu.index, gi.id, ci.id)
        total, reserved = sim.gi_model_of(model, gi).memory_size_mb * _MIB, 0
    used = min(total, reserved + sum(p.used_memory_mib for p in procs) * _MIB)
    return total, reserved, used


@_symbol("nvmlDeviceGetMemoryInfo", gpu_of=_by_handle(0))
def _memory_info(lib: FakeNvmlLibrary, node: NodeState, device: Any, memory: Any) -> int:
    gpu, model, mig = _any_device(node, device)
    out = _out_struct(memory, pynvml.c_nvmlMemory_t)
    total, _, used = _memory(node, gpu, model, mig)
    out.total, out.used, out.free = total, used, total - used
    return nvml_codes.SUCCESS


@_symbol("nvmlDeviceGetMemoryInfo_v2", gpu_of=_by_handle(0))
def _memory_info_v2(lib: FakeNvmlLibrary, node: NodeState, device: Any, memory: Any) -> int:
    gpu, model, mig = _any_device(node, device)
    out = _out_struct(memory, pynvml.c_nvmlMemory_v2_t)
    if out.version != pynvml.nvmlMemory_v2:
        return nvml_codes.ARGUMENT_VERSION_MISMATCH
    total, reserved, used = _memory(node, gpu, model, mig)
    out.total, out.reserved, out.used, out.free = total, reserved, used, total - used
    return nvml_codes.SUCCESS


@_symbol("nvmlDeviceGetArchitecture", gpu_of=_by_handle(0))
def _architecture(lib: FakeNvmlLibrary, node: NodeState, device: Any, arch: Any) -> int:
    _, model, _ = _any_device(node, device)
    _set_scalar(arch, model.architecture)
    return nvml_codes.SUCCESS


@_symbol("nvmlDeviceGetVirtualizationMode", gpu_of=_by_handle(0))
def _virtualization_mode(lib: FakeNvmlLibrary, node: NodeState, device: Any, mode: Any) -> int:
    _device(node, device)
    passthrough = node.flags.passthrough
    _set_scalar(
        mode,
        NVML_GPU_VIRTUALIZATION_MODE_PASSTHROUGH
        if passthrough
        else NVML_GPU_VIRTUALIZATION_MODE_NONE,
    )
    return nvml_codes.SUCCESS


def _running_processes(node: NodeState, device: Any, count: Any, infos: Any) -> int:
    gpu, _, mig = _any_device(node, device)
    if mig is None:
        procs = sim.processes_on(node, gpu.index)
    else:
        procs = sim.processes_on(node, gpu.index, mig[0].id, mig[1].id)

    def write(slot: Any, p: Any) -> None:
        slot.pid = p.pid
        slot.usedGpuMemory = p.used_memory_mib * _MIB
        slot.gpuInstanceId = _NO_INSTANCE if p.gi is None else p.gi
        slot.computeInstanceId = _NO_INSTANCE if p.ci is None else p.ci

    def element_ok(cls: type) -> bool:
        return _field_names(cls) == _field_names(pynvml.c_nvmlProcessInfo_v3_t)

    return _fill(infos, count, procs, write, element_ok, null_array_ok=False)


@_symbol("nvmlDeviceGetComputeRunningProcesses_v3", gpu_of=_by_handle(0))
def _procs_v3(lib: FakeNvmlLibrary, node: NodeState, device: Any, count: Any, infos: Any) -> int:
    return _running_processes(node, device, count, infos)


@_symbol("nvmlDeviceGetComputeRunningProcesses_v2", gpu_of=_by_handle(0))
def _procs_v2(lib: FakeNvmlLibrary, node: NodeState, device: Any, count: Any, infos: Any) -> int:
    return _running_processes(node, device, count, infos)


# ---------------------------------------------------------------------------
# MIG mode
# ---------------------------------------------------------------------------


@_symbol("nvmlDeviceGetMigMode", gpu_of=_by_handle(0))
def _get_mig_mode(
    lib: FakeNvmlLibrary, node: NodeState, device: Any, current: Any, pending: Any
) -> int:
    gpu, model = _device(node, device)
    _mig_capable(model)
    current_out, pending_out = _out_scalar(current), _out_scalar(pending)
    current_out.value, pending_out.value = gpu.mig_current, gpu.mig_pending
    return nvml_codes.SUCCESS


@_symbol("nvmlDeviceSetMigMode", gpu_of=_by_handle(0))
def _set_mig_mode(
    lib: FakeNvmlLibrary, node: NodeState, device: Any, mode: Any, status: Any
) -> int:
    gpu, _ = _device(node, device)
    wanted = _uint(mode)
    status_out = _out_scalar(status)
    status_out.value = lib.mutate(lambda n: sim.set_mig_mode(n, gpu.index, wanted))
    return nvml_codes.SUCCESS


# ---------------------------------------------------------------------------
# GPU-instance profiles and GPU instances
# ---------------------------------------------------------------------------


def _write_gi_profile(out: Any, gi_model: GiModel, v2: bool) -> None:
    if v2:
        # The real H200 hands the v2 structure back with version 0, whatever was passed.
        out.version = 0
        out.name = gi_model.name.encode()
    out.id = gi_model.id
    out.isP2pSupported = gi_model.is_p2p_supported
    out.sliceCount = gi_model.slice_count
    out.instanceCount = gi_model.instance_count
    out.multiprocessorCount = gi_model.multiprocessor_count
    out.copyEngineCount = gi_model.copy_engine_count
    out.decoderCount = gi_model.decoder_count
    out.encoderCount = gi_model.encoder_count
    out.jpegCount = gi_model.jpeg_count
    out.ofaCount = gi_model.ofa_count
    out.memorySizeMB = gi_model.memory_size_mb


@_symbol("nvmlDeviceGetGpuInstanceProfileInfo", gpu_of=_by_handle(0))
def _gi_profile_info(
    lib: FakeNvmlLibrary, node: NodeState, device: Any, profile: Any, info: Any
) -> int:
    _, model = _device(node, device)
    out = _out_struct(info, pynvml.c_nvmlGpuInstanceProfileInfo_t)
    _write_gi_profile(out, _gi_profile_by_index(model, _uint(profile)), v2=False)
    return nvml_codes.SUCCESS


@_symbol("nvmlDeviceGetGpuInstanceProfileInfoV", gpu_of=_by_handle(0))
def _gi_profile_info_v(
    lib: FakeNvmlLibrary, node: NodeState, device: Any, profile: Any, info: Any
) -> int:
    _, model = _device(node, device)
    out = _out_struct(info, pynvml.c_nvmlGpuInstanceProfileInfo_v2_t)
    _write_gi_profile(out, _gi_profile_by_index(model, _uint(profile)), v2=True)
    return nvml_codes.SUCCESS


@_symbol("nvmlDeviceGetGpuInstanceProfileInfoByIdV", gpu_of=_by_handle(0))
def _gi_profile_info_by_id(
    lib: FakeNvmlLibrary, node: NodeState, device: Any, profile_id: Any, info: Any
) -> int:
    _, model = _device(node, device)
    out = _out_struct(info, pynvml.c_nvmlGpuInstanceProfileInfo_v2_t)
    _write_gi_profile(out, _gi_profile_by_id(model, _uint(profile_id)), v2=True)
    return nvml_codes.SUCCESS


@_symbol("nvmlDeviceGetGpuInstancePossiblePlacements_v2", gpu_of=_by_handle(0))
def _gi_placements(
    lib: FakeNvmlLibrary, node: NodeState, device: Any, profile_id: Any, placements: Any, count: Any
) -> int:
    _, model = _device(node, device)
    gi_model = _gi_profile_by_id(model, _uint(profile_id))
    return _fill(
        placements, count, list(gi_model.placements), _write_placement, _is_placement, True
    )


@_symbol("nvmlDeviceGetGpuInstanceRemainingCapacity", gpu_of=_by_handle(0))
def _gi_remaining(
    lib: FakeNvmlLibrary, node: NodeState, device: Any, profile_id: Any, count: Any
) -> int:
    gpu, model = _device(node, device)
    gi_model = _gi_profile_by_id(model, _uint(profile_id))
    _set_scalar(count, sim.gi_remaining_capacity(model, gpu, gi_model))
    return nvml_codes.SUCCESS


def _create_gi(
    node: NodeState, lib: FakeNvmlLibrary, device: Any, profile_id: Any, placement: Any, out: Any
) -> int:
    gpu, model = _device(node, device)
    _mig_capable(model)
    pid = _uint(profile_id)
    where = None if placement is None else _placement_in(placement)
    slot = _out_pointer(out)
    index = gpu.index

    def apply(n: NodeState) -> tuple[NodeState, int]:
        n, gi = sim.create_gpu_instance(n, index, pid, where)
        return n, _gi_handle(n.gpus[index], gi)

    _store_pointer(slot, lib.mutate(apply))
    return nvml_codes.SUCCESS


@_symbol("nvmlDeviceCreateGpuInstance", gpu_of=_by_handle(0))
def _create_gpu_instance(
    lib: FakeNvmlLibrary, node: NodeState, device: Any, profile_id: Any, gpu_instance: Any
) -> int:
    return _create_gi(node, lib, device, profile_id, None, gpu_instance)


@_symbol("nvmlDeviceCreateGpuInstanceWithPlacement", gpu_of=_by_handle(0))
def _create_gpu_instance_with_placement(
    lib: FakeNvmlLibrary,
    node: NodeState,
    device: Any,
    profile_id: Any,
    placement: Any,
    gpu_instance: Any,
) -> int:
    if placement is None:
        raise _BadArgument
    return _create_gi(node, lib, device, profile_id, placement, gpu_instance)


@_symbol("nvmlDeviceGetGpuInstances", gpu_of=_by_handle(0))
def _gpu_instances(
    lib: FakeNvmlLibrary, node: NodeState, device: Any, profile_id: Any, instances: Any, count: Any
) -> int:
    gpu, model = _device(node, device)
    gi_model = _gi_profile_by_id(model, _uint(profile_id))
    found = [gi for gi in gpu.gpu_instances if gi.profile_id == gi_model.id]
    found = found if gpu.mig_current == 1 else []

    def write(slot: Any, gi: GpuInstance) -> None:
        _store_pointer(slot, _gi_handle(gpu, gi))

    return _fill(instances, count, found, write, _is_handle_slot, null_array_ok=False)


@_symbol("nvmlDeviceGetGpuInstanceById", gpu_of=_by_handle(0))
def _gpu_instance_by_id(
    lib: FakeNvmlLibrary, node: NodeState, device: Any, gi_id: Any, gpu_instance: Any
) -> int:
    gpu, model = _device(node, device)
    _mig_capable(model)
    wanted = _uint(gi_id)
    slot = _out_pointer(gpu_instance)
    gi = sim.find_gi_by_id(gpu, wanted) if gpu.mig_current == 1 else None
    if gi is None:
        return nvml_codes.NOT_FOUND
    _store_pointer(slot, _gi_handle(gpu, gi))
    return nvml_codes.SUCCESS


@_symbol("nvmlGpuInstanceGetInfo", gpu_of=_by_handle(0))
def _gpu_instance_info(lib: FakeNvmlLibrary, node: NodeState, gpu_instance: Any, info: Any) -> int:
    gpu, gi = _gpu_instance(node, gpu_instance)
    out = _out_struct(info, pynvml.c_nvmlGpuInstanceInfo_t)
    _store_pointer(out.device, _device_handle(gpu))
    out.id, out.profileId = gi.id, gi.profile_id
    out.placement.start, out.placement.size = gi.start, gi.size
    return nvml_codes.SUCCESS


@_symbol("nvmlGpuInstanceDestroy", gpu_of=_by_handle(0))
def _gpu_instance_destroy(lib: FakeNvmlLibrary, node: NodeState, gpu_instance: Any) -> int:
    gpu, gi = _gpu_instance(node, gpu_instance)
    lib.mutate(lambda n: (sim.destroy_gpu_instance(n, gpu.index, gi.serial), None))
    return nvml_codes.SUCCESS


# ---------------------------------------------------------------------------
# Compute-instance profiles and compute instances
# ---------------------------------------------------------------------------


def _write_ci_profile(out: Any, ci_model: CiModel, v2: bool) -> None:
    if v2:
        out.version = 0  # as the GI structure (no CI readout exists; see the module doc)
        out.name = ci_model.name.encode()
    out.id = ci_model.id
    out.sliceCount = ci_model.slice_count
    out.instanceCount = ci_model.instance_count
    out.multiprocessorCount = ci_model.multiprocessor_count
    out.sharedCopyEngineCount = ci_model.shared_copy_engine_count
    out.sharedDecoderCount = ci_model.shared_decoder_count
    out.sharedEncoderCount = ci_model.shared_encoder_count
    out.sharedJpegCount = ci_model.shared_jpeg_count
    out.sharedOfaCount = ci_model.shared_ofa_count


def _ci_profile_by_index(
    node: NodeState, gpu_instance: Any, profile: Any, eng_profile: Any
) -> CiModel:
    gpu, gi = _gpu_instance(node, gpu_instance)
    index, engine = _uint(profile), _uint(eng_profile)
    if (
        index >= CI_PROFILE_INDEX_COUNT
        or engine != pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
    ):
        raise _fail(
            nvml_codes.INVALID_ARGUMENT, f"CI profile index {index}, engine profile {engine}"
        )
    ci_model = sim.gi_model_of(sim.model_of(gpu), gi).ci_by_index(index)
    if ci_model is None:
        raise _fail(nvml_codes.NOT_SUPPORTED, f"CI profile index {index} is not offered here")
    return ci_model


@_symbol("nvmlGpuInstanceGetComputeInstanceProfileInfo", gpu_of=_by_handle(0))
def _ci_profile_info(
    lib: FakeNvmlLibrary,
    node: NodeState,
    gpu_instance: Any,
    profile: Any,
    eng_profile: Any,
    info: Any,
) -> int:
    ci_model = _ci_profile_by_index(node, gpu_instance, profile, eng_profile)
    _write_ci_profile(_out_struct(info, pynvml.c_nvmlComputeInstanceProfileInfo_t), ci_model, False)
    return nvml_codes.SUCCESS


@_symbol("nvmlGpuInstanceGetComputeInstanceProfileInfoV", gpu_of=_by_handle(0))
def _ci_profile_info_v(
    lib: FakeNvmlLibrary,
    node: NodeState,
    gpu_instance: Any,
    profile: Any,
    eng_profile: Any,
    info: Any,
) -> int:
    ci_model = _ci_profile_by_index(node, gpu_instance, profile, eng_profile)
    out = _out_struct(info, pynvml.c_nvmlComputeInstanceProfileInfo_v2_t)
    _write_ci_profile(out, ci_model, True)
    return nvml_codes.SUCCESS


def _gi_and_ci_profile(
    node: NodeState, gpu_instance: Any, profile_id: Any
) -> tuple[Gpu, GpuInstance, GiModel, CiModel]:
    gpu, gi = _gpu_instance(node, gpu_instance)
    gi_model = sim.gi_model_of(sim.model_of(gpu), gi)
    return gpu, gi, gi_model, _ci_profile_by_id(gi_model, _uint(profile_id))


@_symbol("nvmlGpuInstanceGetComputeInstanceRemainingCapacity", gpu_of=_by_handle(0))
def _ci_remaining(
    lib: FakeNvmlLibrary, node: NodeState, gpu_instance: Any, profile_id: Any, count: Any
) -> int:
    _, gi, gi_model, ci_model = _gi_and_ci_profile(node, gpu_instance, profile_id)
    _set_scalar(count, sim.ci_remaining_capacity(gi, gi_model, ci_model))
    return nvml_codes.SUCCESS


@_symbol("nvmlGpuInstanceGetComputeInstancePossiblePlacements", gpu_of=_by_handle(0))
def _ci_placements(
    lib: FakeNvmlLibrary,
    node: NodeState,
    gpu_instance: Any,
    profile_id: Any,
    placements: Any,
    count: Any,
) -> int:
    _, _, _, ci_model = _gi_and_ci_profile(node, gpu_instance, profile_id)
    return _fill(
        placements, count, list(ci_model.placements), _write_placement, _is_placement, True
    )


def _create_ci(
    node: NodeState,
    lib: FakeNvmlLibrary,
    gpu_instance: Any,
    profile_id: Any,
    placement: Any,
    out: Any,
) -> int:
    gpu, gi = _gpu_instance(node, gpu_instance)
    pid = _uint(profile_id)
    where = None if placement is None else _placement_in(placement)
    slot = _out_pointer(out)
    index, gi_serial = gpu.index, gi.serial

    def apply(n: NodeState) -> tuple[NodeState, int]:
        n, ci = sim.create_compute_instance(n, index, gi_serial, pid, where)
        return n, _ci_handle(n.gpus[index], ci)

    _store_pointer(slot, lib.mutate(apply))
    return nvml_codes.SUCCESS


@_symbol("nvmlGpuInstanceCreateComputeInstance", gpu_of=_by_handle(0))
def _create_compute_instance(
    lib: FakeNvmlLibrary, node: NodeState, gpu_instance: Any, profile_id: Any, compute_instance: Any
) -> int:
    return _create_ci(node, lib, gpu_instance, profile_id, None, compute_instance)


@_symbol("nvmlGpuInstanceCreateComputeInstanceWithPlacement", gpu_of=_by_handle(0))
def _create_compute_instance_with_placement(
    lib: FakeNvmlLibrary,
    node: NodeState,
    gpu_instance: Any,
    profile_id: Any,
    placement: Any,
    compute_instance: Any,
) -> int:
    if placement is None:
        raise _BadArgument
    return _create_ci(node, lib, gpu_instance, profile_id, placement, compute_instance)


@_symbol("nvmlGpuInstanceGetComputeInstances", gpu_of=_by_handle(0))
def _compute_instances(
    lib: FakeNvmlLibrary,
    node: NodeState,
    gpu_instance: Any,
    profile_id: Any,
    instances: Any,
    count: Any,
) -> int:
    gpu, gi, _, ci_model = _gi_and_ci_profile(node, gpu_instance, profile_id)
    found = [ci for ci in gi.compute_instances if ci.profile_id == ci_model.id]

    def write(slot: Any, ci: ComputeInstance) -> None:
        _store_pointer(slot, _ci_handle(gpu, ci))

    return _fill(instances, count, found, write, _is_handle_slot, null_array_ok=False)


@_symbol("nvmlGpuInstanceGetComputeInstanceById", gpu_of=_by_handle(0))
def _compute_instance_by_id(
    lib: FakeNvmlLibrary, node: NodeState, gpu_instance: Any, ci_id: Any, compute_instance: Any
) -> int:
    gpu, gi = _gpu_instance(node, gpu_instance)
    wanted = _uint(ci_id)
    slot = _out_pointer(compute_instance)
    ci = next((c for c in gi.compute_instances if c.id == wanted), None)
    if ci is None:
        return nvml_codes.NOT_FOUND
    _store_pointer(slot, _ci_handle(gpu, ci))
    return nvml_codes.SUCCESS


@_symbol("nvmlComputeInstanceGetInfo_v2", gpu_of=_by_handle(0))
def _compute_instance_info(
    lib: FakeNvmlLibrary, node: NodeState, compute_instance: Any, info: Any
) -> int:
    gpu, gi, ci = _compute_instance(node, compute_instance)
    out = _out_struct(info, pynvml.c_nvmlComputeInstanceInfo_t)
    _store_pointer(out.device, _device_handle(gpu))
    _store_pointer(out.gpuInstance, _gi_handle(gpu, gi))
    out.id, out.profileId = ci.id, ci.profile_id
    out.placement.start, out.placement.size = ci.start, ci.size
    return nvml_codes.SUCCESS


@_symbol("nvmlComputeInstanceDestroy", gpu_of=_by_handle(0))
def _compute_instance_destroy(lib: FakeNvmlLibrary, node: NodeState, compute_instance: Any) -> int:
    gpu, _, ci = _compute_instance(node, compute_instance)
    lib.mutate(lambda n: (sim.destroy_compute_instance(n, gpu.index, ci.serial), None))
    return nvml_codes.SUCCESS


# ---------------------------------------------------------------------------
# MIG devices
# ---------------------------------------------------------------------------


@_symbol("nvmlDeviceGetMaxMigDeviceCount", gpu_of=_by_handle(0))
def _max_mig_devices(lib: FakeNvmlLibrary, node: NodeState, device: Any, count: Any) -> int:
    gpu, model = _device(node, device)
    # nvml.h: zero if MIG is not supported or not enabled.
    enabled = model.mig_capable and gpu.mig_current == 1
    _set_scalar(count, model.max_gpu_instances if enabled else 0)
    return nvml_codes.SUCCESS


@_symbol("nvmlDeviceGetMigDeviceHandleByIndex", gpu_of=_by_handle(0))
def _mig_device_by_index(
    lib: FakeNvmlLibrary, node: NodeState, device: Any, index: Any, mig_device: Any
) -> int:
    gpu, model = _device(node, device)
    _mig_capable(model)
    i = _uint(index)
    slot = _out_pointer(mig_device)
    devices = sim.mig_devices(gpu)
    if i >= len(devices):
        return nvml_codes.NOT_FOUND
    _store_pointer(slot, _mig_handle(gpu, devices[i][1]))
    return nvml_codes.SUCCESS


def _mig_device(node: NodeState, arg: Any) -> tuple[Gpu, GpuInstance, ComputeInstance]:
    gpu, _, mig = _any_device(node, arg)
    if mig is None:
        raise _fail(nvml_codes.INVALID_ARGUMENT, "not a MIG device handle")
    return gpu, mig[0], mig[1]


@_symbol("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", gpu_of=_by_handle(0))
def _parent_device(lib: FakeNvmlLibrary, node: NodeState, mig_device: Any, device: Any) -> int:
    gpu, _, _ = _mig_device(node, mig_device)
    _store_pointer(_out_pointer(device), _device_handle(gpu))
    return nvml_codes.SUCCESS


@_symbol("nvmlDeviceIsMigDeviceHandle", gpu_of=_by_handle(0))
def _is_mig_device(lib: FakeNvmlLibrary, node: NodeState, device: Any, is_mig: Any) -> int:
    _, _, mig = _any_device(node, device)
    _set_scalar(is_mig, 0 if mig is None else 1)
    return nvml_codes.SUCCESS


@_symbol("nvmlDeviceGetGpuInstanceId", gpu_of=_by_handle(0))
def _mig_gi_id(lib: FakeNvmlLibrary, node: NodeState, device: Any, gi_id: Any) -> int:
    _, gi, _ = _mig_device(node, device)
    _set_scalar(gi_id, gi.id)
    return nvml_codes.SUCCESS


@_symbol("nvmlDeviceGetComputeInstanceId", gpu_of=_by_handle(0))
def _mig_ci_id(lib: FakeNvmlLibrary, node: NodeState, device: Any, ci_id: Any) -> int:
    _, _, ci = _mig_device(node, device)
    _set_scalar(ci_id, ci.id)
    return nvml_codes.SUCCESS


PROVIDED: frozenset[str] = frozenset(_SPECS)
# Every mutation must be one the kill fault counts, and vice versa.
assert MUTATING <= PROVIDED
