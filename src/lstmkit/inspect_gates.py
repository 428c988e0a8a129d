"""What an LSTM layer does inside: its gates, cell state and hidden state at every step.

The gates and the state update come from :func:`lstmkit.cell.lstm_step`, the reference cell
itself, with the layer's variant (layer norm, peepholes, coupled gates, cell clip, zoneout in
its evaluation form), so what is drawn is what the model computes in evaluation mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lstmkit.cell import lstm_step, variant_extras
from lstmkit.checkpoint import Run
from lstmkit.errors import DataError
from lstmkit.forecast import _context
from lstmkit.variants import CellExtras, Variant, draw_masks

PANELS = ("input gate", "forget gate", "candidate", "output gate", "cell state", "hidden state")
CAPTIONS = {
    "input gate": "i = σ(·): how much of the candidate is written into the cell (0 none, 1 all)",
    "forget gate": "f = σ(·): how much of the previous cell state is kept (0 forget, 1 keep)",
    "candidate": "g = tanh(·): the new values proposed for the cell, in [-1, 1]",
    "output gate": "o = σ(·): how much of the squashed cell state is exposed as h",
    "cell state": "c = f·c_prev + i·g: the long-term memory carried from step to step",
    "hidden state": "h = o·tanh(c): the layer's output at this step, read by the next layer/head",
}


def captions(v: Variant | None = None) -> dict[str, str]:
    """:data:`CAPTIONS` with the equations of variant ``v`` (evaluation form: zoneout keeps
    the previous value in proportion z)."""
    if v is None or v.is_plain():
        return dict(CAPTIONS)
    pre = " + p·c_prev" if v.peephole else ""
    ln = "LN" if v.layer_norm else ""  # layer norm of each projection (and of c for h)
    c = "f·c_prev + i·g"
    if v.cell_clip is not None:
        c = f"clip({c}, ±{v.cell_clip:g})"
    if v.zoneout_c:
        c = f"{v.zoneout_c:g}·c_prev + {1 - v.zoneout_c:g}·({c})"
    h = f"o·tanh({ln}(c))" if ln else "o·tanh(c)"
    if v.zoneout_h:
        h = f"{v.zoneout_h:g}·h_prev + {1 - v.zoneout_h:g}·{h}"
    gate = f"σ({ln}(W_i x) + {ln}(W_h h) + b{pre})" if ln else f"σ(·{pre})"
    return {
        "input gate": f"i = {gate}: share of the candidate written",
        "forget gate": "f = 1 - i (coupled): share of the previous cell state kept"
        if v.coupled
        else f"f = {gate}: share of the previous cell state kept",
        "candidate": f"g = tanh({ln}(·)): the new values proposed for the cell, in [-1, 1]"
        if ln
        else CAPTIONS["candidate"],
        "output gate": f"o = {gate.replace('c_prev', 'c')}: share of the cell exposed as h",
        "cell state": f"c = {c}: the memory carried to the next step",
        "hidden state": f"h = {h}: the layer's output at this step",
    }


@dataclass
class GateTrace:
    """Per-step values of one layer for one sequence; every field is (T, H)."""

    input_gate: Tensor
    forget_gate: Tensor
    candidate: Tensor
    output_gate: Tensor
    cell: Tensor
    hidden: Tensor

    def panels(self) -> dict[str, Tensor]:
        """The fields in drawing order, keyed by :data:`PANELS`."""
        values = (
            self.input_gate,
            self.forget_gate,
            self.candidate,
            self.output_gate,
            self.cell,
            self.hidden,
        )
        return dict(zip(PANELS, values, strict=True))


@torch.no_grad()
def trace_layer(
    x: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    extras: CellExtras | None = None,
) -> GateTrace:
    """Run one unidirectional layer without projection over x (T, I) from zero state;
    ``extras``: the layer's variant in evaluation form (no recurrent dropout mask; zoneout as
    probabilities), None for the plain LSTM.

    Returns a :class:`GateTrace` of (T, H) tensors: the activated gates as the cell used them
    (f = 1 - i when coupled), the cell state carried to the next step and ``hidden``, which
    equals the layer's output."""
    H = weight_hh.size(1)
    h = c = x.new_zeros(1, H)
    kw = {}
    if extras is not None:
        if extras.h_mask is not None:
            raise ValueError("trace_layer draws the evaluation form; got a recurrent dropout mask")
        kw = {
            "peephole": extras.peephole,
            "layer_norm_params": extras.layer_norm,
            "coupled": extras.coupled,
            "cell_clip": extras.cell_clip,
        }
    rows: list[tuple[Tensor, ...]] = []
    for t in range(x.size(0)):
        zone = None if extras is None else extras.zoneout_at(t)
        h, c, gates = lstm_step(
            x[t : t + 1], h, c, weight_ih, weight_hh, bias_ih, bias_hh, zoneout=zone, **kw
        )
        rows.append((*gates, c, h))
    return GateTrace(*(torch.cat(col, dim=0) for col in zip(*rows, strict=True)))


def layer_extras(lstm, T: int) -> CellExtras | None:
    """The first layer's (forward direction) variant tensors for a T-step evaluation trace."""
    v = lstm.variant
    if v.is_plain():
        return None
    H = lstm.hidden_size
    zone = draw_masks(v, False, T, 1, H, H, lstm.weight_hh_l0)  # evaluation: no randomness
    return variant_extras(lstm, v, "_l0", {}, zone)


def layer_input(run: Run, values) -> Tensor:
    """What the first LSTM layer of ``run`` reads for ``values``: (T, I).

    A series is checked and scaled exactly as :func:`lstmkit.forecast.predict_steps` does;
    token ids go through the model's embedding."""
    model = run.model
    device = next(model.parameters()).device
    if run.task.tokens:
        vocab = run.task.input_size
        vals = [float(v) for v in values]
        bad = [v for v in vals if not (v.is_integer() and 0 <= v < vocab)]
        if not vals or bad:
            got = f"{bad[0]:g}" if bad else "none"
            raise DataError(f"values must be token ids in 0..{vocab - 1}, got {got}")
        ids = torch.tensor([int(v) for v in vals], dtype=torch.int64, device=device)
        return model.embedding(ids)
    xs, _ = run.scaler.encode(_context(run, values))
    return xs[0].to(device)


def trace_run(run: Run, values) -> GateTrace:
    """The gate trace of ``run``'s first LSTM layer (forward direction) for ``values``."""
    lstm = run.model.lstm
    if lstm.proj_size:
        raise DataError(
            f"inspect draws layers without a projection; this run's LSTM has "
            f"proj_size={lstm.proj_size}"
        )
    weights = [getattr(lstm, f"{n}_l0", None) for n in ("weight_ih", "weight_hh")]
    biases = [getattr(lstm, f"{n}_l0", None) for n in ("bias_ih", "bias_hh")]
    with torch.no_grad():
        x = layer_input(run, values)
    return trace_layer(x, *weights, *biases, extras=layer_extras(lstm, x.size(0)))
