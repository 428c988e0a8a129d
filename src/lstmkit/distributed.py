"""More than one process: the few collective operations the trainer needs, and no-ops alone.

``torchrun --nproc_per_node N -m lstmkit train ...`` sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; :func:`setup` joins that process group (gloo on the CPU, nccl on
CUDA). Without them, or with WORLD_SIZE=1, every helper here is a no-op and the trainer runs
exactly its single-process path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from lstmkit import errors


@dataclass(frozen=True)
class Context:
    """Where this process stands: rank r of world_size; ``owns`` if setup created the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Context()


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        msg = f"environment variable {name} must be an integer, got {raw!r}"
        raise errors.ConfigError(msg) from None


def setup(device: str = "auto") -> Context:
    """Join the process group described by the environment, or return :data:`SINGLE`.

    ``device`` is ``train.device`` (auto | cpu | cuda): gloo for the CPU, nccl for CUDA
    (pinning this process to GPU LOCAL_RANK). A group someone else already initialised is
    used as it is, and left to them to destroy."""
    if dist.is_available() and dist.is_initialized():
        local = _env_int("LOCAL_RANK") or 0
        return Context(dist.get_rank(), dist.get_world_size(), local, owns=False)
    world = _env_int("WORLD_SIZE")
    if world is None or world <= 1:
        return SINGLE
    rank, local = _env_int("RANK") or 0, _env_int("LOCAL_RANK") or 0
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise errors.ConfigError(
            f"WORLD_SIZE={world} but MASTER_ADDR/MASTER_PORT are not set; start with torchrun"
        )
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(local)
        dist.init_process_group(
            "nccl", rank=rank, world_size=world, device_id=torch.device("cuda", local)
        )
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    return Context(rank, world, local, owns=True)


def env_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun)."""
    return _env_int("RANK") or 0


def is_main() -> bool:
    """Whether this process is rank 0 of its group (or alone): the one that writes files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def train_device(ctx: Context, device: torch.device) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` under a CUDA group, else ``device``."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def teardown(ctx: Context, ok: bool = True) -> None:
    """Leave the group if :func:`setup` created it; after success, first wait for every rank
    (so no process exits while rank 0 still writes the run directory)."""
    if not ctx.owns or not dist.is_initialized():
        return
    if ok:
        dist.barrier()
    dist.destroy_process_group()


def wrap(ctx: Context, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` under DistributedDataParallel (which copies rank 0's weights to every rank);
    the model itself when alone."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of the random numbers (dropout) rank ``rank`` draws at training step ``step``.

    One global seed would give every rank the same dropout masks; a seed that is a function
    of (seed, step, rank) gives each rank its own and lets a resumed run draw the same ones
    without saving every rank's generator state (only rank 0 writes checkpoints)."""
    return (seed * 1_000_003 + step) * 1_009 + rank


def shard(ctx: Context, order: Tensor) -> Tensor:
    """This rank's part of an epoch's permutation ``order`` (N,), DistributedSampler-style:
    padded by repeating its head to a multiple of the world size, then every world_size-th
    index from ``rank``. Rank r's batch j and the other ranks' batch j together are the
    global order's items j*B*W .. (j+1)*B*W - 1. Alone: ``order`` unchanged."""
    if not ctx.enabled:
        return order
    W = ctx.world_size
    total = -(-order.numel() // W) * W
    pad = total - order.numel()
    if pad:
        order = torch.cat([order, order.repeat(-(-pad // order.numel()))[:pad]])
    return order[ctx.rank : total : W]


def shard_size(ctx: Context, n: int) -> int:
    """The length of :func:`shard` of a permutation of ``n`` items."""
    return -(-n // ctx.world_size)


def mean(ctx: Context, value: Tensor) -> Tensor:
    """The mean of a scalar tensor over ranks (the same value on each); alone: ``value``."""
    if not ctx.enabled:
        return value
    v = value.detach().clone()
    if dist.get_backend() == "nccl":
        v = v.cuda()
    dist.all_reduce(v, op=dist.ReduceOp.SUM)
    return v.to(value.device) / ctx.world_size


def mean_value(ctx: Context, value: float) -> float:
    """The mean of a number over ranks (the same on each); alone: ``value`` itself."""
    if not ctx.enabled:
        return value
    return mean(ctx, torch.tensor(value, dtype=torch.float64)).item()


def broadcast_value(ctx: Context, value: float) -> float:
    """Rank 0's ``value`` on every rank; alone: ``value`` itself."""
    if not ctx.enabled:
        return value
    v = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        v = v.cuda()
    dist.broadcast(v, src=0)
    return v.item()


def on_main(ctx: Context, fn, *args):
    """``fn(*args)`` run by rank 0 only; every rank returns its result, or raises its error.

    For side effects such as preparing the run directory: when rank 0 fails, the other ranks
    raise the same LstmkitError instead of waiting for it forever."""
    if not ctx.enabled:
        return fn(*args)
    box: list = [None]
    if ctx.is_main:
        try:
            box[0] = ("ok", fn(*args))
        except Exception as e:
            box[0] = ("error", type(e).__name__, str(e))
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    if box[0][0] == "error":
        cls = getattr(errors, box[0][1], None)
        if isinstance(cls, type) and issubclass(cls, errors.LstmkitError):
            raise cls(box[0][2])
        raise RuntimeError(f"rank 0 failed: {box[0][1]}: {box[0][2]}")
    return box[0][1]
