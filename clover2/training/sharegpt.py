"""ShareGPT conversations as training sequences: the target's chat template, loss mask on assistant tokens."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from clover2.errors import Clover2Error

ROLES = {"human": "user", "gpt": "assistant"}
SHAREGPT_FILE = "sharegpt/sharegpt_v3_part1.jsonl.gz"


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    loss_mask: list[bool]  # True on tokens the assistant wrote (its end-of-turn token included)


def read_conversations(path: Path) -> Iterator[list[dict[str, str]]]:
    """Chat messages per conversation; turns from other roles or empty texts end the usable part."""
    for where, item in _records(Path(path)):
        try:
            record = json.loads(item) if isinstance(item, str) else item
            messages = [{"role": ROLES.get(t["from"], ""), "content": t["value"]} for t in record["conversations"]]
        except (ValueError, KeyError, TypeError) as error:
            raise Clover2Error(f"{path}:{where}: expected {{'conversations': [{{'from', 'value'}}, ...]}} ({error})") from None
        yield _usable_prefix(messages)


def _records(path: Path) -> Iterator[tuple[int | str, str | dict]]:
    """(where, record): JSON lines (.jsonl[.gz]) as text per line, or one JSON array (.json[.gz], as ShareGPT ships)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        if path.name.endswith((".json", ".json.gz")):
            try:
                records = json.load(handle)
            except ValueError as error:
                raise Clover2Error(f"{path}: not a JSON array of conversations ({error})") from None
            if not isinstance(records, list):
                raise Clover2Error(f"{path}: expected a JSON array of conversations, got {type(records).__name__}")
            yield from ((f"record {index}", record) for index, record in enumerate(records))
            return
        yield from ((number, line) for number, line in enumerate(handle, start=1) if line.strip())


def _usable_prefix(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The longest prefix alternating user / assistant from a user turn, with non-empty texts."""
    usable = []
    for index, message in enumerate(messages):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected or not message["content"].strip():
            break
        usable.append(message)
    return usable[: len(usable) - len(usable) % 2]


def encode(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], max_length: int) -> Example | None:
    """Token ids of the conversation with its assistant spans marked; None when nothing is left to learn."""
    render = lambda part, prompt: tokenizer.apply_chat_template(  # noqa: E731
        part, tokenize=True, add_generation_prompt=prompt, return_dict=False
    )
    ids = list(render(messages, False))
    mask = [False] * len(ids)
    for index in range(1, len(messages), 2):
        start = len(render(messages[:index], True))
        end = len(render(messages[: index + 1], False))
        mask[start:end] = [True] * (end - start)
    ids, mask = ids[:max_length], mask[:max_length]
    return Example(ids, mask) if any(mask) else None


def load_examples(tokenizer: PreTrainedTokenizerBase, path: Path, count: int, max_length: int) -> list[Example]:
    """The first `count` usable conversations of the file, encoded."""
    examples = []
    for messages in read_conversations(path):
        example = encode(tokenizer, messages, max_length) if messages else None
        if example is not None:
            examples.append(example)
            if len(examples) == count:
                break
    if not examples:
        raise Clover2Error(f"{path}: no usable conversation (a user turn followed by an assistant turn)")
    return examples


def collate(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, loss_mask, attention_mask), each [B, T]."""
    length = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    loss_mask = torch.zeros(len(examples), length, dtype=torch.bool)
    attention = torch.zeros(len(examples), length, dtype=torch.bool)
    for row, example in enumerate(examples):
        size = len(example.input_ids)
        ids[row, :size] = torch.tensor(example.input_ids)
        loss_mask[row, :size] = torch.tensor(example.loss_mask)
        attention[row, :size] = True
    return ids, loss_mask, attention
