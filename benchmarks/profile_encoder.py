"""Per-forward profile of the image encoders (torch.profiler on CPU): ops per forward, top ops by self CPU time and
CPU time, for SAM-CLIP's CLIP path at 224 px and SAM path at 1024 px next to CLIP ViT-L/14's image tower and
`SamModel` ViT-B (real sizes, random weights, batch 1, SDPA attention, one untimed call first).

Command::

    python -m benchmarks.profile_encoder --threads 1 --repeats 3 [--baseline benchmarks/results/profile_encoder-before.json]

Run time: ~6 min wall here (2 shared Xeon cores; the two 1024 px encoders take ~16 s of CPU per call); `--tiny`
(CI) takes ~5 s. `--baseline` adds the columns of an earlier run (the same command on an earlier commit) to the
tables. Writes benchmarks/results/profile_encoder.json.

What is counted: `dispatched ops`, aten ops called from Python (eager mode pays its per-op host overhead on each;
on a GPU it is what runs ahead of the kernels), and `kernel ops`, aten ops that call no other and compute something
(views and no-op calls excluded: about the kernels a GPU launches). Cases: `clip_vit_l14_224` = `CLIPModel.get_image_features`, `samclip_clip_224` =
`SamClipModel.get_image_features` (trunk + CLIP head), `sam_vit_b_1024` = `SamModel.get_image_embeddings`,
`samclip_sam_1024` = `SamClipModel.get_image_embeddings`.

Measured (2026-11-29, before -> after issue 14's encoder changes): see the README's Performance section and
benchmarks/results/profile_encoder.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from transformers_samclip import SamClipModel

from .common import (
    build_clip_teacher,
    build_sam_teacher,
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

NAME = "profile_encoder"


def make_encoder_cases(sam, clip, model, sam_size: int, clip_size: int, batch: int = 1, device: str = "cpu") -> dict:
    """Name -> zero-argument call of each image encoder at its task's size."""
    clip_pixels = torch.randn(batch, 3, clip_size, clip_size, device=device)
    sam_pixels = torch.randn(batch, 3, sam_size, sam_size, device=device)
    return {
        f"clip_vit_l14_{clip_size}": lambda: clip.get_image_features(pixel_values=clip_pixels),
        f"samclip_clip_{clip_size}": lambda: model.get_image_features(clip_pixels),
        f"sam_vit_b_{sam_size}": lambda: sam.get_image_embeddings(sam_pixels),
        f"samclip_sam_{sam_size}": lambda: model.get_image_embeddings(sam_pixels),
    }


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = make_parser(__doc__)
    parser.add_argument("--baseline", type=Path, default=None, help="JSON of an earlier run, shown beside this one")
    args = parser.parse_args(argv)
    setup(args)
    started = time.perf_counter()

    sam = build_sam_teacher(args.tiny)
    clip = build_clip_teacher(args.tiny)
    model = SamClipModel.from_teachers(sam, clip)
    sam_size, clip_size = model.config.image_size, model.config.head_config.image_size
    cases = make_encoder_cases(sam, clip, model, sam_size, clip_size)
    names = list(cases)
    pairs = {"clip_path": (names[1], names[0]), "sam_path": (names[3], names[2])}

    profiles = {}
    with torch.no_grad():
        for name, fn in cases.items():
            fn()  # the untimed first call (SAM-CLIP fills its caches here)
            profiles[name] = profile_call(fn)
        times = time_interleaved(cases, args.repeats, warmup=0)["cpu"]
    results = {
        name: {**profiles[name], "cpu_median_ms": median(times[name]) * 1e3, "cpu_times_ms": [t * 1e3 for t in times[name]]}
        for name in names
    }
    ratios = {path: paired_ratio(times, *pair) for path, pair in pairs.items()}

    before = json.loads(args.baseline.read_text()) if args.baseline else None
    headers = ["case", "dispatched ops", "kernel ops", "CPU ms"]
    rows = [[n, r["dispatched_ops"], r["kernel_ops"], r["cpu_median_ms"]] for n, r in results.items()]
    ratio_headers, ratio_rows = ["path", "CPU time ratio"], [[f"{path}: {a} / {b}", ratios[path]] for path, (a, b) in pairs.items()]
    if before:
        headers += ["dispatched ops before", "kernel ops before", "CPU ms before"]
        for row in rows:
            old = before["cases"][row[0]]
            row += [old["dispatched_ops"], old["kernel_ops"], old["cpu_median_ms"]]
        ratio_headers.append("before")
        for row, path in zip(ratio_rows, pairs):
            row.append(before["ratios"][path])
    tables = [
        table(f"Ops and CPU time per forward (batch 1, {args.threads} thread(s), median of {args.repeats})", headers, rows),
        table("SAM-CLIP / teacher, CPU time (median of per-round ratios)", ratio_headers, ratio_rows),
    ]
    tables += [
        table(f"Top ops of {name} by self CPU time (one profiled call)", ["op", "calls", "self ms"],
              [[op["op"], op["calls"], op["self_ms"]] for op in r["top"]])
        for name, r in results.items()
    ]
    print(render_tables(tables))
    result = {"cases": results, "ratios": ratios, "baseline": str(args.baseline) if before else None, "tables": tables}
    write_result(NAME, args, argv, result, started)
    return result


if __name__ == "__main__":
    main()
