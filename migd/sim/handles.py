"""Opaque NVML handles of the simulated node, as pointer-sized integers.

A real handle is a pointer into libnvidia-ml; callers only keep it and pass it back.
The simulator packs what it needs to find the object again into the pointer value:
a tag (so a stray value is recognised), the kind of object, the GPU index and the
object's serial (unique over the node's life). A handle of a destroyed instance thus
never matches a later instance that happens to get the same id.

    bits 48-63  0x5A17 tag
    bits 44-47  kind
    bits 32-43  GPU index
    bits  0-31  serial of the GI or CI (0 for a GPU)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

_TAG = 0x5A17


class Kind(enum.IntEnum):
    DEVICE = 1  # nvmlDevice_t of a whole GPU
    GPU_INSTANCE = 2  # nvmlGpuInstance_t
    COMPUTE_INSTANCE = 3  # nvmlComputeInstance_t
    MIG_DEVICE = 4  # nvmlDevice_t of a MIG device (names a CI)


@dataclass(frozen=True)
class Handle:
    kind: Kind
    gpu: int
    serial: int = 0

    @property
    def value(self) -> int:
        return (_TAG << 48) | (int(self.kind) << 44) | (self.gpu << 32) | self.serial


def decode(value: int | None) -> Handle | None:
    """The handle a pointer value stands for, or None if it is not one of ours."""
    if not value or value >> 48 != _TAG:
        return None
    try:
        kind = Kind((value >> 44) & 0xF)
    except ValueError:
        return None
    return Handle(kind=kind, gpu=(value >> 32) & 0xFFF, serial=value & 0xFFFFFFFF)
