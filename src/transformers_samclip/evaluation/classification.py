"""Zero-shot image classification (the CLIP side of the paper's Table 1) for `CLIPModel` and `SamClipModel`.

Run (merged model, the 10,000 Fashion-MNIST test item views)::

    samclip evaluate path/to/model --threads 1

Run time (1 torch thread, the shared 2-core machine under load, shipped teacher sizes): ~7 ms per 64 px view, so
~70 s for the 10,000 test views. The shipped CLIP teacher should reach >= 0.80 top-1 (issue 3's floor; ~0.86 was
measured for a model of its size); a merged model should stay within a few points of it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..modeling import DEFAULT_TEMPLATES, encode_class_names
from ._common import SkippedSamples, clip_view, iter_batches, model_device, subset
from .metrics import load_metric


def class_text_embeddings(model, tokenizer, class_names, templates=None) -> torch.Tensor:
    """Template-averaged, L2-normalised text embeddings `(num_classes, dim)` of `class_names` for any dual encoder
    (the model package's `encode_class_names`, with this harness's argument order)."""
    return encode_class_names(model, class_names, tokenizer, tuple(templates or DEFAULT_TEMPLATES))


@torch.no_grad()
def image_embeddings(model, processor, images) -> torch.Tensor:
    """L2-normalised image embeddings `(batch, dim)` on the CLIP path (the CLIP head for a SAM-CLIP model)."""
    pixel_values = clip_view(processor, images).to(model_device(model))
    return F.normalize(model.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)


@torch.no_grad()
def evaluate_zero_shot_classification(
    model,
    processor,
    dataset,
    class_names,
    templates=None,
    image_column: str = "image",
    label_column: str = "label",
    batch_size: int = 256,
    limit: int | None = None,
) -> dict:
    """Zero-shot top-1 accuracy of a `CLIPModel`/`CLIPProcessor` or `SamClipModel`/`SamClipProcessor` on an image
    classification dataset: cosine of each image with the template-averaged class-name embeddings.
    Unreadable images are skipped and counted (a warning names the first few). Returns `{"top1", "num_images",
    "num_templates", "skipped_samples"}`."""
    model.eval()
    dataset = subset(dataset, limit)
    classes = class_text_embeddings(model, processor.tokenizer, class_names, templates)
    scores, labels = [], []
    skipped = SkippedSamples()
    for _, rows in iter_batches(dataset, batch_size, "zero-shot classification", image_column, skipped):
        scores.append((image_embeddings(model, processor, rows[image_column]) @ classes.T).cpu().numpy())
        labels.extend(rows[label_column])
    if not scores:
        raise ValueError(f"none of the {len(dataset)} images could be read; nothing to evaluate.")
    return {
        "top1": load_metric("zero_shot_classification").compute(
            predictions=np.concatenate(scores).argmax(axis=1), references=labels
        )["accuracy"],
        "num_images": len(dataset) - skipped.count,
        "num_templates": len(templates or DEFAULT_TEMPLATES),
        "skipped_samples": skipped.count,
    }
