"""lstmkit's own error classes. Each is a ValueError, so callers that catch ValueError keep
working; the CLI turns every one of them into one line on stderr and exit code 2."""


class LstmkitError(ValueError):
    """Base class: bad input that lstmkit detected and explained."""


class ConfigError(LstmkitError):
    """A configuration (flags or a TOML file) with an unknown key, a wrong type or a bad value."""


class DataError(LstmkitError):
    """A data file or values that cannot be used (empty, non-numeric, NaN, too short)."""


class RunDirError(LstmkitError):
    """A run directory that is missing, incomplete, corrupted or from another format version."""


class TrainingError(RuntimeError):
    """Training could not go on (a NaN or Inf loss); the last good checkpoint is kept."""


class DiskError(LstmkitError):
    """A file could not be written (disk full, read-only, no permission); the files that were
    there before are kept whole."""


class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM. The message says what was kept and the command
    that continues; ``exit_code`` is 128 + the signal's number (130 for SIGINT, 143 for
    SIGTERM), what a shell reports for a process that a signal ended."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class BackendError(LstmkitError):
    """A backend was asked for something it cannot do, or cannot run on this machine (the
    message names the backend and the feature or the missing tool)."""
