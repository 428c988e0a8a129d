"""Typed command-line values: one argparse ``type`` per kind of value, each rejecting what
it cannot represent with a message naming what was expected and what arrived, and the
config flags derived from the fields of :data:`lstmkit.config.SECTIONS`.

argparse turns an ``ArgumentTypeError`` into ``argument --flag: MESSAGE``, which the CLI
prints as one line with exit code 2."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re

from lstmkit import config

# Integers travel through torch and numpy as int64; a longer one is always a mistake.
INT64_MAX = 2**63 - 1
TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)  # no "1_000", no non-ASCII digits
NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)


def shown(raw: str, limit: int = 40) -> str:
    """``raw`` quoted for a message, cut short so that a hostile value cannot flood it."""
    return repr(raw if len(raw) <= limit else raw[:limit] + "...")


def parse_int(raw: str, lo: int = -INT64_MAX, hi: int = INT64_MAX) -> int:
    s = raw.strip()
    if not _INTEGER.fullmatch(s):
        raise argparse.ArgumentTypeError(f"must be an integer, got {shown(raw)}")
    if len(s.lstrip("+-").lstrip("0")) > 19 or not lo <= int(s) <= hi:  # 19: int64's digits
        raise argparse.ArgumentTypeError(f"must be an integer in {lo}..{hi}, got {shown(raw)}")
    return int(s)


def parse_float(raw: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    """A finite number in [lo, hi]; nan, inf and values that overflow a double are refused."""
    s = raw.strip()
    value = float(s) if NUMBER.fullmatch(s) else math.nan  # "nan", "inf", "1_0": refused
    if not (math.isfinite(value) and lo <= value <= hi):
        span = (
            "a finite number"
            if (lo, hi) == (-math.inf, math.inf)
            else f"a number in [{lo:g}, {hi:g}]"
        )
        raise argparse.ArgumentTypeError(f"must be {span}, got {shown(raw)}")
    return value


def parse_bool(raw: str) -> bool:
    if raw.strip().lower() not in TRUE + FALSE:
        raise argparse.ArgumentTypeError(f"must be true or false, got {shown(raw)}")
    return raw.strip().lower() in TRUE


def int_in(lo: int, hi: int):
    """An argparse type: an integer in lo..hi."""

    def parse(raw: str) -> int:
        return parse_int(raw, lo, hi)

    parse.__name__ = "int"
    return parse


def float_in(lo: float, hi: float, open_ends: bool = False):
    """An argparse type: a finite number in [lo, hi], or (lo, hi) with ``open_ends``."""

    def parse(raw: str) -> float:
        try:
            v = parse_float(raw, lo, hi)
        except argparse.ArgumentTypeError:
            if not open_ends:
                raise
            v = lo
        if open_ends and v in (lo, hi):
            raise argparse.ArgumentTypeError(
                f"must be between {lo:g} and {hi:g} (exclusive), got {shown(raw)}"
            )
        return v

    parse.__name__ = "float"
    return parse


def text(raw: str) -> str:
    """A string flag: no NUL (no file name or choice can hold one)."""
    if "\x00" in raw:
        raise argparse.ArgumentTypeError(f"must not contain a NUL character, got {shown(raw)}")
    return raw


def path_arg(raw: str) -> str:
    """A file or directory flag: not empty (an empty path would mean "here" or "default"
    without a word) and no NUL."""
    if not raw.strip() or "\x00" in raw:
        raise argparse.ArgumentTypeError(f"must be a path, got {shown(raw)}")
    return raw


_SCALAR = {int: parse_int, float: parse_float, bool: parse_bool, str: text}


def field_parser(section: str, cls, f: dataclasses.Field):
    """The argparse type of config field ``f``: its Python type; a pair field (zoneout) also
    takes two numbers separated by a comma."""
    scalar = _SCALAR[config.field_type(cls, f.name)]
    if not config.rules(section, f.name).get("pair"):
        return scalar

    def pair(raw: str):  # "0.5" or "0.5,0.05"; the config checks that a list holds two
        return [scalar(p) for p in raw.split(",")] if "," in raw else scalar(raw)

    return pair


def flag_name(f: dataclasses.Field) -> str:
    """``--hidden-size`` for hidden_size, or the field's own ``flag`` metadata."""
    return "--" + f.metadata.get("flag", f.name).replace("_", "-")


def add_config_flags(p: argparse.ArgumentParser, help_texts: dict) -> None:
    """One typed flag per config field, dest ``section.field``, default None so that only the
    flags given override the config file and the defaults; ``--help`` shows the choices and
    the default."""
    for section, cls in config.SECTIONS.items():
        g = p.add_argument_group(f"{section} (TOML table [{section}])")
        defaults = cls()
        for f in dataclasses.fields(cls):
            is_bool = config.field_type(cls, f.name) is bool  # --layer-norm [false]
            choices = config.choices_of(section, f.name)
            metavar, help_ = help_texts.get(f.metadata.get("flag", f.name), (None, None))
            if metavar is None and not choices:
                metavar = config.field_type(cls, f.name).__name__.upper()
            g.add_argument(
                flag_name(f),
                dest=f"{section}.{f.name}",
                type=field_parser(section, cls, f),
                choices=choices or None,
                default=None,
                nargs="?" if is_bool else None,
                const=True if is_bool else None,
                metavar=metavar,
                help=_with_default(help_, getattr(defaults, f.name)),
            )


def _with_default(help_: str | None, value) -> str:
    if isinstance(value, bool):
        default = f"default {'on' if value else 'off'}"
    else:
        default = "default: the task's" if value is None else f"default {value!r}"
    if not help_:
        return default
    return help_ if "default" in help_ else f"{help_} ({default})"
