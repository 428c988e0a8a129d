"""lstmkit: a readable, fast, complete LSTM library.

The public names load on first use (``lstmkit.LSTM`` imports torch and registers the custom
ops then), so the ``lstmkit`` command starts, and answers Ctrl-C, before torch is loaded."""

from lstmkit.errors import BackendError

__version__ = "0.1.0"

_LAZY = {
    "LSTM": "lstmkit.layer",
    "LSTMCell": "lstmkit.cell",
    "lstm_cell": "lstmkit.cell",
    "lstm_gates": "lstmkit.cell",
}
__all__ = ["LSTM", "LSTMCell", "lstm_cell", "lstm_gates", "BackendError", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once: later lookups skip this function
        return value
    raise AttributeError(f"module 'lstmkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
