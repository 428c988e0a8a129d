"""Integration check on a GPU: lstmkit.LSTM (layers, directions, lengths) through every
backend that runs on the device, against torch.nn.LSTM with copied weights, forward and
backward; then what `auto` picks. Run: PYTHONPATH=src python3 bench/gpu_integration.py"""

from __future__ import annotations

import sys

import torch

import lstmkit
from lstmkit import backends


def check(device: str, backend: str, dtype=torch.float32) -> float:
    torch.manual_seed(0)
    kw = {"num_layers": 2, "bidirectional": True, "batch_first": True}
    theirs = torch.nn.LSTM(24, 64, **kw).to(device, dtype)
    ours = lstmkit.LSTM(24, 64, backend=backend, **kw).to(device, dtype)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 30, 24, device=device, dtype=dtype)
    lengths = torch.tensor([30, 7, 19, 1, 30])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, True, enforce_sorted=False)
    ref_out, (ref_h, ref_c) = theirs(packed)
    ref_out = torch.nn.utils.rnn.pad_packed_sequence(ref_out, True, total_length=30)[0]
    out, (h, c) = ours(x, lengths=lengths)
    g = torch.randn_like(out)
    grads = []
    for model, o, hh, cc in ((ours, out, h, c), (theirs, ref_out, ref_h, ref_c)):
        model.zero_grad()
        ((o * g).sum() + hh.sum() + cc.square().sum()).backward()
        grads.append([p.grad for p in model.parameters()])
    worst = 0.0
    for a, b in [(out, ref_out), (h, ref_h), (c, ref_c), *zip(*grads, strict=True)]:
        worst = max(worst, ((a - b).norm() / b.norm().clamp_min(1e-30)).item())
    return worst


def main() -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}")
    failed = 0
    req = backends.Request(device, torch.float32, 30, 5, 24, 64, 0, 2, 2, True, True)
    for b in backends.names():
        why = None if b == "auto" else backends.unsupported(b, req)
        if why is not None:
            print(f"{b:>9}: skipped ({why})")
            continue
        err = check(device, b)
        ok = err < 1e-4
        failed += not ok
        print(f"{b:>9}: max relative error {err:.2e} -> {'PASS' if ok else 'FAIL'}")
    x = torch.randn(1000, 16, 256, device=device, dtype=torch.bfloat16)
    lstm = lstmkit.LSTM(256, 256).to(device, torch.bfloat16)
    print("auto, bf16 T=1000 B=16 H=256:", lstm.backend_choice(x))
    torch.backends.cudnn.allow_tf32 = True  # torch's default, as nn.LSTM sees it
    lstm = lstmkit.LSTM(256, 256).to(device)
    print("auto, fp32 T=1000 B=16 H=256, torch's TF32 defaults:", lstm.backend_choice(x.float()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
