"""Helpers the head tests share: teacher batches from the target's own text, a training loop, prompt states."""

import torch

from clover2.decoding import DecodeConfig, generate
from clover2.drafter import TargetStates
from clover2.teacher import teacher_batch

NO_STOP = [511]  # a token the tiny models never emit in these tests: only the budget ends a turn


def continuation_batch(model, prompt: list[int], new_tokens: int = 40):
    """The target's own greedy continuation of `prompt` as one training sequence; the continuation is scored."""
    plain = generate(model, prompt, DecodeConfig(max_new_tokens=new_tokens), NO_STOP)
    ids = torch.tensor([prompt + plain.tokens])
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, len(prompt) :] = True
    return teacher_batch(model, ids, mask)


def train_steps(head, batch, steps: int, lr: float = 3e-3) -> list[float]:
    """AdamW on one batch; the loss before each step, then once more after the last."""
    optimiser = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        result = head.loss(batch)
        losses.append(result.total.item())
        optimiser.zero_grad()
        result.total.backward()
        optimiser.step()
    losses.append(head.loss(batch).total.item())
    return losses


def prompt_states(model, ids: list[int]) -> TargetStates:
    """The target's u and h for a token sequence, as the engine would hand them to a drafter."""
    batch = teacher_batch(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool))
    return TargetStates(batch.u[0], batch.h[0])
