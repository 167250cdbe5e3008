"""Prompt throughput on a cached image embedding: SAM-CLIP's `segment` against `SamModel(image_embeddings=...)`.

Command (the CPU suite runs it with these settings)::

    python -m benchmarks.bench_prompts --threads 1 --repeats 5

Run time: ~6 min wall here (2 Xeon cores shared with training jobs, load ~6), ~3 min of CPU at 1 thread;
`--tiny` (CI) takes ~2 s.

One 1024 px image is encoded once per model (SAM ViT-B shapes, random weights; SAM-CLIP merged from that SAM, so
the decoders are the same weights), then point-prompt batches of 1/4/16/64 prompts (one point each, 3 multimask
outputs) are answered from the cached embedding, interleaved round-robin, timed on process CPU time (at 1 thread
the time on an idle core; stable while other jobs share the cores). Reports prompts per second per model and
batch size, their ratio, and the max abs difference of the masks.

Expected (measured here): ratio 1.00 +- 0.03 at every batch size (both run SAM's prompt encoder and mask decoder;
SAM-CLIP only adds prompt validation) and a mask difference of exactly 0; ~4-5 prompts/s at 1 thread, since the
decoder repeats the 64x64 image embedding per prompt and upsamples every prompt's 3 masks to 256x256.
"""

from __future__ import annotations

import sys
import time

import torch

from transformers_samclip import SamClipModel

from .common import (
    build_clip_teacher,
    build_sam_teacher,
    make_parser,
    median,
    paired_ratio,
    render_tables,
    setup,
    table,
    time_interleaved,
    write_result,
)

NAME = "bench_prompts"


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = make_parser(__doc__, default_repeats=5).parse_args(argv)
    setup(args)
    started = time.perf_counter()

    sam = build_sam_teacher(args.tiny)
    model = SamClipModel.from_teachers(sam, build_clip_teacher(args.tiny))
    size = model.config.image_size
    batch_sizes = [1, 4] if args.tiny else [1, 4, 16, 64]
    pixels = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        sam_embeddings = sam.get_image_embeddings(pixels)
        samclip_embeddings = model.get_image_embeddings(pixels)

    rows, results = [], {}
    for count in batch_sizes:
        points = torch.rand(1, count, 1, 2) * size
        labels = torch.ones(1, count, 1, dtype=torch.int)
        prompts = {"input_points": points, "input_labels": labels}
        cases = {
            "sam_teacher": lambda prompts=prompts: sam(image_embeddings=sam_embeddings, **prompts),
            "samclip": lambda prompts=prompts: model.segment(samclip_embeddings, **prompts),
        }
        with torch.inference_mode():
            times = time_interleaved(cases, args.repeats)["cpu"]  # stable on a shared machine at 1 thread
            diff = (cases["sam_teacher"]().pred_masks - cases["samclip"]()[0]).abs().max().item()
        entry = {name: {"median_ms": median(t) * 1e3, "prompts_per_s": count / median(t)} for name, t in times.items()}
        entry["throughput_ratio"] = 1 / paired_ratio(times, "samclip", "sam_teacher")
        entry["pred_masks_max_abs_diff"] = diff
        results[str(count)] = entry
        rows.append(
            [
                count,
                entry["sam_teacher"]["prompts_per_s"],
                entry["samclip"]["prompts_per_s"],
                entry["throughput_ratio"],
                diff,
            ]
        )

    tables = [
        table(
            f"Prompts on one cached {size} px embedding (1 point each, 3 masks; CPU time)",
            ["prompts per call", "SamModel prompts/s", "SAM-CLIP prompts/s", "SAM-CLIP / SamModel", "mask max diff"],
            rows,
        )
    ]
    print(render_tables(tables))
    result = {"image_size": size, "batch_sizes": batch_sizes, "results": results, "tables": tables}
    write_result(NAME, args, argv, result, started)
    return result


if __name__ == "__main__":
    main()
