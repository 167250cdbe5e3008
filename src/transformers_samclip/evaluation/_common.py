"""Helpers shared by the evaluators: dataset batching, image views and mapping maps back to image size."""

from __future__ import annotations

import platform

import numpy as np
import torch
from tqdm.auto import tqdm


def subset(dataset, limit: int | None):
    """The first `limit` rows of a `datasets.Dataset` (all of them when `limit` is None)."""
    return dataset if limit is None or limit >= len(dataset) else dataset.select(range(limit))


def iter_batches(dataset, batch_size: int, desc: str):
    """Yield `(first_row_index, rows)` with `rows` a dict of column lists, under a tqdm bar (hidden off-TTY)."""
    with tqdm(total=len(dataset), desc=desc, unit="img", disable=None) as bar:
        for start in range(0, len(dataset), batch_size):
            rows = dataset[start : start + batch_size]
            yield start, rows
            bar.update(len(next(iter(rows.values()))))


def model_device(model) -> torch.device:
    """Where a model's inputs go (CPU for stand-ins without parameters)."""
    return getattr(model, "device", torch.device("cpu"))


def rgb(image):
    """A PIL RGB image (datasets may decode greyscale or RGBA images)."""
    return image if image.mode == "RGB" else image.convert("RGB")


def clip_view(processor, images) -> torch.Tensor:
    """CLIP-path pixel values: `SamClipProcessor`'s clip view, or a `CLIPProcessor`'s image processor."""
    image_processor = getattr(processor, "clip_image_processor", None) or processor.image_processor
    return image_processor([rgb(image) for image in images], return_tensors="pt")["pixel_values"]


def sam_view(processor, images):
    """SAM-path encoding (`pixel_values`, `original_sizes`, `reshaped_input_sizes`) of `SamProcessor` or
    `SamClipProcessor` (both keep SAM's image processor as `image_processor`)."""
    return processor.image_processor([rgb(image) for image in images], return_tensors="pt")


def as_mask(value) -> np.ndarray:
    """A bool array from a decoded mask (PIL mode "1"/"L" image or array)."""
    return np.asarray(value).astype(bool)


def versions() -> dict:
    """Versions of the software that produced a result."""
    import datasets
    import transformers

    from .. import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "transformers_samclip": __version__,
    }
