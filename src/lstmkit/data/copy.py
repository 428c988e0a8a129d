"""The copy-memory task (Arjovsky, Shah & Bengio 2016): remember 10 symbols over a delay.

Tokens: 0 blank, 1..8 symbols, 9 the delimiter. With delay T = ``length``, a sequence of
T + 20 tokens is 10 symbols drawn uniformly from 1..8, T - 1 blanks, the delimiter, then 10
blanks; the target is blank for T + 10 steps and then the 10 symbols. Only the last 10 steps
count (mask). x (N, T + 20) int64, y (N, T + 20) int64 classes. A model without memory
scores cross-entropy ln 8 ≈ 2.08 and accuracy 1/8 there.
"""

from __future__ import annotations

import math

import torch

from lstmkit.config import RunConfig
from lstmkit.data import BaseTask, Split, TaskData

SYMBOLS, REMEMBER, BLANK, DELIMITER = 8, 10, 0, 9
VOCAB = SYMBOLS + 2
DEFAULTS = {
    "data.length": 10,
    "data.num_train": 8192,
    "data.num_val": 512,
    "data.num_test": 512,
    "model.hidden_size": 128,
    "train.epochs": 20,
    "train.batch_size": 64,
    "train.lr": 0.01,
}


def sequences(n: int, delay: int, generator: torch.Generator) -> Split:
    """``n`` copy problems with delay ``delay``; see the module docstring."""
    total = delay + 2 * REMEMBER
    symbols = torch.randint(1, SYMBOLS + 1, (n, REMEMBER), generator=generator)
    x = torch.full((n, total), BLANK, dtype=torch.long)
    x[:, :REMEMBER] = symbols
    x[:, REMEMBER + delay - 1] = DELIMITER
    y = torch.full((n, total), BLANK, dtype=torch.long)
    y[:, -REMEMBER:] = symbols
    mask = torch.zeros(n, total, dtype=torch.bool)
    mask[:, -REMEMBER:] = True
    return Split(x, y, mask)


class Copy(BaseTask):
    name, defaults = "copy", DEFAULTS
    kind, series, tokens = "classification", False, True

    def make(self, cfg: RunConfig, seed: int) -> TaskData:
        g = torch.Generator().manual_seed(seed)
        d = cfg.data
        parts = [sequences(n, d.length, g) for n in (d.num_train, d.num_val, d.num_test)]
        return TaskData(
            *parts,
            input_size=VOCAB,
            output_size=VOCAB,
            kind="classification",
            tokens=True,
            series_scaling=False,
            default_scaling="none",
        )

    def baselines(self, td: TaskData, cfg: RunConfig) -> dict[str, torch.Tensor]:
        """No memory: uniform over the 8 symbols (cross-entropy ln 8)."""
        logits = torch.full((*td.test.y.shape, VOCAB), -1e9)
        logits[..., 1 : SYMBOLS + 1] = 0.0
        return {f"uniform over {SYMBOLS} (ln 8 = {math.log(SYMBOLS):.3f})": logits}


TASK = Copy()
