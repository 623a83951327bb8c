"""Tree-verification kernels: Triton on CUDA, PyTorch everywhere else (METHODS.md §6).

Each operation below has one PyTorch path (the reference, and the CPU implementation) and one
Triton kernel (`clover2.engine.kernels.triton_ops`). `backend_for` picks between them per call,
as `choose_backend` set: auto (the default: Triton on CUDA tensors), triton or torch forces a side
(`--kernels` of the decoding verbs). Forcing Triton on CPU tensors needs TRITON_INTERPRET=1 set
before Triton is first imported (the tests do).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from clover2.errors import Clover2Error

BACKENDS = ("auto", "triton", "torch")
_choice = "auto"


def choose_backend(choice: str) -> None:
    """The backend every later kernel call runs: auto, triton or torch."""
    global _choice
    if choice not in BACKENDS:
        raise Clover2Error(f"kernels {choice!r}: expected one of {', '.join(BACKENDS)}")
    _choice = choice


def chosen_backend() -> str:
    return _choice


def backend_for(tensor: torch.Tensor) -> str:
    """"triton" or "torch": the implementation that runs for data on `tensor`'s device."""
    if _choice == "auto":
        return "triton" if tensor.is_cuda else "torch"
    if _choice == "triton" and not tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise Clover2Error(f"kernels triton on {tensor.device}: Triton needs a CUDA device (or TRITON_INTERPRET=1)")
    return _choice


def visible_keys(tree_mask: torch.Tensor, prefix: int) -> torch.Tensor:
    """[N, prefix + N] bool: every node sees the whole prefix, then the tree block's own mask."""
    prefix_block = torch.ones(tree_mask.shape[0], prefix, dtype=torch.bool, device=tree_mask.device)
    return torch.cat([prefix_block, tree_mask.to(torch.bool)], dim=1)


def tree_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, tree_mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """Attention of N tree queries over the prefix plus the tree block, under the tree mask.

    query [B, Hq, N, D]; key and value [B, Hkv, P + N, D] with the tree's entries last (Hq a multiple
    of Hkv: grouped-query attention); tree_mask [N, N] bool, True where a node sees another (its
    ancestors and itself). Returns [B, Hq, N, D].
    """
    prefix = key.shape[2] - query.shape[2]
    if prefix < 0 or tree_mask.shape != (query.shape[2], query.shape[2]) or query.shape[1] % key.shape[1]:
        raise ValueError(f"tree attention shapes: query {tuple(query.shape)}, key {tuple(key.shape)}, mask {tuple(tree_mask.shape)}")
    if backend_for(query) == "triton":
        from clover2.engine.kernels.triton_ops import tree_attention_triton

        return tree_attention_triton(query, key, value, tree_mask, scale)
    visible = visible_keys(tree_mask.to(query.device), prefix)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=visible, scale=scale, enable_gqa=True)


def greedy_accept(tokens: torch.Tensor, choice: torch.Tensor, retrieve: torch.Tensor) -> tuple[int, int, int]:
    """Greedy verification along every retrieve path: (best path row, drafted tokens accepted, bonus token).

    tokens [N] drafted tokens per node; choice [N] the target's argmax after each node; retrieve
    [L, depth + 1] root-to-leaf node indices padded with -1. Ties go to the first path.
    """
    if backend_for(choice) == "triton":
        from clover2.engine.kernels.triton_ops import greedy_accept_triton

        best, length, bonus = greedy_accept_triton(tokens, choice, retrieve).tolist()
        return best, length, bonus
    nodes = retrieve.clamp(min=0)
    matches = (tokens[nodes[:, 1:]] == choice[nodes[:, :-1]]) & (retrieve[:, 1:] >= 0)
    accepted = matches.long().cumprod(dim=1).sum(dim=1)
    best = int(accepted.argmax())
    length = int(accepted[best])
    return best, length, int(choice[retrieve[best, length]])


def compact_kv(layers: Sequence, prefix: int, path: Sequence[int]) -> None:
    """Move the accepted path's K/V entries to the slots right after the prefix, in every layer.

    `layers` are cache layers with `.keys` and `.values` [B, H, S, D]; node i of `path` sits at slot
    prefix + path[i] and moves to prefix + i. Entries past the path are left for the caller to crop.
    """
    if list(path) == list(range(len(path))):
        return
    keys = layers[0].keys
    if backend_for(keys) == "triton":
        from clover2.engine.kernels.triton_ops import compact_kv_triton

        compact_kv_triton([t for layer in layers for t in (layer.keys, layer.values)], prefix, path)
        return
    source = torch.tensor(list(path), device=keys.device) + prefix
    for layer in layers:
        layer.keys[..., prefix : prefix + len(path), :] = layer.keys[..., source, :]
        layer.values[..., prefix : prefix + len(path), :] = layer.values[..., source, :]
