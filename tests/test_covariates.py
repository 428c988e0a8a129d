"""Covariates (past, future, calendar) and the direct strategy of the csv task, end to end
through the CLI on real data (statsmodels' US macroeconomic series, quarterly 1959-2009)."""

import json
import math

import pytest
import torch

from lstmkit import data as tasks
from lstmkit.checkpoint import load_run
from lstmkit.cli import main
from lstmkit.config import CsvConfig, DataConfig, RunConfig
from lstmkit.data import covariates as cov
from lstmkit.scaling import Scaler

macrodata = pytest.importorskip("statsmodels.datasets.macrodata")

TINY = ["--epochs", "2", "--hidden-size", "4", "--backend", "fused", "--length", "8"]
COLUMNS = ("realcons", "realinv", "unemp", "tbilrate")


def _macro(tmp_path, blank_last: int = 0, name: str = "macro.csv", rate_shift: float = 0.0):
    """The macro series as a CSV (date, realcons, realinv, unemp, tbilrate); the last
    ``blank_last`` rows' realcons blank (the horizon's rows of a context file)."""
    d = macrodata.load_pandas().data
    lines = ["date," + ",".join(COLUMNS)]
    n = len(d)
    for i, row in enumerate(d.itertuples()):
        cons = "" if i >= n - blank_last else f"{row.realcons}"
        rate = row.tbilrate + (rate_shift if i >= n - blank_last else 0.0)
        lines.append(f"{int(row.year)}Q{int(row.quarter)},{cons},{row.realinv},{row.unemp},{rate}")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _flags(path, *extra):
    base = ["--task", "csv", "--csv", path, "--column", "realcons", "--date-column", "date"]
    return [*base, "--test-size", "8", *TINY, *extra]


def test_step_rows_hold_the_series_past_and_known_values():
    v = torch.arange(6.0)
    past = 10 + torch.arange(6.0)[:, None]
    known = 100 + torch.arange(8.0)[:, None]  # two rows past the series' end
    rows = cov.step_rows(cov.Frame(v, past, known), steps=2, extra=1)
    assert rows.shape == (7, 4)
    torch.testing.assert_close(rows[2], torch.tensor([2.0, 12.0, 103.0, 104.0]))
    assert math.isnan(rows[6, 0]) and math.isnan(rows[6, 3])  # K_8 lies past the frame
    torch.testing.assert_close(rows[5, 2:], torch.tensor([106.0, 107.0]))
    alone = cov.step_rows(cov.Frame(v, torch.empty(6, 0), torch.empty(6, 0)), steps=1)
    assert alone.data_ptr() == v.data_ptr()  # no covariates: a view, no copy


@pytest.mark.parametrize("kind, period", [("seasonal", 4), ("seasonal", 1), ("diff", 1)])
def test_direct_targets_encode_against_the_reference_forecast(kind, period):
    g = torch.Generator().manual_seed(0)
    series = 10 + torch.rand(40, generator=g).cumsum(0)
    H, L = 6, 12
    x = series.unfold(0, L, 1)[: 40 - L - H + 1, :, None]
    y = torch.stack([series[j + 1 : j + 1 + H] for j in range(L - 1, 40 - H)])[:, None, :]
    s = Scaler(kind, period=period).fit(x, allow_log=period > 1)
    zx, zy = s.encode(x, torch.cat([x[:, 1:, :1].expand(-1, -1, H), y], dim=1))
    back = s.decode(zy[:, -1:], x)  # decode undoes encode, H values at once
    torch.testing.assert_close(back, y)
    # a zero output is the reference forecast: the value k_h seasons back plus k_h mean
    # seasonal steps (k_h = ceil((h + 1) / p)); diff: the last value
    zero = s.decode(torch.zeros(1, 1, H), x[-1:])[0, 0].double()
    hist = x[-1, :, 0].double()
    if kind == "diff":
        want = hist[-1].expand(H)
    else:
        lv = hist.log() if s.log else hist
        k = torch.arange(H) // period + 1
        ref = lv[torch.arange(H) - period * k] + k * s.center
        want = ref.exp() if s.log else ref
    torch.testing.assert_close(zero, want, rtol=1e-5, atol=1e-4)


def _unemp_run(path):
    c = CsvConfig(file=path, column="realcons", date_column="date", test_size=8)
    c.features = "unemp"
    cfg = tasks.resolve(RunConfig(data=DataConfig(task="csv", length=8), csv=c))
    return cfg, tasks.make(cfg, 0)


def test_covariates_are_scaled_from_the_training_part_only(tmp_path):
    cfg, td = _unemp_run(_macro(tmp_path))
    assert cfg.csv.strategy == "direct" and td.output_size == 8 and td.input_size == 2
    s = Scaler("diff").fit(td.train.x)
    unemp = td.train.x[..., 1].double()
    torch.testing.assert_close(s.columns[0], (unemp.mean().item(), unemp.std().item()))
    # the validation and test parts (the last 16 rows) do not move the scaling
    lines = (tmp_path / "macro.csv").read_text().splitlines()
    for i in range(len(lines) - 16, len(lines)):
        cells = lines[i].split(",")
        cells[3] = str(float(cells[3]) * 10)
        lines[i] = ",".join(cells)
    changed = tmp_path / "changed.csv"
    changed.write_text("\n".join(lines) + "\n")
    _, td2 = _unemp_run(str(changed))
    assert Scaler("diff").fit(td2.train.x).columns == s.columns
    assert not torch.equal(td2.val.x, td.val.x)


def test_past_future_and_date_features_end_to_end(tmp_path, capsys):
    path = _macro(tmp_path)
    out = tmp_path / "run"
    extra = ["--features", "realinv,unemp", "--future-features", "tbilrate"]
    assert (
        main(["train", "--out", str(out), *_flags(path, *extra, "--date-features", "quarter")]) == 0
    )
    run = load_run(out)
    assert run.config.csv.strategy == "direct"  # past features: their future is unknown
    assert run.task.input_size == 1 + 2 + 8 * (1 + 2) and run.task.output_size == 8
    ctx = _macro(tmp_path, blank_last=8, name="ctx.csv")
    fc = tmp_path / "fc.csv"
    capsys.readouterr()
    args = ["predict", "--run", str(out), "--csv", ctx, "--out", str(fc), "--level", "80"]
    assert main(args) == 0
    capsys.readouterr()
    lines = fc.read_text().splitlines()
    assert lines[0] == "date,forecast,lo_80,hi_80" and len(lines) == 9
    assert lines[1].startswith("2007Q4,") and lines[-1].startswith("2009Q3,")
    # the forecast reads the future rates: other rates, another forecast
    moved = _macro(tmp_path, blank_last=8, name="moved.csv", rate_shift=5.0)
    assert main(["predict", "--run", str(out), "--csv", ctx, "--json"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert main(["predict", "--run", str(out), "--csv", moved, "--json"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert len(a) == 8 and all(math.isfinite(v) for v in a) and a != b
    from lstmkit.multistep import test_forecast

    # the test part's forecast (for evaluate) is the one from the blanked context file
    assert test_forecast(run, 8) == pytest.approx(a, rel=1e-6)
    assert main(["predict", "--run", str(out), "--csv", path]) == 2  # no future rows
    assert "future features tbilrate are needed for the 8 steps" in capsys.readouterr().err
    assert main(["backtest", "--run", str(out), "--windows", "2", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert len(rep["windows"]["LSTM"]) == 2 and math.isfinite(rep["mean"]["LSTM"]["mase"])


def test_recursive_run_reads_future_features_step_by_step(tmp_path, capsys):
    path = _macro(tmp_path)
    out = tmp_path / "rec"
    extra = ["--future-features", "tbilrate", "--date-features", "quarter,month"]
    assert main(["train", "--out", str(out), *_flags(path, *extra)]) == 0
    run = load_run(out)
    assert run.config.csv.strategy == "recursive" and run.task.input_size == 1 + 1 + 4
    ctx = _macro(tmp_path, blank_last=3, name="ctx.csv")
    moved = _macro(tmp_path, blank_last=3, name="moved.csv", rate_shift=5.0)
    capsys.readouterr()
    assert main(["predict", "--run", str(out), "--csv", ctx, "--horizon", "3", "--json"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert main(["predict", "--run", str(out), "--csv", moved, "--horizon", "3", "--json"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert len(a) == 3 and a != b  # each step reads the known rate of the step it predicts
    assert main(["predict", "--run", str(out), "--csv", ctx, "--horizon", "4"]) == 2
    assert "found 3 such row(s)" in capsys.readouterr().err
    assert main(["predict", "--run", str(out), "1", "2"]) == 2
    assert "give the context as --csv FILE" in capsys.readouterr().err
    assert main(["predict", "--run", str(out), "--id", "a"]) == 2
    assert "--id picks a series of a run of many series" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--date-features", "month,weekday"], "unknown name 'weekday'; expected some of month,"),
        (["--features", "unemp", "--strategy", "recursive"], "use --strategy direct"),
        (["--features", "unemp", "--future-features", "unemp"], "'unemp' is given twice"),
        (["--features", "nope"], "has no column 'nope' (a covariate)"),
    ],
)
def test_covariate_errors_are_one_line_before_anything_is_written(tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    assert main(["train", "--out", str(out), *_flags(_macro(tmp_path), *extra)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_direct_strategy_without_covariates_validates_on_h_step_forecasts(tmp_path, capsys):
    path = _macro(tmp_path)
    out = tmp_path / "direct"
    assert main(["train", "--out", str(out), *_flags(path, "--strategy", "direct")]) == 0
    run = load_run(out)
    td = tasks.make(run.config, 0)
    assert td.forecast_val["direct"] and td.output_size == 8 and td.input_size == 1
    from lstmkit.train import forecast_error

    # what early stopping chose on: the best model's H-step forecast error
    best = forecast_error(run.model, run.scaler, td.forecast_val, 8, torch.device("cpu"))
    metrics = (out / "metrics.csv").read_text().splitlines()[1:]
    vals = [float(r.split(",")[3]) for r in metrics]
    assert best == pytest.approx(min(vals), rel=1e-4) or best <= min(vals)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["steps"] == 8 and math.isfinite(rep["rows"]["model"]["mae"])
    assert main(["predict", "--run", str(out), "--horizon", "9"]) == 2
    assert "forecasts 8 steps at once" in capsys.readouterr().err
    assert main(["predict", "--run", str(out), "--stream"]) == 2
    assert "forecasts 8 steps at once (--strategy direct)" in capsys.readouterr().err
    assert main(["predict", "--run", str(out), "--horizon", "3", "--json"]) == 0
    three = json.loads(capsys.readouterr().out)
    assert main(["predict", "--run", str(out), "--horizon", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[:3] == three  # one output, read in part


@pytest.mark.parametrize("kind, period", [("seasonal", 4), ("diff", 1), ("standard", 1)])
def test_multistep_recursion_matches_the_plain_recursion(kind, period):
    from lstmkit.forecast import recursive
    from lstmkit.model import SequenceModel
    from lstmkit.multistep import paths

    torch.manual_seed(0)
    model = SequenceModel(1, 6, 1, backend="fused").eval()
    x = 5 + torch.rand(3, 20, 1).cumsum(1)
    scaler = Scaler(kind, period=period).fit(x)
    want = recursive(model, scaler, x, 7, 12)
    torch.testing.assert_close(paths(model, scaler, x, 7, 12), want, rtol=0, atol=0)
