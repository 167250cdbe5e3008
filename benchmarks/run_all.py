"""The CPU benchmark suite in one command: inference, prompt throughput and distillation throughput.

Command::

    python -m benchmarks --threads 1          # same as python -m benchmarks.run_all --threads 1

Run time: ~28 min wall here (2 Xeon cores shared with training jobs, load ~6; ~12 min of CPU at 1 thread:
bench_inference ~7, bench_prompts ~3, bench_distillation ~1.5, bench_label_everything ~4). `--tiny` (CI) takes ~15 s.

Writes each script's JSON (`benchmarks/results/<script>.json`), all of them combined in `latest.json`, and
their tables as markdown in `latest.md` (the README's Performance section is copied from it). Expected results:
see each script's docstring. The GPU script (`bench_gpu`) is separate: it needs a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import bench_distillation, bench_inference, bench_label_everything, bench_prompts
from .common import RESULTS_DIR, machine_info, render_tables

SUITE = {
    "bench_inference": bench_inference,
    "bench_prompts": bench_prompts,
    "bench_distillation": bench_distillation,
    "bench_label_everything": bench_label_everything,
}


def _rerun_note(only: list[str] | None) -> str:
    if only is None:
        return ""
    return "; recombined from saved results" + (f" after rerunning {', '.join(only)}" if only else "")


def to_markdown(combined: dict) -> str:
    """The suite's tables, headed by the machine, the command and the wall time."""
    machine = combined["machine"]
    lines = [
        "# SAM-CLIP benchmarks (CPU)",
        "",
        (
            f"- Machine: {machine['cpu']}, {machine['logical_cores']} logical cores, {machine['torch_threads']} torch "
            f"thread(s); torch {machine['torch']}, transformers {machine.get('transformers')}; load average at the "
            f"end {', '.join(f'{x:.1f}' for x in machine['load_average'] or [])}"
        ),
        f"- Command: `{combined['command']}`; wall time {combined['wall_seconds'] / 60:.1f} min (sum of the scripts)"
        + _rerun_note(combined["rerun_only"]),
        (
            "- Ratios are medians of per-round ratios of cases interleaved in one process, timed on process CPU "
            "time (at 1 thread, the time on an idle core), which stays far steadier than wall time while other jobs "
            "share the cores; bench_inference also shows wall times."
        ),
        "",
    ]
    for name, result in combined["results"].items():
        lines += [
            f"## {name}",
            "",
            f"`{result['command']}` ({result['wall_seconds']:.0f} s)",
            "",
            render_tables(result["tables"]),
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny configs, 1 repeat (CI)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None, help="override every script's default")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--only",
        nargs="*",
        choices=list(SUITE),
        default=None,
        help="rerun only these scripts (none: just recombine); the others' results are read from --output-dir",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    suffix = "-tiny" if args.tiny else ""
    shared = ["--threads", str(args.threads), *["--tiny"] * args.tiny]
    shared += ["--repeats", str(args.repeats)] if args.repeats else []
    default_dir = args.output_dir == RESULTS_DIR
    results = {}
    rerun = list(SUITE) if args.only is None else args.only
    for name, module in SUITE.items():
        if name not in rerun:
            results[name] = json.loads((args.output_dir / f"{name}{suffix}.json").read_text())
            continue
        print(f"\n=== {name} ===", flush=True)
        output = [] if default_dir else ["--output", str(args.output_dir / f"{name}{suffix}.json")]
        results[name] = module.main(shared + output)
    suite_argv = shared + ([] if default_dir else ["--output-dir", str(args.output_dir)])
    combined = {
        "command": " ".join(["python -m benchmarks", *suite_argv]),  # the whole suite's, even after --only
        "rerun_only": args.only,
        "machine": machine_info(args.threads),
        # With --only, the reused scripts' time counts too: this is the suite's cost, not this call's.
        "wall_seconds": sum(result["wall_seconds"] for result in results.values()),
        "results": results,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"latest{suffix}.json").write_text(json.dumps(combined, indent=2))
    (args.output_dir / f"latest{suffix}.md").write_text(to_markdown(combined))
    print(f"\nwrote {args.output_dir / f'latest{suffix}.md'} ({time.perf_counter() - started:.0f} s)")
    return combined


if __name__ == "__main__":
    main()
