"""Errors that lamina reports to users as one line each, never as a traceback."""

from __future__ import annotations

from collections import namedtuple


class LaminaError(Exception):
    """A failure with a message fit for the user; the CLI prints it and exits 1."""

    exit_code = 1


class UsageError(LaminaError):
    """The command line cannot be carried out as given (exit 2, nothing touched)."""

    exit_code = 2


class SpecError(namedtuple("SpecError", "file line col message")):
    """One located error in an input file. (A namedtuple, not a dataclass: this module is
    imported by every run, and dataclasses cost ~10 ms to import.)"""

    __slots__ = ()

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class SpecInvalid(LaminaError):
    """Bad input: one or more located errors. Exit code 2, nothing touched."""

    exit_code = 2

    def __init__(self, errors: list[SpecError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
