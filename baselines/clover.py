"""Clover v1 (METHODS.md §2): Medusa made sequential with an Augmenting Block and an RNN over drafted tokens.

Per decoding step:
  h_0 = AB(h_1..t)[t]                       one decoder layer over the target's states, with its own KV cache
  h_i = AD(h_{i-1}, e_{i-1})                the Attention Decoder, one cell shared by all heads
  p_i = softmax(W_lm MLP_i(h_i))            head i drafts next-i; MLP_i a Medusa ResBlock, W_lm frozen
with e_0 = e(next-0 token) and e_i = e(token drafted by head i).

Choices the paper leaves open, made here:
- The AB reads the post-norm h (what the LM head sees), as Medusa's heads do; reading the pre-norm u
  is listed among Clover-2's changes (METHODS.md §3). No norm follows the AB: §2 names none.
- e(t) is the RMS-normalised row t of W_lm (no weight): entries of unit scale, like a normalised
  hidden state before its gain. Kept frozen, as W_lm is.
- The AD's norm(h) is a weightless RMS norm and its projections have no biases, so it has 3H² weights.
- Loss: Σ_i CE(p_i at t, x_{t+i+1}), unweighted, scored where x_{t+i+1} is an assistant token. Heads are
  teacher-forced on the data tokens (e_0 = e(x_{t+1}) in training, the target's own token at inference).
- With 3 heads the tree is cut to depth 3 (the 25-node tree has depth 5; see `tree_for_heads`).
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from baselines.medusa import fits_heads, hard_label_loss, scored_positions, tree_for_heads
from clover2.engine.drafter import TargetStates, grow_static_tree
from clover2.engine.tree import DraftTree, TreeShape
from clover2.errors import Clover2Error
from clover2.heads.blocks import ResBlock, check_heads
from clover2.heads.protocol import (
    DraftHead,
    HeadLoss,
    TrainBatch,
    decoder_layer,
    register,
    run_layers,
    static_drafter,
)

QK_INIT_NOISE = 0.01  # W_Q, W_K = I + U[0, 0.01)


def rms_normalise(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / RMS(x) over the last dimension, computed in fp32 like the target's own norms."""
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


class AttentionDecoder(nn.Module):
    """h_i = h_{i-1} + Attn(Q = W_Q norm(h_{i-1}), K = W_K e, V = W_V e), one key per row, split into heads."""

    def __init__(self, size: int, heads: int, eps: float) -> None:
        super().__init__()
        if size % heads:
            raise Clover2Error(f"clover: hidden size {size} does not split into {heads} attention heads")
        self.heads, self.eps = heads, eps
        self.query = nn.Linear(size, size, bias=False)
        self.key = nn.Linear(size, size, bias=False)
        self.value = nn.Linear(size, size, bias=False)
        with torch.no_grad():
            for projection in (self.query, self.key):
                projection.weight.copy_(torch.eye(size) + QK_INIT_NOISE * torch.rand(size, size))
            self.value.weight.zero_()

    def forward(self, state: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        q = self.query(rms_normalise(state, self.eps)).unflatten(-1, (self.heads, -1))
        k = self.key(embedding).unflatten(-1, (self.heads, -1))
        v = self.value(embedding).unflatten(-1, (self.heads, -1))
        # A single key per row makes the softmax exactly 1, so Attn = V and W_Q, W_K get zero gradient;
        # written out anyway so the cell reads as the paper's equation (Clover-2 drops the softmax for this).
        weights = torch.softmax((q * k).sum(dim=-1, keepdim=True) * q.shape[-1] ** -0.5, dim=-1)
        return state + (weights * v).flatten(-2)


@register
class CloverHead(DraftHead):
    method = "clover"
    optimiser: ClassVar[dict] = {"lr": 1e-3, "betas": (0.9, 0.999), "warmup_steps": 0, "schedule": "cosine"}

    def __init__(
        self,
        target: PreTrainedModel,
        *,
        heads: int = 3,
        tree: str = "eagle_mc_sim_7b_63",
        draft_vocab: int | None = None,
        layer_init: str = "random",
        vocab_ids: torch.Tensor | None = None,
    ) -> None:
        super().__init__(target, vocab_ids, heads=heads, tree=tree, draft_vocab=draft_vocab, layer_init=layer_init)
        check_heads(self.method, heads)
        self.shape = tree_for_heads(tree, heads)
        decoder, config = target.get_decoder(), target.config
        self.block = decoder_layer(target, 0, layer_init)
        self.rotary = copy.deepcopy(decoder.rotary_emb)
        self.eps = config.rms_norm_eps
        lm_weight = target.get_output_embeddings().weight
        self.register_buffer("lm_weight", lm_weight.detach(), persistent=False)
        self.decoder = AttentionDecoder(self.hidden_size, config.num_attention_heads, self.eps)
        self.mlps = nn.ModuleList(ResBlock(self.hidden_size) for _ in range(heads))
        self.to(device=lm_weight.device, dtype=lm_weight.dtype)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """e(t): the RMS-normalised row t of the frozen LM head."""
        return rms_normalise(self.lm_weight[tokens], self.eps)

    def head_logits(self, i: int, state: torch.Tensor) -> torch.Tensor:
        """Head i's (1-based) logits over the draft vocabulary [..., size] from the AD state h_i [..., H]."""
        return self.vocab.project(self.mlps[i - 1](state))

    def augment(
        self, h: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor, cache: DynamicCache | None = None
    ) -> torch.Tensor:
        """The AB over h [B, n, H] at `positions` [B or 1, n], `visible` a bool mask [B, 1, n, kv]."""
        return run_layers([self.block], self.rotary, h, positions, visible, cache)

    def augment_sequence(self, h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The AB over whole sequences [B, T, H], causal and blind to padding."""
        length = h.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=h.device).tril()
        visible = causal & attention_mask.bool()[:, None, None, :]
        # A padded query that sees no key would give NaN (and NaN gradients); let every position see itself.
        visible = visible | torch.eye(length, dtype=torch.bool, device=h.device)
        positions = torch.arange(length, device=h.device)[None]
        return self.augment(h, positions, visible)

    def teacher_forced_states(
        self, h: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> list[torch.Tensor]:
        """h_1..h_K [B, T, H] at every t, reading the data tokens x_{t+1}..x_{t+K} (token 0 past the end)."""
        state = self.augment_sequence(h, attention_mask)
        states = []
        for i in range(1, len(self.mlps) + 1):
            state = self.decoder(state, self.embed(_shift_left(input_ids, i)))
            states.append(state)
        return states

    def logits(self, h: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Every head's teacher-forced logits over the draft vocabulary [B, T, K, size]; head i at t is meant for x_{t+i+1}."""
        states = self.teacher_forced_states(h, input_ids, attention_mask)
        return torch.stack([self.head_logits(i, state) for i, state in enumerate(states, start=1)], dim=-2)

    def loss(self, batch: TrainBatch) -> HeadLoss:
        states = self.teacher_forced_states(batch.h, batch.input_ids, batch.attention_mask)
        scored = [scored_positions(batch, i) for i in range(1, len(states) + 1)]
        logits = [
            self.head_logits(i, state[where.rows, where.cols])
            for i, (state, where) in enumerate(zip(states, scored), start=1)
        ]
        return hard_label_loss(logits, scored, [1.0] * len(states), self.vocab)

    def drafter(self, tree: TreeShape | None = None) -> CloverDrafter:
        return static_drafter(CloverDrafter, self, fits_heads(self, tree or self.shape))

    def deepest_tree(self) -> int:
        return self.options["heads"]


def _shift_left(ids: torch.Tensor, steps: int) -> torch.Tensor:
    """ids[:, t + steps] at position t; 0 where that runs past the end."""
    shifted = torch.zeros_like(ids)
    shifted[:, : max(ids.shape[1] - steps, 0)] = ids[:, steps:]
    return shifted


class CloverDrafter:
    """The AB advances over kept tokens only; the tree's RNN states live per node, for this step only."""

    needs_states = True

    def __init__(self, head: CloverHead, shape: TreeShape) -> None:
        self.head, self.shape = head, shape
        self.cache: DynamicCache | None = None
        self.h0: torch.Tensor | None = None

    def prefill(self, prompt: torch.Tensor, states: TargetStates | None) -> None:
        self.cache = DynamicCache()
        self._advance(states.h)

    def accept(self, tokens: torch.Tensor, states: TargetStates | None) -> None:
        self._advance(states.h)

    @torch.inference_mode()
    def _advance(self, h: torch.Tensor) -> None:
        """Append the kept tokens' h [n, H] to the AB's cache; its output at the last one is the next h_0."""
        past, count = self.cache.get_seq_length(), h.shape[0]
        new = torch.ones(count, count, dtype=torch.bool, device=h.device).tril()
        visible = torch.cat([torch.ones(count, past, dtype=torch.bool, device=h.device), new], dim=1)
        positions = (past + torch.arange(count, device=h.device))[None]
        self.h0 = self.head.augment(h[None], positions, visible[None, None], self.cache)[0, -1]

    @torch.inference_mode()
    def draft(self, root: int, temperature: float, generator: torch.Generator | None) -> DraftTree:
        head, shape, device = self.head, self.shape, self.h0.device
        # states[n] = the AD state after reading node n's token; its children are head (depth(n) + 1)'s picks.
        states = self.h0.new_zeros(shape.size, head.hidden_size)
        states[0] = head.decoder(self.h0, head.embed(torch.tensor(root, device=device)))

        def level(nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            states[nodes] = head.decoder(states[shape.parents[nodes]], head.embed(tokens[nodes].to(device)))
            return head.vocab.spread(head.head_logits(int(shape.depths[nodes[0]]) + 1, states[nodes]))

        root_logits = head.vocab.spread(head.head_logits(1, states[0]))
        tokens, _, probs = grow_static_tree(shape, root, root_logits, level, temperature, generator)
        return DraftTree(tokens, shape, torch.zeros(shape.size), probs)
