"""Exceptions raised by ubench.

Every error a user can cause or fix derives from ``UbenchError``. The CLI prints
its message on one line, exits 1, and shows the traceback only with ``-v``.
"""

from __future__ import annotations

from collections.abc import Sequence


class UbenchError(Exception):
    """Root of every error ubench reports to a user."""


class StackError(UbenchError):
    """Invalid stack file: names the file, line, column, field and the fix."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.field = field
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        where = self.file or "<stack>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        text = (
            f"{where}: {self.field}: {self.message}"
            if self.field
            else (f"{where}: {self.message}")
        )
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class StackErrors(UbenchError):
    """Several stack errors found in one pass, reported together."""

    def __init__(self, errors: Sequence[StackError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(error.render() for error in self.errors))


class StateError(UbenchError):
    """The state file is unreadable, inconsistent or of another stack."""


class LockError(UbenchError):
    """The state lock is held by another run, or cannot be released."""


class StalePlanError(UbenchError):
    """A saved plan no longer matches the state or the stack it was made from."""


class TargetError(UbenchError):
    """A target operation failed: a command, a process, an API call."""


class CommandError(TargetError):
    """An external command failed or timed out; carries its argv and output."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int | None,
        stdout: str = "",
        stderr: str = "",
        *,
        timed_out: bool = False,
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.timed_out = timed_out
        what = "timed out" if timed_out else f"failed with exit code {returncode}"
        detail = stderr.strip() or stdout.strip() or "no output"
        super().__init__(f"{argv[0]} {what}: {detail}")


class RenderError(UbenchError):
    """A template could not be rendered for a service."""


class ApplyError(UbenchError):
    """One or more resources failed during apply or destroy."""
