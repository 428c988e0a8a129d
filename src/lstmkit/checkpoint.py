"""Run directories: written atomically, loaded with checks.

A run directory holds ``config.json`` (resolved config, task facts, lstmkit and format
versions), ``model.safetensors``, ``scaler.json``, ``metrics.csv`` and ``train_state.pt`` (what
``train --resume`` needs). Every file is written to a temporary file beside it, flushed,
fsynced and renamed into place, so a kill at any moment leaves the previous file whole.
Weights load only from safetensors; the training state loads with ``weights_only=True``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from lstmkit import __version__
from lstmkit.config import RunConfig, from_dict, to_dict
from lstmkit.errors import ConfigError, RunDirError
from lstmkit.model import SequenceModel
from lstmkit.scaling import Scaler

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
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def write_json(path: Path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def save_state(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def load_state(path: Path) -> dict:
    """The training state, loaded with ``weights_only=True``: a pickle payload is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunDirError(
            f"run directory {path.parent} has no {path.name} to resume from"
        ) from None
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, …
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunDirError(f"{path} is not a loadable training state ({first})") from None


@dataclass
class Run:
    """A trained model with everything needed to use it."""

    path: Path
    config: RunConfig
    task: dict  # input_size, output_size, kind, tokens, meta
    model: SequenceModel
    scaler: Scaler


def build_model(cfg: RunConfig, task: dict) -> SequenceModel:
    m = cfg.model
    return SequenceModel(
        input_size=task["input_size"],
        hidden_size=m.hidden_size,
        output_size=task["output_size"],
        num_layers=m.num_layers,
        dropout=m.dropout,
        backend=m.backend,
        vocab_size=task["input_size"] if task.get("tokens") else None,
        embedding_dim=m.embedding_dim,
        **m.variant(),
    )


def save_run(path: Path, cfg: RunConfig, task: dict, weights: dict, scaler: Scaler) -> None:
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
            "task": task,
        },
    )
    write_json(path / SCALER, scaler.to_dict())
    save_weights(path, weights)


def save_weights(path: Path, weights: dict) -> None:
    """Write model.safetensors (``weights``: a model's state_dict) atomically."""
    weights = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    atomic_write(Path(path) / WEIGHTS, st_save(weights))


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path} is corrupted: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise RunDirError(f"{path} is corrupted: expected a JSON object, got {type(d).__name__}")
    return d


def load_run(path: str | Path, device: str = "cpu") -> Run:
    """Load a run directory; every way it can be wrong raises RunDirError saying which."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"run directory {path} does not exist (train one with `lstmkit train`)")
    missing = [f for f in REQUIRED if not (path / f).is_file()]
    if missing:
        raise RunDirError(f"run directory {path} is incomplete: missing {', '.join(missing)}")
    meta = _read_json(path / CONFIG)
    version = meta.get("format_version")
    if version not in READABLE:
        raise RunDirError(
            f"{path / CONFIG} has format version {version!r}; this lstmkit reads versions "
            f"{', '.join(map(str, READABLE))}"
        )
    try:
        cfg = from_dict(meta["config"], source=str(path / CONFIG), legacy=version == 1)
        task = meta["task"]
        model = build_model(cfg, task)
    except ConfigError as e:
        raise RunDirError(str(e)) from None
    except (KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"{path / CONFIG} is incomplete or invalid: {e}") from None
    scaler = Scaler.from_dict(_read_json(path / SCALER))
    try:
        weights = st_load((path / WEIGHTS).read_bytes())
    except (SafetensorError, ValueError, OSError) as e:
        raise RunDirError(f"{path / WEIGHTS} is truncated or corrupted ({e})") from None
    expected = model.state_dict()
    if set(weights) != set(expected):
        extra, lacking = sorted(set(weights) - set(expected)), sorted(set(expected) - set(weights))
        raise RunDirError(
            f"{path / WEIGHTS} does not match its config: unexpected {extra}, missing {lacking}"
        )
    for k, v in expected.items():
        if weights[k].shape != v.shape:
            raise RunDirError(
                f"{path / WEIGHTS} does not match its config: {k} has shape "
                f"{tuple(weights[k].shape)}, config implies {tuple(v.shape)}"
            )
    model.load_state_dict(weights)
    model.to(device).eval()
    return Run(path, cfg, task, model, scaler)
