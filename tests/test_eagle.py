"""EAGLE-1 / EAGLE-2 heads: size, loss, training, drafting against an uncached reference, losslessness, checkpoints."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from baselines.eagle import Eagle2Head, EagleHead
from clover2.engine.decoding import DecodeConfig, generate
from clover2.engine.drafter import NoDrafter, TargetStates
from clover2.engine.tree import official_eagle2_settings
from clover2.errors import Clover2Error
from clover2.heads.directory import load_head, save_head
from clover2.heads.protocol import TrainBatch, trainable_state
from clover2.methods import method_factory
from clover2.training.teacher import teacher_batch
from helpers import train_steps

NO_STOP = [511]
PROMPT = [1, 100, 200, 300, 400, 17, 17, 17, 9, 33]
HEADS = [EagleHead, Eagle2Head]


def _expected_trainable(config: LlamaConfig) -> int:
    """W_fc (2H x H + bias) plus one Llama decoder layer without its input norm."""
    hidden, inter = config.hidden_size, config.intermediate_size
    head_dim = hidden // config.num_attention_heads
    q_out, kv_out = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    attention = hidden * q_out + 2 * hidden * kv_out + q_out * hidden
    mlp = 3 * hidden * inter
    return (2 * hidden * hidden + hidden) + attention + mlp + hidden  # the last term: post-attention norm


def _target_states(model: LlamaForCausalLM, ids: list[int]) -> torch.Tensor:
    """The target's post-norm states h [T, H] for a sequence."""
    return teacher_batch(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool)).h[0]


def _states(h: torch.Tensor, count: int) -> TargetStates:
    return TargetStates(u=h[:count], h=h[:count])


def _causal(length: int) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool).tril()[None, None]


def _positions(length: int) -> torch.Tensor:
    return torch.arange(length)[None]

TRAINING = {"regression_weight": 1.0, "ce_weight": 0.1, "noise": True, "draft_vocab": None, "layer_init": "random"}
DEFAULTS = {"eagle": {"tree": "eagle_mc_sim_7b_63", **TRAINING},
            "eagle2": {**official_eagle2_settings(depth=5, top_k=10, total_token=60), **TRAINING}}


@pytest.mark.parametrize("cls", HEADS)
def test_size_and_initialisation(tiny_llama, cls):
    head = cls(tiny_llama)
    state = trainable_state(head)
    assert sum(t.numel() for t in state.values()) == _expected_trainable(tiny_llama.config)
    assert head.fc.weight.shape == (64, 128)
    assert all(name.startswith(("fc.", "layer.")) for name in state)  # embedding and LM head stay the target's
    assert not any("input_layernorm" in name for name in state)
    last = tiny_llama.get_decoder().layers[-1].state_dict()
    assert not torch.equal(head.layer.self_attn.q_proj.weight, last["self_attn.q_proj.weight"])  # random, as EAGLE
    assert head.options == DEFAULTS[cls.method]  # head.json records every setting, defaults included


def test_unknown_option_is_an_error(tiny_llama, tmp_path):
    with pytest.raises(TypeError, match="'tree'"):
        Eagle2Head(tiny_llama, tree="eagle_mc_sim_7b_63")
    directory = save_head(Eagle2Head(tiny_llama), tmp_path / "head", {"name": "tiny"})
    config = json.loads((directory / "head.json").read_text())
    config["options"]["tree"] = "eagle_mc_sim_7b_63"
    (directory / "head.json").write_text(json.dumps(config))
    with pytest.raises(Clover2Error, match="head.json.*'tree'"):
        load_head(directory, tiny_llama)


def test_first_position_by_hand(tiny_llama):
    """At position 0 attention sees one key, so the layer is g + o(v(g)) and then the MLP block: no input norm."""
    head = EagleHead(tiny_llama)
    torch.manual_seed(1)
    feature, token = torch.randn(1, 1, 64), torch.tensor([[42]])
    with torch.no_grad():
        ours = head.predict(feature, token, _positions(1), _causal(1))[0, 0]
        g = head.fc(torch.cat([tiny_llama.get_input_embeddings().weight[42], feature[0, 0]]))
        attention = head.layer.self_attn
        groups = attention.num_key_value_groups
        values = attention.v_proj(g).view(-1, attention.head_dim).repeat_interleave(groups, dim=0).flatten()
        mixed = g + attention.o_proj(values)
        expected = mixed + head.layer.mlp(head.layer.post_attention_layernorm(mixed))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def _hand_batch() -> TrainBatch:
    """Five tokens with random states and teacher logits at tiny_llama's sizes."""
    torch.manual_seed(2)
    length, hidden, vocab = 5, 64, 512
    return TrainBatch(
        input_ids=torch.tensor([[1, 7, 9, 11, 13]]),
        loss_mask=torch.tensor([[False, False, True, True, False]]),
        attention_mask=torch.ones(1, length, dtype=torch.bool),
        u=torch.randn(1, length, hidden),
        h=torch.randn(1, length, hidden),
        teacher_logits=torch.randn(1, length, vocab),
    )


@pytest.mark.parametrize("weights", [(1.0, 0.1), (2.0, 0.5)])
def test_loss_by_hand(tiny_llama, weights):
    head = EagleHead(tiny_llama, noise=False, regression_weight=weights[0], ce_weight=weights[1])
    batch = _hand_batch()
    loss = head.loss(batch)
    with torch.no_grad():
        predicted = head.predict(batch.h[:, :-1], batch.input_ids[:, 1:], _positions(4), _causal(4))[0]
    # Pair t predicts h_{t+1} and token t + 2: tokens 2 and 3 are the assistant's, so pairs 0 and 1 count.
    regression = sum(F.smooth_l1_loss(predicted[t], batch.h[0, t + 1]) for t in (0, 1)) / 2
    logits = predicted @ tiny_llama.lm_head.weight.T
    soft_ce = sum(
        -(torch.softmax(batch.teacher_logits[0, t + 1], -1) * torch.log_softmax(logits[t], -1)).sum() for t in (0, 1)
    ) / 2
    regression, soft_ce = regression.item(), soft_ce.item()
    assert loss.parts["regression"] == pytest.approx(regression, rel=1e-5)
    assert loss.parts["soft_ce"] == pytest.approx(soft_ce, rel=1e-5)
    assert loss.total.item() == pytest.approx(weights[0] * regression + weights[1] * soft_ce, rel=1e-5)
    assert loss.counted == [2] and len(loss.top1) == len(loss.top5) == 1


def test_noise_only_while_training(tiny_llama):
    batch = _hand_batch()
    noisy = EagleHead(tiny_llama)
    quiet = EagleHead(tiny_llama, noise=False)
    quiet.load_state_dict(noisy.state_dict())
    clean = noisy.eval().loss(batch).total.item()
    assert noisy.train().loss(batch).total.item() != clean
    assert quiet.train().loss(batch).total.item() == clean


def _greedy_batch(model: LlamaForCausalLM) -> TrainBatch:
    """The prompt and the target's own greedy continuation, the continuation marked as the assistant's."""
    continuation = generate(model, PROMPT, DecodeConfig(max_new_tokens=40), NO_STOP).tokens
    ids = torch.tensor([PROMPT + continuation])
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, len(PROMPT) :] = True
    return teacher_batch(model, ids, mask)


def _teacher_entropy(batch: TrainBatch) -> float:
    """Mean entropy of the teacher at the scored pairs: the floor of the soft-CE term."""
    scored = F.pad(batch.loss_mask[:, 2:], (0, 1))
    teacher = torch.softmax(batch.teacher_logits[:, 1:][scored], dim=-1)
    return float(-(teacher * teacher.log()).sum(-1).mean())


@pytest.fixture(scope="module")
def trained(tiny_llama):
    """Heads overfitted on one greedy continuation: their drafts should then match the target's choices."""
    batch = _greedy_batch(tiny_llama)
    heads = {}
    for cls in HEADS:
        torch.manual_seed(3)
        head = cls(tiny_llama, noise=False)
        head.train()
        losses = train_steps(head, batch, steps=120)
        heads[cls.method] = (head.eval(), losses, batch)
    return heads


@pytest.mark.parametrize("method", ["eagle", "eagle2"])
def test_overfitting_one_batch(trained, method):
    head, losses, batch = trained[method]
    # A random target's distributions are nearly uniform: soft-CE cannot fall below their entropy.
    floor = head.options["ce_weight"] * _teacher_entropy(batch)
    assert losses[-1] - floor < 0.05 * (losses[0] - floor)
    final = head.loss(batch)
    assert final.top1[0] >= 0.9 * final.counted[0]


@pytest.mark.parametrize("method", ["eagle", "eagle2"])
def test_trained_greedy_is_lossless_and_uses_the_drafts(tiny_llama, trained, method):
    head, _, _ = trained[method]
    config = DecodeConfig(max_new_tokens=40)
    plain = generate(tiny_llama, PROMPT, config, NO_STOP)
    record = generate(tiny_llama, PROMPT, config, NO_STOP, drafter=head.drafter())
    assert record.tokens == plain.tokens
    # It learnt this continuation, so every step but the first (the prefill) and the last (cut by the
    # budget) keeps at least 2 drafts and the bonus. EAGLE-2 keeps no more: the random target is nearly
    # uniform, so joint probabilities fall ~6 nats per level and its 60 best nodes lie within depth 2.
    assert min(record.accept_lengths[1:-1]) >= 3


@pytest.mark.parametrize("cls", HEADS)
@pytest.mark.parametrize("prompt", [PROMPT, [1] + [17, 23, 99, 4, 250] * 6])
def test_untrained_greedy_is_lossless(tiny_llama, cls, prompt):
    config = DecodeConfig(max_new_tokens=40)
    plain = generate(tiny_llama, prompt, config, NO_STOP)
    record = generate(tiny_llama, prompt, config, NO_STOP, drafter=cls(tiny_llama).eval().drafter())
    assert record.tokens == plain.tokens


@pytest.mark.parametrize("method", ["eagle", "eagle2"])
def test_sampling_runs_to_the_budget(tiny_llama, trained, method):
    head, _, _ = trained[method]
    config = DecodeConfig(temperature=1.0, max_new_tokens=40)
    draw = lambda: generate(  # noqa: E731
        tiny_llama, PROMPT, config, NO_STOP, torch.Generator().manual_seed(5), drafter=head.drafter()
    ).tokens
    first = draw()
    assert len(first) == 40 and draw() == first


# 3 + 3 x 9 candidates, all kept: the tree reaches depth 4, so every level's ancestor slots get checked.
_FULL_DYNAMIC_TREE = {"top_k": 3, "depth": 4, "total_tokens": 30}


def _with_options(target: LlamaForCausalLM, head: EagleHead, options: dict) -> EagleHead:
    twin = type(head)(target, **{**head.options, **options})
    twin.load_state_dict(head.state_dict())
    return twin.eval()


def _reference_logits(head: EagleHead, states: torch.Tensor, tokens: list[int], path: list[int]) -> torch.Tensor:
    """Draft logits after `path` (root first) computed the slow way: whole sequences, no cache, no tree mask."""
    features, next_tokens = states, tokens[1:] + path[:1]
    for token in path[1:] + [None]:
        length = len(next_tokens)
        predicted = head.predict(features[None], torch.tensor([next_tokens]), _positions(length), _causal(length))
        predicted = predicted[0, -1]
        if token is not None:
            features, next_tokens = torch.cat([features, predicted[None]]), next_tokens + [token]
    return head.logits(predicted)


def _path(tree, node: int) -> list[int]:
    nodes = []
    while node >= 0:
        nodes.append(node)
        node = int(tree.shape.parents[node])
    return tree.tokens[nodes[::-1]].tolist()


def _check_tree_against_reference(head: EagleHead, tree, states: torch.Tensor, context: list[int]) -> None:
    """Every node's joint log-prob and every first child must match the uncached computation."""
    shape = tree.shape
    for node in range(shape.size):
        path = _path(tree, node)
        logprobs = torch.log_softmax(_reference_logits(head, states, context, path), -1)
        children = shape.children(node)
        if children.numel():
            assert int(tree.tokens[children[0]]) == int(logprobs.argmax()), (node, path)
        for child in children.tolist():
            expected = float(tree.scores[node]) + float(logprobs[tree.tokens[child]])
            assert float(tree.scores[child]) == pytest.approx(expected, abs=1e-4), (child, path)


@pytest.mark.parametrize("method", ["eagle", "eagle2"])
@torch.inference_mode()
def test_drafts_match_an_uncached_reference_across_steps(tiny_llama, trained, method):
    head = _with_options(tiny_llama, trained[method][0], _FULL_DYNAMIC_TREE if method == "eagle2" else {})
    drafter = head.drafter()
    root, kept, root2 = 77, [5, 6], 8  # what the target "kept" after the first draft
    context = PROMPT + [root] + kept
    states = _target_states(tiny_llama, context)
    drafter.prefill(torch.tensor(PROMPT), _states(states, len(PROMPT)))
    first = drafter.draft(root, 0.0, None)
    _check_tree_against_reference(head, first, states[: len(PROMPT)], PROMPT)
    drafter.accept(torch.tensor([root] + kept), _states(states[len(PROMPT) :], len(kept) + 1))
    second = drafter.draft(root2, 0.0, None)
    _check_tree_against_reference(head, second, states, context)
    assert second.shape.max_depth >= 4
    assert drafter.cache.get_seq_length() == len(context)  # one pair per kept token, the tree cropped


@pytest.mark.parametrize("total_tokens", [60, 7])
def test_dynamic_tree_size(tiny_llama, total_tokens):
    head = Eagle2Head(tiny_llama, total_tokens=total_tokens).eval()
    drafter = head.drafter()
    states = _target_states(tiny_llama, PROMPT)
    drafter.prefill(torch.tensor(PROMPT), _states(states, len(PROMPT)))
    for temperature in (0.0, 1.0):
        tree = drafter.draft(3, temperature, torch.Generator().manual_seed(0))
        # 10 + 4 x 100 candidates, so the cap binds; children are the top-k, proposed as point masses.
        assert tree.shape.size == total_tokens + 1 and tree.draft_probs is None
        assert tree.shape.max_depth <= 5
        drafter.accept(torch.tensor([3]), _states(states[-1:], 1))  # any state will do for the kept root


def test_a_dynamic_tree_chosen_for_the_machine_is_read_from_its_file_and_none_decodes_plainly(tiny_llama, tmp_path):
    chosen = tmp_path / "eagle2.json"
    chosen.write_text(json.dumps({"drafting": {"depth": 2, "total_tokens": 5}, "predicted": {"nodes": 5, "depth": 2}}))
    head = Eagle2Head(tiny_llama, depth=str(chosen), total_tokens=str(chosen), top_k=3).eval()
    record = generate(tiny_llama, PROMPT, DecodeConfig(max_new_tokens=6), [], drafter=head.drafter())
    assert set(record.tree_sizes) == {5}
    assert isinstance(head.dynamic_drafter(3, 0), NoDrafter)  # a chosen size of 0 nodes: no drafting
    chosen.write_text(json.dumps({"drafting": {"depth": "deep"}}))
    with pytest.raises(Clover2Error, match="eagle2.json: field 'drafting.depth' must be an integer"):
        Eagle2Head(tiny_llama, depth=str(chosen))
    with pytest.raises(Clover2Error, match="eagle2.json: cannot read field 'drafting.total_tokens'"):
        Eagle2Head(tiny_llama, total_tokens=str(chosen))


def test_static_tree_records_what_it_sampled_from(tiny_llama):
    drafter = EagleHead(tiny_llama).eval().drafter()
    states = _target_states(tiny_llama, PROMPT)
    drafter.prefill(torch.tensor(PROMPT), _states(states, len(PROMPT)))
    tree = drafter.draft(3, 1.0, torch.Generator().manual_seed(0))
    for node in range(tree.shape.size):
        children = tree.tokens[tree.shape.children(node)]
        if children.numel():
            assert float(tree.draft_probs[node].sum()) == pytest.approx(1.0, abs=1e-5)
            assert bool((tree.draft_probs[node, children] > 0).all())
            assert children.unique().numel() == children.numel()  # drawn without replacement


@pytest.mark.parametrize("cls", HEADS)
def test_checkpoint_round_trip(tiny_llama, tmp_path, cls):
    torch.manual_seed(4)
    head = cls(tiny_llama, noise=False)
    head.train()
    train_steps(head, _hand_batch(), steps=2)
    directory = save_head(head, tmp_path / "head", {"name": "tiny"})
    config = json.loads((directory / "head.json").read_text())
    assert config["method"] == cls.method and config["options"]["noise"] is False
    loaded = load_head(directory, tiny_llama)
    assert type(loaded) is cls
    batch = _hand_batch()
    assert loaded.eval().loss(batch).total.item() == head.eval().loss(batch).total.item()
    prompt_states = _target_states(tiny_llama, PROMPT)
    trees = []
    for candidate in (head, loaded):
        drafter = candidate.drafter()
        drafter.prefill(torch.tensor(PROMPT), _states(prompt_states, len(PROMPT)))
        trees.append(drafter.draft(3, 0.0, None))
    assert torch.equal(trees[0].tokens, trees[1].tokens) and torch.equal(trees[0].scores, trees[1].scores)


def test_head_for_another_target_is_an_error(tiny_llama, tmp_path):
    directory = save_head(EagleHead(tiny_llama), tmp_path / "head", {"name": "tiny"})
    other = LlamaForCausalLM(
        LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(Clover2Error, match="head.json.*hidden_size"):
        load_head(directory, other)


def test_an_eagle_head_drafts_for_eagle2_and_no_other_method(tiny_llama, tmp_path):
    head = EagleHead(tiny_llama, noise=False, tree="eagle_mc_sim_7b_63")
    directory = save_head(head, tmp_path / "head", {"name": "tiny"})
    loaded = load_head(directory, tiny_llama, "eagle2")
    assert type(loaded) is Eagle2Head and loaded.options["noise"] is False and "tree" not in loaded.options
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trainable_state(head).items())
    with pytest.raises(Clover2Error, match="holds a eagle head, not medusa"):
        load_head(directory, tiny_llama, "medusa")


def test_drafting_options_change_the_tree_of_a_trained_head_and_are_recorded_per_step(tiny_llama, tmp_path):
    directory = save_head(EagleHead(tiny_llama, noise=False), tmp_path / "head", {"name": "tiny"})
    loaded = load_head(directory, tiny_llama, "eagle2", {"total_tokens": 7})
    assert loaded.options["total_tokens"] == 7
    record = generate(tiny_llama, PROMPT, DecodeConfig(max_new_tokens=12), NO_STOP, drafter=loaded.eval().drafter())
    assert record.tree_sizes == [7] * len(record.failed_depths) and len(record.tree_sizes) == record.steps - 1
    with pytest.raises(Clover2Error, match="drafting option 'noise'.*depth, top_k, total_tokens"):
        load_head(directory, tiny_llama, "eagle2", {"noise": True})


def test_a_method_without_a_head_takes_no_drafting_options():
    with pytest.raises(Clover2Error, match="'vanilla' has no trained head"):
        method_factory("vanilla", None, {"tree": "eagle_mc_sim_7b_63"})
