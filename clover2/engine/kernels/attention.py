"""Tree attention as a transformers attention implementation ("clover2_tree").

`verify_forward` passes the tree block's mask as the keyword `tree_mask`, which transformers hands
through to every attention call; those calls run the tree kernel. Calls without it run the same
kernel with a causal block when no mask was built (unpadded prefill and decoding); anything else
(padded batches, the draft heads' own masks, training dropout) goes to SDPA unchanged.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from clover2.engine.kernels import backend_for, tree_attention

NAME = "clover2_tree"


def tree_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    tree_mask: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The AttentionInterface signature: query [B, Hq, N, D], key/value [B, Hkv, S, D] -> [B, N, Hq, D]."""
    n_query = query.shape[2]
    if tree_mask is None and attention_mask is None:
        tree_mask = torch.ones(n_query, n_query, dtype=torch.bool, device=query.device).tril()
    if tree_mask is None or (dropout and module.training):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return tree_attention(query, key, value, tree_mask, scale).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, tree_attention_forward)
# Masks are built as for SDPA, so padded batches still get theirs (and fall back to SDPA above).
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_tree_attention(model: PreTrainedModel) -> None:
    """Switch `model` to the tree-attention implementation (registered when this module is imported)."""
    model.set_attn_implementation(NAME)


def use_backend_attention(model: PreTrainedModel) -> None:
    """The attention of the backend that runs on `model`'s device: the tree kernel under Triton, else SDPA."""
    if backend_for(next(model.parameters())) == "triton":
        use_tree_attention(model)
    else:
        model.set_attn_implementation("sdpa")
