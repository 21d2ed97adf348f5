"""The project's input errors: what the user can fix, told in one line.

The CLI prints an ``InputError`` as ``error: <message>`` and exits 2 (``-v`` adds the traceback). Every
other exception is a bug in vitforge and keeps its traceback (exit 1), so a real bug is never dressed up
as bad input. Each module's own error type (``DatasetError``, ``TargetError``, ``FleetError``, ...)
derives from ``InputError``; the second base keeps them catchable as the built-in they used to be.
"""


class InputError(Exception):
    """Bad input: data, params.yaml, a target or fleet file, a checkpoint, a duration, a missing stage."""


class ParamsError(InputError, ValueError):
    """params.yaml (or an override of it) names a missing key or holds a value the stage cannot use."""


class StaleStageError(InputError, ValueError):
    """An earlier stage's output was made from other data or settings than the current ones: run it again."""


class MissingStageError(InputError, FileNotFoundError):
    """An earlier stage's output is not there yet: the message names the command that makes it."""
