"""`samclip evaluate MODEL`: evaluate a saved SAM-CLIP model (folder or Hub id), or the word `teachers` for the
shipped mosaic-world teachers and the two baselines, on a suite; print a markdown table and write JSON with every
number, the seed, the sizes, the wall time and the software versions.

    samclip evaluate teachers --threads 1                       # teacher + baseline rows, mosaic test split
    samclip evaluate runs/distill/final --teachers --threads 1  # merged model row, teacher rows beside it
    samclip evaluate MODEL --suite imagefolder:/data/pets       # zero-shot top-1 on an image folder
    samclip evaluate MODEL --suite user/dataset --split test    # a Hub dataset (semantic seg. if it has a map column)
    samclip evaluate mosaic --num-items 0 --num-mosaics 8 --gallery gallery.png  # + a PNG of 8 segmented mosaics

The mosaic suite with its defaults (`evaluation.protocol.PROTOCOL`: 10,000 items, 500 mosaics), 1 torch thread
on the shared 2-core machine under load: ~5 min for `teachers`, ~3 min for a merged model (add ~5 min for
`--teachers`). What the rows should reach: see `mosaic/evaluation.py`.

Arguments are checked before anything loads (a bad one: `samclip evaluate: ...` on stderr, exit 2). Unreadable images
of an imagefolder or Hub suite are skipped: a warning gives their count and first file names, and the JSON records
`skipped_samples`. The JSON is written atomically (an interrupted run leaves the previous file whole).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ._atomic import write_text_atomic
from ._cli import UsageError, check_at_least, check_model_source, check_path
from .evaluation._common import subset, versions
from .evaluation.classification import evaluate_zero_shot_classification
from .evaluation.protocol import PROTOCOL
from .evaluation.recognition import crop_labeller, one_pass_labeller, recognition_row
from .evaluation.results import format_results_table
from .evaluation.semantic import (
    evaluate_instance_semantic_segmentation,
    evaluate_maskclip_baseline,
    evaluate_semantic_segmentation,
)
from .mosaic.evaluation import evaluate_samclip_on_mosaic, evaluate_teachers_on_mosaic

SEMANTIC_COLUMNS = ("semantic_map", "annotation", "segmentation", "label_map", "semantic_segmentation")
INSTANCE_COLUMNS = ("instance_masks", "masks")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="samclip evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "model",
        help="a saved SamClipModel folder or Hub id, 'mosaic' (the mosaic model: yours or the "
        "shipped one), or 'teachers'",
    )
    parser.add_argument("--suite", default="mosaic", help="mosaic | imagefolder:PATH | HUB_DATASET_ID")
    parser.add_argument("--split", default=PROTOCOL.split, help="split of an imagefolder/Hub suite")
    parser.add_argument(
        "--num-items", type=int, default=PROTOCOL.num_items, help="mosaic: test item views for zero-shot top-1"
    )
    parser.add_argument(
        "--num-mosaics", type=int, default=PROTOCOL.num_mosaics, help="mosaic: test mosaics for segmentation"
    )
    parser.add_argument(
        "--calibration-mosaics",
        type=int,
        default=PROTOCOL.calibration_mosaics,
        help="mosaic: train mosaics for the background threshold (also: train images of a dataset)",
    )
    parser.add_argument("--limit", type=int, help="imagefolder/Hub: evaluate the first N images only")
    parser.add_argument("--seed", type=int, default=PROTOCOL.seed)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    parser.add_argument("--output", type=Path, default=Path("results.json"), help="JSON file to write")
    parser.add_argument("--teachers", action="store_true", help="mosaic: add the teacher and baseline rows")
    parser.add_argument("--teachers-dir", type=Path, help="teachers saved elsewhere (default: the shipped ones)")
    parser.add_argument(
        "--gallery",
        type=Path,
        metavar="PATH",
        help="mosaic: also write a PNG of 8 test mosaics (image, ground truth, the model plain and "
        "SAM-refined, the SAM+CLIP cascade when the teachers are there); see mosaic/gallery.py",
    )
    return parser


def _load_model(name: str):
    if name == "mosaic":  # your own `samclip distill` output, else the distilled model the package ships
        from .mosaic.model import load_mosaic_model

        loaded = load_mosaic_model()
        return loaded.model.eval(), loaded.processor
    # Importing this package registered SAM-CLIP with the Auto classes; remote code covers other versions.
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(name, trust_remote_code=True).eval()
    return model, AutoProcessor.from_pretrained(name, trust_remote_code=True)


def _suite_source(suite: str) -> tuple[str, dict]:
    """`datasets` path and options of an imagefolder/Hub suite."""
    if suite.startswith("imagefolder:"):
        return "imagefolder", {"data_dir": suite.split(":", 1)[1]}
    return suite, {}


def _load_suite(suite: str, split: str):
    import datasets

    path, options = _suite_source(suite)
    return datasets.load_dataset(path, split=split, **options)


def _split_names(suite: str) -> set[str]:
    """The splits a suite declares (its folder layout or its card), read without loading any of them."""
    import datasets

    path, options = _suite_source(suite)
    builder = datasets.load_dataset_builder(path, **options)
    return {str(name) for name in (builder.info.splits or {})} | {
        str(name) for name in (builder.config.data_files or {})
    }


def _find_columns(dataset) -> dict:
    """Image, class-label and semantic-map columns of a dataset, and its class names (None where absent)."""
    import datasets

    features = dataset.features
    images = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
    labels = [name for name, feature in features.items() if isinstance(feature, datasets.ClassLabel)]
    semantic = [name for name in SEMANTIC_COLUMNS if name in features]
    image_column = next((name for name in images if name not in semantic), None)
    # Instances: a list of mask images beside a list of class labels (the mosaic world's layout).
    instance_labels = [
        name
        for name, feature in features.items()
        if isinstance(feature, datasets.List) and isinstance(feature.feature, datasets.ClassLabel)
    ]
    instances = [name for name in INSTANCE_COLUMNS if name in features] if instance_labels else []
    class_names = (
        features[labels[0]].names if labels else features[instance_labels[0]].feature.names if instances else None
    )
    return {
        "image": image_column,
        "label": labels[0] if labels else None,
        "semantic": semantic[0] if semantic else None,
        "instances": (instances[0], instance_labels[0]) if instances else None,
        "class_names": class_names,
    }


def _recognition_rows(args, dataset, columns, model, processor) -> tuple[dict[str, dict], int]:
    """Recognition on the dataset's ground-truth instance masks: the CLIP teacher from crops and masked crops, or a
    SAM-CLIP model from crops (its CLIP path) and in one pass; returns the rows and the unreadable images skipped."""
    masks, labels = columns["instances"]
    if (masks, labels) != ("instance_masks", "labels"):
        dataset = dataset.rename_columns({masks: "instance_masks", labels: "labels"})
    names = columns["class_names"]
    if args.model == "teachers":
        clip, clip_processor = model["clip_model"], model["clip_processor"]
        labellers = {
            "crop": crop_labeller(clip, clip_processor, names),
            "masked_crop": crop_labeller(clip, clip_processor, names, masked=True),
        }
    else:
        labellers = {
            "crop": crop_labeller(model, processor, names),
            "one_pass": one_pass_labeller(model, processor, names),
        }
    row, skipped = recognition_row(labellers, dataset, len(names), limit=args.limit, image_column=columns["image"])
    return {"CLIP teacher" if args.model == "teachers" else args.model: row}, skipped


def _calibration_images(args):
    """The first `--calibration-mosaics` train images of the suite for the background threshold; None (background is
    never predicted) when the evaluated split is train itself (calibrating on evaluated images would be cheating),
    when the suite declares no train split, or with `--calibration-mosaics 0`. A train split that is declared but does
    not load is a usage error: calibration is never turned off silently."""
    if args.split == "train" or args.calibration_mosaics == 0 or "train" not in _split_names(args.suite):
        reason = "--calibration-mosaics 0" if args.calibration_mosaics == 0 else "no separate train split"
        print(f"{args.suite}: {reason} to calibrate the background threshold; background is never predicted.")
        return None
    try:
        train = _load_suite(args.suite, "train")
    except Exception as error:  # datasets raises many types here; each means the same to the user
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UsageError(
            f"--suite {args.suite}: its train split (the background threshold's calibration images) does not load "
            f"({type(error).__name__}: {detail}); fix it, or pass --calibration-mosaics 0 to calibrate nothing."
        ) from error
    return subset(train, args.calibration_mosaics)


def _evaluate_dataset(args, model, processor) -> tuple[dict[str, dict], int]:
    """Zero-shot top-1 (a ClassLabel column) and semantic mIoU (a semantic-map column) on an imagefolder/Hub suite;
    returns the rows and the number of unreadable images skipped."""
    dataset = _load_suite(args.suite, args.split)
    columns = _find_columns(dataset)
    if columns["image"] is None or columns["class_names"] is None:
        raise ValueError(
            f"{args.suite}: need an Image column and a ClassLabel column, or instance masks "
            f"({' or '.join(INSTANCE_COLUMNS)}) with a list of ClassLabel (found {columns})."
        )
    if columns["label"] is None:  # instances only: how well each ground-truth mask gets its name
        return _recognition_rows(args, dataset, columns, model, processor)
    is_teachers = args.model == "teachers"
    clip, clip_processor = (model["clip_model"], model["clip_processor"]) if is_teachers else (model, processor)
    name = "CLIP teacher" if is_teachers else args.model
    zero_shot = evaluate_zero_shot_classification(
        clip,
        clip_processor,
        dataset,
        columns["class_names"],
        image_column=columns["image"],
        label_column=columns["label"],
        limit=args.limit,
    )
    rows = {name: {"zero_shot_top1": zero_shot["top1"]}}
    # Every pass reads the same images, so the first pass's count is the suite's.
    skipped = zero_shot["skipped_samples"]
    if columns["semantic"] is None:
        print(f"{args.suite}: no semantic-map column ({', '.join(SEMANTIC_COLUMNS)}); semantic segmentation skipped.")
        return rows, skipped
    calibration = _calibration_images(args)
    common = dict(
        calibration_dataset=calibration,
        image_column=columns["image"],
        semantic_column=columns["semantic"],
        limit=args.limit,
    )
    if is_teachers:
        rows["MaskCLIP baseline"] = {
            "semseg_miou": evaluate_maskclip_baseline(clip, clip_processor, dataset, columns["class_names"], **common)[
                "miou"
            ]
        }
    else:
        for refine, key in ((False, "semseg_miou"), (True, "semseg_refined_miou")):
            rows[name][key] = evaluate_semantic_segmentation(
                model, processor, dataset, columns["class_names"], refine=refine, **common
            )["miou"]
        rows[name]["semseg_instances_miou"] = evaluate_instance_semantic_segmentation(
            model,
            processor,
            dataset,
            columns["class_names"],
            image_column=columns["image"],
            semantic_column=columns["semantic"],
            limit=args.limit,
        )["miou"]
    return rows, skipped


def _check_arguments(args) -> None:
    """Every path and number argument, before any model or data loads."""
    if args.gallery and args.suite != "mosaic":
        raise UsageError(f"--gallery draws mosaics: it needs --suite mosaic, not {args.suite!r}")
    if args.gallery and args.model == "teachers":
        raise UsageError(
            "--gallery shows a SAM-CLIP model's segmentation; 'teachers' has none: pass a model "
            "(e.g. 'mosaic'), the cascade column comes from the teachers anyway"
        )
    if args.model != "teachers":
        check_model_source(args.model)
    if args.suite.startswith("imagefolder:"):
        check_path(args.suite.split(":", 1)[1], "--suite imagefolder:", "folder")
    if args.teachers_dir is not None and (args.model == "teachers" or args.teachers):  # the gallery can do without
        check_path(args.teachers_dir, "--teachers-dir", "folder")
    check_path(args.output, "--output", "output-file")
    if args.gallery:
        check_path(args.gallery, "--gallery", "output-file")
    for option, minimum in (
        ("threads", 1),
        ("limit", 1),
        ("num_items", 0),
        ("num_mosaics", 0),
        ("calibration_mosaics", 0),
    ):
        check_at_least(f"--{option.replace('_', '-')}", getattr(args, option), minimum)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `samclip evaluate`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    _check_arguments(args)
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    teachers = None
    teacher_rows = args.model == "teachers" or (args.teachers and args.suite == "mosaic")
    if teacher_rows or args.gallery:  # the gallery wants them for its cascade column only
        from .mosaic.teachers import SHIPPED_TEACHERS_DIR, load_mosaic_teachers

        try:
            teachers = load_mosaic_teachers(teachers_dir=args.teachers_dir or SHIPPED_TEACHERS_DIR)
        except FileNotFoundError as error:
            if teacher_rows:
                print(f"samclip evaluate: {error}", file=sys.stderr)
                return 1
            print(f"samclip evaluate: {error}; the gallery leaves out the cascade column.")
    model, processor = (teachers, None) if args.model == "teachers" else _load_model(args.model)
    mosaic_sizes = dict(
        num_items=args.num_items,
        num_mosaics=args.num_mosaics,
        seed=args.seed,
        calibration_mosaics=args.calibration_mosaics,
    )
    skipped = 0
    if args.suite != "mosaic":
        rows, skipped = _evaluate_dataset(args, model, processor)
    else:
        rows = evaluate_teachers_on_mosaic(teachers, **mosaic_sizes) if teacher_rows else {}
        if args.model != "teachers":
            rows[args.model] = evaluate_samclip_on_mosaic(model, processor, **mosaic_sizes)
    table = format_results_table(rows)
    print(table)
    if args.gallery:
        from .mosaic.gallery import mosaic_gallery

        mosaic_gallery(
            model, processor, teachers, args.gallery, seed=args.seed, calibration_mosaics=args.calibration_mosaics
        )
        print(f"wrote {args.gallery}")
    record = {
        "command": "samclip evaluate " + " ".join(argv),
        "model": args.model,
        "suite": args.suite,
        "split": args.split if args.suite != "mosaic" else "test",
        "seed": args.seed,
        "threads": args.threads,
        "sizes": mosaic_sizes if args.suite == "mosaic" else {"limit": args.limit},
        "rows": rows,
        "table": table,
        "gallery": str(args.gallery) if args.gallery else None,
        "skipped_samples": skipped,
        "wall_seconds": round(time.perf_counter() - began, 1),
        "versions": versions(),
    }
    write_text_atomic(args.output, json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    from ._cli import run_command

    sys.exit(run_command("evaluate", main, sys.argv[1:]))
