"""The plain decoding loop against HF generate, its stopping rules, sampling and turn records."""

import pytest

from baselines.hf_generate import hf_generate
from clover2.chat import prompt_ids
from clover2.engine.decoding import DecodeConfig, generate, turn_generator
from clover2.methods import METHODS
from clover2.targets import load_target

PROMPTS = [[1, 5, 9, 33, 7], [1, 100, 200, 300, 400, 17, 17, 17], list(range(1, 60, 3))]
NO_STOP = [511]  # a token the tiny model never emits in these prompts: only the budget ends a turn


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_plain_equals_hf_generate_on_tiny_llama(tiny_llama, prompt):
    config = DecodeConfig(max_new_tokens=48)
    ours = generate(tiny_llama, prompt, config, NO_STOP)
    reference = hf_generate(tiny_llama, prompt, config, NO_STOP)
    assert ours.tokens == reference.tokens
    assert len(ours.tokens) == 48


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_target(smollm2_dir)


@pytest.mark.parametrize(
    "question",
    ["What is the capital of France?", "Write a haiku about the sea.", "List three prime numbers and explain why."],
)
def test_greedy_plain_equals_hf_generate_on_smollm2(smollm2, question):
    ids = prompt_ids(smollm2.tokenizer, [question], [])
    config = DecodeConfig(max_new_tokens=40)
    ours = generate(smollm2.model, ids, config, smollm2.stop_token_ids)
    reference = hf_generate(smollm2.model, ids, config, smollm2.stop_token_ids)
    assert ours.tokens == reference.tokens
    assert ours.new_tokens > 0


def test_every_method_decodes_the_same_greedy_tokens(tiny_llama):
    config = DecodeConfig(max_new_tokens=32)
    outputs = {
        name: make(tiny_llama)(tiny_llama, PROMPTS[1], config, NO_STOP, None).tokens for name, make in METHODS.items()
    }
    assert len(set(map(tuple, outputs.values()))) == 1, outputs


def test_seeded_sampling_is_reproducible(tiny_llama):
    config = DecodeConfig(temperature=1.0, max_new_tokens=32, seed=7)
    draw = lambda question_id: generate(  # noqa: E731
        tiny_llama, PROMPTS[0], config, NO_STOP, turn_generator(config.seed, question_id, 0, tiny_llama.device)
    ).tokens
    assert draw("q1") == draw("q1")
    assert draw("q1") != draw("q2")  # another stream: 32 draws at T = 1 from a random model differ
    greedy = generate(tiny_llama, PROMPTS[0], DecodeConfig(max_new_tokens=32), NO_STOP).tokens
    assert draw("q1") != greedy


def test_stop_token_ends_the_turn_and_is_kept(tiny_llama):
    free = generate(tiny_llama, PROMPTS[2], DecodeConfig(max_new_tokens=30), NO_STOP)
    stop = free.tokens[9]
    first = free.tokens.index(stop)
    record = generate(tiny_llama, PROMPTS[2], DecodeConfig(max_new_tokens=30), [stop])
    assert record.tokens == free.tokens[: first + 1]
    assert record.stop_reason == "stop_token"


def test_max_new_tokens_and_max_length_limit_a_turn(tiny_llama):
    by_new = generate(tiny_llama, PROMPTS[2], DecodeConfig(max_new_tokens=7), NO_STOP)
    assert (by_new.new_tokens, by_new.stop_reason) == (7, "max_new_tokens")
    prompt_len = len(PROMPTS[2])
    by_length = generate(tiny_llama, PROMPTS[2], DecodeConfig(max_new_tokens=50, max_length=prompt_len + 5), NO_STOP)
    assert (by_length.new_tokens, by_length.stop_reason) == (5, "max_length")
    full = generate(tiny_llama, PROMPTS[2], DecodeConfig(max_length=prompt_len), NO_STOP)
    assert (full.new_tokens, full.steps, full.stop_reason) == (0, 0, "max_length")


def test_plain_decoding_counts_one_token_per_step_prefill_included(tiny_llama):
    record = generate(tiny_llama, PROMPTS[0], DecodeConfig(max_new_tokens=20), NO_STOP)
    assert record.steps == record.new_tokens == 20
    assert record.accept_lengths == [1] * 20
    assert record.seconds["prefill"] > 0 and record.seconds["verify"] > record.seconds["draft"]
    assert sum(record.seconds.values()) <= record.wall_seconds


def test_hf_prompt_lookup_records_real_steps(tiny_llama):
    # A repetitive prompt gives prompt lookup n-gram matches, so some steps keep several tokens.
    prompt = [1] + [17, 23, 99, 4] * 8
    record = METHODS["hf-prompt-lookup"](tiny_llama)(tiny_llama, prompt, DecodeConfig(max_new_tokens=40), NO_STOP, None)
    plain = generate(tiny_llama, prompt, DecodeConfig(max_new_tokens=40), NO_STOP)
    assert record.tokens == plain.tokens
    assert sum(record.accept_lengths) == record.new_tokens
    assert all(length >= 1 for length in record.accept_lengths)
    assert record.steps < record.new_tokens
