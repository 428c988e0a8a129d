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


class BackendError(LstmkitError):
    """A backend was asked for something it cannot do, or cannot run on this machine (the
    message names the backend and the feature or the missing tool)."""
