"""Shared fixtures: no hub access, the data mirror, a tiny random Llama, and the real SmolLM2 target."""

import os
from pathlib import Path

# Set before transformers is imported anywhere: an accidental hub call would otherwise stall ~24 s.
os.environ["HF_HUB_OFFLINE"] = "1"
_ROOT = Path(__file__).resolve().parents[1]
_MIRROR = _ROOT.parent / "shared" / "data"
if "CLOVER2_DATA_MIRROR" not in os.environ and _MIRROR.is_dir():
    os.environ["CLOVER2_DATA_MIRROR"] = str(_MIRROR)

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402


def cache_root() -> Path:
    """Where prepared targets persist between test runs (prepare once per machine)."""
    return Path(os.environ.get("CLOVER2_CACHE", Path.home() / ".cache" / "clover2"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from clover2.targets import prepare_target

    return prepare_target("smollm2-135m-instruct", cache_root() / "targets" / "smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()

