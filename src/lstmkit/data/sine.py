"""Noisy sine waves of random phase and frequency; predict the next value at every step.

Each sequence is ``sin(2π f t + φ) + ε`` at t = 0 … length, f ~ U(1/40, 1/10) cycles per
step (periods 10 to 40 steps), φ ~ U(0, 2π), ε ~ N(0, 0.1²) independent at every step.
Input the first ``length`` values, target the ``length`` after them: x, y (N, length, 1).
The noise floor of the one-step MSE is 0.01.
"""

from __future__ import annotations

import math

import torch

from lstmkit.config import RunConfig
from lstmkit.data import BaseTask, Split, TaskData, all_steps

NOISE = 0.1
MIN_PERIOD, MAX_PERIOD = 10.0, 40.0
DEFAULTS = {
    "data.length": 50,
    "data.num_train": 1024,
    "data.num_val": 256,
    "data.num_test": 256,
    "train.epochs": 30,
}


def waves(n: int, length: int, generator: torch.Generator) -> Split:
    """``n`` noisy waves: x (n, length, 1), y (n, length, 1), float32."""
    freq = 1 / MAX_PERIOD + torch.rand(n, 1, generator=generator) * (
        1 / MIN_PERIOD - 1 / MAX_PERIOD
    )
    phase = torch.rand(n, 1, generator=generator) * 2 * math.pi
    t = torch.arange(length + 1, dtype=torch.float32)
    clean = torch.sin(2 * math.pi * freq * t + phase)
    seq = clean + NOISE * torch.randn(clean.shape, generator=generator)
    x, y = seq[:, :-1, None], seq[:, 1:, None]
    return Split(x, y, all_steps(x))


class Sine(BaseTask):
    name, defaults = "sine", DEFAULTS

    def make(self, cfg: RunConfig, seed: int) -> TaskData:
        g = torch.Generator().manual_seed(seed)
        d = cfg.data
        parts = [waves(n, d.length, g) for n in (d.num_train, d.num_val, d.num_test)]
        return TaskData(*parts, input_size=1, output_size=1, default_scaling="standard")


TASK = Sine()
