"""GPU variant of the suite: bf16 autocast, SDPA attention, optional torch.compile; images/s and model FLOP
utilisation (MFU) at the real sizes (random weights).

Command (111 s on one H100 with `--repeats 10`)::

    python -m benchmarks.bench_gpu --repeats 20            # add --compile for torch.compile'd inference

Smoke test of the same code on CPU (what CI runs; no timing meaning)::

    python -m benchmarks.bench_gpu --tiny --device cpu

Without a CUDA device (and without `--device cpu`) it prints why and exits with status 0.

Cases: the inference cases of `bench_inference` at batch `--batch` (SamModel and SAM-CLIP's SAM path at 1024 px,
CLIP ViT-L/14 image tower at 224, SAM-CLIP CLIP path at 224/336/448, text towers, both tasks), and the
distillation steps of `bench_distillation` as `recipes/samclip-vit-b16.json` sets them per GPU (stage 1: 64 CLIP
images at 224 px; stage 2: 64 CLIP images + 1 SAM image at 1024 px with 16 box and 16 point prompts, gradient
checkpointing; with and without the teacher cache; eager, even with --compile). MFU = counted FLOPs per call
(FlopCounterMode, eager fp32 pass; forward, plus backward and checkpointing's recompute for training steps) x
calls/s / peak dense bf16 FLOP/s of the detected GPU (table below; `--peak-tflops` for others).

Measured (2026-11-26, one H100 80GB HBM3, `--repeats 10 --threads 2`, eager, while the host's other 14 cores ran
CPU jobs; benchmarks/results/bench_gpu.json): at batch 16 every case is far from the GPU's limits (MFU 1-12%):
SamModel ViT-B at 1024 px 46.1 img/s, SAM-CLIP's SAM path 42.5 img/s (0.92x); CLIP ViT-L/14 image tower at
224 px 752 img/s, SAM-CLIP's CLIP path 306 img/s (0.41x: its windowed, relative-position attention at 14x14
tokens runs at 13 TFLOP/s where the plain ViT-L/14 reaches 122, so 0.32x the FLOPs does not make it faster here);
stage 1 353 -> 572 img/s with the teacher cache (1.62x, target 3x missed); stage 2 54 img/s with or without it
(the student's 1024 px SAM pass under gradient checkpointing dominates). torch.compile was not measured.
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


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = make_parser(__doc__, default_repeats=20)
    parser.set_defaults(threads=None)  # resolved below: every core for a GPU's host side, 1 on CPU
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a --tiny smoke test")
    parser.add_argument("--batch", type=int, default=None, help="images per inference call (default 16; 2 with --tiny)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the inference cases")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s, if the GPU is not in the table")
    parser.add_argument("--budget-s", type=float, default=420, help="skip the remaining cases after this many seconds")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        message = "bench_gpu: no CUDA device here; nothing measured (run it on a GPU machine, or --tiny --device cpu)."
        print(message)
        return {"skipped": message}
    if args.threads is None:
        args.threads = os.cpu_count() if args.device.startswith("cuda") else 1
    setup(args)
    started = time.perf_counter()
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or (peak_tflops(device_name) if device.type == "cuda" else None)
    batch = args.batch or (2 if args.tiny else 16)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    sam = build_sam_teacher(args.tiny, attn_implementation="sdpa").to(device)
    clip = build_clip_teacher(args.tiny, attn_implementation="sdpa").to(device)
    model = SamClipModel.from_teachers(sam, clip)
    clip_sizes = [32, 48, 64] if args.tiny else [224, 336, 448]
    inputs = make_inputs(sam, clip, clip_sizes, batch=batch, device=device)
    inference = make_cases(sam, clip, model, inputs, model.config.image_size, clip_sizes)

    # Training steps as the paper-scale recipe runs them (stage 2 with gradient checkpointing); --tiny runs the
    # mosaic recipe's shapes instead.
    recipe = load_recipe("mosaic" if args.tiny else "samclip-vit-b16")
    teachers = build_mosaic_teachers() if args.tiny else (sam, clip)
    teachers = tuple(t.to(device) for t in teachers)
    stage1, stage2 = recipe.stages[:2]
    clip_batches = [4, 4] if args.tiny else [s.training_args["per_device_train_batch_size"] for s in (stage1, stage2)]
    sam_batch = 1 if args.tiny else stage2.sam_batch_size
    with tempfile.TemporaryDirectory() as work_dir:
        use_cpu = device.type == "cpu"
        trainer1 = build_trainer(*teachers, recipe, stage1, str(Path(work_dir) / "1"), use_cpu=use_cpu)
        trainer2 = build_trainer(*teachers, recipe, stage2, str(Path(work_dir) / "2"), use_cpu=use_cpu)
    batch1 = make_batch(*teachers, recipe, stage1, clip_batches[0], 0, device)
    batch2 = make_batch(*teachers, recipe, stage2, clip_batches[1], sam_batch, device)
    training = {
        "stage1_no_cache": lambda: train_step(trainer1, step_inputs(batch1, cached=False)),
        "stage1_teacher_cache": lambda: train_step(trainer1, step_inputs(batch1, cached=True)),
        "stage2_no_cache": lambda: train_step(trainer2, step_inputs(batch2, cached=False)),
        "stage2_teacher_cache": lambda: train_step(trainer2, step_inputs(batch2, cached=True)),
    }
    items = {name: batch for name in inference}
    items.update({name: clip_batches[0] if name.startswith("stage1") else clip_batches[1] + sam_batch for name in training})

    results, skipped = {}, []
    for name, fn in [*inference.items(), *training.items()]:
        if time.perf_counter() - started > args.budget_s:
            skipped.append(name)
            continue
        grad = name in training
        timed = synchronized(torch.compile(fn) if args.compile and not grad else fn, device)
        with torch.set_grad_enabled(grad), torch.inference_mode(not grad):
            # Counted eagerly and outside autocast: FlopCounterMode decomposes ops below the autocast layer (so
            # mixed-dtype einsums would fail there), and the count depends on neither dtype nor compilation.
            flops = count_flops(fn)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                # The warm-up rounds also absorb compilation.
                seconds = median(time_interleaved({name: timed}, args.repeats, warmup=0 if args.tiny else 3)["wall"][name])
        achieved = flops / seconds
        results[name] = {
            "items_per_call": items[name],
            "median_ms": seconds * 1e3,
            "items_per_s": items[name] / seconds,
            "gflops_per_call": flops / 1e9,
            "achieved_tflops": achieved / 1e12,
            "mfu": achieved / (peak * 1e12) if peak else None,
        }

    tables = [table(
        f"{device_name}: bf16 autocast, SDPA, compile={args.compile}, peak {peak} TFLOP/s, batch {batch}",
        ["case", "items/call", "ms/call", "items/s", "TFLOP/s", "MFU"],
        [[n, r["items_per_call"], r["median_ms"], r["items_per_s"], r["achieved_tflops"], r["mfu"]] for n, r in results.items()],
    )]
    print(render_tables(tables))
    if skipped:
        print(f"\nskipped (over --budget-s {args.budget_s:.0f} s): {', '.join(skipped)}")
    result = {
        "device": device_name,
        "peak_bf16_tflops": peak,
        "peak_table_tflops": PEAK_BF16_TFLOPS,
        "compile": args.compile,
        "batch": batch,
        "cases": results,
        "skipped": skipped,
        "tables": tables,
    }
    write_result(NAME, args, argv, result, started)
    return result


if __name__ == "__main__":
    main()
