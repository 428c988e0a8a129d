"""Shared by the tests: run lstmkit.LSTM and torch.nn.LSTM with copied weights on one case and
compare outputs, final states and every gradient."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstmkit

TOL = {torch.float64: {"atol": 1e-10, "rtol": 1e-10}, torch.float32: {"atol": 1e-5, "rtol": 1e-5}}


@dataclass(frozen=True)
class Case:
    layers: int = 1
    bidirectional: bool = False
    proj: int = 0
    bias: bool = True
    batch_first: bool = False
    unbatched: bool = False
    packed: str = ""  # "", "sorted" or "unsorted"
    lengths: bool = False
    T: int = 5
    B: int = 3
    I: int = 4
    H: int = 6
    with_state: bool = True


GRID = [
    Case(),
    Case(layers=2),
    Case(layers=3, bidirectional=True),
    Case(bidirectional=True),
    Case(proj=3),
    Case(layers=2, bidirectional=True, proj=2),
    Case(bias=False),
    Case(batch_first=True),
    Case(unbatched=True),
    Case(unbatched=True, bidirectional=True, layers=2),
    Case(packed="sorted", bidirectional=True),
    Case(packed="unsorted", layers=2, bidirectional=True, proj=4),
    Case(packed="unsorted", with_state=False),
    Case(lengths=True),
    Case(lengths=True, bidirectional=True, layers=2),
    Case(lengths=True, bidirectional=True, proj=3, batch_first=True),
    Case(T=1),
    Case(T=1, bidirectional=True, lengths=True),
    Case(B=1),
    Case(B=1, lengths=True, bidirectional=True),
    Case(with_state=False, layers=2),
]


def case_id(c: Case) -> str:
    return "-".join(f"{k}={v}" for k, v in c.__dict__.items() if v != Case.__dict__[k]) or "base"


def _lengths(c: Case) -> torch.Tensor:
    if c.packed == "sorted":
        return torch.linspace(c.T, 1, c.B).round().long()
    lens = torch.randint(1, c.T + 1, (c.B,))
    lens[0] = c.T if c.B > 1 else lens[0]
    return lens


def run_both(c: Case, dtype: torch.dtype, backend: str = "auto", seed: int = 0):
    """(ours, theirs): each a dict of output, h_n, c_n and named gradients."""
    torch.manual_seed(seed)
    kw = {
        "num_layers": c.layers,
        "bidirectional": c.bidirectional,
        "proj_size": c.proj,
        "bias": c.bias,
        "batch_first": c.batch_first,
        "dtype": dtype,
    }
    theirs = torch.nn.LSTM(c.I, c.H, **kw)
    ours = lstmkit.LSTM(c.I, c.H, backend=backend, **kw)
    ours.load_state_dict(theirs.state_dict())
    D = 2 if c.bidirectional else 1
    R = c.proj or c.H
    shape = (c.T, c.I) if c.unbatched else (c.B, c.T, c.I) if c.batch_first else (c.T, c.B, c.I)
    x = torch.randn(shape, dtype=dtype)
    sb = () if c.unbatched else (c.B,)
    h0 = torch.randn(c.layers * D, *sb, R, dtype=dtype)
    c0 = torch.randn(c.layers * D, *sb, c.H, dtype=dtype)
    lens = _lengths(c) if (c.packed or c.lengths) else None
    results = []
    for model, is_ours in ((ours, True), (theirs, False)):
        xi, hi, ci = (t.clone().requires_grad_() for t in (x, h0, c0))
        hx = (hi, ci) if c.with_state else None
        if c.packed:
            inp = pack_padded_sequence(
                xi, lens, batch_first=c.batch_first, enforce_sorted=c.packed == "sorted"
            )
            out, (h_n, c_n) = model(inp, hx)
            out = out.data
        elif c.lengths and is_ours:
            out, (h_n, c_n) = model(xi, hx, lengths=lens)
        elif c.lengths:  # torch needs packing for the same answer
            inp = pack_padded_sequence(xi, lens, batch_first=c.batch_first, enforce_sorted=False)
            packed_out, (h_n, c_n) = model(inp, hx)
            out = torch.nn.utils.rnn.pad_packed_sequence(
                packed_out, batch_first=c.batch_first, total_length=c.T
            )[0]
        else:
            out, (h_n, c_n) = model(xi, hx)
        g = torch.Generator().manual_seed(seed + 1)
        loss = (
            (out * torch.randn(out.shape, generator=g, dtype=dtype)).sum()
            + (h_n * torch.randn(h_n.shape, generator=g, dtype=dtype)).sum()
            + (c_n * torch.randn(c_n.shape, generator=g, dtype=dtype)).sum()
        )
        loss.backward()
        r = {"output": out.detach(), "h_n": h_n.detach(), "c_n": c_n.detach(), "grad_x": xi.grad}
        if c.with_state:
            r["grad_h0"], r["grad_c0"] = hi.grad, ci.grad
        r.update({f"grad_{n}": p.grad for n, p in model.named_parameters()})
        results.append(r)
    return results


def assert_same(ours: dict, theirs: dict, dtype: torch.dtype) -> None:
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert ours[k] is not None, f"{k} has no gradient"
        torch.testing.assert_close(ours[k], theirs[k], **TOL[dtype], msg=lambda m, k=k: f"{k}: {m}")
