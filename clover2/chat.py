"""Chat templates, prompt ids for a multi-turn conversation, and the tokens that end an assistant turn."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import GenerationConfig, PreTrainedTokenizerBase

# FastChat's "vicuna_v1.1" conversation (SeparatorStyle.ADD_COLON_TWO, sep " ", sep2 "</s>"), which
# Vicuna v1.5 was fine-tuned on and ships no template for. `bos_token` stands for the BOS that
# FastChat's tokenizer call adds; "</s>" is literal text as in FastChat (Llama's tokenizer maps it to EOS).
_VICUNA_V1_1 = (
    "{{- bos_token -}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    '{%- set system_message = "A chat between a curious user and an artificial intelligence assistant. '
    'The assistant gives helpful, detailed, and polite answers to the user\'s questions." -%}'
    "{%- set turns = messages -%}"
    "{%- endif -%}"
    "{{- system_message + ' ' -}}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}{{- 'USER: ' + message['content'] + ' ' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- 'ASSISTANT: ' + message['content'] + '</s>' -}}"
    "{%- else -%}{{- raise_exception('vicuna_v1.1 supports the roles system, user and assistant') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

CHAT_TEMPLATES: dict[str, str] = {"vicuna_v1.1": _VICUNA_V1_1}

# End-of-turn tokens of the chat formats this suite meets (ChatML, Llama 3, Llama 2 / Vicuna); a
# checkpoint's generation config often names only one of them.
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "</s>")


def prompt_ids(tokenizer: PreTrainedTokenizerBase, user_turns: Sequence[str], answers: Sequence[str]) -> list[int]:
    """Ids of the prompt for turn len(answers): the user turns so far, the earlier answers, the generation prompt."""
    if len(user_turns) != len(answers) + 1:
        raise ValueError(
            f"turn {len(answers)} needs {len(answers) + 1} user turns, got {len(user_turns)} "
            f"(one more user turn than answers)"
        )
    messages = []
    for index, question in enumerate(user_turns):
        messages.append({"role": "user", "content": question})
        if index < len(answers):
            messages.append({"role": "assistant", "content": answers[index]})
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    return [int(token) for token in ids]


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, generation_config: GenerationConfig | None = None) -> list[int]:
    """The ids that end an assistant turn, sorted and unique."""
    ids: set[int] = set()
    configured = generation_config.eos_token_id if generation_config is not None else None
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in _END_OF_TURN_TOKENS if token in vocab)
    return sorted(ids)
