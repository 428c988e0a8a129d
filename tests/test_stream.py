"""Streaming: a sequence fed in pieces (state carried) equals one call on the whole, on every
CPU backend; ``Stream`` equals ``predict_steps``; ``predict --stream`` answers each line."""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import os
import select
import subprocess
import sys

import pytest
import torch

from lstmkit import LSTM
from lstmkit.checkpoint import load_run, save_run
from lstmkit.cli import main
from lstmkit.config import RunConfig
from lstmkit.data import TaskFacts
from lstmkit.errors import DataError
from lstmkit.forecast import predict_steps
from lstmkit.model import SequenceModel
from lstmkit.scaling import Scaler
from lstmkit.streaming import Stream

TOL = {"atol": 1e-5, "rtol": 1e-5}  # float32
BACKENDS = ["reference", "fused", "native", "triton"]  # cudnn runs only on CUDA


@pytest.fixture(scope="module", autouse=True)
def triton_interpreted():
    """Triton's kernels loaded in its CPU interpreter, as tests/test_triton.py loads them."""
    importlib.import_module("triton")  # triton itself imported uninterpreted, as it must be
    name = "lstmkit.backends._triton_kernels"
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        if name in sys.modules and not sys.modules[name].INTERPRETED:
            importlib.reload(sys.modules[name])
        else:
            importlib.import_module(name)
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved
    assert sys.modules[name].INTERPRETED


@pytest.mark.parametrize("pieces", [[1] * 6, [2, 3, 1], [5, 1]])
@pytest.mark.parametrize("backend", BACKENDS)
def test_pieces_equal_whole(backend, pieces):
    torch.manual_seed(0)
    m = LSTM(2, 5, num_layers=2, batch_first=True, backend=backend).eval()
    x = torch.randn(3, sum(pieces), 2)
    with torch.no_grad():
        want, (h_want, c_want) = m(x)
        outs, state, t = [], None, 0
        for n in pieces:
            y, state = m(x[:, t : t + n], state)
            outs.append(y)
            t += n
    assert m.backend_choice(x)[0] == backend
    torch.testing.assert_close(torch.cat(outs, 1), want, **TOL)
    torch.testing.assert_close(state[0], h_want, **TOL)
    torch.testing.assert_close(state[1], c_want, **TOL)


def _random_run(path, scaler: Scaler, backend="auto", seed=0):
    """A run directory with untrained weights: exactness does not need a trained model."""
    torch.manual_seed(seed)
    cfg = RunConfig()
    cfg.model.hidden_size, cfg.model.num_layers, cfg.model.backend = 6, 2, backend
    task = TaskFacts(input_size=1, output_size=1)
    save_run(path, cfg, task, SequenceModel(1, 6, 1, num_layers=2).state_dict(), scaler)
    return load_run(path)


SCALERS = {
    "none": Scaler(),
    "standard": Scaler("standard", 3.0, 2.0),
    "offset": Scaler("offset", 0.0, 1.5),
    "diff": Scaler("diff", 0.0, 1.0),
    "seasonal": Scaler("seasonal", 0.01, 0.05, period=3, log=True),
    "seasonal_p1_nolog": Scaler("seasonal", 0.0, 2.0, period=1, log=False),
}
VALUES = [5.0, 6.5, 7.0, 8.25, 9.0, 11.0, 10.5, 12.0, 13.5]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(SCALERS))
def test_stream_equals_predict_steps(tmp_path, kind, backend):
    run = _random_run(tmp_path / "run", SCALERS[kind], backend)
    want = predict_steps(run, VALUES)
    stream = Stream(run)
    got = [stream.push(v) for v in VALUES]
    assert stream.steps == len(VALUES)
    assert [g is None for g in got] == [w is None for w in want]
    assert sum(w is None for w in want) == (SCALERS[kind].period if "seasonal" in kind else 0)
    ok = [i for i, w in enumerate(want) if w is not None]
    torch.testing.assert_close(
        torch.tensor([got[i] for i in ok]), torch.tensor([want[i] for i in ok]), **TOL
    )


def test_stream_bad_values(tmp_path):
    stream = Stream(_random_run(tmp_path / "run", SCALERS["seasonal"]))
    stream.push(1.0)
    with pytest.raises(DataError, match="needs positive values, got -2"):
        stream.push(-2.0)
    with pytest.raises(DataError, match="finite"):
        stream.push(float("nan"))
    assert stream.steps == 1  # refused values change nothing


def test_cli_stream(tmp_path, monkeypatch, capsys):
    run = _random_run(tmp_path / "run", SCALERS["diff"])
    monkeypatch.setattr("sys.stdin", io.StringIO("5\n6\n\n7\n8\n"))
    assert main(["predict", "--stream", "--run", str(run.path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert main(["predict", "--run", str(run.path), "5", "6", "7", "8"]) == 0
    assert lines == capsys.readouterr().out.split()
    seasonal = _random_run(tmp_path / "seasonal", SCALERS["seasonal"])
    monkeypatch.setattr("sys.stdin", io.StringIO("5\n6\n7\n8\n"))
    assert main(["predict", "--stream", "--json", "--run", str(seasonal.path)]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert got[:3] == [None] * 3 and isinstance(got[3], float)  # period 3: first answer at 4
    assert got[3] == pytest.approx(predict_steps(seasonal, [5, 6, 7, 8])[3], abs=1e-5)
    monkeypatch.setattr("sys.stdin", io.StringIO("5\nsix\n7\n"))
    assert main(["predict", "--stream", "--run", str(run.path)]) == 2
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1  # the value before the bad one was answered
    assert err == "lstmkit: error: values must be numbers, got 'six'\n"
    for extra, flag in (
        (["5"], "VALUES"),
        (["--horizon", "2"], "--horizon"),
        (
            ["--onnx", "m.onnx"],
            "--onnx",
        ),
    ):
        assert main(["predict", "--stream", "--run", str(run.path), *extra]) == 2
        assert f"got {flag} as well" in capsys.readouterr().err


def test_cli_stream_answers_before_the_next_value(tmp_path):
    """Each prediction arrives while stdin is still open: nothing waits for more input."""
    run = _random_run(tmp_path / "run", SCALERS["diff"])
    p = subprocess.Popen(
        [sys.executable, "-m", "lstmkit", "predict", "--stream", "--run", str(run.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        answers = []
        for v in ("5", "6", "7"):
            p.stdin.write(v + "\n")
            p.stdin.flush()
            ready, _, _ = select.select([p.stdout], [], [], 60)
            assert ready, f"no answer to {v} within 60 s"
            answers.append(p.stdout.readline().strip())
        p.stdin.close()
        assert p.wait(60) == 0
    finally:
        p.kill()
    want = [f"{v:.2f}" for v in predict_steps(run, [5, 6, 7])]
    assert answers == want


def test_bench_stream_runs(tmp_path):
    """bench/bench_stream.py's measurement, at a tiny size: every contestant timed."""
    spec = importlib.util.spec_from_file_location(
        "bench_stream", os.path.join(os.path.dirname(__file__), "..", "bench", "bench_stream.py")
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.measure(bench._default_run(tmp_path / "run"), n_values=3, histories=[5, 20])
    assert res["window"] == 4 and res["stream_us"] > 0 and res["rerun_window_us"] > 0
    assert set(res["rerun_history_us"]) == {"5", "20"}
