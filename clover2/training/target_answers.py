"""Training text the target wrote itself: its own answers to the first user turns of ShareGPT.

ShareGPT's answers were written by other models; a small target continues text its own way, so a
head distilled on them learns to predict text it will never be asked to draft. Medusa-2 and later
heads train on the target's answers to the same prompts instead. Answers are generated in batches
(left-padded, Hugging Face `generate`), greedily or sampled at a temperature, and end at a stop
token or the token budget.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from clover2.engine.target import Target
from clover2.errors import Clover2Error
from clover2.training.sharegpt import Example, read_conversations
from clover2.training.teacher import pad_id


def first_user_turns(path: Path, count: int) -> list[str]:
    """The first user message of the first `count` usable conversations of a ShareGPT file."""
    turns = [messages[0]["content"] for messages in read_conversations(path) if messages][:count]
    if not turns:
        raise Clover2Error(f"{path}: no usable conversation (a user turn followed by an assistant turn)")
    return turns


@torch.inference_mode()
def target_answers(
    target: Target, prompts: list[str], max_new_tokens: int, max_length: int, temperature: float = 0.0, batch_size: int = 8, seed: int = 0
) -> list[Example]:
    """One example per prompt: the chat-formatted prompt (cut to fit `max_length`) and the target's answer, scored."""
    tokenizer, model = target.tokenizer, target.model
    pad = pad_id(target)
    budget = max_length - max_new_tokens
    if budget < 8:
        raise Clover2Error(f"target answers: max_length {max_length} leaves no room for a prompt after {max_new_tokens} new tokens")
    encoded = [
        tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True, add_generation_prompt=True, return_dict=False)[-budget:]
        for text in prompts
    ]
    torch.manual_seed(seed)
    examples = []
    for start in tqdm(range(0, len(encoded), batch_size), desc="target answers", unit="batch"):
        batch = encoded[start : start + batch_size]
        width = max(len(ids) for ids in batch)
        ids = torch.tensor([[pad] * (width - len(row)) + row for row in batch], device=model.device)
        attention = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in batch], device=model.device)
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {"do_sample": False}
        out = model.generate(input_ids=ids, attention_mask=attention, max_new_tokens=max_new_tokens, pad_token_id=pad,
                             eos_token_id=target.stop_token_ids, **sampling)
        for row, prompt in zip(out[:, width:].tolist(), batch):
            answer = _until_stop(row, target.stop_token_ids)
            examples.append(Example(prompt + answer, [False] * len(prompt) + [True] * len(answer)))
    return examples


def _until_stop(tokens: list[int], stops: list[int]) -> list[int]:
    """The answer up to and including its first stop token (generate pads finished rows after it)."""
    for index, token in enumerate(tokens):
        if token in stops:
            return tokens[: index + 1]
    return tokens
