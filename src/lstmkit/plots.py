"""Pictures of a run: loss curves, a test forecast against a naive baseline, gate heatmaps.

matplotlib is imported inside the functions (``import lstmkit`` stays light) and used through
``matplotlib.figure.Figure``, which renders with Agg and leaves pyplot's global state and the
user's chosen backend alone.
"""

from __future__ import annotations

import csv
import math
import textwrap
from pathlib import Path

import torch

from lstmkit.checkpoint import METRICS, Run
from lstmkit.errors import RunDirError

LOSS_PNG, FORECAST_PNG, GATES_PNG = "loss.png", "forecast.png", "gates.png"
DPI = 100
METRIC_COLUMNS = ("epoch", "train_loss", "val_loss")  # what plot_loss draws


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # lazy: matplotlib costs ~0.3 s to import

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig, out: str | Path) -> None:
    """Render to memory, then replace ``out`` in one step: a full disk or a kill leaves the
    previous picture, never half of one."""
    import io

    from lstmkit.checkpoint import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format=Path(out).suffix.lstrip(".").lower() or "png")
    atomic_write(Path(out), buf.getvalue())


def read_metrics(run_dir: str | Path) -> dict[str, list[float]]:
    """metrics.csv as columns: ``{"epoch": [...], "train_loss": [...], ...}``."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise RunDirError(f"run directory {path.parent} has no {METRICS} to plot")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise RunDirError(f"{path} is corrupted: {e}") from None
    if not rows:
        raise RunDirError(f"{path} holds no epochs yet")
    missing = [k for k in METRIC_COLUMNS if k not in rows[0]]
    if missing:
        raise RunDirError(f"{path} is corrupted: no column {', '.join(missing)}")
    try:
        m = {k: [float(r[k]) for r in rows] for k in rows[0]}
    except (TypeError, ValueError) as e:
        raise RunDirError(f"{path} is corrupted: {e}") from None
    if not all(math.isfinite(v) for k in METRIC_COLUMNS for v in m[k]):
        raise RunDirError(f"{path} is corrupted: {', '.join(METRIC_COLUMNS)} must be finite")
    return m


def plot_loss(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Train and validation loss per epoch, log y-scale, to ``out`` (default DIR/loss.png)."""
    from matplotlib.ticker import MaxNLocator

    m = read_metrics(run_dir)
    out = Path(out) if out else Path(run_dir) / LOSS_PNG
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        ax.plot(m["epoch"], m[key], marker="o" if len(m["epoch"]) < 30 else None, label=label)
    positive = all(v > 0 for k in ("train_loss", "val_loss") for v in m[k])
    ax.set_yscale("log" if positive else "linear")  # log of a zero loss cannot be drawn
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    ax.set_title(f"Loss of {Path(run_dir).name}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    _save(fig, out)
    return out


def is_series(run: Run) -> bool:
    """One value in, one value out per step, regression: counting, sine, csv."""
    return run.task.is_series


def forecasts_on_test(run: Run):
    """The first test sequence of ``run``'s task with what ``lstmkit evaluate`` scores on it.

    Returns (truth (T+1,), scored (T,) bool, {name: predictions (T,)}), in data units:
    truth is the series x_0 .. x_{T-1}, y_{T-1}; predictions[t] is for truth[t + 1]; the
    model's are one step ahead (an autoregressive forecast for csv) and the baselines
    its naive ones, exactly as :mod:`lstmkit.evaluate` uses them."""
    from lstmkit import data as tasks
    from lstmkit import evaluate

    cfg, task, td = evaluate.rebuild(run)
    first = slice(0, 1)
    td.test = tasks.Split(td.test.x[first], td.test.y[first], td.test.mask[first])
    with torch.no_grad():
        preds = evaluate.test_rows(run, cfg, task, td)
    truth = torch.cat([td.test.x[0, :1, 0], td.test.y[0, :, 0]])
    return truth, td.test.mask[0], {k: v[0, :, 0] for k, v in preds.items()}


def plot_forecast(run: Run, out: str | Path | None = None) -> Path | None:
    """Truth, the model's predictions and the naive baselines on the first test sequence, to
    ``out`` (default DIR/forecast.png); the steps evaluate scores are shaded when not all
    are. None for tasks that are not series."""
    if not is_series(run) or run.task.meta.get("test_size") == 0:
        return None  # nothing held out (csv --test-size 0): no test forecast to draw
    out = Path(out) if out else run.path / FORECAST_PNG
    truth, scored, preds = forecasts_on_test(run)
    T = scored.numel()
    keep = scored.clone()
    for v in preds.values():
        keep &= torch.isfinite(v)
    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    ax.plot(range(T + 1), truth.tolist(), color="black", marker=".", label="truth")
    if not bool(scored.all()):
        t = torch.nonzero(scored).view(-1)
        ax.axvspan(int(t[0]) + 0.5, int(t[-1]) + 1.5, color="grey", alpha=0.12, label="scored")
    styles = [
        {"color": "tab:blue", "marker": "x"},
        {"color": "tab:orange", "ls": "--"},
        {"color": "tab:green", "ls": ":"},
        {"color": "tab:red", "ls": "-."},
    ]
    for (name, v), style in zip(preds.items(), styles * len(preds), strict=False):
        t = torch.nonzero(keep).view(-1)
        mse = float(((v[t] - truth[t + 1]) ** 2).mean()) if t.numel() else math.nan
        ax.plot((t + 1).tolist(), v[t].tolist(), label=f"{name} (MSE {mse:.3g})", **style)
    _shade_intervals(ax, run, scored, preds["model"])
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    ax.set_title(f"{run.config.data.task}: predictions on the first test sequence")
    ax.grid(True, alpha=0.3)
    ax.legend()
    _save(fig, out)
    return out


def _shade_intervals(ax, run: Run, scored, model_pred) -> None:
    """The run's calibrated 80% and 95% intervals around its test forecast (csv runs)."""
    from lstmkit.forecast import INTERVALS, intervals

    if not (run.path / INTERVALS).is_file():
        return
    t = torch.nonzero(scored).view(-1)
    fc = model_pred[t].tolist()
    for level, alpha in ((95, 0.12), (80, 0.22)):
        lo, hi = intervals(run, fc, level)
        ax.fill_between(
            (t + 1).tolist(), lo, hi, color="tab:blue", alpha=alpha, label=f"{level}% interval"
        )


def plot_run(run_dir: str | Path) -> list[Path]:
    """Every picture a run supports; the paths written."""
    from lstmkit.checkpoint import load_run

    run = load_run(run_dir)  # checks the directory before anything is drawn
    written = [plot_loss(run_dir)]
    fc = plot_forecast(run)
    return written + ([fc] if fc else [])


# The gate picture: six panels in a 3 x 2 grid (gates i, f / g, o / states c, h), sized to
# fit a laptop screen whatever T and H are: at most GATES_MAX_INCHES at DPI.
GATES_GRID = (3, 2)
GATES_MAX_INCHES = (16.0, 10.0)
MAX_TICKS = 15  # step labels per panel
CAPTION_WIDTH = 85  # characters per caption line at the panel's width


def gates_size(T: int, H: int) -> tuple[float, float]:
    """Figure inches for T steps and H units: grows with both, capped to fit a screen."""
    width = min(max(10.0, 2 * (0.3 * T + 2)), GATES_MAX_INCHES[0])
    height = min(max(7.0, 3 * (1.6 + 0.12 * H)), GATES_MAX_INCHES[1])
    return width, height


def plot_gates(trace, values, out: str | Path, title: str = "", captions=None) -> Path:
    """One heatmap per panel of ``trace`` (a :class:`lstmkit.inspect_gates.GateTrace`) in a
    3 x 2 grid: rows are hidden units, columns steps labelled with ``values`` (T,), a caption
    per panel (``captions``: panel -> text, default the plain LSTM's)."""
    from lstmkit.inspect_gates import CAPTIONS

    captions = captions or CAPTIONS
    panels = trace.panels()
    T, H = next(iter(panels.values())).shape
    fig = _figure(*gates_size(T, H))
    axes = fig.subplots(*GATES_GRID, squeeze=False).reshape(-1)
    ticks = list(range(0, T, max(1, math.ceil(T / MAX_TICKS))))
    for ax, (name, v) in zip(axes, panels.items(), strict=True):
        _heatmap(fig, ax, name, v)
        caption = textwrap.fill(f"{name}: {captions[name]}", CAPTION_WIDTH)
        ax.set_title(caption, fontsize=8, loc="left")
        ax.set_ylabel("unit")
        ax.set_xticks(ticks, [f"{values[t]:g}" for t in ticks], fontsize=7)
    for ax in axes[-GATES_GRID[1] :]:
        ax.set_xlabel("input value at each step")
    if title:
        fig.suptitle(title)
    _save(fig, out)
    return Path(out)


def _heatmap(fig, ax, name: str, v) -> None:
    """Gates on a fixed [0, 1] scale; signed values (g and h in [-1, 1], c unbounded) centred."""
    if name in ("input gate", "forget gate", "output gate"):
        kw = {"cmap": "viridis", "vmin": 0.0, "vmax": 1.0}
    else:
        lim = 1.0 if name != "cell state" else max(float(v.abs().max()), 1e-6)
        kw = {"cmap": "RdBu_r", "vmin": -lim, "vmax": lim}
    im = ax.imshow(v.detach().cpu().T.numpy(), aspect="auto", interpolation="nearest", **kw)
    fig.colorbar(im, ax=ax, pad=0.01)


def plot_inspect(run: Run, values, out: str | Path | None = None) -> Path:
    """Gate heatmaps of ``run``'s first LSTM layer for ``values`` (default DIR/gates.png)."""
    from lstmkit.inspect_gates import captions, trace_run

    trace = trace_run(run, values)
    out = Path(out) if out else run.path / GATES_PNG
    with torch.no_grad():
        title = f"Layer 1 of {run.path.name}"
        variant = run.model.lstm.variant
        described = variant.describe()
        if described:  # the variant, wrapped to the figure's width
            title += "\n" + "\n".join(textwrap.wrap(described, 110))
        return plot_gates(trace, [float(v) for v in values], out, title, captions(variant))
