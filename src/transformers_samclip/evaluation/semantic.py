"""Zero-shot semantic segmentation (the paper's Tables 2, 5 and 7): SAM-CLIP plain and SAM-refined, and the two
baselines built from the teachers (MaskCLIP-style dense CLIP features; SAM-everything then CLIP-classify).

Run (teacher baselines, then a merged model, on the test mosaics)::

    samclip evaluate teachers --num-mosaics 500 --threads 1
    samclip evaluate path/to/model --num-mosaics 500 --threads 1

mIoU is over the classes plus background, from one confusion matrix over the dataset. SAM-CLIP is measured through
its mask generator's `semantic_segmentation` / `semantic_segmentation_refined`, as users and the pipeline call them.
Background: a pixel is background when its best class cosine is below a threshold (the `background_threshold` of
`SamClipMaskGenerator.semantic_segmentation`). The threshold is calibrated on a few TRAIN images
(`calibration_dataset`: the threshold that maximises their mIoU, searched over quantiles of their best-class
cosines), never on the test set; a distilled model carries the one `samclip distill` calibrated in its config; the
cascade needs none (pixels no kept mask covers are background). Time per 128 px mosaic (1 torch thread, the shared
2-core machine under load): ~30 ms MaskCLIP, ~100 ms plain + refined SAM-CLIP together, ~300 ms cascade
(64 grid prompts, one CLIP pass per kept mask). A distilled model should beat both baselines (the paper's claim 3:
VOC 60.6 vs MaskCLIP-style and cascade 27.2).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..modeling import (
    SamClipMaskGenerator,
    SamClipMaskGeneratorOptions,
    grid_points,
    mask_padding,
    select_generated_masks,
    suppress_contained,
)
from ._common import SkippedSamples, iter_batches, model_device, rgb, sam_view, subset
from .classification import class_text_embeddings, image_embeddings
from .geometry import masked_crop, square_crop
from .metrics import confusion_matrix, load_metric, mean_iou

CosineMaps = Callable[[list], list]  # images -> one (num_classes, H, W) cosine tensor per image, original size
Segmenter = Callable[[list], list]  # images -> one (H, W) label map per image (0 background, c + 1 class c)


def label_map_from_cosines(cosines: torch.Tensor, background_threshold: float | None) -> torch.Tensor:
    """`(H, W)` labels from `(C, H, W)` class cosines: `c + 1` for the best class, 0 (background) where that best
    cosine is below `background_threshold` (never, when it is None)."""
    best, labels = cosines.max(dim=0)
    labels = labels + 1
    return labels if background_threshold is None else labels.masked_fill(best < background_threshold, 0)


def _gt_map(value) -> np.ndarray:
    return np.asarray(value).astype(np.int64)


def evaluate_label_maps(
    segment: Segmenter,
    dataset,
    class_names,
    image_column: str = "image",
    semantic_column: str = "semantic_map",
    ignore_index: int | None = 255,
    batch_size: int = 16,
    limit: int | None = None,
    desc: str = "semantic segmentation",
) -> dict:
    """Semantic mIoU (background + classes) of any segmenter `segment(images) -> label maps` against the dataset's
    semantic maps (0 background, `c + 1` class `c`); unreadable images are skipped and counted. Returns `{"miou",
    "per_class_iou", "num_images", "skipped_samples"}`; `per_class_iou` maps "background" and each class name to its
    IoU (None when absent from GT and prediction)."""
    dataset = subset(dataset, limit)
    metric = load_metric("semantic_segmentation")
    skipped = SkippedSamples()
    for _, rows in iter_batches(dataset, batch_size, desc, image_column, skipped):
        predictions = [np.asarray(predicted) for predicted in segment(rows[image_column])]
        metric.add_batch(predictions=predictions, references=[_gt_map(target) for target in rows[semantic_column]])
    result = metric.compute(
        num_labels=len(class_names) + 1, ignore_index=ignore_index, label_names=["background", *class_names]
    )
    return {
        "miou": result["mean_iou"],
        "per_class_iou": result["per_category_iou"],
        "num_images": len(dataset) - skipped.count,
        "skipped_samples": skipped.count,
    }


@torch.no_grad()
def calibrate_background_threshold(
    cosine_maps: CosineMaps,
    dataset,
    class_names,
    image_column: str = "image",
    semantic_column: str = "semantic_map",
    ignore_index: int | None = 255,
    batch_size: int = 16,
    num_candidates: int = 101,
) -> float:
    """The background cosine threshold that maximises mIoU on `dataset` (use training images), searched over
    `num_candidates` quantiles of the per-pixel best-class cosines."""
    num_classes = len(class_names) + 1
    best_cosines, best_labels, targets = [], [], []
    for _, rows in iter_batches(dataset, batch_size, "background calibration", image_column):
        for cosines, target in zip(cosine_maps(rows[image_column]), rows[semantic_column]):
            best, labels = cosines.max(dim=0)
            best_cosines.append(best.flatten().numpy())
            best_labels.append(labels.flatten().numpy() + 1)
            targets.append(_gt_map(target).ravel())
    best_cosines, best_labels, targets = map(np.concatenate, (best_cosines, best_labels, targets))
    candidates = np.unique(np.quantile(best_cosines, np.linspace(0, 1, num_candidates)))
    scores = [
        mean_iou(confusion_matrix(np.where(best_cosines < t, 0, best_labels), targets, num_classes, ignore_index))
        for t in candidates
    ]
    return float(candidates[int(np.nanargmax(scores))])


def _resolve_threshold(cosine_maps, background_threshold, calibration_dataset, class_names, columns) -> float | None:
    if background_threshold is not None:
        return float(background_threshold)
    if calibration_dataset is not None:
        return calibrate_background_threshold(cosine_maps, calibration_dataset, class_names, **columns)
    warnings.warn("No background_threshold and no calibration_dataset: background is never predicted.", stacklevel=3)
    return None


def _upsampled_cosines(features: torch.Tensor, class_embeds: torch.Tensor, size) -> torch.Tensor:
    """Cosines `(B, C, *size)` of per-patch features `(B, D, h, w)` with class embeddings, bilinearly upsampled."""
    cosines = torch.einsum("bdhw,cd->bchw", F.normalize(features, dim=1), class_embeds.to(features))
    return F.interpolate(cosines, size=size, mode="bilinear", align_corners=False)


def _samclip_segmentation(model, processor, images, class_embeds, refine: bool, size: int, background_threshold):
    """SAM-CLIP's mask generator's segmentation methods, exactly as the pipeline calls them: `(logits, encoding)`."""
    images = [rgb(image) for image in images]
    encoding = sam_view(processor, images) if refine else processor(images=images, view="dense", dense_size=size)
    generator = SamClipMaskGenerator(model)
    method = generator.semantic_segmentation_refined if refine else generator.semantic_segmentation
    pixel_values = encoding["pixel_values"].to(model_device(model), model.dtype)
    return method(pixel_values, class_embeds, background_threshold=background_threshold).logits.float().cpu(), encoding


def samclip_cosine_maps(model, processor, class_embeds: torch.Tensor, size: int) -> CosineMaps:
    """Cosine maps of a SAM-CLIP model's dense CLIP-head features on the letterboxed view of side `size`, read from
    `SamClipMaskGenerator.semantic_segmentation` (its class channels are cosines times the logit scale)."""

    def cosine_maps(images):
        logits, encoding = _samclip_segmentation(model, processor, images, class_embeds, False, size, -2.0)
        cosines = logits[:, 1:] / model.logit_scale.exp().item()
        return processor.resize_semantic_logits(cosines, encoding["original_sizes"], encoding["reshaped_input_sizes"])

    return cosine_maps


@torch.no_grad()
def evaluate_semantic_segmentation(
    model,
    processor,
    dataset,
    class_names,
    refine: bool = False,
    dense_size: int | None = None,
    background_threshold: float | None = None,
    calibration_dataset=None,
    templates=None,
    image_column: str = "image",
    semantic_column: str = "semantic_map",
    ignore_index: int | None = 255,
    batch_size: int = 16,
    limit: int | None = None,
) -> dict:
    """Zero-shot semantic segmentation mIoU of a `SamClipModel` through its own methods (what users and the pipeline
    get): `semantic_segmentation` on the dense view of side `dense_size` (default `processor.dense_size`, twice the
    CLIP-path size, as the paper's 448 px for a 224 px head), or with `refine=True` `semantic_segmentation_refined`
    (one SAM-path pass). Background: an explicit `background_threshold`, else one calibrated on
    `calibration_dataset`, else the model's `config.background_threshold`. Returns `{"miou", "per_class_iou",
    "num_images", "background_threshold", "dense_size"}`."""
    model.eval()
    columns = dict(
        image_column=image_column, semantic_column=semantic_column, ignore_index=ignore_index, batch_size=batch_size
    )
    class_embeds = class_text_embeddings(model, processor.tokenizer, class_names, templates)
    size = dense_size or processor.dense_size
    if background_threshold is None and calibration_dataset is None:
        background_threshold = getattr(model.config, "background_threshold", None)
    threshold = _resolve_threshold(
        samclip_cosine_maps(model, processor, class_embeds, size),
        background_threshold,
        calibration_dataset,
        class_names,
        columns,
    )

    def segment(images):
        logits, encoding = _samclip_segmentation(model, processor, images, class_embeds, refine, size, threshold)
        return processor.post_process_semantic_segmentation(
            logits, encoding["original_sizes"], encoding["reshaped_input_sizes"]
        )

    desc = "refined semantic segmentation" if refine else "semantic segmentation"
    result = evaluate_label_maps(segment, dataset, class_names, limit=limit, desc=desc, **columns)
    result.update(
        background_threshold=threshold, dense_size=processor.image_processor.size["longest_edge"] if refine else size
    )
    return result


@torch.no_grad()
def instance_semantic_segmenter(model, processor, class_names, templates=None, **instance_options) -> Segmenter:
    """SAM-CLIP's `SamClipMaskGenerator.semantic_segmentation_from_instances` (the one-pass labelled masks painted
    into a map) as a segmenter, called as the pipeline calls it (SAM view, label maps at the original size);
    `instance_options` are the generator's options."""
    model.eval()
    class_embeds = class_text_embeddings(model, processor.tokenizer, class_names, templates)
    generator = SamClipMaskGenerator(model, **instance_options)

    def segment(images):
        encoding = sam_view(processor, [rgb(image) for image in images])
        logits = (
            generator.semantic_segmentation_from_instances(
                encoding["pixel_values"].to(model_device(model), model.dtype),
                class_embeds,
                input_sizes=encoding["reshaped_input_sizes"].tolist(),
            )
            .logits.float()
            .cpu()
        )
        return processor.post_process_semantic_segmentation(
            logits, encoding["original_sizes"], encoding["reshaped_input_sizes"]
        )

    return segment


@torch.no_grad()
def evaluate_instance_semantic_segmentation(
    model,
    processor,
    dataset,
    class_names,
    templates=None,
    image_column: str = "image",
    semantic_column: str = "semantic_map",
    ignore_index: int | None = 255,
    batch_size: int = 16,
    limit: int | None = None,
    **instance_options,
) -> dict:
    """Semantic mIoU of the one-pass labelled masks painted into a map (:func:`instance_semantic_segmenter`). No
    background threshold: pixels no kept mask covers are background, as in the cascade. Returns
    `{"miou", "per_class_iou", "num_images", "skipped_samples"}`."""
    segment = instance_semantic_segmenter(model, processor, class_names, templates, **instance_options)
    return evaluate_label_maps(
        segment,
        dataset,
        class_names,
        image_column=image_column,
        semantic_column=semantic_column,
        ignore_index=ignore_index,
        batch_size=batch_size,
        limit=limit,
        desc="one-pass painted semantic segmentation",
    )


# ------------------------------------------------------------------------------------------------ baselines
@torch.no_grad()
def maskclip_dense_features(clip_model, pixel_values: torch.Tensor) -> torch.Tensor:
    """MaskCLIP (Zhou et al. 2022) dense features `(B, D, h, w)` of a `CLIPModel`: in the last ViT layer each patch
    token takes its value-embedding path (v_proj, out_proj, residual and MLP, no query-key attention), then CLIP's
    post-layernorm and visual projection, so every patch lands in the text space the CLS token is trained for."""
    vision = clip_model.vision_model
    hidden = vision(pixel_values=pixel_values, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states
    tokens = hidden[-2][:, 1:]  # patch tokens entering the last layer (CLS dropped)
    layer = vision.encoder.layers[-1]
    tokens = tokens + layer.self_attn.out_proj(layer.self_attn.v_proj(layer.layer_norm1(tokens)))
    tokens = tokens + layer.mlp(layer.layer_norm2(tokens))
    features = clip_model.visual_projection(vision.post_layernorm(tokens))
    grid_h, grid_w = (s // vision.config.patch_size for s in pixel_values.shape[-2:])
    return features.transpose(1, 2).reshape(len(features), -1, grid_h, grid_w)


def maskclip_cosine_maps(clip_model, clip_processor, class_embeds: torch.Tensor, size: int) -> CosineMaps:
    """Cosine maps of MaskCLIP features on the whole image resized to `size` x `size` (no crop)."""

    def cosine_maps(images):
        images = [rgb(image) for image in images]
        pixel_values = clip_processor.image_processor(
            images, size={"height": size, "width": size}, do_center_crop=False, return_tensors="pt"
        )["pixel_values"].to(model_device(clip_model))
        features = maskclip_dense_features(clip_model, pixel_values)
        return [
            _upsampled_cosines(features[i : i + 1], class_embeds, (image.height, image.width))[0].cpu()
            for i, image in enumerate(images)
        ]

    return cosine_maps


@torch.no_grad()
def evaluate_maskclip_baseline(
    clip_model,
    clip_processor,
    dataset,
    class_names,
    dense_size: int | None = None,
    background_threshold: float | None = None,
    calibration_dataset=None,
    templates=None,
    image_column: str = "image",
    semantic_column: str = "semantic_map",
    ignore_index: int | None = 255,
    batch_size: int = 16,
    limit: int | None = None,
) -> dict:
    """Semantic mIoU of the MaskCLIP-style baseline (dense CLIP-teacher features, the paper's Table 7) at
    `dense_size` (default twice the teacher's input size, as for SAM-CLIP); background as in
    :func:`evaluate_semantic_segmentation`."""
    clip_model.eval()
    columns = dict(
        image_column=image_column, semantic_column=semantic_column, ignore_index=ignore_index, batch_size=batch_size
    )
    class_embeds = class_text_embeddings(clip_model, clip_processor.tokenizer, class_names, templates)
    size = dense_size or 2 * clip_model.config.vision_config.image_size
    cosine_maps = maskclip_cosine_maps(clip_model, clip_processor, class_embeds, size)
    threshold = _resolve_threshold(cosine_maps, background_threshold, calibration_dataset, class_names, columns)

    def segment(images):
        return [label_map_from_cosines(c, threshold) for c in cosine_maps(images)]

    result = evaluate_label_maps(segment, dataset, class_names, limit=limit, desc="MaskCLIP baseline", **columns)
    result.update(background_threshold=threshold, dense_size=size)
    return result


def _grid_candidates(sam_model, sam_processor, image, points_per_side: int, cache: dict | None):
    """SAM's three low-resolution masks (padding emptied) and predicted IoUs for each point of a `points_per_side`^2
    grid over `image`, with the image's sizes before and after SAM's resize; looked up in (and stored into) `cache`
    when given, keyed by the model, the grid and the image's pixels."""
    key = None
    if cache is not None:
        key = (id(sam_model), points_per_side, image.size, hashlib.sha1(image.tobytes()).digest())
        if key in cache:
            return cache[key]
    encoding = sam_view(sam_processor, [image])
    new_h, new_w = encoding["reshaped_input_sizes"][0].tolist()
    device = model_device(sam_model)
    grid = grid_points(points_per_side, new_h, new_w).reshape(1, -1, 1, 2)
    embeddings = sam_model.get_image_embeddings(encoding["pixel_values"].to(device))
    outputs = sam_model(
        image_embeddings=embeddings,
        input_points=grid.to(device),
        input_labels=torch.ones(grid.shape[:3], dtype=torch.long, device=device),
        multimask_output=True,
    )
    logits = mask_padding(outputs.pred_masks[0].flatten(0, 1), new_h, new_w, encoding["pixel_values"].shape[-1])
    sizes = {name: encoding[name] for name in ("original_sizes", "reshaped_input_sizes")}
    candidates = (logits, outputs.iou_scores[0].flatten(), sizes)
    if key is not None:
        cache[key] = candidates
    return candidates


@torch.no_grad()
def segment_everything(
    sam_model,
    sam_processor,
    image,
    cache: dict | None = None,
    **options,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's automatic masks with a `SamModel`: a `points_per_side`^2 grid of one-point prompts over the image (one
    encoder pass), SAM's three masks per point, filtered and de-duplicated by the model package's
    `select_generated_masks` (the same selection SAM-CLIP's mask generator uses). `options` override
    `SamClipMaskGeneratorOptions` (`points_per_side`, `pred_iou_threshold`, `stability_threshold`,
    `nms_threshold`, ...; their defaults are the generator's). `cache` (a dict the caller keeps, e.g. `{}` shared
    by the rows of one evaluation) holds SAM's grid outputs per image, so that other thresholds and labellers on the
    same images run the selection alone. Returns `(masks (M, H, W) bool at the original size, predicted IoUs (M,))`,
    best predicted IoU first."""
    options = SamClipMaskGeneratorOptions().replace(**options)
    image = rgb(image)
    logits, scores, sizes = _grid_candidates(sam_model, sam_processor, image, options.points_per_side, cache)
    kept = select_generated_masks(
        logits,
        scores,
        options.pred_iou_threshold,
        options.stability_threshold,
        options.nms_threshold,
        options.stability_offset,
    )
    if not len(kept):
        return torch.zeros((0, image.height, image.width), dtype=torch.bool), torch.zeros(0)
    (masks,) = sam_processor.post_process_masks(
        [logits[kept][None].cpu()], sizes["original_sizes"], sizes["reshaped_input_sizes"]
    )
    nonempty = masks[0].flatten(1).any(dim=1)  # a sliver can vanish when resized to the original size
    return masks[0][nonempty], scores[kept].cpu()[nonempty]


def cascade_instances(
    sam_model,
    sam_processor,
    clip_model,
    clip_processor,
    class_embeds,
    image,
    masked: bool = False,
    cache: dict | None = None,
    **options,
) -> dict:
    """The SAM-then-CLIP cascade on one image: :func:`segment_everything`, then each mask's square crop (with the
    pixels outside the mask greyed when `masked`) classified zero-shot by the CLIP model (one CLIP image per mask).
    Returns `{"masks", "class_ids", "scores"}` (score: the CLIP class probability times SAM's predicted IoU, the same
    confidence SAM-CLIP's instances carry), best score first; masks mostly inside a more confident one are dropped as
    SAM-CLIP's are (`containment_threshold`, :func:`suppress_contained`). `cache`: see :func:`segment_everything`."""
    masks, ious = segment_everything(sam_model, sam_processor, image, cache=cache, **options)
    if not len(masks):
        return {"masks": masks, "class_ids": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)}
    crops = [masked_crop(image, mask.numpy()) if masked else square_crop(image, mask) for mask in masks]
    logits = (image_embeddings(clip_model, clip_processor, crops) @ class_embeds.T) * clip_model.logit_scale.exp()
    probabilities, class_ids = logits.softmax(dim=1).max(dim=1)
    scores = probabilities.cpu() * ious.cpu().clamp(0, 1)
    threshold = SamClipMaskGeneratorOptions().replace(**options).containment_threshold
    kept = suppress_contained(masks, scores, threshold)
    return {"masks": masks[kept], "class_ids": class_ids.cpu()[kept], "scores": scores[kept]}


def cascade_segmenter(
    sam_model,
    sam_processor,
    clip_model,
    clip_processor,
    class_names,
    points_per_side: int = 8,
    pred_iou_threshold: float = 0.8,
    nms_threshold: float = 0.7,
    templates=None,
    masked: bool = False,
    cache: dict | None = None,
) -> Segmenter:
    """The SAM-then-CLIP cascade as a segmenter `images -> label maps`: :func:`cascade_instances` (its labeller on
    masked crops when `masked`; SAM's outputs kept in `cache` when given), masks painted largest first (so smaller
    ones stay visible on top); pixels no mask covers are background."""
    sam_model.eval()
    clip_model.eval()
    class_embeds = class_text_embeddings(clip_model, clip_processor.tokenizer, class_names, templates)
    options = dict(
        points_per_side=points_per_side,
        pred_iou_threshold=pred_iou_threshold,
        nms_threshold=nms_threshold,
        masked=masked,
        cache=cache,
    )

    @torch.no_grad()
    def segment(images):
        maps = []
        for image in images:
            image = rgb(image)
            instances = cascade_instances(
                sam_model, sam_processor, clip_model, clip_processor, class_embeds, image, **options
            )
            masks = instances["masks"]
            label_map = torch.zeros((image.height, image.width), dtype=torch.long)
            for index in masks.flatten(1).sum(dim=1).argsort(descending=True).tolist():
                label_map[masks[index]] = instances["class_ids"][index] + 1
            maps.append(label_map)
        return maps

    return segment


# Predicted-IoU thresholds tried when the cascade is calibrated: SAM's own 0.88 suits SAM ViT-H; a small SAM's IoU
# head predicts lower values for masks just as good, and a threshold that keeps no mask makes a vacuous baseline.
CASCADE_IOU_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.88)


def calibrate_cascade_iou_threshold(
    sam_model, sam_processor, clip_model, clip_processor, class_names, calibration_dataset, **options
) -> float:
    """The predicted-IoU threshold of :data:`CASCADE_IOU_THRESHOLDS` with the best cascade mIoU on
    `calibration_dataset` (training images); `options` go to :func:`cascade_segmenter` and
    :func:`evaluate_label_maps`."""
    columns = {k: options.pop(k) for k in ("image_column", "semantic_column", "ignore_index") if k in options}
    scores = [
        evaluate_label_maps(
            cascade_segmenter(
                sam_model, sam_processor, clip_model, clip_processor, class_names, pred_iou_threshold=t, **options
            ),
            calibration_dataset,
            class_names,
            batch_size=1,
            desc=f"cascade calibration {t}",
            **columns,
        )["miou"]
        for t in CASCADE_IOU_THRESHOLDS
    ]
    return CASCADE_IOU_THRESHOLDS[int(np.argmax(scores))]


@torch.no_grad()
def evaluate_cascade_baseline(
    sam_model,
    sam_processor,
    clip_model,
    clip_processor,
    dataset,
    class_names,
    points_per_side: int = 8,
    pred_iou_threshold: float | None = 0.8,
    nms_threshold: float = 0.7,
    calibration_dataset=None,
    templates=None,
    image_column: str = "image",
    semantic_column: str = "semantic_map",
    ignore_index: int | None = 255,
    limit: int | None = None,
    masked: bool = False,
    cache: dict | None = None,
) -> dict:
    """Semantic mIoU of the SAM-then-CLIP cascade (the paper's Table 7 baseline, :func:`cascade_segmenter`; its CLIP
    labeller on masked crops when `masked`). With `pred_iou_threshold=None` the threshold is the one of
    :data:`CASCADE_IOU_THRESHOLDS` with the best mIoU on `calibration_dataset` (training images), as SAM-CLIP's
    background threshold is calibrated. `cache` (see :func:`segment_everything`) lets every threshold tried, and
    other rows on the same images, share SAM's outputs."""
    columns = dict(image_column=image_column, semantic_column=semantic_column, ignore_index=ignore_index)
    teachers = (sam_model, sam_processor, clip_model, clip_processor, class_names)
    options = dict(
        points_per_side=points_per_side, nms_threshold=nms_threshold, templates=templates, masked=masked, cache=cache
    )
    if pred_iou_threshold is None:
        if calibration_dataset is None:
            raise ValueError("pred_iou_threshold=None calibrates it: give calibration_dataset (training images).")
        pred_iou_threshold = calibrate_cascade_iou_threshold(*teachers, calibration_dataset, **options, **columns)
    segment = cascade_segmenter(*teachers, pred_iou_threshold=pred_iou_threshold, **options)
    result = evaluate_label_maps(
        segment,
        dataset,
        class_names,
        batch_size=1,
        limit=limit,
        desc="SAM+CLIP cascade" + (" (masked crops)" if masked else ""),
        **columns,
    )
    result.update(points_per_side=points_per_side, pred_iou_threshold=pred_iou_threshold)
    return result
