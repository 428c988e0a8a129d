"""Test-wide settings. The tests use tiny tensors, where a second intra-op thread only adds
synchronisation (and stalls badly when the 2 cores are shared); results do not depend on it."""

import torch

torch.set_num_threads(1)
