"""The one error type for bad input: it always names the file and the problem."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import InputError


class DatasetError(InputError, ValueError):
    """Bad input data. ``str(err)`` is one line: ``<file>: <problem>``."""

    def __init__(self, path: Path | str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{display_path(path)}: {problem}")


def display_path(path: Path | str) -> str:
    """A path safe to print, with bytes that are not valid UTF-8 shown as escapes."""
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")
