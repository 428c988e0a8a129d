"""Recursive forecasts keep only the model's window from step to step (O(window) per step),
give what re-reading the whole history gives, and say so when they leave the numbers."""

from __future__ import annotations

import pytest
import torch

from lstmkit.config import DataConfig, RunConfig
from lstmkit.data import TaskFacts
from lstmkit.errors import DataError
from lstmkit.forecast import forecast, recursive


class OffsetScaler:
    """Scales by each window's first value, so the window the model sees matters."""

    def encode(self, x, y=None):
        return x - x[:, :1], None

    def decode(self, z, x):
        return z + x[:, :1]


class Recording(torch.nn.Module):
    def __init__(self, growth: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lstm = torch.nn.LSTM(1, 5, batch_first=True)
        self.head = torch.nn.Linear(5, 1)
        self.lengths: list[int] = []
        self.growth = growth

    def forward(self, x):
        self.lengths.append(x.size(1))
        return self.head(self.lstm(x)[0]) + self.growth * x.abs() * 1e37


def _whole_history(model, scaler, x, horizon, window):
    """The old loop: the full history concatenated every step, its tail read."""
    for _ in range(horizon):
        ctx = x[:, -window:]
        nxt = scaler.decode(model(scaler.encode(ctx)[0])[:, -1:], ctx)
        x = torch.cat([x, nxt], dim=1)
    return x[:, -horizon:, 0]


@pytest.mark.parametrize("T, window, horizon", [(10, 4, 9), (3, 6, 8), (5, 1, 4), (7, 7, 3)])
def test_window_only_and_same_forecast(T, window, horizon):
    x = torch.randn(3, T, 1, generator=torch.Generator().manual_seed(T))
    model = Recording()
    got = recursive(model, OffsetScaler(), x, horizon, window)
    assert got.shape == (3, horizon)
    assert max(model.lengths) <= window  # never more than the window, however long the run
    assert model.lengths == [min(T + k, window) for k in range(horizon)]
    torch.testing.assert_close(got, _whole_history(Recording(), OffsetScaler(), x, horizon, window))


class FakeRun:
    def __init__(self, model, window: int) -> None:
        self.model, self.scaler = model, OffsetScaler()
        self.task = TaskFacts(input_size=1, output_size=1)
        self.config = RunConfig(data=DataConfig(length=window))
        self.scaler.defined = lambda n: torch.ones(n, dtype=torch.bool)


def test_a_forecast_that_overflows_is_one_error_naming_the_step():
    run = FakeRun(Recording(growth=1.0), window=3)
    with pytest.raises(DataError, match=r"leaves the range of numbers at step \d+ of 50"):
        forecast(run, [1.0, 2.0, 3.0], 50)
    assert len(run.model.lengths) < 50  # it stopped feeding back at the first non-finite step


@pytest.mark.parametrize("horizon", [0, -1, 100_001, 10**30, True, 2.0])
def test_horizon_is_bounded_in_the_library_too(horizon):
    with pytest.raises(DataError, match=r"horizon must be an integer in 1..100000"):
        forecast(FakeRun(Recording(), 3), [1.0, 2.0], horizon)
