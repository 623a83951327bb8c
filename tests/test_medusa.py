"""Medusa-1 heads (METHODS.md §1): sizes, initialisation, the loss, training, and lossless drafting."""

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from baselines.medusa import MedusaHead
from clover2.engine.tree import STATIC_TREES
from clover2.errors import Clover2Error
from clover2.heads.directory import load_head, save_head
from clover2.training.teacher import teacher_batch
from helpers import (
    check_greedy_lossless,
    check_overfit_then_accepted,
    check_seeded_sampling,
    overfitted,
    prompt_states,
)

PROMPTS = [[1, 100, 200, 300, 400, 17, 17, 17, 9, 33], [1, 5, 9, 33, 7]]
H, V = 64, 512  # tiny_llama's hidden size and vocabulary


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tiny_llama):
    return overfitted(MedusaHead, tiny_llama, PROMPTS[0])


@pytest.mark.parametrize("heads", [5, 3])
def test_shapes_and_trainable_parameter_count(tiny_llama, heads):
    head = MedusaHead(tiny_llama, heads=heads)
    trainable = sum(p.numel() for p in head.parameters() if p.requires_grad)
    # Per head: ResBlock W (H x H) and b (H), then its own LM head copy (V x H, no bias).
    assert trainable == heads * (H * H + H + V * H)
    assert head.logits(torch.randn(2, 7, H)).shape == (2, 7, heads, V)
    assert head.options == {"heads": heads, "decay": 1.0, "tree": "medusa_mc_sim_7b_63", "draft_vocab": None}


def test_fresh_heads_are_identity_blocks_and_lm_head_copies(tiny_llama):
    head = MedusaHead(tiny_llama)
    x = torch.randn(3, H)
    lm_weight = tiny_llama.get_output_embeddings().weight
    for block, lm_head in zip(head.blocks, head.lm_heads):
        assert torch.equal(block(x), x)
        assert torch.equal(lm_head.weight, lm_weight)
        assert lm_head.weight.data_ptr() != lm_weight.data_ptr()  # a trainable copy, not the target's tensor
    torch.testing.assert_close(head.logits(x), tiny_llama.lm_head(x)[:, None].expand(3, 5, V))


def test_loss_is_the_weighted_ce_on_scored_positions(tiny_llama):
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    loss_mask = torch.tensor([[False, False, False, True, True]])
    batch = teacher_batch(tiny_llama, ids, loss_mask)
    head = MedusaHead(tiny_llama, heads=2, decay=0.8)
    with torch.no_grad():  # make the heads differ from the LM head and from each other
        for p in head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    logits = head.logits(batch.h)[0]  # [T, K, V]
    # Head k at t predicts x_{t+k+1}; only x_3 and x_4 are assistant tokens.
    head1 = (F.cross_entropy(logits[1, 0], ids[0, 3]) + F.cross_entropy(logits[2, 0], ids[0, 4])) / 2
    head2 = (F.cross_entropy(logits[0, 1], ids[0, 3]) + F.cross_entropy(logits[1, 1], ids[0, 4])) / 2
    result = head.loss(batch)
    torch.testing.assert_close(result.total, 0.8 * head1 + 0.64 * head2)
    assert result.parts["ce"] == pytest.approx(result.total.item())
    assert result.counted == [2, 2]
    # The teacher's distribution of x_{t+k+1} is teacher_logits[t + k].
    teacher = batch.teacher_logits[0].argmax(-1)
    expected1 = int(logits[1, 0].argmax() == teacher[2]) + int(logits[2, 0].argmax() == teacher[3])
    expected2 = int(logits[0, 1].argmax() == teacher[2]) + int(logits[1, 1].argmax() == teacher[3])
    assert result.top1 == [expected1, expected2]
    torch.testing.assert_close(head(batch).total, result.total)  # training calls the module itself


def test_training_overfits_one_batch_and_drafts_get_accepted(tiny_llama, trained):
    check_overfit_then_accepted(tiny_llama, trained, PROMPTS[0])


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("is_trained", [False, True])
def test_greedy_drafting_is_lossless(tiny_llama, trained, prompt, is_trained):
    check_greedy_lossless(tiny_llama, trained[0] if is_trained else MedusaHead(tiny_llama), prompt)


def test_sampling_runs_to_the_budget_reproducibly(tiny_llama, trained):
    check_seeded_sampling(tiny_llama, trained[0], PROMPTS[0])


def test_tree_nodes_take_their_heads_choices_by_rank(tiny_llama, trained):
    head = trained[0]
    drafter = head.drafter()
    drafter.prefill(torch.tensor(PROMPTS[1]), prompt_states(tiny_llama, PROMPTS[1]))
    tree = drafter.draft(7, 0.0, None)
    shape = tree.shape
    ranked = head.logits(drafter.h).topk(10).indices  # [K, 10]
    assert tree.tokens[0] == 7
    for node in range(1, shape.size):  # the parent's token plays no part
        assert tree.tokens[node] == ranked[shape.depths[node] - 1, shape.ranks[node]]


def test_sampled_children_are_distinct_and_their_q_is_recorded(tiny_llama, trained):
    head = trained[0]
    drafter = head.drafter()
    drafter.prefill(torch.tensor(PROMPTS[1]), prompt_states(tiny_llama, PROMPTS[1]))
    tree = drafter.draft(7, 0.5, torch.Generator().manual_seed(3))
    shape, q = tree.shape, torch.softmax(head.logits(drafter.h).float() / 0.5, dim=-1)
    for parent in range(shape.size):
        children = shape.children(parent)
        if children.numel():
            torch.testing.assert_close(tree.draft_probs[parent], q[shape.depths[parent]])
            assert tree.tokens[children].unique().numel() == children.numel()


def test_tree_is_cut_to_the_number_of_heads(tiny_llama):
    paths = STATIC_TREES["medusa_mc_sim_7b_63"]
    assert MedusaHead(tiny_llama).shape.size == len(paths) + 1  # depth 4 fits 5 heads
    cut = MedusaHead(tiny_llama, heads=2).shape
    assert cut.max_depth == 2
    assert cut.size == 1 + sum(len(path) <= 2 for path in paths)


@pytest.mark.parametrize("options", [{"heads": 0}, {"decay": 0.0}, {"tree": "no-such-tree"}])
def test_bad_options_are_reported(tiny_llama, options):
    with pytest.raises(Clover2Error):
        MedusaHead(tiny_llama, **options)


def test_save_and_load_give_identical_logits(tiny_llama, trained, tmp_path):
    head = trained[0]
    save_head(head, tmp_path / "medusa", {"name": "tiny"})
    loaded = load_head(tmp_path / "medusa", tiny_llama)
    assert isinstance(loaded, MedusaHead) and loaded.options == head.options
    h = torch.randn(4, H)
    assert torch.equal(loaded.logits(h), head.logits(h))


def test_loading_for_another_hidden_size_names_head_json(tiny_llama, tmp_path):
    save_head(MedusaHead(tiny_llama, heads=1), tmp_path / "medusa", {"name": "tiny"})
    other = LlamaForCausalLM(
        LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(Clover2Error, match="head.json"):
        load_head(tmp_path / "medusa", other)
