"""A forecasting run keeps the average of its best validation checkpoints (csv.average_best),
never worse on validation than the reference forecast."""

import math

import numpy as np
import torch

from lstmkit import data as tasks
from lstmkit.checkpoint import build_model, load_run, load_state
from lstmkit.cli import main
from lstmkit.train import average_weights, forecast_error

TINY = ["--hidden-size", "8", "--backend", "fused", "--schedule", "constant", "--lr", "0.02"]


def _cycle(tmp_path):
    """A noisy cycle of 7 years (no season the dates suggest): its naive forecast is poor and
    a few epochs learn better."""
    t = np.arange(90)
    v = 50 + 10 * np.sin(2 * np.pi * t / 7) + np.random.default_rng(5).normal(0.0, 1.0, 90)
    path = tmp_path / "w.csv"
    path.write_text("year,v\n" + "".join(f"{1900 + i},{x:.4f}\n" for i, x in enumerate(v)))
    return ["--task", "csv", "--csv", str(path), "--date-column", "year", "--test-size", "8"]


def _random_walk(tmp_path):
    """Steps of pure noise: nothing beats the naive (reference) forecast for long."""
    v = 50 + np.cumsum(np.random.default_rng(5).normal(0.0, 1.0, 90))
    path = tmp_path / "rw.csv"
    path.write_text("year,v\n" + "".join(f"{1900 + i},{x:.4f}\n" for i, x in enumerate(v)))
    return ["--task", "csv", "--csv", str(path), "--date-column", "year", "--test-size", "8"]


def _train(tmp_path, name, *flags):
    out = tmp_path / name
    assert main(["train", "--out", str(out), *TINY, *flags, "--scaling", "diff"]) == 0
    return out


def test_average_weights_is_the_elementwise_mean():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor([3])}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor([9])}
    out = average_weights([a, b])
    torch.testing.assert_close(out["w"], torch.tensor([2.0, 4.0]))
    assert out["n"].tolist() == [3]  # not a float: the first member's


def test_the_kept_weights_average_the_three_best_checkpoints(tmp_path):
    flags = _cycle(tmp_path)
    # with a constant learning rate, a run of e epochs ends on epoch e of a longer one
    epochs = [
        load_state(
            _train(tmp_path, f"e{e}", *flags, "--epochs", str(e), "--average-best", "1")
            / "train_state.pt"
        ).model
        for e in (1, 2, 3)
    ]
    run = load_run(_train(tmp_path, "avg", *flags, "--epochs", "3", "--average-best", "3"))
    cfg = tasks.resolve(run.config)
    td = tasks.make(cfg, cfg.train.seed)
    torch.manual_seed(cfg.train.seed)  # the untrained model (epoch 0): a zero head
    init = build_model(cfg, run.task)
    torch.nn.init.zeros_(init.head.weight)
    torch.nn.init.zeros_(init.head.bias)
    candidates = [init.state_dict(), *epochs]

    def err(weights):
        m = build_model(cfg, run.task)
        m.load_state_dict(weights)
        return forecast_error(m, run.scaler, td.forecast_val, cfg.data.length, "cpu")

    scores = [err(w) for w in candidates]
    expected = average_weights([candidates[i] for i in np.argsort(scores)[:3]])
    assert err(expected) <= scores[0]  # not guarded: the average beats the reference here
    for name, t in run.model.state_dict().items():
        torch.testing.assert_close(t, expected[name])
    best = candidates[int(np.argmin(scores))]
    assert not torch.equal(run.model.head.weight, best["head.weight"])


def test_the_kept_weights_never_forecast_worse_than_the_reference(tmp_path):
    # steps of pure noise and a huge learning rate: trained checkpoints forecast badly
    flags = _random_walk(tmp_path)
    run = load_run(_train(tmp_path, "rw", *flags, "--epochs", "3", "--lr", "0.5"))
    td = tasks.make(run.config, 0)
    L = run.config.data.length
    kept = forecast_error(run.model, run.scaler, td.forecast_val, L, "cpu")
    run.model.head.weight.data.zero_()
    run.model.head.bias.data.zero_()
    assert kept <= forecast_error(run.model, run.scaler, td.forecast_val, L, "cpu") + 1e-6


def test_an_average_worse_than_the_reference_forecast_is_not_kept(tmp_path):
    from types import SimpleNamespace

    from lstmkit.train import _guarded

    run = load_run(_train(tmp_path, "c", *_cycle(tmp_path), "--epochs", "3"))
    cfg = tasks.resolve(run.config)
    td = tasks.make(cfg, cfg.train.seed)
    args = (run.scaler, td.forecast_val, cfg.data.length, "cpu")
    session = SimpleNamespace(
        model=run.model,
        task=SimpleNamespace(scaler=run.scaler, fv=td.forecast_val),
        cfg=cfg,
        device="cpu",
        reference_val=math.inf,
    )
    wild = {k: v.clone() for k, v in run.model.state_dict().items()}
    wild["head.bias"] += 5.0  # five scales off at every step
    ref = {k: v.clone() for k, v in wild.items()}
    ref["head.weight"].zero_()
    ref["head.bias"].zero_()
    m = build_model(cfg, run.task)
    m.load_state_dict(ref)
    session.reference_val = forecast_error(m, *args)
    kept = _guarded(session, wild)
    assert not kept["head.weight"].any() and not kept["head.bias"].any()
    torch.testing.assert_close(kept["lstm.weight_hh_l0"], wild["lstm.weight_hh_l0"])
    good = run.model.state_dict()  # three epochs on a cycle: better than the last value
    m.load_state_dict(good)
    assert forecast_error(m, *args) < session.reference_val
    assert _guarded(session, good) is good


def test_recursive_runs_average_three_checkpoints_and_direct_runs_keep_the_best(tmp_path):
    from lstmkit.config import CsvConfig, DataConfig, RunConfig

    path = _cycle(tmp_path)[3]
    for strategy, k in (("recursive", 3), ("direct", 1), ("auto", 3)):
        csv = CsvConfig(file=path, date_column="year", test_size=8, strategy=strategy)
        cfg = tasks.resolve(RunConfig(data=DataConfig(task="csv"), csv=csv))
        assert cfg.csv.average_best == k
    csv = CsvConfig(file=path, date_column="year", test_size=8, strategy="direct", average_best=4)
    assert tasks.resolve(RunConfig(data=DataConfig(task="csv"), csv=csv)).csv.average_best == 4
