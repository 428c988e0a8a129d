"""The training loop: mini-batches, validation, early stopping, clipping, schedules,
atomic checkpoints (every few seconds, at epoch ends) and an exact resume."""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from lstmkit import data as tasks
from lstmkit import distributed
from lstmkit.checkpoint import (
    METRICS,
    STATE,
    atomic_write,
    build_model,
    load_run,
    load_state,
    save_run,
    save_state,
    save_weights,
)
from lstmkit.config import RunConfig, validate
from lstmkit.errors import ConfigError, RunDirError, TrainingError
from lstmkit.scaling import Scaler

METRIC_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "lr", "seconds")


@dataclass
class Result:
    path: Path
    epochs: int  # epochs completed
    train_loss: float
    val_loss: float
    best_val_loss: float
    seconds: float
    stopped_early: bool


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def make_scaler(cfg: RunConfig, td: tasks.TaskData) -> Scaler:
    kind = cfg.data.scaling
    if kind == "auto":
        kind = td.default_scaling if td.series_scaling else "none"
    if kind != "none" and not td.series_scaling:
        raise ConfigError(
            f"data.scaling {kind!r} applies to univariate series; task {cfg.data.task!r} "
            "takes only 'none' or 'auto'"
        )
    if kind == "drift":  # steps centred on the mean step: additive differences of lag 1
        return Scaler("seasonal", period=1).fit(td.train.x, allow_log=False)
    return Scaler(kind, period=cfg.data.period).fit(td.train.x)


def encode(split: tasks.Split, scaler: Scaler) -> tasks.Split:
    x, y = scaler.encode(split.x, split.y)
    return tasks.Split(x, y, split.mask & scaler.defined(split.x.size(1)))


def masked_loss(pred: Tensor, y: Tensor, mask: Tensor, kind: str) -> Tensor:
    """Mean loss over the steps in ``mask``: MSE for regression, cross-entropy otherwise."""
    if kind == "classification":
        return torch.nn.functional.cross_entropy(pred[mask], y[mask])
    return torch.nn.functional.mse_loss(pred[mask], y[mask])


@torch.no_grad()
def forecast_error(model, scaler: Scaler, fv: dict, window: int, device) -> float:
    """MASE of the recursive forecasts of ``fv`` (see TaskData.forecast_val): every
    validation value as origin, up to H steps each (NaN targets past the part are skipped)."""
    from lstmkit.multistep import validation_forecasts

    model.eval()
    target = fv["target"].to(device)
    pred = validation_forecasts(model, scaler, fv, window, device)
    model.train()
    err = (pred - target).abs().nanmean().item() / fv["scale"]
    return err if math.isfinite(err) else math.inf


@torch.no_grad()
def evaluate_loss(model, split: tasks.Split, kind: str, device, batch_size: int = 512) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(split), batch_size):
        x, y, m = (t[i : i + batch_size].to(device) for t in (split.x, split.y, split.mask))
        n = int(m.sum())
        total += masked_loss(model(x), y, m, kind).item() * n
        count += n
    model.train()
    return total / max(count, 1)


def _schedule(cfg: RunConfig, total_steps: int):
    if cfg.train.schedule == "constant":
        return lambda step: 1.0
    return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def _prepare_dir(out: Path, resume: bool, overwrite: bool) -> Path:
    """The directory to write into: ``out`` itself, or a staging sibling when overwriting
    (swapped in only when training succeeds, so a failed run loses nothing)."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    if resume:
        if not (out / STATE).is_file():
            raise RunDirError(f"run directory {out} has no {STATE} to resume from")
        for tmp in out.glob(".*.tmp"):  # left by a write that a kill interrupted
            tmp.unlink()
        return out
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RunDirError(
                f"run directory {out} already exists; pass --resume to continue it or "
                "--overwrite to replace it"
            )
        staging = out.with_name(out.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_metrics(path: Path, history: list[dict]) -> None:
    lines = [",".join(METRIC_COLUMNS)]
    lines += [
        ",".join(
            f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]) for c in METRIC_COLUMNS
        )
        for row in history
    ]
    atomic_write(path / METRICS, ("\n".join(lines) + "\n").encode())


def train(
    cfg: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> Result:
    """Train ``cfg`` into run directory ``out``; see the module docstring.

    Under ``torchrun`` (WORLD_SIZE > 1) this process is one rank of a DistributedDataParallel
    run: each rank takes a DistributedSampler-style shard of every epoch's permutation and
    ``train.batch_size`` windows per step (so a step covers batch_size × world_size windows),
    validation loss is rank 0's on every rank, and only rank 0 writes ``out``; every rank
    returns once the run directory is complete."""
    ctx = distributed.setup(cfg.train.device)
    ok = False
    try:
        result = _train(ctx, cfg, Path(out), resume, overwrite, progress)
        ok = True
        return result
    finally:
        distributed.teardown(ctx, ok)


def _train(ctx, cfg, out: Path, resume: bool, overwrite: bool, progress) -> Result:
    if not resume:  # refuse a bad config before anything is written
        tasks.check_options(validate(cfg))
        cfg = tasks.resolve(cfg)  # None fields: the task's defaults, saved resolved
    work = distributed.on_main(ctx, _prepare_dir, out, resume, overwrite)
    if resume:  # the saved config is the one to continue (load_run also checks the run)
        cfg = tasks.resolve(validate(load_run(out).config))
    device = distributed.train_device(ctx, pick_device(cfg.train.device))
    td = tasks.make(cfg, cfg.train.seed)
    scaler = make_scaler(cfg, td)
    # training windows are encoded a batch at a time (a long series' windows are views of
    # one tensor; encoding them all at once would copy each value L times)
    train_split, val_split = td.train, encode(td.val, scaler)
    facts = td.facts.to_dict()
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, facts).to(device)
    fv = td.forecast_val
    if fv is not None:  # start from the scaling's reference forecast (a zero correction)
        torch.nn.init.zeros_(model.head.weight)
        torch.nn.init.zeros_(model.head.bias)

    def validate_now() -> float:
        if fv is not None:
            return forecast_error(model, scaler, fv, cfg.data.length, device)
        return evaluate_loss(model, val_split, td.kind, device)

    opt_cls = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
    # fused: one kernel for all parameters instead of ~6 small ops each (a sixth of a small
    # model's step time on the CPU); torch has it for CPU and CUDA float parameters.
    fused = device.type in ("cpu", "cuda")
    opt = opt_cls(
        model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=fused
    )
    shard = distributed.shard_size(ctx, len(train_split))  # len(train_split) when alone
    steps_per_epoch = math.ceil(shard / cfg.train.batch_size)
    total = steps_per_epoch * cfg.train.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg, total))
    epoch, step, history, best, seconds = (
        0,
        0,
        [],
        {"val": math.inf, "epoch": -1, "model": None},
        0.0,
    )
    if resume:
        st = load_state(out / STATE)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        torch.set_rng_state(st["rng"])
        epoch, step, history, best, seconds = (
            st["epoch"],
            st["step"],
            st["history"],
            st["best"],
            st["seconds"],
        )
    if best["model"] is None:
        best["model"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if fv is not None:  # the reference forecast is a candidate too (epoch 0)
            best["val"], best["epoch"] = validate_now(), 0
    if not resume and ctx.is_main:  # config, scaler, and a checkpoint at step 0 to resume from
        save_run(work, cfg, facts, best["model"], scaler)
        _checkpoint(work, model, opt, sched, 0, 0, [], best, 0.0)
    last_saved = time.perf_counter()
    if progress is None:
        progress = sys.stderr.isatty()
    progress = progress and ctx.is_main
    net = distributed.wrap(ctx, model, device)  # the model itself when alone
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # BPTT gradients of long sequences underflow; x86 crawls
    bar = tqdm(
        total=total,
        initial=step,
        disable=not progress,
        file=sys.stderr,
        unit="step",
        dynamic_ncols=True,
    )
    stopped_early = False
    started = time.perf_counter() - seconds

    def out_of_time() -> bool:
        limit = cfg.train.max_time
        return limit > 0 and time.perf_counter() - started >= limit

    try:
        model.train()
        while epoch < cfg.train.epochs:
            g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch)
            order = torch.randperm(len(train_split), generator=g)
            order = distributed.shard(ctx, order)  # this rank's part; all of it when alone
            running, done = 0.0, 0
            for i in range(steps_per_epoch):
                if ctx.world_size == 1 and out_of_time():  # --max-time: end the epoch here
                    break
                if ctx.world_size > 1:  # dropout masks differ between ranks, and resume alike
                    torch.manual_seed(distributed.step_seed(cfg.train.seed, step, ctx.rank))
                idx = order[i * cfg.train.batch_size : (i + 1) * cfg.train.batch_size]
                raw = (t[idx] for t in (train_split.x, train_split.y, train_split.mask))
                batch = encode(tasks.Split(*raw), scaler)
                x, y, m = batch.x.to(device), batch.y.to(device), batch.mask.to(device)
                loss = masked_loss(net(x), y, m, td.kind)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"loss became {loss.item()} at step {step + 1} (epoch {epoch + 1}); "
                        f"stopped, the last good checkpoint in {out} is kept"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.train.clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip)
                opt.step()
                sched.step()
                step += 1
                running += loss.item()
                done += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4g}")
            epoch += 1
            running = distributed.mean_value(ctx, running)  # over ranks
            val = validate_now()
            val = distributed.broadcast_value(ctx, val)  # one decision on every rank
            row = {
                "epoch": epoch,
                "step": step,
                "train_loss": running / max(done, 1),
                "val_loss": val,
                "lr": opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - started,
            }
            history.append(row)
            if val < best["val"]:
                best = {
                    "val": val,
                    "epoch": epoch,
                    "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                }
            patience = cfg.train.patience
            stopped_early = patience > 0 and epoch - best["epoch"] >= patience
            # one decision for every rank (rank 0's clock)
            stopped_early |= distributed.broadcast_value(ctx, float(out_of_time())) > 0
            # A checkpoint costs several fsyncs: on short epochs take one every few seconds.
            # Resume replays the epochs since the last one, so the result is the same.
            due = time.perf_counter() - last_saved >= cfg.train.checkpoint_every
            if due or stopped_early or epoch == cfg.train.epochs:
                _checkpoint(work, model, opt, sched, epoch, step, history, best, row["seconds"])
                last_saved = time.perf_counter()
            if stopped_early:
                break
    finally:
        bar.close()
        if device.type == "cpu":
            torch.set_flush_denormal(False)
    vals = [r["val_loss"] for r in history]
    distributed.dump_for_test(ctx, model.state_dict(), best["model"], vals)  # a test-only hook
    if fv is not None and ctx.is_main:  # prediction intervals from the best model's residuals
        from lstmkit.forecast import calibrate, save_calibration

        model.load_state_dict(best["model"])
        save_calibration(work, calibrate(model.cpu(), scaler, fv, cfg.data.length))
    if work != out and ctx.is_main:  # overwrite: swap the finished run in, then drop the old one
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        work.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    last = history[-1]
    return Result(
        out,
        epoch,
        last["train_loss"],
        last["val_loss"],
        best["val"],
        last["seconds"],
        stopped_early,
    )


def _checkpoint(work, model, opt, sched, epoch, step, history, best, seconds):
    """One consistent checkpoint: state first (what resume reads), then the best model."""
    if not distributed.is_main():  # only rank 0 writes the run directory
        return
    save_state(
        work / STATE,
        {
            "epoch": epoch,
            "step": step,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": torch.get_rng_state(),
            "history": history,
            "best": best,
            "seconds": seconds,
        },
    )
    save_weights(work, best["model"])
    _write_metrics(work, history)
