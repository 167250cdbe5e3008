"""SAM-CLIP processor: SAM preprocessing for the SAM path, a CLIP-path view with SAM normalisation, the CLIP
teacher's tokenizer, and post-processing of masks and semantic maps back to the original image size."""

# First, so that an older transformers fails with configuration_samclip's clear message.
from .configuration_samclip import MIN_TRANSFORMERS_VERSION  # noqa: F401, I001

import torch
from transformers import CLIPImageProcessorPil, SamImageProcessorPil, SamProcessor
from transformers.models.sam.image_processing_pil_sam import _rle_to_mask
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import BatchEncoding

from ._validation import PROCESSOR_FILES, PROCESSOR_HINT, check_pretrained_folder, check_prompts, describe, to_rgb_images
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
        if dense_size is not None and (isinstance(dense_size, bool) or not isinstance(dense_size, int) or dense_size < 1):
            raise ValueError(f"dense_size must be a positive integer (the side of the dense view); got {dense_size!r}.")
        encoding = BatchEncoding()
        if images is not None:
            size = dense_size or self.dense_size
            images = to_rgb_images(images, min_resize=min(self.target_size, size))
            if view == "sam":
                input_points, input_labels, input_boxes = check_prompts(
                    [(image.height, image.width) for image in images], input_points, input_labels, input_boxes
                )
                encoding = super().__call__(
                    images, segmentation_maps=segmentation_maps, input_points=input_points,
                    input_labels=input_labels, input_boxes=input_boxes, return_tensors=return_tensors, **kwargs,
                )
            elif view == "dense":
                encoding = self.image_processor(
                    images, size={"longest_edge": size}, pad_size={"height": size, "width": size},
                    return_tensors=return_tensors, **kwargs,
                )
            else:
                encoding = self.clip_image_processor(images, return_tensors=return_tensors, **kwargs)
        elif has_prompts:
            raise ValueError("Prompts need the image they refer to: pass images= as well.")
        if text is not None:
            texts = [text] if isinstance(text, str) else text
            if not isinstance(texts, (list, tuple)) or not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
                raise ValueError(
                    f"text must be a non-empty string or a non-empty list of non-empty strings; got {describe(text)}."
                )
            max_length = self.tokenizer.model_max_length if self.tokenizer.model_max_length < 10**6 else None
            tokens = self.tokenizer(
                texts, padding=True, truncation=max_length is not None, max_length=max_length, return_tensors=return_tensors
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

    def _masks_at_original_size(self, mask_logits, original_size, reshaped_input_size) -> torch.Tensor:
        """`(M, height, width)` bool masks of one image from `(M, h, w)` low-resolution logits (M may be 0)."""
        height, width = (int(v) for v in original_size)
        if len(mask_logits) == 0:
            return torch.zeros((0, height, width), dtype=torch.bool)
        (masks,) = self.image_processor.post_process_masks(
            [mask_logits[None].float().cpu()], [[height, width]], [[int(v) for v in reshaped_input_size]]
        )
        return masks[0]

    def post_process_instance_segmentation(self, outputs, original_sizes, reshaped_input_sizes):
        """Per image, `{"masks": (M, height, width) bool, "class_ids": (M,), "scores": (M,)}` at the original size,
        from a `SamClipInstanceSegmentationOutput` of the `"sam"` view (best score first, as the model returns;
        masks that vanish at the original size are left out)."""
        results = []
        for index, logits in enumerate(outputs.mask_logits):
            masks = self._masks_at_original_size(logits, original_sizes[index], reshaped_input_sizes[index])
            nonempty = masks.flatten(1).any(dim=1).to(outputs.scores[index].device)  # slivers can vanish on resize
            results.append({"masks": masks[nonempty.cpu()], "class_ids": outputs.class_ids[index][nonempty],
                            "scores": outputs.scores[index][nonempty]})
        return results

    def post_process_panoptic_segmentation(self, outputs, original_sizes, reshaped_input_sizes, overlap_threshold=0.5):
        """Per image, `{"segmentation": (height, width) long, "segments_info": [{"id", "label_id", "score"}]}` as
        transformers' panoptic post-processors return: instances painted best score first, each pixel kept by the
        first instance that claims it, an instance dropped when less than `overlap_threshold` of its mask is left
        to it; segment ids start at 1, 0 is unlabelled."""
        results = []
        for instances in self.post_process_instance_segmentation(outputs, original_sizes, reshaped_input_sizes):
            segmentation, kept = paint_instances(instances["masks"], overlap_threshold)
            class_ids, scores = instances["class_ids"].tolist(), instances["scores"].tolist()
            segments = [{"id": number + 1, "label_id": class_ids[index], "score": scores[index]}
                        for number, index in enumerate(kept)]
            results.append({"segmentation": segmentation, "segments_info": segments})
        return results

    @property
    def model_input_names(self):
        return ["pixel_values", "input_ids", "attention_mask", "input_points", "input_labels", "input_boxes"]


__all__ = ["SamClipImageProcessor", "SamClipProcessor", "paint_instances"]
