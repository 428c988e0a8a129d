"""SequenceModel: the tutorial's MyLSTM — an LSTM and a Linear head over every step."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lstmkit.layer import LSTM


class SequenceModel(nn.Module):
    """(optional embedding) → LSTM → Linear, batch-first.

    Input x (B, T, I) float, or (B, T) int64 token ids when ``vocab_size`` is set;
    ``lengths`` (B,) optional. Output (B, T, O): one prediction per step. ``variant``:
    the LSTM's variant options (``layer_norm=True``, ...; see :class:`lstmkit.LSTM`).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        backend: str = "auto",
        vocab_size: int | None = None,
        embedding_dim: int = 32,
        **variant,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim) if vocab_size else None
        lstm_in = embedding_dim if vocab_size else input_size
        self.lstm = LSTM(
            lstm_in,
            hidden_size,
            num_layers,
            dropout=dropout,
            batch_first=True,
            backend=backend,
            **variant,
        )
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor, lengths=None, hx=None, return_state: bool = False):
        if self.embedding is not None:
            x = self.embedding(x)
        out, state = self.lstm(x, hx, lengths=lengths)
        y = self.head(out)
        return (y, state) if return_state else y


def zero_head(model: SequenceModel) -> SequenceModel:
    """``model`` with its head's weight and bias zeroed, in place: it then outputs zeros, which
    a forecasting run's scaler turns into its reference forecast (whatever the LSTM's
    weights)."""
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    return model
