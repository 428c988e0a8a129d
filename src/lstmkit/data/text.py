"""Character-level language modelling of a UTF-8 text file (``--text FILE``).

The vocabulary is every distinct character of the file, sorted; it is saved in the run
(task meta ``vocab``) so that ``lstmkit generate`` can map characters to ids. The first 90%
of the characters train, the last 10% validate (contiguous); the test split is the
validation text (there is no third part). Windows of ``length`` characters predict the next
character at every step: x (N, L) int64 ids, y (N, L) int64 next ids, every step counted.

- train: ``num_train`` windows at random offsets of the training text (drawn with the seed);
- val/test: every non-overlapping window of the validation text (``num_val``/``num_test``
  do not apply), so the figures cover all of it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from lstmkit import metrics
from lstmkit.config import RunConfig
from lstmkit.data import BaseTask, Split, TaskData, all_steps
from lstmkit.errors import ConfigError, DataError

TRAIN_FRACTION = 0.9
DEFAULTS = {
    "data.length": 64,
    "data.num_train": 16384,
    "model.hidden_size": 256,
    "train.epochs": 2,
    "train.batch_size": 32,
    "train.lr": 0.005,
}


def read_text(path: str) -> tuple[str, str]:
    """(text, sha256 of its bytes) of UTF-8 file ``path``; DataError if unusable."""
    if not path:
        raise ConfigError("the text task needs a file: pass --text FILE")
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"text file {p} does not exist" + (" (it is a directory)" if p.is_dir() else "")
        )
    raw = p.read_bytes()
    if not raw:
        raise DataError(f"text file {p} is empty: expected UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"text file {p} is not UTF-8 text: byte {e.start} is {raw[e.start]:#04x}"
        ) from None
    return text, hashlib.sha256(raw).hexdigest()


def _windows(ids: torch.Tensor, starts: torch.Tensor, length: int) -> Split:
    idx = starts[:, None] + torch.arange(length + 1)
    seq = ids[idx]
    x, y = seq[:, :-1], seq[:, 1:]
    return Split(x, y, all_steps(x))


def make(cfg: RunConfig, seed: int) -> TaskData:
    text, digest = read_text(cfg.text.file)
    vocab = "".join(sorted(set(text)))
    lookup = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([lookup[c] for c in text], dtype=torch.long)
    cut = int(len(ids) * TRAIN_FRACTION)
    L, path = cfg.data.length, cfg.text.file
    if cut < L + 1 or len(ids) - cut < L + 1:
        raise DataError(
            f"text file {path} has {len(ids)} characters; data.length {L} needs at least "
            f"{L + 1} in each of the training (90%) and validation (10%) parts, i.e. "
            f"{(L + 1) * 10} in all"
        )
    g = torch.Generator().manual_seed(seed)
    train = _windows(ids, torch.randint(0, cut - L, (cfg.data.num_train,), generator=g), L)
    val = _windows(ids, torch.arange(cut, len(ids) - L, L), L)
    meta = {"text": path, "sha256": digest, "chars": len(ids), "vocab": vocab}
    return TaskData(
        train,
        val,
        val,
        input_size=len(vocab),
        output_size=len(vocab),
        kind="classification",
        tokens=True,
        series_scaling=False,
        default_scaling="none",
        meta=meta,
    )


class Text(BaseTask):
    name = section = "text"
    defaults = DEFAULTS
    kind, series, tokens = "classification", False, True

    def make(self, cfg: RunConfig, seed: int) -> TaskData:
        return make(cfg, seed)

    def check_source(self, cfg: RunConfig, saved: dict) -> None:
        """DataError unless the file is the one the run was trained on, checked before it
        is read as text (a run directory may name any file: nothing of it is echoed)."""
        p = Path(cfg.text.file)
        if not p.is_file() or hashlib.sha256(p.read_bytes()).hexdigest() != saved.get("sha256"):
            raise DataError("the run's text file is missing or changed since training")

    def score(self, logits, y, mask) -> dict[str, float]:
        return metrics.bits_per_char(logits, y, mask)

    def baselines(self, td: TaskData, cfg: RunConfig) -> dict[str, torch.Tensor]:
        """The unigram model: the training text's character frequencies (add-one)."""
        text, _ = read_text(cfg.text.file)
        lookup = {c: i for i, c in enumerate(td.meta["vocab"])}
        train = torch.tensor([lookup[c] for c in text[: int(len(text) * TRAIN_FRACTION)]])
        counts = torch.bincount(train, minlength=td.output_size).double() + 1
        logp = (counts / counts.sum()).log().float()
        return {"unigram": logp.expand(*td.test.y.shape, -1)}

    def describe(self, td: TaskData) -> str:
        return "validation text, next character at every step"


TASK = Text()
