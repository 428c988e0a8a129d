"""``lstmkit.LSTM``: a drop-in for ``torch.nn.LSTM`` that checks its input at the edge."""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from lstmkit import backends
from lstmkit.cell import init_variant_parameters, make_variant, variant_extras, variant_shapes
from lstmkit.functional import backends_request, lstm
from lstmkit.variants import draw_masks


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class LSTM(nn.Module):
    r"""A multi-layer LSTM with ``torch.nn.LSTM``'s arguments, outputs and parameter names.

    Each layer computes, for every step t (gate order i, f, g, o)::

        i_t = σ(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)
        f_t = σ(W_if x_t + b_if + W_hf h_{t-1} + b_hf)
        g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
        o_t = σ(W_io x_t + b_io + W_ho h_{t-1} + b_ho)
        c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
        h_t = o_t ⊙ tanh(c_t)            (then h_t = W_hr h_t when proj_size > 0)

    Args: input_size I, hidden_size H, num_layers L, bias, batch_first, dropout (between
    layers, training only), bidirectional (D = 2), proj_size P (0 = none), device, dtype, and
    beyond torch: ``backend`` (``"auto"`` or a name from ``lstmkit.backends.names()``) and the
    variants, all off by default (equations in :func:`lstmkit.cell.lstm_step`, options in
    :class:`lstmkit.variants.Variant`): ``forget_bias``, ``init="chrono"`` with ``t_max``,
    ``layer_norm``, ``peephole``, ``coupled``, ``recurrent_dropout``, ``zoneout`` (one
    probability or ``(z_c, z_h)``), ``weight_drop``, ``cell_clip``. Their random masks are
    drawn here, once per forward, from torch's generator, so every backend gives the same
    numbers for the same seed; a backend that lacks a variant is never chosen silently.

    Forward: ``input`` (T, B, I), (B, T, I) if batch_first, unbatched (T, I), or a
    ``PackedSequence``; ``hx = (h_0, c_0)`` with h_0 (L*D, B, P or H) and c_0 (L*D, B, H)
    ((L*D, ·) unbatched), zeros if omitted; ``lengths`` (B,) for right-padded input without
    packing: output is zero past each length and h_n, c_n are each sequence's true final state.
    Returns ``output, (h_n, c_n)``, output (T, B, D*(P or H)) (batch_first, unbatched and packed
    as the input). ``return_cell_states=True`` (a forward keyword) returns
    ``output, (h_n, c_n), cell_states`` instead: the last layer's cell state c_t after every
    step, (T, B, D*H) laid out as output is (batch_first, unbatched, packed; the backward
    direction's half holds its c_t at the same t), zero past each length like output, and
    differentiable (a loss on it trains the weights).

    Parameters: ``weight_ih_l{k}`` (4H, I or D*(P or H)), ``weight_hh_l{k}`` (4H, P or H),
    ``bias_ih_l{k}``, ``bias_hh_l{k}`` (4H,), ``weight_hr_l{k}`` (P, H), with ``_reverse`` for
    the backward direction, all U(-1/sqrt(H), 1/sqrt(H)): a ``torch.nn.LSTM`` state_dict loads
    into it and back. Variants add, per layer and direction: ``weight_ln_ih_l{k}``,
    ``weight_ln_hh_l{k}`` (4H,) and ``weight_ln_c_l{k}``, ``bias_ln_c_l{k}`` (H,) (layer norm:
    gains 1, shift 0 at initialisation); ``weight_peephole_l{k}`` (3H,) (i, f, o).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        backend: str = "auto",
        **variant,
    ) -> None:
        super().__init__()
        self.variant = make_variant(variant, bias, "LSTM")
        _positive_int("input_size", input_size)
        _positive_int("hidden_size", hidden_size)
        _positive_int("num_layers", num_layers)
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, numbers.Number)
            or not 0 <= dropout <= 1
        ):
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        if isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral):
            raise ValueError(f"proj_size must be an integer, got {proj_size!r}")
        if proj_size < 0:
            raise ValueError(f"proj_size must be >= 0, got {proj_size}")
        if proj_size >= hidden_size:
            raise ValueError(
                f"proj_size must be smaller than hidden_size ({hidden_size}), got {proj_size}"
            )
        if backend not in backends.names():
            raise ValueError(f"backend must be one of {backends.names()}, got {backend!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout acts between LSTM layers, so with num_layers=1 it does nothing "
                f"(got dropout={dropout}); for dropout inside the recurrence use "
                "recurrent_dropout, zoneout or weight_drop",
                UserWarning,
                stacklevel=2,
            )
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size, self.backend = bidirectional, proj_size, backend
        D = 2 if bidirectional else 1
        H, R = hidden_size, proj_size or hidden_size  # R: the size of h
        kw = {"device": device, "dtype": dtype}
        self._names: list[list[str | None]] = []
        for k in range(num_layers):
            for d in range(D):
                sfx = f"_l{k}" + ("_reverse" if d else "")
                shapes = {
                    "weight_ih": (4 * H, input_size if k == 0 else D * R),
                    "weight_hh": (4 * H, R),
                    "bias_ih": (4 * H,) if bias else None,
                    "bias_hh": (4 * H,) if bias else None,
                    "weight_hr": (proj_size, H) if proj_size else None,
                    **variant_shapes(self.variant, H),
                }
                names: list[str | None] = []
                for base, shape in shapes.items():
                    if shape is None:
                        names.append(None)
                        continue
                    self.register_parameter(base + sfx, nn.Parameter(torch.empty(shape, **kw)))
                    names.append(base + sfx)
                self._names.append(names[:5])
        self.reset_parameters()

    def _suffixes(self) -> list[str]:
        D = 2 if self.bidirectional else 1
        return [
            f"_l{k}" + ("_reverse" if d else "") for k in range(self.num_layers) for d in range(D)
        ]

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        for sfx in self._suffixes():
            init_variant_parameters(self, self.variant, sfx)

    def _weights(self) -> list[list[Tensor | None]]:
        return [[None if n is None else getattr(self, n) for n in names] for names in self._names]

    def _variant_weights(self, x: Tensor):
        """(weights, extras) for one forward over time-major ``x``: weight drop applied to
        each weight_hh, and each layer and direction's :class:`~lstmkit.variants.CellExtras`
        with its masks, all drawn here (extras None for the plain LSTM)."""
        weights = self._weights()
        v = self.variant
        if v.is_plain():
            return weights, None
        plain_kernel = not v.features(self.training)  # e.g. weight drop alone: the plain path
        T, B = x.size(0), x.size(1)
        H, R = self.hidden_size, self.proj_size or self.hidden_size
        extras = []
        for ws, sfx in zip(weights, self._suffixes(), strict=True):
            masks = draw_masks(v, self.training, T, B, H, R, x)
            if masks["weight_drop"] is not None:
                ws[1] = ws[1] * masks["weight_drop"]
            extras.append(variant_extras(self, v, sfx, masks, masks))
        return weights, None if plain_kernel else extras

    def backend_choice(
        self, input: Tensor, lengths=None, return_cell_states: bool = False
    ) -> tuple[str, str]:
        """The backend a forward of ``input`` would run, and why: ``(name, reason)``. A query:
        it never builds the native kernel (the reason says "not built yet" when the first
        forward will)."""
        x, h0, c0, lengths, _ = self._prepare(input, None, lengths)
        D = 2 if self.bidirectional else 1
        feats = self.variant.features(self.training)
        cells = _check_flag("return_cell_states", return_cell_states)
        req = backends_request(
            x, h0, c0, self._weights(), self.num_layers, D, lengths, feats, cells
        )
        choice = backends.resolve(req, self.backend, build=False)
        return choice.name, choice.reason

    def forward(
        self,
        input,
        hx: tuple[Tensor, Tensor] | None = None,
        lengths=None,
        return_cell_states: bool = False,
    ):
        cells = _check_flag("return_cell_states", return_cell_states)
        x, h0, c0, lengths, undo = self._prepare(input, hx, lengths)
        weights, extras = self._variant_weights(x)
        out, h_n, c_n, *cs = lstm(
            x,
            h0,
            c0,
            weights,
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            dropout=self.dropout,
            training=self.training,
            lengths=lengths,
            backend=self.backend,
            extras=extras,
            features=self.variant.features(self.training),
            cell_states=cells,
        )
        if cells:
            return (*undo(out, h_n, c_n), undo(cs[0], h_n, c_n)[0])
        return undo(out, h_n, c_n)

    # -- checks at the edge ------------------------------------------------------------------

    def _prepare(self, input, hx, lengths):
        """Validate and normalise to time-major (T, B, I) plus states; return a function that
        gives the outputs back in the caller's layout."""
        D = 2 if self.bidirectional else 1
        R = self.proj_size or self.hidden_size
        packed = isinstance(input, PackedSequence)
        if packed:
            if lengths is not None:
                raise ValueError("lengths must be None when input is a PackedSequence")
            x, lengths = _unpack(input)  # (T, B, I), original batch order
            unbatched = False
        else:
            if not isinstance(input, Tensor):
                raise TypeError(
                    f"input must be a Tensor or PackedSequence, got {type(input).__name__}"
                )
            if input.dim() not in (2, 3):
                raise ValueError(
                    "input must be 3-D (T, B, I) or (B, T, I) with batch_first, "
                    f"or 2-D (T, I) unbatched, got {input.dim()}-D with shape "
                    f"{tuple(input.shape)}"
                )
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else input
            if self.batch_first and not unbatched:
                x = x.transpose(0, 1)
        if not x.is_floating_point():
            raise TypeError(f"input must be a floating-point tensor, got {x.dtype}")
        if x.size(-1) != self.input_size:
            raise ValueError(f"input.size(-1) must be {self.input_size}, got {x.size(-1)}")
        T, B = x.size(0), x.size(1)
        if T == 0 or B == 0:
            raise ValueError(f"input must have at least one step and one sequence, got {T=}, {B=}")
        if lengths is not None and not packed:
            lengths = _check_lengths(lengths, T, B, unbatched)
        want_h = (self.num_layers * D, B, R)
        want_c = (self.num_layers * D, B, self.hidden_size)
        if hx is None:
            h0 = x.new_zeros(want_h)
            c0 = x.new_zeros(want_c)
        else:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError("hx must be a tuple (h_0, c_0)")
            h0, c0 = hx
            for name, s, want in (("h_0", h0, want_h), ("c_0", c0, want_c)):
                got = tuple(s.shape)
                expect = (want[0], want[2]) if unbatched else want
                if got != expect:
                    raise ValueError(f"{name} must have shape {expect}, got {got}")
            if unbatched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)

        def undo(out, h_n, c_n):
            if packed:
                return _repack(out, input), (h_n, c_n)
            if unbatched:
                return out.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
            if self.batch_first:
                out = out.transpose(0, 1)
            return out, (h_n, c_n)

        return x, h0, c0, lengths, undo

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        described = self.variant.describe()
        return f"{s}, {described}" if described else s

    @classmethod
    def from_torch(cls, module: nn.LSTM, backend: str = "auto") -> LSTM:
        """An ``LSTM`` with ``module``'s configuration and weights (see lstmkit.convert)."""
        from lstmkit.convert import from_torch

        return from_torch(module, backend)

    def to_torch(self) -> nn.LSTM:
        """A ``torch.nn.LSTM`` with this configuration and weights (see lstmkit.convert)."""
        from lstmkit.convert import to_torch

        return to_torch(self)


def _check_flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _check_lengths(lengths, T: int, B: int, unbatched: bool) -> Tensor:
    """lengths as an int64 CPU tensor of shape (B,), every value in 1..T."""
    if isinstance(lengths, Tensor):
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
        lengths = lengths.detach().to("cpu", torch.int64)
    else:
        try:
            values = list(lengths)
        except TypeError:
            values = [lengths] if unbatched else None
        if values is None or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values
        ):
            raise TypeError(f"lengths must be a sequence of integers, got {lengths!r}")
        lengths = torch.tensor(values, dtype=torch.int64)
    lengths = lengths.reshape(-1) if unbatched else lengths
    if lengths.dim() != 1 or lengths.numel() != B:
        raise ValueError(
            f"lengths must have shape ({B},), one per sequence, got {tuple(lengths.shape)}"
        )
    if torch.compiler.is_compiling():
        # Traced (torch.compile, torch.export): the values are not known here, so the check
        # is an assert in the graph, raising RuntimeError with this message when it runs.
        ok = ((lengths >= 1) & (lengths <= T)).all()
        torch._assert_async(ok, "lengths must be in 1..T, the sequence length")
        return lengths
    if (lengths < 1).any():
        raise ValueError(f"lengths must be positive, got min {int(lengths.min())}")
    if (lengths > T).any():
        raise ValueError(
            f"lengths must be at most the sequence length {T}, got max {int(lengths.max())}"
        )
    return lengths


# Packing by index arithmetic rather than torch's pad_packed_sequence / pack_padded_sequence,
# which torch.compile does not trace: every shape here comes from the PackedSequence's own
# shapes (T from batch_sizes, B from sorted_indices, the rows from data), so T and B stay
# symbolic and a compiled model takes a PackedSequence with fullgraph=True.


def _positions(batch_sizes: Tensor, n: int, device) -> tuple[Tensor, Tensor]:
    """(t, j) of each of the n packed rows: its step and its place in the sorted batch."""
    bs = batch_sizes.to(device)
    ends = bs.cumsum(0)
    k = torch.arange(n, device=device)
    t = torch.searchsorted(ends, k, right=True)
    return t, k - (ends - bs)[t]


def _batch_size(packed: PackedSequence) -> int:
    if packed.sorted_indices is not None:
        return packed.sorted_indices.size(0)
    if torch.compiler.is_compiling():
        raise ValueError(
            "a PackedSequence under torch.compile needs sorted_indices (pack it with "
            "enforce_sorted=False): its batch size must be a shape, not a value"
        )
    return int(packed.batch_sizes[0])


def _unpack(packed: PackedSequence) -> tuple[Tensor, Tensor]:
    """(padded (T, B, I) in the caller's batch order, lengths (B,) int64 on the CPU)."""
    data, bs = packed.data, packed.batch_sizes
    T, B = bs.size(0), _batch_size(packed)
    t, j = _positions(bs, data.size(0), data.device)
    padded = data.new_zeros(T, B, data.size(1))
    padded[t, j] = data
    lengths = (torch.arange(B).unsqueeze(0) < bs.unsqueeze(1)).sum(0)  # sorted order
    if packed.unsorted_indices is not None:
        undo = packed.unsorted_indices
        padded, lengths = padded[:, undo.to(data.device)], lengths[undo.cpu()]
    return padded, lengths


def _repack(out: Tensor, like: PackedSequence) -> PackedSequence:
    """Pack (T, B, ·) ``out`` (caller's batch order) exactly as ``like`` was packed."""
    if like.sorted_indices is not None:
        out = out[:, like.sorted_indices.to(out.device)]
    t, j = _positions(like.batch_sizes, like.data.size(0), out.device)
    return PackedSequence(out[t, j], like.batch_sizes, like.sorted_indices, like.unsorted_indices)
