"""`lstmkit plot` and `lstmkit inspect` draw real pictures, and the gate trace behind `inspect`
is exactly what the LSTM layer computes."""

from __future__ import annotations

import pytest
import torch

import lstmkit
from lstmkit.cli import main
from lstmkit.config import from_dict
from lstmkit.inspect_gates import PANELS, trace_layer, trace_run

TINY = {
    "model": {"hidden_size": 6},
    "data": {"task": "counting", "length": 5, "num_train": 48, "num_val": 16, "num_test": 4},
    "train": {"epochs": 3, "batch_size": 16, "lr": 0.01, "seed": 0},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from lstmkit.train import train

    out = tmp_path_factory.mktemp("plots") / "run"
    train(from_dict(TINY), out, progress=False)
    return out


def assert_picture(path, min_side: int = 200) -> None:
    """A PNG of a sensible size that is not blank: varied pixels, several colours."""
    import matplotlib.image

    img = matplotlib.image.imread(path)  # (H, W, 3 or 4) floats in [0, 1]
    h, w = img.shape[:2]
    assert min_side <= h <= 6000 and min_side <= w <= 6000, f"{path} is {w}x{h} pixels"
    rgb = img[..., :3]
    assert rgb.std() > 0.05, f"{path} looks blank (pixel std {rgb.std():.4f})"
    colours = len({tuple(p) for p in (rgb.reshape(-1, 3)[::7] * 255).round().astype(int)})
    assert colours >= 20, f"{path} has only {colours} distinct colours"


def test_plot_writes_loss_and_forecast(run_dir, capsys):
    assert main(["plot", "--run", str(run_dir)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(run_dir / "loss.png"), str(run_dir / "forecast.png")]
    for p in printed:
        assert_picture(p)


def test_inspect_writes_gate_heatmaps(run_dir, tmp_path, capsys):
    out = tmp_path / "gates.png"
    assert main(["inspect", "--run", str(run_dir), "3", "4", "5", "6", "7", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert_picture(out, min_side=400)


def _pixels(path) -> tuple[int, int]:
    import matplotlib.image

    h, w = matplotlib.image.imread(path).shape[:2]
    return w, h


@pytest.mark.parametrize("T, H", [(1, 1), (5, 6), (300, 128)])
def test_gate_picture_fits_a_screen(tmp_path, T, H):
    """Six panels in a 3 x 2 grid, at most 1600 x 1000 pixels whatever T and H are (it was
    700 x 4260, the panels stacked), and still a real picture."""
    from lstmkit.inspect_gates import GateTrace
    from lstmkit.plots import plot_gates

    g = torch.Generator().manual_seed(T + H)
    trace = GateTrace(*(torch.rand(T, H, generator=g) for _ in range(6)))
    out = plot_gates(trace, [float(t) for t in range(T)], tmp_path / "g.png", "title")
    w, h = _pixels(out)
    assert 900 <= w <= 1600 and 600 <= h <= 1000, (w, h)
    assert w > h  # a grid across the screen, not a column down it
    assert_picture(out)


def test_inspect_default_path_is_in_the_run(run_dir, capsys):
    assert main(["inspect", "--run", str(run_dir), "1", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "gates.png")
    assert_picture(run_dir / "gates.png")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["plot", "--run", "{missing}"], "does not exist"),
        (["inspect", "--run", "{run}", "1", "nan"], "finite"),
        (["inspect", "--run", "{run}", "1", "x"], "must be numbers"),
    ],
)
def test_errors_are_one_line(run_dir, tmp_path, capsys, argv, message):
    argv = [a.format(missing=tmp_path / "nope", run=run_dir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


@pytest.mark.parametrize("T, I, H, bias", [(1, 1, 1, True), (7, 3, 5, True), (4, 2, 6, False)])
def test_trace_matches_the_layer(T, I, H, bias):
    torch.manual_seed(T * 100 + I * 10 + H)
    layer = lstmkit.LSTM(I, H, bias=bias, backend="reference", dtype=torch.float64)
    x = torch.randn(T, I, dtype=torch.float64)
    w = [layer.weight_ih_l0, layer.weight_hh_l0]
    b = [layer.bias_ih_l0, layer.bias_hh_l0] if bias else []
    tr = trace_layer(x, *w, *b)
    assert all(v.shape == (T, H) for v in tr.panels().values())
    with torch.no_grad():
        out, _ = layer(x)
        cells = [layer(x[: t + 1])[1][1][0] for t in range(T)]  # c_n after each prefix (H,)
    torch.testing.assert_close(tr.hidden, out)
    torch.testing.assert_close(tr.cell, torch.stack(cells))
    # the gates shown are the ones that produced c and h
    prev = torch.cat([torch.zeros(1, H, dtype=x.dtype), tr.cell[:-1]])
    torch.testing.assert_close(tr.cell, tr.forget_gate * prev + tr.input_gate * tr.candidate)
    torch.testing.assert_close(tr.hidden, tr.output_gate * torch.tanh(tr.cell))
    for name in ("input_gate", "forget_gate", "output_gate"):
        v = getattr(tr, name)
        assert ((v > 0) & (v < 1)).all(), name


def test_trace_run_reads_the_scaled_input_like_predict(run_dir):
    from lstmkit.checkpoint import load_run

    run = load_run(run_dir)
    values = [2.0, 3.0, 4.0, 5.0]
    tr = trace_run(run, values)
    xs, _ = run.scaler.encode(torch.tensor(values).view(1, -1, 1))
    with torch.no_grad():
        out, _ = run.model.lstm(xs)
    torch.testing.assert_close(tr.hidden, out[0])
    assert tuple(tr.panels()) == PANELS


def test_forecast_data_is_what_evaluate_scores(run_dir):
    from lstmkit.checkpoint import load_run
    from lstmkit.forecast import predict_steps
    from lstmkit.plots import forecasts_on_test

    run = load_run(run_dir)
    truth, scored, preds = forecasts_on_test(run)
    T = TINY["data"]["length"]
    assert truth.shape == (T + 1,) and scored.all() and set(preds) == {"model", "last value"}
    torch.testing.assert_close(truth[1:] - truth[:-1], torch.ones(T))  # a counting run
    torch.testing.assert_close(preds["last value"], truth[:-1])
    torch.testing.assert_close(preds["model"], torch.tensor(predict_steps(run, truth[:-1])))


def test_importing_lstmkit_does_not_import_matplotlib():
    import subprocess
    import sys

    code = "import sys, lstmkit, lstmkit.cli, lstmkit.plots; print('matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr
