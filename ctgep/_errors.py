"""ctgep's exceptions: one hierarchy under :class:`CtgepError`.

Every error ctgep raises on purpose derives from :class:`CtgepError`, and its message is one
line that says what is wrong and what to do. Each class carries the exit status the ``ctgep``
command returns for it (``exit_code``): 2 for bad input (arguments, cards, data, run
directories), 1 for a failure during the work itself (training diverged, a phase did not
settle). The command line handles them all in one place (``ctgep._cli.main``).

For compatibility the input errors are also :class:`ValueError` and the failures
:class:`RuntimeError`, as they were before the hierarchy existed.
"""

__all__ = ["CtgepError", "UsageError", "CardError", "DataError", "TrainingError", "RunDirError",
           "ConvergenceError"]


class CtgepError(Exception):
    """Base class of every error ctgep raises on purpose; `exit_code` is the CLI's status."""

    exit_code: int = 1


class UsageError(CtgepError, ValueError):
    """An argument is out of range or does not fit the rest of the call (a bad option)."""

    exit_code = 2


class CardError(CtgepError, ValueError):
    """A model card is missing, malformed or inconsistent (also with its data); the message names the key."""

    exit_code = 2


class DataError(CtgepError, ValueError):
    """A dataset cannot be found, downloaded or read; the message says why and what to do."""

    exit_code = 2


class TrainingError(CtgepError, RuntimeError):
    """Training cannot continue (the parameters diverged, ...)."""

    exit_code = 1


class RunDirError(TrainingError):
    """A run directory cannot be used: `--out` is not empty, a folder is no run directory, or a
    checkpoint is missing, corrupted or does not fit the run's card.

    A bad input, hence exit status 2; a :class:`TrainingError` for compatibility.
    """

    exit_code = 2


class ConvergenceError(CtgepError, RuntimeError):
    """A phase did not settle to its fixed point within its horizon (raised when asked to)."""

    exit_code = 1
