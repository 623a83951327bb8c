"""Clover v1 heads (METHODS.md §2): sizes, initialisation, the AB cache, the tree RNN, the loss, training, drafting."""

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from baselines.clover import CloverHead
from clover2.engine.drafter import TargetStates
from clover2.engine.tree import STATIC_TREES
from clover2.errors import Clover2Error
from clover2.heads.directory import load_head, save_head
from clover2.training.teacher import teacher_batch
from helpers import (
    check_greedy_lossless,
    check_overfit_then_accepted,
    check_seeded_sampling,
    continuation_batch,
    overfitted,
    prompt_states,
)

PROMPTS = [[1, 100, 200, 300, 400, 17, 17, 17, 9, 33], [1, 5, 9, 33, 7]]
H, V, I, N_HEADS, N_KV = 64, 512, 128, 4, 2  # noqa: E741 (tiny_llama's sizes, as configs name them)
D = H // N_HEADS


pytestmark = pytest.mark.usefixtures("one_thread")


def _perturbed(model, scale=0.05):
    """A head whose AD value projection and ResBlocks are no longer zero, so every part of it matters."""
    torch.manual_seed(2)
    head = CloverHead(model)
    with torch.no_grad():
        for p in [*head.decoder.parameters(), *head.mlps.parameters()]:
            p.add_(scale * torch.randn_like(p))
    return head


@pytest.fixture(scope="module")
def trained(tiny_llama):
    return overfitted(CloverHead, tiny_llama, PROMPTS[0])


@pytest.mark.parametrize("heads", [3, 1])
def test_shapes_and_trainable_parameter_count(tiny_llama, heads):
    head = CloverHead(tiny_llama, heads=heads)
    trainable = sum(p.numel() for p in head.parameters() if p.requires_grad)
    # AB = one Llama decoder layer: q, k, v, o projections (GQA: k and v have N_KV heads), gated MLP, 2 RMSNorms.
    layer = H * N_HEADS * D + 2 * H * N_KV * D + N_HEADS * D * H + 3 * H * I + 2 * H
    # AD: W_Q, W_K, W_V (H x H, no biases); per head a ResBlock (H x H + H). W_lm is frozen and shared.
    assert trainable == layer + 3 * H * H + heads * (H * H + H)
    ids = torch.randint(3, V, (2, 7))
    logits = head.logits(torch.randn(2, 7, H), ids, torch.ones(2, 7, dtype=torch.bool))
    assert logits.shape == (2, 7, heads, V)


def test_fresh_head_has_a_layer_of_the_targets_shape_and_shares_the_frozen_lm_head(tiny_llama):
    head = CloverHead(tiny_llama)
    source = tiny_llama.get_decoder().layers[-1]
    fresh, original = dict(head.block.named_parameters()), dict(source.named_parameters())
    assert {name: w.shape for name, w in fresh.items()} == {name: w.shape for name, w in original.items()}
    assert not torch.equal(fresh["self_attn.q_proj.weight"], original["self_attn.q_proj.weight"])
    assert head.block.self_attn.layer_idx == 0
    assert tiny_llama.config._attn_implementation == "sdpa"  # forcing SDPA on the copy left the target alone
    assert head.lm_weight.data_ptr() == tiny_llama.get_output_embeddings().weight.data_ptr()
    assert "lm_weight" not in head.state_dict()
    eye = torch.eye(H)
    for projection in (head.decoder.query, head.decoder.key):
        noise = projection.weight - eye
        assert noise.min() >= 0 and noise.max() < 0.01
    assert not head.decoder.value.weight.any()


def test_fresh_heads_all_predict_the_lm_head_of_the_ab_output(tiny_llama):
    # W_V = 0 and identity ResBlocks: h_i = h_0 for every i, so each head reads W_lm h_0.
    head = CloverHead(tiny_llama)
    batch = continuation_batch(tiny_llama, PROMPTS[1], new_tokens=8)
    logits = head.logits(batch.h, batch.input_ids, batch.attention_mask)
    h0 = head.augment_sequence(batch.h, batch.attention_mask)
    for i in range(3):
        torch.testing.assert_close(logits[:, :, i], tiny_llama.lm_head(h0))


def test_attention_decoder_reduces_to_a_value_step(tiny_llama):
    decoder = _perturbed(tiny_llama).decoder
    state, embedding = torch.randn(5, H), torch.randn(5, H)
    out = decoder(state, embedding)
    # One key per row: the softmax is 1, so h_i = h_{i-1} + W_V e and W_Q, W_K receive no gradient.
    torch.testing.assert_close(out, state + embedding @ decoder.value.weight.T)
    out.square().sum().backward()
    assert not decoder.query.weight.grad.any() and not decoder.key.weight.grad.any()
    assert decoder.value.weight.grad.any()


def test_loss_is_the_sum_of_per_head_ce_on_scored_positions(tiny_llama):
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    loss_mask = torch.tensor([[False, False, False, True, True]])
    batch = teacher_batch(tiny_llama, ids, loss_mask)
    head = _perturbed(tiny_llama)
    logits = head.logits(batch.h, ids, batch.attention_mask)[0]  # [T, K, V]
    # Head i at t predicts x_{t+i+1}; only x_3 and x_4 are assistant tokens.
    expected = (F.cross_entropy(logits[1, 0], ids[0, 3]) + F.cross_entropy(logits[2, 0], ids[0, 4])) / 2
    expected = expected + (F.cross_entropy(logits[0, 1], ids[0, 3]) + F.cross_entropy(logits[1, 1], ids[0, 4])) / 2
    expected = expected + F.cross_entropy(logits[0, 2], ids[0, 4])
    result = head.loss(batch)
    torch.testing.assert_close(result.total, expected)
    assert result.counted == [2, 2, 1]
    torch.testing.assert_close(head(batch).total, result.total)  # training calls the module itself


def test_padding_gives_a_finite_loss_and_gradients(tiny_llama):
    ids = torch.tensor([[0, 0, 1, 40, 41, 42], [1, 50, 51, 52, 53, 54]])
    attention_mask = torch.tensor([[False, False, True, True, True, True], [True] * 6])
    batch = teacher_batch(tiny_llama, ids, attention_mask, attention_mask)
    head = CloverHead(tiny_llama)
    loss = head.loss(batch)
    loss.total.backward()
    assert torch.isfinite(loss.total)
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_ab_cache_over_kept_tokens_equals_one_pass(tiny_llama):
    head = _perturbed(tiny_llama)
    ids = PROMPTS[0] + [5, 6, 7, 8]
    states = prompt_states(tiny_llama, ids)
    drafter = head.drafter()
    drafter.prefill(torch.tensor(ids[:6]), TargetStates(states.u[:6], states.h[:6]))
    drafter.accept(torch.tensor(ids[6:11]), TargetStates(states.u[6:11], states.h[6:11]))
    drafter.accept(torch.tensor(ids[11:]), TargetStates(states.u[11:], states.h[11:]))
    assert drafter.cache.get_seq_length() == len(ids)
    whole = head.augment_sequence(states.h[None], torch.ones(1, len(ids), dtype=torch.bool))
    torch.testing.assert_close(drafter.h0, whole[0, -1])


@torch.no_grad()
def test_tree_children_come_from_their_parents_rnn_state(tiny_llama):
    head = _perturbed(tiny_llama, scale=0.3)
    drafter = head.drafter()
    drafter.prefill(torch.tensor(PROMPTS[1]), prompt_states(tiny_llama, PROMPTS[1]))
    tree = drafter.draft(7, 0.0, None)
    shape, tokens = tree.shape, tree.tokens
    for node in range(shape.size):
        children = shape.children(node)
        if not children.numel():
            continue
        path = [node]
        while path[0] != 0:
            path.insert(0, int(shape.parents[path[0]]))
        state = drafter.h0  # read the root's token, then each drafted token on the way to this node
        for step in path:
            state = head.decoder(state, head.embed(tokens[step]))
        ranked = head.head_logits(len(path), state).topk(10).indices
        assert tokens[children].tolist() == ranked[shape.ranks[children]].tolist()
    # Siblings read different tokens, so with a non-zero W_V their children differ (unlike Medusa's).
    assert tokens[shape.children(1)[:2]].tolist() != tokens[shape.children(2)[:2]].tolist()


def test_training_overfits_one_batch_and_drafts_get_accepted(tiny_llama, trained):
    check_overfit_then_accepted(tiny_llama, trained, PROMPTS[0])


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("is_trained", [False, True])
def test_greedy_drafting_is_lossless(tiny_llama, trained, prompt, is_trained):
    check_greedy_lossless(tiny_llama, trained[0] if is_trained else _perturbed(tiny_llama), prompt)


def test_sampling_runs_to_the_budget_reproducibly(tiny_llama, trained):
    check_seeded_sampling(tiny_llama, trained[0], PROMPTS[0])


def test_tree_is_cut_to_the_number_of_heads(tiny_llama):
    paths = STATIC_TREES["eagle_mc_sim_7b_63"]
    shape = CloverHead(tiny_llama).shape
    assert shape.max_depth == 3
    assert shape.size == 1 + sum(len(path) <= 3 for path in paths)
    assert CloverHead(tiny_llama, heads=5).shape.size == len(paths) + 1


def test_save_and_load_give_identical_logits(tiny_llama, trained, tmp_path):
    head = trained[0]
    save_head(head, tmp_path / "clover", {"name": "tiny"})
    loaded = load_head(tmp_path / "clover", tiny_llama)
    assert isinstance(loaded, CloverHead) and loaded.options == head.options
    batch = continuation_batch(tiny_llama, PROMPTS[1], new_tokens=8)
    arguments = (batch.h, batch.input_ids, batch.attention_mask)
    assert torch.equal(loaded.logits(*arguments), head.logits(*arguments))


def test_loading_for_another_hidden_size_names_head_json(tiny_llama, tmp_path):
    save_head(CloverHead(tiny_llama, heads=1), tmp_path / "clover", {"name": "tiny"})
    other = LlamaForCausalLM(
        LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(Clover2Error, match="head.json"):
        load_head(tmp_path / "clover", other)
