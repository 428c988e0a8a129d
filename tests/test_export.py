"""ONNX export checked in onnxruntime against lstmkit; exported runs predict as their run."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import onnx
import onnxruntime as ort
import pytest
import torch

from lstmkit import LSTM
from lstmkit.checkpoint import load_run, save_run
from lstmkit.cli import main
from lstmkit.config import RunConfig
from lstmkit.convert import ConversionError
from lstmkit.data import TaskFacts
from lstmkit.export import export_run, load_onnx_run, quantize_int8, to_onnx
from lstmkit.forecast import forecast, predict_steps
from lstmkit.model import SequenceModel
from lstmkit.scaling import Scaler

TOL = {"atol": 1e-5, "rtol": 0}  # float32, max abs diff
CONFIGS = {
    "plain": {},
    "bidirectional": {"bidirectional": True},
    "two_layers_bi": {"num_layers": 2, "bidirectional": True},
    "two_layers_batch_first_nobias": {"num_layers": 2, "batch_first": True, "bias": False},
}


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (module, session with a lengths input, session without)."""
    d = tmp_path_factory.mktemp("onnx")
    out = {}
    for i, (name, cfg) in enumerate(CONFIGS.items()):
        torch.manual_seed(i)
        m = LSTM(3, 6, **cfg).eval()
        with_len = _session(to_onnx(m, d / f"{name}_len.onnx", lengths=True))
        out[name] = (m, with_len, _session(to_onnx(m, d / f"{name}.onnx")))
    return out


@pytest.mark.parametrize("use_lengths", [False, True])
@pytest.mark.parametrize("B", [1, 5])
@pytest.mark.parametrize("T", [1, 7, 100])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_lstm_matches_onnxruntime(exported, name, T, B, use_lengths):
    m, with_len, plain = exported[name]
    g = torch.Generator().manual_seed(T * 10 + B)
    x = torch.randn((B, T, 3) if m.batch_first else (T, B, 3), generator=g)
    feed = {"input": x.numpy()}
    lengths = None
    if use_lengths:
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T
        feed["lengths"] = lengths.numpy()
    with torch.no_grad():
        y, (h, c) = m(x, lengths=lengths)
    got = (with_len if use_lengths else plain).run(["output", "h_n", "c_n"], feed)
    for a, b in zip(got, (y, h, c), strict=True):
        torch.testing.assert_close(torch.from_numpy(a), b, **TOL)


@pytest.mark.parametrize("vocab", [None, 11])
def test_sequence_model(tmp_path, vocab):
    torch.manual_seed(0)
    m = SequenceModel(1 if vocab is None else vocab, 8, 2, num_layers=2, vocab_size=vocab).eval()
    s = _session(to_onnx(m, tmp_path / "m.onnx", lengths=True))
    x = torch.randn(3, 9, 1) if vocab is None else torch.randint(0, vocab, (3, 9))
    lengths = torch.tensor([9, 4, 1])
    with torch.no_grad():
        y, (h, c) = m(x, lengths=lengths, return_state=True)
    got = s.run(["output", "h_n", "c_n"], {"input": x.numpy(), "lengths": lengths.numpy()})
    for a, b in zip(got, (y, h, c), strict=True):
        torch.testing.assert_close(torch.from_numpy(a), b, **TOL)


def test_refusals(tmp_path):
    with pytest.raises(ConversionError, match="no projection.*proj_size=2"):
        to_onnx(LSTM(3, 4, proj_size=2), tmp_path / "p.onnx")
    with pytest.raises(ConversionError, match="directory .*nowhere does not exist"):
        to_onnx(LSTM(3, 4), tmp_path / "nowhere" / "m.onnx")
    assert not (tmp_path / "p.onnx").exists()


# -- runs ---------------------------------------------------------------------------------


def _random_run(path, scaler: Scaler, seed=0, layers=1):
    """A run directory with untrained weights (exactness does not need a trained model)."""
    torch.manual_seed(seed)
    cfg = RunConfig()
    cfg.model.hidden_size, cfg.model.num_layers = 8, layers
    cfg.data.length = 6
    task = TaskFacts(input_size=1, output_size=1)
    model = SequenceModel(1, 8, 1, num_layers=layers)
    save_run(path, cfg, task, model.state_dict(), scaler)
    return load_run(path)


SCALERS = {
    "none": Scaler(),
    "standard": Scaler("standard", 3.0, 2.0),
    "offset": Scaler("offset", 0.0, 1.5),
    "diff": Scaler("diff", 0.0, 1.0),
    "seasonal": Scaler("seasonal", 0.01, 0.05, period=3, log=True),
}


@pytest.mark.parametrize("kind", list(SCALERS))
def test_exported_run_predicts_as_the_run(tmp_path, kind):
    run = _random_run(tmp_path / "run", SCALERS[kind], layers=2)
    path = export_run(run)
    assert path == tmp_path / "run" / "model.onnx"
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["lstmkit.scaler"]) == run.scaler.to_dict()
    assert props["lstmkit.format_version"] == "1"
    onnx_run = load_onnx_run(path)
    values = [5.0, 6.5, 7.0, 8.25, 9.0, 11.0, 10.5]
    want, got = predict_steps(run, values), predict_steps(onnx_run, values)
    assert [w is None for w in want] == [g is None for g in got]
    assert (want[0] is None) == (kind == "seasonal")
    defined = [i for i, w in enumerate(want) if w is not None]
    torch.testing.assert_close(
        torch.tensor([got[i] for i in defined]), torch.tensor([want[i] for i in defined]), **TOL
    )
    torch.testing.assert_close(
        torch.tensor(forecast(onnx_run, values, 4)), torch.tensor(forecast(run, values, 4)), **TOL
    )


def test_cli_export_and_predict(tmp_path, capsys):
    run = _random_run(tmp_path / "run", SCALERS["diff"])
    out = tmp_path / "m.onnx"
    assert main(["export", "--run", str(run.path), "--format", "onnx", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    for extra in ([], ["--horizon", "3"], ["--json"]):
        assert main(["predict", "--run", str(run.path), *extra, "5", "6", "7", "8"]) == 0
        want = capsys.readouterr().out
        assert main(["predict", "--onnx", str(out), *extra, "5", "6", "7", "8"]) == 0
        assert capsys.readouterr().out == want
    assert len(want) > 10


@pytest.mark.parametrize(
    "argv,match",
    [
        (["export", "--format", "tflite"], "invalid choice: 'tflite'"),
        (["predict", "--onnx", "{tmp}/missing.onnx", "1"], "missing.onnx does not exist"),
        (["predict", "--onnx", "{tmp}/junk.onnx", "1"], "junk.onnx is not a loadable ONNX"),
        (["predict", "--onnx", "{tmp}/bare.onnx", "1"], "lstmkit.format_version None"),
    ],
)
def test_cli_errors(tmp_path, capsys, argv, match):
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    to_onnx(LSTM(1, 2), tmp_path / "bare.onnx")  # valid ONNX, no lstmkit metadata
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lstmkit: error:")
    assert re.search(match, err), err


@pytest.mark.slow
def test_counting_end_to_end(tmp_path):
    """The default run, trained, exported and predicted in a fresh process each."""

    def cli(*argv):
        r = subprocess.run(
            [sys.executable, "-m", "lstmkit", *argv], capture_output=True, text=True, check=True
        )
        return r.stdout.strip()

    run = str(tmp_path / "counting")
    cli("train", "--out", run)
    assert cli("predict", "--run", run, "5", "6", "7", "8") == "6.00 7.00 8.00 9.00"
    onnx_file = cli("export", "--run", run, "--format", "onnx")
    assert cli("predict", "--onnx", onnx_file, "5", "6", "7", "8") == "6.00 7.00 8.00 9.00"


# -- int8 dynamic quantization ----------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_quantize_int8():
    from torch.ao.nn.quantized.dynamic import LSTM as QLSTM
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    torch.manual_seed(0)
    m = LSTM(8, 32, num_layers=2, bidirectional=True, batch_first=True).eval()
    q = quantize_int8(m)
    assert isinstance(q, QLSTM)
    x = torch.randn(3, 20, 8)
    with torch.no_grad():
        want, got = m(x)[0], q(x)[0]
    err = (got - want).abs().max().item()
    assert 0 < err < 0.02 * want.abs().max().item()  # int8: close, but not the float model
    s = SequenceModel(1, 32, 1).eval()
    qs = quantize_int8(s)
    assert isinstance(qs.lstm, QLSTM) and isinstance(qs.head, QLinear)
    x = torch.randn(2, 10, 1)
    with torch.no_grad():
        torch.testing.assert_close(qs(x), s(x), atol=0.02, rtol=0)
    with pytest.raises(ConversionError, match="proj_size"):
        quantize_int8(LSTM(3, 4, proj_size=2))
