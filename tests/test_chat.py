"""Chat templates, multi-turn prompt ids and stop tokens."""

from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast

from clover2.chat import CHAT_TEMPLATES, prompt_ids, stop_token_ids

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def word_tokenizer(words: list[str], **special: str) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over `words`: enough to test templates and special tokens in milliseconds."""
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", **special)


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_dir: Path):
    return AutoTokenizer.from_pretrained(smollm2_dir)


def test_vicuna_template_renders_fastchat_format():
    tokenizer = word_tokenizer(["<unk>", "<s>", "</s>"], bos_token="<s>", eos_token="</s>")
    messages = [
        {"role": "user", "content": "Hi there."},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Name a colour."},
    ]
    text = tokenizer.apply_chat_template(
        messages, chat_template=CHAT_TEMPLATES["vicuna_v1.1"], tokenize=False, add_generation_prompt=True
    )
    # FastChat's get_prompt() for vicuna_v1.1, after the BOS its tokenizer call adds.
    expected = (
        "<s>" + VICUNA_SYSTEM + " USER: Hi there. ASSISTANT: Hello! How can I help?</s>USER: Name a colour. ASSISTANT:"
    )
    assert text == expected


def test_vicuna_template_takes_a_system_message():
    tokenizer = word_tokenizer(["<unk>", "<s>"], bos_token="<s>")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi."}]
    text = tokenizer.apply_chat_template(
        messages, chat_template=CHAT_TEMPLATES["vicuna_v1.1"], tokenize=False, add_generation_prompt=True
    )
    assert text == "<s>Be brief. USER: Hi. ASSISTANT:"


def test_smollm2_second_turn_prompt_holds_first_answer(smollm2_tokenizer):
    ids = prompt_ids(smollm2_tokenizer, ["What is 2+2?", "And 3+3?"], ["2+2 equals 4."])
    assert all(type(token) is int for token in ids)
    text = smollm2_tokenizer.decode(ids)
    assert "<|im_start|>assistant\n2+2 equals 4.<|im_end|>" in text
    assert text.index("What is 2+2?") < text.index("2+2 equals 4.") < text.index("And 3+3?")
    assert text.endswith("<|im_start|>assistant\n")


def test_vicuna_second_turn_prompt_holds_first_answer(smollm2_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer.name_or_path)
    tokenizer.chat_template = CHAT_TEMPLATES["vicuna_v1.1"]
    text = tokenizer.decode(prompt_ids(tokenizer, ["What is 2+2?", "And 3+3?"], ["2+2 equals 4."]))
    assert "USER: What is 2+2? ASSISTANT: 2+2 equals 4.</s>USER: And 3+3? ASSISTANT:" in text
    assert text.endswith("ASSISTANT:")


def test_first_turn_prompt_matches_template(smollm2_tokenizer):
    ids = prompt_ids(smollm2_tokenizer, ["Hello"], [])
    text = smollm2_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], tokenize=False, add_generation_prompt=True
    )
    assert ids == smollm2_tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(("user_turns", "answers"), [(["a", "b"], []), (["a"], ["x"]), ([], [])])
def test_prompt_ids_needs_one_more_user_turn_than_answers(smollm2_tokenizer, user_turns, answers):
    with pytest.raises(ValueError, match="user turns"):
        prompt_ids(smollm2_tokenizer, user_turns, answers)


def test_smollm2_stops_at_im_end(smollm2_tokenizer):
    im_end = smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in stop_token_ids(smollm2_tokenizer)
    assert stop_token_ids(smollm2_tokenizer, GenerationConfig(eos_token_id=2)) == [im_end]


def test_llama3_style_tokenizer_stops_at_eot_id():
    tokenizer = word_tokenizer(["<unk>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "hello"],
                               bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    assert stop_token_ids(tokenizer) == [2, 3]
    assert stop_token_ids(tokenizer, GenerationConfig(eos_token_id=[4, 2])) == [2, 3, 4]
