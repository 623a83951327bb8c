"""The registry of decoding methods: name -> a factory that, given the target, decodes one turn.

Every method has the signature of `clover2.engine.decoding.generate` once built and returns a
`TurnRecord`, so the benchmark runner, the losslessness checker and the metrics never need to know
which method produced a record. A speculative method is the engine plus a drafter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache, partial
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from baselines.hf_generate import PROMPT_LOOKUP_TOKENS, hf_generate
from baselines.prompt_lookup import PromptLookupDrafter
from clover2.engine.decoding import DecodeConfig, TurnRecord, generate
from clover2.engine.drafter import Drafter
from clover2.engine.self_draft import SelfDrafter
from clover2.engine.tree import TreeShape, static_tree
from clover2.errors import Clover2Error
from clover2.heads.directory import load_head
from clover2.heads.draft_vocab import frequent_tokens
from clover2.heads.protocol import head_class, head_methods

DecodeTurn = Callable[[PreTrainedModel, Sequence[int], DecodeConfig, Sequence[int], torch.Generator | None], TurnRecord]
MethodFactory = Callable[[PreTrainedModel], DecodeTurn]

SELF_CHAIN_DEPTH = 5  # as deep as the 25-node tree
PROMPT_LOOKUP_BRANCHES = 4


def speculative(make_drafter: Callable[[PreTrainedModel], Drafter]) -> MethodFactory:
    """A method that runs the engine with a drafter built for the target."""
    return lambda model: partial(generate, drafter=make_drafter(model))


METHODS: dict[str, MethodFactory] = {
    "vanilla": lambda model: generate,
    "hf-generate": lambda model: hf_generate,
    "hf-prompt-lookup": lambda model: partial(hf_generate, prompt_lookup_tokens=PROMPT_LOOKUP_TOKENS),
    "prompt-lookup": speculative(lambda model: PromptLookupDrafter(length=PROMPT_LOOKUP_TOKENS)),
    "prompt-lookup-tree": speculative(
        lambda model: PromptLookupDrafter(length=PROMPT_LOOKUP_TOKENS, branches=PROMPT_LOOKUP_BRANCHES)
    ),
    "self": speculative(lambda model: SelfDrafter(model, TreeShape.chain(SELF_CHAIN_DEPTH))),
    "self-tree": speculative(lambda model: SelfDrafter(model, static_tree("eagle_mc_sim_7b_63"))),
}


def _trained(method: str, head_dir: Path, drafting: dict) -> MethodFactory:
    """A method that drafts with a trained head, loaded for (and checked against) the target."""

    def make(model: PreTrainedModel) -> DecodeTurn:
        head = load_head(head_dir, model, method, drafting)
        return partial(generate, drafter=head.eval().to(model.device, model.dtype).drafter())

    return make


def _untrained(method: str) -> MethodFactory:
    """A method that drafts with a freshly built (seeded, untrained) head: what a step costs, not what it accepts."""

    def make(model: PreTrainedModel) -> DecodeTurn:
        torch.manual_seed(0)
        head = head_class(method)(model)
        return partial(generate, drafter=head.eval().to(model.device, model.dtype).drafter())

    return make


def method_factory(
    name: str, head_dir: Path | None = None, drafting: dict | None = None, *, untrained: bool = False
) -> MethodFactory:
    """The factory of a registered method, or of a trained head's method when `name` is a head method.

    `drafting` overrides a trained head's drafting options (its tree), e.g. {"total_tokens": 30};
    `untrained` builds a head method's head fresh instead of loading one (the cost model's).
    """
    if name in METHODS:
        if drafting:
            raise Clover2Error(f"method {name!r} has no trained head whose drafting options could change")
        return METHODS[name]
    if name in head_methods():
        if untrained:
            return _untrained(name)
        if head_dir is None:
            raise Clover2Error(f"method {name!r} drafts with a trained head: pass --head DIR")
        return _trained(name, head_dir, drafting or {})
    known = ", ".join([*METHODS, *head_methods()])
    raise Clover2Error(f"unknown method {name!r}; known: {known}")


def check_head_options(method: str, options: dict, vocab_size: int | None = None) -> None:
    """Fail as `method`'s training or decoding job would on `options`, without the target: build the head
    for a tiny stand-in target and draft one step with it, so its constructor's and its drafter's own
    checks run (option names and values, trees, dynamic-tree settings). `vocab_size`: the real target's
    where it is known, so that a draft vocabulary larger than it fails too."""
    size = options.get("draft_vocab")
    stand_in = _stand_in_target(vocab_size or max(512, size if isinstance(size, int) else 0))
    with torch.random.fork_rng():  # the caller's random state stays as it was
        try:
            ids = None if size is None else frequent_tokens([], size, stand_in.config.vocab_size, [])
            head = head_class(method)(stand_in, vocab_ids=ids, **options)
            generate(stand_in, [1, 2, 3], DecodeConfig(max_new_tokens=2), [], drafter=head.drafter())
        except (TypeError, ValueError) as error:
            raise Clover2Error(f"{method} head: {error}") from None


@cache
def _stand_in_target(vocab_size: int) -> PreTrainedModel:
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return LlamaForCausalLM(config).eval()
