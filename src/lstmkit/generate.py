"""Sample text from a character-level run (task ``text``)."""

from __future__ import annotations

import torch

from lstmkit.checkpoint import Run
from lstmkit.errors import DataError, RunDirError
from lstmkit.limits import MAX_CHARS, MAX_SEED, MAX_TEMPERATURE, MIN_TEMPERATURE


@torch.no_grad()
def generate(
    run: Run, prompt: str, chars: int, temperature: float = 1.0, seed: int | None = None
) -> str:
    """``chars`` characters sampled after ``prompt`` (returned without the prompt).

    The prompt is read in one pass (ids (1, len(prompt))); then each step samples from
    softmax(logits / temperature) and feeds the character back with the LSTM state."""
    vocab = run.task.meta.get("vocab")
    if run.config.data.task != "text" or not isinstance(vocab, str):
        raise DataError(
            f"generate needs a run of the text task, got a run of task {run.config.data.task!r}"
        )
    if isinstance(chars, bool) or not isinstance(chars, int) or not 0 <= chars <= MAX_CHARS:
        raise DataError(f"chars must be an integer in 0..{MAX_CHARS}, got {chars!r}")
    if not (
        isinstance(temperature, (int, float)) and MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE
    ):
        raise DataError(
            f"temperature must be a number in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], "
            f"got {temperature!r}"
        )
    if seed is not None and not (isinstance(seed, int) and 0 <= seed <= MAX_SEED):
        raise DataError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    if not prompt:
        raise DataError("prompt must hold at least one character, got an empty prompt")
    lookup = {c: i for i, c in enumerate(vocab)}
    unknown = sorted({c for c in prompt if c not in lookup})
    if unknown:
        raise DataError(
            f"prompt has characters outside the run's vocabulary of {len(vocab)}: "
            f"{''.join(unknown)!r}"
        )
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    run.model.eval()
    device = next(run.model.parameters()).device
    x = torch.tensor([[lookup[c] for c in prompt]], dtype=torch.long, device=device)
    logits, state = run.model(x, return_state=True)
    out = []
    for _ in range(chars):
        nxt = _sample(logits[0, -1], temperature, g, run)
        out.append(vocab[nxt])
        x = torch.tensor([[nxt]], dtype=torch.long, device=device)
        logits, state = run.model(x, hx=state, return_state=True)
    return "".join(out)


def _sample(logits: torch.Tensor, temperature: float, g: torch.Generator, run: Run) -> int:
    """One id drawn from softmax(logits / temperature) (logits (V,))."""
    z = logits.double().cpu() / temperature
    if not bool(torch.isfinite(z).all()):
        raise RunDirError(
            f"run {run.path}: the model gives non-finite scores (NaN or Inf); its weights are "
            "damaged or it diverged in training"
        )
    return int(torch.multinomial(torch.softmax(z, dim=-1), 1, generator=g))
