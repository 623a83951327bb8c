"""Hugging Face `generate` — plain and prompt-lookup decoding — as the references a user would otherwise pick.

`generate` is a black box, so its turn record is read from outside: forward hooks on the target
count the steps (forward passes) and time them; the first forward is the prefill. The tokens a
step kept are read from the cache length at the next forward, because assisted decoding crops the
cache to the accepted tokens before it calls the target again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from transformers import GenerationConfig, PreTrainedModel

from clover2.engine.decoding import DecodeConfig, Stopwatch, TurnRecord, token_budget

PROMPT_LOOKUP_TOKENS = 10  # transformers' default candidate length for prompt lookup


class _ForwardProbe:
    """Hooks that time every forward pass of `model` and note the cache length it starts from."""

    def __init__(self, model: PreTrainedModel, timing: str) -> None:
        self.clock = Stopwatch(model.device, timing)
        self.cache_lengths: list[int] = []
        self._started = 0.0
        self._handles = [
            model.register_forward_pre_hook(self._before, with_kwargs=True),
            model.register_forward_hook(self._after),
        ]

    def _before(self, module, args, kwargs) -> None:
        cache = kwargs.get("cache")
        self.cache_lengths.append(cache.get_seq_length() if cache is not None else 0)
        self.clock.sync()
        self._started = time.perf_counter()

    def _after(self, module, args, output) -> None:
        self.clock.sync()
        phase = "prefill" if len(self.cache_lengths) == 1 else "verify"
        self.clock.seconds[phase] += time.perf_counter() - self._started

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _accept_lengths(cache_lengths: list[int], prompt_tokens: int, new_tokens: int) -> list[int]:
    """Tokens kept by each forward: the growth of the cache between consecutive forwards."""
    # Counting from prompt_tokens - 1 makes the prefill's own token count as that step's 1.
    starts = [prompt_tokens - 1, *cache_lengths[1:]]
    lengths = [b - a for a, b in zip(starts, starts[1:])]
    return [*lengths, new_tokens - sum(lengths)]


@torch.inference_mode()
def hf_generate(
    model: PreTrainedModel,
    prompt_ids: Sequence[int],
    config: DecodeConfig,
    stop_token_ids: Sequence[int],
    generator: torch.Generator | None = None,
    prompt_lookup_tokens: int | None = None,
) -> TurnRecord:
    """One turn through `model.generate`, with the same stopping rules as our own loop."""
    record = TurnRecord(prompt_tokens=len(prompt_ids))
    budget, limit_reason = token_budget(len(prompt_ids), config)
    record.stop_reason = limit_reason
    if budget == 0:
        return record
    if generator is not None:
        # generate draws from the global RNG; seed it from the turn's own stream.
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    sampling = config.temperature > 0
    generation_config = GenerationConfig(
        max_new_tokens=budget,
        do_sample=sampling,
        temperature=config.temperature if sampling else None,
        top_k=0 if sampling else None,
        top_p=1.0 if sampling else None,
        eos_token_id=list(stop_token_ids),
        pad_token_id=stop_token_ids[0],
        prompt_lookup_num_tokens=prompt_lookup_tokens,
    )
    probe = _ForwardProbe(model, config.timing)
    try:
        input_ids = torch.tensor([list(prompt_ids)], device=model.device)
        output = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=generation_config
        )
    finally:
        probe.remove()
    probe.clock.finish(record)
    record.tokens = output[0, len(prompt_ids) :].tolist()
    if record.tokens and record.tokens[-1] in stop_token_ids:
        record.stop_reason = "stop_token"
    record.accept_lengths = _accept_lengths(probe.cache_lengths, len(prompt_ids), len(record.tokens))
    # What generate did around the forwards (sampling, stopping checks, candidate lookup) is bookkeeping.
    record.seconds["bookkeeping"] = record.wall_seconds - record.seconds["prefill"] - record.seconds["verify"]
    return record
