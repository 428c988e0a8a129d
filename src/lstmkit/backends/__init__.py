"""Backends: one signature, one registry, one place that decides which runs.

A backend runs ONE layer in ONE direction over a time-major, right-padded batch::

    run(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths, reverse,
        extras=None, cells=False) -> (out, h_n, c_n), or (out, h_n, c_n, cs) with cells

    x          (T, B, I)
    h0         (B, P or H)      c0 (B, H)
    weight_ih  (4H, I)          weight_hh (4H, P or H)     gate order i, f, g, o
    bias_ih, bias_hh  (4H,) or None (both or neither)
    weight_hr  (P, H) or None (projection)
    lengths    (B,) int64 on the CPU, every value in 1..T, or None (all sequences length T)
    reverse    False: t = 0 .. T-1;  True: t = T-1 .. 0
    extras     None (the plain LSTM) or a :class:`lstmkit.variants.CellExtras`: the variants'
               parameters and this forward's masks (drawn by the layer, never by a backend)
    out        (T, B, P or H), exactly zero where t >= lengths[b]
    h_n, c_n   (B, P or H), (B, H): the state after each sequence's last valid step, each
               its own tensor (not a view of out: the layer may return them uncopied)
    cs         (T, B, H): the cell state c_t after every step, exactly zero where
               t >= lengths[b], differentiable like out (only with ``cells=True``, which
               the layer passes only if the request has ``cell_states``)

A step with t >= lengths[b] leaves sequence b's state untouched, so in reverse each sequence
starts from h0 at its own last element. The result must be differentiable with respect to x,
h0, c0 and every weight (through autograd, or an autograd.Function with its own backward).

The layer (``lstmkit.functional``) calls :func:`resolve` once per forward and never branches
on a backend's name. A backend that cannot run a request says why; asking for it by name
then raises :class:`BackendError` (an :mod:`lstmkit.errors` class) naming the backend and the
feature, never a silent fallback. A backend that must be built before its first run (native:
its C++ kernel) also defines ``pending()`` (what the first run will do, without doing it) and
``prepare()`` (do it, or raise BackendError naming what is missing): :func:`resolve` builds
only for a forward, never for a query, and only ``auto`` moves on when a build fails.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lstmkit.errors import BackendError  # noqa: F401  (its old home: still importable here)


@dataclass(frozen=True)
class Request:
    """What one forward asks of a backend: enough to decide, nothing more."""

    device_type: str
    dtype: torch.dtype
    T: int
    B: int
    I: int
    H: int
    P: int  # projection size, 0 if none
    num_layers: int
    directions: int
    has_lengths: bool
    needs_grad: bool
    features: frozenset[str] = frozenset()  # variant features (lstmkit.variants.FEATURES)
    cell_states: bool = False  # every step's c_t asked for (return_cell_states=True)


@dataclass(frozen=True)
class Choice:
    name: str
    run: Callable
    reason: str


@dataclass(frozen=True)
class _Entry:
    module: str  # imported on first use, so a heavy backend costs nothing until asked for


_REGISTRY: dict[str, _Entry] = {
    "reference": _Entry("lstmkit.backends.reference"),
    "fused": _Entry("lstmkit.backends.fused"),
    "native": _Entry("lstmkit.backends.native"),
    "triton": _Entry("lstmkit.backends.triton"),
    "cudnn": _Entry("lstmkit.backends.cudnn"),
}


def shown(n) -> str:
    """A size for a reason string: its value, or "traced" under torch.compile/export, where
    it may be a symbol (formatting it would specialise it: a recompile for every new size)."""
    return "traced" if torch.compiler.is_compiling() else str(n)


def lacking(req: Request, supported: frozenset[str] | set[str]) -> str | None:
    """The first variant feature of ``req`` outside ``supported``, as an ``unsupported``
    answer ("variant layer_norm"), or None."""
    missing = sorted(req.features - set(supported))
    return f"variant {missing[0]}" if missing else None


def register(name: str, module: str) -> None:
    """Add a backend module. It must define ``run`` (the signature above) and
    ``unsupported(req: Request) -> str | None`` (None when it can run ``req``, else the
    feature it lacks, e.g. "device cuda" or "dtype torch.float16")."""
    _REGISTRY[name] = _Entry(module)


def names() -> list[str]:
    """Every registered backend, plus ``auto``."""
    return ["auto", *_REGISTRY]


_MODULES: dict[str, object] = {}  # name -> imported module


def _load(name: str):
    # A dict lookup once imported: torch.compile traces this, and not importlib.
    mod = _MODULES.get(name)
    if mod is None:
        mod = _MODULES[name] = importlib.import_module(_REGISTRY[name].module)
    return mod


def unsupported(name: str, req: Request) -> str | None:
    """Why backend ``name`` cannot run ``req``, or None if it can."""
    return _load(name).unsupported(req)


def _auto(req: Request) -> tuple[str, str]:
    """The policy of ``auto``: the fastest correct backend for this device, dtype and size."""
    if req.device_type == "cuda":
        from lstmkit.backends.policy_cuda import auto_cuda

        return auto_cuda(req)
    if req.device_type == "cpu":
        from lstmkit.backends.policy_cpu import auto_cpu

        return auto_cpu(req)
    return "reference", "the only backend registered"


def _readiness(name: str, build: bool) -> str:
    """ "" when backend ``name`` is ready to run, else a note for the reason string saying what
    its first use will do. ``build``: do it now (the native kernel's compile), raising
    :class:`BackendError` if it cannot be done. A backend module may define ``pending()``
    (the note, or None when ready; it never builds) and ``prepare()`` (the build)."""
    if torch.compiler.is_compiling():
        return ""  # traced code never builds: the custom op's implementation does, at run time
    mod = _load(name)
    pending = getattr(mod, "pending", None)
    note = None if pending is None else pending()
    if note is None:
        return ""
    if build:
        mod.prepare()
        return ""
    return f" ({note})"


def resolve(req: Request, name: str = "auto", build: bool = True) -> Choice:
    """The backend that runs ``req``: ``name`` itself, or the one ``auto`` picks, and why.

    ``build=False`` is a query: it never triggers a backend's build (the native kernel's
    compile), and the reason says when one is still to come. With ``build=True`` a backend
    asked for by name that cannot be built raises :class:`BackendError`; only ``auto``
    moves on to its next choice (and warns once)."""
    if name == "auto":
        for _ in _REGISTRY:  # each failed build removes one candidate from the policy
            picked, reason = _auto(req)
            try:
                note = _readiness(picked, build)
            except BackendError as e:
                warnings.warn(f"lstmkit: auto skips {picked!r}: {e}", RuntimeWarning, 2)
                continue
            return Choice(picked, _load(picked).run, f"auto: {reason}{note}")
        raise BackendError("auto: no backend could be prepared for this request")
    if name not in _REGISTRY:
        raise BackendError(f"backend must be one of {names()}, got {name!r}")
    why = unsupported(name, req)
    if why is not None:
        raise BackendError(f"backend {name!r} does not support {why}")
    note = _readiness(name, build)
    return Choice(name, _load(name).run, f"asked for by name{note}")


# The backends are light to import (native compiles at its first run; triton imports the
# triton package only when its kernels are first needed): import them now, so that code
# traced by torch.compile finds them in _MODULES. _ops and _triton_ops register the
# lstmkit::lstm_layer and lstmkit::triton_layer custom ops, which a process loading a
# torch.export-ed model needs.
for _name in ("reference", "fused", "native", "triton"):
    _load(_name)
from lstmkit.backends import _ops, _triton_ops  # noqa: E402, F401
