"""Forecasting a series the library has never seen: frequency and season learned from the
data, scaling chosen by the data, missing values, multi-step validation, old runs."""

import json
import math
from datetime import datetime, timedelta

import numpy as np
import pytest
import torch

from lstmkit import data as tasks
from lstmkit import timeseries as ts
from lstmkit.cli import main
from lstmkit.config import CsvConfig, DataConfig, RunConfig
from lstmkit.data import csv
from lstmkit.errors import DataError

TINY = ["--epochs", "3", "--hidden-size", "8", "--backend", "fused"]


def _dates(start: datetime, n: int, step) -> list[datetime]:
    out = [start]
    for _ in range(n - 1):
        out.append(step(out[-1]))
    return out


def _next_month(d, k=1):
    m = d.month - 1 + k
    return d.replace(year=d.year + m // 12, month=m % 12 + 1)


@pytest.mark.parametrize(
    "step, name, season",
    [
        (lambda d: d + timedelta(hours=1), "hourly", 24),
        (lambda d: d + timedelta(minutes=30), "sub-daily (1800 s)", 48),
        (lambda d: d + timedelta(days=1), "daily", 7),
        (lambda d: d + timedelta(days=7), "weekly", 52),
        (_next_month, "monthly", 12),
        (lambda d: _next_month(d, 3), "quarterly", 4),
        (lambda d: d.replace(year=d.year + 1), "yearly", 1),
    ],
)
def test_frequency_from_dates(step, name, season):
    f = ts.infer_frequency(_dates(datetime(2001, 1, 1), 40, step))
    assert (f.name, f.season, f.missing, f.irregular) == (name, season, 0, 0)


def test_future_dates_are_written_like_the_column():
    month_end = ts.parse_date("2000-01-31", "t")
    assert ts.format_like(ts.add_steps(month_end, "monthly", 0, 1), "2000-01-31") == "2000-02-29"
    assert ts.format_like(ts.add_steps(month_end, "monthly", 0, 13), "2000-01") == "2001-02"
    q = ts.parse_date("1959Q4", "t")
    assert ts.format_like(ts.add_steps(q, "quarterly", 0, 1), "1959Q4") == "1960Q1"
    assert (
        ts.format_like(ts.add_steps(ts.parse_date("1871", "t"), "yearly", 0, 2), "1871") == "1873"
    )
    hour = ts.parse_date("2020-03-01 23:00", "t")
    assert ts.format_like(ts.add_steps(hour, "hourly", 3600, 2), "2020-03-01 23:00") == (
        "2020-03-02 01:00:00"
    )


def test_missing_and_irregular_timestamps_are_counted():
    d = _dates(datetime(2000, 1, 1), 30, _next_month)
    f = ts.infer_frequency(d[:10] + d[13:])  # three months missing
    assert (f.name, f.missing, f.irregular) == ("monthly", 3, 0)
    days = _dates(datetime(2000, 1, 1), 30, lambda x: x + timedelta(days=1))
    days[5] += timedelta(hours=7)
    assert ts.infer_frequency(days).irregular == 2


def _seasonal(n, p, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 10 + 0.05 * t + np.sin(2 * np.pi * t / p) * 3 + rng.normal(0, noise, n)


def test_season_is_checked_against_the_autocorrelation():
    monthly = ts.Frequency("monthly", 30 * 86400, 12)
    assert ts.choose_period(_seasonal(120, 12), monthly)[0] == 12
    walk = np.cumsum(np.random.default_rng(1).normal(size=120))
    period, why = ts.choose_period(walk, monthly)
    assert period == 1 and "dropped" in why
    assert ts.choose_period(walk, ts.Frequency("yearly", 3.15e7, 1)) == (
        1,
        "yearly data: no season",
    )
    assert ts.choose_period(_seasonal(200, 7), None)[0] == 7  # no dates: the ACF peak
    assert ts.choose_period(walk, None)[0] == 1
    rng, steps = np.random.default_rng(2), [0.0]
    for _ in range(300):  # persistent growth (AR(1) steps): correlated at every lag, no peak
        steps.append(0.9 * steps[-1] + rng.normal())
    quarterly = ts.Frequency("quarterly", 91 * 86400, 4)
    assert ts.choose_period(np.cumsum(steps), quarterly)[0] == 1
    weekly = ts.Frequency("weekly", 7 * 86400, 52)
    t = np.arange(520)
    yearly_cycle = np.sin(2 * np.pi * t / 52.18) + rng.normal(0, 0.1, 520)
    assert ts.choose_period(yearly_cycle, weekly)[0] == 52  # 52.18 weeks: a peak near lag 52
    assert ts.choose_period(csv.read_series(""), None)[0] == 12  # airline without its dates


def test_scaling_is_chosen_by_the_reference_forecasts():
    rng = np.random.default_rng(0)
    assert ts.choose_scaling(_seasonal(200, 12, 0.1), 12, 12, 24)[0] == "seasonal"
    assert ts.choose_scaling(5 + rng.normal(size=200), 1, 10, 24)[0] == "standard"
    trend = 100 + 2.0 * np.arange(200) + rng.normal(0, 0.5, 200)
    assert ts.choose_scaling(trend, 1, 10, 24)[0] == "drift"
    ref = ts.reference_forecasts("seasonal", np.array([1.0, 2, 3, 2, 4, 6]), 4, 3)
    np.testing.assert_allclose(ref, [4, 8, 12, 8])  # last season times the mean growth (x2)


def _csv(tmp_path, rows, name="s.csv", header="date,v"):
    p = tmp_path / name
    p.write_text(header + "\n" + "\n".join(rows) + "\n")
    return str(p)


def test_gaps_are_one_line_errors_or_filled(tmp_path):
    path = _csv(tmp_path, ["2000-01,1", "2000-02,", "2000-03,5", "2000-05,9", "2000-06,NA"])
    with pytest.raises(DataError, match=r"line 3, column 'v': missing value ''; pass --fill"):
        csv.read(path, "v", "date")
    dates_only = _csv(tmp_path, ["2000-01,1", "2000-02,3", "2000-04,7", "2000-05,1"], "d.csv")
    with pytest.raises(DataError, match=r"line 4: 1 monthly timestamp\(s\) missing before "):
        csv.read(dates_only, "v", "date")
    s = csv.read(path, "v", "date", "interpolate")
    assert s.values == [1, 3, 5, 7, 9, 9] and s.dates[3] == "2000-04"
    assert csv.read(path, "v", "date", "ffill").values == [1, 1, 5, 5, 9, 9]
    dropped = csv.read(path, "v", "date", "drop")
    assert dropped.values == [1, 5, 9] and dropped.dates == ["2000-01", "2000-03", "2000-05"]
    lead = _csv(tmp_path, ["2000-01,", "2000-02,2", "2000-03,4"], "l.csv")
    assert csv.read(lead, "v", "date", "ffill").dates == ["2000-02", "2000-03"]


def test_gap_through_the_cli_is_one_line(tmp_path, capsys):
    rows = [f"{2000 + i // 12}-{i % 12 + 1:02d},{i}" for i in range(60)]
    rows[30] = rows[30].split(",")[0] + ","
    path = _csv(tmp_path, rows)
    flags = ["--task", "csv", "--csv", path, "--date-column", "date", "--test-size", "6"]
    assert main(["train", "--out", str(tmp_path / "r"), *TINY, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "line 32" in err and "--fill" in err
    assert main(["train", "--out", str(tmp_path / "r"), *TINY, *flags, "--fill", "ffill"]) == 0


def _quarterly(tmp_path, n=80):
    v = _seasonal(n, 4, 0.2)
    rows = [f"{1990 + i // 4}-{3 * (i % 4) + 1:02d}-01,{x:.3f}" for i, x in enumerate(v)]
    return _csv(tmp_path, rows, "q.csv")


def test_a_run_says_what_it_inferred(tmp_path, capsys):
    path = _quarterly(tmp_path)
    out = tmp_path / "q"
    flags = ["--task", "csv", "--csv", path, "--date-column", "date", "--test-size", "8"]
    assert main(["train", "--out", str(out), *TINY, *flags]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("series: quarterly; period 4 (quarterly data, autocorrelation")
    saved = json.loads((out / "config.json").read_text())
    d, inferred = saved["config"]["data"], saved["task"]["meta"]["inferred"]
    assert (d["period"], saved["config"]["csv"]["horizon"], d["length"]) == (4, 8, 24)
    assert d["scaling"] == inferred["scaling"] in ("diff", "drift", "standard", "seasonal")
    assert (
        inferred["frequency"] == "quarterly" and "reference-forecast" in inferred["scaling_reason"]
    )
    # --period overrides, and says so
    assert main(["train", "--out", str(tmp_path / "p"), *TINY, *flags, "--period", "2"]) == 0
    saved = json.loads((tmp_path / "p" / "config.json").read_text())
    assert saved["task"]["meta"]["inferred"]["period_reason"] == "set by --period"


def test_validation_scores_horizon_step_forecasts(tmp_path):
    path = _quarterly(tmp_path)
    cfg = tasks.resolve(
        RunConfig(
            data=DataConfig(task="csv"),
            csv=CsvConfig(file=path, date_column="date", test_size=8, horizon=4),
        )
    )
    td = tasks.make(cfg, 0)
    fv = td.forecast_val
    assert fv["context"].shape[1:] == (24, 1) and fv["target"].shape[1] == 4
    v = csv.read_series(path, "v", "date")
    n_train = len(v) - 16
    assert fv["target"][0].tolist() == pytest.approx(v[n_train : n_train + 4], abs=1e-4)
    assert fv["target"].shape[0] == 8  # every validation value is an origin...
    assert torch.isnan(fv["target"][-1, 1:]).all()  # ...scored up to the part's end
    assert fv["target"][-1, 0].item() == pytest.approx(v[n_train + 7], abs=1e-4)
    assert math.isfinite(fv["scale"]) and fv["scale"] > 0


def test_the_checkpoint_is_never_worse_than_the_reference_forecast(tmp_path):
    path = _quarterly(tmp_path)
    out = tmp_path / "r"
    flags = ["--task", "csv", "--csv", path, "--date-column", "date", "--test-size", "8"]
    assert main(["train", "--out", str(out), "--lr", "0.5", *TINY, *flags]) == 0
    from lstmkit.checkpoint import load_run
    from lstmkit.train import forecast_error

    run = load_run(out)
    td = tasks.make(run.config, 0)
    best = forecast_error(run.model, run.scaler, td.forecast_val, run.config.data.length, "cpu")
    run.model.head.weight.data.zero_()
    run.model.head.bias.data.zero_()
    ref = forecast_error(run.model, run.scaler, td.forecast_val, run.config.data.length, "cpu")
    assert best <= ref + 1e-6


def test_a_run_written_before_these_fields_still_loads(tmp_path, capsys):
    src = tmp_path / "air.csv"
    src.write_bytes(csv._source("")[0])
    out = tmp_path / "old"
    assert main(["train", "--out", str(out), *TINY, "--task", "csv", "--csv", str(src)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    for key in ("horizon", "fill", "rows"):
        del cfg["config"]["csv"][key]
    cfg["config"]["data"].update(scaling="auto", period=12, length=24)
    (out / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 24


# ---- backtest, intervals, the production forecast -------------------------------------------


def test_scores_and_naive_baselines():
    from lstmkit.backtest import naive_forecasts, score

    hist = [1.0, 2, 3, 4, 5, 6]
    f = naive_forecasts(hist, 4, 3)
    np.testing.assert_allclose(f["naive"], [6, 6, 6, 6])
    np.testing.assert_allclose(f["seasonal naive (3)"], [4, 5, 6, 4])
    np.testing.assert_allclose(f["drift"], [7, 8, 9, 10])
    s = score([7, 8, 9, 10], [7, 8, 9, 12], hist, 1)  # in-sample naive error is 1
    assert s["mae"] == 0.5 and s["mase"] == 0.5 and s["rmse"] == 1.0
    assert s["smape"] == pytest.approx(200 * 2 / 22 / 4)


@pytest.fixture
def quarterly_run(tmp_path):
    path = _quarterly(tmp_path)
    out = tmp_path / "q"
    flags = ["--task", "csv", "--csv", path, "--date-column", "date", "--test-size", "8"]
    assert main(["train", "--out", str(out), *TINY, *flags]) == 0
    return out


def test_backtest_table_says_whether_the_lstm_beats_each_baseline(quarterly_run, capsys):
    capsys.readouterr()
    assert main(["backtest", "--run", str(quarterly_run), "--windows", "3", "--step", "4"]) == 0
    out = capsys.readouterr().out
    assert "origins [64, 68, 72]" in out and "(2 in-sample for the run's model)" in out
    for name in ("LSTM", "naive", "seasonal naive (4)", "drift", "ETS", "Theta", "ARIMA"):
        assert name in out
    verdicts = [line for line in out.splitlines() if line.startswith("LSTM ")]
    verdicts = [v for v in verdicts if ": mean MASE" in v]
    assert len(verdicts) == 6 and all(" beat" in v for v in verdicts)
    capsys.readouterr()
    args = ["backtest", "--run", str(quarterly_run), "--windows", "2", "--level", "80", "--json"]
    assert main(args) == 0
    rep = json.loads(capsys.readouterr().out)
    assert len(rep["windows"]["LSTM"]) == 2 and set(rep["mean"]["LSTM"]) == {
        "mae",
        "rmse",
        "smape",
        "mase",
    }
    assert 0.0 <= rep["coverage"]["80"] <= 1.0
    assert main(["backtest", "--run", str(quarterly_run), "--windows", "40"]) == 2
    assert "windows of 8 steps" in capsys.readouterr().err


def test_backtest_refit_trains_a_model_per_window(quarterly_run):
    from lstmkit.backtest import backtest
    from lstmkit.checkpoint import load_run

    bt = backtest(
        load_run(quarterly_run), windows=2, step=4, refit=True, levels=(90,), classical=False
    )
    assert 0.0 <= bt.coverage["90"] <= 1.0
    assert bt.in_sample == [False, False] and set(bt.windows) == {
        "LSTM",
        "naive",
        "seasonal naive (4)",
        "drift",
    }
    assert all(math.isfinite(r["mase"]) for r in bt.windows["LSTM"])


def test_predict_levels_and_dated_forecast_file(quarterly_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["predict", "--run", str(quarterly_run), "--level", "80", "95", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    f, lo80, hi80, lo95, hi95 = (rep[k] for k in ("forecast", "lo_80", "hi_80", "lo_95", "hi_95"))
    assert len(f) == 8 and rep["date"][0] == "2010-01-01"  # the quarter after the last row
    assert all(
        a <= b <= c <= d <= e for a, b, c, d, e in zip(lo95, lo80, f, hi80, hi95, strict=True)
    )
    assert hi95[-1] - lo95[-1] > hi95[0] - lo95[0]  # wider further ahead
    out = tmp_path / "fc.csv"
    assert main(["predict", "--run", str(quarterly_run), "--out", str(out), "--level", "90"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "date,forecast,lo_90,hi_90" and lines[1].startswith("2010-01-01,")
    assert len(lines) == 9 and lines[-1].startswith("2011-10-01,")
    bad = str(tmp_path / "no" / "fc.csv")
    assert main(["predict", "--run", str(quarterly_run), "--out", bad]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["predict", "--run", str(quarterly_run), "--horizon", "2", "--level", "0"]) == 2
    assert "--level must be between 0 and 100" in capsys.readouterr().err


def test_test_size_zero_trains_on_all_the_data(tmp_path, capsys):
    path = _quarterly(tmp_path)
    out = tmp_path / "prod"
    flags = ["--task", "csv", "--csv", path, "--date-column", "date", "--test-size", "0"]
    assert main(["train", "--out", str(out), *TINY, *flags]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["csv"]["horizon"] == 4  # the season when nothing is held out
    from lstmkit.checkpoint import load_run

    run = load_run(out)
    td = tasks.make(run.config, 0)
    assert td.train.y[-1, -1, 0].item() == pytest.approx(csv.read_series(path, "v", "date")[-1])
    assert main(["evaluate", "--run", str(out)]) == 2
    assert "held out no test values" in capsys.readouterr().err
    assert main(["plot", "--run", str(out)]) == 0  # loss curves only
    assert main(["predict", "--run", str(out), "--out", str(tmp_path / "f.csv")]) == 0
    assert (tmp_path / "f.csv").read_text().splitlines()[1].startswith("2010-01-01,")


def test_plot_shades_the_intervals(quarterly_run):
    from lstmkit.checkpoint import load_run
    from lstmkit.plots import plot_forecast

    run = load_run(quarterly_run)
    path = plot_forecast(run, quarterly_run / "f.png")
    assert path.stat().st_size > 10_000
    (quarterly_run / "intervals.json").unlink()
    assert plot_forecast(run, quarterly_run / "g.png").stat().st_size > 10_000


def test_max_time_stops_training_and_keeps_the_best(tmp_path, capsys):
    path = _quarterly(tmp_path)
    out = tmp_path / "t"
    flags = ["--task", "csv", "--csv", path, "--date-column", "date", "--test-size", "8"]
    args = ["train", "--out", str(out), "--epochs", "1000", "--max-time", "0.5", *TINY[2:], *flags]
    assert main(args) == 0
    assert "(stopped early)" in capsys.readouterr().out
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert 1 <= len(rows) < 1000


@pytest.mark.slow
def test_a_million_rows_train_under_a_gigabyte(tmp_path):
    import resource
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    n = 1_000_000
    t = np.arange(n)
    v = 10 + 3 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.3, n)
    start = datetime(1900, 1, 1)
    path = tmp_path / "long.csv"
    with path.open("w") as f:
        f.write("time,load\n")
        for i in range(n):
            f.write(f"{start + timedelta(hours=int(i))},{v[i]:.3f}\n")
    cmd = [sys.executable, "-m", "lstmkit", "train", "--task", "csv", "--csv", str(path)]
    cmd += ["--column", "load", "--date-column", "time", "--test-size", "48"]
    # the defaults: 60 epochs of csv.EPOCH_WINDOWS windows (measured here: 85 s, 850 MB)
    cmd += ["--out", str(tmp_path / "r")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "series: hourly" in done.stdout and "period 24" in done.stdout
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kb < 1024 * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"


def test_an_epoch_of_a_long_series_draws_a_fresh_sample_of_windows(tmp_path, monkeypatch):
    """--epoch-windows N: each epoch trains on N windows drawn afresh (csv's default caps a
    long series' epoch at csv.EPOCH_WINDOWS); other tasks see every window every epoch."""
    import lstmkit.train as train_mod
    from lstmkit.checkpoint import load_state

    assert csv.DEFAULTS["train.epoch_windows"] == csv.EPOCH_WINDOWS
    assert tasks.DEFAULTS["train.epoch_windows"] == 0
    v = _seasonal(600, 24)
    start = datetime(2000, 1, 1)
    path = _csv(tmp_path, [f"{start + timedelta(hours=i)},{x:.4f}" for i, x in enumerate(v)])
    drawn: list[list[int]] = []
    real = train_mod._step

    def record(s, net, idx):
        drawn.append(idx.tolist())
        return real(s, net, idx)

    monkeypatch.setattr(train_mod, "_step", record)
    out = tmp_path / "run"
    flags = ["--task", "csv", "--csv", path, "--date-column", "date", "--test-size", "24"]
    flags += ["--epochs", "2", "--batch-size", "16", "--epoch-windows", "64"]
    assert main(["train", "--out", str(out), *flags, "--hidden-size", "4"]) == 0
    assert load_state(out / "train_state.pt").step == 8  # 2 epochs of 64 / 16 steps
    first = {i for b in drawn[:4] for i in b}
    second = {i for b in drawn[4:] for i in b}
    assert len(first) == len(second) == 64 and first != second
