"""lstmkit: a readable, fast, complete LSTM library."""

from lstmkit.cell import LSTMCell, lstm_cell, lstm_gates
from lstmkit.errors import BackendError
from lstmkit.layer import LSTM  # imports lstmkit.backends, which registers the custom ops

__version__ = "0.1.0"

__all__ = ["LSTM", "LSTMCell", "lstm_cell", "lstm_gates", "BackendError", "__version__"]
