"""The Clover-2 draft head (METHODS.md §3) and its drafter.

Per decoding step: fuse each newly kept token into the target's pre-norm state (AD1), run the
2-layer Augmenting Block once over those positions (own KV cache), project with FC0 for head 0,
then unroll the weight-tied AD2 + FC2 cell down the tree, one node state per drafted token.
Token embeddings are the frozen, un-normalised rows of the target's LM head, which also gives
the logits.

Each of the paper's four changes over Clover is an option whose default is the paper's choice, so
an ablation variant is this head with other options (README "Ablations"): `extraction_order`,
`output_projector`, `augmenting_layers` and `distillation`.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from clover2.engine.drafter import TargetStates, grow_static_tree
from clover2.engine.tree import DraftTree, TreeShape, static_tree
from clover2.errors import Clover2Error
from clover2.heads.blocks import ResBlock, check_heads
from clover2.heads.losses import cross_entropy, smooth_l1, soft_cross_entropy, topk_hits
from clover2.heads.protocol import (
    DraftHead,
    HeadLoss,
    TrainBatch,
    decoder_layer,
    register,
    run_layers,
    static_drafter,
)


def _near_identity(rows: int, columns: int) -> torch.Tensor:
    """U[0, 0.01) noise plus an identity on the first `rows` columns (METHODS.md §3 initialisations)."""
    weight = torch.rand(rows, columns) * 0.01
    weight[:, :rows] += torch.eye(rows)
    return weight


class AttentionDecoder(nn.Module):
    """AD(x, y) = x + concat_j(cosine(q_j, k_j) * v_j): one key per row, so no softmax and no output projection."""

    def __init__(self, hidden: int, heads: int, norm: nn.Module) -> None:
        super().__init__()
        self.heads = heads
        self.norm = norm
        self.q, self.k, self.v = (nn.Linear(hidden, hidden) for _ in range(3))
        with torch.no_grad():
            self.q.weight.copy_(_near_identity(hidden, hidden))
            self.k.weight.copy_(_near_identity(hidden, hidden))
            self.v.weight.copy_(torch.rand(hidden, hidden) * 0.01)
            for layer in (self.q, self.k, self.v):
                layer.bias.zero_()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        split = lambda t: t.unflatten(-1, (self.heads, -1))  # noqa: E731
        q, k, v = split(self.q(self.norm(x))), split(self.k(y)), split(self.v(y))
        alpha = F.cosine_similarity(q, k, dim=-1).unsqueeze(-1)
        return x + (alpha * v).flatten(-2)


def _shifted(x: torch.Tensor, offset: int, length: int) -> torch.Tensor:
    """x[:, offset : offset + length] padded with zeros (False) at the end to `length` positions."""
    part = x[:, offset : offset + length]
    missing = length - part.shape[1]
    if missing <= 0:
        return part
    pad = part.new_zeros((part.shape[0], missing, *part.shape[2:]))
    return torch.cat([part, pad], dim=1)


# The paper's four changes over Clover, each an option whose first value is the paper's (README "Ablations").
ABLATION_CHOICES = {
    "extraction_order": ("token_first", "state_first"),  # fuse the token before the Augmenting Block, or after it
    "output_projector": ("ad", "mlp"),  # the Attention Decoder output projector, or per-head ResBlock MLPs
    "distillation": ("kd", "kd_no_regression", "hard_ce"),  # soft CE + hidden-state regression; soft CE; data tokens
}


# The paper's value of every ablation option (a head.json written before the options existed used these).
PAPER_CHOICES = {option: values[0] for option, values in ABLATION_CHOICES.items()} | {"augmenting_layers": 2}

# Where the official code (XiaoBin1992/clover, branch v1) trains otherwise than ours, each choice ours first
# (README "Clover-2 against the official code"): which token's loss mask scores head i at position t, the
# predicted one (t + i + 2, as our EAGLE loss) or the state-side one (t + i, official); and the Augmenting
# Block's RoPE base, the target's or a number (the official code's is always 10000).
LOSS_MASKS = ("predicted", "state")
OFFICIAL_ROPE_BASE = 10000.0


def _check_options(heads: int, augmenting_layers: int, choices: dict[str, str], loss_mask: str, ab_rope_base) -> None:
    for option, value in choices.items():
        if value not in ABLATION_CHOICES[option]:
            raise Clover2Error(f"clover2 option {option}: expected one of {', '.join(ABLATION_CHOICES[option])}, got {value!r}")
    if not isinstance(augmenting_layers, int) or augmenting_layers < 0:
        raise Clover2Error(f"clover2 option augmenting_layers: expected an integer >= 0, got {augmenting_layers!r}")
    if loss_mask not in LOSS_MASKS:
        raise Clover2Error(f"clover2 option loss_mask: expected one of {', '.join(LOSS_MASKS)}, got {loss_mask!r}")
    if ab_rope_base != "target" and (isinstance(ab_rope_base, bool) or not isinstance(ab_rope_base, int | float) or ab_rope_base <= 0):
        raise Clover2Error(f"clover2 option ab_rope_base: expected 'target' or a positive number (the official code's: "
                           f"{OFFICIAL_ROPE_BASE:g}), got {ab_rope_base!r}")
    check_heads("clover2", heads)


def _rotary(target: PreTrainedModel, base) -> nn.Module:
    """The target's rotary embedding, or one of its kind with another RoPE base."""
    rotary = target.get_decoder().rotary_emb
    if base == "target":
        return copy.deepcopy(rotary)
    config = copy.deepcopy(target.config)
    config.rope_parameters = {**config.rope_parameters, "rope_theta": float(base)}
    return type(rotary)(config=config).to(rotary.inv_freq.device)


def scored_positions(loss_mask: torch.Tensor, attention_mask: torch.Tensor, head: int, length: int, which: str) -> torch.Tensor:
    """Where head `head` at position t is scored (its prediction is token t + head + 2, which must exist):
    where that predicted token is an assistant token (`predicted`), or where the state-side token t + head
    is (`state`, the official code's mask)."""
    offset = head + 2 if which == "predicted" else head
    return _shifted(loss_mask, offset, length) & _shifted(attention_mask, head + 2, length)


@register
class Clover2Head(DraftHead):
    method = "clover2"
    optimiser: ClassVar[dict] = {"lr": 1e-3, "betas": (0.9, 0.95), "warmup_steps": 8000, "schedule": "linear"}

    def __init__(
        self,
        target: PreTrainedModel,
        heads: int = 5,
        tree: str = "eagle_mc_sim_7b_63",
        regression_weight: float = 10.0,
        ce_weight: float = 1.0,
        decay: float = 0.7,
        draft_vocab: int | None = None,
        layer_init: str = "random",
        extraction_order: str = "token_first",
        output_projector: str = "ad",
        augmenting_layers: int = 2,
        distillation: str = "kd",
        loss_mask: str = "predicted",
        ab_rope_base: str | float = "target",
        vocab_ids: torch.Tensor | None = None,
    ) -> None:
        choices = {"extraction_order": extraction_order, "output_projector": output_projector, "distillation": distillation}
        _check_options(heads, augmenting_layers, choices, loss_mask, ab_rope_base)
        decoder = target.get_decoder()
        super().__init__(
            target, vocab_ids, heads=heads, tree=tree, regression_weight=regression_weight, ce_weight=ce_weight,
            decay=decay, draft_vocab=draft_vocab, layer_init=layer_init, augmenting_layers=augmenting_layers, **choices,
            loss_mask=loss_mask, ab_rope_base=ab_rope_base,
        )
        self.rotary = _rotary(target, ab_rope_base)
        self.recorded["rope_theta"] = self.rotary.config.rope_parameters.get("rope_theta")
        hidden, n_heads = target.config.hidden_size, target.config.num_attention_heads
        norm_type = type(decoder.norm)
        self.register_buffer("lm_weight", target.get_output_embeddings().weight.detach(), persistent=False)
        self.ad1 = AttentionDecoder(hidden, n_heads, norm_type(hidden, eps=target.config.rms_norm_eps))
        self.ad2 = AttentionDecoder(hidden, n_heads, norm_type(hidden, eps=target.config.rms_norm_eps))
        self.blocks = nn.ModuleList(decoder_layer(target, slot, layer_init) for slot in range(augmenting_layers))
        self.norm_c = copy.deepcopy(decoder.norm)
        self.norm_h = copy.deepcopy(decoder.norm)
        if output_projector == "ad":
            self.fc0 = nn.Linear(hidden, hidden)
            self.fc2 = nn.Linear(2 * hidden, hidden)
            with torch.no_grad():
                self.fc0.weight.copy_(_near_identity(hidden, hidden))
                self.fc2.weight.copy_(_near_identity(hidden, 2 * hidden))
                self.fc0.bias.zero_()
                self.fc2.bias.zero_()
        else:  # Clover's per-head MLPs, one per drafted depth, identity at init
            self.mlps = nn.ModuleList(ResBlock(hidden) for _ in range(heads))
        for param in self.parameters():
            param.requires_grad_(True)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.lm_weight)

    def logits(self, projected: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits of projected outputs (-inf outside a draft vocabulary)."""
        return self.vocab.spread(self.vocab.project(projected))

    def first_state(
        self, u: torch.Tensor, next_embedding: torch.Tensor, start: int, visible: torch.Tensor, cache: DynamicCache | None
    ) -> torch.Tensor:
        """s0 for states u [B, L, H] at positions start.. and the embeddings of the tokens after them,
        attending as `visible` [B, 1, L, kv] allows. Token first (Clover-2): RMSNorm_c(AB(AD1(u, E)));
        state first (Clover's order): AD1(RMSNorm_c(AB(u)), E)."""
        positions = torch.arange(start, start + u.shape[1], device=u.device).expand(u.shape[0], -1)
        if self.options["extraction_order"] == "token_first":
            return self.norm_c(run_layers(self.blocks, self.rotary, self.ad1(u, next_embedding), positions, visible, cache))
        return self.ad1(self.norm_c(run_layers(self.blocks, self.rotary, u, positions, visible, cache)), next_embedding)

    def project(self, s: torch.Tensor, depth: int, token_embedding: torch.Tensor | None) -> torch.Tensor:
        """Head `depth`'s output o from its state s (and, for depth >= 1, the embedding of the token drafted before)."""
        if self.options["output_projector"] == "mlp":
            return self.norm_h(self.mlps[depth](s))
        if depth == 0:
            return self.norm_h(self.fc0(s))
        return self.norm_h(self.fc2(torch.cat([s, token_embedding], dim=-1)))

    def step(self, s: torch.Tensor, token_embedding: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Heads >= 1: the next RNN state and its projected output, given the token drafted before."""
        s = self.ad2(s, token_embedding)
        return s, self.project(s, depth, token_embedding)

    def loss(self, batch: TrainBatch) -> HeadLoss:
        """Distillation (METHODS.md §3): head i at t learns h_{t+i+1} and p_{t+i+1}, weighted decay^i.

        `distillation`: kd (regression + soft CE), kd_no_regression (soft CE alone) or hard_ce (CE on
        the data token x_{t+i+2}, as Clover trains; a token outside a draft vocabulary is not scored)."""
        ids, length = batch.input_ids, batch.input_ids.shape[1] - 1
        causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()
        itself = torch.eye(length, dtype=torch.bool, device=ids.device)
        # Every position sees itself, so a padded row never attends to nothing (which would be NaN).
        visible = causal & (batch.attention_mask[:, None, None, :length] | itself)
        s = self.first_state(batch.u[:, :length], self.embed(ids[:, 1:]), 0, visible, None)
        output = self.project(s, 0, None)
        result, parts = HeadLoss(total=s.new_zeros(())), {}
        for i in range(self.options["heads"]):
            if i > 0:
                s, output = self.step(s, self.embed(_shifted(ids, i + 1, length)), i)
            mask = scored_positions(batch.loss_mask, batch.attention_mask, i, length, self.options["loss_mask"])
            predicted = output[mask]
            logits = self.vocab.project(predicted)
            teacher = _shifted(batch.teacher_logits, i + 1, length)[mask]
            h_next, next_ids = _shifted(batch.h, i + 1, length)[mask], _shifted(ids, i + 2, length)[mask]
            loss, terms = self._head_loss(predicted, logits, teacher, h_next, next_ids)
            result.total = result.total + self.options["decay"] ** i * loss
            for name, value in terms.items():
                parts[name] = parts.get(name, 0.0) + float(value.detach())
            hit1, hit5, counted = topk_hits(logits, teacher, ids=self.vocab.ids)
            result.top1.append(hit1)
            result.top5.append(hit5)
            result.counted.append(counted)
        result.parts = parts
        return result

    def _head_loss(
        self, predicted: torch.Tensor, logits: torch.Tensor, teacher: torch.Tensor, h_next: torch.Tensor, next_ids: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One head's loss under the `distillation` option, and its terms to log (the regression always,
        trained or not, so every variant's log shows how close its outputs come to the target's states)."""
        terms = {"regression": smooth_l1(predicted, h_next)}
        if self.options["distillation"] == "hard_ce":
            labels, inside = self.vocab.local(next_ids)
            terms["hard_ce"] = cross_entropy(logits, labels, inside)
            return terms["hard_ce"], terms
        terms["soft_ce"] = soft_cross_entropy(logits, self.vocab.restrict(teacher))
        loss = self.options["ce_weight"] * terms["soft_ce"]
        if self.options["distillation"] == "kd":
            loss = loss + self.options["regression_weight"] * terms["regression"]
        return loss, terms

    def drafter(self, tree: TreeShape | None = None) -> Clover2Drafter:
        return static_drafter(Clover2Drafter, self, tree or static_tree(self.options["tree"]))

    def deepest_tree(self) -> int | None:
        """Per-head MLPs draft one level each; the weight-tied AD projector unrolls as deep as asked."""
        return self.options["heads"] if self.options["output_projector"] == "mlp" else None


class Clover2Drafter:
    """Drafts a static tree with a Clover-2 head; the Augmenting Block's cache holds kept tokens only."""

    needs_states = True

    def __init__(self, head: Clover2Head, shape: TreeShape) -> None:
        self.head, self.shape = head, shape
        if head.deepest_tree() is not None and shape.max_depth > head.deepest_tree():
            raise Clover2Error(f"clover2: a tree {shape.max_depth} deep, but per-head MLPs "
                               f"draft only {head.options['heads']} levels (option heads)")
        self.cache = DynamicCache()
        self.pending_u = torch.empty(0)
        self.pending_next: torch.Tensor = torch.empty(0, dtype=torch.long)

    def prefill(self, prompt: torch.Tensor, states: TargetStates | None) -> None:
        self.cache = DynamicCache()
        self.accept(prompt, states)

    def accept(self, tokens: torch.Tensor, states: TargetStates | None) -> None:
        # Each kept state u_t pairs with the token after it; the last one waits for the next root.
        self.pending_u = states.u
        self.pending_next = tokens[1:].to(states.u.device)

    @torch.inference_mode()
    def draft(self, root: int, temperature: float, generator: torch.Generator | None) -> DraftTree:
        head, shape = self.head, self.shape
        device = self.pending_u.device
        nexts = torch.cat([self.pending_next, torch.tensor([root], device=device)])
        done, new = self.cache.get_seq_length(), nexts.numel()
        visible = torch.cat(
            [torch.ones(new, done, dtype=torch.bool), torch.ones(new, new, dtype=torch.bool).tril()], dim=1
        ).to(device)
        first = head.first_state(self.pending_u[None], head.embed(nexts)[None], done, visible[None, None], self.cache)
        states = first.new_zeros(shape.size, first.shape[-1])  # the RNN state s of every node
        states[0] = first[0, -1]

        def level(nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            parents = shape.parents[nodes].to(device)
            depth = int(shape.depths[nodes[0]])  # a static tree's level: one depth
            states[nodes], output = head.step(states[parents], head.embed(tokens[nodes].to(device)), depth)
            return head.logits(output)

        root_logits = head.logits(head.project(states[0], 0, None))
        tokens, _, probs = grow_static_tree(shape, root, root_logits, level, temperature, generator)
        return DraftTree(tokens, shape, torch.zeros(shape.size), probs)
