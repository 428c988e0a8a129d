"""lstmkit: a readable, fast, complete LSTM library."""

from lstmkit.backends import BackendError
from lstmkit.cell import LSTMCell, lstm_cell, lstm_gates
from lstmkit.layer import LSTM

__version__ = "0.1.0"

__all__ = ["LSTM", "LSTMCell", "lstm_cell", "lstm_gates", "BackendError", "__version__"]
