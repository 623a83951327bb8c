"""The Clover-2 head: sizes, initialisation, the AD cell, the distillation loss, learning, and lossless drafting."""

import math

import pytest
import torch
from transformers import LlamaForCausalLM

from clover2.engine.decoding import DecodeConfig, generate
from clover2.errors import Clover2Error
from clover2.heads.clover2 import AttentionDecoder, Clover2Head
from clover2.heads.directory import load_head, save_head
from clover2.heads.losses import cross_entropy, smooth_l1, soft_cross_entropy
from clover2.heads.protocol import run_layers, trainable_state
from clover2.training.teacher import teacher_batch
from helpers import (
    NO_STOP,
    check_greedy_lossless,
    check_seeded_sampling,
    continuation_batch,
    train_steps,
)

PROMPT = [1, 5, 9, 33, 7]


@pytest.fixture(scope="module")
def peaked(peaked_llama):
    return peaked_llama


def _layer_params(layer) -> int:
    return sum(p.numel() for p in layer.parameters())


def test_trainable_parameters_match_the_formula(tiny_llama):
    head = Clover2Head(tiny_llama)
    hidden = tiny_llama.config.hidden_size
    ad_cell = 3 * (hidden * hidden + hidden) + hidden  # W_q, W_k, W_v with biases, and the RMSNorm on x
    formula = (
        2 * ad_cell  # AD1, AD2
        + 2 * _layer_params(tiny_llama.model.layers[-1])  # the Augmenting Block: two layers of the target's shape
        + 2 * hidden  # RMSNorm_c, RMSNorm_h
        + (hidden * hidden + hidden)  # FC0
        + (2 * hidden * hidden + hidden)  # FC2
    )
    assert sum(t.numel() for t in trainable_state(head).values()) == formula
    assert "lm_weight" not in trainable_state(head)  # the LM head is frozen and shared, not saved


def test_initialisation(tiny_llama):
    head = Clover2Head(tiny_llama)
    hidden = tiny_llama.config.hidden_size
    eye = torch.eye(hidden)
    assert (head.fc0.weight - eye).abs().max() < 0.01 and (head.fc0.weight - eye).min() >= 0
    assert (head.fc2.weight[:, :hidden] - eye).abs().max() < 0.01 and head.fc2.weight[:, hidden:].abs().max() < 0.01
    assert head.ad1.v.weight.abs().max() < 0.01 and (head.ad1.q.weight - eye).abs().max() < 0.01
    last = tiny_llama.model.layers[-1].state_dict()
    for block in head.blocks:  # random, not the target's last layer (README "Head initialisation")
        assert not torch.equal(block.self_attn.q_proj.weight, last["self_attn.q_proj.weight"])
    assert torch.equal(head.norm_h.weight, tiny_llama.model.norm.weight)
    assert head.recorded["rope_theta"] == tiny_llama.config.rope_parameters["rope_theta"]


def test_attention_decoder_cell_by_hand():
    cell = AttentionDecoder(4, 2, torch.nn.Identity())
    with torch.no_grad():
        for layer in (cell.q, cell.k, cell.v):
            layer.weight.copy_(torch.eye(4))
            layer.bias.zero_()
    x = torch.tensor([[1.0, 0.0, 2.0, 2.0]])
    y = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    # head 0: cos((1,0),(1,1)) = 1/sqrt2; head 1: cos((2,2),(-1,-1)) = -1
    expected = x + torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(2), 1.0, 1.0]])
    torch.testing.assert_close(cell(x, y), expected)


def test_loss_terms_by_hand():
    teacher = torch.tensor([[0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    logits = torch.tensor([[0.0, 0.0]])  # log q = log 1/2 everywhere
    assert float(soft_cross_entropy(logits, teacher)) == pytest.approx(math.log(2.0))
    prediction = torch.tensor([[0.5, 3.0], [9.0, 9.0]])
    target = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    # 0.5 * 0.5^2 = 0.125 and 2.0 - 0.5 = 1.5, averaged over H; the second row is masked out
    assert float(smooth_l1(prediction, target, torch.tensor([True, False]))) == pytest.approx((0.125 + 1.5) / 2)


def test_one_head_loss_is_the_weighted_sum_of_its_terms(peaked):
    head = Clover2Head(peaked, heads=1)
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    mask = torch.tensor([[False, False, True, True, True, True]])
    batch = teacher_batch(peaked, ids, mask)
    result = head.loss(batch)
    # By hand: head 0 at t predicts token t + 2, from u_t fused with token t + 1.
    out = _head0_by_hand(head, batch, token_first=True)[0, :4][mask[0, 2:]]  # positions t = 0..3 predict tokens 2..5
    expected = 10 * smooth_l1(out, batch.h[0, 1:5]) + soft_cross_entropy(head.logits(out), batch.teacher_logits[0, 1:5])
    torch.testing.assert_close(result.total, expected)
    assert result.counted == [4]


def _head0_by_hand(head: Clover2Head, batch, token_first: bool) -> torch.Tensor:
    """o0 over positions 0..4 of a 6-token batch: the token fused before the Augmenting Block, or after it."""
    positions, visible = torch.arange(5)[None], torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    embedding = head.embed(batch.input_ids[:, 1:])
    block = lambda x: head.norm_c(run_layers(head.blocks, head.rotary, x, positions, visible, None))  # noqa: E731
    s = block(head.ad1(batch.u[:, :5], embedding)) if token_first else head.ad1(block(batch.u[:, :5]), embedding)
    return head.norm_h(head.mlps[0](s)) if head.options["output_projector"] == "mlp" else head.norm_h(head.fc0(s))


@pytest.mark.parametrize(
    ("options", "terms"),
    [({"extraction_order": "state_first"}, "kd"), ({"output_projector": "mlp"}, "kd"),
     ({"distillation": "kd_no_regression"}, "soft"), ({"distillation": "hard_ce"}, "hard")],
    ids=["state_first", "mlp", "kd_no_regression", "hard_ce"],
)
def test_each_ablation_option_changes_only_its_part_of_the_loss(peaked, options, terms):
    torch.manual_seed(0)
    head = Clover2Head(peaked, heads=1, **options)
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    mask = torch.tensor([[False, False, True, True, True, True]])
    batch = teacher_batch(peaked, ids, mask)
    out = _head0_by_hand(head, batch, token_first=head.options["extraction_order"] == "token_first")[0, :4]
    soft = soft_cross_entropy(head.logits(out), batch.teacher_logits[0, 1:5])
    expected = {"kd": 10 * smooth_l1(out, batch.h[0, 1:5]) + soft, "soft": soft,
                "hard": cross_entropy(head.logits(out), ids[0, 2:6])}[terms]
    torch.testing.assert_close(head.loss(batch).total, expected)


def test_ablation_options_are_checked_by_name(tiny_llama):
    for options, message in (({"extraction_order": "later"}, "extraction_order: expected one of token_first"),
                             ({"output_projector": "linear"}, "output_projector"), ({"distillation": "none"}, "distillation"),
                             ({"augmenting_layers": -1}, "augmenting_layers: expected an integer >= 0")):
        with pytest.raises(Clover2Error, match=message):
            Clover2Head(tiny_llama, **options)
    with pytest.raises(Clover2Error, match="per-head MLPs draft only 2 levels"):
        Clover2Head(tiny_llama, heads=2, output_projector="mlp", tree="eagle_top_8").drafter()


def test_augmenting_block_depth_and_projector_set_the_weights(tiny_llama):
    hidden = tiny_llama.config.hidden_size
    full, flat, mlp = (Clover2Head(tiny_llama, **o) for o in ({}, {"augmenting_layers": 0}, {"output_projector": "mlp"}))
    layer = _layer_params(tiny_llama.model.layers[-1])
    count = lambda head: sum(t.numel() for t in trainable_state(head).values())  # noqa: E731
    assert count(full) - count(flat) == 2 * layer and len(flat.blocks) == 0
    assert count(mlp) - count(full) == 5 * (hidden * hidden + hidden) - (3 * hidden * hidden + 2 * hidden)
    assert not hasattr(mlp, "fc0") and len(mlp.mlps) == 5


CLOVER_V1_CHOICES = {"extraction_order": "state_first", "output_projector": "mlp", "augmenting_layers": 1, "distillation": "hard_ce"}


@pytest.mark.parametrize(
    "options",
    [{"extraction_order": "state_first"}, {"output_projector": "mlp"}, {"augmenting_layers": 0}, {"augmenting_layers": 1},
     {"distillation": "kd_no_regression"}, {"distillation": "hard_ce"}, CLOVER_V1_CHOICES],
    ids=["state_first", "mlp", "ab0", "ab1", "kd_no_regression", "hard_ce", "clover_v1_choices"],
)
def test_every_variant_learns_drafts_losslessly_and_round_trips(peaked, options, tmp_path):
    torch.manual_seed(0)
    head = Clover2Head(peaked, heads=3, tree="eagle_top_8", **options)
    losses = train_steps(head, continuation_batch(peaked, PROMPT, new_tokens=40), steps=30)
    assert losses[-1] < 0.5 * losses[0]
    check_greedy_lossless(peaked, head, [1, 100, 200, 300, 400, 17])
    check_seeded_sampling(peaked, head, [1, 100, 200, 300, 400, 17])
    loaded = load_head(save_head(head, tmp_path / "head", {"name": "tiny"}), peaked)
    assert {key: loaded.options[key] for key in options} == options
    assert generate(peaked, PROMPT, DecodeConfig(max_new_tokens=20), NO_STOP, drafter=loaded.drafter()).steps == (
        generate(peaked, PROMPT, DecodeConfig(max_new_tokens=20), NO_STOP, drafter=head.drafter()).steps
    )


@pytest.fixture(scope="module")
def trained(peaked):
    """A head overfitted on the target's own greedy continuation of PROMPT."""
    torch.manual_seed(0)
    plain = generate(peaked, PROMPT, DecodeConfig(max_new_tokens=60), NO_STOP)
    head = Clover2Head(peaked)
    losses = train_steps(head, continuation_batch(peaked, PROMPT, new_tokens=60), steps=80)
    return head, losses, plain


def test_head_overfits_a_tiny_batch(trained):
    _, losses, _ = trained
    assert losses[-1] < 0.25 * losses[0]


def test_trained_head_drafts_what_the_target_says_and_stays_lossless(trained, peaked):
    head, _, plain = trained
    record = generate(peaked, PROMPT, DecodeConfig(max_new_tokens=60), NO_STOP, drafter=head.drafter())
    assert record.tokens == plain.tokens
    assert record.tau > 3.0  # it learnt this very continuation, so most drafts are accepted


@pytest.mark.parametrize("prompt", [[1, 100, 200, 300, 400, 17], [1] + [17, 23, 99, 4] * 5])
def test_greedy_lossless_on_other_prompts_and_sampling_runs(trained, peaked, prompt):
    head, _, _ = trained
    plain = generate(peaked, prompt, DecodeConfig(max_new_tokens=40), NO_STOP)
    assert generate(peaked, prompt, DecodeConfig(max_new_tokens=40), NO_STOP, drafter=head.drafter()).tokens == plain.tokens
    sampled = generate(
        peaked, prompt, DecodeConfig(temperature=1.0, max_new_tokens=40), NO_STOP, torch.Generator().manual_seed(0),
        drafter=head.drafter(),
    )
    assert sampled.new_tokens == 40 and sum(sampled.accept_lengths) == 40


def test_checkpoint_round_trip_and_target_mismatch(trained, peaked, tmp_path):
    head, _, _ = trained
    save_head(head, tmp_path / "head", {"name": "tiny"})
    loaded = load_head(tmp_path / "head", peaked)
    for name, value in trainable_state(head).items():
        assert torch.equal(value, trainable_state(loaded)[name])
    assert loaded.options == head.options
    other = LlamaForCausalLM(peaked.config.__class__(**{**peaked.config.to_dict(), "hidden_size": 32, "head_dim": 8}))
    with pytest.raises(Clover2Error, match="head.json: hidden_size is 64, but the target's is 32"):
        load_head(tmp_path / "head", other)
    (tmp_path / "head" / "head.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Clover2Error, match="head.safetensors: cannot read"):
        load_head(tmp_path / "head", peaked)


# Where the official code trains otherwise (README "Clover-2 against the official code"): each option
# changes only what it names.


@pytest.mark.parametrize(("init", "layer"), [("copy_first", 0), ("copy", -1)])
def test_a_copied_augmenting_block_starts_as_the_targets_first_or_last_layer(tiny_llama, init, layer):
    head = Clover2Head(tiny_llama, layer_init=init)
    source = tiny_llama.model.layers[layer].state_dict()
    other = tiny_llama.model.layers[1 + layer if layer < 0 else -1].state_dict()
    for block in head.blocks:
        assert all(torch.equal(block.state_dict()[name], weight) for name, weight in source.items())
        assert not torch.equal(block.self_attn.q_proj.weight, other["self_attn.q_proj.weight"])
    assert [block.self_attn.layer_idx for block in head.blocks] == [0, 1]  # each its own slot in the head's cache


def test_the_loss_mask_scores_the_predicted_token_or_the_state_side_token_at_a_turn_boundary():
    from clover2.heads.clover2 import scored_positions

    # user user user | assistant x3 | user x2 | assistant x2, one padded position at the end
    loss_mask = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 0]], dtype=torch.bool)
    attention = torch.tensor([[1] * 10 + [0]], dtype=torch.bool)
    length = 10
    predicted = scored_positions(loss_mask, attention, 0, length, "predicted")[0].nonzero().flatten().tolist()
    state = scored_positions(loss_mask, attention, 0, length, "state")[0].nonzero().flatten().tolist()
    assert predicted == [1, 2, 3, 6, 7]  # head 0 at t predicts token t + 2: an assistant token
    assert state == [3, 4, 5]  # token t itself is an assistant token (8's prediction, token 10, is padding)
    deeper = scored_positions(loss_mask, attention, 2, length, "state")[0].nonzero().flatten().tolist()
    assert deeper == [1, 2, 3]  # head 2: token t + 2 on the state side, and token t + 4 must exist


def test_the_augmenting_blocks_rope_base_is_the_targets_or_the_official_10000(tiny_llama):
    ours, official = Clover2Head(tiny_llama), Clover2Head(tiny_llama, ab_rope_base=10000)
    base = tiny_llama.config.rope_parameters["rope_theta"]
    assert ours.recorded["rope_theta"] == base and official.recorded["rope_theta"] == 10000.0
    head_dim = tiny_llama.config.hidden_size // tiny_llama.config.num_attention_heads
    expected = 1.0 / 10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    assert torch.allclose(official.rotary.inv_freq, expected)
    assert torch.equal(ours.rotary.inv_freq, tiny_llama.model.rotary_emb.inv_freq)
    with pytest.raises(Clover2Error, match="clover2 option ab_rope_base: expected 'target' or a positive number"):
        Clover2Head(tiny_llama, ab_rope_base="official")
    with pytest.raises(Clover2Error, match="clover2 option loss_mask: expected one of predicted, state"):
        Clover2Head(tiny_llama, loss_mask="token")
