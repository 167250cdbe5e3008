"""Per-forward profile of the image encoders (torch.profiler on CPU): ops per forward, top ops by self CPU time and
CPU time, for SAM-CLIP's CLIP path at 224 px and SAM path at 1024 px next to CLIP ViT-L/14's image tower and
`SamModel` ViT-B (real sizes, random weights, batch 1, SDPA attention, one untimed call first).

Command::

    python -m benchmarks.profile_encoder --threads 1 --repeats 3 --baseline-rev 6f27cf5

Run time: 11 min wall here with `--baseline-rev` (2 Xeon cores shared with other jobs, load ~6; each 1024 px
encoder call takes ~16-19 s of CPU); `--tiny` (CI) takes ~5 s. `--baseline-rev REV` adds SAM-CLIP as `modeling/`
was at git revision REV (imported from `git archive`, given the same weights) to the same interleaved rounds:
before/after ratios from one run, and the largest output difference between the two. Writes
benchmarks/results/profile_encoder.json.

What is counted: `dispatched ops`, aten ops called from Python (eager mode pays its per-op host overhead on each;
on a GPU it is what runs ahead of the kernels), and `kernel ops`, aten ops that compute something and call no other
op that does (views and no-op calls excluded: about the kernels a GPU launches). Cases: `clip_vit_l14_224` =
`CLIPModel.get_image_features`, `samclip_clip_224` = `SamClipModel.get_image_features` (trunk + CLIP head),
`sam_vit_b_1024` = `SamModel.get_image_embeddings`, `samclip_sam_1024` = `SamClipModel.get_image_embeddings`.

Measured (2026-11-29, `--baseline-rev 6f27cf5`, the commit before issue 14's encoder changes): aten ops dispatched
per forward 931 -> 447 (CLIP path at 224 px; ViT-L/14: 516) and 792 -> 456 (SAM path at 1024 px; SamModel: 792);
CPU time now / before 0.98 and 0.84; CLIP path / ViT-L/14 0.307 -> 0.287, SAM path / SamModel 1.07 -> 0.89;
outputs identical (max abs difference 0.0).
"""

from __future__ import annotations

import importlib.util
import io
import re
import subprocess
import sys
import tarfile
import tempfile
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


def make_encoder_cases(sam, clip, model, clip_pixels: torch.Tensor, sam_pixels: torch.Tensor) -> dict:
    """Name -> zero-argument call of each image encoder at its task's size."""
    clip_size, sam_size = clip_pixels.shape[-1], sam_pixels.shape[-1]
    return {
        f"clip_vit_l14_{clip_size}": lambda: clip.get_image_features(pixel_values=clip_pixels).pooler_output,
        f"samclip_clip_{clip_size}": lambda: model.get_image_features(clip_pixels).pooler_output,
        f"sam_vit_b_{sam_size}": lambda: sam.get_image_embeddings(sam_pixels),
        f"samclip_sam_{sam_size}": lambda: model.get_image_embeddings(sam_pixels),
    }


def load_model_class_at(rev: str, work_dir: Path):
    """`SamClipModel` of this repository's `modeling/` at git revision `rev`, imported as a package of its own."""
    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", rev, "modeling"], capture_output=True, check=True
    ).stdout
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(work_dir, filter="data")
    package = "samclip_modeling_" + re.sub(r"\W", "_", rev)
    spec = importlib.util.spec_from_file_location(
        package, work_dir / "modeling" / "__init__.py", submodule_search_locations=[str(work_dir / "modeling")]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module
    spec.loader.exec_module(module)
    return module.SamClipModel


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = make_parser(__doc__)
    parser.add_argument("--baseline-rev", default=None, help="git revision whose modeling/ is timed beside this one")
    args = parser.parse_args(argv)
    setup(args)
    started = time.perf_counter()

    sam = build_sam_teacher(args.tiny)
    clip = build_clip_teacher(args.tiny)
    model = SamClipModel.from_teachers(sam, clip)
    sam_size, clip_size = model.config.image_size, model.config.head_config.image_size
    pixels = (torch.randn(1, 3, clip_size, clip_size), torch.randn(1, 3, sam_size, sam_size))
    cases = make_encoder_cases(sam, clip, model, *pixels)
    names = list(cases)
    pairs = {"clip_path": (names[1], names[0]), "sam_path": (names[3], names[2])}
    rev = args.baseline_rev
    if rev:
        with tempfile.TemporaryDirectory() as work_dir:
            before = load_model_class_at(rev, Path(work_dir)).from_teachers(sam, clip)
        before.load_state_dict(model.state_dict())  # the same weights (the CLIP head's projector is random)
        before_cases = make_encoder_cases(sam, clip, before, *pixels)
        for path, (name, teacher) in list(pairs.items()):
            cases[f"{name}@{rev}"] = before_cases[name]
            pairs[f"{path}@{rev}"] = (f"{name}@{rev}", teacher)
            pairs[f"{name} now/{rev}"] = (name, f"{name}@{rev}")

    profiles, outputs = {}, {}
    with torch.no_grad():
        for name, fn in cases.items():
            outputs[name] = fn()  # the untimed first call (SAM-CLIP fills its caches here)
            profiles[name] = profile_call(fn)
        times = time_interleaved(cases, args.repeats, warmup=0)["cpu"]
    baseline_diff = {
        name: (outputs[name] - outputs[f"{name}@{rev}"]).abs().max().item()
        for name in names
        if f"{name}@{rev}" in cases
    }
    results = {
        name: {
            **profiles[name],
            "cpu_median_ms": median(times[name]) * 1e3,
            "cpu_times_ms": [t * 1e3 for t in times[name]],
        }
        for name in cases
    }
    ratios = {path: paired_ratio(times, *pair) for path, pair in pairs.items()}

    headers = ["case", "dispatched ops", "kernel ops", "CPU ms"]
    rows = [[n, r["dispatched_ops"], r["kernel_ops"], r["cpu_median_ms"]] for n, r in results.items()]
    ratio_rows = [[f"{path}: {a} / {b}", ratios[path]] for path, (a, b) in pairs.items()]
    tables = [
        table(
            f"Ops and CPU time per forward (batch 1, {args.threads} thread(s), median of {args.repeats})",
            headers,
            rows,
        ),
        table("CPU time ratios (medians of per-round ratios)", ["pair", "ratio"], ratio_rows),
    ]
    tables += [
        table(
            f"Top ops of {name} by self CPU time (one profiled call)",
            ["op", "calls", "self ms"],
            [[op["op"], op["calls"], op["self_ms"]] for op in r["top"]],
        )
        for name, r in results.items()
    ]
    print(render_tables(tables))
    if baseline_diff:
        print(f"\nlargest output difference from {args.baseline_rev}: {baseline_diff}")
    result = {
        "cases": results,
        "ratios": ratios,
        "baseline_rev": args.baseline_rev,
        "max_abs_diff_vs_baseline": baseline_diff,
        "tables": tables,
    }
    write_result(NAME, args, argv, result, started)
    return result


if __name__ == "__main__":
    main()
