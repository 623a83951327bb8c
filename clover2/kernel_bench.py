"""`clover2 kernels-bench`: the tree-attention kernel against SDPA-with-mask and eager attention,
alone and inside the whole verification step (forward, greedy acceptance, KV compaction).

Every implementation of one configuration is timed in the same process, back to back, so the ratios
compare like with like; times are medians over repeats.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import eager_attention_forward

from clover2.engine.decoding import keep_path, verify_forward
from clover2.engine.kernels import visible_keys
from clover2.engine.kernels.attention import NAME
from clover2.engine.kernels.triton_ops import tree_attention_triton
from clover2.engine.target import Target
from clover2.engine.tree import DraftTree, TreeShape, random_tree, static_tree
from clover2.engine.verify import accept_greedy

# (query heads, KV heads, head dim)
SHAPES = {"smollm2": (9, 3, 64), "7b": (32, 32, 128)}
IMPLEMENTATIONS = (NAME, "sdpa", "eager")


def bench_tree(size: int) -> TreeShape:
    """26 nodes: the EAGLE/Clover-2 static tree; any other size: a random EAGLE-2-like dynamic tree."""
    return static_tree("eagle_mc_sim_7b_63") if size == 26 else random_tree(size, seed=size)


def median_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of `fn` in milliseconds, after one untimed call (compilation, autotuning)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def attention_rows(
    shapes: Sequence[str], tree_sizes: Sequence[int], prefixes: Sequence[int], dtype: torch.dtype, device: torch.device, repeats: int
) -> list[dict]:
    """One row per (shape, tree size, prefix): milliseconds per implementation and ratios to the kernel."""
    rows = []
    for shape_name in shapes:
        q_heads, kv_heads, head_dim = SHAPES[shape_name]
        for size in tree_sizes:
            tree = bench_tree(size)
            for prefix in prefixes:
                query = torch.randn(1, q_heads, tree.size, head_dim, device=device, dtype=dtype)
                key, value = (torch.randn(1, kv_heads, prefix + tree.size, head_dim, device=device, dtype=dtype) for _ in "kv")
                times = {
                    name: median_ms(fn, repeats, device)
                    for name, fn in _attention_calls(query, key, value, tree.mask.to(device), head_dim**-0.5).items()
                }
                rows.append({"shape": shape_name, "tree": tree.size, "prefix": prefix, **_with_ratios(times)})
    return rows


def _attention_calls(query, key, value, tree_mask, scale) -> dict[str, Callable[[], torch.Tensor]]:
    prefix = key.shape[2] - query.shape[2]
    visible = visible_keys(tree_mask, prefix)
    additive = torch.zeros(visible.shape, dtype=query.dtype, device=query.device).masked_fill(~visible, torch.finfo(query.dtype).min)
    module = SimpleNamespace(num_key_value_groups=query.shape[1] // key.shape[1], training=False)
    return {
        NAME: lambda: tree_attention_triton(query, key, value, tree_mask, scale),
        "sdpa": lambda: F.scaled_dot_product_attention(query, key, value, attn_mask=visible, scale=scale, enable_gqa=True),
        "eager": lambda: eager_attention_forward(module, query, key, value, additive[None, None], scaling=scale)[0],
    }


def verify_rows(target: Target, tree_sizes: Sequence[int], prefixes: Sequence[int], repeats: int) -> list[dict]:
    """The whole verification step on `target` (forward over the tree, greedy acceptance, compaction)."""
    model, rows = target.model, []
    device, original = model.device, model.config._attn_implementation
    generator = torch.Generator().manual_seed(0)
    try:
        for size in tree_sizes:
            shape = bench_tree(size)
            tree = DraftTree(torch.randint(0, model.config.vocab_size, (shape.size,), generator=generator), shape, torch.zeros(shape.size))
            for prefix in prefixes:
                prompt = torch.randint(0, model.config.vocab_size, (1, prefix), generator=generator).to(device)
                times = {}
                for name in IMPLEMENTATIONS:
                    model.set_attn_implementation(name)
                    times[name] = median_ms(_verify_step(model, prompt, tree), repeats, device)
                rows.append({"tree": shape.size, "prefix": prefix, **_with_ratios(times)})
    finally:
        model.set_attn_implementation(original)
    return rows


def _verify_step(model, prompt: torch.Tensor, tree: DraftTree) -> Callable[[], None]:
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1)
    prefix = cache.get_seq_length()

    @torch.no_grad()
    def step() -> None:
        result = accept_greedy(tree, verify_forward(model, cache, tree))
        keep_path(cache, prefix, result.path)
        cache.crop(prefix - cache.get_seq_length())  # back to the prompt for the next repeat

    return step


def _with_ratios(times: dict[str, float]) -> dict:
    """ms per implementation, and each other implementation's time over the kernel's (> 1: kernel faster)."""
    kernel = times[NAME]
    return {**{f"{name}_ms": round(ms, 4) for name, ms in times.items()},
            **{f"{name}_over_kernel": round(ms / kernel, 3) for name, ms in times.items() if name != NAME}}
