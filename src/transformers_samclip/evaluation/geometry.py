"""Mask geometry for prompts and scores: tight boxes, SAM's evaluation points (the deepest pixel, then uniform draws)
and the mask IoU. Generic and numpy-only (with `metrics`): dataset generators such as the mosaic world build their
ground truth with it too."""

from __future__ import annotations

import numpy as np

from .metrics import mask_ious


def mask_to_box(mask: np.ndarray) -> list[float]:
    """Tight box ``[x0, y0, x1, y1]`` of a non-empty mask, inclusive pixel indices (as SAM's
    ``batched_mask_to_box``)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1]), float(rows[-1])]


def mask_depth(mask: np.ndarray) -> np.ndarray:
    """4-neighbour erosion depth of a bool mask: 1 on the boundary, +1 per step inward.

    A cheap stand-in for the distance transform (no scipy needed).
    """
    depth = np.zeros(mask.shape, dtype=np.int32)
    current = mask.astype(bool)
    level = 0
    while current.any():
        level += 1
        depth[current] = level
        padded = np.pad(current, 1, constant_values=False)
        current = current & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return depth


def center_point(mask: np.ndarray) -> tuple[float, float]:
    """The ``(x, y)`` pixel deepest inside a non-empty mask (SAM's first evaluation point). Among equally
    deep pixels (a ridge), the one nearest the ridge's mean, first in row-major order on a tie."""
    depth = mask_depth(mask)
    rows, cols = np.nonzero(depth == depth.max())
    nearest = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
    return float(cols[nearest]), float(rows[nearest])


def random_points(rng: np.random.Generator, mask: np.ndarray, count: int) -> list[tuple[float, float]]:
    """``count`` ``(x, y)`` pixels drawn uniformly (with replacement) from a non-empty mask."""
    rows, cols = np.nonzero(mask)
    picks = rng.integers(0, len(rows), size=count)
    return [(float(cols[i]), float(rows[i])) for i in picks]


def evaluation_points(mask: np.ndarray, num_points: int, seed: int | np.random.Generator) -> list[tuple[float, float]]:
    """The positive points of a ``num_points``-point evaluation prompt: the centre point, then random
    points of the mask drawn from ``seed`` (an int, or a ``Generator`` that the draws advance)."""
    points = [center_point(mask)]
    if num_points > 1:
        points += random_points(np.random.default_rng(seed), mask, num_points - 1)
    return points


def mask_iou(prediction: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    return float(mask_ious([prediction], [target])[0])


def square_crop(image, mask, padding: float = 0.2):
    """The PIL `image` inside a square around the non-empty `mask`'s box (side grown by `padding`, shifted to stay
    inside the image): the framing of CLIP's single-object training views."""
    x0, y0, x1, y1 = (int(v) for v in mask_to_box(np.asarray(mask, dtype=bool)))
    x1, y1 = x1 + 1, y1 + 1
    side = min(int(round(max(y1 - y0, x1 - x0) * (1 + padding))), image.height, image.width)
    top = min(max((y0 + y1 - side) // 2, 0), image.height - side)
    left = min(max((x0 + x1 - side) // 2, 0), image.width - side)
    return image.crop((left, top, left + side, top + side))


# The grey outside the mask in a masked crop (mid-grey: neither Fashion-MNIST's black background nor a bright item).
MASK_FILL = 128


def masked_crop(image, mask, fill: int = MASK_FILL):
    """:func:`square_crop` of the PIL `image` with the pixels outside `mask` set to grey `fill`: the item alone, as a
    labeller that is given the mask can show it."""
    from PIL import Image

    pixels = np.asarray(image.convert("RGB")).copy()
    pixels[~np.asarray(mask, dtype=bool)] = fill
    return square_crop(Image.fromarray(pixels), mask)
