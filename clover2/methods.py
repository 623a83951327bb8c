"""The registry of decoding methods: name -> a function that decodes one turn.

Every method has the signature of `clover2.decoding.generate` and returns a `TurnRecord`, so the
benchmark runner and the metrics never need to know which method produced a record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from transformers import PreTrainedModel

from baselines.hf_generate import PROMPT_LOOKUP_TOKENS, hf_generate
from clover2.decoding import DecodeConfig, TurnRecord, generate
from clover2.errors import Clover2Error

DecodeTurn = Callable[[PreTrainedModel, Sequence[int], DecodeConfig, Sequence[int], torch.Generator | None], TurnRecord]

METHODS: dict[str, DecodeTurn] = {
    "vanilla": generate,
    "hf-generate": hf_generate,
    "hf-prompt-lookup": partial(hf_generate, prompt_lookup_tokens=PROMPT_LOOKUP_TOKENS),
}


def get_method(name: str) -> DecodeTurn:
    try:
        return METHODS[name]
    except KeyError:
        raise Clover2Error(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None
