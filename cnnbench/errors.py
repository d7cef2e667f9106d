"""The project's exceptions and exit codes. The CLI maps each exception to a one-line message and its code."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Every command's exit status, one table (README "Exit codes"); distinct where CI must tell them apart."""

    OK = 0
    #: compare / a CI gate: a metric got worse beyond its threshold and beyond noise.
    REGRESSION = 1
    #: Bad input: an option, a name, a file; nothing was measured, or nothing more after the error.
    USAGE = 2
    #: run / check: a backend failed, timed out, diverged or failed its parity check.
    BACKEND_FAILED = 3
    #: run: measured, but the result could not be saved where asked (it went to a named fallback).
    NOT_SAVED = 4
    #: ab: the time budget ran out before the interval of the change decided regression or not.
    INCONCLUSIVE = 5
    #: Interrupted: 128 + the signal (130 Ctrl-C, 129 SIGHUP, 143 SIGTERM).
    INTERRUPTED = 130

    @staticmethod
    def for_signal(signum: int) -> int:
        """The shell convention for a process ended by a signal: 128 + its number."""
        return 128 + signum


class CnnbenchError(Exception):
    """Base class: anything cnnbench reports to a user without a traceback."""

    #: Never REGRESSION's 1 by accident: CI reads that as "slower".
    exit_code: int = ExitCode.USAGE


class UsageError(CnnbenchError):
    """Bad input from the user: unknown name, out-of-range value, malformed file."""

    exit_code = ExitCode.USAGE


class ResultFileError(UsageError):
    """A result file that cannot be used: not JSON, wrong types, too deep; names the file and the field."""

    exit_code = ExitCode.USAGE


class DatasetError(CnnbenchError):
    """A dataset is missing, corrupt, or cannot be cached."""

    exit_code = ExitCode.USAGE


class BackendError(CnnbenchError):
    """Raised by a backend for a failure it can explain (shown as the row's reason)."""

    exit_code = ExitCode.BACKEND_FAILED


class BackendUnavailable(BackendError):
    """The backend's framework cannot be used here (not installed, no such device...)."""


class PluginError(CnnbenchError):
    """A plugin could not be loaded or registered something invalid."""
