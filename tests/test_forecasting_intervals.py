"""Prediction intervals calibrated by step ahead on rolling origins (lstmkit.forecast)."""

import json

import numpy as np
import pytest
import torch

from lstmkit import data as tasks
from lstmkit.checkpoint import load_run
from lstmkit.cli import main
from lstmkit.data.csv import local_scale
from lstmkit.errors import RunDirError
from lstmkit.forecast import calibrate, intervals

TINY = ["--epochs", "2", "--hidden-size", "8", "--backend", "fused"]


def _random_walk(tmp_path, n=120, seed=3):
    """A yearly random walk with unit steps: its naive forecast errs by about sqrt(h)."""
    steps = np.random.default_rng(seed).normal(0.0, 1.0, n)
    v = 100 + np.cumsum(steps)
    path = tmp_path / "walk.csv"
    path.write_text("year,v\n" + "".join(f"{1900 + i},{x:.4f}\n" for i, x in enumerate(v)))
    return str(path)


@pytest.fixture(scope="module")
def walk_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("walk")
    path = _random_walk(tmp)
    out = tmp / "run"
    flags = ["--task", "csv", "--csv", path, "--date-column", "year", "--test-size", "10"]
    assert main(["train", "--out", str(out), *TINY, *flags, "--scaling", "diff"]) == 0
    return out


def test_calibration_holds_residuals_per_step_for_model_and_reference(walk_run):
    cal = json.loads((walk_run / "intervals.json").read_text())
    steps = cal["scaled_residuals_by_step"]
    assert set(steps) == {"model", "reference"} and len(steps["model"]) == 10
    # origins one step apart over training and validation: many residuals at every step,
    # one fewer for each step further ahead (the targets end with the validation part)
    counts = [len(z) for z in steps["reference"]]
    assert counts[0] > 50 and all(a - b == 1 for a, b in zip(counts, counts[1:], strict=False))
    assert cal["local_scale"] > 0


def test_intervals_widen_with_the_step_like_the_reference_errors(walk_run):
    run = load_run(walk_run)
    fc = [100.0] * 10
    lo, hi = intervals(run, fc, 80)
    half = (hi - lo) / 2
    assert (np.diff(half) >= 0).all()  # never narrower further ahead
    # a random walk's naive errors grow like sqrt(h): by step 9 about three times step 1
    assert 2.0 < half[8] / half[0] < 4.5
    lo95, hi95 = intervals(run, fc, 95)
    assert ((hi95 - lo95) > (hi - lo)).all()
    # past the calibrated steps the last width keeps growing
    lo, hi = intervals(run, [100.0] * 14, 80)
    assert (np.diff(hi[9:]) > 0).all()


def test_intervals_scale_with_the_context_moves(walk_run):
    run = load_run(walk_run)
    calm = 100 + 0.5 * (np.arange(30) % 2)  # steps of 0.5
    wild = 100 + 2.0 * (np.arange(30) % 2)  # steps of 2: four times the local scale
    lo1, hi1 = intervals(run, [100.0] * 3, 80, calm)
    lo2, hi2 = intervals(run, [100.0] * 3, 80, wild)
    torch.testing.assert_close(
        torch.as_tensor(hi2 - lo2), torch.as_tensor(4 * (hi1 - lo1)), rtol=1e-9, atol=1e-9
    )


def test_local_scale_is_the_mean_absolute_step():
    w = torch.tensor([[1.0, 3.0, 2.0, 2.0], [5.0, 5.0, 5.0, 5.0]])
    torch.testing.assert_close(local_scale(w, 7.0), torch.tensor([1.0, 7.0], dtype=torch.float64))


def test_80_percent_intervals_cover_about_80_percent_of_a_random_walk(walk_run, tmp_path):
    """Calibrated on one walk, checked on the next values of that walk's family: a new walk
    from another seed, forecast from many origins by the run's model."""
    from lstmkit.forecast import forecast

    run = load_run(walk_run)
    v = np.loadtxt(_random_walk(tmp_path, n=400, seed=11), delimiter=",", skiprows=1)[:, 1]
    inside = []
    for o in range(40, 390, 7):
        fc = forecast(run, v[:o].tolist(), 10)
        lo, hi = intervals(run, fc, 80, v[:o])
        t = v[o : o + 10]
        inside.extend(((t >= lo[: len(t)]) & (t <= hi[: len(t)])).tolist())
    assert 0.7 <= np.mean(inside) <= 0.92


def test_a_very_short_series_keeps_the_steps_it_has_residuals_for(tmp_path):
    cfg_run = tmp_path / "short"
    path = _random_walk(tmp_path, n=40)
    flags = ["--task", "csv", "--csv", path, "--date-column", "year", "--test-size", "6"]
    args = ["train", "--out", str(cfg_run), *TINY, *flags, "--length", "24", "--scaling", "diff"]
    assert main(args) == 0
    run = load_run(cfg_run)
    td = tasks.make(tasks.resolve(run.config), 0)
    fv = dict(td.forecast_val)
    fv["calib"] = {k: (v[-3:] if torch.is_tensor(v) else v) for k, v in fv["calib"].items()}
    cal = calibrate(run.model, run.scaler, fv, run.config.data.length)
    assert len(cal["scaled_residuals_by_step"]["model"]) == 3  # three origins: three steps


@pytest.mark.parametrize(
    "payload",
    [
        {"local_scale": 0, "scaled_residuals_by_step": {"model": [[1]], "reference": [[1]]}},
        {"local_scale": 1, "scaled_residuals_by_step": {"model": [[1]], "reference": [[-1]]}},
        {"local_scale": 1, "scaled_residuals_by_step": {"model": [[1]], "reference": [[]]}},
        {"local_scale": 1, "scaled_residuals_by_step": {"model": [[1], [2]], "reference": [[1]]}},
        {"local_scale": 1, "scaled_residuals_by_step": {"model": [["x"]], "reference": [[1]]}},
        {"local_scale": 1, "scaled_residuals_by_step": [[1]]},
    ],
)
def test_a_damaged_step_calibration_is_refused(walk_run, tmp_path, payload):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(walk_run, copy)
    (copy / "intervals.json").write_text(json.dumps(payload))
    with pytest.raises(RunDirError, match="intervals.json is corrupted"):
        intervals(load_run(copy), [1.0, 2.0], 80)


def test_predict_level_widths_follow_the_values_given(walk_run, capsys):
    """predict --level scales the widths by the local scale of the values it forecasts
    from, not by the scale saved at training: a calmer context gives narrower intervals."""
    base = 100 + np.cumsum(np.random.default_rng(5).normal(0.0, 1.0, 30))
    halves = []
    for k in (1.0, 0.25):  # the same path with steps a quarter as large
        values = base[0] + k * (base - base[0])
        args = ["predict", "--run", str(walk_run), "--horizon", "4", "--level", "80", "--json"]
        assert main([*args, *(f"{v:.6f}" for v in values)]) == 0
        out = json.loads(capsys.readouterr().out)
        halves.append((np.array(out["hi_80"]) - np.array(out["lo_80"])) / 2)
    # the local scale is the mean absolute step: a quarter, so are the widths
    np.testing.assert_allclose(halves[1] / halves[0], 0.25, rtol=1e-6)
