"""`samclip distill`: run a SAM-CLIP distillation recipe (default: the mosaic world with the shipped teachers),
then print the table of teachers, baselines, the untrained merge and the distilled model, write
`results.json` and `save_pretrained` the merged model and its processor into `--output-dir`.

An ablation is an override of the recipe: `--set PATH=VALUE` (repeatable; a dotted path into the recipe, the value
parsed as JSON when it parses, else a string), e.g. `--set losses.sam_loss_weight=1 --set model.head.pooling=mean`
or `--set stages.1.training_args.learning_rate=1e-4`. The ablation flags are shorthands: `--lambda X` is
`--set losses.sam_loss_weight=X`, `--naive` is `--set losses.sam_loss_weight=0`, `--pooling P` is
`--set model.head.pooling=P`, `--project-before-pool` is `--set model.head.project_before_pool=true`, `--lora` is
`--set lora.enabled=true`; `--set` comes last, so it wins.

Also runs under accelerate (evaluation on the main process only)::

    accelerate launch -m transformers_samclip.distillation.cli --output-dir outputs/samclip-mosaic

`--plan` prints what a recipe will cost before it runs (steps, FLOPs, memory, GPU-hours; see plan.py)::

    samclip distill --recipe samclip-vit-b16 --plan --num-processes 32 --images-per-second 400
"""

import argparse
import json
import os
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    """The options of `samclip distill`."""
    parser = argparse.ArgumentParser(
        prog="samclip distill", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="mosaic", help="recipe name (mosaic, samclip-vit-b16) or JSON path")
    parser.add_argument(
        "--output-dir",
        default="outputs/samclip-mosaic",
        help="checkpoints, model, results; re-running with the same folder resumes",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per process (default: the cores divided among the processes)",
    )
    parser.add_argument("--max-steps", type=int, default=None, help="override the optimizer steps of every stage")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a recipe entry (repeatable), e.g. losses.sam_loss_weight=1",
    )
    parser.add_argument(
        "--naive",
        action="store_true",
        help="naive baseline: CLIP loss only, no SAM rehearsal (= --set losses.sam_loss_weight=0)",
    )
    parser.add_argument(
        "--lambda",
        dest="sam_loss_weight",
        type=float,
        default=None,
        help="weight of L_SAM (= --set losses.sam_loss_weight=X; default: the recipe's)",
    )
    parser.add_argument("--pooling", choices=("max", "mean"), default=None, help="= --set model.head.pooling=P")
    parser.add_argument(
        "--project-before-pool",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="= --set model.head.project_before_pool=true|false",
    )
    parser.add_argument(
        "--lora",
        action="store_true",
        help="stage 2 trains LoRA adapters on the encoder (PEFT; = --set lora.enabled=true)",
    )
    parser.add_argument("--cache-dir", default=None, help="teacher-output cache (default: OUTPUT_DIR/teacher-cache)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation table")
    plan = parser.add_argument_group("plan (print what the run will cost; nothing trains, no teacher weight loads)")
    plan.add_argument(
        "--plan",
        action="store_true",
        help="print samples and steps per stage, per-step FLOPs, "
        "memory per device and (with --images-per-second) GPU-hours, then exit",
    )
    plan.add_argument(
        "--num-processes", type=int, default=None, help="devices the run will use (default: WORLD_SIZE, else 1)"
    )
    plan.add_argument(
        "--images-per-second",
        type=float,
        default=None,
        help="one device's training throughput in D_CLIP images/s, for GPU-hours",
    )
    return parser


def recipe_overrides(args: argparse.Namespace) -> dict:
    """The recipe overrides the command line asks for: the ablation flags', then each `--set` (later wins)."""
    from .recipe import parse_override

    overrides = {}
    if args.sam_loss_weight is not None:
        overrides["losses.sam_loss_weight"] = args.sam_loss_weight
    if args.naive:
        overrides["losses.sam_loss_weight"] = 0.0
    if args.pooling is not None:
        overrides["model.head.pooling"] = args.pooling
    if args.project_before_pool is not None:
        overrides["model.head.project_before_pool"] = args.project_before_pool
    if args.lora:
        overrides["lora.enabled"] = True
    for text in args.overrides:
        path, value = parse_override(text)
        overrides.pop(path, None)  # re-inserted at the end: overrides apply in order
        overrides[path] = value
    return overrides


def recipe_from_args(args: argparse.Namespace):
    """The effective recipe of a `samclip distill` command line: `--recipe` with its overrides applied."""
    from .recipe import load_recipe

    return load_recipe(args.recipe).override(recipe_overrides(args))


# Data sources read from local files, and the spec keys naming them (a Hub source's data_dir is inside its repo).
LOCAL_SOURCES = ("imagefolder", "coco", "sa1b")
DATA_PATH_KEYS = {"data_dir": "folder", "image_dir": "folder", "annotation_file": "file"}


def check_data_paths(recipe, recipe_argument: str) -> None:
    """The local files and folders a recipe's data entries name exist (checked before teachers or data load)."""
    from .._cli import UsageError, check_path

    clip = recipe.data.clip
    specs = {f"data.clip.{i}": spec for i, spec in enumerate(clip)} if isinstance(clip, list) else {"data.clip": clip}
    specs.update({"data.sam": recipe.data.sam, "calibration": recipe.calibration or {}})
    for where, spec in specs.items():
        if spec.get("data_files") is not None and spec.get("source") in ("webdataset", "sa1b"):
            from .run import data_file_paths

            try:
                data_file_paths(spec["data_files"])
            except (ValueError, FileNotFoundError) as error:
                raise UsageError(f"--recipe {recipe_argument}: {where}.{error}") from None
        if spec.get("source") in LOCAL_SOURCES:
            for key, kind in DATA_PATH_KEYS.items():
                if key in spec:
                    check_path(spec[key], f"--recipe {recipe_argument}: {where}.{key}", kind)


def print_plan(recipe, args: argparse.Namespace) -> int:
    """`--plan`: print the recipe's plan (`plan.plan_recipe`) on `--num-processes` devices; nothing trains."""
    from .._cli import UsageError, check_at_least

    check_at_least("--num-processes", args.num_processes, 1)
    if args.images_per_second is not None and not args.images_per_second > 0:
        raise UsageError(f"--images-per-second must be > 0; got {args.images_per_second}.")
    import torch

    torch.set_num_threads(args.threads or 1)
    from .plan import format_plan, plan_recipe

    num_processes = args.num_processes or int(os.environ.get("WORLD_SIZE", "1"))
    try:
        plan = plan_recipe(
            recipe, num_processes=num_processes, images_per_second=args.images_per_second, max_steps=args.max_steps
        )
    except ValueError as error:
        raise UsageError(f"--recipe {args.recipe} --plan: {error}") from None
    print(format_plan(plan))
    return 0


def main(argv=None) -> int:
    """Entry point of `samclip distill`: path and recipe arguments are checked before any teacher or data loads."""
    from .._cli import UsageError, check_at_least, check_path

    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    check_path(args.output_dir, "--output-dir", "output-folder")
    if args.cache_dir is not None:
        check_path(args.cache_dir, "--cache-dir", "output-folder")
    check_at_least("--threads", args.threads, 1)
    check_at_least("--max-steps", args.max_steps, 1)
    try:
        recipe = recipe_from_args(args)
    except (ValueError, OSError) as error:
        raise UsageError(f"--recipe {args.recipe}: {error}") from None
    if args.plan:
        return print_plan(recipe, args)
    check_data_paths(recipe, args.recipe)
    import torch

    if args.threads is None:
        # Under `accelerate launch` every process gets its share; oversubscribed cores slow each step down.
        args.threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("WORLD_SIZE", "1")))
    torch.set_num_threads(args.threads)
    from .run import run_recipe

    began = time.perf_counter()
    results = run_recipe(
        recipe,
        args.output_dir,
        seed=args.seed,
        max_steps=args.max_steps,
        cache_dir=args.cache_dir,
        evaluate=not args.no_eval,
    )
    if "rows" in results:
        from ..evaluation import format_results_table

        print(format_results_table(results["rows"]))
    if "wall_seconds" in results:
        print(json.dumps({k: v for k, v in results.items() if k not in ("rows", "effective_recipe")}))
        print(
            f"saved the merged model, processor and results.json to {args.output_dir} "
            f"({time.perf_counter() - began:.0f} s)"
        )
    return 0


if __name__ == "__main__":
    from .._cli import run_command

    sys.exit(run_command("distill", main, sys.argv[1:]))
