"""The Triton kernels of tree verification; `clover2.engine.kernels` dispatches to them on CUDA.

Under TRITON_INTERPRET=1 (the CPU tests) bf16 loads are upcast to fp32, because the interpreter's
bf16 arithmetic is wrong, and autotuning keeps a single config, because the others need a driver.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

_ATTENTION_CONFIGS = [
    triton.Config({"BLOCK_Q": block_q, "BLOCK_K": block_k}, num_warps=warps, num_stages=stages)
    for block_q, block_k, warps, stages in ((16, 64, 4, 2), (32, 64, 4, 2), (64, 64, 4, 3), (32, 128, 8, 2), (64, 128, 8, 3))
]
if INTERPRET:
    _ATTENTION_CONFIGS = [triton.Config({"BLOCK_Q": 16, "BLOCK_K": 32})]


@triton.jit
def _online_softmax_step(scores, v, m_i, l_i, acc, DOT_FP32: tl.constexpr):
    """Fold one block of (already masked, log2-scaled) scores and its values into the running softmax."""
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    # Rows that have seen nothing visible yet keep m = -inf; subtract 0 there to avoid inf - inf.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(scores - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if DOT_FP32:
        acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.autotune(configs=_ATTENTION_CONFIGS, key=["HEAD_DIM", "GROUP"])
@triton.jit
def _tree_attention_kernel(
    Q, K, V, Mask, Out,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_mq,
    n_query, prefix, heads, scale_log2,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
):
    batch_head = tl.program_id(1)
    batch, head = batch_head // heads, batch_head % heads
    kv_head = head // GROUP
    rows = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dims = tl.arange(0, HEAD_DIM)
    row_ok = rows < n_query
    q = tl.load(Q + batch * stride_qb + head * stride_qh + rows[:, None] * stride_qn + dims[None, :], mask=row_ok[:, None], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)
    k_base = K + batch * stride_kb + kv_head * stride_kh
    v_base = V + batch * stride_vb + kv_head * stride_vh
    m_i = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_Q], dtype=tl.float32)
    acc = tl.zeros([BLOCK_Q, HEAD_DIM], dtype=tl.float32)
    # The prefix: every query sees every key, so no mask is read.
    for start in range(0, prefix, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        col_ok = cols < prefix
        k = tl.load(k_base + cols[:, None] * stride_kn + dims[None, :], mask=col_ok[:, None], other=0.0)
        v = tl.load(v_base + cols[:, None] * stride_vn + dims[None, :], mask=col_ok[:, None], other=0.0)
        scores = _scores(q, k, scale_log2, DOT_FP32)
        scores = tl.where(col_ok[None, :], scores, float("-inf"))
        m_i, l_i, acc = _online_softmax_step(scores, v, m_i, l_i, acc, DOT_FP32)
    # The tree block: keys after the prefix, visible where the tree mask says so.
    for start in range(0, n_query, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        col_ok = cols < n_query
        k = tl.load(k_base + (prefix + cols)[:, None] * stride_kn + dims[None, :], mask=col_ok[:, None], other=0.0)
        v = tl.load(v_base + (prefix + cols)[:, None] * stride_vn + dims[None, :], mask=col_ok[:, None], other=0.0)
        seen = tl.load(Mask + rows[:, None] * stride_mq + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0)
        scores = _scores(q, k, scale_log2, DOT_FP32)
        scores = tl.where(seen != 0, scores, float("-inf"))
        m_i, l_i, acc = _online_softmax_step(scores, v, m_i, l_i, acc, DOT_FP32)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    out_ptr = Out + batch * stride_ob + head * stride_oh + rows[:, None] * stride_on + dims[None, :]
    tl.store(out_ptr, out.to(Out.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _scores(q, k, scale_log2, DOT_FP32: tl.constexpr):
    if DOT_FP32:
        return tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee") * scale_log2
    return tl.dot(q, tl.trans(k)) * scale_log2


def tree_attention_triton(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, tree_mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """Triton tree attention; shapes as `clover2.engine.kernels.tree_attention`."""
    batch, heads, n_query, head_dim = query.shape
    if head_dim not in (16, 32, 64, 128, 256):
        raise ValueError(f"tree attention kernel: head dim {head_dim} is not a power of two in 16..256")
    query, key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value))
    mask = tree_mask.to(device=query.device, dtype=torch.int8).contiguous()
    out = torch.empty_like(query)
    # fp32 data, and bf16 under the interpreter, are computed in fp32 with exact (non-TF32) dots.
    dot_fp32 = query.dtype == torch.float32 or (INTERPRET and query.dtype == torch.bfloat16)
    grid = lambda meta: (triton.cdiv(n_query, meta["BLOCK_Q"]), batch * heads)  # noqa: E731
    _tree_attention_kernel[grid](
        query, key, value, mask, out,
        *query.stride()[:3], *key.stride()[:3], *value.stride()[:3], *out.stride()[:3], mask.stride(0),
        n_query, key.shape[2] - n_query, heads, scale * 1.4426950408889634,
        GROUP=heads // key.shape[1], HEAD_DIM=head_dim, DOT_FP32=dot_fp32,
    )
    return out


@triton.jit
def _greedy_accept_kernel(Tokens, Choice, Retrieve, Out, n_paths, width, stride_r, BLOCK_L: tl.constexpr, BLOCK_W: tl.constexpr):
    paths = tl.arange(0, BLOCK_L)
    cols = tl.arange(0, BLOCK_W)
    inside = (paths[:, None] < n_paths) & (cols[None, :] < width)
    nodes = tl.load(Retrieve + paths[:, None] * stride_r + cols[None, :], mask=inside, other=-1)
    parents = tl.load(Retrieve + paths[:, None] * stride_r + cols[None, :] - 1, mask=inside & (cols[None, :] >= 1), other=-1)
    drafted = tl.load(Tokens + nodes, mask=nodes >= 0, other=-1)
    wanted = tl.load(Choice + parents, mask=parents >= 0, other=-2)
    matched = (nodes >= 0) & (parents >= 0) & (drafted == wanted)
    # A path's accepted length is the column of its first miss, less the root.
    misses = tl.where((cols[None, :] >= 1) & ~matched, cols[None, :], BLOCK_W)
    accepted = tl.where(paths < n_paths, tl.min(misses, axis=1) - 1, -1)
    best = tl.argmax(accepted, axis=0, tie_break_left=True)
    length = tl.max(accepted, axis=0)
    last = tl.load(Retrieve + best * stride_r + length)
    tl.store(Out, best)
    tl.store(Out + 1, length)
    tl.store(Out + 2, tl.load(Choice + last))


def greedy_accept_triton(tokens: torch.Tensor, choice: torch.Tensor, retrieve: torch.Tensor) -> torch.Tensor:
    """[best path row, accepted drafted tokens, bonus token] as an int64 tensor on the device."""
    device = choice.device
    retrieve = retrieve.to(device=device, dtype=torch.int64).contiguous()
    out = torch.empty(3, dtype=torch.int64, device=device)
    n_paths, width = retrieve.shape
    _greedy_accept_kernel[(1,)](
        tokens.to(device=device, dtype=torch.int64).contiguous(), choice.to(torch.int64).contiguous(), retrieve, out,
        n_paths, width, retrieve.stride(0),
        BLOCK_L=triton.next_power_of_2(n_paths), BLOCK_W=triton.next_power_of_2(width),
    )
    return out


@triton.jit
def _compact_kv_kernel(Pointers, Source, n_path, prefix, head_stride, seq_stride, head_dim, BLOCK_D: tl.constexpr, WORD: tl.constexpr):
    # One program per (cache tensor, batch x head). Rows move in ascending order and each column
    # stays with one thread: slot prefix + i is read (as a source) no later than it is overwritten.
    base = tl.load(Pointers + tl.program_id(0)).to(tl.pointer_type(WORD)) + tl.program_id(1).to(tl.int64) * head_stride
    dims = tl.arange(0, BLOCK_D)
    for i in range(n_path):
        source = tl.load(Source + i)
        row = tl.load(base + (prefix + source) * seq_stride + dims, mask=dims < head_dim)
        tl.store(base + (prefix + i) * seq_stride + dims, row, mask=dims < head_dim)


_WORDS = {2: tl.int16, 4: tl.int32, 8: tl.int64}


def compact_kv_triton(tensors: Sequence[torch.Tensor], prefix: int, path: Sequence[int]) -> None:
    """Every K and V tensor [B, H, S, D] of the cache compacted in one launch (moved as raw words)."""
    first = tensors[0]
    if any(t.shape != first.shape or t.dtype != first.dtype or not t.is_contiguous() for t in tensors):
        raise ValueError("compact_kv_triton: cache tensors must share one contiguous shape and dtype")
    batch, heads, length, head_dim = first.shape
    pointers = torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64, device=first.device)
    source = torch.tensor(list(path), dtype=torch.int64, device=first.device)
    _compact_kv_kernel[(len(tensors), batch * heads)](
        pointers, source, len(path), prefix, length * head_dim, head_dim, head_dim,
        BLOCK_D=triton.next_power_of_2(head_dim), WORD=_WORDS[first.element_size()], num_warps=1,
    )
