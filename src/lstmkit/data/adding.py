"""The adding problem (Hochreiter & Schmidhuber 1997; the variant of Le et al. 2015).

Two input channels over ``length`` steps: values U(0, 1), and markers, 0 everywhere but 1 at
exactly two steps, one drawn in the first half and one in the second. The target, the sum
of the two marked values, counts at the last step only (mask). x (N, T, 2), y (N, T, 1)
(zero but at the last step), mask (N, T). Answering the constant 1.0 scores MSE 1/6.
"""

from __future__ import annotations

import torch

from lstmkit.config import RunConfig
from lstmkit.data import BaseTask, Split, TaskData
from lstmkit.errors import ConfigError

DEFAULTS = {
    "data.length": 100,
    "data.num_train": 10000,
    "data.num_val": 1000,
    "data.num_test": 1000,
    "model.hidden_size": 64,
    "train.epochs": 12,
    "train.batch_size": 50,
    "train.lr": 0.02,
}


def problems(n: int, length: int, generator: torch.Generator) -> Split:
    """``n`` adding problems of ``length`` steps; see the module docstring."""
    values = torch.rand(n, length, generator=generator)
    half = length // 2
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, length, (n,), generator=generator)
    rows = torch.arange(n)
    markers = torch.zeros(n, length)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = torch.stack([values, markers], dim=-1)
    y = torch.zeros(n, length, 1)
    y[:, -1, 0] = values[rows, first] + values[rows, second]
    mask = torch.zeros(n, length, dtype=torch.bool)
    mask[:, -1] = True
    return Split(x, y, mask)


class Adding(BaseTask):
    name, defaults, series = "adding", DEFAULTS, False

    def make(self, cfg: RunConfig, seed: int) -> TaskData:
        d = cfg.data
        if d.length < 2:
            raise ConfigError(f"the adding problem needs data.length >= 2, got {d.length}")
        g = torch.Generator().manual_seed(seed)
        parts = [problems(n, d.length, g) for n in (d.num_train, d.num_val, d.num_test)]
        return TaskData(*parts, input_size=2, output_size=1, series_scaling=False)

    def baselines(self, td: TaskData, cfg: RunConfig) -> dict[str, torch.Tensor]:
        """The constant answer 1.0 (the mean of the sum): MSE 1/6."""
        return {"constant 1.0": torch.ones_like(td.test.y)}


TASK = Adding()
