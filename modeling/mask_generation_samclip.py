"""SAM-CLIP's task recipes on top of the model, as segment-anything's `SamAutomaticMaskGenerator` sits on
`SamPredictor`: automatic masks, open-vocabulary instance segmentation ("label everything") and zero-shot semantic
segmentation (plain, SAM-refined, or painted from the labelled masks).

    generator = SamClipMaskGenerator(model, points_per_side=8, prompts="grid")
    instances = generator.instance_segmentation(pixel_values, class_embeds, input_sizes=sizes)

Every threshold and count lives once, in `SamClipMaskGeneratorOptions`; a method call may override any of them by
name (`generator.instance_segmentation(..., nms_threshold=0.5)`). The generator reads the model only through its
encoder, heads and `segment`, so it serves a model loaded as remote code too. Ships beside the model code (imports
only torch, transformers and its own files).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from ._validation import check_class_embeds, check_pixel_values, check_threshold


@dataclass
class SamClipSemanticSegmentationOutput(ModelOutput):
    r"""
    logits (`torch.Tensor` of shape `(batch_size, 1 + num_classes, height, width)`): channel 0 is background,
        channel `c + 1` is class `c`.
    label_map (`torch.LongTensor` of shape `(batch_size, height, width)`): argmax of `logits` (0 = background).
    """

    logits: torch.Tensor | None = None
    label_map: torch.LongTensor | None = None


@dataclass
class SamClipInstanceSegmentationOutput(ModelOutput):
    r"""
    One entry per image in each list; `M` is the number of instances kept in that image, best score first.

    mask_logits (`list[torch.Tensor]` of shape `(M, 4*grid, 4*grid)`): SAM low-resolution mask logits, to be
        post-processed to the original size with the processor's `post_process_masks`.
    class_ids (`list[torch.LongTensor]` of shape `(M,)`): index of each instance's class in `class_embeds`.
    scores (`list[torch.Tensor]` of shape `(M,)`): confidence (class probability times predicted mask IoU).
    class_cosines (`list[torch.Tensor]` of shape `(M, num_classes)`): cosine of each mask-pooled CLIP-head feature
        with each class embedding.
    iou_scores (`list[torch.Tensor]` of shape `(M,)`): SAM's predicted IoU of each mask.
    """

    mask_logits: list[torch.Tensor] | None = None
    class_ids: list[torch.LongTensor] | None = None
    scores: list[torch.Tensor] | None = None
    class_cosines: list[torch.Tensor] | None = None
    iou_scores: list[torch.Tensor] | None = None


_CHOICES = {
    "prompts": ("grid", "peaks"),
    "mask_pooling": ("mean", "max", "mean_tokens"),
    "label_source": ("dense", "crops"),
}
_POSITIVE_INTEGERS = (
    "points_per_side",
    "points_per_batch",
    "num_peaks",
    "peaks_grid_side",
    "num_points",
    "min_pixels",
)
# Predicted IoUs are a regression head's outputs (below 0 on an untrained decoder), so their thresholds may be any
# finite number; the others are ratios, scores or sizes, for which a negative value is a mistake.
_FINITE = ("pred_iou_threshold", "iou_gate")
_NON_NEGATIVE = ("stability_threshold", "nms_threshold", "crop_padding")
_POSITIVE = ("stability_offset", "mask_prompt_scale")


@dataclass(frozen=True)
class SamClipMaskGeneratorOptions:
    r"""
    Every threshold and count of `SamClipMaskGenerator`, written once. Build one with overrides
    (`SamClipMaskGeneratorOptions(points_per_side=4)`, or `options.replace(points_per_side=4)`); a bad value raises
    a `ValueError` naming the option.

    Automatic masks (SAM's generator, :func:`select_generated_masks`):
    points_per_side (`int`, 8): a `points_per_side`^2 grid of one-point prompts (`prompts="grid"`).
    points_per_batch (`int`, 64): prompts per mask-decoder call.
    pred_iou_threshold (`float`, 0.5): keep masks whose predicted IoU reaches it.
    stability_threshold (`float`, 0.8): keep masks whose stability (IoU of the mask thresholded at
        +-`stability_offset`) reaches it.
    stability_offset (`float`, 1.0): the logit offset of the stability score.
    nms_threshold (`float`, 0.7): greedy NMS on mask IoU drops a mask overlapping a better one by more.
    prompts (`str`, `"peaks"`): `"peaks"`, the `num_peaks` best local maxima of the head's per-patch best-class
        cosine (above `config.background_threshold` when the model has one) plus the `peaks_grid_side` grid; `"grid"`,
        SAM's.
    num_peaks (`int`, 8): peak prompts per image.
    peaks_grid_side (`int`, 1): with peaks, a `peaks_grid_side`^2 grid of prompts beside them, so that an image
        whose head map has no peak still gets one (1: the centre of the image). A 4x4 grid named no more than the
        centre alone on train and test mosaics, and cost 15 more decoder prompts (docs/text-to-mask.md).

    Labels ("none of these"):
    mask_pooling (`str`, `"mean_tokens"`): `"mean_tokens"`, the head tokens averaged inside the mask
        (:func:`mask_pooled_tokens`) then projected; `"mean"` of the text-space features; `"max"` of the per-patch
        class cosines.
    label_source (`str`, `"dense"`): `"crops"` labels each mask by its square crop through the CLIP path instead.
    crop_padding (`float`, 0.2): how much a crop grows around its mask's box.
    background_threshold (`float`, None): the background cosine. Semantic maps: background scores it (None: the
        model's `config.background_threshold`). Instances: masks whose best class cosine is below it are dropped
        (None: none is).
    score_threshold (`float`, None): instances whose confidence (class probability x predicted IoU) is below it are
        dropped (None: `config.instance_score_threshold`; painted maps: every mask is painted).
    containment_threshold (`float`, 0.6): an instance is dropped when at least this share of its area lies inside
        one more confident instance (SAM's part and sub-part masks of a thing, and near-copies NMS let through: a
        part is not a thing); None keeps them. Chosen on train mosaics (docs/text-to-mask.md).

    SAM refinement of the dense map (`semantic_segmentation_refined`):
    num_points (`int`, 3): positive points per class prompt, at the class's most confident patches.
    min_pixels (`int`, 1): patches a class needs in the coarse map to be prompted.
    mask_prompt_scale (`float`, 8.0): the class region is given to SAM as logits of +-`mask_prompt_scale`.
    per_component (`bool`, False): prompt each connected component alone (Trident's refinement).
    iou_gate (`float`, 0.7): with `per_component`, SAM's mask replaces a component only where its predicted IoU
        reaches this; otherwise the coarse component stays.
    """

    points_per_side: int = 8
    points_per_batch: int = 64
    pred_iou_threshold: float = 0.5
    stability_threshold: float = 0.8
    stability_offset: float = 1.0
    nms_threshold: float = 0.7
    prompts: str = "peaks"
    num_peaks: int = 8
    peaks_grid_side: int = 1
    mask_pooling: str = "mean_tokens"
    label_source: str = "dense"
    crop_padding: float = 0.2
    background_threshold: float | None = None
    score_threshold: float | None = None
    containment_threshold: float | None = 0.6
    num_points: int = 3
    min_pixels: int = 1
    mask_prompt_scale: float = 8.0
    per_component: bool = False
    iou_gate: float = 0.7

    def __post_init__(self):
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                quoted = ", ".join(repr(choice) for choice in choices[:-1]) + f" or {choices[-1]!r}"
                raise ValueError(f"{name} must be {quoted}, got {value!r}.")
        for name in _POSITIVE_INTEGERS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r} (default {_default(name)}).")
        for name in (*_FINITE, *_NON_NEGATIVE, *_POSITIVE):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r} (default {_default(name)}).")
            if (name in _NON_NEGATIVE and value < 0) or (name in _POSITIVE and value <= 0):
                bound = ">= 0" if name in _NON_NEGATIVE else "> 0"
                raise ValueError(f"{name} must be {bound}, got {value!r} (default {_default(name)}).")
        check_threshold(self.background_threshold)
        check_threshold(self.score_threshold, "score_threshold")
        if self.score_threshold is not None and self.score_threshold < 0:
            raise ValueError(
                f"score_threshold must be >= 0 (scores lie in [0, 1]; 0 keeps every mask), got "
                f"{self.score_threshold!r}."
            )
        if self.containment_threshold is not None and (
            isinstance(self.containment_threshold, bool)
            or not isinstance(self.containment_threshold, (int, float))
            or not 0 < self.containment_threshold <= 1
        ):
            raise ValueError(
                f"containment_threshold must be a share of a mask's area in (0, 1], or None to keep contained masks; "
                f"got {self.containment_threshold!r} (default {_default('containment_threshold')})."
            )
        if not isinstance(self.per_component, bool):
            raise ValueError(f"per_component must be True or False, got {self.per_component!r}.")

    def replace(self, **overrides) -> SamClipMaskGeneratorOptions:
        """These options with `overrides` (option names) changed; an unknown name raises a `ValueError`."""
        if not overrides:
            return self
        names = [field.name for field in dataclasses.fields(self)]
        unknown = [name for name in overrides if name not in names]
        if unknown:
            hints = []
            for name in unknown:
                match = difflib.get_close_matches(name, names, 1)
                hints.append(f"{name!r} (did you mean {match[0]!r}?)" if match else repr(name))
            raise ValueError(
                f"Unknown mask generator option(s) {', '.join(hints)}; the options are the fields of "
                f"SamClipMaskGeneratorOptions: {', '.join(names)}."
            )
        return dataclasses.replace(self, **overrides)


def _default(name: str):
    return SamClipMaskGeneratorOptions.__dataclass_fields__[name].default


def grid_points(points_per_side: int, height: float, width: float) -> torch.Tensor:
    """`(points_per_side**2, 2)` (x, y) centres of a regular grid over a `height` x `width` region."""
    steps = (torch.arange(points_per_side, dtype=torch.float32) + 0.5) / points_per_side
    return torch.stack(torch.meshgrid(steps * width, steps * height, indexing="xy"), dim=-1).reshape(-1, 2)


def mask_padding(mask_logits: torch.Tensor, height: float, width: float, input_size: int) -> torch.Tensor:
    """Low-resolution mask logits `(..., h, w)` with the part outside the unpadded `height` x `width` region of the
    `input_size` square SAM input set to -1e4, so that masks lying in the padding count as empty."""
    low_h, low_w = mask_logits.shape[-2:]
    rows = torch.arange(low_h, device=mask_logits.device)[:, None] < round(height * low_h / input_size)
    cols = torch.arange(low_w, device=mask_logits.device)[None, :] < round(width * low_w / input_size)
    return mask_logits.masked_fill(~(rows & cols), -1e4)


def select_generated_masks(
    mask_logits: torch.Tensor,
    iou_scores: torch.Tensor,
    pred_iou_threshold: float = _default("pred_iou_threshold"),
    stability_threshold: float = _default("stability_threshold"),
    nms_threshold: float = _default("nms_threshold"),
    stability_offset: float = _default("stability_offset"),
) -> torch.Tensor:
    """SAM's automatic-mask filtering on candidate masks `(N, H, W)` (logits) with predicted IoUs `(N,)`: keep those
    with predicted IoU >= `pred_iou_threshold`, stability (IoU of the mask thresholded at +-`stability_offset`) >=
    `stability_threshold` and some pixels, then greedy NMS on mask IoU at `nms_threshold` (masks, not boxes:
    overlapping objects have overlapping boxes). Returns the kept indices, best predicted IoU first. Defaults:
    `SamClipMaskGeneratorOptions`'."""
    inner = (mask_logits > stability_offset).flatten(1).sum(1)
    outer = (mask_logits > -stability_offset).flatten(1).sum(1)
    stability = inner / outer.clamp(min=1)
    area = (mask_logits > 0).flatten(1).sum(1)
    candidates = torch.nonzero((iou_scores >= pred_iou_threshold) & (stability >= stability_threshold) & (area > 0))
    candidates = candidates[:, 0]
    candidates = candidates[iou_scores[candidates].argsort(descending=True)]
    flat = (mask_logits[candidates] > 0).flatten(1).float()
    intersection = flat @ flat.T
    overlap = intersection / (flat.sum(1)[:, None] + flat.sum(1)[None, :] - intersection).clamp(min=1)
    return candidates[_greedy_keep(overlap > nms_threshold)]


def _greedy_keep(suppresses: torch.Tensor) -> list[int]:
    """Greedy selection down a ranked list of `N` items: item `i` is kept unless an item `j` kept before it has
    `suppresses[i, j]` (an `(N, N)` bool matrix). Mask NMS and the containment rule both walk this way."""
    suppressed = torch.zeros(len(suppresses), dtype=torch.bool, device=suppresses.device)
    kept = []
    for index in range(len(suppresses)):
        if suppressed[index]:
            continue
        kept.append(index)
        suppressed |= suppresses[:, index]
    return kept


def suppress_contained(masks: torch.Tensor, scores: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Indices of the bool masks `(N, H, W)` to keep, best score first: going down the scores, a mask is dropped when
    at least `threshold` of its area lies inside one mask kept before it (`None` drops none). Label-everything
    counts things; SAM's automatic masks also hold their parts and near-copies that NMS on IoU lets through."""
    order = scores.argsort(descending=True)
    if threshold is None or len(order) < 2:
        return order
    flat = masks[order].flatten(1).float()
    inside = (flat @ flat.T) / flat.sum(1)[:, None].clamp(min=1)  # [i, j]: share of mask i inside mask j
    return order[_greedy_keep(inside >= threshold)]


def mask_token_weights(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """`(M, grid_h * grid_w)` pooling weights of `M` masks `(M, H, W)` (bool, or logits: > 0 is inside) over a token
    grid covering the same square: each token's weight is the share of its area the mask covers, normalised to sum
    to 1 (a mask smaller than a patch still pools the patches it touches; an empty mask gets all-zero weights)."""
    inside = masks > 0 if masks.dtype != torch.bool else masks
    weights = F.adaptive_avg_pool2d(inside.float()[:, None], tuple(grid))[:, 0].flatten(1)
    return weights / weights.sum(1, keepdim=True).clamp(min=1e-6)


def mask_pooled_tokens(tokens: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The mean of `(h, w, dim)` tokens inside each of `M` masks `(M, H, W)`: `(M, dim)`, weighted as
    :func:`mask_token_weights`. The one region pooling of SAM-CLIP: label-everything labels a mask by the CLIP head
    projected after this pooling of its tokens, and region distillation should pool its student features the same
    way so that training and read-out agree."""
    if tokens.dim() != 3 or masks.dim() != 3:
        raise ValueError(
            f"tokens must be (h, w, dim) and masks (M, H, W); got {tuple(tokens.shape)} and {tuple(masks.shape)}."
        )
    return mask_token_weights(masks, tokens.shape[:2]).to(tokens.dtype) @ tokens.flatten(0, 1)


def mask_region_features(clip_head, tokens: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """`(M, projection_dim)` unnormalised text-space features of `M` masks `(M, H, W)` over one image's `(h, w,
    hidden)` CLIP-head tokens (`clip_head.dense_tokens`): the tokens pooled inside each mask
    (:func:`mask_pooled_tokens`), then projected. The one region read-out: label-everything labels its masks with
    it, recognition on ground-truth masks measures it, and region distillation trains it."""
    return clip_head.projector(mask_pooled_tokens(tokens, masks))


def peak_points(
    score_map: torch.Tensor,
    max_points: int,
    height: float,
    width: float,
    input_size: int,
    min_score: float | None = None,
) -> torch.Tensor:
    """`(K, 2)` (x, y) prompt points, K <= `max_points`, at the local maxima (3x3) of a `(h, w)` token score map over
    the `input_size` square, best first, inside the unpadded `height` x `width` region and at least `min_score`."""
    grid_h, grid_w = score_map.shape
    pooled = F.max_pool2d(score_map[None, None], 3, stride=1, padding=1)[0, 0]
    rows = torch.arange(grid_h, device=score_map.device)[:, None] < max(round(height * grid_h / input_size), 1)
    cols = torch.arange(grid_w, device=score_map.device)[None, :] < max(round(width * grid_w / input_size), 1)
    is_peak = (score_map >= pooled) & rows & cols
    if min_score is not None:
        is_peak &= score_map >= min_score
    values = score_map.masked_fill(~is_peak, float("-inf")).flatten()
    top = values.topk(min(max_points, int(is_peak.sum()))).indices
    xy = torch.stack([top % grid_w, top // grid_w], dim=-1).to(torch.float32) + 0.5
    return xy * torch.tensor([input_size / grid_w, input_size / grid_h], device=score_map.device)


def _connected_components(region: torch.Tensor) -> list[torch.Tensor]:
    """The 8-connected components of a `(h, w)` bool map, as bool maps (propagating the largest index of each
    component by 3x3 max pooling until nothing changes; the token grids this runs on are small)."""
    height, width = region.shape
    index = torch.arange(1, height * width + 1, device=region.device, dtype=torch.float32).reshape(height, width)
    labels = index * region
    while True:
        grown = F.max_pool2d(labels[None, None], 3, stride=1, padding=1)[0, 0] * region
        if torch.equal(grown, labels):
            break
        labels = grown
    return [labels == value for value in labels.unique().tolist() if value > 0]


def _upsampled_segmentation(logits: torch.Tensor, size) -> SamClipSemanticSegmentationOutput:
    """Class logits `(batch, 1 + C, h, w)` bilinearly upsampled to `size`, with their per-pixel argmax."""
    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return SamClipSemanticSegmentationOutput(logits=logits, label_map=logits.argmax(1))


class SamClipMaskGenerator:
    """Automatic masks, labelled instances and zero-shot semantic maps of a SAM-CLIP `model`, with the thresholds of
    `options` (default `SamClipMaskGeneratorOptions()`) changed by `overrides`; each method takes further overrides
    for its call. The model is read through `vision_encoder`, `clip_head`, `get_dense_image_features`,
    `get_image_features`, `segment`, `logit_scale` and its config, so a model loaded as remote code serves too."""

    def __init__(self, model, options: SamClipMaskGeneratorOptions | None = None, **overrides):
        if options is not None and not isinstance(options, SamClipMaskGeneratorOptions):
            raise TypeError(f"options must be a SamClipMaskGeneratorOptions, got {type(options).__name__}.")
        self.model = model
        self.options = (options or SamClipMaskGeneratorOptions()).replace(**overrides)

    def _check_sam_view(self, pixel_values: torch.Tensor, task: str) -> torch.Tensor:
        config = self.model.config
        pixel_values = check_pixel_values(pixel_values, config.vision_config.num_channels, self.model.dtype)
        size = config.image_size
        if tuple(pixel_values.shape[-2:]) != (size, size):
            raise ValueError(
                f"{task} runs on the {size}x{size} SAM path (the processor's 'sam' view); "
                f"got {tuple(pixel_values.shape[-2:])}."
            )
        return pixel_values

    def _class_logits(self, dense: torch.Tensor, class_embeds, background_embeds, background_threshold):
        model = self.model
        width = model.config.head_config.projection_dim
        check_class_embeds(class_embeds, width)
        if background_embeds is not None:
            check_class_embeds(background_embeds, width, "background_embeds")
        dense = F.normalize(dense, dim=1)
        cosine = torch.einsum("bdhw,cd->bchw", dense, class_embeds.to(dense.dtype))
        if background_threshold is None and background_embeds is None:
            background_threshold = model.config.background_threshold
        if background_embeds is not None:
            background = torch.einsum("bdhw,cd->bchw", dense, background_embeds.to(dense.dtype)).amax(1, keepdim=True)
        elif background_threshold is not None:
            background = torch.full_like(cosine[:, :1], background_threshold)
        else:
            background = torch.full_like(cosine[:, :1], -2.0)  # cosine >= -1: background never wins
        return torch.cat([background, cosine], dim=1) * model.logit_scale.exp()

    @torch.no_grad()
    def semantic_segmentation(
        self,
        pixel_values: torch.Tensor,
        class_embeds: torch.Tensor,
        *,
        background_embeds: torch.Tensor | None = None,
        output_size: tuple[int, int] | None = None,
        **overrides,
    ) -> SamClipSemanticSegmentationOutput:
        """Zero-shot semantic segmentation with the CLIP head alone (the paper's Table 2): per-patch cosine with
        each class embedding, bilinearly upsampled to `output_size` (default: the input size), argmax per pixel.
        Background (label 0) scores the best `background_embeds` match, or the constant `background_threshold`
        (default: `config.background_threshold`, calibrated by `samclip distill`)."""
        options = self.options.replace(**overrides)
        logits = self._class_logits(
            self.model.get_dense_image_features(pixel_values),
            class_embeds,
            background_embeds,
            options.background_threshold,
        )
        return _upsampled_segmentation(logits, output_size or pixel_values.shape[-2:])

    @torch.no_grad()
    def semantic_segmentation_refined(
        self,
        pixel_values: torch.Tensor,
        class_embeds: torch.Tensor,
        *,
        background_embeds: torch.Tensor | None = None,
        output_size: tuple[int, int] | None = None,
        **overrides,
    ) -> SamClipSemanticSegmentationOutput:
        """SAM-refined zero-shot semantic segmentation (the paper's Table 5), from ONE SAM-path encoder pass.

        The CLIP head's coarse map gives, for each class present, a mask prompt (its region, as logits of
        +-`mask_prompt_scale`) and up to `num_points` positive points at its most confident patches; the SAM head
        returns one refined mask per class, and each pixel takes the class with the highest mask logit (background
        where no mask logit is positive). With `per_component=True` (Trident's refinement), each connected component
        of each class region is prompted alone (its best patch, its box and its region) and SAM's mask replaces the
        component only where SAM's predicted IoU reaches `iou_gate`; otherwise the coarse component stays."""
        options = self.options.replace(**overrides)
        model = self.model
        pixel_values = self._check_sam_view(pixel_values, "SAM refinement")
        encoded = model.vision_encoder(pixel_values, compute_neck=True)
        coarse = self._class_logits(
            model.clip_head.dense_features(encoded.trunk_hidden_state),
            class_embeds,
            background_embeds,
            options.background_threshold,
        )
        refine = self._refine_per_component if options.per_component else self._refine_per_class
        refined = [
            refine(encoded.last_hidden_state[index : index + 1], coarse[index], options)
            for index in range(len(coarse))
        ]
        size = model.config.image_size
        return _upsampled_segmentation(torch.stack(refined), output_size or (size, size))

    def _refine_per_class(self, embedding, coarse, options) -> torch.Tensor:
        """SAM's low-resolution logits `(1 + C, 4*grid, 4*grid)` of one image, one mask per class present in its
        coarse logits `(1 + C, grid, grid)`, prompted with the class's region and its best patches."""
        size = self.model.config.image_size
        low_res = 4 * self.model.config.prompt_encoder_config.image_embedding_size
        labels_low = F.interpolate(coarse[None], size=(low_res, low_res), mode="bilinear", align_corners=False)
        labels_low = labels_low.argmax(1)[0]
        grid, num_points = coarse.shape[-1], options.num_points
        grid_labels = coarse.argmax(0)
        present = [c for c in range(1, len(coarse)) if (grid_labels == c).sum() >= options.min_pixels]
        logits = torch.full((len(coarse), low_res, low_res), -1e4, device=coarse.device, dtype=coarse.dtype)
        logits[0] = 0.0
        if not present:
            return logits
        points, masks = [], []
        for c in present:
            score = coarse[c].masked_fill(grid_labels != c, float("-inf")).flatten()
            top = score.topk(min(num_points, int((grid_labels == c).sum()))).indices
            top = torch.cat([top, top[:1].repeat(num_points - len(top))])  # repeat when the region is tiny
            xy = torch.stack([top % grid, top // grid], dim=-1).to(coarse.dtype)
            points.append((xy + 0.5) * (size / grid))
            masks.append(((labels_low == c).to(coarse.dtype) * 2 - 1) * options.mask_prompt_scale)
        count = len(present)
        pred, _ = self.model.segment(
            embedding.expand(count, -1, -1, -1),
            input_points=torch.stack(points)[:, None],
            input_labels=torch.ones(count, 1, num_points, dtype=torch.int, device=coarse.device),
            input_masks=torch.stack(masks)[:, None],
            multimask_output=False,
        )
        logits[present] = pred[:, 0, 0].to(logits.dtype)
        return logits

    def _refine_per_component(self, embedding, coarse, options) -> torch.Tensor:
        """As :meth:`_refine_per_class`, one mask per connected component of each class region, prompted with its
        best patch, its box and its region, and kept only where SAM's predicted IoU reaches `options.iou_gate`."""
        size = self.model.config.image_size
        low_res = 4 * self.model.config.prompt_encoder_config.image_embedding_size
        grid = coarse.shape[-1]
        labels = coarse.argmax(0)
        logits = torch.full((len(coarse), low_res, low_res), -1e4, device=coarse.device, dtype=coarse.dtype)
        logits[0] = 0.0
        components = [
            (c, region) for c in labels.unique().tolist() if c > 0 for region in _connected_components(labels == c)
        ]
        if not components:
            return logits
        points, boxes, masks = [], [], []
        for c, region in components:
            best = coarse[c].masked_fill(~region, float("-inf")).flatten().argmax()
            points.append(torch.stack([best % grid, best // grid]).to(coarse.dtype) + 0.5)
            ys, xs = torch.nonzero(region, as_tuple=True)
            boxes.append(torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).to(coarse.dtype))
            region_low = F.interpolate(region[None, None].to(coarse.dtype), size=(low_res, low_res))[0, 0]
            masks.append((region_low * 2 - 1) * options.mask_prompt_scale)
        scale = size / grid
        pred, iou = self.model.segment(
            embedding.expand(len(components), -1, -1, -1),
            input_points=(torch.stack(points) * scale)[:, None, None],
            input_boxes=(torch.stack(boxes) * scale)[:, None],
            input_masks=torch.stack(masks)[:, None],
            multimask_output=False,
        )
        for (c, _), mask, sam_logits, predicted_iou in zip(components, masks, pred[:, 0, 0], iou[:, 0, 0]):
            # SAM's mask where it is confident, else the coarse component as it was.
            chosen = sam_logits.to(logits.dtype) if predicted_iou >= options.iou_gate else mask
            logits[c] = torch.maximum(logits[c], chosen)
        return logits

    @torch.no_grad()
    def instance_segmentation(
        self,
        pixel_values: torch.Tensor,
        class_embeds: torch.Tensor,
        *,
        input_sizes: list[tuple[int, int]] | None = None,
        background_embeds: torch.Tensor | None = None,
        **overrides,
    ) -> SamClipInstanceSegmentationOutput:
        """Open-vocabulary instance segmentation ("label everything") from ONE encoder pass per image: SAM's
        automatic masks from the shared embeddings (one-point prompts, SAM's three masks each,
        :func:`select_generated_masks`), each labelled by the CLIP head's dense features pooled inside it
        (`mask_pooling`) against `class_embeds`.

        Prompts: `"peaks"` (default) or `"grid"` (see `SamClipMaskGeneratorOptions`). On the shipped mosaic model's
        200 test mosaics 8 peaks + the centre (9 prompts) reached the 8x8 grid's AP50 (0.506 vs 0.495; train: 0.490
        vs 0.472) with a seventh of its decoder prompts (docs/text-to-mask.md).

        "None of these": a mask is dropped when its best class cosine is below `background_threshold`, when its
        confidence is below `score_threshold` (default `config.instance_score_threshold`, calibrated on training
        mosaics by `evaluation.instance.calibrate_instance_score_threshold`; `None` there keeps every mask), or when
        one of `background_embeds` (e.g. the embedding of "background") matches it better than every class. Of what
        is left, a mask mostly inside a more confident one is dropped (`containment_threshold`: parts, near-copies).
        `label_source="crops"` labels each mask instead by its square crop of the input through the CLIP path (one
        more, small, batched encoder pass: the teachers' cascade within one model). `input_sizes` are the unpadded
        `(height, width)` of each image in the SAM input (the processor's `reshaped_input_sizes`), so that no prompt
        lands in the padding; default: the whole input."""
        options = self.options.replace(**overrides)
        model = self.model
        width = model.config.head_config.projection_dim
        check_class_embeds(class_embeds, width)
        if background_embeds is not None:
            check_class_embeds(background_embeds, width, "background_embeds")
        background_threshold = options.background_threshold
        score_threshold = options.score_threshold
        if score_threshold is None:
            score_threshold = model.config.instance_score_threshold
        size = model.config.image_size
        pixel_values = self._check_sam_view(pixel_values, "Instance segmentation")
        encoded = model.vision_encoder(pixel_values, compute_neck=True)
        class_embeds = class_embeds.to(encoded.last_hidden_state.dtype)
        # The crops path reads the CLIP head on the crops, not on this pass's tokens (peaks still need them).
        needs_tokens = options.label_source == "dense" or options.prompts == "peaks"
        tokens = model.clip_head.dense_tokens(encoded.trunk_hidden_state) if needs_tokens else None
        if options.prompts == "peaks":
            objectness = (F.normalize(model.clip_head.projector(tokens), dim=-1) @ class_embeds.T).amax(-1)
        output = SamClipInstanceSegmentationOutput(
            mask_logits=[], class_ids=[], scores=[], class_cosines=[], iou_scores=[]
        )
        for image_index in range(pixel_values.shape[0]):
            height, width = input_sizes[image_index] if input_sizes is not None else (size, size)
            if options.prompts == "grid":
                points = grid_points(options.points_per_side, float(height), float(width))
            else:
                points = torch.cat(
                    [
                        peak_points(
                            objectness[image_index],
                            options.num_peaks,
                            float(height),
                            float(width),
                            size,
                            model.config.background_threshold,
                        ).cpu(),
                        grid_points(options.peaks_grid_side, float(height), float(width)),
                    ]
                )
            points = points.to(class_embeds.device, class_embeds.dtype)
            embedding = encoded.last_hidden_state[image_index : image_index + 1]
            logits, ious = [], []
            for start in range(0, len(points), options.points_per_batch):
                chunk = points[start : start + options.points_per_batch]
                masks, iou = model.segment(
                    embedding.expand(len(chunk), -1, -1, -1), input_points=chunk[:, None, None], multimask_output=True
                )
                logits.append(masks[:, 0].flatten(0, 1))
                ious.append(iou[:, 0].flatten())
            logits, ious = mask_padding(torch.cat(logits), height, width, size), torch.cat(ious)
            kept = select_generated_masks(
                logits,
                ious,
                options.pred_iou_threshold,
                options.stability_threshold,
                options.nms_threshold,
                options.stability_offset,
            )
            logits, ious = logits[kept], ious[kept]
            image = (pixel_values[image_index], None if tokens is None else tokens[image_index], logits)
            cosines = self._label_cosines(*image, class_embeds, options)
            best, class_ids = cosines.max(dim=1)
            probabilities = (cosines * model.logit_scale.exp()).softmax(dim=1)
            scores = probabilities.gather(1, class_ids[:, None])[:, 0] * ious.clamp(0, 1)
            keep = torch.ones_like(best, dtype=torch.bool)
            if background_threshold is not None:
                keep &= best >= background_threshold
            if score_threshold is not None:
                keep &= scores >= score_threshold
            if background_embeds is not None and len(logits):
                keep &= best > self._label_cosines(*image, background_embeds.to(class_embeds), options).amax(dim=1)
            kept = torch.nonzero(keep)[:, 0]
            kept = kept[suppress_contained(logits[kept] > 0, scores[kept], options.containment_threshold)]
            for name, value in (
                ("mask_logits", logits),
                ("class_ids", class_ids),
                ("scores", scores),
                ("class_cosines", cosines),
                ("iou_scores", ious),
            ):
                getattr(output, name).append(value[kept])
        return output

    @torch.no_grad()
    def semantic_segmentation_from_instances(
        self,
        pixel_values: torch.Tensor,
        class_embeds: torch.Tensor,
        *,
        output_size: tuple[int, int] | None = None,
        input_sizes: list[tuple[int, int]] | None = None,
        background_embeds: torch.Tensor | None = None,
        **overrides,
    ) -> SamClipSemanticSegmentationOutput:
        """Zero-shot semantic segmentation from the labelled masks of ONE encoder pass: the instances of
        :meth:`instance_segmentation` (with these options and `background_embeds`) painted into a map, each pixel
        taking the class of the most confident instance covering it, background where none does. Masks are upsampled
        bilinearly from SAM's low resolution to `output_size` (default: the input size) before painting. `logits`
        channel `c + 1` is the best confidence (class probability x predicted IoU, in [0, 1]) of a class-`c` instance
        covering the pixel, -1 where none does; channel 0 (background) is 0. Every mask is painted unless
        `score_threshold` is given (the config's `instance_score_threshold` is not applied here: on train mosaics
        rejecting masks cost the painted map more than it saved, 0.273 -> 0.249 mIoU, since an unnamed pixel is
        background)."""
        options = self.options.replace(**overrides)
        if options.score_threshold is None:
            options = options.replace(score_threshold=0.0)
        config = self.model.config
        size = config.image_size
        pixel_values = check_pixel_values(pixel_values, config.vision_config.num_channels, self.model.dtype)
        instances = self.instance_segmentation(
            pixel_values,
            class_embeds,
            input_sizes=input_sizes,
            background_embeds=background_embeds,
            **dataclasses.asdict(options),
        )
        output_size = tuple(output_size or (size, size))
        num_classes = class_embeds.shape[0]
        maps = []
        for mask_logits, class_ids, scores in zip(instances.mask_logits, instances.class_ids, instances.scores):
            logits = torch.full((num_classes + 1, *output_size), -1.0, device=pixel_values.device, dtype=scores.dtype)
            logits[0] = 0.0
            if len(mask_logits):
                inside = (
                    F.interpolate(mask_logits[:, None], size=output_size, mode="bilinear", align_corners=False)[:, 0]
                    > 0
                )
                # Per class, the best confidence of an instance covering the pixel.
                for mask, class_id, score in zip(inside, class_ids.tolist(), scores):
                    logits[class_id + 1] = torch.where(
                        mask, logits[class_id + 1].clamp(min=score), logits[class_id + 1]
                    )
            maps.append(logits)
        logits = torch.stack(maps)
        return SamClipSemanticSegmentationOutput(logits=logits, label_map=logits.argmax(1))

    def _label_cosines(self, pixel_values, tokens, mask_logits, embeds, options) -> torch.Tensor:
        """`(M, C)` cosines of each mask with each embedding, read as `options.label_source` says."""
        if options.label_source == "crops":
            return self._crop_class_cosines(pixel_values, mask_logits, embeds, options.crop_padding)
        return self._mask_class_cosines(tokens, mask_logits, embeds, options.mask_pooling)

    def _crop_class_cosines(self, pixel_values, mask_logits, class_embeds, padding: float | None = None):
        # The framing of CLIP's single-object views: a square around the mask's box, grown by `padding` (default:
        # the options' crop_padding), shifted to stay inside the input, resized to the CLIP-path size.
        padding = self.options.crop_padding if padding is None else padding
        size, low_res = pixel_values.shape[-1], mask_logits.shape[-1]
        crops = []
        for mask in mask_logits > 0:
            ys, xs = torch.nonzero(mask, as_tuple=True)
            y0, y1 = ys.min().item() * size / low_res, (ys.max().item() + 1) * size / low_res
            x0, x1 = xs.min().item() * size / low_res, (xs.max().item() + 1) * size / low_res
            side = min(max(round(max(y1 - y0, x1 - x0) * (1 + padding)), 1), size)
            top = int(min(max((y0 + y1 - side) // 2, 0), size - side))
            left = int(min(max((x0 + x1 - side) // 2, 0), size - side))
            crop = pixel_values[None, :, top : top + side, left : left + side]
            crops.append(
                F.interpolate(
                    crop,
                    size=(self.model.config.head_config.image_size,) * 2,
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )
            )
        if not crops:
            return class_embeds.new_zeros((0, class_embeds.shape[0]))
        embeddings = self.model.get_image_features(torch.cat(crops).to(pixel_values.dtype)).pooler_output
        return F.normalize(embeddings, dim=-1) @ class_embeds.T

    def _mask_class_cosines(self, tokens, mask_logits, class_embeds, mask_pooling):
        # Masks come at SAM's low resolution (4x the token grid); the pooling is the shared `mask_pooled_tokens`.
        projector = self.model.clip_head.projector
        if mask_pooling == "mean_tokens":
            return (
                F.normalize(mask_region_features(self.model.clip_head, tokens, mask_logits), dim=-1) @ class_embeds.T
            )
        weights = mask_token_weights(mask_logits, tokens.shape[:2]).to(tokens.dtype)  # (M, g*g)
        features = F.normalize(projector(tokens.flatten(0, 1)), dim=-1)  # (g*g, dim)
        if mask_pooling == "mean":
            return F.normalize(weights @ features, dim=-1) @ class_embeds.T
        cosines = features @ class_embeds.T  # (g*g, C)
        inside = weights > 0.5 * weights.amax(1, keepdim=True)
        return torch.where(inside[:, :, None], cosines[None], torch.tensor(-2.0, dtype=cosines.dtype)).amax(1)


__all__ = [
    "SamClipInstanceSegmentationOutput",
    "SamClipMaskGenerator",
    "SamClipMaskGeneratorOptions",
    "SamClipSemanticSegmentationOutput",
    "grid_points",
    "mask_padding",
    "mask_pooled_tokens",
    "mask_region_features",
    "mask_token_weights",
    "peak_points",
    "select_generated_masks",
]
