"""Training under torchrun: sharding semantics, no-ops alone, and a real 2-process run on
the CPU (gloo over loopback) whose ranks end with identical weights."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lstmkit import distributed
from lstmkit.distributed import SINGLE, Context

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.parametrize("n, world, batch", [(12, 2, 3), (13, 2, 4), (10, 3, 2), (5, 4, 1)])
def test_shards_are_distributed_sampler_slices_of_the_global_order(n, world, batch):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    shards = [distributed.shard(Context(r, world), order) for r in range(world)]
    size = distributed.shard_size(Context(0, world), n)
    assert all(s.numel() == size for s in shards)
    padded = torch.cat([order, order[: size * world - n]])
    # rank r's batch j and the other ranks' batch j together are one slice of the global order
    for j in range(-(-size // batch)):
        together = torch.stack([s[j * batch : (j + 1) * batch] for s in shards], 1).reshape(-1)
        lo = j * batch * world
        assert together.tolist() == padded[lo : lo + together.numel()].tolist()
    if n % world == 0:  # disjoint, and everything once
        assert sorted(torch.cat(shards).tolist()) == list(range(n))


def test_alone_every_helper_is_the_identity():
    assert distributed.setup("cpu") == SINGLE and not SINGLE.enabled and SINGLE.is_main
    order = torch.arange(7)
    assert distributed.shard(SINGLE, order) is order
    assert distributed.shard_size(SINGLE, 7) == 7
    assert distributed.mean_value(SINGLE, 0.1) == 0.1
    assert distributed.broadcast_value(SINGLE, 0.3) == 0.3
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(SINGLE, model, torch.device("cpu")) is model
    assert distributed.on_main(SINGLE, lambda a: a + 1, 1) == 2
    assert distributed.is_main()
    distributed.teardown(SINGLE)


def test_step_seeds_differ_between_ranks_and_steps_and_repeat():
    seeds = {distributed.step_seed(7, step, rank) for step in range(50) for rank in range(8)}
    assert len(seeds) == 400  # no two (step, rank) share a stream
    assert distributed.step_seed(7, 3, 1) == distributed.step_seed(7, 3, 1)  # resume: the same
    assert distributed.step_seed(7, 3, 1) != distributed.step_seed(8, 3, 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_train_one_model(tmp_path):
    from lstmkit.checkpoint import load_run

    out, dump = tmp_path / "run", tmp_path / "ranks"
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}  # loopback only
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    cmd += [str(WORKER), str(dump)]  # `lstmkit train`, then each rank's weights into dump
    cmd += ["train", "--out", str(out), "--epochs", "3", "--device", "cpu"]
    cmd += ["--hidden-size", "6", "--length", "5", "--num-train", "50", "--num-val", "16"]
    cmd += ["--num-test", "4", "--batch-size", "8", "--lr", "0.01"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained counting: 3 epochs") == 1, done.stdout  # rank 0 reports

    ranks = [load_file(dump / f"rank{r}.safetensors") for r in (0, 1)]
    assert set(ranks[0]) == set(ranks[1])
    # each rank draws its own random numbers (dropout masks): one stream per rank
    assert not torch.equal(ranks[0].pop("rng_probe"), ranks[1].pop("rng_probe"))
    for k in ranks[0]:  # bitwise: DDP averages gradients, every rank takes the same steps
        assert torch.equal(ranks[0][k], ranks[1][k]), k
    assert ranks[0]["val_loss"].numel() == 3

    run = load_run(out)  # complete and loadable, written by rank 0 alone
    for k, v in run.model.state_dict().items():
        torch.testing.assert_close(v, ranks[1][f"best.{k}"], rtol=0, atol=0)
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3]
    # 50 windows over 2 ranks: 25 each, 4 steps of 8 per epoch
    assert [int(r.split(",")[1]) for r in rows] == [4, 8, 12]
    saved_val = [float(r.split(",")[3]) for r in rows]
    torch.testing.assert_close(saved_val, ranks[1]["val_loss"].tolist(), rtol=1e-5, atol=0)
    assert not list(tmp_path.glob("run.*")) and not list(out.glob(".*.tmp"))
