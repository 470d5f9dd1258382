"""Errors that lamina reports to users as one line each, never as a traceback."""

from __future__ import annotations

from dataclasses import dataclass


class LaminaError(Exception):
    """A failure with a message fit for the user; the CLI prints it and exits 1."""

    exit_code = 1


class UsageError(LaminaError):
    """The command line cannot be carried out as given (exit 2, nothing touched)."""

    exit_code = 2


@dataclass(frozen=True)
class SpecError:
    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class SpecInvalid(LaminaError):
    """Bad input: one or more located errors. Exit code 2, nothing touched."""

    exit_code = 2

    def __init__(self, errors: list[SpecError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
