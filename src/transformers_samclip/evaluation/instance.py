"""Open-vocabulary instance ("label everything") and panoptic segmentation: SAM-CLIP from one encoder pass against
the SAM-everything + CLIP-crops cascade of its teachers, with class-aware mask AP and panoptic quality.

Run (test mosaics; the cascade row needs the teachers)::

    samclip evaluate mosaic --teachers --num-items 0 --num-mosaics 200 --threads 1

Ground truth: every visible item of a mosaic is an instance; items less than 30% visible are ignored (neither found
nor missed), as in the prompted evaluation. Both methods share SAM's automatic-mask selection (the model package's
`select_generated_masks`; the cascade prompts an 8x8 point grid, SAM-CLIP by default the peaks of its own class-score
map plus a 4x4 grid). Precision, recall and F1@0.5 count every kept mask; "none of these" is measured with the
confidence threshold of :func:`calibrate_instance_score_threshold`, calibrated on train mosaics. Time per 128 px
mosaic, 1 thread, quiet machine (`python -m transformers_samclip.mosaic.readouts --timing`): ~60 ms SAM-CLIP with
peak prompts, ~135 ms with the 8x8 grid, ~130 ms cascade.
Target (issue 19): SAM-CLIP >= the cascade on AP50 and PQ at <= 0.6x its time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from ..modeling import SamClipMaskGenerator
from ._common import SkippedSamples, iter_batches, model_device, rgb, sam_view, subset
from .classification import class_text_embeddings
from .geometry import mask_to_box
from .metrics import instance_segmentation_metrics
from .prompted import _instances
from .protocol import PROTOCOL
from .semantic import cascade_instances

InstanceSegmenter = Callable[[list], list]  # images -> per image {"masks" (M, H, W) bool, "class_ids", "scores"}


def samclip_instance_segmenter(model, processor, class_names, templates=None, **options) -> InstanceSegmenter:
    """SAM-CLIP's `SamClipMaskGenerator.instance_segmentation` as a segmenter (masks at the original size);
    `options` are the generator's options."""
    model.eval()
    class_embeds = class_text_embeddings(model, processor.tokenizer, class_names, templates)
    generator = SamClipMaskGenerator(model, **options)

    @torch.no_grad()
    def segment(images):
        encoding = sam_view(processor, images)
        outputs = generator.instance_segmentation(
            encoding["pixel_values"].to(model_device(model), model.dtype),
            class_embeds,
            input_sizes=encoding["reshaped_input_sizes"].tolist(),
        )
        instances = processor.post_process_instance_segmentation(
            outputs, target_sizes=encoding["original_sizes"], reshaped_input_sizes=encoding["reshaped_input_sizes"]
        )
        return [{"masks": i["masks"], "class_ids": i["labels"], "scores": i["scores"]} for i in instances]

    return segment


def cascade_instance_segmenter(
    sam_model, sam_processor, clip_model, clip_processor, class_names, templates=None, **options
) -> InstanceSegmenter:
    """The teachers' cascade (:func:`cascade_instances`) as a segmenter; `options` go to it (`masked`) and on to
    `segment_everything`."""
    sam_model.eval()
    clip_model.eval()
    class_embeds = class_text_embeddings(clip_model, clip_processor.tokenizer, class_names, templates)

    @torch.no_grad()
    def segment(images):
        return [
            cascade_instances(
                sam_model, sam_processor, clip_model, clip_processor, class_embeds, rgb(image), **options
            )
            for image in images
        ]

    return segment


def instance_targets(
    rows,
    index: int = 0,
    min_visible_fraction: float = PROTOCOL.min_visible_fraction,
    masks_column: str = "instance_masks",
    labels_column: str = "labels",
    visible_fraction_column: str = "visible_fraction",
) -> dict:
    """Ground truth of row `index` of a batch: `{"masks", "class_ids", "ignore"}`, ignoring empty instances and
    those less than `min_visible_fraction` visible (when the dataset records it)."""
    masks, keep = _instances(rows, set(rows), masks_column, visible_fraction_column, min_visible_fraction, index)
    class_ids = np.asarray(rows[labels_column][index], dtype=np.int64)
    if not masks:
        return {"masks": np.zeros((0, 1, 1), bool), "class_ids": class_ids, "ignore": np.zeros(0, bool)}
    ignore = np.ones(len(masks), dtype=bool)
    ignore[keep] = False
    return {"masks": np.stack(masks), "class_ids": class_ids, "ignore": ignore}


def box_masks(masks) -> np.ndarray:
    """Each `(H, W)` mask of `(M, H, W)` replaced by its filled tight box: the mask AP of these is box AP (the IoU of
    two filled boxes is their box IoU), what a detector's boxes score."""
    masks = np.asarray(masks, dtype=bool)
    boxes = np.zeros_like(masks)
    for index, mask in enumerate(masks):
        if mask.any():
            x0, y0, x1, y1 = (int(v) for v in mask_to_box(mask))
            boxes[index, y0 : y1 + 1, x0 : x1 + 1] = True
    return boxes


def collect_instances(
    segment: InstanceSegmenter,
    dataset,
    limit: int | None = None,
    batch_size: int = 1,
    desc: str = "instance segmentation",
    image_column: str = "image",
    **target_options,
) -> dict:
    """Run `segment` over a dataset: `{"predictions", "targets", "seconds", "skipped"}`, predictions as numpy dicts
    (`masks`, `class_ids`, `scores`), targets from :func:`instance_targets`, `seconds` the wall time of `segment`
    alone; unreadable images are skipped and counted."""
    dataset = subset(dataset, limit)
    predictions, targets, seconds = [], [], 0.0
    skipped = SkippedSamples()
    for _, rows in iter_batches(dataset, batch_size, desc, image_column, skipped):
        began = time.perf_counter()
        outputs = segment([rgb(image) for image in rows[image_column]])
        seconds += time.perf_counter() - began
        for index, output in enumerate(outputs):
            predictions.append(
                {key: np.asarray(torch.as_tensor(output[key]).cpu()) for key in ("masks", "class_ids", "scores")}
            )
            targets.append(instance_targets(rows, index, **target_options))
    return {"predictions": predictions, "targets": targets, "seconds": seconds, "skipped": skipped.count}


def above_score(predictions: list[dict], threshold: float) -> list[dict]:
    """The predictions whose score is at least `threshold` (what `score_threshold` keeps)."""
    return [
        {key: value[prediction["scores"] >= threshold] for key, value in prediction.items()}
        for prediction in predictions
    ]


def calibrate_instance_score_threshold(
    model, processor, dataset, class_names, templates=None, num_candidates: int = 21, **options
) -> dict:
    """The "none of these" confidence threshold of label-everything that maximises instance F1@0.5 on `dataset`
    (use TRAIN mosaics): SAM-CLIP's instances with every mask kept, then candidate thresholds at `num_candidates`
    quantiles (0 to 0.9) of their scores. Returns `{"threshold", "f1", "f1_all_masks"}`; store the threshold as
    `config.instance_score_threshold` to make it the model's default."""
    segment = samclip_instance_segmenter(model, processor, class_names, templates, score_threshold=0.0, **options)
    collected = collect_instances(segment, dataset, desc="instance threshold calibration")
    scores = np.concatenate([p["scores"] for p in collected["predictions"]] or [np.zeros(0)])
    candidates = np.unique(np.quantile(scores, np.linspace(0, 0.9, num_candidates))) if len(scores) else np.zeros(1)
    f1 = [
        instance_segmentation_metrics(
            above_score(collected["predictions"], t), collected["targets"], len(class_names), iou_thresholds=(0.5,)
        )["f1"]
        for t in candidates
    ]
    best = int(np.argmax(f1))
    all_masks = instance_segmentation_metrics(
        collected["predictions"], collected["targets"], len(class_names), iou_thresholds=(0.5,)
    )["f1"]
    return {"threshold": float(candidates[best]), "f1": float(f1[best]), "f1_all_masks": float(all_masks)}


def evaluate_instance_segmentation(
    segment: InstanceSegmenter,
    dataset,
    class_names,
    limit: int | None = None,
    batch_size: int = 1,
    desc: str = "instance segmentation",
    image_column: str = "image",
    score_thresholds: dict | None = None,
    **target_options,
) -> dict:
    """Class-aware mask AP / AP50 / AP75 and panoptic quality (PQ, SQ, RQ) of `segment` on a dataset with
    instance masks and labels (:func:`metrics.instance_segmentation_metrics`), box AP / AP50 of the instances' tight
    boxes (`box_ap`, `box_ap50`: what `zero-shot-object-detection` returns, against the targets' boxes), plus
    `seconds_per_image` (wall time of `segment` alone) and the mean number of instances predicted per image;
    unreadable images are skipped and counted (`skipped_samples`). With `score_thresholds` (`{name: threshold}`),
    also `precision`, `recall` and `f1` of the predictions scoring at least each threshold, under `rejected[name]`."""
    collected = collect_instances(segment, dataset, limit, batch_size, desc, image_column, **target_options)
    predictions, targets, seconds = collected["predictions"], collected["targets"], collected["seconds"]
    result = instance_segmentation_metrics(predictions, targets, len(class_names))
    boxes = instance_segmentation_metrics(
        [{**p, "masks": box_masks(p["masks"])} for p in predictions],
        [{**t, "masks": box_masks(t["masks"])} for t in targets],
        len(class_names),
    )
    result.update(box_ap=boxes["ap"], box_ap50=boxes["ap50"])
    if score_thresholds:
        result["rejected"] = {}
        for name, threshold in score_thresholds.items():
            kept = instance_segmentation_metrics(
                above_score(predictions, threshold), targets, len(class_names), iou_thresholds=(0.5,)
            )
            result["rejected"][name] = {key: kept[key] for key in ("precision", "recall", "f1", "ap50")}
            result["rejected"][name]["threshold"] = threshold
    result.update(
        seconds_per_image=seconds / max(len(predictions), 1),
        num_images=len(predictions),
        skipped_samples=collected["skipped"],
        instances_per_image=float(np.mean([len(p["scores"]) for p in predictions])) if predictions else 0.0,
    )
    return result
