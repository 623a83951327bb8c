"""Every trainable head can learn: it overfits a handful of conversations from its default initialisation.

A head that cannot overfit six short conversations will not learn from thousands (README "Head
initialisation"; `benchmarks/overfit.py` measures the same on the real target).
"""

import pytest
import torch

from clover2.engine.decoding import DecodeConfig, generate
from clover2.heads.draft_vocab import frequent_tokens
from clover2.heads.protocol import head_class
from clover2.training.sharegpt import Example
from clover2.training.teacher import teacher_batch
from tests.helpers import NO_STOP

TRAINABLE = ["clover2", "clover", "eagle", "medusa"]


@pytest.fixture(scope="module")
def conversations(tiny_llama):
    """Six prompts of 8 random tokens, each with the tiny target's greedy 32-token answer (the answer is scored)."""
    generator = torch.Generator().manual_seed(3)
    rows = []
    for _ in range(6):
        prompt = torch.randint(3, 500, (8,), generator=generator).tolist()
        rows.append(prompt + generate(tiny_llama, prompt, DecodeConfig(max_new_tokens=32), NO_STOP).tokens)
    ids = torch.tensor(rows)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, 8:] = True
    return teacher_batch(tiny_llama, ids, mask)


def _top1_after(head, batch, steps: int) -> float:
    optimiser = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(steps):
        loss = head(batch).total
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    head.eval()
    with torch.no_grad():
        result = head(batch)
    return result.top1[0] / result.counted[0]


@pytest.mark.parametrize("method", TRAINABLE)
def test_head_overfits_a_handful_of_conversations(tiny_llama, conversations, method, one_thread):
    torch.manual_seed(0)
    assert _top1_after(head_class(method)(tiny_llama), conversations, steps=300) >= 0.7


@pytest.mark.parametrize("method", TRAINABLE)
def test_head_with_a_draft_vocabulary_overfits_too(tiny_llama, conversations, method, one_thread):
    torch.manual_seed(0)
    examples = [Example(ids.tolist(), mask.tolist()) for ids, mask in zip(conversations.input_ids, conversations.loss_mask)]
    ids = frequent_tokens(examples, 128, tiny_llama.config.vocab_size, [2])
    head = head_class(method)(tiny_llama, vocab_ids=ids, draft_vocab=128)
    assert head.vocab.size == 128
    assert _top1_after(head, conversations, steps=300) >= 0.7
