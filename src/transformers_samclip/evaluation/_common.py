"""Helpers shared by the evaluators: dataset batching, image decoding, image views and mapping maps back to
image size."""

from __future__ import annotations

import os
import platform
import warnings

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm


def subset(dataset, limit: int | None):
    """The first `limit` rows of a `datasets.Dataset` (all of them when `limit` is None)."""
    return dataset if limit is None or limit >= len(dataset) else dataset.select(range(limit))


class SkippedSamples:
    """The unreadable samples an evaluation skipped: `count`, the first few `names`, and one warning saying so."""

    SHOWN = 5

    def __init__(self):
        self.count, self.names = 0, []

    def add(self, name: str) -> None:
        """Count one skipped sample."""
        self.count += 1
        if len(self.names) < self.SHOWN:
            self.names.append(name)

    def warn(self, desc: str, total: int) -> None:
        """Warn once (when any was skipped) with the count and the first file names."""
        if self.count:
            more = ", ..." if self.count > len(self.names) else ""
            warnings.warn(
                f"{desc}: skipped {self.count} unreadable sample(s) of {total} ({', '.join(self.names)}{more}); "
                "the results cover the others.",
                stacklevel=3,
            )


def decode_image(value) -> Image.Image:
    """A fully loaded PIL image from a PIL image, a `datasets` image dict (`bytes`/`path`), a path or an array;
    raises on unreadable data."""
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict):
        import datasets

        image = datasets.Image().decode_example(value)
    elif isinstance(value, (str, os.PathLike)):
        image = Image.open(value)
    else:
        image = Image.fromarray(np.asarray(value))
    image.load()  # PIL decodes lazily: force it here, inside the caller's error handling
    return image


def _readable_rows(rows: dict, image_column: str, start: int, skipped: SkippedSamples) -> dict:
    keep, images = [], []
    for offset, value in enumerate(rows[image_column]):
        try:
            images.append(decode_image(value))
            keep.append(offset)
        except Exception:  # any decoding failure means the same: this sample cannot be evaluated
            name = value.get("path") if isinstance(value, dict) else None
            skipped.add(str(name or f"row {start + offset}"))
    rows = {column: [values[i] for i in keep] for column, values in rows.items()}
    rows[image_column] = images
    return rows


def iter_batches(
    dataset, batch_size: int, desc: str, image_column: str | None = None, skipped: SkippedSamples | None = None
):
    """Yield `(first_row_index, rows)` with `rows` a dict of column lists, under a tqdm bar (hidden off-TTY). With
    `image_column` (a `datasets.Image` column), images are decoded one by one and unreadable rows are left out of
    the batch and counted in `skipped` (a batch that loses every row is not yielded)."""
    import datasets

    feature = (dataset.features or {}).get(image_column) if image_column else None
    decode_here = isinstance(feature, datasets.Image) and feature.decode
    if decode_here:
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        skipped = skipped if skipped is not None else SkippedSamples()
    with tqdm(total=len(dataset), desc=desc, unit="img", disable=None) as bar:
        for start in range(0, len(dataset), batch_size):
            rows = dataset[start : start + batch_size]
            size = len(next(iter(rows.values())))
            if decode_here:
                rows = _readable_rows(rows, image_column, start, skipped)
            if rows and len(next(iter(rows.values()))):
                yield start, rows
            bar.update(size)
    if decode_here:
        skipped.warn(desc, len(dataset))


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
