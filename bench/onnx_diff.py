"""Max abs difference between onnxruntime and lstmkit on exported LSTMs (float32).

Grid: T in {1, 7, 100}, B in {1, 5}, with and without lengths, over one-layer,
bidirectional, two-layer bidirectional and two-layer batch-first bias-free LSTMs (I=3, H=6,
and H=64); prints the max over output, h_n and c_n per config, and the overall max.

    python bench/onnx_diff.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch

from lstmkit import LSTM
from lstmkit.export import to_onnx

CONFIGS = {
    "plain": {},
    "bidirectional": {"bidirectional": True},
    "two layers, bidirectional": {"num_layers": 2, "bidirectional": True},
    "two layers, batch_first, bias=False": {"num_layers": 2, "batch_first": True, "bias": False},
}


@torch.no_grad()
def max_diff(m: LSTM, path: Path) -> float:
    sess = ort.InferenceSession(str(to_onnx(m, path, lengths=True)))
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for T in (1, 7, 100):
        for B in (1, 5):
            x = torch.randn((B, T, m.input_size) if m.batch_first else (T, B, m.input_size))
            for lengths in (torch.full((B,), T), torch.randint(1, T + 1, (B,), generator=g)):
                want = m(x, lengths=lengths)
                got = sess.run(None, {"input": x.numpy(), "lengths": lengths.numpy()})
                for a, b in zip(got, (want[0], *want[1]), strict=True):
                    worst = max(worst, (torch.from_numpy(a) - b).abs().max().item())
    return worst


def main() -> int:
    torch.manual_seed(0)
    overall = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for H in (6, 64):
            for name, cfg in CONFIGS.items():
                d = max_diff(LSTM(3, H, **cfg).eval(), Path(tmp) / "m.onnx")
                overall = max(overall, d)
                print(f"H={H:<3} {name:<40} max abs diff {d:.2e}")
    print(f"overall max abs diff {overall:.2e} (bound 1e-5)")
    return 0 if overall <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
