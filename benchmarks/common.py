"""Shared plumbing of the benchmark scripts: command line, model builders, interleaved timing, FLOP and
memory counting, tables and JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# FlopCounterMode has no formula for CPU's fused attention kernel, so SDPA on CPU would count as 0 FLOPs.
_CPU_SDPA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: lambda query, key, value, *args, **kwargs: (
        sdpa_flop_count(query, key, value)
    )
}


# ------------------------------------------------------------------------------------------ command line
def make_parser(doc: str, default_repeats: int = 3) -> argparse.ArgumentParser:
    """The options every benchmark takes: --tiny, --threads, --repeats, --output."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny configs and 1 repeat (CI smoke run)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a busy 2-core box)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help=f"timed rounds per case (default {default_repeats}; 1 with --tiny)"
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default benchmarks/results/<name>.json)")
    parser.set_defaults(default_repeats=default_repeats)
    return parser


def setup(args: argparse.Namespace) -> None:
    """Apply --threads, resolve the repeat default, seed torch (the same random weights every run)."""
    torch.set_num_threads(args.threads)
    if args.repeats is None:
        args.repeats = 1 if args.tiny else args.default_repeats
    torch.manual_seed(0)


def machine_info(threads: int) -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    if shutil.which("lscpu"):  # util-linux; elsewhere the platform's name for the processor
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), cpu
        )
    info = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    import transformers  # a dependency of the package: always there

    info["transformers"] = transformers.__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


# ------------------------------------------------------------------------------------------------ models
def preset_name(tiny: bool) -> str:
    return "samclip-tiny" if tiny else "samclip-vit-b16"


def build_sam_teacher(tiny: bool, attn_implementation: str = "sdpa"):
    """`SamModel` with the shapes of the SAM-CLIP preset (ViT-B/16 at 1024 px, or tiny), random weights."""
    from transformers import SamConfig, SamModel

    from transformers_samclip import samclip_config_from_preset

    preset = samclip_config_from_preset(preset_name(tiny))
    # The preset's vision config is SAM ViT-B with initializer_range 0.02 (SAM's 1e-10 default gives ~0 features).
    config = SamConfig(
        vision_config=preset.vision_config.to_dict(),
        prompt_encoder_config=preset.prompt_encoder_config.to_dict(),
        mask_decoder_config=preset.mask_decoder_config.to_dict(),
    )
    return SamModel._from_config(config, attn_implementation=attn_implementation).eval()


def build_clip_teacher(tiny: bool, attn_implementation: str = "sdpa"):
    """`CLIPModel` shaped as OpenCLIP ViT-L/14 (224 px image tower, 768-wide text tower), or tiny."""
    from transformers import CLIPConfig, CLIPModel

    from transformers_samclip import samclip_config_from_preset

    preset = samclip_config_from_preset(preset_name(tiny))
    if tiny:
        vision = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        }
    else:
        vision = {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 224,
            "patch_size": 14,
            "hidden_act": "gelu",
        }
    config = CLIPConfig(
        text_config=preset.text_config.to_dict(), vision_config=vision, projection_dim=preset.text_projection_dim
    )
    return CLIPModel._from_config(config, attn_implementation=attn_implementation).eval()


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -------------------------------------------------------------------------------------------- measuring
def _flop_counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=_CPU_SDPA_FLOPS)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of one call, counted by torch's FlopCounterMode (matmul, conv, attention)."""
    with _flop_counter() as counter:
        fn()
    return counter.get_total_flops()


def measure_once(fn: Callable[[], object]) -> tuple[object, int, int]:
    """One call of `fn` under both counters: `(output, FLOPs, peak bytes)`. One pass instead of two matters when a
    call takes seconds; the FLOP counter allocates no tensors, so it leaves the memory count unchanged.

    FLOPs: 2 per multiply-add, counted by torch's FlopCounterMode (matmul, conv, attention).
    Peak bytes: most bytes held by torch's CPU allocator during the call, above the level at its start, from the
    profiler's memory events (every tensor allocation and free, in order). It counts activations and outputs, not
    weights already allocated nor Python or allocator overhead; unlike peak RSS it is exact and per call, so the
    cases can share one process."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, _flop_counter() as counter:
        output = fn()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    level = peak = 0
    for _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return output, counter.get_total_flops(), peak


def time_interleaved(
    cases: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, dict[str, list[float]]]:
    """Seconds per call of every case on two clocks, `{"wall": {case: [...]}, "cpu": {case: [...]}}`.

    Cases run round-robin (one call of each per round) so that load from other processes hits all alike; every
    other round runs in reverse order (A B, B A, ...) so that no case always follows the same one; `warmup`
    untimed rounds first. "cpu" is this process's CPU time (all its threads): at 1 thread it is the call's
    latency on an idle core, and it stays stable on a machine shared with other jobs, where wall time includes
    waiting for a core."""
    times: dict[str, dict[str, list[float]]] = {
        "wall": {name: [] for name in cases},
        "cpu": {name: [] for name in cases},
    }
    for round_index in range(warmup + repeats):
        order = list(cases.items())
        for name, fn in order if round_index % 2 == 0 else order[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            if round_index >= warmup:
                times["wall"][name].append(time.perf_counter() - wall)
                times["cpu"][name].append(time.process_time() - cpu)
        print(f"  round {round_index + 1}/{warmup + repeats} done", file=sys.stderr, flush=True)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of the per-round time ratio: within a round both cases saw the same load."""
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))


# ------------------------------------------------------------------------------------------------ output
def format_table(headers: list[str], rows: list[list[object]]) -> str:
    """A markdown table (also readable on a terminal)."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render_tables(tables: list[dict]) -> str:
    """Markdown of `[{"title", "headers", "rows"}, ...]`, the form in which every script returns its tables."""
    return "\n\n".join(f"**{t['title']}**\n\n" + format_table(t["headers"], t["rows"]) for t in tables)


def table(title: str, headers: list[str], rows: list[list[object]]) -> dict:
    return {"title": title, "headers": headers, "rows": rows}


def target_rows(targets: dict) -> list[list[object]]:
    """Rows (name, value, target, met) of a `{name: {"value", "target", "op"}}` dict."""
    return [[name, t["value"], f"{t['op']} {t['target']}", "yes" if t["met"] else "NO"] for name, t in targets.items()]


def check_target(value: float, op: str, target: float) -> dict:
    met = value <= target if op == "<=" else value >= target
    return {"value": value, "op": op, "target": target, "met": bool(met)}


def write_result(name: str, args: argparse.Namespace, argv: list[str], result: dict, started: float) -> Path:
    """Add the run's settings and machine to `result`, write it as JSON and return the path."""
    result.update(
        benchmark=name,
        command=" ".join(["python -m benchmarks." + name, *argv]),
        tiny=args.tiny,
        repeats=args.repeats,
        machine=machine_info(args.threads),
        wall_seconds=time.perf_counter() - started,
    )
    path = args.output or RESULTS_DIR / (f"{name}-tiny.json" if args.tiny else f"{name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path} ({result['wall_seconds']:.0f} s)")
    return path


def profile_call(fn: Callable[[], object], count: int = 8, cuda: bool = False) -> dict:
    """One profiled call of `fn`: how many aten ops it dispatches and the `count` ops with the most self CPU time;
    with `cuda`, also the CUDA kernels and memory copies it ran (`cuda_kernels`) and their total time.

    `dispatched_ops`: aten ops called from outside any other aten op (the per-op overhead eager mode pays on the
    host); `kernel_ops`: aten ops that compute something themselves, i.e. neither views nor calls that return their
    input, and call no other op that does (about the kernels a GPU launches)."""
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    events = prof.events()
    aten = [e for e in events if e.name.startswith("aten::")]
    top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:count]
    if cuda:
        device_events = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        gpu = {"cuda_kernels": len(device_events), "cuda_ms": sum(e.device_time_total for e in device_events) / 1e3}
    else:
        gpu = {}
    return {
        **gpu,
        "dispatched_ops": sum(1 for e in aten if not _has_aten_ancestor(e)),
        "kernel_ops": sum(1 for e in aten if _is_kernel_op(e)),
        "top": [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3} for e in top],
    }


# Leaf ops that launch no kernel: views, allocation without initialisation, and calls that return their input.
_NO_KERNEL_OPS = {
    "view",
    "_unsafe_view",
    "_reshape_alias",
    "as_strided",
    "t",
    "transpose",
    "permute",
    "expand",
    "unsqueeze",
    "squeeze",
    "select",
    "slice",
    "unbind",
    "split",
    "split_with_sizes",
    "narrow",
    "chunk",
    "unflatten",
    "detach",
    "alias",
    "lift_fresh",
    "resolve_conj",
    "resolve_neg",
    "empty",
    "empty_strided",
    "contiguous",
    "to",
    "reshape",
    "flatten",
    "view_as",
    "expand_as",
    "dropout",
}


def _is_kernel_op(event) -> bool:
    return event.name.removeprefix("aten::") not in _NO_KERNEL_OPS and not _kernel_below(event)


def _kernel_below(event) -> bool:
    return any(_is_kernel_op(c) or _kernel_below(c) for c in event.cpu_children if c.name.startswith("aten::"))


def _has_aten_ancestor(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def top_ops(fn: Callable[[], object], count: int = 8) -> list[dict]:
    """The `count` ops with the most self CPU time in one profiled call (evidence for a missed target)."""
    return profile_call(fn, count)["top"]
