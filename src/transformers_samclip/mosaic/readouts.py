"""Ablation: the CLIP head's dense read-out (MaskCLIP value path, ClearCLIP, NACLIP, SCLIP) and the mask pooling of
label-everything, measured on a merged model (default: the shipped mosaic model) without retraining.

Run::

    python -m transformers_samclip.mosaic.readouts --threads 1            # selection on TRAIN mosaics
    python -m transformers_samclip.mosaic.readouts --split test --threads 1  # confirmation on test mosaics

Per read-out: plain and SAM-refined semantic mIoU (per class), with the background threshold calibrated for that
read-out on other train mosaics; per read-out x mask pooling: instance AP50 / AP / PQ (every mask kept, the
default); last, the masks labelled by their crops through the CLIP path instead (`label_source="crops"`). Prints a
markdown table and writes JSON (`--output`). ~8 min on 1 thread with 100 mosaics.

    python -m transformers_samclip.mosaic.readouts --text-to-mask --threads 1  # text-to-mask options, train

With `--text-to-mask` (issue 19): the plain map with the trunk-affinity read-out at each temperature, then per
prompt set of label-everything (grid, peaks + the centre or a sparse grid) the painted semantic map, AP50 / PQ /
F1@0.5 (every mask kept, and with the "none of these" threshold calibrated for F1 on the calibration mosaics) and
time, beside the teachers' cascade. ~15 min on 1 thread with 100 mosaics. `--timing` times label-everything with the
grid, with the default peaks (+ the centre), with peaks + a 4x4 grid and the cascade, each on each mosaic in turn
(medians; ~1 min with 40 mosaics). The defaults of `SamClipHeadConfig.dense_readout` and
`SamClipMaskGeneratorOptions.mask_pooling` are the best on train mosaics (docs/ablations.md).
"""

from __future__ import annotations

import argparse
import json

import torch

from ..evaluation.classification import class_text_embeddings
from ..evaluation.instance import evaluate_instance_segmentation, samclip_instance_segmenter
from ..evaluation.semantic import calibrate_background_threshold, evaluate_semantic_segmentation, samclip_cosine_maps
from ..modeling import DENSE_READOUTS

MASK_POOLINGS = ("mean", "max", "mean_tokens")


def set_dense_readout(model, readout: str) -> None:
    """Switch a loaded model's dense read-out (config and head) in place."""
    if readout not in DENSE_READOUTS:
        raise ValueError(f"readout must be one of {DENSE_READOUTS}, got {readout!r}.")
    model.config.head_config.dense_readout = readout
    model.clip_head.dense_readout = readout


def ablate_readouts(
    model, processor, mosaics, calibration, class_names, readouts=DENSE_READOUTS, poolings=MASK_POOLINGS
) -> dict:
    """`{readout: {"semseg_miou", "semseg_refined_miou", "semseg_per_class_iou", "semseg_refined_per_class_iou",
    "background_threshold", "instance": {pooling: metrics}}}` on `mosaics`, thresholds calibrated on
    `calibration`; under `"crops"`, the instance metrics of `label_source="crops"` (value read-out)."""
    results = {}
    for readout in readouts:
        set_dense_readout(model, readout)
        class_embeds = class_text_embeddings(model, processor.tokenizer, class_names)
        threshold = calibrate_background_threshold(
            samclip_cosine_maps(model, processor, class_embeds, processor.dense_size), calibration, class_names
        )
        row = {"background_threshold": threshold}
        for refine, key in ((False, "semseg"), (True, "semseg_refined")):
            result = evaluate_semantic_segmentation(
                model, processor, mosaics, class_names, refine=refine, background_threshold=threshold
            )
            row[f"{key}_miou"], row[f"{key}_per_class_iou"] = result["miou"], result["per_class_iou"]
        row["instance"] = {
            pooling: evaluate_instance_segmentation(
                samclip_instance_segmenter(model, processor, class_names, mask_pooling=pooling),
                mosaics,
                class_names,
                desc=f"{readout}/{pooling}",
            )
            for pooling in poolings
        }
        results[readout] = row
    set_dense_readout(model, DENSE_READOUTS[0])
    results["crops"] = evaluate_instance_segmentation(
        samclip_instance_segmenter(model, processor, class_names, label_source="crops"),
        mosaics,
        class_names,
        desc="crops",
    )
    return results


def format_ablation(results: dict) -> str:
    """Markdown table: one row per read-out x pooling."""
    lines = ["| read-out | semseg | refined | pooling | AP50 | AP | PQ |", "|---|---:|---:|---|---:|---:|---:|"]
    for readout, row in results.items():
        if readout == "crops":
            lines.append(
                f"| (crops through the CLIP path) | | | | {row['ap50']:.3f} | {row['ap']:.3f} | {row['pq']:.3f} |"
            )
            continue
        for pooling, metrics in row["instance"].items():
            lines.append(
                f"| {readout} | {row['semseg_miou']:.3f} | {row['semseg_refined_miou']:.3f} | {pooling} | "
                f"{metrics['ap50']:.3f} | {metrics['ap']:.3f} | {metrics['pq']:.3f} |"
            )
    return "\n".join(lines)


# Prompt sets of label-everything compared by the text-to-mask ablation: SamClipMaskGenerator options.
PROMPT_VARIANTS = {
    "grid 8x8": dict(prompts="grid", points_per_side=8),
    "peaks 8 + centre": dict(prompts="peaks", num_peaks=8, peaks_grid_side=1),
    "peaks 8 + grid 2x2": dict(prompts="peaks", num_peaks=8, peaks_grid_side=2),
    "peaks 8 + grid 4x4": dict(prompts="peaks", num_peaks=8, peaks_grid_side=4),
    "peaks 16 + grid 4x4": dict(prompts="peaks", num_peaks=16, peaks_grid_side=4),
}
AFFINITY_TEMPERATURES = (None, 0.1, 0.05)


def set_dense_affinity(model, temperature: float | None) -> None:
    """Switch a loaded model's dense affinity read-out (config and head) in place (None: off)."""
    model.config.head_config.dense_affinity_temperature = temperature
    model.clip_head.dense_affinity_temperature = temperature


def ablate_text_to_mask(model, processor, mosaics, calibration, class_names, teachers=None) -> dict:
    """The inference-side text-to-mask options, measured on `mosaics` with thresholds calibrated on `calibration`
    (both train mosaics for choices): `"plain"` semantic mIoU per affinity temperature (and SAM-refined for each);
    `"prompts"`: per :data:`PROMPT_VARIANTS` the painted semantic mIoU and the instance metrics (AP50, PQ,
    precision / recall / F1@0.5 with every mask kept and with the F1-calibrated "none of these" threshold, time
    per image); `"cascade"`: the teachers' instance metrics and time, when `teachers` are given."""
    from ..evaluation.instance import calibrate_instance_score_threshold, cascade_instance_segmenter
    from ..evaluation.semantic import evaluate_instance_semantic_segmentation

    results = {"plain": {}, "prompts": {}}
    original = model.config.head_config.dense_affinity_temperature
    class_embeds = class_text_embeddings(model, processor.tokenizer, class_names)
    for temperature in AFFINITY_TEMPERATURES:
        set_dense_affinity(model, temperature)
        threshold = calibrate_background_threshold(
            samclip_cosine_maps(model, processor, class_embeds, processor.dense_size), calibration, class_names
        )
        results["plain"][str(temperature)] = {
            key: evaluate_semantic_segmentation(
                model, processor, mosaics, class_names, refine=refine, background_threshold=threshold
            )["miou"]
            for refine, key in ((False, "semseg_miou"), (True, "semseg_refined_miou"))
        } | {"background_threshold": threshold}
    set_dense_affinity(model, original)
    for name, options in PROMPT_VARIANTS.items():
        calibrated = calibrate_instance_score_threshold(model, processor, calibration, class_names, **options)
        instance = evaluate_instance_segmentation(
            samclip_instance_segmenter(model, processor, class_names, score_threshold=0.0, **options),
            mosaics,
            class_names,
            desc=name,
            score_thresholds={"rejected": calibrated["threshold"]},
        )
        painted = {
            f"painted_miou{suffix}": evaluate_instance_semantic_segmentation(
                model, processor, mosaics, class_names, score_threshold=threshold, **options
            )["miou"]
            for suffix, threshold in (("", 0.0), ("_rejected", calibrated["threshold"]))
        }
        results["prompts"][name] = {
            **painted,
            **{
                key: instance[key]
                for key in (
                    "ap50",
                    "ap",
                    "pq",
                    "precision",
                    "recall",
                    "f1",
                    "seconds_per_image",
                    "instances_per_image",
                )
            },
            "rejected": instance["rejected"]["rejected"],
        }
    if teachers is not None:
        cascade = evaluate_instance_segmentation(
            cascade_instance_segmenter(
                teachers["sam_model"],
                teachers["sam_processor"],
                teachers["clip_model"],
                teachers["clip_processor"],
                class_names,
            ),
            mosaics,
            class_names,
            desc="cascade",
        )
        results["cascade"] = {
            key: cascade[key]
            for key in ("ap50", "ap", "pq", "precision", "recall", "f1", "seconds_per_image", "instances_per_image")
        }
    return results


def time_label_everything(model, processor, teachers, mosaics, class_names) -> dict:
    """Median seconds per mosaic of label-everything with each of :data:`PROMPT_VARIANTS`' grid and default peaks
    and of the teachers' cascade, each method run on each mosaic in turn (after one warm-up) so that the machine's
    load weighs on all alike; `{name: {"median_seconds", "mean_seconds", "vs_cascade"}}`."""
    import statistics
    import time

    from ..evaluation._common import rgb
    from ..evaluation.instance import cascade_instance_segmenter

    segmenters = {
        name: samclip_instance_segmenter(model, processor, class_names, **PROMPT_VARIANTS[name])
        for name in ("grid 8x8", "peaks 8 + centre", "peaks 8 + grid 4x4")
    }
    segmenters["SAM+CLIP cascade (teachers)"] = cascade_instance_segmenter(
        teachers["sam_model"],
        teachers["sam_processor"],
        teachers["clip_model"],
        teachers["clip_processor"],
        class_names,
    )
    images = [rgb(image) for image in mosaics["image"]]
    seconds = {name: [] for name in segmenters}
    for segment in segmenters.values():
        segment(images[:1])
    for image in images:
        for name, segment in segmenters.items():
            began = time.perf_counter()
            segment([image])
            seconds[name].append(time.perf_counter() - began)
    cascade = statistics.median(seconds["SAM+CLIP cascade (teachers)"])
    return {
        name: {
            "median_seconds": statistics.median(values),
            "mean_seconds": statistics.fmean(values),
            "vs_cascade": statistics.median(values) / cascade,
        }
        for name, values in seconds.items()
    }


def format_text_to_mask(results: dict) -> str:
    """Markdown tables of :func:`ablate_text_to_mask`."""
    lines = ["| affinity temperature | plain semseg | refined semseg |", "|---|---:|---:|"]
    for temperature, row in results["plain"].items():
        lines.append(f"| {temperature} | {row['semseg_miou']:.3f} | {row['semseg_refined_miou']:.3f} |")
    lines += [
        "",
        "| prompts | painted semseg | painted, none-of-these | AP50 | PQ | P | R | F1 | F1 none-of-these "
        "(threshold) | instances | ms / mosaic |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = dict(results["prompts"])
    if "cascade" in results:
        rows["SAM+CLIP cascade (teachers)"] = results["cascade"]
    for name, row in rows.items():
        rejected = row.get("rejected")
        lines.append(
            f"| {name} | {row.get('painted_miou', float('nan')):.3f} "
            f"| {row.get('painted_miou_rejected', float('nan')):.3f} "
            f"| {row['ap50']:.3f} | {row['pq']:.3f} | {row['precision']:.3f} | {row['recall']:.3f} "
            f"| {row['f1']:.3f} | "
            + (f"{rejected['f1']:.3f} ({rejected['threshold']:.2f})" if rejected else "-")
            + f" | {row['instances_per_image']:.1f} | {1000 * row['seconds_per_image']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    """Command line: see the module docstring."""
    from ..modeling import SamClipModel, SamClipProcessor
    from .fashion_mnist import FASHION_MNIST_CLASSES
    from .model import SHIPPED_MOSAIC_MODEL_DIR
    from .mosaics import make_mosaic_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="merged model folder (default: the shipped mosaic model)")
    parser.add_argument("--split", default="train", choices=("train", "test"))
    parser.add_argument("--num-mosaics", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None, help="JSON file for the results")
    parser.add_argument(
        "--text-to-mask",
        action="store_true",
        help="instead: affinity read-out, prompt sets, painted semantic map and none-of-these "
        "(with the teachers' cascade for time)",
    )
    parser.add_argument(
        "--timing",
        action="store_true",
        help="instead: label-everything time per mosaic, grid vs peaks vs the cascade, interleaved",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = args.model or SHIPPED_MOSAIC_MODEL_DIR
    model, processor = SamClipModel.from_pretrained(path).eval(), SamClipProcessor.from_pretrained(path)
    # Selection mosaics (seed 0) and calibration mosaics (seed 1) never overlap the test mosaics (test items).
    mosaics = make_mosaic_dataset(args.split, args.num_mosaics, seed=0)
    calibration = make_mosaic_dataset("train", 50, seed=1)
    if args.timing:
        from .teachers import load_mosaic_teachers

        results = time_label_everything(model, processor, load_mosaic_teachers(), mosaics, FASHION_MNIST_CLASSES)
        for name, row in results.items():
            print(f"| {name} | {1000 * row['median_seconds']:.0f} ms | {row['vs_cascade']:.2f}x |")
    elif args.text_to_mask:
        from .teachers import load_mosaic_teachers

        results = ablate_text_to_mask(
            model, processor, mosaics, calibration, FASHION_MNIST_CLASSES, load_mosaic_teachers()
        )
        print(format_text_to_mask(results))
    else:
        results = ablate_readouts(model, processor, mosaics, calibration, FASHION_MNIST_CLASSES)
        print(format_ablation(results))
    if args.output:
        with open(args.output, "w") as file:
            json.dump({"split": args.split, "num_mosaics": args.num_mosaics, "results": results}, file, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
