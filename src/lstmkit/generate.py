"""Sample text from a character-level run (task ``text``)."""

from __future__ import annotations

import math

import torch

from lstmkit.checkpoint import Run
from lstmkit.errors import DataError


@torch.no_grad()
def generate(
    run: Run, prompt: str, chars: int, temperature: float = 1.0, seed: int | None = None
) -> str:
    """``chars`` characters sampled after ``prompt`` (returned without the prompt).

    The prompt is read in one pass (ids (1, len(prompt))); then each step samples from
    softmax(logits / temperature) and feeds the character back with the LSTM state."""
    vocab = run.task.get("meta", {}).get("vocab")
    if run.config.data.task != "text" or not isinstance(vocab, str):
        raise DataError(
            f"generate needs a run of the text task, got a run of task {run.config.data.task!r}"
        )
    if isinstance(chars, bool) or not isinstance(chars, int) or chars < 0:
        raise DataError(f"chars must be an integer >= 0, got {chars!r}")
    if (
        not (isinstance(temperature, (int, float)) and math.isfinite(temperature))
        or temperature <= 0
    ):
        raise DataError(f"temperature must be a finite number > 0, got {temperature!r}")
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
        probs = torch.softmax(logits[0, -1].double().cpu() / temperature, dim=-1)
        nxt = int(torch.multinomial(probs, 1, generator=g))
        out.append(vocab[nxt])
        x = torch.tensor([[nxt]], dtype=torch.long, device=device)
        logits, state = run.model(x, hx=state, return_state=True)
    return "".join(out)
