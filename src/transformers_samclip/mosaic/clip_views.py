"""The CLIP teacher's training views: every look it is asked to name, drawn fresh from train items.

The first teacher saw one look only (an item filling 60-100% of a textured view) and was then asked to name items
in other looks: the cascade's square crops of mosaic items (cut by the canvas edge, with pieces of their
neighbours), the same crops with everything outside the mask greyed, the raw 28 px photos (a bright item on
black), and small items on flat, speckled backgrounds. It named 0.70 of its own look and 0.37-0.65 of the
others. Each look here is a family with its own parameters drawn at random (sizes, backgrounds, tints, contrast
polarity), not a copy of an evaluation set's generator: the evaluation views keep their own seeds and ranges.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..evaluation.geometry import masked_crop, square_crop
from ..evaluation.protocol import PROTOCOL
from .mosaics import (
    SILHOUETTE_THRESHOLD,
    ItemSource,
    _paint,
    _resized_item,
    _to_uint8_image,
    generate_item_view,
    generate_mosaic,
    random_background,
    random_tint,
)

# Share of each look in a batch. Crops come from train mosaics (several per mosaic).
LOOK_WEIGHTS = {"item": 0.30, "flat": 0.20, "raw": 0.15, "crop": 0.20, "masked_crop": 0.15}
# Items in mosaics less visible than this are not named in training (as in the harness's recognition metric).
MIN_VISIBLE_FRACTION = PROTOCOL.min_visible_fraction


def flat_view(rng: np.random.Generator, image28: np.ndarray, size: int = 64) -> Image.Image:
    """An item of 25-100% of the view on a flat colour with 0-10% random speckles, or on a textured background
    when small; tinted from dark and greyish to bright and saturated."""
    if rng.random() < 0.7:
        canvas = np.empty((size, size, 3), dtype=np.float32)
        canvas[:] = rng.uniform(0, 255, size=3).astype(np.float32)
        speckles = rng.random((size, size)) < rng.uniform(0.0, 0.1)
        canvas[speckles] = rng.uniform(0, 255, size=(int(speckles.sum()), 3)).astype(np.float32)
    else:
        canvas = random_background(rng, size)
    item_size = int(rng.integers(int(0.25 * size), size + 1))
    y, x = (int(v) for v in rng.integers(0, size - item_size + 1, size=2))
    grey = _resized_item(image28, item_size)
    _paint(canvas, grey, grey > SILHOUETTE_THRESHOLD, random_tint(rng) * rng.uniform(0.3, 1.0), y, x)
    return _to_uint8_image(canvas)


def raw_view(rng: np.random.Generator, image28: np.ndarray) -> Image.Image:
    """The photo as Fashion-MNIST ships it (a bright item on black, greyscale), at 70-100% of its frame, half the
    time in a colour, a tenth of the time with its contrast inverted (a dark item on white)."""
    side = 28
    item_size = int(rng.integers(20, side + 1))
    canvas = np.zeros((side, side), dtype=np.float32)
    y, x = (int(v) for v in rng.integers(0, side - item_size + 1, size=2))
    canvas[y : y + item_size, x : x + item_size] = _resized_item(image28, item_size)
    if rng.random() < 0.1:
        canvas = 255.0 - canvas
    rgb = canvas[..., None] * (random_tint(rng) / 255.0 if rng.random() < 0.5 else np.ones(3, dtype=np.float32))
    return _to_uint8_image(rgb)


def mosaic_crops(rng: np.random.Generator, source: ItemSource, count: int) -> tuple[list, list]:
    """`count` square crops of visible items of fresh train mosaics, each plain or masked at random, with labels."""
    images, labels = [], []
    while len(images) < count:
        mosaic = generate_mosaic(rng, source)
        for mask, label, fraction in zip(mosaic["instance_masks"], mosaic["labels"], mosaic["visible_fraction"]):
            if fraction < MIN_VISIBLE_FRACTION or len(images) == count:
                continue
            crop = masked_crop(mosaic["image"], mask) if rng.random() < 0.5 else square_crop(mosaic["image"], mask)
            images.append(crop)
            labels.append(label)
    return images, labels


def clip_training_views(
    rng: np.random.Generator, source: ItemSource, count: int, size: int = 64
) -> tuple[list, np.ndarray]:
    """`count` labelled views of train items in the looks of :data:`LOOK_WEIGHTS` (PIL images, int64 labels); item
    and flat views at `size`, raw photos at 28 px, crops as cut from 128 px mosaics."""
    looks = list(LOOK_WEIGHTS)
    weights = np.array([LOOK_WEIGHTS[look] for look in looks])
    drawn = rng.choice(len(looks), size=count, p=weights / weights.sum())
    num_crops = int(np.isin(drawn, [looks.index("crop"), looks.index("masked_crop")]).sum())
    images, labels = mosaic_crops(rng, source, num_crops)
    for look in drawn:
        if looks[look] in ("crop", "masked_crop"):
            continue
        index = int(rng.integers(len(source.labels)))
        item = source.images[index]
        if looks[look] == "item":
            images.append(generate_item_view(rng, item, size)[0])
        elif looks[look] == "flat":
            images.append(flat_view(rng, item, size))
        else:
            images.append(raw_view(rng, item))
        labels.append(int(source.labels[index]))
    return images, np.asarray(labels, dtype=np.int64)
