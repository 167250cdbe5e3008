"""Data of SAM-CLIP distillation: D_CLIP (any images), D_SAM (images with optional instance masks), their pairing
for stage 2 (each optimizer step sees one CLIP batch and one SAM batch) and the collator that makes the views,
the prompts and attaches cached teacher outputs.

Unreadable samples never stop a run: a dataset replaces a sample it cannot decode by the next readable one and
counts the failure; the collator reports the count per batch (`num_skipped`), and the trainer sums it."""

import logging
import os
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
from PIL import Image

from ..evaluation._common import decode_image
from ..evaluation.geometry import masked_crop, square_crop
from .annotations import decode_rle, is_rle, rle_area, sa1b_masks
from .prompts import PromptSampler
from .recipe import REGION_TARGETS, _choice

logger = logging.getLogger(__name__)


def decode_mask(value) -> np.ndarray:
    """A bool `(height, width)` mask from an image (any mode; nonzero = inside), COCO RLE (a dict with `size`
    and `counts`, see `decode_rle`) or an array."""
    if is_rle(value):
        return decode_rle(value)
    if isinstance(value, (Image.Image, dict, str, os.PathLike)):
        return np.asarray(decode_image(value).convert("L")) > 0
    return np.asarray(value).astype(bool)


def _cell_overlaps(length: int, resized: int, cells: int, patch: int) -> np.ndarray:
    # (cells, length): the fraction of token cell i (patch px of the resized, padded axis) covered by source pixel j,
    # which spans [j, j + 1) * resized / length there; cells past the resized image cover padding (no pixels).
    edges = np.arange(length + 1) * (resized / length)
    cell_edges = np.arange(cells + 1) * patch
    low = np.maximum(edges[None, :-1], cell_edges[:-1, None])
    high = np.minimum(edges[None, 1:], cell_edges[1:, None])
    return np.clip(high - low, 0, None) / patch


def region_frame_mask(
    mask: np.ndarray, resized_size: tuple[int, int], input_size: tuple[int, int], frame_size: tuple[int, int]
) -> np.ndarray:
    """`mask` (bool `(height, width)`, original pixels) as a bool `frame_size` mask over the SAM view, an
    `input_size` square holding the image resized to `resized_size` (height, width) and padded bottom/right (as
    SAM's processor does). A frame pixel is inside when the mask covers at least half of it (exact area fractions:
    pixels are unit squares); a mask too small for any keeps its best-covered frame pixels, so it is never empty.
    Region distillation gives these masks to `mask_region_features` at SAM's low-resolution mask size (4 frame
    pixels per token), the frame in which label-everything pools its own masks."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return np.zeros(frame_size, dtype=bool)
    # Only the mask's box matters: the products stay small on SA-1B's multi-megapixel masks.
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    cell_h, cell_w = input_size[0] / frame_size[0], input_size[1] / frame_size[1]
    row_weights = _cell_overlaps(mask.shape[0], resized_size[0], frame_size[0], cell_h)[:, y0:y1]
    col_weights = _cell_overlaps(mask.shape[1], resized_size[1], frame_size[1], cell_w)[:, x0:x1]
    fractions = row_weights @ mask[y0:y1, x0:x1].astype(np.float64) @ col_weights.T
    inside = fractions >= 0.5
    return inside if inside.any() else fractions >= fractions.max()


def background_mask(masks) -> np.ndarray | None:
    """The pixels no mask of `masks` (bool arrays or COCO RLE dicts of one image) covers; None when there are no
    masks or they cover everything."""
    if not masks:
        return None
    covered = decode_mask(masks[0]).astype(bool)  # a copy: the masks given stay as they are
    for mask in masks[1:]:
        covered |= decode_mask(mask)
    return None if covered.all() else ~covered


def _without_decoding(dataset, columns):
    # Decode images ourselves (inside try) rather than inside `datasets`, where a corrupt file raises mid-iteration.
    features = dataset.features or {}
    for column in columns:
        feature = features.get(column)
        if isinstance(feature, datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
        elif isinstance(getattr(feature, "feature", None), datasets.Image):
            dataset = dataset.cast_column(column, datasets.List(datasets.Image(decode=False)))
    return dataset


def _load_row(row: dict, index: int, image_column: str, masks_column: str | None) -> dict:
    """A dataset row as an item (`index`, RGB `image`, `masks` when `masks_column` is set); raises when the row is
    unreadable or a mask is not the image's size. A masks value that is text is an SA-1B annotation JSON."""
    item = {"index": index, "image": decode_image(row[image_column]).convert("RGB")}
    if masks_column:
        values = row[masks_column]
        if isinstance(values, (str, bytes)):
            values = sa1b_masks(values, f"sample {row.get('__key__', index)}")
        masks = []
        for mask in values or []:
            if is_rle(mask):
                rle_area(mask)  # a corrupt RLE raises here, so the sample is skipped and counted
                masks.append(mask)
            else:
                masks.append(decode_mask(mask))
            size = tuple(int(v) for v in mask["size"]) if is_rle(mask) else masks[-1].shape
            if size != item["image"].size[::-1]:
                # Prompts from such a mask would point at the wrong pixels: skip the sample, do not train on it.
                raise ValueError(
                    f"mask of size {size[0]}x{size[1]} on an image of {item['image'].height}x{item['image'].width}"
                )
        item["masks"] = masks
    return item


class DistillationImageDataset(torch.utils.data.Dataset):
    """A map-style `datasets.Dataset` of images (and optional instance masks) for distillation.

    Items are dicts: `index`, `image` (RGB PIL), `masks` (list of bool arrays, when `masks_column` is set; COCO
    RLE dicts stay encoded, checked, for the prompt sampler to decode the few it prompts: an SA-1B image has
    about 100 masks of 1500 x 2250 px, 340 MB decoded),
    `skipped` (unreadable samples replaced by this one), plus row `index` of each entry in `cached` (teacher
    outputs, or a frozen student encoder's trunk tokens, from `TeacherOutputCache`, keyed by index).
    """

    def __init__(self, dataset, image_column: str = "image", masks_column: str | None = None, max_retries: int = 16):
        self.dataset = _without_decoding(dataset, [image_column] + ([masks_column] if masks_column else []))
        self.fingerprint = getattr(dataset, "_fingerprint", None)
        self.image_column, self.masks_column, self.max_retries = image_column, masks_column, max_retries
        self.cached: dict = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> dict:
        """Decode sample `index`; raises when it is unreadable or its masks are not the image's size."""
        return _load_row(self.dataset[int(index)], int(index), self.image_column, self.masks_column)

    def __getitem__(self, index: int) -> dict:
        for attempt in range(self.max_retries):
            current = (int(index) + attempt) % len(self)
            try:
                item = self.load(current)
            except Exception as error:  # any decoding failure: skip the sample, never the run
                logger.warning("skipping unreadable sample %d: %s", current, error)
                continue
            item["skipped"] = attempt
            item.update({name: values[current] for name, values in self.cached.items()})
            return item
        raise RuntimeError(
            f"{self.max_retries} consecutive unreadable samples from index {index}; is the data broken?"
        )


class IterableDistillationImageDataset(torch.utils.data.IterableDataset):
    """A streaming (`datasets.IterableDataset`) source of D_CLIP images or of D_SAM images with their masks
    (`masks_column`, as in `DistillationImageDataset`); unreadable samples are skipped and counted on the next
    readable item. Items carry their `key` (`__key__`) and that key's row of each entry in `cached` (teacher outputs
    or student tokens from `TeacherOutputCache`, keyed by `__key__`; `fingerprint` names the stream for it).
    `sharded_by_node` marks a stream already split among the ranks (`datasets.distributed.split_dataset_by_node`),
    which the trainer must not split again."""

    def __init__(
        self, dataset, image_column: str = "image", masks_column: str | None = None, sharded_by_node: bool = False
    ):
        self.dataset = _without_decoding(dataset, [image_column] + ([masks_column] if masks_column else []))
        self.image_column, self.masks_column, self.sharded_by_node = image_column, masks_column, sharded_by_node
        self.fingerprint: str | None = None
        self.cached: dict = {}

    def __iter__(self):
        skipped = 0
        for index, row in enumerate(self.dataset):
            try:
                item = _load_row(row, index, self.image_column, self.masks_column)
            except Exception as error:  # any decoding failure: skip the sample, never the run
                logger.warning("skipping unreadable streamed sample %d: %s", index, error)
                skipped += 1
                continue
            item["skipped"] = skipped
            if "__key__" in row:
                item["key"] = row["__key__"]
                item.update({name: values[row["__key__"]] for name, values in self.cached.items()})
            yield item
            skipped = 0


class PairedDataset(torch.utils.data.Dataset):
    """Stage 2 data: item `i` is CLIP sample `i` plus the index of a SAM sample (`i` modulo the SAM set); the
    collator loads the SAM samples of the first `sam_batch_size` items of each batch, so one batch holds one CLIP
    batch and one SAM batch and samplers, sharding and resuming work as for any dataset."""

    def __init__(self, clip_dataset: DistillationImageDataset, num_sam_samples: int):
        self.clip_dataset, self.num_sam_samples = clip_dataset, num_sam_samples

    def __len__(self) -> int:
        return len(self.clip_dataset)

    def __getitem__(self, index: int) -> dict:
        return {"clip": self.clip_dataset[index], "sam_index": int(index) % self.num_sam_samples}


class PairedIterableDataset(torch.utils.data.IterableDataset):
    """`PairedDataset` for a streaming D_CLIP."""

    def __init__(self, clip_dataset: IterableDistillationImageDataset, num_sam_samples: int):
        self.clip_dataset, self.num_sam_samples = clip_dataset, num_sam_samples
        self.sharded_by_node = clip_dataset.sharded_by_node

    def __iter__(self):
        for count, item in enumerate(self.clip_dataset):
            yield {"clip": item, "sam_index": count % self.num_sam_samples}


class PairedStreamsDataset(torch.utils.data.IterableDataset):
    """Stage 2 data when D_SAM streams too: each of the first `sam_batch_size` items of every `batch_size` CLIP
    items carries the next D_SAM sample (`sam`), the stream restarting when it ends, so one batch holds one CLIP
    batch and one SAM batch and no SAM image is decoded for nothing."""

    def __init__(
        self,
        clip_dataset: IterableDistillationImageDataset,
        sam_dataset: IterableDistillationImageDataset,
        batch_size: int,
        sam_batch_size: int,
    ):
        self.clip_dataset, self.sam_dataset = clip_dataset, sam_dataset
        self.batch_size, self.sam_batch_size = batch_size, sam_batch_size
        self.sharded_by_node = clip_dataset.sharded_by_node

    def _sam_stream(self):
        while True:
            empty = True
            for item in self.sam_dataset:
                empty = False
                yield item
            if empty:
                raise RuntimeError("D_SAM yielded no readable sample; check data.sam.")

    def __iter__(self):
        sam = self._sam_stream()
        for count, item in enumerate(self.clip_dataset):
            yield {"clip": item, "sam": next(sam)} if count % self.batch_size < self.sam_batch_size else {"clip": item}


@dataclass
class SamClipDistillationCollator:
    """Batches for `SamClipDistillationTrainer`.

    CLIP side: `clip_pixel_values` (the student's CLIP-path view, SAM normalisation; side drawn per batch from
    `clip_sizes` when given, e.g. `[224, 448]`) and either `clip_teacher_embeds` (cached) or
    `clip_teacher_pixel_values` (the teacher's own preprocessing of the same images).
    SAM side (when `sam_dataset` is set and items are paired): `sam_pixel_values` (SAM view, shared by teacher and
    student: the merged encoder starts as the SAM teacher's and sees the same input), `input_boxes`,
    `input_points`, `input_labels` from `prompt_sampler` in the SAM frame, and `sam_teacher_embeddings` when cached.
    Regions (region distillation: when `region_teacher_image_processor` is set and `prompt_sampler.num_regions >
    0`): `region_masks (sam_batch, regions, 4 * grid_h, 4 * grid_w)`, each region as a bool mask on SAM's
    low-resolution mask frame of the view (`region_frame_mask`; all-false rows where an image has fewer usable
    masks), `region_valid (sam_batch, regions)` which rows hold a region, and `region_teacher_pixel_values`, the
    teacher's preprocessing of each valid region's view of the original image (`region_target`: `"crop"`, the
    square crop around the mask, or `"masked_crop"`, the same with the pixels outside the mask grey), in the order
    of `region_masks[region_valid]` (absent when no region is valid). `regions` is `num_regions`, plus one when
    `background_region`: the pixels no mask of the image covers, shown to the teacher as their masked crop (the
    items greyed out), so that background pools toward what the teacher sees in background, not toward a class.
    `num_skipped` counts unreadable samples replaced in this batch.
    Items carrying the frozen student encoder's cached trunk tokens of their view (`clip_trunk_tokens`,
    `sam_trunk_tokens`: head-only stages, see `run._train_stage`) give `clip_trunk_tokens` in place of
    `clip_pixel_values` and `sam_trunk_tokens` in place of `sam_pixel_values`.
    """

    processor: object  # SamClipProcessor of the student
    clip_teacher_image_processor: object | None = None
    sam_dataset: DistillationImageDataset | None = None
    sam_batch_size: int = 1
    prompt_sampler: PromptSampler = field(default_factory=PromptSampler)
    clip_sizes: list[int] | None = None
    seed: int = 0
    region_teacher_image_processor: object | None = None
    patch_size: int = 16  # the student encoder's: region masks live on 4x its token grid of the SAM view
    region_target: str = "crop"
    background_region: bool = False

    def __post_init__(self):
        _choice("region_target", self.region_target, REGION_TARGETS)

    @property
    def distills_regions(self) -> bool:
        """Whether SAM batches carry regions (`region_masks`, `region_valid`, `region_teacher_pixel_values`)."""
        return self.region_teacher_image_processor is not None and self.prompt_sampler.num_regions > 0

    def __call__(self, features: list[dict]) -> dict:
        paired = "clip" in features[0]
        clip_items = [f["clip"] for f in features] if paired else features
        batch = self._clip_batch(clip_items)
        skipped = sum(item["skipped"] for item in clip_items)
        sam_items = []
        if "sam" in features[0]:  # streamed D_SAM samples, already loaded (PairedStreamsDataset)
            sam_items = [f["sam"] for f in features[: self.sam_batch_size] if "sam" in f]
        elif "sam_index" in features[0] and self.sam_dataset is not None and self.sam_batch_size > 0:
            sam_items = [self.sam_dataset[f["sam_index"]] for f in features[: self.sam_batch_size]]
        if sam_items:
            batch.update(self._sam_batch(sam_items))
            skipped += sum(item["skipped"] for item in sam_items)
        batch["num_skipped"] = torch.tensor(skipped)
        return batch

    def _clip_batch(self, items: list[dict]) -> dict:
        images = [item["image"] for item in items]
        if all("clip_trunk_tokens" in item for item in items):
            # The frozen encoder's tokens of this very view (`TeacherOutputCache.student_trunk_tokens`, one size).
            batch = {"clip_trunk_tokens": torch.stack([item["clip_trunk_tokens"] for item in items])}
        else:
            kwargs = {}
            if self.clip_sizes:
                size = int(np.random.default_rng([self.seed, items[0]["index"]]).choice(self.clip_sizes))
                kwargs = {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}
            pixel_values = self.processor.clip_image_processor(images, return_tensors="pt", **kwargs)["pixel_values"]
            batch = {"clip_pixel_values": pixel_values}
        if all("clip_teacher_embeds" in item for item in items):
            batch["clip_teacher_embeds"] = torch.stack([item["clip_teacher_embeds"] for item in items])
        elif self.clip_teacher_image_processor is not None:
            batch["clip_teacher_pixel_values"] = self.clip_teacher_image_processor(images, return_tensors="pt")[
                "pixel_values"
            ]
        return batch

    def _sam_batch(self, items: list[dict]) -> dict:
        encoding = self.processor.image_processor([item["image"] for item in items], return_tensors="pt")
        prompts = []
        for item, (height, width), (new_height, new_width) in zip(
            items, encoding["original_sizes"].tolist(), encoding["reshaped_input_sizes"].tolist()
        ):
            sampled = self.prompt_sampler(item.get("masks"), height, width, item["index"])
            prompts.append(sampled.scaled(new_width / width, new_height / height))
        if all("sam_trunk_tokens" in item for item in items):
            batch = {"sam_trunk_tokens": torch.stack([item["sam_trunk_tokens"] for item in items])}
        else:
            batch = {"sam_pixel_values": encoding["pixel_values"]}
        if self.prompt_sampler.num_boxes:
            batch["input_boxes"] = torch.from_numpy(np.stack([p.boxes for p in prompts]))
        if self.prompt_sampler.num_point_prompts:
            batch["input_points"] = torch.from_numpy(np.stack([p.points for p in prompts]))
            batch["input_labels"] = torch.from_numpy(np.stack([p.labels for p in prompts]))
        if all("sam_teacher_embeddings" in item for item in items):
            batch["sam_teacher_embeddings"] = torch.stack([item["sam_teacher_embeddings"] for item in items])
        if self.distills_regions:
            batch.update(
                self._regions(items, encoding["reshaped_input_sizes"].tolist(), encoding["pixel_values"].shape[-2:])
            )
        return batch

    def _regions(self, items: list[dict], resized_sizes, view_size) -> dict:
        view_size = tuple(int(side) for side in view_size)
        frame = (4 * view_size[0] // self.patch_size, 4 * view_size[1] // self.patch_size)
        count = self.prompt_sampler.num_regions + int(self.background_region)
        masks = torch.zeros(len(items), count, *frame, dtype=torch.bool)
        valid = torch.zeros(len(items), count, dtype=torch.bool)
        views = []
        for i, (item, resized) in enumerate(zip(items, resized_sizes)):
            regions = [
                (mask, self.region_target) for mask in self.prompt_sampler.regions(item.get("masks"), item["index"])
            ]
            if self.background_region and (background := background_mask(item.get("masks"))) is not None:
                regions.append((background, "masked_crop"))
            for j, (mask, target) in enumerate(regions):
                masks[i, j] = torch.from_numpy(region_frame_mask(mask, resized, view_size, frame))
                valid[i, j] = True
                views.append(
                    masked_crop(item["image"], mask) if target == "masked_crop" else square_crop(item["image"], mask)
                )
        batch = {"region_masks": masks, "region_valid": valid}
        if views:
            teacher_views = self.region_teacher_image_processor(views, return_tensors="pt")
            batch["region_teacher_pixel_values"] = teacher_views["pixel_values"]
        return batch
