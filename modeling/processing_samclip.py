"""SAM-CLIP processor: SAM preprocessing for the SAM path, a CLIP-path view with SAM normalisation, the CLIP
teacher's tokenizer, and post-processing of masks and semantic maps back to the original image size."""

# First, so that an older transformers fails with configuration_samclip's clear message.
from .configuration_samclip import MIN_TRANSFORMERS_VERSION  # noqa: F401, I001

import math

import torch
from transformers import CLIPImageProcessorPil, SamImageProcessorPil, SamProcessor
from transformers.models.sam.image_processing_pil_sam import _rle_to_mask
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import BatchEncoding

from ._validation import (
    PROCESSOR_FILES,
    PROCESSOR_HINT,
    check_pretrained_folder,
    check_prompts,
    check_score_threshold,
    describe,
    to_rgb_images,
)
from .configuration_samclip import SAM_IMAGE_MEAN, SAM_IMAGE_STD

VIEWS = ("sam", "clip", "dense")


def _box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression on (x0, y0, x1, y1) boxes; indices kept, best score first."""
    order = scores.flatten().argsort(descending=True)
    boxes = boxes.float()
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    keep = []
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    for index in order.tolist():
        if suppressed[index]:
            continue
        keep.append(index)
        top_left = torch.maximum(boxes[index, :2], boxes[:, :2])
        bottom_right = torch.minimum(boxes[index, 2:], boxes[:, 2:])
        inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
        iou = inter / (area[index] + area - inter).clamp(min=1e-9)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long)


def paint_instances(masks: torch.Tensor, overlap_threshold: float = 0.5) -> tuple[torch.Tensor, list[int]]:
    """Non-overlapping segments from `(M, H, W)` bool masks given in paint order (best first): each pixel goes to
    the first mask that claims it; a mask keeps a segment when at least `overlap_threshold` of its (non-empty) area
    is still free. Returns `(segmentation (H, W) long, kept indices)`, segment `k + 1` being mask `kept[k]`, 0
    unlabelled."""
    segmentation = torch.zeros(masks.shape[-2:], dtype=torch.long)
    kept = []
    for index, mask in enumerate(masks):
        free = mask & (segmentation == 0)
        area = int(mask.sum())
        if area == 0 or int(free.sum()) < overlap_threshold * area:
            continue
        kept.append(index)
        segmentation[free] = len(kept)
    return segmentation, kept


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """`(M, 4)` float boxes `(x_min, y_min, x_max, y_max)` of `(M, H, W)` bool masks, in pixel-edge coordinates (a
    mask covering columns 3 to 7 spans x 3.0 to 8.0, so a box's width is its mask's width in pixels); an empty mask
    gets a zero box."""
    boxes = torch.zeros((len(masks), 4), dtype=torch.float32)
    if len(masks) == 0:
        return boxes
    rows, columns = masks.any(dim=2), masks.any(dim=1)  # (M, H), (M, W)
    for index, (row, column) in enumerate(zip(rows, columns)):
        ys, xs = torch.nonzero(row)[:, 0], torch.nonzero(column)[:, 0]
        if len(ys):
            boxes[index] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    return boxes


def _probability_to_logit(probability: float) -> float:
    if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not 0 < probability < 1:
        raise ValueError(f"mask_threshold must be a probability strictly between 0 and 1; got {probability!r}.")
    return math.log(probability / (1 - probability))


class SamClipImageProcessor(SamImageProcessorPil):
    """SAM's PIL image processor whose mask-generation post-processing needs no torchvision (its NMS is plain
    torch), so transformers' `mask-generation` pipeline runs wherever torch does."""

    def post_process_for_mask_generation(self, all_masks, all_scores, all_boxes, crops_nms_thresh):
        """Keep the masks that survive NMS of their boxes; returns (masks, scores, rle_masks, boxes)."""
        keep = _box_nms(all_boxes, all_scores, crops_nms_thresh)
        rle_masks = [all_masks[i] for i in keep.tolist()]
        return [_rle_to_mask(rle) for rle in rle_masks], all_scores[keep], rle_masks, all_boxes[keep]


class SamClipProcessor(SamProcessor):
    r"""
    Prepares inputs of [`SamClipModel`]. Three image views, chosen by `view=` (default: `"sam"` when prompts are
    given, else `"clip"`):

    - `"sam"`: SAM's longest-side resize + pad to the SAM size, SAM normalisation; prompts are rescaled.
    - `"clip"`: the CLIP-path view for classification/retrieval (`clip_image_processor`: shortest-side resize and
      centre crop to the CLIP-path size, SAM normalisation: the shared encoder always sees SAM statistics).
    - `"dense"`: SAM-style resize + pad at `dense_size` (twice the CLIP-path size), for zero-shot semantic
      segmentation; maps come back to the original size with [`post_process_semantic_segmentation`].

    Args:
        image_processor (`SamClipImageProcessor`): the SAM-path processor.
        clip_image_processor (`CLIPImageProcessorPil`): the CLIP-path processor.
        tokenizer: the CLIP teacher's tokenizer.
    """

    def __init__(self, image_processor=None, clip_image_processor=None, tokenizer=None, **kwargs):
        ProcessorMixin.__init__(self, image_processor, clip_image_processor, tokenizer, **kwargs)
        self.target_size = self.image_processor.size["longest_edge"]

    @classmethod
    def from_sizes(cls, tokenizer, sam_size: int = 1024, clip_size: int = 224) -> "SamClipProcessor":
        """Build the processor for a SAM-path size and a CLIP-path size, with SAM normalisation on both views."""
        sam = SamClipImageProcessor(
            size={"longest_edge": sam_size},
            pad_size={"height": sam_size, "width": sam_size},
            mask_size={"longest_edge": sam_size // 4},
            mask_pad_size={"height": sam_size // 4, "width": sam_size // 4},
            image_mean=SAM_IMAGE_MEAN,
            image_std=SAM_IMAGE_STD,
        )
        clip = CLIPImageProcessorPil(
            size={"shortest_edge": clip_size},
            crop_size={"height": clip_size, "width": clip_size},
            image_mean=SAM_IMAGE_MEAN,
            image_std=SAM_IMAGE_STD,
        )
        return cls(image_processor=sam, clip_image_processor=clip, tokenizer=tokenizer)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "SamClipProcessor":
        """`ProcessorMixin.from_pretrained`, after checking a local folder: it exists, is not a CLIP or SAM folder,
        and holds the processor files (a folder written by `model.save_pretrained` alone does not)."""
        check_pretrained_folder(pretrained_model_name_or_path, PROCESSOR_FILES, "SAM-CLIP processor", PROCESSOR_HINT)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        # transformers saves `CLIPImageProcessorPil` under the name "CLIPImageProcessor", and loading that name
        # without torchvision warns and falls back to the PIL class: name the class this processor uses.
        clip_config = (processor_dict or {}).get("clip_image_processor")
        if isinstance(clip_config, dict) and clip_config.get("image_processor_type") == "CLIPImageProcessor":
            clip_config = {**clip_config, "image_processor_type": CLIPImageProcessorPil.__name__}
            processor_dict = {**processor_dict, "clip_image_processor": clip_config}
        return super()._get_arguments_from_pretrained(pretrained_model_name_or_path, processor_dict, **kwargs)

    @property
    def clip_size(self) -> int:
        """Side of the CLIP-path view."""
        return self.clip_image_processor.crop_size["height"]

    @property
    def dense_size(self) -> int:
        """Default side of the `"dense"` view: twice the CLIP-path size (the paper reads its 224 px head at 448 px),
        so that an object spans several patches."""
        return 2 * self.clip_size

    def __call__(
        self,
        images=None,
        text=None,
        segmentation_maps=None,
        input_points=None,
        input_labels=None,
        input_boxes=None,
        view: str | None = None,
        dense_size: int | None = None,
        return_tensors: str = "pt",
        **kwargs,
    ) -> BatchEncoding:
        """Preprocess images (in the chosen view), prompts (original-image coordinates) and text.
        `dense_size` overrides the side of the `"dense"` view (default: `self.dense_size`).

        `images` are converted to RGB once: any PIL mode, numpy arrays and torch tensors (HW, HWC or CHW; uint8, or
        float in [0, 1]), file paths or URLs (see `_validation.to_rgb_images`). Prompts are checked (shape, finite
        values inside their image, labels 1/0/-1) before any work; invalid input raises ValueError or TypeError
        naming the argument."""
        has_prompts = any(x is not None for x in (input_points, input_labels, input_boxes))
        view = view or ("sam" if has_prompts or segmentation_maps is not None else "clip")
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}.")
        if has_prompts and view != "sam":
            raise ValueError("Point and box prompts need the SAM view; drop view= or pass view='sam'.")
        if images is None and text is None:
            raise ValueError("Give images and/or text to process.")
        if dense_size is not None and (
            isinstance(dense_size, bool) or not isinstance(dense_size, int) or dense_size < 1
        ):
            raise ValueError(
                f"dense_size must be a positive integer (the side of the dense view); got {dense_size!r}."
            )
        encoding = BatchEncoding()
        if images is not None:
            size = dense_size or self.dense_size
            images = to_rgb_images(images, min_resize=min(self.target_size, size))
            if view == "sam":
                input_points, input_labels, input_boxes = check_prompts(
                    [(image.height, image.width) for image in images], input_points, input_labels, input_boxes
                )
                encoding = super().__call__(
                    images,
                    segmentation_maps=segmentation_maps,
                    input_points=input_points,
                    input_labels=input_labels,
                    input_boxes=input_boxes,
                    return_tensors=return_tensors,
                    **kwargs,
                )
            elif view == "dense":
                encoding = self.image_processor(
                    images,
                    size={"longest_edge": size},
                    pad_size={"height": size, "width": size},
                    return_tensors=return_tensors,
                    **kwargs,
                )
            else:
                encoding = self.clip_image_processor(images, return_tensors=return_tensors, **kwargs)
        elif has_prompts:
            raise ValueError("Prompts need the image they refer to: pass images= as well.")
        if text is not None:
            texts = [text] if isinstance(text, str) else text
            if (
                not isinstance(texts, (list, tuple))
                or not texts
                or any(not isinstance(t, str) or not t.strip() for t in texts)
            ):
                raise ValueError(
                    f"text must be a non-empty string or a non-empty list of non-empty strings; got {describe(text)}."
                )
            max_length = self.tokenizer.model_max_length if self.tokenizer.model_max_length < 10**6 else None
            tokens = self.tokenizer(
                texts,
                padding=True,
                truncation=max_length is not None,
                max_length=max_length,
                return_tensors=return_tensors,
            )
            encoding.update({k: v for k, v in tokens.items() if k in ("input_ids", "attention_mask")})
        return encoding

    def resize_semantic_logits(self, logits, original_sizes, reshaped_input_sizes):
        """Crop the padding off `(batch, classes, S, S)` maps of a `"dense"` or `"sam"` view (S = that view's side,
        as returned by the model's segmentation methods) and resize them bilinearly to each original image;
        returns one `(classes, height, width)` tensor per image."""
        size = logits.shape[-1]
        maps = self.image_processor.post_process_masks(
            [logits[i : i + 1] for i in range(len(logits))],
            original_sizes,
            reshaped_input_sizes,
            binarize=False,
            pad_size={"height": size, "width": size},
        )
        return [m[0] for m in maps]

    def post_process_semantic_segmentation(self, logits, original_sizes, reshaped_input_sizes):
        """Label maps `(height, width)` (0 = background) at each original image size, from class logits of a
        `"dense"` or `"sam"` view (see `resize_semantic_logits`)."""
        return [m.argmax(0) for m in self.resize_semantic_logits(logits, original_sizes, reshaped_input_sizes)]

    def reshaped_size(self, original_size) -> tuple[int, int]:
        """`(height, width)` of an image of `original_size` inside the SAM view (longest side resized to the SAM size,
        as `SamImageProcessor` does, before the padding)."""
        height, width = (int(v) for v in original_size)
        scale = self.target_size / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def post_process_instance_segmentation(
        self, outputs, threshold=0.0, mask_threshold=0.5, target_sizes=None, reshaped_input_sizes=None
    ):
        """Per image, `{"scores": (M,), "boxes": (M, 4), "masks": (M, height, width) bool, "labels": (M,)}`, as SAM 3's
        processor returns them (plus `labels`, each instance's index in the class names), from a
        `SamClipInstanceSegmentationOutput` of the `"sam"` view; best score first.

        Args:
            threshold: keep instances whose score (class probability times SAM's predicted IoU) is at least this; the
                default 0.0 keeps every instance the model's own mask filters kept.
            mask_threshold: probability (sigmoid of the mask logits) above which a pixel is in the mask.
            target_sizes: `(height, width)` of each original image (the processor's `original_sizes`); masks and
                boxes `(x_min, y_min, x_max, y_max)` come back at that size. `None`: at the SAM view's size.
            reshaped_input_sizes: each image's size inside the SAM view (the processor's `reshaped_input_sizes`);
                derived from `target_sizes` when not given.

        Masks that vanish at the target size (slivers) are left out."""
        check_score_threshold(threshold)
        logit_threshold = _probability_to_logit(mask_threshold)
        count = len(outputs.mask_logits)
        if target_sizes is None:
            target_sizes = [(self.target_size, self.target_size)] * count
        if len(target_sizes) != count:
            raise ValueError(
                f"target_sizes has {len(target_sizes)} sizes for {count} images; give one (height, width) per image."
            )
        if reshaped_input_sizes is None:
            reshaped_input_sizes = [self.reshaped_size(size) for size in target_sizes]
        results = []
        for index, logits in enumerate(outputs.mask_logits):
            height, width = (int(v) for v in target_sizes[index])
            scores = outputs.scores[index]
            keep = (scores >= threshold).cpu()
            logits = logits[keep.to(logits.device)]
            if len(logits) == 0:
                masks = torch.zeros((0, height, width), dtype=torch.bool)
            else:
                (masks,) = self.image_processor.post_process_masks(
                    [logits[None].float().cpu()],
                    [[height, width]],
                    [[int(v) for v in reshaped_input_sizes[index]]],
                    mask_threshold=logit_threshold,
                )
                masks = masks[0]
            nonempty = masks.flatten(1).any(dim=1)  # slivers can vanish on resize
            masks = masks[nonempty]
            kept = keep.nonzero()[:, 0][nonempty]
            results.append(
                {
                    "scores": scores.cpu()[kept],
                    "boxes": masks_to_boxes(masks),
                    "masks": masks,
                    "labels": outputs.class_ids[index].cpu()[kept],
                }
            )
        return results

    def post_process_panoptic_segmentation(
        self,
        outputs,
        target_sizes=None,
        reshaped_input_sizes=None,
        overlap_threshold=0.5,
        threshold=0.0,
        mask_threshold=0.5,
    ):
        """Per image, `{"segmentation": (height, width) long, "segments_info": [{"id", "label_id", "score"}]}` as
        transformers' panoptic post-processors return: the instances of [`post_process_instance_segmentation`]
        (same `threshold`, `mask_threshold`, `target_sizes`, `reshaped_input_sizes`) painted best score first, each
        pixel kept by the first instance that claims it, an instance dropped when less than `overlap_threshold` of
        its mask is left to it; segment ids start at 1, 0 is unlabelled."""
        results = []
        for instances in self.post_process_instance_segmentation(
            outputs,
            threshold=threshold,
            mask_threshold=mask_threshold,
            target_sizes=target_sizes,
            reshaped_input_sizes=reshaped_input_sizes,
        ):
            segmentation, kept = paint_instances(instances["masks"], overlap_threshold)
            labels, scores = instances["labels"].tolist(), instances["scores"].tolist()
            segments = [
                {"id": number + 1, "label_id": labels[index], "score": scores[index]}
                for number, index in enumerate(kept)
            ]
            results.append({"segmentation": segmentation, "segments_info": segments})
        return results

    @property
    def model_input_names(self):
        return ["pixel_values", "input_ids", "attention_mask", "input_points", "input_labels", "input_boxes"]


__all__ = ["SamClipImageProcessor", "SamClipProcessor", "masks_to_boxes", "paint_instances"]
