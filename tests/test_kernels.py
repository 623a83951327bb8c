"""Triton tree-verification kernels against the PyTorch path (under TRITON_INTERPRET=1 without CUDA)."""

import copy
import json
import random

import pytest
import torch
from transformers import DynamicCache, LlamaForCausalLM

from clover2.cli import main
from clover2.engine.decoding import DecodeConfig, generate, verify_forward
from clover2.engine.kernels import (
    backend_for,
    compact_kv,
    greedy_accept,
    tree_attention,
)
from clover2.engine.kernels.attention import NAME
from clover2.engine.tree import DraftTree, TreeShape, random_tree, static_tree
from clover2.errors import Clover2Error
from clover2.methods import METHODS
from helpers import use_kernels

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Max |triton - reference| allowed, against the reference computed in fp32 from the same rounded inputs:
# fp32 uses exact (non-TF32) dots; fp16 and bf16 round the output (and, on GPU, the softmax weights).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
NO_STOP = [511]


TREES = {
    "eagle-26": static_tree("eagle_mc_sim_7b_63"),
    "medusa-63": static_tree("medusa_mc_sim_7b_63"),
    "chain-6": TreeShape.chain(6),
    "dynamic-60": random_tree(60, 1),
    "dynamic-11": random_tree(11, 2),
}


@pytest.fixture
def triton_backend(monkeypatch):
    use_kernels(monkeypatch, "triton")


def _attention_inputs(tree: TreeShape, prefix: int, q_heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(prefix * 31 + q_heads)
    make = lambda heads, length: torch.randn(1, heads, length, head_dim, generator=generator).to(DEVICE, dtype)  # noqa: E731
    return make(q_heads, tree.size), make(kv_heads, prefix + tree.size), make(kv_heads, prefix + tree.size)


def _check_attention(tree: TreeShape, prefix: int, q_heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype, monkeypatch) -> None:
    query, key, value = _attention_inputs(tree, prefix, q_heads, kv_heads, head_dim, dtype)
    scale = head_dim**-0.5
    use_kernels(monkeypatch, "torch")
    expected = tree_attention(query.float().cpu(), key.float().cpu(), value.float().cpu(), tree.mask, scale)
    use_kernels(monkeypatch, "triton")
    got = tree_attention(query, key, value, tree.mask, scale)
    assert got.dtype == dtype and got.shape == query.shape
    assert (got.float().cpu() - expected).abs().max() <= TOLERANCE[dtype]


@pytest.mark.parametrize("tree", TREES, ids=str)
@pytest.mark.parametrize("prefix", [0, 37, 300])
def test_tree_attention_matches_reference_on_every_tree_and_prefix(tree, prefix, monkeypatch):
    _check_attention(TREES[tree], prefix, 9, 3, 64, torch.float32, monkeypatch)  # SmolLM2's heads


@pytest.mark.parametrize("q_heads,kv_heads", [(4, 4), (9, 3), (8, 2), (8, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_tree_attention_matches_reference_for_each_gqa_ratio_and_dtype(q_heads, kv_heads, dtype, monkeypatch):
    _check_attention(TREES["dynamic-11"], 45, q_heads, kv_heads, 64, dtype, monkeypatch)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_tree_attention_matches_reference_at_head_dim_128(dtype, monkeypatch):
    _check_attention(TREES["eagle-26"], 130, 4, 1, 128, dtype, monkeypatch)


def _drafts(tree: TreeShape, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Drafted tokens and target choices that agree along random stretches of the tree."""
    rng = random.Random(seed)
    tokens = torch.tensor([rng.randrange(4) for _ in range(tree.size)])
    choice = torch.tensor([rng.randrange(4) for _ in range(tree.size)])
    return tokens, choice


@pytest.mark.parametrize("tree", TREES, ids=str)
def test_greedy_accept_kernel_matches_reference(tree, monkeypatch):
    shape = TREES[tree]
    for seed in range(12):
        tokens, choice = _drafts(shape, seed)
        use_kernels(monkeypatch, "torch")
        expected = greedy_accept(tokens, choice, shape.retrieve)
        use_kernels(monkeypatch, "triton")
        assert greedy_accept(tokens.to(DEVICE), choice.to(DEVICE), shape.retrieve.to(DEVICE)) == expected


def test_greedy_accept_kernel_takes_the_first_of_tied_paths(triton_backend):
    shape = TreeShape.from_parents([-1, 0, 0, 1, 2])  # two paths of depth 2
    tokens = torch.tensor([0, 5, 5, 6, 6], device=DEVICE)
    choice = torch.tensor([5, 6, 6, 9, 9], device=DEVICE)  # both paths fully accepted
    best, length, bonus = greedy_accept(tokens, choice, shape.retrieve.to(DEVICE))
    assert (best, length, bonus) == (0, 2, 9)


class _Layer:
    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("path", [[0, 2, 5, 9], [0, 1, 4], [0, 3]])
def test_kv_compaction_moves_the_path_in_every_layer(dtype, path, monkeypatch):
    prefix, generator = 21, torch.Generator().manual_seed(3)
    originals = [torch.randn(1, 3, prefix + 12, 64, generator=generator).to(dtype) for _ in range(6)]
    use_kernels(monkeypatch, "torch")
    expected = [_Layer(originals[i].clone(), originals[i + 1].clone()) for i in range(0, 6, 2)]
    compact_kv(expected, prefix, path)
    use_kernels(monkeypatch, "triton")
    got = [_Layer(originals[i].clone().to(DEVICE), originals[i + 1].clone().to(DEVICE)) for i in range(0, 6, 2)]
    compact_kv(got, prefix, path)
    for want, have in zip(expected, got):
        assert torch.equal(want.keys, have.keys.cpu()) and torch.equal(want.values, have.values.cpu())
    # The reference did move something: slot prefix + 1 now holds node path[1]'s entry.
    assert torch.equal(expected[0].keys[..., prefix + 1, :], originals[0][..., prefix + path[1], :])


def _tree_llama(tiny_llama, implementation: str) -> LlamaForCausalLM:
    # Its own config: set_attn_implementation writes into the config, which would switch tiny_llama too.
    model = LlamaForCausalLM(copy.deepcopy(tiny_llama.config)).eval().to(DEVICE)
    model.load_state_dict(tiny_llama.state_dict())
    model.set_attn_implementation(implementation)
    return model


@pytest.mark.parametrize("implementation", [NAME, "eager"])
def test_verification_forward_matches_sdpa_under_every_attention(tiny_llama, implementation, triton_backend):
    model = _tree_llama(tiny_llama, implementation)
    prompt = torch.tensor([[1, 100, 200, 300, 400, 17, 9]])
    shape = TREES["dynamic-11"]
    tree = DraftTree(torch.randint(3, 500, (shape.size,), generator=torch.Generator().manual_seed(0)), shape, torch.zeros(shape.size))
    logits = []
    for current in (model, tiny_llama):
        cache = DynamicCache(config=current.config)
        prefill = current(input_ids=prompt.to(current.device), cache=cache, use_cache=True).logits
        logits.append((prefill.cpu(), verify_forward(current, cache, tree).cpu()))
    (prefill_model, tree_model), (prefill_sdpa, tree_sdpa) = logits
    assert torch.allclose(prefill_model, prefill_sdpa, atol=1e-4)
    assert torch.allclose(tree_model, tree_sdpa, atol=1e-4)


@pytest.mark.parametrize("method", ["self-tree", "prompt-lookup-tree"])
def test_greedy_decoding_does_not_depend_on_the_backend(tiny_llama, method, monkeypatch):
    prompt = [1] + [17, 23, 99, 4, 250] * 4
    config = DecodeConfig(max_new_tokens=24)
    plain = generate(tiny_llama, prompt, config, NO_STOP)  # before the backend is forced: tiny_llama is on the CPU
    records = {}
    for backend, model in (("torch", tiny_llama), ("triton", _tree_llama(tiny_llama, NAME))):
        use_kernels(monkeypatch, backend)
        records[backend] = METHODS[method](model)(model, prompt, config, NO_STOP, None)
    assert records["triton"].tokens == records["torch"].tokens == plain.tokens
    assert records["triton"].accept_lengths == records["torch"].accept_lengths


def test_backend_choice_is_checked(monkeypatch):
    with pytest.raises(Clover2Error, match="kernels 'cuda-please': expected one of auto, triton, torch"):
        use_kernels(monkeypatch, "cuda-please")
    use_kernels(monkeypatch, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(Clover2Error, match="needs a CUDA device"):
        backend_for(torch.zeros(1))
    use_kernels(monkeypatch, "auto")
    assert backend_for(torch.zeros(1)) == "torch"


def test_kernels_bench_reports_every_implementation(tmp_path):
    out = tmp_path / "kernels.json"
    args = ["--shapes", "smollm2", "--tree-sizes", "26", "--prefixes", "16", "--repeats", "1", "--dtype", "float32"]
    assert main(["kernels-bench", "--device", DEVICE, *args, "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["attention"]
    assert (row["shape"], row["tree"], row["prefix"]) == ("smollm2", 26, 16)
    assert all(row[f"{name}_ms"] > 0 for name in (NAME, "sdpa", "eager"))


def test_kernels_bench_needs_a_gpu_outside_the_interpreter(monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert main(["kernels-bench", "--device", "cpu"]) == 2
    assert "need a CUDA device" in capsys.readouterr().err
