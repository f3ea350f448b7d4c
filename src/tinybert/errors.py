"""Errors about the user's input, reported as one clear message and exit code 2."""

from __future__ import annotations

import os


class InputError(Exception):
    """A problem with a file or option the user gave us.

    The CLI prints ``str(error)`` without a traceback and exits with code 2, so the message
    must say where the problem is (file and line when there is one) and how to fix it.
    """

    exit_code = 2

    def __init__(self, problem: str, *, path: str | os.PathLike | None = None,
                 line: int | None = None, fix: str | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.line = line
        self.fix = fix
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path if self.line is None else f"{self.path}, line {self.line}"
            where += ": "
        message = f"{where}{self.problem}"
        if self.fix:
            message += f"\n  fix: {self.fix}"
        return message
