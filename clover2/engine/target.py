"""A loaded target: the model with what decoding and training need beside it (`clover2.targets` loads one)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Target:
    """`identity` is the prepared directory's marker file, for provenance."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    stop_token_ids: list[int]
    path: Path
    identity: dict
