"""The project's exceptions. The CLI maps each to a one-line message and an exit code."""


class CnnbenchError(Exception):
    """Base class: anything cnnbench reports to a user without a traceback."""

    exit_code = 1


class UsageError(CnnbenchError):
    """Bad input from the user: unknown name, out-of-range value, malformed file."""

    exit_code = 2


class ResultFileError(UsageError):
    """A result file that cannot be used: not JSON, wrong types, too deep; names the file and the field."""

    exit_code = 2


class DatasetError(CnnbenchError):
    """A dataset is missing, corrupt, or cannot be cached."""

    exit_code = 2


class BackendError(CnnbenchError):
    """Raised by a backend for a failure it can explain (shown as the row's reason)."""


class BackendUnavailable(BackendError):
    """The backend's framework cannot be used here (not installed, no such device...)."""


class PluginError(CnnbenchError):
    """A plugin could not be loaded or registered something invalid."""
