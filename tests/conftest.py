"""Shared fixtures: no hub access, the data mirror, a tiny random Llama, and the real SmolLM2 target."""

import os
import shutil
from pathlib import Path

# Set before transformers is imported anywhere: an accidental hub call would otherwise stall ~24 s.
os.environ["HF_HUB_OFFLINE"] = "1"
_ROOT = Path(__file__).resolve().parents[1]
_MIRROR = _ROOT.parent / "shared" / "data"
if "CLOVER2_DATA_MIRROR" not in os.environ and _MIRROR.is_dir():
    os.environ["CLOVER2_DATA_MIRROR"] = str(_MIRROR)
from clover2.sources import anchor_mirror  # noqa: E402

anchor_mirror(Path.cwd())  # the README's relative mirror, before any test runs elsewhere

import pytest  # noqa: E402
import torch  # noqa: E402

# Without CUDA the Triton kernels run under Triton's interpreter; it must be chosen before Triton loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
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



@pytest.fixture(scope="session")
def peaked_llama(tiny_llama) -> LlamaForCausalLM:
    """The tiny Llama with a sharpened LM head: its favourite token gets roughly 0.2 to 0.9 of the mass."""
    model = LlamaForCausalLM(tiny_llama.config).eval()
    model.load_state_dict(tiny_llama.state_dict())
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    return model


@pytest.fixture(scope="module")
def one_thread():
    # Matmuls this small cost more to split across threads than to run, and far more on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke workflow run once on this machine (--cores 2; minutes), for every test that reads or compares it."""
    from workflow_runs import SMOKE, config, timed_snakemake

    workdir = tmp_path_factory.mktemp("smoke")
    run = timed_snakemake("--cores", "2", "--configfile", str(SMOKE), workdir=workdir, timeout=3000)
    assert run.result.returncode == 0, run.result.stderr[-3000:]
    yield run
    shutil.rmtree(workdir / "results" / config("smoke")["target"]["name"] / "target", ignore_errors=True)  # 500 MB of weights
