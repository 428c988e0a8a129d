"""One writer per run directory, and --overwrite that deletes only what lstmkit created."""

from __future__ import annotations

import os
import signal
import socket

import pytest
from killing import in_child

import lstmkit.rundir as rundir
from lstmkit.checkpoint import load_run, load_state
from lstmkit.cli import main
from lstmkit.config import RunConfig
from lstmkit.errors import RunDirError
from lstmkit.train import train

SMALL = ["--epochs", "2", "--num-train", "32", "--num-val", "16", "--hidden-size", "6"]
SMALL += ["--device", "cpu"]  # the tests fork; a forked child cannot use CUDA its parent began


def _cfg(seed: int = 0, epochs: int = 2) -> RunConfig:
    cfg = RunConfig()
    cfg.train.device = "cpu"  # the tests fork; a forked child cannot use CUDA its parent began
    cfg.train.epochs, cfg.train.seed = epochs, seed
    cfg.data.num_train, cfg.data.num_val, cfg.model.hidden_size = 32, 16, 6
    return cfg


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.mark.parametrize("mode", ["", "--resume", "--overwrite"])
def test_a_second_writer_fails_naming_the_holder(tmp_path, capsys, mode):
    out = tmp_path / "run"
    train(_cfg(), out)
    before = _files(out)
    lock = rundir.Lock(out)  # another writer, as far as the run directory can tell
    try:
        extra = {"": SMALL, "--resume": ["--resume"], "--overwrite": [*SMALL, "--overwrite"]}
        assert main(["train", "--out", str(out), *extra[mode]]) == 2
    finally:
        lock.release()
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "being written by another lstmkit process" in err
    assert f"pid {os.getpid()}" in err and socket.gethostname()[:20] in err and "UTC" in err
    assert _files(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_two_concurrent_runs_never_mix(tmp_path):
    """Two processes start on the same --out at once: one trains, the other is refused;
    the run directory is exactly the winner's run."""
    refs = {}
    for seed in (1, 2):
        train(_cfg(seed), tmp_path / f"ref{seed}")
        refs[seed] = (tmp_path / f"ref{seed}" / "model.safetensors").read_bytes()
    out = tmp_path / "run"
    r, w = os.pipe()

    def racer(seed):
        def go():
            os.read(r, 1)  # both start at the same moment
            return main(["train", "--out", str(out), *SMALL, "--seed", str(seed)])

        return go

    pids = []
    for seed in (1, 2):
        pid = os.fork()
        if pid == 0:
            code, _ = in_child(racer(seed))
            os._exit(code)
        pids.append(pid)
    os.write(w, b"xx")
    codes = sorted(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids)
    assert codes == [0, 2], codes
    assert (out / "model.safetensors").read_bytes() in refs.values()
    winner = load_run(out).config.train.seed
    assert (out / "model.safetensors").read_bytes() == refs[winner]


def test_a_dead_writer_does_not_block(tmp_path):
    out = tmp_path / "run"
    out.mkdir()

    def hold_and_die():
        rundir.Lock(out)
        os.kill(os.getpid(), signal.SIGKILL)

    assert in_child(hold_and_die)[0] == 137
    assert rundir.holder_of(out) is None
    train(_cfg(), out)
    load_run(out)


def test_overwrite_keeps_folders_it_did_not_create(tmp_path):
    out = tmp_path / "run"
    train(_cfg(), out)
    mine = {}
    for name in ("run.old", "run.partial", ".run.partial", ".lstmkit-staging-user"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.txt").write_text(name)
        mine[name] = name
    train(_cfg(seed=3), out, overwrite=True)
    for name, text in mine.items():
        assert (tmp_path / name / "notes.txt").read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["run", *mine])
    assert load_run(out).config.train.seed == 3


def test_overwrite_clears_only_its_own_dead_staging(tmp_path):
    out = tmp_path / "run"
    train(_cfg(), out)
    staging, lock = rundir.new_staging(out)  # a staging whose process then died
    (staging / "model.safetensors").write_bytes(b"half")
    lock.release()
    other, olock = rundir.new_staging(tmp_path / "another")  # another run's: not ours to touch
    olock.release()
    train(_cfg(seed=4), out, overwrite=True)
    assert not staging.exists() and other.exists()


def test_overwrite_refuses_a_symlink_and_leaves_link_and_target(tmp_path, capsys):
    target = tmp_path / "real"
    train(_cfg(), target)
    before = _files(target)
    link = tmp_path / "link"
    link.symlink_to(target)
    assert main(["train", "--out", str(link), *SMALL, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "symbolic link" in err and str(target) in err
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert _files(target) == before
    train(_cfg(), link, resume=True)  # through the link, a resume is fine


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "cat.jpg").write_bytes(b"meow")
    assert main(["train", "--out", str(out), *SMALL, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not one (no config.json)" in err and err.count("\n") == 0
    assert _files(out) == {"cat.jpg": b"meow"}


def test_a_model_that_cannot_run_writes_nothing(tmp_path, monkeypatch):
    """As `--backend triton` on a machine without a GPU: the model builds, its first forward
    fails; that must happen before the run directory exists, or it blocks the rerun."""
    from lstmkit.model import SequenceModel

    out = tmp_path / "run"

    def cannot_run(self, *a, **k):
        raise ValueError("backend 'triton' does not support device cpu")

    monkeypatch.setattr(SequenceModel, "forward", cannot_run)
    with pytest.raises(ValueError, match="does not support device cpu"):
        train(_cfg(), out)
    assert not out.exists()
    monkeypatch.undo()
    assert main(["train", "--out", str(out), *SMALL]) == 0


def test_an_unfinished_start_does_not_block_a_rerun(tmp_path):
    """A start killed before its first checkpoint (config written, no state): the rerun
    clears what that start wrote, and keeps anything else."""
    out = tmp_path / "run"

    def die_after_config():
        import lstmkit.checkpoint as ckpt

        real = ckpt.save_run

        def save_run_then_die(path, *a, **k):
            real(path, *a, **k)
            os.kill(os.getpid(), signal.SIGKILL)

        import lstmkit.train as train_mod

        train_mod.save_run = save_run_then_die
        train(_cfg(), out)

    assert in_child(die_after_config)[0] == 137
    assert (out / "config.json").is_file() and not (out / "train_state.pt").exists()
    with pytest.raises(RunDirError, match="stopped before its first checkpoint"):
        load_run(out)  # its weights are the untrained ones: not a model to predict with
    train(_cfg(seed=5), out)  # not "already exists"
    assert load_state(out / "train_state.pt").epoch == 2
    assert load_run(out).config.train.seed == 5


def test_a_swap_that_fails_puts_the_old_run_back(tmp_path, monkeypatch):
    import errno

    from lstmkit.errors import DiskError

    out = tmp_path / "run"
    train(_cfg(), out)
    before = _files(out)
    real_rename = os.rename
    calls = {"n": 0}

    def second_fails(a, b):
        calls["n"] += 1
        if calls["n"] == 2:  # the staging into place: refused
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        real_rename(a, b)

    monkeypatch.setattr(rundir, "exchange", lambda a, b: False)  # the two-rename path
    monkeypatch.setattr(os, "rename", second_fails)
    with pytest.raises(DiskError, match="is unchanged") as e:
        train(_cfg(seed=8), out, overwrite=True)
    monkeypatch.undo()
    assert "\n" not in str(e.value) and "Permission denied" in str(e.value)
    assert _files(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # the new run's staging went
