"""The cuDNN backend's packing and reversal logic, and the CUDA policy of ``auto``.

``torch._VF.lstm`` also runs on the CPU (without cuDNN), so ``cudnn.run`` is checked here
against the reference; the backend itself refuses the CPU."""

from __future__ import annotations

import pytest
import torch

from lstmkit.backends import Request, cudnn, policy_cuda, reference, resolve
from lstmkit.backends import triton as tb


def _req(**kw):
    base = dict(device_type="cuda", dtype=torch.float32, T=100, B=16, I=32, H=256, P=0,
                num_layers=1, directions=1, has_lengths=False, needs_grad=True)  # fmt: skip
    return Request(**{**base, **kw})


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("proj", [0, 3])
def test_run_matches_reference(reverse, lengths, proj):
    torch.manual_seed(0)
    T, B, I, H = 6, 4, 3, 5
    P = proj or H
    x = torch.randn(T, B, I, requires_grad=True)
    h0, c0 = torch.randn(B, P, requires_grad=True), torch.randn(B, H, requires_grad=True)
    w = [torch.randn(4 * H, I), torch.randn(4 * H, P), torch.randn(4 * H), torch.randn(4 * H)]
    w = [t.mul(0.3).requires_grad_() for t in w]
    w_hr = torch.randn(P, H).mul(0.3).requires_grad_() if proj else None
    lens = torch.tensor([6, 2, 4, 1]) if lengths else None
    args = (x, h0, c0, *w, w_hr, lens, reverse)
    got, want = cudnn.run(*args), reference.run(*args)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    inputs = [x, h0, c0, *w] + ([w_hr] if proj else [])
    loss_g = sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in got)
    loss_w = sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in want)
    for a, b in zip(
        torch.autograd.grad(loss_g, inputs), torch.autograd.grad(loss_w, inputs), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_cpu_is_refused():
    assert cudnn.unsupported(_req(device_type="cpu")) == "device cpu (cudnn runs on CUDA only)"
    assert cudnn.unsupported(_req()) is None


def test_auto_on_cuda_says_why(monkeypatch):
    monkeypatch.setattr(tb, "_triton_installed", lambda: False)
    name, why = policy_cuda.auto_cuda(_req())
    assert name == "cudnn" and "triton is not installed" in why
    monkeypatch.setattr(tb, "_triton_installed", lambda: True)
    assert policy_cuda.auto_cuda(_req(P=8)) == ("cudnn", "cuda: triton cannot run this (proj_size)")
    name, why = policy_cuda.auto_cuda(_req(dtype=torch.float16))
    assert name == "cudnn" and "float16" in why
    choice = resolve(_req(dtype=torch.bfloat16), "auto")
    assert choice.name == "triton" and choice.reason.startswith("auto: cuda: bfloat16")
    assert policy_cuda.auto_cuda(_req(dtype=torch.bfloat16, H=64))[0] == "cudnn"
    assert policy_cuda.auto_cuda(_req(dtype=torch.bfloat16, B=256))[0] == "cudnn"
    assert policy_cuda.auto_cuda(_req(dtype=torch.bfloat16, H=1024))[0] == "cudnn"


_PRECISION_FLAGS = ("backends", "backends.cudnn", "backends.cudnn.rnn", "backends.cudnn.conv")


def _obj(path):
    obj = torch
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj


def _flags():
    """Every TF32 setting that decides cuDNN's RNN precision, to restore after a test."""
    new_api = {p: getattr(_obj(p), "fp32_precision", None) for p in _PRECISION_FLAGS}
    return new_api, torch.backends.cuda.matmul.allow_tf32


@pytest.fixture
def tf32_flags():
    saved = _flags()
    yield
    for p, v in saved[0].items():
        if v is not None:
            _obj(p).fp32_precision = v
    torch.backends.cuda.matmul.allow_tf32 = saved[1]
    if saved[0]["backends.cudnn.rnn"] is None:  # torch < 2.9: only the legacy flag
        torch.backends.cudnn.allow_tf32 = True
    assert _flags() == saved


@pytest.mark.usefixtures("tf32_flags")
def test_tf32_follows_cudnns_rnn_flag_not_the_matmul_flag():
    # nn.LSTM on CUDA runs cuDNN's RNN, whose TF32 setting is the cuDNN one; the triton
    # backend does what nn.LSTM would do, whatever torch.backends.cuda.matmul says
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = False
    assert not tb.tf32_enabled()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True
    assert tb.tf32_enabled()
    rnn = _obj("backends.cudnn.rnn")
    if getattr(rnn, "fp32_precision", None) is not None:  # torch >= 2.9's per-operator flags
        rnn.fp32_precision = "ieee"
        assert not tb.tf32_enabled()
        rnn.fp32_precision = "tf32"
        assert tb.tf32_enabled()


@pytest.mark.usefixtures("tf32_flags")
@pytest.mark.parametrize("tf32, want", [(False, "cudnn"), (True, "triton")])
def test_auto_on_cuda_float32_follows_tf32(tf32, want, monkeypatch):
    monkeypatch.setattr(tb, "_triton_installed", lambda: True)
    torch.backends.cudnn.allow_tf32 = tf32
    name, why = policy_cuda.auto_cuda(_req(H=256, B=16))
    assert name == want and "TF32" in why
    # hidden 512 measured slower than cuDNN on the H200 at TF32
    assert policy_cuda.auto_cuda(_req(H=512, B=16))[0] == "cudnn"
