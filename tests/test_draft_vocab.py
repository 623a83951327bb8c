"""The reduced draft vocabulary: its selection, its storage in the head directory, and losslessness with it."""

from functools import partial

import pytest
import torch
from safetensors.torch import load_file

from clover2.engine.decoding import DecodeConfig, generate
from clover2.engine.target import Target
from clover2.errors import Clover2Error
from clover2.heads.directory import WEIGHTS, load_head, save_head
from clover2.heads.draft_vocab import IDS, frequent_tokens
from clover2.heads.protocol import head_class
from clover2.lossless import check_sampling
from clover2.training.sharegpt import Example
from tests.helpers import check_greedy_lossless, check_seeded_sampling, prompt_states

TRAINABLE = ["clover2", "clover", "eagle", "medusa"]
EVEN = torch.arange(0, 512, 2)  # half the tiny vocabulary: the target's favourite token is often outside


def test_the_most_frequent_assistant_tokens_are_kept_with_the_stop_tokens():
    examples = [
        Example([5, 7, 7, 9, 9, 9], [False, True, True, True, True, True]),
        Example([5, 5, 5, 5, 3, 7], [False, False, False, False, True, True]),  # 5 only in the prompt: not counted
    ]
    assert frequent_tokens(examples, 2, 16, forced=[]).tolist() == [7, 9]  # 7 three times, 9 three times
    assert frequent_tokens(examples, 3, 16, forced=[15]).tolist() == [7, 9, 15]
    assert frequent_tokens(examples, 3, 16, forced=[]).tolist() == [3, 7, 9]  # then 3 (once) before never-seen ids
    assert frequent_tokens(examples, 4, 16, forced=[]).tolist() == [0, 3, 7, 9]  # unseen: lowest id first
    with pytest.raises(Clover2Error, match="draft_vocab"):
        frequent_tokens(examples, 1, 16, forced=[14, 15])


def test_a_subset_head_needs_its_ids(tiny_llama):
    with pytest.raises(Clover2Error, match="draft_vocab 8"):
        head_class("eagle")(tiny_llama, draft_vocab=8)


def _subset_head(model, method: str):
    torch.manual_seed(0)
    return head_class(method)(model, vocab_ids=EVEN, draft_vocab=EVEN.numel())


@pytest.mark.parametrize("method", TRAINABLE)
def test_the_subset_is_saved_in_the_head_directory_and_loaded_back(tiny_llama, tmp_path, method):
    head = _subset_head(tiny_llama, method)
    save_head(head, tmp_path / method, {"name": "tiny"})
    assert torch.equal(load_file(tmp_path / method / WEIGHTS)[IDS], EVEN)
    loaded = load_head(tmp_path / method, tiny_llama)
    assert torch.equal(loaded.vocab.ids, EVEN) and loaded.options["draft_vocab"] == 256
    prompt = [1, 5, 9, 33, 7]
    assert generate(tiny_llama, prompt, DecodeConfig(max_new_tokens=24), [511], drafter=loaded.drafter()).tokens == generate(
        tiny_llama, prompt, DecodeConfig(max_new_tokens=24), [511], drafter=head.drafter()
    ).tokens


@pytest.mark.parametrize("method", TRAINABLE)
def test_a_subset_head_drafts_only_subset_tokens_and_stays_lossless(tiny_llama, method):
    head = _subset_head(tiny_llama, method)
    tree = _first_tree(tiny_llama, head)
    assert set(tree.tokens[1:].tolist()) <= set(EVEN.tolist())
    check_greedy_lossless(tiny_llama, head, [1, 5, 9, 33, 7])
    check_seeded_sampling(tiny_llama, head, [1, 5, 9, 33, 7])


def _first_tree(model, head):
    drafter = head.drafter()
    prompt = [1, 5, 9, 33, 7]
    drafter.prefill(torch.tensor(prompt), prompt_states(model, prompt))
    return drafter.draft(3, 0.0, None)


def test_sampling_with_a_subset_matches_plain_sampling(peaked_llama, one_thread):
    """q is zero outside the subset; the residual max(p - q, 0) gives those tokens their full mass back."""
    target = Target(model=peaked_llama, tokenizer=None, stop_token_ids=[511], path=None, identity={})
    decode = partial(generate, drafter=_subset_head(peaked_llama, "medusa").drafter())
    report = check_sampling(target, [("subset", decode)], [1, 5, 9, 33, 7], temperature=1.0, samples=1500, tokens=3)["subset"]
    assert report.outcomes > 3 and report.passed, report
