"""Typed configuration. Defaults and the rules of every value live beside its field (see
:func:`opt`); CLI flags and TOML keys derive from the fields.

Sections: ``[model]``, ``[data]`` (what every task reads), ``[train]``, and one per task that
has options of its own (``[counting]``, ``[csv]``, ``[text]``). An option of another task's
section is an error when a run starts (:func:`check_new_run`)."""

from __future__ import annotations

import dataclasses
import math
import reprlib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from lstmkit.errors import ConfigError
from lstmkit.limits import MAX_COUNT, MAX_SIZE, MAX_TRAIN_SEED


def opt(
    default=None,
    *,
    choices: tuple[str, ...] | None = None,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    task_default: bool = False,
    optional: bool = False,
    pair: bool = False,
    flag: str | None = None,
):
    """A config field and its rules: ``choices``; bounds ``low <= v <= high`` or ``v > above``;
    ``task_default`` (None means the task's default, filled by :func:`lstmkit.data.resolve`);
    ``optional`` (None is a setting of its own); ``pair`` (one number or two); ``flag`` (the
    CLI flag's name when it is not the field's)."""
    rules = {
        "choices": choices,
        "low": low,
        "high": high,
        "above": above,
        "task_default": task_default,
        "optional": optional,
        "pair": pair,
        "flag": flag,
    }
    kept = {k: v for k, v in rules.items() if v is not None and v is not False}
    return field(default=default, metadata=kept)


def size(**kw):
    """A positive size or count, the task's default when None."""
    return opt(None, task_default=True, low=1, high=kw.pop("high", MAX_SIZE), **kw)


@dataclass
class ModelConfig:
    hidden_size: int | None = size()
    num_layers: int = opt(1, low=1, high=64)
    dropout: float = opt(0.0, low=0.0, high=1.0)
    backend: str = opt("auto")  # checked by lstmkit.backends before anything is written
    embedding_dim: int = opt(32, low=1, high=MAX_SIZE)  # token tasks (copy, text) only
    # LSTM variants (lstmkit.variants.Variant checks them; all off: the plain LSTM)
    forget_bias: float = opt(0.0, low=-100.0, high=100.0)  # added to the forget bias at init
    init: str = opt("uniform", choices=("uniform", "chrono"))  # chrono: Tallec & Ollivier 2018
    t_max: float | None = opt(None, optional=True)  # chrono (> 0, variants); None: data.length
    layer_norm: bool = opt(False)
    peephole: bool = opt(False)
    coupled: bool = opt(False)  # f = 1 - i
    recurrent_dropout: float = opt(0.0)  # in [0, 1): checked by lstmkit.variants
    zoneout: float | list[float] = opt(0.0, pair=True)  # one probability, or [z_c, z_h]
    weight_drop: float = opt(0.0)  # in [0, 1): checked by lstmkit.variants
    cell_clip: float | None = opt(None, optional=True)  # > 0 (variants); None: no clipping

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


SCALINGS = ("auto", "none", "standard", "offset", "diff", "drift", "seasonal")


@dataclass
class DataConfig:
    """What every task reads."""

    task: str = opt("counting", choices=("counting", "sine", "csv", "adding", "copy", "text"))
    length: int | None = size()  # steps per training window
    num_train: int | None = size(high=MAX_COUNT)  # windows (sequences) per split
    num_val: int | None = size(high=MAX_COUNT)
    num_test: int | None = size(high=MAX_COUNT)
    scaling: str = opt("auto", choices=SCALINGS)  # series tasks; auto: the task's choice
    period: int | None = size()  # seasonal period (seasonal scaler and baseline); series tasks


@dataclass
class CountingConfig:
    """[counting]: runs start at a number drawn from low..high."""

    low: int = opt(0, low=-(1 << 24), high=1 << 24)  # float32 holds every integer up to 2^24
    high: int = opt(9, low=-(1 << 24), high=1 << 24)


@dataclass
class CsvConfig:
    """[csv]: a series read from a CSV file."""

    file: str = opt("", flag="csv")  # "" = the packaged airline series
    column: str = opt("")  # the value column; "" = the file's only numeric column
    date_column: str = opt("")  # optional column of dates, checked to be increasing
    test_size: int | None = opt(None, task_default=True, low=0, high=MAX_COUNT)  # 0: none held
    horizon: int | None = size()  # steps forecast for validation; None: the test size
    # blank cells and missing timestamps: none (an error) | ffill | interpolate | drop
    fill: str = opt("none", choices=("none", "ffill", "interpolate", "drop"))
    rows: int = opt(0, low=0, high=MAX_COUNT)  # use only the first N values (0: all)
    # covariates (lstmkit.data.covariates): comma-separated column names
    features: str = opt("")  # known only up to each step (past covariates)
    future_features: str = opt("")  # known in advance (read for the horizon when predicting)
    date_features: str = opt("")  # derived from the date column: month, dayofweek, hour, ...
    # multi-step forecasts: recursive (one step fed back) | direct (H steps at once);
    # auto: direct when past-only features are given (their future is unknown), else recursive
    strategy: str = opt("auto", choices=("auto", "recursive", "direct"))
    # many series in one long-format file: the column naming each row's series ("" = one)
    id_column: str = opt("")
    # the weights kept are the average of the N checkpoints with the best validation
    # forecasts (the untrained reference forecast among them); 1: the best alone;
    # None: 3 for the recursive strategy, 1 for direct (where averaging measured no gain)
    average_best: int | None = opt(None, task_default=True, low=1, high=100)


@dataclass
class TextConfig:
    """[text]: character-level language modelling of a UTF-8 file."""

    file: str = opt("", flag="text")


@dataclass
class TrainConfig:
    epochs: int | None = size(high=MAX_COUNT)
    batch_size: int | None = size()
    lr: float | None = opt(None, task_default=True, above=0.0, high=1e3)
    optimizer: str = opt("adam", choices=("adam", "adamw"))
    weight_decay: float = opt(0.0, low=0.0)
    schedule: str = opt("cosine", choices=("constant", "cosine"))
    clip: float = opt(1.0, low=0.0)  # max gradient norm; 0 turns clipping off
    patience: int = opt(0, low=0, high=MAX_COUNT)  # epochs without improvement; 0 = never
    max_time: float = opt(0.0, low=0.0)  # seconds of training before stopping; 0 = no limit
    # training windows one epoch draws (a fresh random sample each epoch); 0 = every window
    epoch_windows: int | None = opt(None, task_default=True, low=0, high=MAX_COUNT)
    checkpoint_every: float = opt(2.0, low=0.0)  # seconds between checkpoints; 0 = every epoch
    seed: int = opt(0, low=0, high=MAX_TRAIN_SEED)
    device: str = opt("auto", choices=("auto", "cpu", "cuda"))


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    counting: CountingConfig = field(default_factory=CountingConfig)
    csv: CsvConfig = field(default_factory=CsvConfig)
    text: TextConfig = field(default_factory=TextConfig)


SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "counting": CountingConfig,
    "csv": CsvConfig,
    "text": TextConfig,
}
TASK_SECTIONS = ("counting", "csv", "text")  # a section named after the task that reads it
# Options of format-1 run directories (one [data] table for every task), and where they live now.
MOVED = {
    "low": ("counting", "low"),
    "high": ("counting", "high"),
    "csv": ("csv", "file"),
    "column": ("csv", "column"),
    "date_column": ("csv", "date_column"),
    "test_size": ("csv", "test_size"),
    "horizon": ("csv", "horizon"),
    "fill": ("csv", "fill"),
    "rows": ("csv", "rows"),
    "text": ("text", "file"),
}


def keyname(key) -> str:
    """A key as it is when it is a short printable string, else :func:`short`."""
    if isinstance(key, str) and len(key) <= 60 and key.isprintable():
        return key
    return short(key)


def short(value) -> str:
    """``repr(value)`` cut to a line (a message must stay one line, whatever arrived)."""
    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother, r.maxlong = 2, 60, 60, 40
    return r.repr(value)


def field_type(cls, name: str) -> type:
    """The field's type, without ``| None``."""
    t = typing.get_type_hints(cls)[name]
    if isinstance(t, types.UnionType):
        t = next(a for a in typing.get_args(t) if a is not type(None))
    if typing.get_origin(t) is list:  # float | list[float]: the pair's number type
        t = typing.get_args(t)[0]
    return t


def rules(section: str, name: str) -> typing.Mapping:
    """The rules :func:`opt` recorded for ``section.name``."""
    return next(f.metadata for f in dataclasses.fields(SECTIONS[section]) if f.name == name)


def choices_of(section: str, name: str) -> tuple[str, ...] | None:
    return rules(section, name).get("choices")


def flag_of(section: str, name: str) -> str:
    """The CLI flag of ``section.name`` without its dashes: ``hidden-size``."""
    return rules(section, name).get("flag", name).replace("_", "-")


def coerce(section: str, key: str, value):
    """``value`` as the field's type, or a ConfigError naming the key, the type and the value."""
    t = field_type(SECTIONS[section], key)
    where = f"{section}.{key}"
    if rules(section, key).get("pair") and isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ConfigError(f"{where} must be one number or two, got {short(value)}")
        return [coerce(section, key, v) for v in value]
    if t is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {short(value)}")
    if t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be an integer, got {short(value)}")
    if t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise ConfigError(f"{where} must be a number, got {short(value)}") from None
        raise ConfigError(f"{where} must be a number, got {short(value)}")
    if t is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {short(value)}")
    raise ConfigError(f"{where}: unsupported type {t}")  # pragma: no cover - a bug in a dataclass


def _num(bound):
    """A bound as a message shows it: 1, 0.5, 1e+03 (None stays None)."""
    return f"{bound:g}" if isinstance(bound, float) else bound


def _check_value(section: str, name: str, value) -> None:
    """One value against its field's rules."""
    r, where = rules(section, name), f"{section}.{name}"
    v = coerce(section, name, value)
    if isinstance(v, list):
        return  # a pair: its numbers are checked by _check_variant
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"{where} must be finite, got {v!r}")
    low, high, above = r.get("low"), r.get("high"), r.get("above")
    lo, hi, ab = _num(low), _num(high), _num(above)
    too_high = high is not None and v > high
    if above is not None and (not v > above or too_high):
        bound = f"> {ab}" + (f" and <= {hi}" if high is not None else "")
        raise ConfigError(f"{where} must be {bound}, got {short(v)}")
    if (low is not None and v < low) or too_high:
        if low is not None and high is not None:
            raise ConfigError(f"{where} must be in [{lo}, {hi}], got {short(v)}")
        bound = f">= {lo}" if low is not None else f"<= {hi}"
        raise ConfigError(f"{where} must be {bound}, got {short(v)}")
    if "choices" in r and v not in r["choices"]:
        raise ConfigError(f"{where} must be one of {', '.join(r['choices'])}; got {short(v)}")


def validate(cfg: RunConfig) -> RunConfig:
    """Check every value against its field's rules, and the rules between fields; return
    ``cfg``."""
    for section, cls in SECTIONS.items():
        obj = getattr(cfg, section)
        for f in dataclasses.fields(cls):
            value = getattr(obj, f.name)
            if value is None:
                if f.metadata.get("task_default") or f.metadata.get("optional"):
                    continue
                raise ConfigError(f"{section}.{f.name} must be set, got null")
            _check_value(section, f.name, value)
    if cfg.counting.low > cfg.counting.high:
        raise ConfigError(
            f"counting.low must be <= counting.high, got low={cfg.counting.low}, "
            f"high={cfg.counting.high}"
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
    for section in TASK_SECTIONS:
        if section == cfg.data.task:
            continue
        default = SECTIONS[section]()
        for f in dataclasses.fields(default):
            if getattr(getattr(cfg, section), f.name) != getattr(default, f.name):
                raise ConfigError(
                    f"{section}.{f.name} (--{flag_of(section, f.name)}) is an option of the "
                    f"{section} task; this run's task is {cfg.data.task!r} (data.task)"
                )


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def _upgrade(d: dict) -> dict:
    """A format-1 config (every task's options in [data]) in today's sections."""
    data = dict(d.get("data") or {})
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for key, (section, name) in MOVED.items():
        if key in data:
            out.setdefault(section, {})[name] = data.pop(key)
    out["data"] = data
    return out


def from_dict(
    d: dict, base: RunConfig | None = None, source: str = "config", legacy: bool = False
) -> RunConfig:
    """A RunConfig from nested ``{section: {key: value}}``, over ``base`` (defaults if None).
    Unknown sections or keys, wrong types and bad values raise ConfigError. ``legacy``: ``d``
    may be a saved run's config of format 1, whose [data] held every task's options."""
    base = base or RunConfig()
    cfg = RunConfig(**{s: dataclasses.replace(getattr(base, s)) for s in SECTIONS})
    if not isinstance(d, dict):
        raise ConfigError(f"{source} must be a table of sections, got {type(d).__name__}")
    if legacy and isinstance(d.get("data"), dict):
        d = _upgrade(d)
    for section, values in d.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"{source}: unknown section [{keyname(section)}]; expected one of "
                f"{', '.join(SECTIONS)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table, got {short(values)}")
        for key, value in values.items():
            _set(cfg, section, key, value, source)
    return validate(cfg)


def _set(cfg: RunConfig, section: str, key, value, source: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
    if section == "data" and key in MOVED:
        new, name = MOVED[key]
        raise ConfigError(
            f"{source}: data.{key} is now {new}.{name} (a [{new}] table in TOML, flag "
            f"--{flag_of(new, name)})"
        )
    if key not in fields:
        expected = ", ".join(sorted(fields))
        raise ConfigError(
            f"{source}: unknown key {section}.{keyname(key)}; expected one of {expected}"
        )
    meta = fields[key].metadata
    if value is None and (meta.get("task_default") or meta.get("optional")):
        setattr(getattr(cfg, section), key, None)  # JSON null: the task's default
    else:
        setattr(getattr(cfg, section), key, coerce(section, key, value))


def load_toml(path: str | Path, base: RunConfig | None = None) -> RunConfig:
    """Read a TOML file of ``[model]``, ``[data]``, ``[train]`` (and task) tables over
    ``base``."""
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
    except RecursionError:
        raise ConfigError(f"config file {p} nests its tables or arrays too deeply") from None
    return from_dict(d, base, source=f"config file {p}")
