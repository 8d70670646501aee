"""migd's own error types: everything the CLI turns into an exit code and a message."""

from __future__ import annotations

from dataclasses import dataclass

# Exit codes shared by every verb (README "Exit codes").
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_BLOCKED = 3
EXIT_REBOOT_REQUIRED = 4
EXIT_BUSY = 5


class MigdError(Exception):
    """Base of every error migd reports to an operator."""

    exit_code = EXIT_FAILED


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file, located as precisely as the input allows.

    ``line`` and ``column`` are 1-based; both are None where no position exists
    (an unreadable or binary file). ``path`` is the key path inside the document,
    e.g. ``mig-configs.all-balanced[1].mig-devices."1g.5gb"``; empty for the document.
    """

    file: str
    line: int | None
    column: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}:{self.column or 1}"
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} {self.message}"


class ConfigError(MigdError):
    """An input file (config, hooks, checkpoint) is invalid; carries every problem found."""

    exit_code = EXIT_INVALID

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def of_file(
        cls, file: str, message: str, line: int | None = None, column: int | None = None
    ) -> ConfigError:
        """One problem with the document as a whole (no key path), where known at a position."""
        return cls([Problem(file, line, column, "", message)])


class InvalidRequest(MigdError):
    """A request that cannot be honoured on this node (unknown profile, missing GPU, …).

    Raised before anything is touched.
    """

    exit_code = EXIT_INVALID


class NodeBusy(MigdError):
    """Another owner holds the node (the daemon, or a change in flight); nothing was touched."""

    exit_code = EXIT_BUSY


class NvmlError(MigdError):
    """An NVML call failed. Keeps the NVML return code and its name (``IN_USE``)."""

    def __init__(self, operation: str, code: int, name: str, text: str) -> None:
        self.operation = operation
        self.code = code
        self.name = name
        self.text = text
        super().__init__(f"{operation}: {text} (NVML_ERROR_{name})")


class ReadOnlyError(MigdError):
    """A mutation was attempted through an adapter opened read-only."""


def shorten(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis, so a message stays short."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
