"""`samclip distill`: run a SAM-CLIP distillation recipe (default: the mosaic world with the shipped teachers),
then print the table of teachers, baselines, the untrained merge and the distilled model, write
`results.json` and `save_pretrained` the merged model and its processor into `--output-dir`.

Also runs under accelerate (evaluation on the main process only)::

    accelerate launch -m transformers_samclip.distillation.cli --output-dir outputs/samclip-mosaic
"""

import argparse
import json
import os
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    """The options of `samclip distill`."""
    parser = argparse.ArgumentParser(prog="samclip distill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="mosaic", help="recipe name (mosaic, samclip-vit-b16) or JSON path")
    parser.add_argument("--output-dir", default="outputs/samclip-mosaic", help="checkpoints, model, results; "
                        "re-running with the same folder resumes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: the cores divided among the processes)")
    parser.add_argument("--max-steps", type=int, default=None, help="override the optimizer steps of every stage")
    parser.add_argument("--naive", action="store_true", help="naive baseline: CLIP loss only, no SAM rehearsal")
    parser.add_argument("--lambda", dest="sam_loss_weight", type=float, default=None, help="weight of L_SAM (10)")
    parser.add_argument("--pooling", choices=("max", "mean"), default=None)
    parser.add_argument("--project-before-pool", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--lora", action="store_true", help="stage 2 trains LoRA adapters on the encoder (PEFT)")
    parser.add_argument("--cache-dir", default=None, help="teacher-output cache (default: OUTPUT_DIR/teacher-cache)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation table")
    return parser


def main(argv=None) -> int:
    """Entry point of `samclip distill`."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    if args.threads is None:
        # Under `accelerate launch` every process gets its share; oversubscribed cores slow each step down.
        args.threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("WORLD_SIZE", "1")))
    torch.set_num_threads(args.threads)
    from .run import load_recipe, run_recipe

    began = time.perf_counter()
    results = run_recipe(
        load_recipe(args.recipe), args.output_dir, seed=args.seed, max_steps=args.max_steps, naive=args.naive,
        sam_loss_weight=args.sam_loss_weight, pooling=args.pooling, project_before_pool=args.project_before_pool,
        lora=args.lora, cache_dir=args.cache_dir, evaluate=not args.no_eval,
    )
    if "rows" in results:
        from ..evaluation import format_results_table

        print(format_results_table(results["rows"]))
    if "wall_seconds" in results:
        print(json.dumps({k: v for k, v in results.items() if k != "rows"}))
        print(f"saved the merged model, processor and results.json to {args.output_dir} "
              f"({time.perf_counter() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
