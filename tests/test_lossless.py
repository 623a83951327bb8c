"""At T = 0 a divergence from plain decoding is a near-tie only when rounding can explain it."""

import pytest
import torch

from clover2.engine.decoding import DecodeConfig, row_tops
from clover2.lossless import Divergence, near_tie_tolerance
from clover2.methods import METHODS


def test_each_new_token_keeps_its_own_logit_and_its_rows_top_logits():
    rows = torch.tensor([[1.0, 3.0, 2.5, -1.0], [0.0, 0.5, 4.0, 3.0]])
    assert row_tops(rows, [1, 3], k=2) == [(3.0, [1, 2], [3.0, 2.5]), (3.0, [2, 3], [4.0, 3.0])]


def test_float32_allows_no_divergence_and_half_precision_a_few_units_of_the_logit_spacing():
    assert near_tie_tolerance(torch.float32, 20.0) == 0.0
    assert near_tie_tolerance(torch.bfloat16, 20.0) == pytest.approx(4 * 2**-7 * 20)
    assert near_tie_tolerance(torch.float16, 20.0) == pytest.approx(4 * 2**-10 * 20)
    assert near_tie_tolerance(torch.bfloat16, 0.1) == pytest.approx(4 * 2**-7)  # small logits: the spacing near 1


def _divergence(plain_margin, method_margin, chose_argmax=True, tolerance=0.6):
    return Divergence("q", 0, 3, "a", "b", plain_margin, method_margin, chose_argmax, tolerance)


@pytest.mark.parametrize(
    "divergence, tie",
    [
        (_divergence(0.25, 0.125), True),  # both computations nearly tied on the two tokens
        (_divergence(1.0, 0.125), False),  # plain decoding preferred its token by more than rounding
        (_divergence(0.25, 0.125, chose_argmax=False), False),  # the method kept a token its target did not choose
        (_divergence(None, 0.125), False),  # the method's token is not even among plain's top logits
        (_divergence(None, None, chose_argmax=False), False),  # one output stopped where the other went on
        (_divergence(0.0, 0.0, tolerance=0.0), True),  # an exact tie stays a tie in float32
    ],
)
def test_a_near_tie_needs_both_rows_within_tolerance_and_the_methods_own_argmax(divergence, tie):
    assert divergence.near_tie is tie


@pytest.mark.parametrize("method", ["vanilla", "self-tree"])
def test_decoding_records_top_logits_per_new_token_only_when_asked(tiny_llama, method):
    decode, prompt = METHODS[method](tiny_llama), [1, 100, 200, 300]
    unscored = decode(tiny_llama, prompt, DecodeConfig(max_new_tokens=9), [511], None)
    scored = decode(tiny_llama, prompt, DecodeConfig(max_new_tokens=9, record_top_logits=True), [511], None)
    assert unscored.tokens == scored.tokens and unscored.top_logits == []
    assert len(scored.top_logits) == len(scored.tokens)
    assert all(ids[0] == token and own == values[0] for token, (own, ids, values) in zip(scored.tokens, scored.top_logits))  # greedy
