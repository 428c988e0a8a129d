"""A kill at every save point of a run (first save, periodic saves, final save, the
overwrite's swap) followed by what the user is told to run gives the uninterrupted run's files.

Each kill lands in a forked child (tests/killing.py) that SIGKILLs itself inside the write
the test chose: before it, with a temporary half written, or just after its rename."""

from __future__ import annotations

import pytest
import torch
from killing import PHASES, count_writes, in_child, small_config
from safetensors.torch import load_file

from lstmkit.checkpoint import load_run, load_state
from lstmkit.config import RunConfig
from lstmkit.errors import RunDirError
from lstmkit.train import train


def _recover(out, cfg, overwrite=False) -> str:
    """What a user does after a kill: --resume, or the command its one-line message names."""
    try:
        train(RunConfig(), out, resume=True)
        return "resumed"
    except RunDirError as e:
        msg = str(e)
    assert "\n" not in msg and "`lstmkit train --out" in msg, msg
    assert "--resume`" not in msg, msg  # it names a fresh start, which we now run
    train(cfg, out, overwrite=overwrite)
    return "rerun"


def _assert_same_run(ref, out):
    a, b = load_file(ref / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)
    sa, sb = load_state(ref / "train_state.pt"), load_state(out / "train_state.pt")
    assert (sa.epoch, sa.step) == (sb.epoch, sb.step)
    for k in sa.model:
        torch.testing.assert_close(sb.model[k], sa.model[k], rtol=0, atol=0)
    cols = [r.split(",")[:5] for r in (ref / "metrics.csv").read_text().splitlines()]
    assert [r.split(",")[:5] for r in (out / "metrics.csv").read_text().splitlines()] == cols
    names = {p.name for p in out.iterdir()}
    assert names == {p.name for p in ref.iterdir()}, names  # no temporaries, no markers
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no staging


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    writes = count_writes(lambda: train(small_config(), root / "run"))
    return root / "run", writes


def _kill_new_run_then_recover(tmp_path, reference, write, phase):
    ref, _ = reference
    out = tmp_path / "run"
    code, err = in_child(lambda: train(small_config(), out), write=write, phase=phase)
    assert code == 137, err
    if (out / "train_state.pt").exists():
        load_run(out)  # whatever instant the kill hit, a committed run loads
    _recover(out, small_config())
    _assert_same_run(ref, out)


@pytest.mark.parametrize("write, phase", [(2, "after"), (5, "torn"), (-2, "after")])
def test_kill_in_first_and_final_save_then_resume(tmp_path, reference, write, phase):
    """2: config.json of the first save; 5: its training state (the commit); -2: the final
    save's state is renamed but its model.safetensors not yet written."""
    n = len(reference[1])
    _kill_new_run_then_recover(tmp_path, reference, write % (n + 1) if write < 0 else write, phase)


@pytest.mark.slow
def test_kill_at_every_write_then_resume(tmp_path_factory, reference):
    for write in range(1, len(reference[1]) + 1):
        for phase in PHASES:
            tmp = tmp_path_factory.mktemp(f"w{write}{phase}")
            _kill_new_run_then_recover(tmp, reference, write, phase)


def _old_run(tmp_path):
    out = tmp_path / "run"
    train(small_config(seed=7), out)
    return out, (out / "model.safetensors").read_bytes()


@pytest.mark.parametrize("at", ["before", "after"])
def test_kill_around_the_overwrite_swap(tmp_path, reference, at):
    out, old = _old_run(tmp_path)
    code, err = in_child(lambda: train(small_config(), out, overwrite=True), at_exchange=at)
    assert code == 137, err
    now = (out / "model.safetensors").read_bytes()
    assert now == (old if at == "before" else (reference[0] / "model.safetensors").read_bytes())
    load_run(out)  # the old run or the new one: never a mix, never missing
    if at == "before":
        train(small_config(), out, overwrite=True)  # the same command again
    else:
        train(RunConfig(), out, resume=True)  # any later writer clears the old run away
    _assert_same_run(reference[0], out)


def test_kill_between_the_two_renames_of_a_swap_without_exchange(tmp_path, reference, monkeypatch):
    """Where the file system has no atomic exchange: a kill after the old run moved aside
    leaves out missing; the next writer puts the finished run in place."""
    import os

    import lstmkit.rundir as rundir

    out, _ = _old_run(tmp_path)
    real_rename = os.rename

    def rename_then_die(a, b):
        real_rename(a, b)
        if str(b).startswith(str(out.parent / rundir.SIBLING_PREFIX)):
            os.kill(os.getpid(), 9)

    def child():
        rundir.exchange = lambda a, b: False
        os.rename = rename_then_die
        train(small_config(), out, overwrite=True)

    code, err = in_child(child)
    assert code == 137, err
    assert not out.exists()
    assert _recover(out, small_config()) == "resumed"
    _assert_same_run(reference[0], out)
