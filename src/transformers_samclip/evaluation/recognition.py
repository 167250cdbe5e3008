"""Recognition on ground-truth masks: how often a labeller names an item right when its exact mask is given.

Text-to-mask and label-everything need a mask and its name; this metric takes the masks from the ground truth, so
that what it measures is the name alone. Labellers (each a function `(image, masks) -> class ids`):
- `crop_labeller(clip_model, ...)`: a CLIP model on the square crop around each mask (the cascade's labeller);
- `crop_labeller(..., masked=True)`: the same crop with the pixels outside the mask greyed;
- `crop_labeller(samclip_model, ...)`: a merged model's CLIP path on the crop;
- `one_pass_labeller(samclip_model, ...)`: a merged model's head tokens pooled in each mask from ONE encoder pass,
  as `SamClipMaskGenerator.instance_segmentation` labels its masks.

Run (teachers and a merged model, 200 test mosaics, 1 thread, ~2 min)::

    samclip evaluate mosaic --teachers --num-items 0 --num-mosaics 200 --threads 1

Data: every item of each image with `visible_fraction >= min_visible_fraction` (`PROTOCOL`'s, as the prompted
evaluation); datasets without that column count every item. Targets (issue 18): the CLIP teacher >= 0.75 on masked
crops; (issue 19) a merged model's one-pass recognition >= the teacher's on crops.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..modeling import mask_region_features
from ._common import SkippedSamples, clip_view, iter_batches, model_device, rgb, sam_view, subset
from .classification import class_text_embeddings
from .geometry import masked_crop, square_crop
from .protocol import PROTOCOL

Labeller = Callable[[Image.Image, list], np.ndarray]  # (image, bool masks) -> class id per mask


def crop_labeller(model, processor, class_names, templates=None, masked: bool = False) -> Labeller:
    """Label each mask by `model`'s image embedding (a `CLIPModel`, or a `SamClipModel`'s CLIP path) of its square
    crop, or of the masked crop when `masked`."""
    model.eval()
    class_embeds = class_text_embeddings(model, processor.tokenizer, class_names, templates)

    @torch.no_grad()
    def label(image, masks):
        image = rgb(image)
        crops = [masked_crop(image, mask) if masked else square_crop(image, mask) for mask in masks]
        pixel_values = clip_view(processor, crops).to(model_device(model), model.dtype)
        embeddings = F.normalize(model.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)
        return (embeddings @ class_embeds.T).argmax(dim=1).cpu().numpy()

    return label


def one_pass_labeller(model, processor, class_names, templates=None) -> Labeller:
    """Label each mask as `SamClipMaskGenerator.instance_segmentation` labels its own masks: the CLIP head's dense
    tokens of one SAM-path encoder pass, averaged inside the mask (`mask_region_features`, the one region read-out:
    pooled, then projected), against the class names."""
    model.eval()
    class_embeds = class_text_embeddings(model, processor.tokenizer, class_names, templates)

    @torch.no_grad()
    def label(image, masks):
        encoding = sam_view(processor, [image])
        pixel_values = encoding["pixel_values"].to(model_device(model), model.dtype)
        height, width = encoding["reshaped_input_sizes"][0].tolist()
        size = pixel_values.shape[-1]
        # Each ground-truth mask in the SAM input frame: resized as the image was, zero in the padding.
        frame = torch.zeros((len(masks), size, size), dtype=torch.bool, device=pixel_values.device)
        for index, mask in enumerate(masks):
            resized = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).resize((width, height), Image.NEAREST)
            frame[index, :height, :width] = torch.from_numpy(np.asarray(resized) > 127)
        tokens = model.clip_head.dense_tokens(
            model.vision_encoder(pixel_values, compute_neck=False).trunk_hidden_state
        )
        embeddings = F.normalize(mask_region_features(model.clip_head, tokens[0], frame), dim=-1)
        return (embeddings @ class_embeds.to(embeddings.dtype).T).argmax(dim=1).cpu().numpy()

    return label


def ground_truth_items(row: dict, min_visible_fraction: float) -> tuple[list, list]:
    """The bool masks and class ids of a row's items visible enough to be named."""
    fractions = row.get("visible_fraction") or [1.0] * len(row["labels"])
    kept = [k for k, fraction in enumerate(fractions) if fraction >= min_visible_fraction]
    return ([np.asarray(row["instance_masks"][k]).astype(bool) for k in kept], [int(row["labels"][k]) for k in kept])


def evaluate_recognition(
    labellers: dict[str, Labeller],
    dataset,
    num_classes: int,
    min_visible_fraction: float = PROTOCOL.min_visible_fraction,
    limit: int | None = None,
    image_column: str = "image",
) -> dict:
    """Accuracy and confusion matrix (rows: truth, columns: prediction) of each labeller over the visible
    ground-truth items of `dataset` (columns `image`, `instance_masks`, `labels`, optional `visible_fraction`).
    Unreadable images are skipped and counted. Returns `{name: {"accuracy", "num_items", "confusion"}, ...}`
    plus `num_images`, `skipped_samples` and `min_visible_fraction`."""
    dataset = subset(dataset, limit)
    confusion = {name: np.zeros((num_classes, num_classes), dtype=np.int64) for name in labellers}
    skipped = SkippedSamples()
    num_images = 0
    for _, rows in iter_batches(dataset, 16, "recognition on ground-truth masks", image_column, skipped):
        for offset in range(len(rows[image_column])):
            row = {column: values[offset] for column, values in rows.items()}
            masks, labels = ground_truth_items(row, min_visible_fraction)
            num_images += 1
            if not masks:
                continue
            for name, labeller in labellers.items():
                np.add.at(confusion[name], (labels, labeller(row[image_column], masks)), 1)
    results = {}
    for name, matrix in confusion.items():
        total = int(matrix.sum())
        if total == 0:
            raise ValueError(
                f"no ground-truth item is at least {min_visible_fraction} visible in the "
                f"{num_images} images; nothing to recognise (lower min_visible_fraction)."
            )
        results[name] = {"accuracy": float(np.trace(matrix) / total), "num_items": total, "confusion": matrix.tolist()}
    return {
        **results,
        "num_images": num_images,
        "skipped_samples": skipped.count,
        "min_visible_fraction": min_visible_fraction,
    }


def recognition_row(labellers: dict[str, Labeller], dataset, num_classes: int, **options) -> tuple[dict, int]:
    """:func:`evaluate_recognition` as a results row: `recognition_items`, and for each labeller
    `recognition_<name>` (accuracy) and `recognition_<name>_confusion`; returns the row and the unreadable images
    skipped. `options` go to :func:`evaluate_recognition`."""
    result = evaluate_recognition(labellers, dataset, num_classes, **options)
    row = {"recognition_items": result[next(iter(labellers))]["num_items"]}
    for name in labellers:
        row[f"recognition_{name}"] = result[name]["accuracy"]
        row[f"recognition_{name}_confusion"] = result[name]["confusion"]
    return row, result["skipped_samples"]
