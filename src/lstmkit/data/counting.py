"""The tutorial's task: runs of consecutive integers; predict the next number at every step.

A run of ``length + 1`` integers from a start drawn in low..high gives input
``[s, …, s+length-1]`` and target ``[s+1, …, s+length]``.
"""

from __future__ import annotations

import torch

from lstmkit.config import RunConfig
from lstmkit.data import BaseTask, Split, TaskData, all_steps


def runs(n: int, length: int, low: int, high: int, generator: torch.Generator) -> Split:
    """``n`` runs: x (n, length, 1) and y (n, length, 1), float32."""
    starts = torch.randint(low, high + 1, (n, 1), generator=generator).float()
    seq = starts + torch.arange(length + 1, dtype=torch.float32)
    x, y = seq[:, :-1, None], seq[:, 1:, None]
    return Split(x, y, all_steps(x))


class Counting(BaseTask):
    name = section = "counting"

    def make(self, cfg: RunConfig, seed: int) -> TaskData:
        g = torch.Generator().manual_seed(seed)
        d, c = cfg.data, cfg.counting
        parts = [runs(n, d.length, c.low, c.high, g) for n in (d.num_train, d.num_val, d.num_test)]
        return TaskData(*parts, input_size=1, output_size=1, default_scaling="diff")


TASK = Counting()
