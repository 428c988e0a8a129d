"""The LSTM variants torch.nn.LSTM does not have: their options, their per-layer tensors, and
the one place where their random masks are drawn.

* :class:`Variant` is what a user asks for (``lstmkit.LSTM(..., layer_norm=True, ...)``),
  checked once at construction; frozen, so a backend request can carry it.
* :class:`CellExtras` is what one layer in one direction hands to a backend beside the plain
  weights: the variant's parameters (peepholes, layer-norm gains) and the masks of this
  forward. Backends never draw randomness: :func:`draw_masks` does, from torch's generator,
  so every backend gives the same numbers for the same seed.

The equations are in :func:`lstmkit.cell.lstm_cell`, the oracle.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

INITS = ("uniform", "chrono")

# The kernel features a request can need; each backend's ``unsupported`` names the ones it lacks.
FEATURES = ("layer_norm", "peephole", "coupled", "cell_clip", "recurrent_dropout", "zoneout")


def _prob(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Variant:
    """Which variants an LSTM uses (all off: the plain LSTM, bit-exact with torch.nn.LSTM).

    forget_bias        added to the forget gate's bias at initialisation (Keras, haste: 1.0)
    init               "uniform" (torch's) or "chrono": forget/input biases from
                       ±log U(1, t_max - 1) (Tallec & Ollivier 2018)
    t_max              chrono's longest dependency in steps
    layer_norm         normalise the input and recurrent projections and the cell (Ba et al.)
    peephole           diagonal weights from the cell to i, f and o (Gers & Schmidhuber 2000)
    coupled            f = 1 - i (CIFG, Greff et al. 2017)
    recurrent_dropout  variational dropout on h_{t-1}, one mask per sequence (Gal 2016)
    zoneout_c/h        keep each unit's previous c/h with this probability (Krueger 2017)
    weight_drop        DropConnect on weight_hh, one mask per forward (Merity 2017)
    cell_clip          clip c_t to [-cell_clip, cell_clip] (TensorFlow's LSTMCell); None: off
    """

    forget_bias: float = 0.0
    init: str = "uniform"
    t_max: float | None = None
    layer_norm: bool = False
    peephole: bool = False
    coupled: bool = False
    recurrent_dropout: float = 0.0
    zoneout_c: float = 0.0
    zoneout_h: float = 0.0
    weight_drop: float = 0.0
    cell_clip: float | None = None

    @classmethod
    def make(
        cls,
        *,
        forget_bias=0.0,
        init="uniform",
        t_max=None,
        layer_norm=False,
        peephole=False,
        coupled=False,
        recurrent_dropout=0.0,
        zoneout=0.0,
        weight_drop=0.0,
        cell_clip=None,
    ) -> Variant:
        """Check the user's arguments (each error names the argument, the expected and the
        actual) and return the variant. ``zoneout`` is one probability or ``(z_c, z_h)``."""
        if isinstance(forget_bias, bool) or not isinstance(forget_bias, numbers.Real):
            raise ValueError(f"forget_bias must be a number, got {forget_bias!r}")
        if not math.isfinite(forget_bias):
            raise ValueError(f"forget_bias must be finite, got {forget_bias!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        if init == "chrono":
            if isinstance(t_max, bool) or not isinstance(t_max, numbers.Real) or not t_max > 2:
                raise ValueError(f"init='chrono' needs t_max, a number > 2, got {t_max!r}")
            if forget_bias:
                raise ValueError("forget_bias and init='chrono' both set the forget bias; use one")
        elif t_max is not None:
            raise ValueError(f"t_max is used only with init='chrono', got init={init!r}")
        for name, v in (("layer_norm", layer_norm), ("peephole", peephole), ("coupled", coupled)):
            if not isinstance(v, bool):
                raise ValueError(f"{name} must be True or False, got {v!r}")
        if isinstance(zoneout, (tuple, list)):
            if len(zoneout) != 2:
                raise ValueError(f"zoneout must be one float or (z_c, z_h), got {zoneout!r}")
            z_c, z_h = zoneout
        else:
            z_c = z_h = zoneout
        if cell_clip is not None and (
            isinstance(cell_clip, bool)
            or not isinstance(cell_clip, numbers.Real)
            or not 0 < cell_clip < math.inf
        ):
            raise ValueError(f"cell_clip must be a positive number or None, got {cell_clip!r}")
        return cls(
            forget_bias=float(forget_bias),
            init=init,
            t_max=None if t_max is None else float(t_max),
            layer_norm=layer_norm,
            peephole=peephole,
            coupled=coupled,
            recurrent_dropout=_prob("recurrent_dropout", recurrent_dropout),
            zoneout_c=_prob("zoneout", z_c),
            zoneout_h=_prob("zoneout", z_h),
            weight_drop=_prob("weight_drop", weight_drop),
            cell_clip=None if cell_clip is None else float(cell_clip),
        )

    def is_plain(self) -> bool:
        """True when the layer computes exactly torch.nn.LSTM (initialisation aside)."""
        return self.features(training=True) == frozenset() and not self.weight_drop

    def features(self, training: bool) -> frozenset[str]:
        """The kernel features a forward needs (weight drop and the inits need none: weight
        drop is applied to weight_hh before any backend runs)."""
        on = {
            "layer_norm": self.layer_norm,
            "peephole": self.peephole,
            "coupled": self.coupled,
            "cell_clip": self.cell_clip is not None,
            "recurrent_dropout": training and self.recurrent_dropout > 0,
            "zoneout": self.zoneout_c > 0 or self.zoneout_h > 0,
        }
        return frozenset(k for k, v in on.items() if v)

    def describe(self) -> str:
        """The non-default options as ``name=value`` pairs (for repr and messages)."""
        plain = Variant()
        return ", ".join(
            f"{k}={getattr(self, k)!r}"
            for k in self.__dataclass_fields__
            if getattr(self, k) != getattr(plain, k)
        )


PLAIN = Variant()


@dataclass
class CellExtras:
    """What one layer in one direction needs beyond the plain weights, for one forward.

    peephole    (3H,) weights from c to the i, f, o gates, or None
    layer_norm  (gain_ih (4H,), gain_hh (4H,), gain_c (H,), bias_c (H,)), or None
    coupled     f = 1 - i
    cell_clip   clip c_t to [-cell_clip, cell_clip], or None
    h_mask      (B, P or H) recurrent dropout mask (0 or 1/(1-p)) applied to h_{t-1} in the
                gates, or None
    zoneout_c   (T, B, H) 0/1: keep the previous c (training), or the probability as a float
                (evaluation: the expectation), or None
    zoneout_h   the same for h, (T, B, P or H)
    """

    peephole: Tensor | None = None
    layer_norm: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
    coupled: bool = False
    cell_clip: float | None = None
    h_mask: Tensor | None = None
    zoneout_c: Tensor | float | None = None
    zoneout_h: Tensor | float | None = None

    def zoneout_at(self, t: int):
        """(d_c, d_h) for step t, in the form :func:`lstmkit.cell.lstm_cell` takes, or None."""
        if self.zoneout_c is None and self.zoneout_h is None:
            return None

        def at(z):
            return z[t] if isinstance(z, Tensor) else (0.0 if z is None else z)

        return at(self.zoneout_c), at(self.zoneout_h)


def _bernoulli(p: float, shape, like: Tensor) -> Tensor:
    """0/1 with P(1) = p, in ``like``'s dtype, from float32 uniforms: the same pattern for
    the same seed whatever the model's dtype."""
    u = torch.rand(shape, device=like.device, dtype=torch.float32)
    return (u < p).to(like.dtype)


def draw_sequence_masks(variant: Variant, training: bool, B: int, H: int, R: int, like: Tensor):
    """Weight drop (4H, R) then recurrent dropout (B, R): kept units scaled by 1/(1-p) (the
    identity in expectation), one mask for a whole sequence; None at evaluation or p = 0."""

    def keep(p: float, *shape):
        if not training or p == 0:
            return None
        return _bernoulli(1 - p, shape, like).div_(1 - p)

    return {
        "weight_drop": keep(variant.weight_drop, 4 * H, R),
        "h_mask": keep(variant.recurrent_dropout, B, R),
    }


def draw_zoneout(variant: Variant, training: bool, T: int, B: int, H: int, R: int, like: Tensor):
    """Zoneout c (T, B, H) then h (T, B, R): 0/1 "keep the previous value" per unit and step
    in training, the probability itself at evaluation; None where it is 0."""

    def zone(z: float, *shape):
        if z == 0:
            return None
        return _bernoulli(z, shape, like) if training else z

    return {
        "zoneout_c": zone(variant.zoneout_c, T, B, H),
        "zoneout_h": zone(variant.zoneout_h, T, B, R),
    }


def draw_masks(
    variant: Variant, training: bool, T: int, B: int, H: int, R: int, like: Tensor
) -> dict[str, Tensor | float | None]:
    """Every random mask of one layer in one direction for one forward, from torch's default
    generator, always in this order: weight drop, recurrent dropout, zoneout c, zoneout h
    (see :func:`draw_sequence_masks` and :func:`draw_zoneout`)."""
    return draw_sequence_masks(variant, training, B, H, R, like) | draw_zoneout(
        variant, training, T, B, H, R, like
    )


def init_gate_biases(variant: Variant, bias_ih: Tensor, bias_hh: Tensor, H: int) -> None:
    """Apply ``forget_bias`` or chrono to the biases of one layer and direction, in place (the
    total bias of a gate is bias_ih + bias_hh; gate order i, f, g, o)."""
    with torch.no_grad():
        if variant.init == "chrono":
            # b_f = log(u), u ~ U(1, t_max - 1); b_i = -b_f; the bias_hh halves are zeroed so
            # that the total is exactly chrono's.
            u = torch.empty(H, dtype=torch.float64).uniform_(1, variant.t_max - 1)
            b_f = torch.log(u).to(bias_ih)
            bias_ih[H : 2 * H] = b_f
            bias_ih[:H] = -b_f
            bias_hh[: 2 * H] = 0
        elif variant.forget_bias:
            bias_ih[H : 2 * H] += variant.forget_bias
