"""Typed configuration. Defaults live here; CLI flags and TOML keys derive from the fields."""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from lstmkit.errors import ConfigError


@dataclass
class ModelConfig:
    hidden_size: int | None = None  # None: the task's default (see lstmkit.data.resolve)
    num_layers: int = 1
    dropout: float = 0.0
    backend: str = "auto"
    embedding_dim: int = 32  # used by token tasks (copy, text) only
    # LSTM variants (lstmkit.variants.Variant checks them; all off: the plain LSTM)
    forget_bias: float = 0.0  # added to the forget gate's bias at initialisation
    init: str = "uniform"  # uniform (torch's) | chrono (Tallec & Ollivier 2018)
    t_max: float | None = None  # chrono's longest dependency; None: data.length
    layer_norm: bool = False
    peephole: bool = False
    coupled: bool = False  # f = 1 - i
    recurrent_dropout: float = 0.0
    zoneout: float | list[float] = 0.0  # one probability, or [z_c, z_h]
    weight_drop: float = 0.0
    cell_clip: float | None = None  # None: no clipping

    def variant(self) -> dict:
        """The variant options as keyword arguments of ``lstmkit.LSTM``."""
        z = self.zoneout
        return {
            "forget_bias": self.forget_bias,
            "init": self.init,
            "t_max": self.t_max,
            "layer_norm": self.layer_norm,
            "peephole": self.peephole,
            "coupled": self.coupled,
            "recurrent_dropout": self.recurrent_dropout,
            "zoneout": tuple(z) if isinstance(z, list) else z,
            "weight_drop": self.weight_drop,
            "cell_clip": self.cell_clip,
        }


@dataclass
class DataConfig:
    task: str = "counting"
    length: int | None = None  # steps per training window; None: the task's default
    num_train: int | None = None  # windows (sequences) per split; None: the task's default
    num_val: int | None = None
    num_test: int | None = None
    low: int = 0  # counting: first values drawn from low..high
    high: int = 9
    # auto (the task's choice) | none | standard | offset | diff | drift | seasonal
    scaling: str = "auto"
    period: int | None = None  # seasonal period (seasonal scaler, seasonal-naive baseline)
    csv: str = ""  # csv task: the file; "" = the packaged airline series
    column: str = ""  # csv task: the value column; "" = the file's only numeric column
    date_column: str = ""  # csv task: optional column of dates, checked to be increasing
    test_size: int | None = None  # csv task: final steps held out as test (and as validation)
    horizon: int | None = None  # csv task: steps forecast for validation; None: the test size
    fill: str = "none"  # csv task, blank cells and missing timestamps: none (an error) | ffill |
    # interpolate | drop
    rows: int = 0  # csv task: use only the first N values (0: all); backtest --refit sets it
    text: str = ""  # text task: a UTF-8 text file


@dataclass
class TrainConfig:
    epochs: int | None = None  # None (here and above): the task's default
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str = "adam"  # adam | adamw
    weight_decay: float = 0.0
    schedule: str = "cosine"  # constant | cosine
    clip: float = 1.0  # max gradient norm; 0 turns clipping off
    patience: int = 0  # epochs without validation improvement before stopping; 0 = never
    max_time: float = 0.0  # seconds of training before stopping (mid-epoch); 0 = no limit
    checkpoint_every: float = 2.0  # seconds between checkpoints (at epoch ends); 0 = every epoch
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
CHOICES = {
    ("model", "backend"): None,  # checked by lstmkit.backends at model build
    ("data", "scaling"): ("auto", "none", "standard", "offset", "diff", "drift", "seasonal"),
    ("data", "fill"): ("none", "ffill", "interpolate", "drop"),
    ("train", "optimizer"): ("adam", "adamw"),
    ("train", "schedule"): ("constant", "cosine"),
    ("train", "device"): ("auto", "cpu", "cuda"),
}
POSITIVE = {
    ("model", "hidden_size"),
    ("model", "num_layers"),
    ("model", "embedding_dim"),
    ("data", "length"),
    ("data", "num_train"),
    ("data", "num_val"),
    ("data", "num_test"),
    ("data", "period"),
    ("data", "horizon"),
    ("train", "epochs"),
    ("train", "batch_size"),
    ("train", "lr"),
}
NON_NEGATIVE = {
    ("train", "max_time"),
    ("data", "test_size"),  # 0: train on all the data (a production forecast)
    ("data", "rows"),
    ("train", "weight_decay"),
    ("train", "clip"),
    ("train", "patience"),
    ("train", "checkpoint_every"),
}
# Fields whose None means "the task's default", filled by lstmkit.data.resolve before training.
TASK_DEFAULT = {
    ("model", "hidden_size"),
    ("data", "length"),
    ("data", "num_train"),
    ("data", "num_val"),
    ("data", "num_test"),
    ("data", "period"),
    ("data", "test_size"),
    ("data", "horizon"),
    ("train", "epochs"),
    ("train", "batch_size"),
    ("train", "lr"),
}


def choices_of(section: str, name: str) -> tuple | None:
    """The values field ``section.name`` allows, or None when any value of its type may do."""
    return CHOICES.get((section, name))


# Fields where None is a setting of its own (not a task default).
OPTIONAL = {("model", "t_max"), ("model", "cell_clip")}
# Fields that take one number or a pair of numbers.
PAIRS = {("model", "zoneout")}


def _field_type(cls, name: str) -> type:
    hints = typing.get_type_hints(cls)
    t = hints[name]
    if isinstance(t, types.UnionType):
        t = next(a for a in typing.get_args(t) if a is not type(None))
    return t


def coerce(section: str, key: str, value):
    """``value`` as the field's type, or a ConfigError naming the key, the type and the value."""
    cls = SECTIONS[section]
    t = _field_type(cls, key)
    where = f"{section}.{key}"
    if (section, key) in PAIRS and isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ConfigError(f"{where} must be one number or two, got {value!r}")
        return [coerce(section, key, v) for v in value]
    if t is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if t is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {t}")  # pragma: no cover - a bug in a dataclass


def validate(cfg: RunConfig) -> RunConfig:
    """Check every value's range and choice; return ``cfg``."""
    for section, cls in SECTIONS.items():
        obj = getattr(cfg, section)
        for f in dataclasses.fields(cls):
            if getattr(obj, f.name) is None and (section, f.name) in TASK_DEFAULT | OPTIONAL:
                continue
            v = coerce(section, f.name, getattr(obj, f.name))
            where = f"{section}.{f.name}"
            if isinstance(v, list):
                continue  # a pair: its numbers are checked by _check_variant
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{where} must be finite, got {v!r}")
            if (section, f.name) in POSITIVE and v <= 0:
                raise ConfigError(f"{where} must be > 0, got {v!r}")
            if (section, f.name) in NON_NEGATIVE and v < 0:
                raise ConfigError(f"{where} must be >= 0, got {v!r}")
            choices = CHOICES.get((section, f.name))
            if choices and v not in choices:
                raise ConfigError(f"{where} must be one of {', '.join(choices)}; got {v!r}")
    if not 0 <= cfg.model.dropout <= 1:
        raise ConfigError(f"model.dropout must be in [0, 1], got {cfg.model.dropout!r}")
    if cfg.data.low > cfg.data.high:
        raise ConfigError(
            f"data.low must be <= data.high, got low={cfg.data.low}, high={cfg.data.high}"
        )
    _check_variant(cfg.model)
    return cfg


def _check_variant(m: ModelConfig) -> None:
    """The variant rules live in one place, :meth:`lstmkit.variants.Variant.make`; its
    messages start with the option's name."""
    from lstmkit.variants import Variant

    options = m.variant()
    if m.init == "chrono" and m.t_max is None:
        options["t_max"] = math.inf  # resolved from data.length later; checked again then
    try:
        Variant.make(**options)
    except ValueError as e:
        raise ConfigError(f"model.{e}") from None


def check_new_run(cfg: RunConfig) -> None:
    """Rules for starting a run that a saved run need not meet, so that runs trained before
    them still load and resume."""
    m = cfg.model
    if m.dropout > 0 and m.num_layers == 1:
        raise ConfigError(
            f"model.dropout acts between LSTM layers and does nothing with num_layers=1 (got "
            f"dropout={m.dropout}); use --num-layers 2 or more, or recurrent_dropout, zoneout "
            "or weight_drop for dropout inside the recurrence"
        )


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict, base: RunConfig | None = None, source: str = "config") -> RunConfig:
    """A RunConfig from nested ``{section: {key: value}}``, over ``base`` (defaults if None).
    Unknown sections or keys, wrong types and bad values raise ConfigError."""
    cfg = dataclasses.replace(base) if base else RunConfig()
    cfg = RunConfig(**{s: dataclasses.replace(getattr(cfg, s)) for s in SECTIONS})
    if not isinstance(d, dict):
        raise ConfigError(f"{source} must be a table of sections, got {type(d).__name__}")
    for section, values in d.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"{source}: unknown section [{section}]; expected one of {', '.join(SECTIONS)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table, got {values!r}")
        known = {f.name for f in dataclasses.fields(SECTIONS[section])}
        obj = getattr(cfg, section)
        for key, value in values.items():
            if key not in known:
                expected = ", ".join(sorted(known))
                raise ConfigError(
                    f"{source}: unknown key {section}.{key}; expected one of {expected}"
                )
            if value is None and (section, key) in TASK_DEFAULT | OPTIONAL:
                setattr(obj, key, None)  # JSON null: the task's default
            else:
                setattr(obj, key, coerce(section, key, value))
    return validate(cfg)


def load_toml(path: str | Path, base: RunConfig | None = None) -> RunConfig:
    """Read a TOML file of ``[model]``, ``[data]``, ``[train]`` tables over ``base``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as e:
        raise ConfigError(f"config file {p} cannot be read as UTF-8 text: {e}") from None
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    return from_dict(d, base, source=f"config file {p}")
