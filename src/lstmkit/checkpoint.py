"""Run directories: written atomically, loaded with checks.

A run directory holds ``config.json`` (resolved config, task facts, lstmkit and format
versions), ``model.safetensors``, ``scaler.json``, ``metrics.csv`` and ``train_state.pt`` (what
``train --resume`` needs). Every file is written to a temporary file beside it, flushed,
fsynced and renamed into place, so a kill at any moment leaves the previous file whole;
a write the disk refuses (full, read-only, no permission) is a one-line DiskError.
``train_state.pt`` is the commit point of a checkpoint (see :mod:`lstmkit.trainstate`).

Loading trusts nothing: config.json's sizes are checked against the weights file's header
(8-byte length + JSON) before a model is allocated; weights must be floating and finite,
scaler values finite with a non-zero scale. Weights load only from safetensors; the training
state loads with ``weights_only=True``.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from lstmkit import __version__
from lstmkit.config import RunConfig, from_dict, to_dict
from lstmkit.data import TaskFacts
from lstmkit.errors import ConfigError, DiskError, RunDirError
from lstmkit.model import SequenceModel
from lstmkit.rundir import NEW
from lstmkit.scaling import Scaler
from lstmkit.trainstate import HISTORY_COLUMNS, TrainState

FORMAT_VERSION = 2  # 2: every task's own options in a section of its own ([csv] ...)
READABLE = (1, 2)
CONFIG, WEIGHTS, SCALER, METRICS, STATE = (
    "config.json",
    "model.safetensors",
    "scaler.json",
    "metrics.csv",
    "train_state.pt",
)
REQUIRED = (CONFIG, WEIGHTS, SCALER)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.
    A disk that refuses (ENOSPC, EROFS, EACCES, ...) is a DiskError; the old file stays."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise DiskError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    _sync_dir(path.parent)


def _sync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable, where the system allows: the new file is in place
    and its data synced already, so a directory that refuses fsync (EINVAL on some network
    file systems) must not turn a save that happened into an error."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def write_json(path: Path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_if_changed(path: Path, data: bytes) -> None:
    """atomic_write, skipped when ``path`` already holds exactly ``data`` (a resume that
    repairs a run's derived files rewrites only what a kill left stale)."""
    try:
        same_size = path.is_file() and path.stat().st_size == len(data)
        if same_size and not path.is_symlink() and path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write(path, data)


def save_state(path: Path, state: TrainState) -> None:
    atomic_write(path, state.to_bytes())


def load_state(path: Path) -> TrainState:
    """The training state, loaded with ``weights_only=True`` (a pickle payload is refused)
    and checked field by field."""
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunDirError(
            f"run directory {path.parent} has no {path.name} to resume from"
        ) from None
    except RecursionError:
        raise RunDirError(f"{path} is not a loadable training state (nested too deeply)") from None
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, …
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise RunDirError(f"{path} is not a loadable training state ({first})") from None
    return TrainState.from_dict(d, str(path))


def metrics_csv(history: list[dict]) -> bytes:
    """metrics.csv's bytes: a header and one row per epoch (see trainstate.HISTORY_COLUMNS)."""
    lines = [",".join(HISTORY_COLUMNS)]
    lines += [
        ",".join(f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]) for c in HISTORY_COLUMNS)
        for r in history
    ]
    return ("\n".join(lines) + "\n").encode()


def write_derived(path: Path, state: TrainState) -> None:
    """model.safetensors and metrics.csv as ``state`` implies them."""
    write_if_changed(Path(path) / WEIGHTS, _weights_bytes(state.best_weights))
    write_if_changed(Path(path) / METRICS, metrics_csv(state.history))


@dataclass
class Run:
    """A trained model with everything needed to use it."""

    path: Path
    config: RunConfig
    task: TaskFacts
    model: SequenceModel
    scaler: Scaler


def build_model(cfg: RunConfig, task: TaskFacts) -> SequenceModel:
    m = cfg.model
    return SequenceModel(
        input_size=task.input_size,
        hidden_size=m.hidden_size,
        output_size=task.output_size,
        num_layers=m.num_layers,
        dropout=m.dropout,
        backend=m.backend,
        vocab_size=task.input_size if task.tokens else None,
        embedding_dim=m.embedding_dim,
        **m.variant(),
    )


def save_run(path: Path, cfg: RunConfig, task: TaskFacts, weights: dict, scaler: Scaler) -> None:
    """Write config.json, scaler.json and model.safetensors (``weights``: a model's
    state_dict), each atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_json(
        path / CONFIG,
        {
            "format_version": FORMAT_VERSION,
            "lstmkit_version": __version__,
            "config": to_dict(cfg),
            "task": task.to_dict(),
        },
    )
    write_json(path / SCALER, scaler.to_dict())
    save_weights(path, weights)


def save_weights(path: Path, weights: dict) -> None:
    """Write model.safetensors (``weights``: a model's state_dict) atomically."""
    atomic_write(Path(path) / WEIGHTS, _weights_bytes(weights))


def _weights_bytes(weights: dict) -> bytes:
    return st_save({k: v.detach().cpu().contiguous() for k, v in weights.items()})


MAX_JSON_BYTES = 64 << 20  # far above any config.json or scaler.json lstmkit writes
FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}


def _read_json(path: Path) -> dict:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise RunDirError(f"{path} is larger than {MAX_JSON_BYTES >> 20} MiB: not a run file")
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path} is corrupted: not valid JSON ({e})") from None
    except RecursionError:
        raise RunDirError(f"{path} is corrupted: JSON nested too deeply") from None
    except OSError as e:
        raise RunDirError(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(d, dict):
        raise RunDirError(f"{path} is corrupted: expected a JSON object, got {type(d).__name__}")
    return d


def load_config(path: str | Path) -> tuple[RunConfig, TaskFacts]:
    """(config, task facts) of run directory ``path``, checked (RunDirError otherwise)."""
    meta = _read_json(Path(path) / CONFIG)
    version = meta.get("format_version")
    if version not in READABLE:
        raise RunDirError(
            f"{Path(path) / CONFIG} has format version {version!r:.40}; this lstmkit reads "
            f"versions {', '.join(map(str, READABLE))}"
        )
    try:
        cfg = from_dict(meta["config"], source=str(Path(path) / CONFIG), legacy=version == 1)
        task = TaskFacts.from_dict(meta["task"], str(Path(path) / CONFIG))
    except RunDirError:
        raise
    except ConfigError as e:
        raise RunDirError(str(e)) from None
    except RecursionError:
        raise RunDirError(f"{Path(path) / CONFIG} is nested too deeply") from None
    except (KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"{Path(path) / CONFIG} is incomplete or invalid: {e}") from None
    return cfg, task


def expected_weights(cfg: RunConfig, task: TaskFacts, where: str) -> dict[str, tuple]:
    """The parameter names and shapes ``cfg`` builds, found on the meta device: nothing is
    allocated, whatever sizes an untrusted config.json names."""
    try:
        with torch.device("meta"):
            model = build_model(cfg, task)
    except ConfigError as e:
        raise RunDirError(str(e)) from None
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise RunDirError(f"{where} describes no model lstmkit can build ({first})") from None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def read_header(path: Path) -> dict[str, tuple[str, tuple]]:
    """{name: (dtype, shape)} from a safetensors file's header alone (8-byte little-endian
    length, then JSON), with every tensor's byte range checked against the file's size."""
    bad = f"{path} is truncated or corrupted"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > min(size - 8, MAX_JSON_BYTES):
                raise RunDirError(f"{bad} (header length {n}, file {size} bytes)")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RunDirError(f"{bad} (header is not JSON)") from None
    except OSError as e:
        raise RunDirError(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(header, dict):
        raise RunDirError(f"{bad} (header is not an object)")
    header.pop("__metadata__", None)
    out, data = {}, size - 8 - n
    for name, info in header.items():
        try:
            dtype, shape, (lo, hi) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            ok = all(isinstance(d, int) and d >= 0 for d in (*shape, lo, hi)) and lo <= hi <= data
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise RunDirError(f"{bad} (entry {name!r:.80} is malformed)")
        if dtype not in FLOAT_DTYPES:
            raise RunDirError(f"{path}: weight {name!r:.80} is {dtype!r:.20}, not a float type")
        if hi - lo != math.prod(shape) * FLOAT_DTYPES[dtype]:
            raise RunDirError(f"{bad} (entry {name!r:.80} has the wrong byte length)")
        out[name] = (dtype, shape)
    return out


def _check_weights_file(path: Path, cfg: RunConfig, task: TaskFacts, where: str) -> None:
    """The weights file holds exactly the tensors ``cfg`` builds: read from its header, the
    model's shapes found on the meta device, its layer count checked first (building a
    million meta layers would take long before failing)."""
    header = read_header(path)
    layers = cfg.model.num_layers
    if isinstance(layers, int) and layers > len(header):
        raise RunDirError(
            f"{path} does not match its config: {layers} layers, but it holds {len(header)} tensors"
        )
    expected = expected_weights(cfg, task, where)
    if set(header) != set(expected):
        extra, lacking = sorted(set(header) - set(expected)), sorted(set(expected) - set(header))
        raise RunDirError(
            f"{path} does not match its config: unexpected {extra[:5]}, missing {lacking[:5]}"
        )
    for k, shape in expected.items():
        if header[k][1] != shape:
            raise RunDirError(
                f"{path} does not match its config: {k} has shape {header[k][1]}, config "
                f"implies {shape}"
            )


def check_sizes(path: Path) -> None:
    """Raise RunDirError unless run ``path``'s config.json describes the model its weights
    file holds (read from the header; nothing allocated): before a resume builds it."""
    cfg, task = load_config(path)
    _check_weights_file(Path(path) / WEIGHTS, cfg, task, str(Path(path) / CONFIG))


def _check_scaler(scaler: Scaler, path: Path) -> Scaler:
    if not (math.isfinite(scaler.center) and math.isfinite(scaler.scale) and scaler.scale != 0):
        raise RunDirError(
            f"{path} must hold a finite center and a finite non-zero scale, got center="
            f"{scaler.center!r}, scale={scaler.scale!r}"
        )
    return scaler


def load_run(path: str | Path, device: str = "cpu") -> Run:
    """Load a run directory; every way it can be wrong raises RunDirError saying which.
    Sizes are checked against the weights file before anything the config names is built."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"run directory {path} does not exist (train one with `lstmkit train`)")
    if (path / NEW).is_file() and not (path / STATE).exists():  # see lstmkit.rundir
        raise RunDirError(
            f"run directory {path} is a start that stopped before its first checkpoint: "
            f"train it again with `lstmkit train --out {shlex.quote(str(path))}`"
        )
    missing = [f for f in REQUIRED if not (path / f).is_file()]
    if missing:
        raise RunDirError(f"run directory {path} is incomplete: missing {', '.join(missing)}")
    cfg, task = load_config(path)
    _check_weights_file(path / WEIGHTS, cfg, task, str(path / CONFIG))
    scaler = _check_scaler(Scaler.from_dict(_read_json(path / SCALER)), path / SCALER)
    try:
        weights = st_load((path / WEIGHTS).read_bytes())
    except (SafetensorError, ValueError, OSError) as e:
        raise RunDirError(f"{path / WEIGHTS} is truncated or corrupted ({e})") from None
    for k, v in weights.items():
        if not torch.isfinite(v).all():
            raise RunDirError(f"{path / WEIGHTS}: weight {k} holds NaN or Inf")
    model = build_model(cfg, task)  # sizes proven by the file: as large as what it holds
    model.load_state_dict(weights)
    model.to(device).eval()
    return Run(path, cfg, task, model, scaler)
