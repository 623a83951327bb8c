"""Training data from ShareGPT and the training loop: masks, errors, checkpoints, resume, the head directory."""

import gzip
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from clover2.cli import main
from clover2.engine.decoding import DecodeConfig, generate
from clover2.engine.target import Target
from clover2.errors import Clover2Error
from clover2.heads.acceptance import ACCEPTANCE, PROBE_DEPTH, load_acceptance
from clover2.heads.directory import load_head
from clover2.targets import load_target
from clover2.training.loop import TrainConfig, train
from clover2.training.sharegpt import encode, load_examples, read_conversations
from clover2.training.teacher import CachedTeacher, OnlineTeacher, write_teacher_cache


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return load_target(smollm2_dir).tokenizer


@pytest.fixture(scope="module")
def tiny_target(tokenizer):
    """A tiny random Llama over SmolLM2's vocabulary, so real conversations can be tokenized for it."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(config).eval()
    return Target(model, tokenizer, [tokenizer.eos_token_id], None, {"name": "tiny-smollm2-vocab"})


def _sharegpt(path, conversations):
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for number, turns in enumerate(conversations):
            rows = [{"from": "human" if i % 2 == 0 else "gpt", "value": text} for i, text in enumerate(turns)]
            handle.write(json.dumps({"id": str(number), "conversations": rows}) + "\n")
    return path


CHATS = [
    ["What is two plus two?", "Two plus two is four.", "And three plus three?", "Three plus three is six."],
    ["Name a colour.", "Blue is a colour."],
    ["Say hello.", "Hello there, how can I help you today?"],
] * 4


def test_loss_mask_covers_exactly_the_assistant_turns(tokenizer):
    messages = [{"role": "user", "content": CHATS[0][0]}, {"role": "assistant", "content": CHATS[0][1]},
                {"role": "user", "content": CHATS[0][2]}, {"role": "assistant", "content": CHATS[0][3]}]
    example = encode(tokenizer, messages, max_length=512)
    marked = tokenizer.decode([t for t, m in zip(example.input_ids, example.loss_mask) if m])
    assert "Two plus two is four." in marked and "Three plus three is six." in marked
    assert "What is two plus two?" not in marked and "assistant" not in marked
    assert "<|im_end|>" in marked  # the end of an assistant turn is learnt too


def test_conversations_keep_the_alternating_prefix(tmp_path):
    path = _sharegpt(tmp_path / "c.jsonl.gz", [["q", "a", "q2"], ["q", "", "q2", "a2"]])
    assert [len(c) for c in read_conversations(path)] == [2, 0]


def test_sharegpt_json_array_reads_like_json_lines(tmp_path):
    lines = _sharegpt(tmp_path / "c.jsonl.gz", CHATS[:3])
    array = tmp_path / "c.json"
    array.write_text(json.dumps([json.loads(line) for line in gzip.open(lines, "rt")]))
    assert list(read_conversations(array)) == list(read_conversations(lines))
    array.write_text(json.dumps([{"id": "0"}]))
    with pytest.raises(Clover2Error, match=r"c.json:record 0: expected"):
        list(read_conversations(array))


def test_malformed_line_names_file_and_line(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"conversations": [{"from": "human", "value": "hi"}]}) + "\n{not json\n")
    with pytest.raises(Clover2Error, match=r"bad.jsonl:2: expected"):
        load_examples(tokenizer, path, count=10, max_length=64)


def test_empty_training_set_is_an_error(tmp_path, tokenizer):
    path = _sharegpt(tmp_path / "empty.jsonl.gz", [["only a question"]])
    with pytest.raises(Clover2Error, match="empty.jsonl.gz: no usable conversation"):
        load_examples(tokenizer, path, count=10, max_length=64)


def _config(**overrides) -> TrainConfig:
    settings = dict(method="clover2", conversations=8, heldout=2, max_length=64, batch_size=2, max_steps=6,
                    eval_every=3, checkpoint_every=3, warmup_steps=0, lr=3e-3)
    return TrainConfig(**{**settings, **overrides})


def test_interrupted_training_resumes_from_its_checkpoint(tiny_target, tmp_path, monkeypatch):
    data = _sharegpt(tmp_path / "train.jsonl.gz", CHATS)
    out = tmp_path / "head"
    calls = {"n": 0}
    real_batch = OnlineTeacher.batch

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # steps 1-3, the held-out pass at step 3 (read for losses, then acceptance), step 4, interrupt
            raise KeyboardInterrupt
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(OnlineTeacher, "batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_target, data, out, _config())
    assert not out.exists() and (tmp_path / "head.partial" / "checkpoint" / "state.json").exists()

    monkeypatch.setattr(OnlineTeacher, "batch", real_batch)
    train(tiny_target, data, out, _config())
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]  # step 4 of the interrupted run was redone once
    assert "heldout" in log[2] and len(log[-1]["heldout"]["top1"]) == 5
    assert not (tmp_path / "head.partial").exists()
    meta = json.loads((out / "training.json").read_text())
    assert meta["steps"] == 6 and meta["config"]["betas"] == [0.9, 0.95]


def test_trained_head_loads_and_decodes_losslessly(tiny_target, tmp_path):
    data = _sharegpt(tmp_path / "train.jsonl.gz", CHATS)
    out = train(tiny_target, data, tmp_path / "head", _config(max_steps=4))
    head = load_head(out, tiny_target.model)
    profile = load_acceptance(out / ACCEPTANCE)  # the held-out profile at the last step, as every evaluation logs it
    assert profile.depth == PROBE_DEPTH and 0 < profile.positions <= TrainConfig.acceptance_positions
    assert json.loads((out / ACCEPTANCE).read_text())["step"] == 4
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["heldout"]["acceptance"]["positions"] for r in log if "heldout" in r] == [profile.positions] * 2
    prompt = tiny_target.tokenizer.encode("Say hello.")
    plain = generate(tiny_target.model, prompt, DecodeConfig(max_new_tokens=20), [0])
    assert generate(tiny_target.model, prompt, DecodeConfig(max_new_tokens=20), [0], drafter=head.drafter()).tokens == plain.tokens


def test_train_cli_rejects_an_unknown_setting(tmp_path, smollm2_dir, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("learning_rate: 0.1\n")
    code = main(["train", "--target", str(smollm2_dir), "--method", "clover2", "--config", str(config), "--out", str(tmp_path / "h")])
    assert code == 2 and "train.yaml: unknown training settings learning_rate" in capsys.readouterr().err


def test_teacher_cache_stores_what_online_training_computes(tiny_target, tmp_path):
    examples = load_examples(tiny_target.tokenizer, _sharegpt(tmp_path / "c.jsonl.gz", CHATS[:3]), count=3, max_length=64)
    with pytest.warns(UserWarning, match="GiB on disk"):
        cache = write_teacher_cache(tiny_target, examples, tmp_path / "cache", top_k=8, batch_size=2)
    cached = CachedTeacher(cache, tiny_target)
    assert [e.input_ids for e in cached.examples] == [e.input_ids for e in examples]
    device = torch.device("cpu")
    online, stored = OnlineTeacher(tiny_target.model, 0).batch(examples, device), cached.batch(cached.examples, device)
    assert torch.equal(online.loss_mask, stored.loss_mask) and torch.equal(online.attention_mask, stored.attention_mask)
    real = online.attention_mask
    assert torch.allclose(online.h[real], stored.h[real], atol=1e-2)
    # p kept as its top-8, renormalised: the teacher's top-1 and the ratios among the kept tokens survive.
    assert torch.equal(online.teacher_logits[real].argmax(-1), stored.teacher_logits[real].argmax(-1))
    top = online.teacher_logits[real].topk(8, dim=-1)
    assert torch.allclose(top.values.softmax(-1), stored.teacher_logits[real].softmax(-1).gather(-1, top.indices), atol=1e-2)


def test_training_from_a_teacher_cache_makes_a_head(tiny_target, tmp_path):
    examples = load_examples(tiny_target.tokenizer, _sharegpt(tmp_path / "c.jsonl.gz", CHATS), count=8, max_length=64)
    with pytest.warns(UserWarning):
        cache = write_teacher_cache(tiny_target, examples, tmp_path / "cache", top_k=16, batch_size=4)
    out = train(tiny_target, None, tmp_path / "head", _config(conversations=6, max_steps=2, teacher_cache=str(cache)))
    assert (out / "head.safetensors").is_file()
    assert json.loads((out / "training.json").read_text())["config"]["teacher_cache"] == str(cache)
    with pytest.raises(Clover2Error, match="holds 8 conversations, fewer than conversations \\+ heldout = 10"):
        train(tiny_target, None, tmp_path / "head2", _config(max_steps=2, teacher_cache=str(cache)))


@pytest.mark.parametrize(("decay_steps", "horizon"), [(None, 4), (100, 100)])
def test_a_linear_schedule_decays_over_the_run_or_over_a_nominal_horizon(tiny_target, tmp_path, decay_steps, horizon):
    data = _sharegpt(tmp_path / "train.jsonl.gz", CHATS)
    out = train(tiny_target, data, tmp_path / "head", _config(max_steps=4, eval_every=4, schedule="linear", decay_steps=decay_steps))
    rates = [json.loads(line)["lr"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert rates == pytest.approx([3e-3 * (horizon - step) / horizon for step in range(1, 5)])


def test_a_decay_horizon_inside_the_warmup_is_refused():
    with pytest.raises(Clover2Error, match="training setting decay_steps: expected an integer above warmup_steps \\(20\\)"):
        _config(warmup_steps=20, decay_steps=10).resolved()


def test_an_unknown_schedule_is_refused_naming_the_setting():
    with pytest.raises(Clover2Error, match="training setting schedule: expected one of linear, .*got 'bogus'"):
        _config(schedule="bogus").resolved()


def test_teacher_cache_of_another_target_is_an_error(tiny_target, tmp_path):
    examples = load_examples(tiny_target.tokenizer, _sharegpt(tmp_path / "c.jsonl.gz", CHATS[:2]), count=2, max_length=64)
    with pytest.warns(UserWarning):
        cache = write_teacher_cache(tiny_target, examples, tmp_path / "cache", top_k=4, batch_size=2)
    bigger = LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_target.tokenizer), hidden_size=64, intermediate_size=64,
                                          num_hidden_layers=1, num_attention_heads=4))
    with pytest.raises(Clover2Error, match="teacher.json: hidden_size is 32"):
        CachedTeacher(cache, Target(bigger, tiny_target.tokenizer, [0], None, {}))


def test_each_head_trains_with_its_own_optimiser_settings_and_an_unknown_method_has_none():
    from clover2.heads.protocol import DraftHead, head_class, register

    assert _config(method="clover2", warmup_steps=None).resolved().warmup_steps == 8000
    assert _config(method="medusa").resolved().betas == (0.9, 0.999)
    assert TrainConfig(method="eagle2").resolved().lr == head_class("eagle").optimiser["lr"] == 3e-5
    with pytest.raises(Clover2Error, match="unknown head method 'lookahead'"):
        TrainConfig(method="lookahead").resolved()

    class Undeclared(DraftHead):
        method = "undeclared"

    with pytest.raises(TypeError, match="Undeclared: optimiser must set betas, lr, schedule, warmup_steps"):
        register(Undeclared)
