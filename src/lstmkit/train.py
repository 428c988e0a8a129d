"""The training loop: mini-batches, validation, early stopping, clipping, schedules,
checkpoints (every few seconds, at epoch ends) and an exact resume.

A run goes setup → epochs → finish. Only one process writes a run directory (see
:mod:`lstmkit.rundir`); its checkpoints commit at ``train_state.pt`` (a
:class:`~lstmkit.trainstate.TrainState`), and a resume rewrites the files derived from it, so
a kill at any instant loses at most the epochs since the last checkpoint. SIGINT/SIGTERM,
a full disk and a NaN loss end the run with one line saying what was kept and what to run."""

from __future__ import annotations

import copy
import math
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from lstmkit import data as tasks
from lstmkit import distributed, rundir
from lstmkit.checkpoint import (
    CONFIG,
    STATE,
    build_model,
    check_sizes,
    load_config,
    load_state,
    save_run,
    save_state,
    write_derived,
)
from lstmkit.config import RunConfig, validate
from lstmkit.errors import ConfigError, DiskError, Interrupted, RunDirError, TrainingError
from lstmkit.model import zero_head
from lstmkit.scaling import Scaler
from lstmkit.stopping import Signals, Stop
from lstmkit.trainstate import HISTORY_COLUMNS as METRIC_COLUMNS  # noqa: F401 (public name)
from lstmkit.trainstate import TrainState, check_fits


@dataclass
class Result:
    path: Path
    epochs: int  # epochs completed
    train_loss: float
    val_loss: float
    best_val_loss: float
    seconds: float
    stopped_early: bool
    state: TrainState | None = None  # this process's final state (each rank's own under DDP)


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


@dataclass
class _Session:
    """One training run in progress: what setup built and the epochs advance."""

    ctx: distributed.Context
    out: Path
    sig: Signals
    mode: str = ""  # "", "--resume" or "--overwrite": what the failure message repeats
    cfg: RunConfig | None = None
    writer: rundir.Writer | None = None  # rank 0's right to write the run directory
    work: Path | None = None  # where files go now: out, or (--overwrite) its staging sibling
    committed: int | None = None  # the epoch of the newest checkpoint on disk
    finished: bool = False
    task: TaskSetup | None = None
    model: torch.nn.Module | None = None
    opt: torch.optim.Optimizer | None = None
    sched: object = None
    device: torch.device | None = None
    steps_per_epoch: int = 0
    state: TrainState | None = None  # progress: epoch, step, history, best
    # forecasting runs: the best few checkpoints (validation, epoch, weights), best first,
    # whose average the state's best weights are (the reference forecast, epoch 0, among
    # the candidates), and the reference forecast's validation score (see _keep_best)
    snapshots: list[tuple[float, int, dict]] = field(default_factory=list)
    reference_val: float = math.inf


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
    returns once the run directory is complete.

    Raises :class:`~lstmkit.errors.Interrupted` on SIGINT/SIGTERM and
    :class:`~lstmkit.errors.DiskError` when a save fails, each saying what was kept."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    ctx = distributed.setup(cfg.train.device)
    mode = "--resume" if resume else "--overwrite" if overwrite else ""
    s = _Session(ctx, Path(out), Signals(), mode)
    ok = False
    try:
        try:
            s.sig.install()  # inside the try: a signal from here on is answered in one line
            _setup(s, cfg, resume, overwrite)
            _loop(s, progress)
            result = _finish(s)
        except BaseException as e:
            s.sig.ignore_from_now()  # a second Ctrl-C must not cut the cleanup short
            new = _failed(s, e)
            s.sig.restore(deliver=False)
            if new is e:
                raise
            raise new from None
        ok = True
        s.sig.restore(deliver=True)
        return result
    finally:
        distributed.teardown(ctx, ok)


@dataclass
class TaskSetup:
    """Everything the trainer takes from the task, in one place."""

    facts: tasks.TaskFacts
    scaler: Scaler
    kind: str  # regression | classification
    fv: dict | None  # multi-step validation (see TaskData.forecast_val)
    # training windows are encoded a batch at a time (a long series' windows are views of
    # one tensor; encoding them all at once would copy each value L times)
    train: tasks.Split
    val: tasks.Split  # encoded


def _task_setup(cfg: RunConfig) -> TaskSetup:
    td = tasks.make(cfg, cfg.train.seed)
    scaler = make_scaler(cfg, td)
    return TaskSetup(td.facts, scaler, td.kind, td.forecast_val, td.train, encode(td.val, scaler))


def _setup(s: _Session, cfg: RunConfig, resume: bool, overwrite: bool) -> None:
    """Everything before the first epoch. A new run checks its config, makes its data and
    runs its model once before it writes anything, so a config that cannot train leaves no
    run directory behind."""
    pending = False  # a first start that never reached its first checkpoint
    if resume:
        s.work, pending = distributed.on_main(s.ctx, _open, s, resume, overwrite)
        if pending and not (s.out / CONFIG).is_file():
            raise RunDirError(
                f"{s.out} was stopped before its first checkpoint, before its config was "
                f"saved: run your `lstmkit train --out {shlex.quote(str(s.out))}` command "
                "again, without --resume"
            )
        if not pending:  # sizes against the weights file before the model is built
            check_sizes(s.out)
        cfg, _ = load_config(s.out)  # the saved config is the one to continue
        cfg = tasks.resolve(validate(cfg))
    else:
        tasks.check_options(validate(cfg))
        cfg = tasks.resolve(cfg)  # None fields: the task's defaults, saved resolved
        distributed.on_main(s.ctx, rundir.check_new, s.out, overwrite)
    s.cfg = cfg
    s.device = distributed.train_device(s.ctx, pick_device(cfg.train.device))
    s.task = _task_setup(cfg)
    torch.manual_seed(cfg.train.seed)
    _build(s)
    _probe(s)
    if not resume:
        s.work, _ = distributed.on_main(s.ctx, _open, s, resume, overwrite)
    if resume and not pending:
        _restore(s, load_state(s.out / STATE))
    else:  # a new run, or one whose first start never reached its first checkpoint
        _start(s)


def _open(s: _Session, resume: bool, overwrite: bool) -> tuple[Path, bool]:
    """Rank 0: lock the run directory; the folder to write into, and whether its first
    checkpoint is still to be written."""
    with s.sig.held():  # a signal now waits until the writer exists, which then cleans up
        s.writer = rundir.open_resume(s.out) if resume else rundir.open_new(s.out, overwrite)
    return s.writer.work, s.writer.pending


def _build(s: _Session) -> None:
    cfg, fv = s.cfg, s.task.fv
    s.model = build_model(cfg, s.task.facts).to(s.device)
    if fv is not None:  # start from the scaling's reference forecast (a zero correction)
        zero_head(s.model)
    opt_cls = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
    # fused: one kernel for all parameters instead of ~6 small ops each (a sixth of a small
    # model's step time on the CPU); torch has it for CPU and CUDA float parameters.
    fused = s.device.type in ("cpu", "cuda")
    s.opt = opt_cls(
        s.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=fused
    )
    n = len(s.task.train)
    drawn = min(n, cfg.train.epoch_windows or n)  # windows an epoch samples (all: 0)
    shard = distributed.shard_size(s.ctx, drawn)  # all of it when alone
    s.steps_per_epoch = math.ceil(shard / cfg.train.batch_size)
    total = s.steps_per_epoch * cfg.train.epochs
    s.sched = torch.optim.lr_scheduler.LambdaLR(s.opt, _schedule(cfg, total))


def _probe(s: _Session) -> None:
    """One forward and backward pass on one training window, random state untouched: a model
    its backend cannot run fails here, before the run directory is written."""
    devices = [s.device.index or 0] if s.device.type == "cuda" else []
    split = s.task.train
    with torch.random.fork_rng(devices=devices):
        b = encode(tasks.Split(split.x[:1], split.y[:1], split.mask[:1]), s.task.scaler)
        x, y, m = b.x.to(s.device), b.y.to(s.device), b.mask.to(s.device)
        masked_loss(s.model(x), y, m, s.task.kind).backward()
    for p in s.model.parameters():
        p.grad = None


def _start(s: _Session) -> None:
    """A new run's first checkpoint (step 0), which commits the run directory."""
    s.state = TrainState(
        model={}, optimizer={}, scheduler={}, rng=torch.get_rng_state(), best_weights=_cpu(s)
    )
    if s.task.fv is not None:  # the reference forecast is a candidate too (epoch 0)
        s.state.best_val, s.state.best_epoch = _validate(s), 0
        s.reference_val = s.state.best_val
        reference = (s.reference_val, 0, s.state.best_weights)
        s.snapshots = [reference] if math.isfinite(s.reference_val) else []
    if s.ctx.is_main:
        with s.sig.held():
            save_run(s.work, s.cfg, s.task.facts, s.state.best_weights, s.task.scaler)
        _checkpoint(s)


def _restore(s: _Session, st: TrainState) -> None:
    """Continue from ``st``: checked against the model first, then loaded; the files derived
    from it are rewritten where a kill left them behind it."""
    where = str(s.out / STATE)
    check_fits(st, s.model, s.opt, s.cfg.train.epochs, s.steps_per_epoch, where)
    try:
        s.model.load_state_dict(st.model)
        s.opt.load_state_dict(st.optimizer)
        s.sched.load_state_dict(st.scheduler)
        torch.set_rng_state(st.rng)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise RunDirError(f"{where} does not fit its run ({first})") from None
    s.state, s.committed = st, st.epoch
    if s.task.fv is not None:  # the members are not saved: after a resume, their average
        best = (st.best_val, st.best_epoch, st.best_weights)
        s.snapshots = [best] if math.isfinite(st.best_val) else []
        s.reference_val = _reference_val(s)
    if s.ctx.is_main:
        with s.sig.held():
            write_derived(s.work, st)


def _reference_val(s: _Session) -> float:
    """The validation score of the reference forecast: any weights with a zero head."""
    model = zero_head(copy.deepcopy(s.model))
    return forecast_error(model, s.task.scaler, s.task.fv, s.cfg.data.length, s.device)


def _cpu(s: _Session) -> dict:
    return {k: v.detach().cpu().clone() for k, v in s.model.state_dict().items()}


def _capture(s: _Session) -> TrainState:
    """The full state now: the progress record plus model, optimizer, scheduler and RNG."""
    return replace(
        s.state,
        model={k: v.detach().cpu() for k, v in s.model.state_dict().items()},
        optimizer=s.opt.state_dict(),
        scheduler=s.sched.state_dict(),
        rng=torch.get_rng_state(),
    )


def _checkpoint(s: _Session) -> None:
    """Rank 0 writes one checkpoint; signals wait until it is whole."""
    if not s.ctx.is_main:
        return
    with s.sig.held():
        state = _capture(s)
        save_state(s.work / STATE, state)  # the commit point: resumable from here
        s.committed = s.state.epoch
        s.writer.committed()
        write_derived(s.work, state)  # a resume rewrites these if this fails or is cut


def _validate(s: _Session) -> float:
    if s.task.fv is not None:
        return forecast_error(s.model, s.task.scaler, s.task.fv, s.cfg.data.length, s.device)
    return evaluate_loss(s.model, s.task.val, s.task.kind, s.device)


def _loop(s: _Session, progress: bool | None) -> None:
    """Epochs until the last, early stopping or --max-time; a checkpoint every
    ``checkpoint_every`` seconds (resume replays the epochs since, so the result is the same)."""
    if progress is None:
        progress = sys.stderr.isatty()
    st, cfg = s.state, s.cfg
    total = s.steps_per_epoch * cfg.train.epochs
    bar = tqdm(
        total=total,
        initial=st.step,
        disable=not (progress and s.ctx.is_main),
        file=sys.stderr,
        unit="step",
        dynamic_ncols=True,
    )
    clock = _Clock(time.perf_counter() - st.seconds, cfg.train.max_time)
    last_saved = time.perf_counter()
    if s.device.type == "cpu":
        torch.set_flush_denormal(True)  # BPTT gradients of long sequences underflow; x86 crawls
    try:
        s.model.train()
        net = distributed.wrap(s.ctx, s.model, s.device)  # the model itself when alone
        while st.epoch < cfg.train.epochs and not st.stopped:
            st.stopped = _epoch(s, net, bar, clock)
            due = time.perf_counter() - last_saved >= cfg.train.checkpoint_every
            if due or st.stopped or st.epoch == cfg.train.epochs:
                _checkpoint(s)
                last_saved = time.perf_counter()
    finally:
        bar.close()
        if s.device.type == "cpu":
            torch.set_flush_denormal(False)


@dataclass
class _Clock:
    started: float  # perf_counter() at this run's start, less the time of earlier sessions
    limit: float  # --max-time (0: none)

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def out_of_time(self) -> bool:
        return self.limit > 0 and self.seconds() >= self.limit


def _epoch(s: _Session, net, bar, clock: _Clock) -> bool:
    """One epoch's steps and its validation; True when training should stop here."""
    st, cfg, ctx = s.state, s.cfg, s.ctx
    g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + st.epoch)
    order = torch.randperm(len(s.task.train), generator=g)
    order = distributed.shard(ctx, order)  # this rank's part; all of it when alone
    running, done = 0.0, 0
    for i in range(s.steps_per_epoch):
        if ctx.world_size == 1 and clock.out_of_time():  # --max-time: end the epoch here
            break
        if ctx.world_size > 1:  # dropout masks differ between ranks, and resume alike
            torch.manual_seed(distributed.step_seed(cfg.train.seed, st.step, ctx.rank))
        idx = order[i * cfg.train.batch_size : (i + 1) * cfg.train.batch_size]
        running += _step(s, net, idx)
        done += 1
        bar.update(1)
        bar.set_postfix(epoch=st.epoch + 1, loss=f"{running / done:.4g}")
    st.epoch += 1
    return _end_epoch(s, distributed.mean_value(ctx, running) / max(done, 1), clock)


def _step(s: _Session, net, idx: Tensor) -> float:
    """One optimizer step on the windows ``idx``; the loss before it."""
    split, st = s.task.train, s.state
    batch = encode(tasks.Split(split.x[idx], split.y[idx], split.mask[idx]), s.task.scaler)
    x, y, m = batch.x.to(s.device), batch.y.to(s.device), batch.mask.to(s.device)
    loss = masked_loss(net(x), y, m, s.task.kind)
    if not torch.isfinite(loss):
        where = f"at step {st.step + 1} (epoch {st.epoch + 1})"
        raise TrainingError(f"loss became {loss.item()} {where}")
    s.opt.zero_grad(set_to_none=True)
    loss.backward()
    if s.cfg.train.clip > 0:
        torch.nn.utils.clip_grad_norm_(s.model.parameters(), s.cfg.train.clip)
    s.opt.step()
    s.sched.step()
    st.step += 1
    return loss.item()


def _end_epoch(s: _Session, train_loss: float, clock: _Clock) -> bool:
    """Validate, record the epoch, keep the best weights; whether to stop (patience, time)."""
    st, ctx = s.state, s.ctx
    val = distributed.broadcast_value(ctx, _validate(s))  # one decision on every rank
    st.seconds = clock.seconds()
    st.history.append(
        {
            "epoch": st.epoch,
            "step": st.step,
            "train_loss": train_loss,
            "val_loss": val,
            "lr": s.opt.param_groups[0]["lr"],
            "seconds": st.seconds,
        }
    )
    _keep_best(s, val)
    patience = s.cfg.train.patience
    stop = patience > 0 and st.epoch - st.best_epoch >= patience
    # one decision for every rank (rank 0's clock)
    return stop | (distributed.broadcast_value(ctx, float(clock.out_of_time())) > 0)


def _keep_best(s: _Session, val: float) -> None:
    """Keep this epoch's weights if they are the best so far; a forecasting run keeps the
    average of its ``csv.average_best`` best checkpoints instead. The choice among ~60
    checkpoints on one short validation part is noisy, and neighbouring good checkpoints
    disagree mostly in that noise: averaging them measured better on held-out data than
    the single best (README, forecasting). The best member's score stays ``best_val``."""
    st = s.state
    k = (s.cfg.csv.average_best or 1) if s.task.fv is not None else 1
    if k == 1:
        if val < st.best_val:
            st.best_val, st.best_epoch, st.best_weights = val, st.epoch, _cpu(s)
        return
    if not math.isfinite(val) or (len(s.snapshots) == k and val >= s.snapshots[-1][0]):
        return  # a diverged forecast is never a member
    s.snapshots = sorted([*s.snapshots, (val, st.epoch, _cpu(s))], key=lambda m: m[0])[:k]
    st.best_val, st.best_epoch = s.snapshots[0][0], s.snapshots[0][1]
    st.best_weights = _guarded(s, average_weights([w for _, _, w in s.snapshots]))


def _guarded(s: _Session, weights: dict) -> dict:
    """``weights``, unless their validation forecasts are worse than the reference
    forecast's: then the same weights with a zero head (the reference forecast, whatever the
    LSTM's weights). The average of good checkpoints is not always good itself."""
    model = copy.deepcopy(s.model)
    model.load_state_dict(weights)
    if forecast_error(model, s.task.scaler, s.task.fv, s.cfg.data.length, s.device) <= (
        s.reference_val
    ):
        return weights
    return {k: v.detach().cpu().clone() for k, v in zero_head(model).state_dict().items()}


def average_weights(members: list[dict]) -> dict:
    """The element-wise mean of state_dicts of one architecture (non-float entries: the
    first member's)."""
    first = members[0]
    return {
        name: torch.stack([m[name] for m in members]).mean(0) if t.is_floating_point() else t
        for name, t in first.items()
    }


def _finish(s: _Session) -> Result:
    """Prediction intervals (forecast tasks), the overwrite swap, the result."""
    st, fv = s.state, s.task.fv
    if s.ctx.is_main:
        with s.sig.held():
            if fv is not None:  # intervals from the best model's validation residuals
                from lstmkit.forecast import calibrate, save_calibration

                s.model.load_state_dict(st.best_weights)
                cal = calibrate(s.model.cpu(), s.task.scaler, fv, s.cfg.data.length)
                save_calibration(s.work, cal)
            s.writer.finish()
            s.finished = True
    last = st.history[-1]
    return Result(
        s.out,
        st.epoch,
        last["train_loss"],
        last["val_loss"],
        st.best_val,
        last["seconds"],
        st.stopped,
        _capture(s),
    )


def _failed(s: _Session, e: BaseException) -> BaseException:
    """Leave the run directory as the message will say, and say it in one line: a stop by
    signal, a failed save or a NaN loss each name what was kept and what to run."""
    if s.writer is not None:
        s.writer.abort()  # an unresumable start (or staging) goes; a committed run stays
    kept, command = _kept(s)
    if isinstance(e, Stop):
        where = f"in epoch {s.state.epoch + 1}" if s.state else "before training started"
        if s.finished:
            where = "after the run finished"
        return Interrupted(f"interrupted by {e.name} {where}; {kept}{command}", 128 + e.signum)
    if isinstance(e, DiskError):
        return DiskError(f"{e}; {kept}{command}")
    if isinstance(e, TrainingError):  # running again would meet the same NaN: no command
        return TrainingError(f"{e}; {kept}")
    return e


def _kept(s: _Session) -> tuple[str, str]:
    """(what the run directory holds now, ": the command that goes on" or "")."""
    q = shlex.quote(str(s.out))
    if s.finished:
        return f"the run in {s.out} is complete", ""
    if s.mode == "--overwrite":
        return (
            f"{s.out} is unchanged (its replacement was discarded)",
            ": run the same command again",
        )
    if s.committed is None and s.mode == "--resume":
        return f"{s.out} is as it was", f": `lstmkit train --out {q} --resume` continues it"
    if s.committed is None:
        return "nothing was kept", ": run the same command again"
    return (
        f"the checkpoint of epoch {s.committed} in {s.out} is kept",
        f": continue with `lstmkit train --out {q} --resume`",
    )
