"""GPU variant of the suite: bf16 autocast, SDPA attention, eager and torch.compile'd inference timed interleaved
in one run; images/s and model FLOP utilisation (MFU) at the real sizes (random weights).

Commands (the one H100 run so far took 111 s with the previous, eager-only version; the times below are budgets,
not measurements)::

    python -m benchmarks.bench_gpu --quick      # headline pairs, eager + compiled, < 3 min incl. compilation
    python -m benchmarks.bench_gpu              # everything below; skips what is left after --budget-s (420 s)

Smoke test of the same code on CPU (what CI runs; no timing meaning; aot_eager traces without code generation)::

    python -m benchmarks.bench_gpu --tiny --device cpu --compile-backend aot_eager

Without a CUDA device (and without `--device cpu`) it prints why and exits with status 0.

Groups, in priority order (each group's cases and modes run round-robin in one loop, so their ratios are paired per
round): CLIP path = CLIP ViT-L/14 image tower vs SAM-CLIP's CLIP path at 224 px, batch 64 and 256 (`--batches`);
SAM path = `SamModel` ViT-B vs SAM-CLIP's SAM path at 1024 px with one point prompt, batch 16 and 64
(`--sam-batches`; at 256 a global layer's attention bias alone would take 103 GB); then, eager only: the stage-1
distillation step with and without the teacher cache (batch and shapes of `recipes/samclip-vit-b16.json`), SAM-CLIP
at 336/448 px, the text towers, both tasks, and stage 2. Modes (`--modes`): eager, compiled
(`torch.compile(dynamic=False)`, default mode), cudagraphs (`mode="reduce-overhead"`, opt-in). `--quick`: the first
batch of the two headline groups only, 5 rounds. MFU = counted FLOPs per call (FlopCounterMode, eager fp32 pass at
batch 1, times the batch; forward, plus backward and checkpointing's recompute for training steps) x calls/s / peak
dense bf16 FLOP/s of the detected GPU (table below; `--peak-tflops` for others). Each headline group also profiles one
eager forward per case at its first batch: aten ops dispatched, CUDA kernels launched and GPU-busy time.

Measured (2026-11-26, one H100 80GB HBM3, previous version: eager, batch 16, `--repeats 10 --threads 2`, host's
other cores busy; benchmarks/results/bench_gpu.json): MFU 1-12%. SamModel ViT-B at 1024 px 46.1 img/s, SAM-CLIP's
SAM path 42.5 img/s (0.92x); CLIP ViT-L/14 image tower at 224 px 752 img/s, SAM-CLIP's CLIP path 306 img/s (0.41x,
13 TFLOP/s against 122); stage 1 353 -> 572 img/s with the teacher cache (1.62x); stage 2 54 img/s either way.
Not measured yet: this version (issue 14's cached relative-position tables, compiled modes, batch 64/256).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from transformers_samclip import SamClipModel
from transformers_samclip.distillation import load_recipe

from .bench_distillation import build_mosaic_teachers, build_trainer, make_batch, step_inputs, train_step
from .bench_inference import make_cases, make_inputs
from .common import (
    build_clip_teacher,
    build_sam_teacher,
    count_flops,
    make_parser,
    median,
    paired_ratio,
    profile_call,
    render_tables,
    setup,
    table,
    time_interleaved,
    write_result,
)

NAME = "bench_gpu"
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets; matched in order on the
# name torch reports, so the more specific names come first.
PEAK_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 PCIe": 756.5,
    "H100 NVL": 835.5,
    "H100": 989.4,  # SXM5 ("NVIDIA H100 80GB HBM3")
    "A100": 312.0,
}


def peak_tflops(device_name: str) -> float | None:
    """Peak dense bf16 TFLOP/s of a GPU by its reported name; None when unknown."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in device_name), None)


def synchronized(fn, device: torch.device):
    """`fn` that waits for the device, so that wall-clock timing covers the kernels it queued."""

    def call():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return call


# Pairs compared within a group: (SAM-CLIP case, reference case); ratio = reference time / SAM-CLIP time.
PAIRS = {
    "clip_path": ("samclip_clip_{clip}", "clip_teacher_image_{clip}"),
    "sam_path": ("samclip_sam_{sam}", "sam_teacher_{sam}"),
    "text": ("samclip_text", "clip_teacher_text"),
    "both_tasks": ("both_tasks_samclip_two_pass", "both_tasks_teachers"),
    "teacher_cache_stage1": ("stage1_teacher_cache", "stage1_no_cache"),
    "teacher_cache_stage2": ("stage2_teacher_cache", "stage2_no_cache"),
}


def compiled(fn, mode: str, backend: str):
    """`fn` as the timing mode runs it: eager, or torch.compile'd at fixed shapes (with CUDA graphs)."""
    if mode == "eager":
        return fn
    if mode == "cudagraphs":
        return torch.compile(fn, mode="reduce-overhead", dynamic=False)
    return torch.compile(fn, backend=backend, dynamic=False)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = make_parser(__doc__, default_repeats=10)
    parser.set_defaults(threads=None)  # resolved below: every core for a GPU's host side, 1 on CPU
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a --tiny smoke test")
    parser.add_argument(
        "--batches", type=int, nargs="+", default=None, help="images per call at 224 px (default 64 256)"
    )
    parser.add_argument(
        "--sam-batches", type=int, nargs="+", default=None, help="images per call at 1024 px (default 16 64)"
    )
    parser.add_argument(
        "--modes", nargs="+", choices=["eager", "compiled", "cudagraphs"], default=["eager", "compiled"]
    )
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compiled mode")
    parser.add_argument("--quick", action="store_true", help="the first batch of the two headline groups, 5 rounds")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s, if the GPU is not in the table"
    )
    parser.add_argument(
        "--budget-s", type=float, default=None, help="skip the remaining groups after this many seconds (420)"
    )
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        message = "bench_gpu: no CUDA device here; nothing measured (run it on a GPU machine, or --tiny --device cpu)."
        print(message)
        return {"skipped": message}
    if args.threads is None:
        args.threads = os.cpu_count() if args.device.startswith("cuda") else 1
    if args.quick and args.repeats is None:
        args.repeats = 5
    setup(args)
    started = time.perf_counter()
    budget = args.budget_s or (150 if args.quick else 420)
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or (peak_tflops(device_name) if device.type == "cuda" else None)
    batches = args.batches or ([2, 3] if args.tiny else [64, 256])
    sam_batches = args.sam_batches or ([2, 3] if args.tiny else [16, 64])
    warmup = 1 if args.tiny else (2 if args.quick else 3)  # the first warm-up round also absorbs compilation
    torch._dynamo.config.cache_size_limit = 64  # one graph per case, batch and mode
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    sam = build_sam_teacher(args.tiny, attn_implementation="sdpa").to(device)
    clip = build_clip_teacher(args.tiny, attn_implementation="sdpa").to(device)
    model = SamClipModel.from_teachers(sam, clip)
    sam_size = model.config.image_size
    clip_sizes = [32, 48, 64] if args.tiny else [224, 336, 448]
    names = {"sam": sam_size, "clip": clip_sizes[0]}

    def inference_cases(batch: int) -> dict:
        return make_cases(
            sam, clip, model, make_inputs(sam, clip, clip_sizes, batch=batch, device=device), sam_size, clip_sizes
        )

    # FLOPs are linear in the batch: counted once per item, eagerly and outside autocast (FlopCounterMode decomposes
    # ops below the autocast layer, so mixed-dtype einsums would fail there; the count depends on neither dtype
    # nor compilation).
    with torch.inference_mode():
        flops_per_item = {name: count_flops(fn) for name, fn in inference_cases(1).items()}

    groups = []  # (group, batch, case names, modes)
    pair = {group: [n.format(**names) for n in PAIRS[group]] for group in PAIRS}
    headline = [("clip_path", batches), ("sam_path", sam_batches)]
    for index in range(1 if args.quick else max(len(batches), len(sam_batches))):
        groups += [(group, sizes[index], pair[group], args.modes) for group, sizes in headline if index < len(sizes)]
    if not args.quick:
        groups.append(("teacher_cache_stage1", None, pair["teacher_cache_stage1"], ["eager"]))
        groups.append(("clip_sizes", batches[0], [f"samclip_clip_{size}" for size in clip_sizes[1:]], ["eager"]))
        groups.append(("text", batches[0], pair["text"], ["eager"]))
        groups.append(
            ("both_tasks", sam_batches[0], [*pair["both_tasks"], f"both_tasks_samclip_one_pass_{sam_size}"], ["eager"])
        )
        groups.append(("teacher_cache_stage2", None, pair["teacher_cache_stage2"], ["eager"]))

    results, ratios, profiles, skipped = {}, {}, {}, []
    for group, batch, case_names, modes in groups:
        label = f"{group}" + (f"/b{batch}" if batch else "")
        if time.perf_counter() - started > budget:
            skipped.append(label)
            continue
        training = batch is None
        if training:
            fns, items, flops = training_cases(args, model, sam, clip, device, group)
        else:
            cases = inference_cases(batch)
            fns = {name: cases[name] for name in case_names}
            items = dict.fromkeys(case_names, batch)
            flops = {name: flops_per_item[name] * batch for name in case_names}
        timed = {
            f"{name}/{mode}": synchronized(compiled(fn, mode, args.compile_backend), device)
            for name, fn in fns.items()
            for mode in modes
        }
        with torch.set_grad_enabled(training), torch.inference_mode(not training):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                times = time_interleaved(timed, args.repeats, warmup=warmup)["wall"]
        for key, seconds_list in times.items():
            name, mode = key.rsplit("/", 1)
            seconds = median(seconds_list)
            achieved = flops[name] / seconds
            results[f"{name}/b{items[name]}/{mode}"] = {
                "case": name,
                "mode": mode,
                "items_per_call": items[name],
                "median_ms": seconds * 1e3,
                "items_per_s": items[name] / seconds,
                "gflops_per_call": flops[name] / 1e9,
                "achieved_tflops": achieved / 1e12,
                "mfu": achieved / (peak * 1e12) if peak else None,
            }
        for mode in modes:
            if group in PAIRS:
                samclip_case, reference = pair[group]
                ratios[f"{label}/{mode}"] = paired_ratio(times, f"{reference}/{mode}", f"{samclip_case}/{mode}")
        for name in fns:
            for mode in modes[1:]:
                ratios[f"{name}/b{items[name]}/{mode}_vs_eager"] = paired_ratio(
                    times, f"{name}/eager", f"{name}/{mode}"
                )
        if group in ("clip_path", "sam_path") and group not in profiles:
            # Per-forward ops, kernels and GPU-busy time, eager, at the group's first batch (the GPU profile of
            # benchmarks/profile_encoder's CPU table).
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                profiles[group] = {name: profile_call(fn, cuda=device.type == "cuda") for name, fn in fns.items()}
                for profiled in profiles[group].values():
                    profiled["batch"] = batch
        del fns, timed

    tables = [
        table(
            f"{device_name}: bf16 autocast, SDPA, peak {peak} TFLOP/s",
            ["case", "mode", "items/call", "ms/call", "items/s", "TFLOP/s", "MFU"],
            [
                [
                    r["case"],
                    r["mode"],
                    r["items_per_call"],
                    r["median_ms"],
                    r["items_per_s"],
                    r["achieved_tflops"],
                    r["mfu"],
                ]
                for r in results.values()
            ],
        ),
        table(
            "Speed ratios (reference time / SAM-CLIP time, or eager time / compiled time;"
            " medians of per-round ratios)",
            ["comparison", "ratio"],
            [[name, value] for name, value in ratios.items()],
        ),
    ]
    tables += [
        table(
            f"{group}: one eager forward at batch {next(iter(cases.values()))['batch']}, profiled",
            ["case", "dispatched ops", "kernel ops", "CUDA kernels", "GPU busy ms", "top op by self CPU time"],
            [
                [
                    name,
                    p["dispatched_ops"],
                    p["kernel_ops"],
                    p.get("cuda_kernels"),
                    p.get("cuda_ms"),
                    p["top"][0]["op"],
                ]
                for name, p in cases.items()
            ],
        )
        for group, cases in profiles.items()
    ]
    print(render_tables(tables))
    if skipped:
        print(f"\nskipped (over the {budget:.0f} s budget): {', '.join(skipped)}")
    result = {
        "device": device_name,
        "peak_bf16_tflops": peak,
        "peak_table_tflops": PEAK_BF16_TFLOPS,
        "modes": args.modes,
        "compile_backend": args.compile_backend,
        "batches": batches,
        "sam_batches": sam_batches,
        "quick": args.quick,
        "cases": results,
        "ratios": ratios,
        "profiles": profiles,
        "skipped": skipped,
        "tables": tables,
    }
    write_result(NAME, args, argv, result, started)
    return result


def training_cases(args, model, sam, clip, device: torch.device, group: str) -> tuple[dict, dict, dict]:
    """The distillation steps of one stage with and without the teacher cache, as the paper-scale recipe runs them
    (stage 2 with gradient checkpointing; --tiny: the mosaic recipe's shapes): `(calls, items, FLOPs)` by name."""
    recipe = load_recipe("mosaic" if args.tiny else "samclip-vit-b16")
    teachers = tuple(t.to(device) for t in (build_mosaic_teachers() if args.tiny else (sam, clip)))
    stage_index = 0 if group == "teacher_cache_stage1" else 1
    stage = recipe.stages[stage_index]
    clip_batch = 4 if args.tiny else stage.training_args["per_device_train_batch_size"]
    sam_batch = 0 if stage_index == 0 else (1 if args.tiny else stage.sam_batch_size)
    with tempfile.TemporaryDirectory() as work_dir:
        trainer = build_trainer(
            *teachers, recipe, stage, str(Path(work_dir) / str(stage_index + 1)), use_cpu=device.type == "cpu"
        )
    batch = make_batch(*teachers, recipe, stage, clip_batch, sam_batch, device)
    prefix = f"stage{stage_index + 1}"
    fns = {
        f"{prefix}_no_cache": lambda: train_step(trainer, step_inputs(batch, cached=False)),
        f"{prefix}_teacher_cache": lambda: train_step(trainer, step_inputs(batch, cached=True)),
    }
    flops = {name: count_flops(fn) for name, fn in fns.items()}
    return fns, dict.fromkeys(fns, clip_batch + sam_batch), flops


if __name__ == "__main__":
    main()
