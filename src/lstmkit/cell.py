"""The reference LSTM cell: the oracle every faster path is tested against.

Keep it as plain as the tutorial it comes from; speed lives in ``lstmkit.backends``. The
variants (:mod:`lstmkit.variants`) are a few lines each in :func:`lstm_step`, with their
equations and papers in its docstring.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lstmkit.variants import (
    CellExtras,
    Variant,
    draw_sequence_masks,
    draw_zoneout,
    init_gate_biases,
)

LN_EPS = 1e-5


def layer_norm(v: Tensor, gain: Tensor, bias: Tensor | None = None) -> Tensor:
    """(v - mean) / sqrt(var + 1e-5) * gain (+ bias) over the last dimension (biased var)."""
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    out = (v - mean) / torch.sqrt(var + LN_EPS) * gain
    return out if bias is None else out + bias


def lstm_gates(
    x: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four activated gates of one step of the plain LSTM, each (B, H); x (B, I), h (B, P
    or H).

    The tutorial's ``W · concat(x, h) + b`` is ``W_ih · x + W_hh · h + b_ih + b_hh``:
    the same matrix split in two, which is how PyTorch stores it (gate order i, f, g, o).
    """
    c = h.new_zeros(h.size(0), weight_hh.size(0) // 4)  # the gates do not read c
    return lstm_step(x, h, c, weight_ih, weight_hh, bias_ih, bias_hh)[2]


def lstm_step(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    weight_hr: Tensor | None = None,
    *,
    peephole: Tensor | None = None,
    layer_norm_params: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
    coupled: bool = False,
    cell_clip: float | None = None,
    h_mask: Tensor | None = None,
    zoneout: tuple[Tensor | float, Tensor | float] | None = None,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    r"""One LSTM step, with every variant: x (B, I), h (B, P or H), c (B, H) -> (h', c',
    (i, f, g, o)). With every option at its default this is the plain LSTM::

        i = σ(W_ii x + b_ii + W_hi h + b_hi)       f = σ(W_if x + b_if + W_hf h + b_hf)
        g = tanh(W_ig x + b_ig + W_hg h + b_hg)    o = σ(W_io x + b_io + W_ho h + b_ho)
        c' = f ⊙ c + i ⊙ g                         h' = o ⊙ tanh(c')   (h' = W_hr h' if P)

    The variants, in the order they act:

    * ``h_mask`` (B, P or H), recurrent dropout (Gal & Ghahramani 2016): the gates read
      h ⊙ m instead of h, with one mask m per sequence for all steps (drawn by the layer).
    * ``layer_norm_params = (γ_ih, γ_hh, γ_c, β_c)`` (Ba, Kiros & Hinton 2016; haste's
      LayerNormLSTM): gates = LN(W_ih x) γ_ih + LN(W_hh h) γ_hh + b_ih + b_hh, and
      h' = o ⊙ tanh(LN(c') γ_c + β_c); LN(v) = (v - mean v) / sqrt(var v + 1e-5).
    * ``peephole = (p_i, p_f, p_o)`` (3H,) (Gers & Schmidhuber 2000): p_i ⊙ c and p_f ⊙ c are
      added to the i and f pre-activations, p_o ⊙ c' to o's.
    * ``coupled`` (CIFG, Greff et al. 2017): f = 1 - i; the forget rows of the weights are
      kept (the layout stays torch's) and get zero gradient.
    * ``cell_clip`` (TensorFlow's LSTMCell): c' = clip(c', -cell_clip, cell_clip), before the
      output peephole and tanh read it.
    * ``zoneout = (d_c, d_h)`` (Krueger et al. 2017): c' ← d_c ⊙ c + (1 - d_c) ⊙ c' and
      h' ← d_h ⊙ h + (1 - d_h) ⊙ h', d 0/1 masks per unit and step in training, the
      probabilities themselves at evaluation.
    """
    h_in = h if h_mask is None else h * h_mask
    gx, gh = x @ weight_ih.T, h_in @ weight_hh.T
    if layer_norm_params is not None:
        g_ih, g_hh, g_c, b_c = layer_norm_params
        gx, gh = layer_norm(gx, g_ih), layer_norm(gh, g_hh)
    gates = gx + gh
    if bias_ih is not None:
        gates = gates + bias_ih + bias_hh
    i, f, g, o = gates.chunk(4, dim=1)
    if peephole is not None:
        p_i, p_f, p_o = peephole.chunk(3)
        i, f = i + p_i * c, f + p_f * c
    i = torch.sigmoid(i)  # input gate: how much of the candidate to write
    f = 1 - i if coupled else torch.sigmoid(f)  # forget gate: how much of the old cell to keep
    g = torch.tanh(g)  # candidate values
    c_new = f * c + i * g
    if cell_clip is not None:
        c_new = c_new.clamp(-cell_clip, cell_clip)
    if peephole is not None:
        o = o + p_o * c_new
    o = torch.sigmoid(o)  # output gate: how much of the cell to expose
    c_out = c_new if layer_norm_params is None else layer_norm(c_new, g_c, b_c)
    h_new = o * torch.tanh(c_out)
    if weight_hr is not None:
        h_new = h_new @ weight_hr.T  # projection (B, H) -> (B, P)
    if zoneout is not None:
        d_c, d_h = zoneout
        c_new = d_c * c + (1 - d_c) * c_new
        h_new = d_h * h + (1 - d_h) * h_new
    return h_new, c_new, (i, f, g, o)


def lstm_cell(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    weight_hr: Tensor | None = None,
    extras: CellExtras | None = None,
    t: int = 0,
) -> tuple[Tensor, Tensor]:
    """One LSTM step. x (B, I), h (B, P or H), c (B, H) -> (h', c'); ``extras``: the
    variants of this layer and direction (see :func:`lstm_step`), ``t`` the step (zoneout)."""
    kw = {}
    if extras is not None:
        kw = {
            "peephole": extras.peephole,
            "layer_norm_params": extras.layer_norm,
            "coupled": extras.coupled,
            "cell_clip": extras.cell_clip,
            "h_mask": extras.h_mask,
            "zoneout": extras.zoneout_at(t),
        }
    h, c, _ = lstm_step(x, h, c, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, **kw)
    return h, c


class LSTMCell(nn.Module):
    r"""The tutorial's LSTM cell, in PyTorch's parameter layout, with lstmkit's variants.

    .. math::
        i_t = \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\
        f_t = \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
        g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        o_t = \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t = o_t \odot \tanh(c_t)

    Parameters: ``weight_ih`` (4H, I), ``weight_hh`` (4H, H), ``bias_ih`` (4H,), ``bias_hh``
    (4H,), gate order i, f, g, o, initialised U(-1/sqrt(H), 1/sqrt(H)); a
    ``torch.nn.LSTMCell`` state_dict loads into it and back.

    Variants (keyword arguments, all off by default; see :class:`lstmkit.variants.Variant`
    and :func:`lstm_step`): ``forget_bias``, ``init``/``t_max``, ``layer_norm`` (adds
    ``weight_ln_ih`` (4H,), ``weight_ln_hh`` (4H,), ``weight_ln_c`` (H,), ``bias_ln_c`` (H,)),
    ``peephole`` (adds ``weight_peephole`` (3H,), i, f, o), ``coupled``, ``cell_clip``,
    ``zoneout`` (drawn at every call: one call is one step), ``recurrent_dropout`` and
    ``weight_drop``. The last two keep one mask for a whole sequence: in training, draw them
    with ``masks = cell.draw_masks(B)`` at the start of each sequence and pass
    ``masks=masks`` at every step.

    Input: ``x`` (B, I) or unbatched (I,); ``hx = (h, c)``, each (B, H) or (H,), zeros if None.
    Output: ``(h', c')`` with the batch shape of the input.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
        **variant,
    ) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.variant = make_variant(variant, bias, "LSTMCell")
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        H = hidden_size
        kw = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(4 * H, input_size, **kw))
        self.weight_hh = nn.Parameter(torch.empty(4 * H, H, **kw))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(4 * H, **kw))
            self.bias_hh = nn.Parameter(torch.empty(4 * H, **kw))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        for name, shape in variant_shapes(self.variant, H).items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape, **kw)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        init_variant_parameters(self, self.variant, "")

    def draw_masks(self, batch_size: int) -> dict:
        """The recurrent dropout and weight drop masks of one sequence (None in evaluation)."""
        H = self.hidden_size
        return draw_sequence_masks(self.variant, self.training, batch_size, H, H, self.weight_hh)

    def forward(
        self, x: Tensor, hx: tuple[Tensor, Tensor] | None = None, masks: dict | None = None
    ) -> tuple[Tensor, Tensor]:
        if x.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: input must be 1-D (I,) or 2-D (B, I), got {x.dim()}-D")
        if x.size(-1) != self.input_size:
            raise ValueError(
                f"LSTMCell: input.size(-1) must be {self.input_size}, got {x.size(-1)}"
            )
        unbatched = x.dim() == 1
        xb = x.unsqueeze(0) if unbatched else x
        shape = (xb.size(0), self.hidden_size)
        if hx is None:
            h = c = xb.new_zeros(shape)
        else:
            h, c = (s.unsqueeze(0) if unbatched else s for s in hx)
            for name, s in (("h", h), ("c", c)):
                if tuple(s.shape) != shape:
                    raise ValueError(
                        f"LSTMCell: {name} must have shape {shape}, got {tuple(s.shape)}"
                    )
        w_hh, extras = self._step_variant(xb, masks)
        h, c = lstm_cell(xb, h, c, self.weight_ih, w_hh, self.bias_ih, self.bias_hh, None, extras)
        return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)

    def _step_variant(self, x: Tensor, masks: dict | None) -> tuple[Tensor, CellExtras | None]:
        """weight_hh as this step uses it, and the variant's tensors (None when plain)."""
        v = self.variant
        if v.is_plain():
            return self.weight_hh, None
        B, H = x.size(0), self.hidden_size
        needs_masks = self.training and (v.recurrent_dropout > 0 or v.weight_drop > 0)
        if needs_masks and masks is None:
            raise ValueError(
                "LSTMCell: recurrent_dropout and weight_drop keep one mask per sequence; pass "
                "masks=cell.draw_masks(batch_size), drawn at the start of each sequence"
            )
        if needs_masks and masks["h_mask"] is not None and masks["h_mask"].size(0) != B:
            raise ValueError(
                f"LSTMCell: masks were drawn for batch {masks['h_mask'].size(0)}, got {B}"
            )
        zone = draw_zoneout(v, self.training, 1, B, H, H, x)
        extras = variant_extras(self, v, "", masks if needs_masks else {}, zone)
        w_hh = self.weight_hh
        if needs_masks and masks["weight_drop"] is not None:
            w_hh = w_hh * masks["weight_drop"]
        return w_hh, extras

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        s = s if self.bias else s + ", bias=False"
        described = self.variant.describe()
        return f"{s}, {described}" if described else s


# -- the variant's parameters, shared by LSTMCell and lstmkit.LSTM -----------------------------


def make_variant(options: dict, bias: bool, owner: str) -> Variant:
    """A checked :class:`Variant` from keyword arguments (unknown names are errors)."""
    known = set(Variant.make.__kwdefaults__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(
            f"{owner}: unexpected argument {unknown[0]!r}; variants are {', '.join(sorted(known))}"
        )
    v = Variant.make(**options)
    if not bias and (v.forget_bias or v.init == "chrono"):
        raise ValueError(f"{owner}: forget_bias and init='chrono' set biases; they need bias=True")
    return v


def variant_shapes(v: Variant, H: int) -> dict[str, tuple[int, ...]]:
    """The extra parameters a variant adds to one layer and direction (names without suffix)."""
    shapes: dict[str, tuple[int, ...]] = {}
    if v.layer_norm:
        shapes.update(
            weight_ln_ih=(4 * H,), weight_ln_hh=(4 * H,), weight_ln_c=(H,), bias_ln_c=(H,)
        )
    if v.peephole:
        shapes["weight_peephole"] = (3 * H,)
    return shapes


def init_variant_parameters(module: nn.Module, v: Variant, suffix: str) -> None:
    """Layer-norm gains 1 and shifts 0; forget bias or chrono on the gate biases."""
    with torch.no_grad():
        if v.layer_norm:
            for name in ("weight_ln_ih", "weight_ln_hh", "weight_ln_c"):
                getattr(module, name + suffix).fill_(1.0)
            getattr(module, "bias_ln_c" + suffix).zero_()
    b_ih = getattr(module, "bias_ih" + suffix, None)
    if b_ih is not None:
        H = b_ih.numel() // 4
        init_gate_biases(v, b_ih, getattr(module, "bias_hh" + suffix), H)


def variant_extras(module: nn.Module, v: Variant, suffix: str, masks: dict, zone: dict):
    """The :class:`CellExtras` of one layer and direction: its parameters and this forward's
    masks (``masks`` gives h_mask, ``zone`` the zoneout masks)."""
    ln = None
    if v.layer_norm:
        ln = tuple(
            getattr(module, n + suffix)
            for n in ("weight_ln_ih", "weight_ln_hh", "weight_ln_c", "bias_ln_c")
        )
    return CellExtras(
        peephole=getattr(module, "weight_peephole" + suffix) if v.peephole else None,
        layer_norm=ln,
        coupled=v.coupled,
        cell_clip=v.cell_clip,
        h_mask=masks.get("h_mask"),
        zoneout_c=zone.get("zoneout_c"),
        zoneout_h=zone.get("zoneout_h"),
    )
