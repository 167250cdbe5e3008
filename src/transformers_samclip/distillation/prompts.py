"""The prompt sampler of SAM-CLIP's SAM rehearsal (SAM-CLIP.md section 3, "ours"): from each sampled
ground-truth mask a jittered box and 1-3 positive points inside it; on images without masks, boxes and points
around random cells of a grid. Prompts are deterministic in `(seed, sample index)`, so a resumed or repeated run
sees the same prompts, and the teacher and the student always receive the very same tensors."""

from dataclasses import dataclass

import numpy as np

from .annotations import decode_rle, is_rle, rle_area

POINT_PAD_LABEL = -10  # SAM's label for padding points (zero embedding)
# Regions draw from their own rng stream of `(seed, index)`, so turning region distillation on or off leaves every
# prompt as it was.
REGION_STREAM = 1


@dataclass
class SamPrompts:
    """Prompts of one image in its original pixel coordinates: `boxes (num_boxes, 4)` as (x0, y0, x1, y1),
    `points (num_point_prompts, max_points, 2)` as (x, y) and `labels (num_point_prompts, max_points)`
    (1 positive, -10 padding)."""

    boxes: np.ndarray
    points: np.ndarray
    labels: np.ndarray

    def scaled(self, scale_x: float, scale_y: float) -> "SamPrompts":
        """The same prompts after the image was resized by `(scale_x, scale_y)` (padding points stay at 0)."""
        points = self.points * np.array([scale_x, scale_y], dtype=np.float32)
        points[self.labels == POINT_PAD_LABEL] = 0
        boxes = self.boxes * np.array([scale_x, scale_y, scale_x, scale_y], dtype=np.float32)
        return SamPrompts(boxes.astype(np.float32), points.astype(np.float32), self.labels)


@dataclass
class PromptSampler:
    """Draws `num_boxes` box prompts and `num_point_prompts` point prompts (each of 1..`max_points` positive
    points) per image, and (`regions`) up to `num_regions` distinct masks per image for region distillation.

    Args:
        num_boxes: box prompts per image (each from one sampled mask).
        num_point_prompts: point prompts per image (each from one sampled mask).
        max_points: most positive points in one point prompt (1 to this many, uniformly).
        box_jitter: std of the box-corner noise, as a fraction of the box side (SAM trains with ~10%).
        min_mask_area: masks with fewer pixels are not prompted (slivers of occluded objects are ambiguous).
        grid_size: cells per side of the grid used on images without masks.
        num_regions: most masks per image that `regions` returns (each at most once).
        seed: the prompts and regions of sample `index` depend only on `(seed, index)`.
    """

    num_boxes: int = 2
    num_point_prompts: int = 2
    max_points: int = 3
    box_jitter: float = 0.1
    min_mask_area: int = 16
    grid_size: int = 8
    num_regions: int = 4
    seed: int = 0

    def __call__(self, masks, height: int, width: int, index: int) -> SamPrompts:
        """Prompts for sample `index`: `masks` is a list of bool `(height, width)` arrays or COCO RLE dicts (may be
        empty); an RLE mask is decoded only when it is prompted."""
        rng = np.random.default_rng([self.seed, index])
        masks = self._usable(masks, self.min_mask_area)
        if masks:
            return self._from_masks(rng, masks, height, width)
        return self._from_grid(rng, height, width)

    def regions(self, masks, index: int) -> list[np.ndarray]:
        """Up to `num_regions` distinct masks of sample `index` (bool `(height, width)` arrays, in drawn order) among
        those with at least `min_mask_area` pixels (and at least one); `masks` as in `__call__`, an RLE mask is
        decoded only when drawn. Fewer usable masks give fewer regions; no masks, none."""
        masks = self._usable(masks, max(self.min_mask_area, 1))  # an empty mask has no crop to show the teacher
        if not masks or not self.num_regions:
            return []
        order = np.random.default_rng([self.seed, index, REGION_STREAM]).permutation(len(masks))
        return [self._decoded(masks[i]) for i in order[: self.num_regions]]

    @staticmethod
    def _usable(masks, min_area: int) -> list:
        # RLE masks are measured without decoding them (an SA-1B image has ~100 masks of millions of pixels).
        masks = [m if is_rle(m) else np.asarray(m, dtype=bool) for m in (masks or [])]
        return [m for m in masks if (rle_area(m) if is_rle(m) else m.sum()) >= min_area]

    @staticmethod
    def _decoded(mask) -> np.ndarray:
        return decode_rle(mask) if is_rle(mask) else mask

    def _choose(self, rng, masks, count):
        # Every mask once (random order) before any repeats, so small images spread prompts over their objects.
        order = np.concatenate([rng.permutation(len(masks)) for _ in range(-(-count // len(masks)))])
        return [self._decoded(masks[i]) for i in order[:count]]

    def _from_masks(self, rng, masks, height, width) -> SamPrompts:
        boxes = np.zeros((self.num_boxes, 4), dtype=np.float32)
        for i, mask in enumerate(self._choose(rng, masks, self.num_boxes)):
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            box = np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)
            side = np.array([box[2] - box[0] + 1, box[3] - box[1] + 1] * 2, dtype=np.float32)
            box = box + rng.normal(0, self.box_jitter, 4).astype(np.float32) * side
            boxes[i] = self._clip_box(box, height, width)
        points = np.zeros((self.num_point_prompts, self.max_points, 2), dtype=np.float32)
        labels = np.full((self.num_point_prompts, self.max_points), POINT_PAD_LABEL, dtype=np.int64)
        for i, mask in enumerate(self._choose(rng, masks, self.num_point_prompts)):
            rows, cols = np.nonzero(mask)
            count = int(rng.integers(1, self.max_points + 1))
            picks = rng.choice(len(rows), size=count, replace=len(rows) < count)
            points[i, :count] = np.stack([cols[picks], rows[picks]], axis=-1)
            labels[i, :count] = 1
        return SamPrompts(boxes, points, labels)

    def _from_grid(self, rng, height, width) -> SamPrompts:
        cells = self.grid_size
        centres = np.stack(np.meshgrid((np.arange(cells) + 0.5) / cells, (np.arange(cells) + 0.5) / cells), -1)
        centres = centres.reshape(-1, 2) * np.array([width, height])
        picks = rng.choice(len(centres), size=self.num_boxes + self.num_point_prompts, replace=True)
        boxes = np.zeros((self.num_boxes, 4), dtype=np.float32)
        for i, (x, y) in enumerate(centres[picks[: self.num_boxes]]):
            half_w, half_h = rng.uniform(0.05, 0.3) * width, rng.uniform(0.05, 0.3) * height
            boxes[i] = self._clip_box(np.array([x - half_w, y - half_h, x + half_w, y + half_h]), height, width)
        points = np.zeros((self.num_point_prompts, self.max_points, 2), dtype=np.float32)
        labels = np.full((self.num_point_prompts, self.max_points), POINT_PAD_LABEL, dtype=np.int64)
        points[:, 0] = centres[picks[self.num_boxes :]]
        labels[:, 0] = 1
        return SamPrompts(boxes, points, labels)

    @staticmethod
    def _clip_box(box, height, width) -> np.ndarray:
        x0, x1 = np.clip(sorted((box[0], box[2])), 0, width - 1)
        y0, y1 = np.clip(sorted((box[1], box[3])), 0, height - 1)
        return np.array([x0, y0, x1, y1], dtype=np.float32)
