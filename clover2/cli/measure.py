"""`clover2` verbs that time the engine's parts: kernels-bench and step-cost."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from clover2.cli import common
from clover2.errors import Clover2Error


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    for add in (_add_kernels_bench, _add_step_cost):
        add(verbs)


def _add_kernels_bench(verbs: argparse._SubParsersAction) -> None:
    kernels = verbs.add_parser("kernels-bench", help="time the tree-attention kernel against SDPA and eager (GPU)")
    kernels.add_argument("--target", type=Path, help="also time the whole verification step on this target")
    kernels.add_argument("--device", default="cuda")
    kernels.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float16")
    kernels.add_argument("--shapes", nargs="+", default=["smollm2", "7b"], help="smollm2 (9/3 heads, dim 64), 7b (32/32, 128)")
    kernels.add_argument("--tree-sizes", nargs="+", type=int, default=[26, 60])
    kernels.add_argument("--prefixes", nargs="+", type=int, default=[256, 512, 1024, 2048])
    kernels.add_argument("--repeats", type=int, default=50)
    kernels.add_argument("--out", type=Path, help="write the rows and provenance (JSON) here")
    kernels.set_defaults(func=_kernels_bench)


def _kernels_bench(args: argparse.Namespace) -> None:
    import pandas as pd
    import torch

    from clover2.atomic import atomic_write_text
    from clover2.provenance import provenance
    from clover2.targets import DTYPES, load_target

    device = torch.device(args.device)
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise Clover2Error(f"kernels-bench --device {args.device}: the Triton kernels need a CUDA device")
    unknown = sorted(set(args.shapes) - {"smollm2", "7b"})
    if unknown:
        raise Clover2Error(f"kernels-bench --shapes: unknown {', '.join(unknown)} (expected smollm2, 7b)")
    from clover2 import kernel_bench

    report = {"attention": kernel_bench.attention_rows(args.shapes, args.tree_sizes, args.prefixes, DTYPES[args.dtype], device, args.repeats)}
    if args.target:
        target = load_target(args.target, device=args.device, dtype=args.dtype)
        report["verify_step"] = kernel_bench.verify_rows(target, args.tree_sizes, args.prefixes, args.repeats)
    for part, rows in report.items():
        print(f"## {part} ({args.dtype}, median ms over {args.repeats}; *_over_kernel > 1: the kernel is faster)")
        print(pd.DataFrame(rows).to_string(index=False))
    if args.out:
        document = {**report, "provenance": provenance(common.settings_of(args), device, 0)}
        atomic_write_text(args.out, json.dumps(document, indent=2) + "\n")


def _add_step_cost(verbs: argparse._SubParsersAction) -> None:
    cost = verbs.add_parser("step-cost", help="ms per plain token and per speculative step (draft/verify/bookkeeping) "
                            "per target shape, method and kernel backend, with the paper's τ projected onto them")
    cost.add_argument("--shapes", nargs="*", default=["smollm2-135m", "vicuna-7b", "llama3-8b"],
                      help="random-weight targets of these shapes: tiny, smollm2-135m, vicuna-7b, llama3-8b")
    cost.add_argument("--target", type=Path, nargs="*", default=[], help="prepared targets to time as well")
    cost.add_argument("--method", nargs="+", help="default: vanilla, hf-generate and every head method (untrained)")
    cost.add_argument("--kernels", dest="backends", nargs="+", choices=["torch", "triton"], help="default: both on CUDA, torch on a CPU")
    cost.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    cost.add_argument("--dtype", choices=common.DTYPE_CHOICES, help="default: float16 on GPU, float32 on CPU")
    cost.add_argument("--prompts", type=int, default=3, help="random prompts per target (medians over them)")
    cost.add_argument("--prompt-tokens", type=int, default=256)
    cost.add_argument("--new-tokens", type=int, default=64, help="tokens per decode (no stop token)")
    cost.add_argument("--warmup-tokens", type=int, default=16, help="per method and backend, before timing")
    cost.add_argument("--seed", type=int, default=0)
    cost.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    cost.add_argument("--published", type=Path, default=Path("../shared/reference/clover2_published.csv"),
                      help="the paper's numbers (CSV): τ for the projected speedups")
    cost.add_argument("--profile", type=Path, help="also profile one decode per method and backend (torch.profiler): "
                      "DIR/TARGET-METHOD-KERNELS.trace.json (Chrome trace, phases labelled) and .ops.txt")
    cost.add_argument("--out", type=Path, help="write the rows and provenance (JSON) here")
    cost.set_defaults(func=_step_cost)


def _step_cost(args: argparse.Namespace) -> None:
    import pandas as pd
    import torch

    from clover2 import step_cost
    from clover2.atomic import atomic_write_text
    from clover2.provenance import provenance
    from clover2.targets import resolve_dtype

    args.device = args.device or common.default_device()
    args.dtype, args.dtype_reason = resolve_dtype(args.dtype, args.device)
    args.backends = args.backends or (["torch", "triton"] if args.device.startswith("cuda") else ["torch"])
    if "triton" in args.backends and not args.device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
        raise Clover2Error(f"step-cost --kernels triton on {args.device}: Triton needs a CUDA device (or TRITON_INTERPRET=1)")
    published = args.published if args.published and args.published.is_file() else None
    if published is None:
        print(f"clover2 step-cost: {args.published} not found; no projected speedups", file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = step_cost.Settings(args.prompts, args.prompt_tokens, args.new_tokens, args.warmup_tokens, args.seed, args.profile)
    methods = args.method or step_cost.default_methods()
    record = provenance(common.settings_of(args), torch.device(args.device), args.seed)

    def save(rows: list[dict]) -> None:
        if args.out:
            atomic_write_text(args.out, json.dumps({"rows": rows, "provenance": record}, indent=2) + "\n")

    rows = step_cost.run_step_cost(args.shapes, args.target, methods, args.backends, args.device, args.dtype, settings, published, save)
    columns = ["target", "method", "kernels", "tree_size", "tau", "plain_ms_per_token", "ms_per_step", "draft_ms",
               "verify_ms", "bookkeeping_ms", "sync_overhead", "projected_speedup"]
    print(f"## ms per step after the prefill ({args.dtype}, {args.device}; medians over {args.prompts} prompts)")
    print(pd.DataFrame(rows)[columns].to_string(index=False, float_format="{:.2f}".format))
