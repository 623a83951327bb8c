"""EAGLE-1 (static tree) and EAGLE-2 (dynamic tree): one decoder layer that autoregresses on features.

METHODS.md §4. The head reads the pair (f_t, x_{t+1}), f_t the target's post-norm state h_t, mixes
it into g_t = W_fc [E_in(x_{t+1}) ; f_t] + b and runs one decoder layer over g_{<=t} with its own KV
cache; the output f̂_{t+1} predicts h_{t+1}, and the target's frozen LM head turns it into logits
for token t + 2. Drafting feeds (predicted feature of the parent, node token) pairs, one layer
forward per tree depth.

The layer starts from random weights, as in EAGLE (its input norm removed); W_fc from PyTorch's
default init. Option `layer_init: copy` starts it as a copy of the target's last decoder layer
instead, which measured far worse (README "Head initialisation").

EAGLE-2 at temperature > 0: its children are the drafter's top-k, deterministic given the drafted
context, and acceptance treats each as a point-mass proposal (`draft_probs` None), which is
lossless. Sampling the children from q and passing q would NOT be: EAGLE-2 then keeps or drops a
child by its own log-probability, so a kept child is no longer distributed as q.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from clover2.engine.drafter import Drafter, NoDrafter, TargetStates, grow_static_tree
from clover2.engine.tree import DraftTree, TreeShape, chosen_setting, grow_dynamic_tree, static_tree
from clover2.heads.losses import smooth_l1, soft_cross_entropy, topk_hits
from clover2.heads.protocol import (
    DraftHead,
    HeadLoss,
    TrainBatch,
    decoder_layer,
    register,
    run_layers,
    static_drafter,
)

# EAGLE's feature noise: (U(0,1) - 0.5) * NOISE_SCALE * NOISE_LENGTH / L for a sequence of L tokens.
NOISE_SCALE, NOISE_LENGTH = 0.2, 512


def _training_options(
    *, regression_weight: float = 1.0, ce_weight: float = 0.1, noise: bool = True, draft_vocab: int | None = None,
    layer_init: str = "random",
) -> dict:
    """EAGLE's and EAGLE-2's options besides the tree's, declared once: every one the head ran with lands in head.json."""
    return {"regression_weight": regression_weight, "ce_weight": ce_weight, "noise": noise, "draft_vocab": draft_vocab,
            "layer_init": layer_init}


@register
class EagleHead(DraftHead):
    """EAGLE-1's head: W_fc and one decoder layer without input norm; embedding and LM head are the target's."""

    method = "eagle"
    optimiser: ClassVar[dict] = {"lr": 3e-5, "betas": (0.9, 0.95), "warmup_steps": 2000, "schedule": "linear"}  # EAGLE-2's too
    shares_weights_with: ClassVar[frozenset[str]] = frozenset({"eagle", "eagle2"})

    def __init__(
        self, target: PreTrainedModel, *, tree: str = "eagle_mc_sim_7b_63", vocab_ids: torch.Tensor | None = None, **training
    ) -> None:
        """`training`: the options of `_training_options`."""
        super().__init__(target, vocab_ids, tree=tree, **_training_options(**training))
        self._build(target)

    def _build(self, target: PreTrainedModel) -> None:
        weight = target.get_output_embeddings().weight
        self.fc = nn.Linear(2 * self.hidden_size, self.hidden_size, bias=True, device=weight.device, dtype=weight.dtype)
        self.layer = _draft_layer(target, self.options["layer_init"])
        self.rotary = copy.deepcopy(target.get_decoder().rotary_emb)
        # Shared with the frozen target: a buffer (not a parameter) so it is neither trained nor saved.
        self.register_buffer("embed_weight", target.get_input_embeddings().weight.detach(), persistent=False)

    def predict(
        self,
        features: torch.Tensor,
        next_tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: DynamicCache | None = None,
    ) -> torch.Tensor:
        """f̂ for (feature, next token) pairs.

        features [B, q, H]; next_tokens and positions [B, q]; mask bool [B, 1, q, kv] over the cache and
        these pairs (True = attend), as the engine gives the target: it needs an attention implementation
        that takes boolean masks (SDPA, the tree kernel); eager attention would add it as a float.
        """
        g = self.fc(torch.cat([F.embedding(next_tokens, self.embed_weight), features], dim=-1))
        return run_layers([self.layer], self.rotary, g, positions, mask, cache)

    def logits(self, predicted: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits of f̂ (-inf outside a draft vocabulary)."""
        return self.vocab.spread(self.vocab.project(predicted))

    def loss(self, batch: TrainBatch) -> HeadLoss:
        """EAGLE's loss: SmoothL1 of f̂_{t+1} against h_{t+1} plus soft-CE against the target's logits at t + 1.

        A pair counts where token t + 2, the one those logits predict, is an assistant token. Inputs get
        EAGLE's feature noise while training (option `noise`); the regression target stays clean.
        """
        features = batch.h[:, :-1]
        if self.training and self.options["noise"]:
            features = features + _feature_noise(features, batch.attention_mask)
        pair_valid = batch.attention_mask[:, :-1] & batch.attention_mask[:, 1:]
        positions = torch.arange(features.shape[1], device=features.device).expand(features.shape[0], -1)
        predicted = self.predict(features, batch.input_ids[:, 1:], positions, _causal_mask(pair_valid))
        logits = self.vocab.project(predicted)
        # f̂_{t+1}'s logits predict token t + 2; the last pair has no such token in the batch.
        scored = F.pad(batch.loss_mask[:, 2:], (0, 1)) & pair_valid
        regression = smooth_l1(predicted, batch.h[:, 1:], scored)
        soft_ce = soft_cross_entropy(logits, self.vocab.restrict(batch.teacher_logits[:, 1:]), scored)
        top1, top5, counted = topk_hits(logits, batch.teacher_logits[:, 1:], scored, self.vocab.ids)
        total = self.options["regression_weight"] * regression + self.options["ce_weight"] * soft_ce
        return HeadLoss(total, {"regression": regression.item(), "soft_ce": soft_ce.item()}, [top1], [top5], [counted])

    def drafter(self, tree: TreeShape | None = None) -> FeatureDrafter:
        return static_drafter(EagleDrafter, self, tree or static_tree(self.options["tree"]))


@register
class Eagle2Head(EagleHead):
    """EAGLE-2: the same head and loss, drafting a dynamic tree."""

    method = "eagle2"
    drafting_options: ClassVar[frozenset[str]] = frozenset({"depth", "top_k", "total_tokens"})
    planned_options: ClassVar[frozenset[str]] = frozenset({"depth", "total_tokens"})
    dynamic_trees: ClassVar[bool] = True

    def __init__(
        self, target: PreTrainedModel, *, depth: int | str = 6, top_k: int = 10, total_tokens: int | str = 59,
        vocab_ids: torch.Tensor | None = None, **training,
    ) -> None:
        """The EAGLE-2 paper's total_token 60, depth 5, top_k 10 as its code counts them
        (tree.official_eagle2_settings); `depth` and `total_tokens` may name a file clover2 choose-tree
        wrote (tree.chosen_setting); total_tokens 0 decodes plainly. `training`: the options of
        `_training_options`."""
        tree = {"depth": depth, "top_k": top_k, "total_tokens": total_tokens}
        DraftHead.__init__(self, target, vocab_ids, **tree, **_training_options(**training))
        self.depth, self.total_tokens = chosen_setting(depth, "depth"), chosen_setting(total_tokens, "total_tokens")
        self._build(target)

    def drafter(self, tree: TreeShape | None = None) -> Drafter:
        """The dynamic tree; a static `tree` given drafts as EAGLE-1 does (the same weights)."""
        if tree is not None:
            return static_drafter(EagleDrafter, self, tree)
        return self.dynamic_drafter(self.depth, self.total_tokens)

    def dynamic_drafter(self, depth: int, total_tokens: int) -> Drafter:
        return Eagle2Drafter(self, depth, total_tokens) if total_tokens else NoDrafter()


def _draft_layer(target: PreTrainedModel, init: str) -> nn.Module:
    layer = decoder_layer(target, 0, init)
    layer.input_layernorm = nn.Identity()  # g is a learnt mix of embedding and feature; EAGLE does not normalise it
    return layer


def _feature_noise(features: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """EAGLE's uniform feature noise; L is each sequence's own (unpadded) length."""
    length = attention_mask.sum(dim=1).clamp(min=1).to(features.dtype).view(-1, 1, 1)
    return (torch.rand_like(features) - 0.5) * NOISE_SCALE * NOISE_LENGTH / length


def _causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] bool: causal over valid keys; each query also sees itself, so no padded row sees nothing."""
    length = valid.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
    diagonal = torch.eye(length, dtype=torch.bool, device=valid.device)
    return ((causal & valid[:, None, :]) | diagonal)[:, None]


class FeatureDrafter:
    """What both EAGLE drafters share: the layer's own cache, holding one (feature, next token) pair per kept token.

    A kept token's pair needs the token after it, so the last kept token waits for the next root;
    `features` and `next_tokens` hold the pairs not yet in the cache (one token fewer than features).
    """

    needs_states = True

    def __init__(self, head: EagleHead) -> None:
        self.head = head
        self.cache = DynamicCache()
        self.features = torch.empty(0, head.hidden_size)
        self.next_tokens = torch.empty(0, dtype=torch.long)

    def prefill(self, prompt: torch.Tensor, states: TargetStates | None) -> None:
        self.cache = DynamicCache()
        self.features, self.next_tokens = states.h, prompt[1:].cpu()

    def accept(self, tokens: torch.Tensor, states: TargetStates | None) -> None:
        self.features = torch.cat([self.features, states.h])
        self.next_tokens = torch.cat([self.next_tokens, tokens[1:].cpu()])

    def _advance(self, root: int) -> torch.Tensor:
        """Put the pending pairs, the last paired with `root`, into the cache and return the root's f̂.

        They stay there: kept tokens and the root (always kept) are final, so their pairs are too.
        """
        device = self.features.device
        cached = self.cache.get_seq_length()
        next_tokens = torch.cat([self.next_tokens, torch.tensor([root])]).to(device)
        count = next_tokens.numel()
        causal = torch.ones(count, count, dtype=torch.bool).tril()
        visible = torch.cat([torch.ones(count, cached, dtype=torch.bool), causal], 1)[None, None].to(device)
        positions = torch.arange(cached, cached + count, device=device)[None]
        predicted = self.head.predict(self.features[None], next_tokens[None], positions, visible, self.cache)
        self.features, self.next_tokens = self.features[:0], self.next_tokens[:0]
        return predicted[0, -1]

    def _tree_forward(
        self,
        parent_features: torch.Tensor,
        tokens: torch.Tensor,
        depths: torch.Tensor,
        visible: torch.Tensor,
        base: int,
    ) -> torch.Tensor:
        """One layer forward over tree nodes [q]: each sees the context (`base` entries) and tree entries `visible`."""
        device = parent_features.device
        mask = torch.cat([torch.ones(tokens.numel(), base, dtype=torch.bool), visible], 1)
        # The root's pair sits at position base - 1, so a node at depth d sits at base - 1 + d.
        positions = (base - 1 + depths).to(device)
        predicted = self.head.predict(
            parent_features[None], tokens[None].to(device), positions[None], mask[None, None].to(device), self.cache
        )
        return predicted[0]

    def _drop_tree(self, base: int) -> None:
        self.cache.crop(-(self.cache.get_seq_length() - base))  # crop(0) is a no-op in transformers 5.24


class EagleDrafter(FeatureDrafter):
    """Drafts EAGLE-1's static tree: children by rank from the parent's logits (sampled w/o replacement at T > 0)."""

    def __init__(self, head: EagleHead, shape: TreeShape) -> None:
        super().__init__(head)
        self.shape = shape

    @torch.inference_mode()
    def draft(self, root: int, temperature: float, generator: torch.Generator | None) -> DraftTree:
        shape = self.shape
        root_feature = self._advance(root)
        base = self.cache.get_seq_length()
        predicted = root_feature.new_zeros(shape.size, self.head.hidden_size)
        predicted[0] = root_feature

        def level(nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            # The cache holds depths 1 .. depth - 1 (nodes 1 .. nodes[0] - 1); these nodes go right after.
            visible = shape.mask[nodes, 1 : int(nodes[-1]) + 1]
            parent_features = predicted[shape.parents[nodes]]
            predicted[nodes] = self._tree_forward(parent_features, tokens[nodes], shape.depths[nodes], visible, base)
            return self.head.logits(predicted[nodes])

        root_logits = self.head.logits(root_feature)
        tokens, logits, probs = grow_static_tree(shape, root, root_logits, level, temperature, generator)
        self._drop_tree(base)
        return DraftTree(tokens, shape, _joint_logprobs(shape.parents, tokens, logits, temperature), probs)


def _joint_logprobs(
    parents: torch.Tensor, tokens: torch.Tensor, logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Each node's path-product log-probability under the drafter's distribution (root 0)."""
    logprobs = torch.log_softmax(logits.float() / (temperature or 1.0), dim=-1)
    step = logprobs[parents[1:], tokens[1:].to(logits.device)].cpu()
    joint = torch.zeros(tokens.numel())
    for node in range(1, tokens.numel()):  # parents come first in breadth-first order
        joint[node] = joint[parents[node]] + step[node - 1]
    return joint


class Eagle2Drafter(FeatureDrafter):
    """Drafts EAGLE-2's dynamic tree; children are the top-k at every temperature, so `generator` goes unused."""

    def __init__(self, head: EagleHead, depth: int, total_tokens: int) -> None:
        super().__init__(head)
        self.depth, self.total_tokens = depth, total_tokens

    @torch.inference_mode()
    def draft(self, root: int, temperature: float, generator: torch.Generator | None) -> DraftTree:
        top_k = self.head.options["top_k"]
        root_feature = self._advance(root)
        expansion = _Expansion(self, root_feature, self.cache.get_seq_length(), temperature, top_k)
        tree = grow_dynamic_tree(root, expansion, self.depth, top_k, self.total_tokens)
        self._drop_tree(expansion.base)
        return tree


class _Expansion:
    """EAGLE-2's `expand` callback: runs the frontier through the layer, one forward per level.

    Expanded nodes get cache slots after the context in expansion order; a frontier node attends to
    the context, the slots of its ancestors (all expanded earlier) and itself.
    """

    def __init__(
        self, drafter: FeatureDrafter, root_feature: torch.Tensor, base: int, temperature: float, top_k: int
    ) -> None:
        self.drafter, self.base, self.temperature, self.top_k = drafter, base, temperature, top_k
        self.predicted = {0: root_feature}  # expanded node -> its f̂
        self.slot: dict[int, int] = {}  # expanded node (not the root) -> its slot among the tree's cache entries
        self.sees = torch.zeros(0, 0, dtype=torch.bool)  # [slot, slot]: its ancestors' slots and its own

    def __call__(
        self, tokens: torch.Tensor, parents: torch.Tensor, frontier: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        nodes = frontier.tolist()
        if nodes != [0]:
            self._forward(tokens, parents, nodes)
        logits = self.drafter.head.logits(torch.stack([self.predicted[node] for node in nodes]))
        # At T > 0 rank by q_T: a point-mass proposal x is accepted with probability p_T(x), which q_T estimates.
        logprobs = torch.log_softmax(logits.float() / (self.temperature or 1.0), dim=-1)
        best = logprobs.topk(self.top_k, dim=-1)
        return best.indices.cpu(), best.values.cpu()

    def _forward(self, tokens: torch.Tensor, parents: torch.Tensor, nodes: list[int]) -> None:
        used, count = self.sees.shape[0], len(nodes)
        parent_of = parents[nodes].tolist()
        sees = torch.zeros(count, used + count, dtype=torch.bool)
        for row, parent in enumerate(parent_of):
            if parent in self.slot:
                sees[row, :used] = self.sees[self.slot[parent]]
        sees[torch.arange(count), used + torch.arange(count)] = True
        depths = sees.sum(dim=1)  # ancestors below the root, plus the node itself
        parent_features = torch.stack([self.predicted[parent] for parent in parent_of])
        predicted = self.drafter._tree_forward(parent_features, tokens[nodes], depths, sees, self.base)
        self.sees = torch.cat([F.pad(self.sees, (0, count)), sees])
        for row, node in enumerate(nodes):
            self.slot[node] = used + row
            self.predicted[node] = predicted[row]
