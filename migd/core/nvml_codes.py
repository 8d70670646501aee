"""NVML return codes: numbers, names and the texts ``nvmlErrorString`` gives.

The numbers are ``nvmlReturn_t`` of nvml.h (API 13). They are kept here as plain data,
without importing pynvml, for the GPU model tables (how a GPU answers a profile index
it lacks) and the simulated driver, and so the ``migd sim`` command line (faults,
stats) stays light; a test checks them against pynvml's ``NVML_ERROR_*`` constants.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

SUCCESS = 0
UNINITIALIZED = 1
INVALID_ARGUMENT = 2
NOT_SUPPORTED = 3
NO_PERMISSION = 4
NOT_FOUND = 6
INSUFFICIENT_SIZE = 7
DRIVER_NOT_LOADED = 9
GPU_IS_LOST = 15
RESET_REQUIRED = 16
IN_USE = 19
INSUFFICIENT_RESOURCES = 23
ARGUMENT_VERSION_MISMATCH = 25
INVALID_STATE = 29
UNKNOWN = 999

# Name (the nvml.h enum without its NVML_ / NVML_ERROR_ prefix) -> number.
CODES: Mapping[str, int] = types.MappingProxyType(
    {
        "SUCCESS": 0,
        "UNINITIALIZED": 1,
        "INVALID_ARGUMENT": 2,
        "NOT_SUPPORTED": 3,
        "NO_PERMISSION": 4,
        "ALREADY_INITIALIZED": 5,
        "NOT_FOUND": 6,
        "INSUFFICIENT_SIZE": 7,
        "INSUFFICIENT_POWER": 8,
        "DRIVER_NOT_LOADED": 9,
        "TIMEOUT": 10,
        "IRQ_ISSUE": 11,
        "LIBRARY_NOT_FOUND": 12,
        "FUNCTION_NOT_FOUND": 13,
        "CORRUPTED_INFOROM": 14,
        "GPU_IS_LOST": 15,
        "RESET_REQUIRED": 16,
        "OPERATING_SYSTEM": 17,
        "LIB_RM_VERSION_MISMATCH": 18,
        "IN_USE": 19,
        "MEMORY": 20,
        "NO_DATA": 21,
        "VGPU_ECC_NOT_SUPPORTED": 22,
        "INSUFFICIENT_RESOURCES": 23,
        "FREQ_NOT_SUPPORTED": 24,
        "ARGUMENT_VERSION_MISMATCH": 25,
        "DEPRECATED": 26,
        "NOT_READY": 27,
        "GPU_NOT_FOUND": 28,
        "INVALID_STATE": 29,
        "RESET_TYPE_NOT_SUPPORTED": 30,
        "UNKNOWN": 999,
    }
)

NAMES: Mapping[int, str] = types.MappingProxyType({v: k for k, v in CODES.items()})

# What libnvidia-ml's nvmlErrorString answers. pynvml keeps its own text for about 20
# codes and asks the library only for the others (IN_USE, INSUFFICIENT_RESOURCES, ...),
# so these are the texts that reach ``str(NVMLError(...))`` for those codes.
ERROR_STRINGS: Mapping[int, str] = types.MappingProxyType(
    {
        0: "Success",
        1: "Uninitialized",
        2: "Invalid Argument",
        3: "Not Supported",
        4: "Insufficient Permissions",
        5: "Already Initialized",
        6: "Not Found",
        7: "Insufficient Size",
        8: "Insufficient External Power",
        9: "Driver Not Loaded",
        10: "Timeout",
        11: "Interrupt request issue",
        12: "NVML Shared Library Not Found",
        13: "Function Not Found",
        14: "Corrupted infoROM",
        15: "GPU is lost",
        16: "GPU requires restart",
        17: "The operating system has blocked the request.",
        18: "RM has detected an NVML/RM version mismatch.",
        19: "In use by another client",
        20: "Insufficient Memory",
        21: "No data",
        22: "The requested vgpu operation is not available on target device, because ECC is "
        "enabled",
        23: "Insufficient Resources",
        24: "Setting frequency is not supported",
        25: "Argument version mismatch",
        26: "Deprecated",
        27: "Not Ready",
        28: "GPU not found",
        29: "Invalid state",
        30: "Reset type not supported",
        999: "Unknown Error",
    }
)


def code_name(code: int) -> str:
    """``IN_USE`` for 19; an unknown number comes back as its decimal text."""
    return NAMES.get(code, str(code))


def error_string(code: int) -> str:
    """The text ``nvmlErrorString`` returns for ``code``."""
    return ERROR_STRINGS.get(code, "Unknown Error")


def parse_code(text: str) -> int:
    """A return code from its name (``IN_USE``, ``in_use``, ``NVML_ERROR_IN_USE``) or number.

    Raises ValueError naming the accepted names.
    """
    word = text.strip()
    if word.lstrip("-").isdigit():
        return int(word)
    name = word.upper().removeprefix("NVML_").removeprefix("ERROR_")
    if name in CODES:
        return CODES[name]
    raise ValueError(
        f"unknown NVML return code {text!r}; use a number or one of {', '.join(CODES)}"
    )
