"""Tree speculative decoding: losslessness of every drafter, the cache after compaction, and memory."""

from functools import partial

import pytest
import torch
from transformers import DynamicCache

from baselines.prompt_lookup import PromptLookupDrafter
from clover2.engine.decoding import DecodeConfig, generate, keep_path, verify_forward
from clover2.engine.self_draft import SelfDrafter
from clover2.engine.tree import DraftTree, TreeShape, static_tree
from clover2.engine.verify import Acceptance
from clover2.heads.protocol import head_class
from clover2.lossless import check_greedy
from clover2.methods import METHODS
from clover2.targets import load_target
from clover2.tasks import load_questions

NO_STOP = [511]
REPETITIVE = [1] + [17, 23, 99, 4, 250] * 6
RANDOM = [1, 100, 200, 300, 400, 17, 17, 17, 9, 33]
SPECULATIVE = ["prompt-lookup", "prompt-lookup-tree", "self", "self-tree"]


@pytest.mark.parametrize("method", SPECULATIVE)
@pytest.mark.parametrize("prompt", [REPETITIVE, RANDOM])
def test_greedy_speculative_equals_plain_on_tiny_llama(tiny_llama, method, prompt):
    config = DecodeConfig(max_new_tokens=60)
    plain = generate(tiny_llama, prompt, config, NO_STOP)
    record = METHODS[method](tiny_llama)(tiny_llama, prompt, config, NO_STOP, None)
    assert record.tokens == plain.tokens
    assert sum(record.accept_lengths) == record.new_tokens == 60
    assert record.steps < plain.steps  # the drafts were used, not just verified away


@pytest.mark.parametrize("shape", [TreeShape.chain(5), TreeShape.chain(2), static_tree("eagle_mc_sim_7b_63")])
def test_self_drafter_greedy_tau_is_depth_plus_one(tiny_llama, shape):
    record = generate(tiny_llama, RANDOM, DecodeConfig(max_new_tokens=64), NO_STOP, drafter=SelfDrafter(tiny_llama, shape))
    # The prefill yields 1 token and the last step may be cut by the budget; every other step keeps depth + 1.
    assert record.accept_lengths[1:-1] == [shape.max_depth + 1] * (record.steps - 2)
    assert all(depth is None for depth in record.failed_depths[:-1])


def test_prompt_lookup_tree_drafts_several_continuations():
    drafter = PromptLookupDrafter(length=3, branches=3, max_ngram=1)
    drafter.prefill(torch.tensor([5, 1, 2, 3, 5, 7, 8, 5, 1, 2, 9]), None)
    tree = drafter.draft(5, 0.0, None)
    # "5" was followed by [1, 2, 9], [7, 8, 5] and [1, 2, 3]: a trie sharing the prefix [1, 2].
    assert tree.tokens.tolist() == [5, 1, 7, 2, 8, 9, 3, 5]
    assert tree.shape.parents.tolist() == [-1, 0, 0, 1, 2, 3, 3, 4]


def test_failed_depth_is_recorded_per_step(tiny_llama):
    record = METHODS["prompt-lookup"](tiny_llama)(tiny_llama, RANDOM, DecodeConfig(max_new_tokens=40), NO_STOP, None)
    assert len(record.failed_depths) == record.steps - 1  # every step after the prefill
    for kept, failed in zip(record.accept_lengths[1:], record.failed_depths):
        assert failed is None or failed == kept  # kept = accepted drafts + bonus = first failing depth


def _prefilled_cache(model, ids):
    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
    return cache


@torch.inference_mode()
def test_compacted_cache_equals_the_plain_cache(tiny_llama):
    prompt = RANDOM
    tree = DraftTree(torch.tensor([7, 11, 12, 13, 14, 15, 16, 17]), TreeShape.from_parents([-1, 0, 0, 1, 2, 2, 4, 5]), torch.zeros(8))
    cache = _prefilled_cache(tiny_llama, prompt)
    verify_forward(tiny_llama, cache, tree)
    path = [0, 2, 5, 7]  # a path that is not contiguous in node order
    keep_path(cache, len(prompt), path)
    reference = _prefilled_cache(tiny_llama, prompt + tree.tokens[path].tolist())
    assert cache.get_seq_length() == reference.get_seq_length() == len(prompt) + len(path)
    for ours, plain in zip(cache.layers, reference.layers):
        torch.testing.assert_close(ours.keys, plain.keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.values, plain.values, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_memory_does_not_grow_with_rejected_nodes(tiny_llama):
    shape = static_tree("eagle_mc_sim_7b_63")
    generator = torch.Generator().manual_seed(0)
    cache = _prefilled_cache(tiny_llama, RANDOM)
    kept = len(RANDOM)
    sizes = []
    for _ in range(500):
        tree = DraftTree(torch.randint(0, 512, (shape.size,), generator=generator), shape, torch.zeros(shape.size))
        verify_forward(tiny_llama, cache, tree)
        keep_path(cache, kept, [0])  # every drafted node rejected
        kept += 1
        assert cache.get_seq_length() == kept
        sizes.append(sum(layer.keys.untyped_storage().nbytes() for layer in cache.layers))
    per_token = sizes[-1] / kept
    # Storage holds the kept tokens plus at most one tree's worth of rejected slots, never 500 trees'.
    assert sizes[-1] <= per_token * (kept + shape.size)


class FixedChain:
    """A test drafter that always proposes the same chain: deterministic, blind to the target."""

    needs_states = False

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens

    def prefill(self, prompt, states) -> None:
        pass

    def accept(self, tokens, states) -> None:
        pass

    def draft(self, root, temperature, generator) -> DraftTree:
        size = len(self.tokens) + 1
        return DraftTree(torch.tensor([root, *self.tokens]), TreeShape.chain(size - 1), torch.zeros(size))


def _accept_everything(tree, logits, temperature, generator):
    """A deliberately broken rule: keeps the whole first path whatever the target says."""
    path = tree.shape.retrieve[0]
    path = path[path >= 0].tolist()
    return Acceptance(path, int(logits[path[-1]].argmax()), None)


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_target(smollm2_dir)


def test_greedy_speculative_equals_plain_on_smollm2_multi_turn(smollm2):
    questions = load_questions("mt_bench", limit=2) + load_questions("summarization", limit=1)
    runs = [(method, METHODS[method](smollm2.model)) for method in ["prompt-lookup", "prompt-lookup-tree", "self-tree"]]
    reports = check_greedy(smollm2, runs, questions, DecodeConfig(max_new_tokens=40))
    assert list(reports) == [name for name, _ in runs]
    for report in reports.values():
        assert report.turns_checked == 5
        assert report.passed, report.mismatches


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_greedy_checker_names_the_mismatch_of_a_broken_rule_in_every_dtype(smollm2_dir, dtype):
    target = load_target(smollm2_dir, dtype=dtype)
    broken = partial(generate, drafter=FixedChain([11, 12, 13]), acceptance=_accept_everything)
    questions = load_questions("qa", limit=2)
    reports = check_greedy(target, [("vanilla", generate), ("broken", broken)], questions, DecodeConfig(max_new_tokens=16))
    report = reports["broken"]
    assert reports["vanilla"].passed and not report.passed and report.turns_identical == 0 and not report.near_ties
    first = report.mismatches[0]
    assert (first.question_id, first.turn, first.position) == (questions[0].question_id, 0, 1)
    assert first.method.startswith(target.tokenizer.decode([11, 12, 13]))
    assert first.plain and first.plain != first.method
    assert not first.method_chose_argmax and not first.near_tie  # the target never chose the token the rule kept


def test_every_head_drafts_losslessly_on_smollm2(smollm2):
    torch.manual_seed(0)
    # Untrained heads: their drafts are poor, the output must not change.
    methods = ["clover2", "clover", "eagle", "eagle2", "medusa"]
    runs = [(m, partial(generate, drafter=head_class(m)(smollm2.model).eval().drafter())) for m in methods]
    reports = check_greedy(smollm2, runs, load_questions("qa", limit=1), DecodeConfig(max_new_tokens=24))
    assert all(report.passed for report in reports.values()), {m: r.mismatches for m, r in reports.items()}


def test_bf16_divergences_from_plain_decoding_are_near_ties_explained_by_their_margins(smollm2_dir):
    target = load_target(smollm2_dir, dtype="bfloat16")
    runs = [("prompt-lookup", METHODS["prompt-lookup"](target.model))]
    report = check_greedy(target, runs, load_questions("mt_bench", limit=3), DecodeConfig(max_new_tokens=64))["prompt-lookup"]
    # A chain of 10 verified at once rounds otherwise than one token at a time: argmaxes flip where tied.
    assert report.passed and report.near_ties, report.mismatches
    for tie in report.near_ties:
        assert tie.method_chose_argmax and 0 <= tie.plain_margin <= tie.tolerance and tie.method_margin <= tie.tolerance
