"""Nothing lost: atomic checkpoints, exact resume after SIGKILL, NaN stops, safe loading."""

import os
import pickle
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import lstmkit.train as train_mod
from lstmkit.checkpoint import load_run, load_state
from lstmkit.cli import main
from lstmkit.config import RunConfig
from lstmkit.errors import RunDirError, TrainingError

SMALL = ["--epochs", "4", "--num-train", "64", "--hidden-size", "8"]


def _cfg(**train) -> RunConfig:
    cfg = RunConfig()
    cfg.train.epochs, cfg.data.num_train, cfg.model.hidden_size = 4, 64, 8
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def _snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_refuses_to_overwrite_and_keeps_the_old_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *SMALL]) == 0
    before = _snapshot(out)
    assert main(["train", "--out", str(out), *SMALL, "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already exists" in err and "--overwrite" in err
    assert _snapshot(out) == before
    assert main(["train", "--out", str(out), *SMALL, "--seed", "1", "--overwrite"]) == 0
    assert _snapshot(out)["model.safetensors"] != before["model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging left behind


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real = train_mod.masked_loss
    calls = {"n": 0}

    def poisoned(*a, **k):
        # count training steps: not validation, nor the one-window check before the first save
        calls["n"] += torch.is_grad_enabled() and a[0].size(0) > 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == 21 else loss  # step 21: epoch 2 of 16 steps

    monkeypatch.setattr(train_mod, "masked_loss", poisoned)
    cfg = _cfg(checkpoint_every=0.0)  # a checkpoint at every epoch's end
    cfg.data.num_train = 512
    with pytest.raises(TrainingError, match=r"loss became nan at step 21 \(epoch 2\)"):
        train_mod.train(cfg, out)
    state = load_state(out / "train_state.pt")
    assert state.epoch == 1 and state.step == 16  # the last good checkpoint
    load_run(out)  # still loadable
    calls["n"] = 0
    code = main(["train", "--out", str(tmp_path / "cli"), "--num-train", "512"])
    assert code == 1
    assert "step 21" in capsys.readouterr().err


def test_failed_overwrite_keeps_the_previous_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train_mod.train(_cfg(), out)
    before = _snapshot(out)

    def boom(*a, **k):
        raise TrainingError("loss became nan at step 1 (epoch 1)")

    monkeypatch.setattr(train_mod, "masked_loss", boom)
    with pytest.raises(TrainingError):
        train_mod.train(_cfg(seed=5), out, overwrite=True)
    assert _snapshot(out) == before


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickle_payload_in_training_state_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train_mod.train(_cfg(), out)
    (out / "train_state.pt").write_bytes(pickle.dumps({"epoch": _Payload()}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunDirError, match="not a loadable training state"):
        train_mod.train(_cfg(), out, resume=True)
    assert not (tmp_path / "PWNED").exists()


def test_pickled_weights_are_refused(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train_mod.train(_cfg(), out)
    torch.save({"x": _Payload()}, out / "model.safetensors")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunDirError, match="model.safetensors is truncated or corrupted"):
        load_run(out)
    assert not (tmp_path / "PWNED").exists()


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    out = tmp_path / "run"
    train_mod.train(_cfg(), out)
    before = _snapshot(out)
    train_mod.train(_cfg(), out, resume=True)
    after = _snapshot(out)
    assert after["model.safetensors"] == before["model.safetensors"]
    assert after["metrics.csv"] == before["metrics.csv"]


def _train_cmd(out, *extra):
    args = ["--epochs", "30", "--num-train", "2048", "--hidden-size", "16", "--batch-size", "16"]
    args += ["--checkpoint-every", "0"]  # every epoch, so kills land between many checkpoints
    return [sys.executable, "-m", "lstmkit", "train", "--out", str(out), *args, *extra]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(ref), check=True, env=env, capture_output=True)
    out = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0
    at_kill = []  # the checkpointed epoch after each kill
    cmd = _train_cmd(out)
    while kills < 3:
        state = out / "train_state.pt"
        seen = state.stat().st_mtime_ns if state.exists() else None
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Kill only once this process has written a checkpoint of its own, so every kill
        # lands in the middle of training (not during start-up), at a random moment.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if state.exists() and state.stat().st_mtime_ns != seen:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is not None:
            break  # finished before the kill: resume below must still be exact
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        load_run(out)  # whatever moment the kill hit, the previous checkpoint loads
        at_kill.append(load_state(state).epoch)
        cmd = [sys.executable, "-m", "lstmkit", "train", "--out", str(out), "--resume"]
    assert kills >= 3, "training finished before three kills: make the run longer"
    assert at_kill == sorted(at_kill) and 0 < at_kill[-1] < 30, at_kill  # mid-training kills
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    a, b = load_file(ref / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = load_state(ref / "train_state.pt"), load_state(out / "train_state.pt")
    for k in sa.model:
        assert torch.equal(sa.model[k], sb.model[k]), k
    assert (ref / "metrics.csv").read_text().splitlines()[-1].split(",")[:5] == (
        out / "metrics.csv"
    ).read_text().splitlines()[-1].split(",")[:5]


def test_resume_of_a_stopped_run_changes_nothing(tmp_path):
    out = tmp_path / "run"
    res = train_mod.train(_cfg(max_time=1e-6), out)  # out of time at once: stops in epoch 1
    assert res.stopped_early and res.epochs < 4
    before = _snapshot(out)
    again = train_mod.train(RunConfig(), out, resume=True)
    assert again.stopped_early and again.epochs == res.epochs
    after = _snapshot(out)
    assert after["model.safetensors"] == before["model.safetensors"]
    assert after["metrics.csv"] == before["metrics.csv"]
