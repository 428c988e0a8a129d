"""SIGINT/SIGTERM at any moment and a full or read-only disk: one true line, the previous
checkpoint intact, and the command it names continues to the uninterrupted result."""

from __future__ import annotations

import errno
import os
import re
import signal
import sys

import pytest
import torch
from killing import count_writes, in_child, small_config
from safetensors.torch import load_file

import lstmkit.checkpoint as ckpt
import lstmkit.train as train_mod
from lstmkit.checkpoint import load_run, load_state
from lstmkit.cli import main
from lstmkit.config import RunConfig
from lstmkit.errors import DiskError, Interrupted
from lstmkit.train import train


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    writes = count_writes(lambda: train(small_config(), out))
    return out, writes


def _same_weights(a, b):
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=0)


def _train_reporting(out, **kw):
    """The child's work: train, and on a signal print the one line and exit with its code."""

    def go():
        try:
            train(small_config(), out, **kw)
        except Interrupted as e:
            print(f"lstmkit: {e}", file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt:  # before train() had begun: a plain Ctrl-C, as the CLI sees
            print("lstmkit: interrupted", file=sys.stderr)
            return 130
        return 0

    return go


def _kept_epoch(msg: str) -> int | None:
    m = re.search(r"the checkpoint of epoch (\d+) in .* is kept", msg)
    return int(m.group(1)) if m else None


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_a_save_waits_for_it_then_says_what_is_kept(tmp_path, reference, sig, code):
    ref, writes = reference
    out = tmp_path / "run"
    at = len(writes) - 4  # inside the checkpoint of the second epoch
    got, err = in_child(_train_reporting(out), write=at, phase="before", sig=sig)
    assert got == code, err
    line = err.strip()
    assert line.count("\n") == 0 and "Traceback" not in line, err
    assert signal.Signals(sig).name in line
    kept = _kept_epoch(line)
    assert kept == load_state(out / "train_state.pt").epoch  # the message is true
    assert f"`lstmkit train --out {out} --resume`" in line
    load_run(out)
    train(RunConfig(), out, resume=True)
    _same_weights(ref, out)


@pytest.mark.parametrize("delay", [0.0005, 0.005, 0.03, 0.1, 0.3])
def test_ctrl_c_at_any_early_instant_is_clean_and_blocks_nothing(tmp_path, reference, delay):
    out = tmp_path / "run"

    def go():
        signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
        signal.setitimer(signal.ITIMER_REAL, delay)
        return _train_reporting(out)()

    code, err = in_child(go)
    assert code in (0, 130), err  # 0: the run finished before the signal
    assert "Traceback" not in err and err.count("\n") <= 1, err
    kept = _kept_epoch(err)
    if code == 130 and kept is None:  # "nothing was kept", or stopped before train() began
        assert not out.exists(), err  # the start removed what it had made
        train(small_config(), out)
    elif code == 130:
        assert kept == load_state(out / "train_state.pt").epoch, err
        train(RunConfig(), out, resume=True)
    _same_weights(reference[0], out)


def test_ctrl_c_through_the_cli_exits_130_in_one_line(tmp_path):
    out = tmp_path / "run"

    def go():
        signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        args = ["--epochs", "200", "--num-train", "48", "--device", "cpu"]
        return main(["train", "--out", str(out), *args])

    code, err = in_child(go)
    assert code == 130 and "Traceback" not in err and err.strip().count("\n") == 0, err


class _Disk:
    """``os`` as checkpoint.py sees it, with fsync failing (errno ``err``) from call ``at`` on."""

    def __init__(self, err: int, at: int) -> None:
        self.err, self.at, self.calls = err, at, 0

    def __getattr__(self, name):
        return getattr(os, name)

    def fsync(self, fd):
        self.calls += 1
        if self.calls >= self.at:
            raise OSError(self.err, os.strerror(self.err))
        return os.fsync(fd)


@pytest.mark.parametrize("at", [3, 13, 20])
def test_a_full_disk_is_one_line_and_the_last_checkpoint_stays(
    tmp_path, reference, monkeypatch, capsys, at
):
    out = tmp_path / "run"
    monkeypatch.setattr(ckpt, "os", _Disk(errno.ENOSPC, at))
    with pytest.raises(DiskError) as e:
        train(small_config(), out)
    msg = str(e.value)
    assert "\n" not in msg and "No space left on device" in msg
    monkeypatch.undo()
    if "nothing was kept" in msg:  # the first save failed: nothing blocks the rerun
        assert not out.exists()
        train(small_config(), out)
    else:
        assert _kept_epoch(msg) == load_state(out / "train_state.pt").epoch, msg
        load_run(out)
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
        train(RunConfig(), out, resume=True)
    _same_weights(reference[0], out)


def _blocks_writes(folder) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_bytes(b"")
    except OSError:
        return True
    probe.unlink()
    return False


def test_a_read_only_run_directory_is_one_line_and_keeps_the_checkpoint(
    tmp_path, reference, monkeypatch
):
    """chmod where it blocks writes; as root (where it does not), the same refusal simulated."""
    out = tmp_path / "run"
    real = train_mod.save_state
    saves = {"n": 0}

    def save_then_freeze(path, state):
        saves["n"] += 1
        if saves["n"] == 3:  # the second epoch's checkpoint meets a read-only folder
            os.chmod(out, 0o555)
            if not _blocks_writes(out):  # root: chmod blocks nothing, so simulate EROFS
                monkeypatch.setattr(ckpt, "os", _Disk(errno.EROFS, 1))
        real(path, state)

    monkeypatch.setattr(train_mod, "save_state", save_then_freeze)
    try:
        with pytest.raises(DiskError) as e:
            train(small_config(), out)
    finally:
        os.chmod(out, 0o755)
    monkeypatch.undo()
    msg = str(e.value)
    assert "\n" not in msg and ("Read-only" in msg or "Permission denied" in msg), msg
    assert _kept_epoch(msg) == 1 == load_state(out / "train_state.pt").epoch
    train(RunConfig(), out, resume=True)
    _same_weights(reference[0], out)


def test_a_read_only_parent_is_one_line(tmp_path, capsys, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    os.chmod(parent, 0o555)
    try:
        if not _blocks_writes(parent):  # root: simulate the refusal of mkdir
            real_mkdir = type(parent).mkdir

            def refuse(self, *a, **k):
                if self.parent == parent:
                    raise OSError(errno.EACCES, os.strerror(errno.EACCES))
                return real_mkdir(self, *a, **k)

            monkeypatch.setattr(type(parent), "mkdir", refuse)
        code = main(["train", "--out", str(parent / "run"), "--epochs", "1"])
    finally:
        os.chmod(parent, 0o755)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Permission denied" in err, err


def test_an_ignored_sigint_stays_ignored(tmp_path, reference):
    """Started with SIGINT ignored (nohup, a background job): training is not stopped by it."""
    out = tmp_path / "run"

    def go():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
        signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)  # again and again while it trains
        return _train_reporting(out)()

    code, err = in_child(go)
    assert code == 0, err
    _same_weights(reference[0], out)
