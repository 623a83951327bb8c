"""The decoding loop: prefill a prompt into the target's KV cache, then step until a stopping rule fires.

Plain decoding ("vanilla") is this loop with no drafter. Counting convention (METHODS.md §8): a
*step* is one target forward pass that yields tokens, the prefill included (it yields the first
token), so `steps` counts from 1 and vanilla decoding has tau = new tokens / steps = 1 exactly.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel

PHASES = ("prefill", "draft", "verify", "bookkeeping")


@dataclass(frozen=True)
class DecodeConfig:
    """The stopping rules and sampling of METHODS.md §7."""

    temperature: float = 0.0
    max_new_tokens: int = 1024
    max_length: int = 1960  # prompt + new tokens
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.max_new_tokens < 1 or self.max_length < 1:
            raise ValueError("max_new_tokens and max_length must be >= 1")


@dataclass
class TurnRecord:
    """What one assistant turn cost and produced."""

    prompt_tokens: int
    tokens: list[int] = field(default_factory=list)  # new tokens, the stop token included when hit
    accept_lengths: list[int] = field(default_factory=list)  # tokens kept per step; one entry per step
    stop_reason: str = ""  # "stop_token" | "max_new_tokens" | "max_length"
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    wall_seconds: float = 0.0

    @property
    def new_tokens(self) -> int:
        return len(self.tokens)

    @property
    def steps(self) -> int:
        return len(self.accept_lengths)

    def to_json(self) -> dict:
        return {**asdict(self), "new_tokens": self.new_tokens, "steps": self.steps}


class Stopwatch:
    """Accumulates wall time per phase; synchronises CUDA so GPU work is charged to its own phase."""

    def __init__(self, device: torch.device) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.sync()
        start = time.perf_counter()
        yield
        self.sync()
        self.seconds[name] += time.perf_counter() - start


def turn_generator(seed: int, question_id: str, turn: int, device: torch.device) -> torch.Generator:
    """A sampling stream that depends only on (seed, question, turn), not on which questions ran before."""
    stream = zlib.crc32(f"{seed}/{question_id}/{turn}".encode())
    return torch.Generator(device=device).manual_seed(stream)


def sample(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids from logits [..., V]: argmax at T = 0, else plain sampling at temperature T."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def token_budget(prompt_tokens: int, config: DecodeConfig) -> tuple[int, str]:
    """How many tokens this turn may add, and which rule sets that limit."""
    by_length = config.max_length - prompt_tokens
    if by_length < config.max_new_tokens:
        return max(by_length, 0), "max_length"
    return config.max_new_tokens, "max_new_tokens"


@torch.inference_mode()
def generate(
    model: PreTrainedModel,
    prompt_ids: Sequence[int],
    config: DecodeConfig,
    stop_token_ids: Sequence[int],
    generator: torch.Generator | None = None,
) -> TurnRecord:
    """Decode one turn with the target alone: prefill, then one forward per token."""
    record = TurnRecord(prompt_tokens=len(prompt_ids))
    budget, limit_reason = token_budget(len(prompt_ids), config)
    record.stop_reason = limit_reason
    if budget == 0:
        return record
    device = model.device
    stops = set(stop_token_ids)
    clock = Stopwatch(device)
    started = time.perf_counter()
    cache = DynamicCache(config=model.config)
    with clock.phase("prefill"):
        input_ids = torch.tensor([list(prompt_ids)], device=device)
        logits = model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1).logits
    while True:
        with clock.phase("bookkeeping"):
            token = sample(logits[:, -1], config.temperature, generator)
            token_id = int(token)
            record.tokens.append(token_id)
            record.accept_lengths.append(1)
            if token_id in stops:
                record.stop_reason = "stop_token"
                break
            if len(record.tokens) >= budget:
                break
        with clock.phase("verify"):
            logits = model(input_ids=token.view(1, 1), cache=cache, use_cache=True).logits
    record.seconds = clock.seconds
    record.wall_seconds = time.perf_counter() - started
    return record
