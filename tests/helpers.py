"""Helpers the head tests share: teacher batches from the target's own text, a training loop, prompt states,
and a tiny random target prepared on disk for the tests that run `clover2` as a command."""

import gzip
import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from clover2.engine import kernels
from clover2.engine.decoding import DecodeConfig, generate
from clover2.engine.drafter import TargetStates
from clover2.targets import prepare_target
from clover2.training.teacher import teacher_batch

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


def check_overfit_then_accepted(model, trained, prompt: list[int]) -> None:
    """A head overfitted on the target's continuation of `prompt` lost most of its loss and drafts it back."""
    head, before, after = trained
    assert after < 0.3 * before
    plain = generate(model, prompt, DecodeConfig(max_new_tokens=40), NO_STOP)
    record = generate(model, prompt, DecodeConfig(max_new_tokens=40), NO_STOP, drafter=head.drafter())
    assert record.tokens == plain.tokens
    assert record.steps < plain.steps / 2  # it learnt the continuation it trained on


def check_greedy_lossless(model, head, prompt: list[int]) -> None:
    config = DecodeConfig(max_new_tokens=40)
    plain = generate(model, prompt, config, NO_STOP)
    record = generate(model, prompt, config, NO_STOP, drafter=head.drafter())
    assert record.tokens == plain.tokens
    assert sum(record.accept_lengths) == 40


def check_seeded_sampling(model, head, prompt: list[int]) -> None:
    config = DecodeConfig(temperature=1.0, max_new_tokens=40)
    runs = [generate(model, prompt, config, NO_STOP, torch.Generator().manual_seed(0), head.drafter()) for _ in range(2)]
    assert runs[0].new_tokens == sum(runs[0].accept_lengths) == 40
    assert runs[0].tokens == runs[1].tokens  # the seeded generator drives every draw, drafts included


def overfitted(head_class, model, prompt: list[int]):
    """(head, loss before, loss after): a fresh head trained 60 steps on the target's continuation of `prompt`."""
    torch.manual_seed(1)
    head = head_class(model)
    losses = train_steps(head, continuation_batch(model, prompt), steps=60, lr=1e-2)
    return head, losses[0], losses[-1]


def prepare_tiny_target(smollm2_dir: Path, root: Path) -> Path:
    """ROOT/target: a tiny random Llama over SmolLM2's vocabulary (and its tokenizer), prepared as a target."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(root / "source")
    tokenizer.save_pretrained(root / "source")
    return prepare_target(str(root / "source"), root / "target")


def write_sharegpt(path: Path, conversations: list[tuple[str, str]]) -> Path:
    """One question and its answer per conversation, as a ShareGPT JSON-lines file."""
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for number, (question, answer) in enumerate(conversations):
            turns = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
            handle.write(json.dumps({"id": str(number), "conversations": turns}) + "\n")
    return path


def use_kernels(monkeypatch, choice: str) -> None:
    """Choose the kernel backend for one test; the previous choice comes back at teardown."""
    monkeypatch.setattr(kernels, "_choice", kernels.chosen_backend())
    kernels.choose_backend(choice)
