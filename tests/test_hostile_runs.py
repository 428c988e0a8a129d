"""Untrusted run directories: sizes checked against the weights file's header before anything
is allocated, weights floating and finite, scalers finite, training states that fit; each
fault one RunDirError line that echoes no other file."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from lstmkit.checkpoint import load_run, load_state, read_header
from lstmkit.cli import main
from lstmkit.config import RunConfig
from lstmkit.errors import RunDirError
from lstmkit.train import train
from lstmkit.trainstate import TrainState


def _cfg(hidden: int = 6) -> RunConfig:
    cfg = RunConfig()
    cfg.train.epochs, cfg.data.num_train, cfg.data.num_val, cfg.model.hidden_size = (
        2,
        32,
        16,
        hidden,
    )
    return cfg


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "run"
    train(_cfg(), out)
    return out


def _copy(good, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for p in good.iterdir():
        (run / p.name).write_bytes(p.read_bytes())
    return run


def _edit_json(path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def _one_line_error(run, capsys, *expected):
    assert main(["predict", "--run", str(run), "5", "6"]) == 2
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert cap.out == "" and err.count("\n") == 0 and err.startswith("lstmkit: error: "), err
    for s in expected:
        assert s in err, err
    return err


@pytest.mark.parametrize("hidden", [10**6, 10**12, 2**62])
def test_oversized_config_is_refused_before_allocating(good, tmp_path, capsys, hidden):
    run = _copy(good, tmp_path)
    _edit_json(run / "config.json", lambda d: d["config"]["model"].update(hidden_size=hidden))
    started = time.perf_counter()
    with pytest.raises(RunDirError) as e:
        load_run(run)
    assert time.perf_counter() - started < 2  # nothing of hidden² floats was allocated
    msg = str(e.value)  # a config bound, or the weights file's header against the config
    assert "hidden_size" in msg or "does not match its config" in msg, msg
    _one_line_error(run, capsys)


def test_a_million_layers_are_refused_at_once(good, tmp_path, capsys):
    run = _copy(good, tmp_path)
    _edit_json(run / "config.json", lambda d: d["config"]["model"].update(num_layers=10**7))
    started = time.perf_counter()
    _one_line_error(run, capsys, "layers", "10000000")  # a config bound, or the header
    assert time.perf_counter() - started < 2


def test_resume_of_an_oversized_config_is_refused_before_building(good, tmp_path, capsys):
    run = _copy(good, tmp_path)
    _edit_json(run / "config.json", lambda d: d["config"]["model"].update(hidden_size=10**6))
    started = time.perf_counter()
    assert main(["train", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not match its config" in err, err
    assert time.perf_counter() - started < 3


def test_oversized_vocab_and_output_are_refused(good, tmp_path, capsys):
    run = _copy(good, tmp_path)
    _edit_json(run / "config.json", lambda d: d["task"].update(output_size=10**9))
    _one_line_error(run, capsys, "task.output_size must be in 1..1048576, got 1000000000")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(good, tmp_path, capsys, bad):
    run = _copy(good, tmp_path)
    w = load_file(run / "model.safetensors")
    w["head.bias"][0] = bad
    save_file(w, run / "model.safetensors")
    _one_line_error(run, capsys, "head.bias holds NaN or Inf")


def test_integer_weights_are_refused(good, tmp_path, capsys):
    run = _copy(good, tmp_path)
    w = {k: v.to(torch.int32) for k, v in load_file(run / "model.safetensors").items()}
    save_file(w, run / "model.safetensors")
    _one_line_error(run, capsys, "not a float type")


def test_a_header_claiming_more_than_the_file_holds_is_refused(good, tmp_path):
    run = _copy(good, tmp_path)
    head = {"head.bias": {"dtype": "F32", "shape": [10**9], "data_offsets": [0, 4 * 10**9]}}
    raw = json.dumps(head).encode()
    (run / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 8)
    with pytest.raises(RunDirError, match="malformed"):
        read_header(run / "model.safetensors")


@pytest.mark.parametrize(
    "change, expected",
    [({"center": float("nan")}, "finite"), ({"scale": 0.0}, "non-zero"), ({"scale": 1e309}, "")],
)
def test_bad_scaler_values_are_refused(good, tmp_path, capsys, change, expected):
    run = _copy(good, tmp_path)
    _edit_json(run / "scaler.json", lambda d: d.update(kind="standard", **change))
    _one_line_error(run, capsys, "scaler.json", expected)


def test_deeply_nested_config_is_one_line(good, tmp_path, capsys):
    run = _copy(good, tmp_path)
    (run / "config.json").write_text("[" * 200_000 + "]" * 200_000)
    _one_line_error(run, capsys, "config.json")


def test_no_other_file_is_echoed(good, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-LINE\n")
    run = _copy(good, tmp_path)
    _edit_json(run / "config.json", lambda d: d["config"]["csv"].update(file=str(secret)))
    _edit_json(run / "config.json", lambda d: d["config"]["model"].update(hidden_size=7))
    err = _one_line_error(run, capsys)
    assert "TOPSECRET" not in err


def _state_edit(run, fn):
    st = load_state(run / "train_state.pt")
    d = st.to_dict()
    fn(d)
    torch.save(d, run / "train_state.pt")


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda d: d.update(epoch=-3), "'epoch' must be an integer"),
        (lambda d: d.update(epoch=10**15), "'epoch' must be an integer"),
        (lambda d: d.update(step=10**6), "step 1000000 is past 2 epochs"),
        (lambda d: d["scheduler"].update(last_epoch=1), "scheduler is at step 1"),
        (
            lambda d: d.update(epoch=1, history=d["history"][:1], best={**d["best"], "epoch": 1}),
            "is past 1 epochs",
        ),
        (lambda d: d.update(history=d["history"][:1]), "history has 1 rows for 2 epochs"),
        (lambda d: d["best"].update(val=float("nan")), "'best.val' must be a number"),
        (lambda d: d["model"].update({"head.bias": torch.zeros(3)}), "does not fit the model"),
        (lambda d: d["model"]["head.bias"].fill_(float("nan")), "holds NaN or Inf"),
        (lambda d: d.update(rng=torch.zeros(3)), "rng must be a uint8 tensor"),
        (lambda d: d["optimizer"]["state"][0].update(exp_avg=torch.zeros(2, 2)), "has shape"),
        (lambda d: d.update(optimizer={"state": {}, "param_groups": []}), "optimizer does not"),
    ],
)
def test_a_state_that_does_not_fit_is_one_line(good, tmp_path, capsys, edit, expected):
    run = _copy(good, tmp_path)
    _state_edit(run, edit)
    assert main(["train", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expected in err, err


def test_a_state_from_another_model_size_is_refused(good, tmp_path, capsys):
    other = tmp_path / "other"
    train(_cfg(hidden=9), other)
    run = _copy(good, tmp_path)
    (run / "train_state.pt").write_bytes((other / "train_state.pt").read_bytes())
    assert main(["train", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not fit the model" in err, err


def test_train_state_round_trips(good):
    st = load_state(good / "train_state.pt")
    again = TrainState.from_dict(st.to_dict(), "here")
    assert (again.epoch, again.step, again.best_epoch) == (st.epoch, st.step, st.best_epoch)
    for k in st.model:
        torch.testing.assert_close(again.model[k], st.model[k], rtol=0, atol=0)
