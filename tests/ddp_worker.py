"""Run by test_distributed under torchrun: ``lstmkit ARGS...`` through the CLI, then this
rank's final and best weights, validation losses and next random numbers (what its dropout
would draw) into DUMP/rank{RANK}.safetensors, so the test can compare the ranks.

Usage: ddp_worker.py DUMP ARGS..."""

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import lstmkit.train as train_mod
from lstmkit.cli import main

results = []
real_train = train_mod.train


def recording_train(*args, **kwargs):
    res = real_train(*args, **kwargs)
    results.append(res)
    return res


if __name__ == "__main__":
    dump = Path(sys.argv[1])
    train_mod.train = recording_train  # the CLI imports it at call time
    code = main(sys.argv[2:])
    if code:
        sys.exit(code)
    st = results[0].state
    tensors = {f"final.{k}": v.contiguous() for k, v in st.model.items()}
    tensors |= {f"best.{k}": v.contiguous() for k, v in st.best_weights.items()}
    tensors["val_loss"] = torch.tensor([r["val_loss"] for r in st.history], dtype=torch.float64)
    tensors["rng_probe"] = torch.rand(4)
    dump.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dump / f"rank{os.environ.get('RANK', '0')}.safetensors"))
