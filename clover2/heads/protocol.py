"""Trainable draft heads: the batch they learn from, the protocol they follow, and their registry.

A head is built from the target it drafts for (`HeadClass(target, **options)` copies what it
initialises from the target and keeps references to the frozen pieces it shares, such as the LM
head); only its trainable weights are saved (`clover2.heads.directory`).
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from clover2.engine.drafter import Drafter, NoDrafter
from clover2.engine.tree import TreeShape
from clover2.errors import Clover2Error
from clover2.heads.draft_vocab import draft_vocab


@dataclass
class TrainBatch:
    """Sequences and what the frozen target says about them (teacher signals for distillation)."""

    input_ids: torch.Tensor  # long [B, T]
    loss_mask: torch.Tensor  # bool [B, T]: token t is an assistant token, i.e. one worth predicting
    attention_mask: torch.Tensor  # bool [B, T]: False on padding
    u: torch.Tensor  # [B, T, H] the target's last-layer states before the final norm
    h: torch.Tensor  # [B, T, H] after the final norm (what the LM head sees)
    teacher_logits: torch.Tensor  # [B, T, V] the target's logits for token t + 1


@dataclass
class HeadLoss:
    """A training loss and what to log about it; accuracies are counts so they add up over batches."""

    total: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)
    top1: list[int] = field(default_factory=list)  # per head: predictions whose top-1 is the teacher's top-1
    top5: list[int] = field(default_factory=list)  # per head: teacher's top-1 within the head's top-5
    counted: list[int] = field(default_factory=list)  # per head: positions scored


class DraftHead(nn.Module):
    """The protocol every trainable head follows; subclasses register under their method name."""

    method: ClassVar[str]
    # The paper's AdamW settings for this head (METHODS.md §1-§4): lr, betas, warmup_steps, schedule.
    optimiser: ClassVar[dict]
    # Other methods whose trained weights this head drafts with as they are (EAGLE-2 uses EAGLE's).
    shares_weights_with: ClassVar[frozenset[str]] = frozenset()
    # Options that only shape the tree drafted, so a trained head can decode with other values (a sweep).
    drafting_options: ClassVar[frozenset[str]] = frozenset({"tree"})
    # The drafting options `auto` sets to what `clover2 choose-tree` chose for this machine, all together:
    # a static tree's `tree`, or a dynamic tree's size (dynamic_drafter).
    planned_options: ClassVar[frozenset[str]] = frozenset({"tree"})
    # Whether the head drafts a dynamic tree (dynamic_drafter), whose acceptance is measured per tree size.
    dynamic_trees: ClassVar[bool] = False

    @classmethod
    def options_from(cls, method: str, options: dict) -> dict:
        """The options of another method's head.json that this head keeps when it loads those weights:
        all but that method's drafting options (each method drafts its own tree)."""
        return {key: value for key, value in options.items() if key not in head_class(method).drafting_options}

    def __init__(self, target: PreTrainedModel, vocab_ids: torch.Tensor | None = None, **options) -> None:
        """`vocab_ids`: the draft vocabulary's token ids when the option `draft_vocab` sets its size (draft_vocab.py)."""
        super().__init__()
        self.options = options
        self.recorded: dict = {}  # facts about how the head was built, saved beside the options
        self.hidden_size = target.config.hidden_size
        self.vocab_size = target.config.vocab_size
        self.vocab = draft_vocab(target, options.get("draft_vocab"), vocab_ids)

    def loss(self, batch: TrainBatch) -> HeadLoss:
        raise NotImplementedError

    def forward(self, batch: TrainBatch) -> HeadLoss:
        # Training calls the module itself, so wrappers such as DDP see the forward and sync gradients.
        return self.loss(batch)

    def drafter(self, tree: TreeShape | None = None) -> Drafter:
        """A drafter that proposes trees with this head: its options' tree, or the static `tree` given
        (the acceptance probe and the tree optimiser draft trees the options do not name)."""
        raise NotImplementedError

    def dynamic_drafter(self, depth: int, total_tokens: int) -> Drafter:
        """A drafter of this head's dynamic tree with `depth` levels and `total_tokens` kept nodes (0:
        plain decoding), whatever its options say; only for a head with `dynamic_trees`."""
        raise NotImplementedError(f"{self.method} heads draft static trees")

    def deepest_tree(self) -> int | None:
        """The deepest static tree this head can draft (one level per head for head sets); None: any."""
        return None


def static_drafter(drafter: Callable[[DraftHead, TreeShape], Drafter], head: DraftHead, shape: TreeShape) -> Drafter:
    """`drafter(head, shape)`, or plain decoding's for a tree of the root alone (a tree chosen as "no
    drafting"): the head then costs nothing per step instead of drafting a tree no one verifies."""
    return drafter(head, shape) if shape.size > 1 else NoDrafter()


LAYER_INITS = ("random", "copy", "copy_first")


def decoder_layer(target: PreTrainedModel, slot: int, init: str = "random") -> nn.Module:
    """A trainable decoder layer of the target's architecture, as layer `slot` of the head's own KV cache.

    `random` (EAGLE's choice, every head's default): fresh weights drawn as the target's family
    initialises them (normal(0, initializer_range), unit norms). `copy`: the target's last decoder
    layer. `copy_first`: its first, which the official Clover-2 code loads (it indexes the target's
    layers by the one-layer draft config's layer count; its comment says the last was meant).
    Measured (`benchmarks/overfit.py`, README "Head initialisation"): an EAGLE head started from the
    last layer's copy cannot even overfit a dozen conversations, its loss stuck far above a uniform
    guess, while from random weights it does.
    Heads pass the layer boolean masks, which SDPA reads as "may attend" and eager attention would add.
    """
    layers = target.get_decoder().layers
    last = layers[-1]
    if init in ("copy", "copy_first"):
        layer = copy.deepcopy(last if init == "copy" else layers[0])
    elif init == "random":
        config = copy.deepcopy(target.config)  # the layer keeps a reference; the target's must not change
        weight = next(last.parameters())
        layer = type(last)(config, slot).to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            for module in layer.modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, config.initializer_range)
                    if module.bias is not None:
                        module.bias.zero_()
    else:
        raise Clover2Error(f"layer_init: expected one of {', '.join(LAYER_INITS)}, got {init!r}")
    layer.requires_grad_(True)  # even if the target is frozen
    layer.self_attn.layer_idx = slot
    layer.self_attn.config._attn_implementation = "sdpa"
    return layer


def run_layers(
    layers: list[nn.Module],
    rotary: nn.Module,
    x: torch.Tensor,
    positions: torch.Tensor,
    visible: torch.Tensor,
    cache: DynamicCache | None,
) -> torch.Tensor:
    """x [B, n, H] through decoder layers at `positions`, attending as the bool mask `visible` [B, 1, n, kv] allows."""
    rope = rotary(x, positions)
    for layer in layers:
        x = layer(x, attention_mask=visible, position_ids=positions, cache=cache, use_cache=cache is not None,
                  position_embeddings=rope)
    return x


HEADS: dict[str, type[DraftHead]] = {}
# One module per head; each registers its classes when imported (adding a method = adding a file here).
HEAD_MODULES = ("clover2.heads.clover2", "baselines.clover", "baselines.eagle", "baselines.medusa")


OPTIMISER_SETTINGS = frozenset({"lr", "betas", "warmup_steps", "schedule"})


def register(cls: type[DraftHead]) -> type[DraftHead]:
    """Add a head class under its method name; it must declare its optimiser settings itself (or inherit
    them from the head it extends), since training has no method's values to fall back on."""
    declared = set(getattr(cls, "optimiser", {}))
    if declared != OPTIMISER_SETTINGS:
        raise TypeError(f"{cls.__name__}: optimiser must set {', '.join(sorted(OPTIMISER_SETTINGS))}; it sets {sorted(declared)}")
    HEADS[cls.method] = cls
    return cls


def head_methods() -> list[str]:
    for module in HEAD_MODULES:
        importlib.import_module(module)
    return sorted(HEADS)


def head_class(method: str) -> type[DraftHead]:
    if method not in head_methods():
        raise Clover2Error(f"unknown head method {method!r}; known: {', '.join(sorted(HEADS))}")
    return HEADS[method]


def trainable_state(head: DraftHead) -> dict[str, torch.Tensor]:
    """What a head directory stores: the trainable weights and the persistent buffers (a draft vocabulary's ids)."""
    frozen = {name for name, p in head.named_parameters() if not p.requires_grad}
    return {name: t.detach().contiguous() for name, t in head.state_dict().items() if name not in frozen}
