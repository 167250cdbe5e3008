"""Text-to-mask maps against an independent computation of their documented definitions, on a tiny merged model with
fixed inputs: the plain map (per-patch cosine of the dense CLIP-head features with the class embeddings, background
by threshold or by background embeddings, scaled by the logit scale, bilinearly upsampled, argmax; the upsampling
redone in numpy here) and the SAM-refined map (one SAM mask per class present in the coarse map, prompted by the
class's region as a mask and its best patches as points; background where no mask logit is positive)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transformers_samclip import SamClipMaskGenerator

SIZE = 64  # the tiny model's SAM input


def segmentation(model, method: str, *args, **kwargs):
    """The segmentation method under test (the one place to re-route when these methods move)."""
    return getattr(SamClipMaskGenerator(model), method)(*args, **kwargs)


@pytest.fixture()
def pixels():
    generator = torch.Generator().manual_seed(3)
    # Two images: a smooth gradient under noise and a bright square, so that classes form regions.
    values = torch.randn(2, 3, SIZE, SIZE, generator=generator) * 0.5
    values[0] += torch.linspace(-2, 2, SIZE)[None, None, :]
    values[1, :, 16:48, 8:40] += 2.0
    return values


@pytest.fixture()
def class_embeds():
    return F.normalize(torch.randn(3, 24, generator=torch.Generator().manual_seed(4)), dim=-1)


def bilinear(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of `(..., h, w)` with half-pixel centres (torch's `align_corners=False`), in float64."""

    def axis(source: int, target: int):
        position = np.maximum((np.arange(target) + 0.5) * source / target - 0.5, 0)
        low = np.minimum(np.floor(position).astype(int), source - 1)
        return low, np.minimum(low + 1, source - 1), position - low

    (y0, y1, wy), (x0, x1, wx) = axis(array.shape[-2], height), axis(array.shape[-1], width)
    rows = array[..., y0, :] * (1 - wy)[:, None] + array[..., y1, :] * wy[:, None]
    return rows[..., x0] * (1 - wx) + rows[..., x1] * wx


def cosines(model, pixels, embeds) -> np.ndarray:
    """`(batch, classes, h, w)` cosine of each patch's dense CLIP-head feature with each embedding."""
    with torch.no_grad():
        dense = model.get_dense_image_features(pixels).double()
    dense = dense / dense.norm(dim=1, keepdim=True)
    return torch.einsum("bdhw,cd->bchw", dense, embeds.double()).numpy()


@pytest.mark.parametrize("output_size", [(SIZE, SIZE), (40, 56)])
def test_plain_map_is_the_upsampled_argmax_of_cosines_and_a_background_threshold(
    merged, pixels, class_embeds, output_size
):
    cosine = cosines(merged, pixels, class_embeds)
    threshold = float(np.median(cosine.max(1)))  # background takes about half of the patches
    scores = np.concatenate([np.full_like(cosine[:, :1], threshold), cosine], axis=1) * merged.logit_scale.exp().item()
    expected = bilinear(scores, *output_size)
    out = segmentation(
        merged, "semantic_segmentation", pixels, class_embeds, background_threshold=threshold, output_size=output_size
    )
    np.testing.assert_allclose(out.logits.double().numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(out.label_map.numpy(), expected.argmax(1))
    labels = set(np.unique(out.label_map.numpy()).tolist())
    assert 0 in labels and len(labels) >= 3  # background and several classes: a map that can be wrong


def test_plain_map_with_background_embeddings_takes_their_best_cosine(merged, pixels, class_embeds):
    background_embeds = F.normalize(torch.randn(2, 24, generator=torch.Generator().manual_seed(5)), dim=-1)
    cosine = cosines(merged, pixels, class_embeds)
    background = cosines(merged, pixels, background_embeds).max(1, keepdims=True)
    expected = bilinear(np.concatenate([background, cosine], 1) * merged.logit_scale.exp().item(), SIZE, SIZE)
    out = segmentation(merged, "semantic_segmentation", pixels, class_embeds, background_embeds=background_embeds)
    np.testing.assert_allclose(out.logits.double().numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(out.label_map.numpy(), expected.argmax(1))


def refined_by_hand(model, pixels, class_embeds, threshold, num_points=3, mask_prompt_scale=8.0):
    """The refined map's documented steps, one class at a time: `(batch, 1 + classes, low, low)` logits before the
    final upsampling (background 0, classes absent from the coarse map -1e4)."""
    cosine = cosines(model, pixels, class_embeds)
    coarse = np.concatenate([np.full_like(cosine[:, :1], threshold), cosine], 1) * model.logit_scale.exp().item()
    grid = coarse.shape[-1]
    low = 4 * model.config.prompt_encoder_config.image_embedding_size
    with torch.no_grad():
        embeddings = model.get_image_embeddings(pixels)
    out = np.full((len(pixels), coarse.shape[1], low, low), -1e4)
    out[:, 0] = 0.0
    for image in range(len(pixels)):
        grid_labels = coarse[image].argmax(0)
        low_labels = bilinear(coarse[image], low, low).argmax(0)
        for c in sorted(set(np.unique(grid_labels).tolist()) - {0}):
            region = grid_labels == c
            # The class's most confident patches inside its region (the best one repeated for a tiny region).
            order = np.argsort(-np.where(region, coarse[image, c], -np.inf), axis=None, kind="stable")
            best = order[: min(num_points, int(region.sum()))]
            best = np.concatenate([best, np.repeat(best[:1], num_points - len(best))])
            points = np.stack([best % grid + 0.5, best // grid + 0.5], -1) * (SIZE / grid)
            mask = np.where(low_labels == c, mask_prompt_scale, -mask_prompt_scale)
            with torch.no_grad():
                logits, _ = model.segment(
                    embeddings[image : image + 1],
                    input_points=torch.tensor(points, dtype=torch.float32)[None, None],
                    input_labels=torch.ones(1, 1, num_points, dtype=torch.int),
                    input_masks=torch.tensor(mask, dtype=torch.float32)[None, None],
                    multimask_output=False,
                )
            out[image, c] = logits[0, 0, 0].double().numpy()
    return out, coarse


def test_refined_map_is_sams_mask_per_present_class_with_a_positive_logit(merged, pixels, class_embeds):
    threshold = float(np.median(cosines(merged, pixels, class_embeds).max(1)))
    low_logits, coarse = refined_by_hand(merged, pixels, class_embeds, threshold)
    expected = bilinear(low_logits, SIZE, SIZE)
    out = segmentation(merged, "semantic_segmentation_refined", pixels, class_embeds, background_threshold=threshold)
    np.testing.assert_allclose(out.logits.double().numpy(), expected, atol=1e-5)  # measured: 2e-8
    labels = out.label_map.numpy()
    np.testing.assert_array_equal(labels, expected.argmax(1))
    # The assignment rule: background exactly where no class's mask logit is positive.
    np.testing.assert_array_equal(labels == 0, expected[:, 1:].max(1) <= 0)
    # Only classes of the coarse map can appear, and SAM changed the map (measured: 54% of pixels).
    for image in range(len(pixels)):
        assert set(np.unique(labels[image]).tolist()) <= set(np.unique(coarse[image].argmax(0)).tolist()) | {0}
    plain = segmentation(merged, "semantic_segmentation", pixels, class_embeds, background_threshold=threshold)
    assert np.mean(plain.label_map.numpy() != labels) > 0.05


def per_component_by_hand(model, pixels, class_embeds, threshold, iou_gate, mask_prompt_scale=8.0):
    """The per-component refinement's documented steps (Trident's): each 8-connected component of each class region
    of the coarse map prompted alone by its best patch, its box and its region; SAM's mask where its predicted IoU
    reaches `iou_gate`, else the region prompt itself; a class's logit is the max over its components. Returns the
    `(batch, 1 + classes, low, low)` logits and the predicted IoUs."""
    from scipy import ndimage

    cosine = cosines(model, pixels, class_embeds)
    coarse = np.concatenate([np.full_like(cosine[:, :1], threshold), cosine], 1) * model.logit_scale.exp().item()
    grid = coarse.shape[-1]
    low = 4 * model.config.prompt_encoder_config.image_embedding_size
    scale = SIZE / grid
    with torch.no_grad():
        embeddings = model.get_image_embeddings(pixels)
    out = np.full((len(pixels), coarse.shape[1], low, low), -1e4)
    out[:, 0] = 0.0
    ious = []
    for image in range(len(pixels)):
        grid_labels = coarse[image].argmax(0)
        for c in sorted(set(np.unique(grid_labels).tolist()) - {0}):
            components, count = ndimage.label(grid_labels == c, structure=np.ones((3, 3)))
            for index in range(1, count + 1):
                region = components == index
                best = int(np.argmax(np.where(region, coarse[image, c], -np.inf)))
                ys, xs = np.nonzero(region)
                box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) * scale
                region_low = region.repeat(low // grid, 0).repeat(low // grid, 1)  # nearest upsampling
                prompt = np.where(region_low, mask_prompt_scale, -mask_prompt_scale)
                with torch.no_grad():
                    logits, iou = model.segment(
                        embeddings[image : image + 1],
                        input_points=torch.tensor([[[[best % grid + 0.5, best // grid + 0.5]]]]) * scale,
                        input_boxes=torch.tensor(box, dtype=torch.float32)[None, None],
                        input_masks=torch.tensor(prompt, dtype=torch.float32)[None, None],
                        multimask_output=False,
                    )
                ious.append(iou.item())
                chosen = logits[0, 0, 0].double().numpy() if iou.item() >= iou_gate else prompt
                out[image, c] = np.maximum(out[image, c], chosen)
    return out, ious


def test_per_component_refinement_keeps_sams_mask_only_where_it_is_confident(merged, pixels, class_embeds):
    threshold = float(np.median(cosines(merged, pixels, class_embeds).max(1)))
    _, ious = per_component_by_hand(merged, pixels, class_embeds, threshold, iou_gate=0.0)
    # SAM's mask for about half of the components, the coarse region for the rest; the gate lies halfway between two
    # predicted IoUs, so that float rounding between the two computations cannot flip a component (the median itself
    # is one of them when the count is odd, and flipped one in a full-file run).
    ordered = sorted(ious)
    iou_gate = (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2
    low_logits, _ = per_component_by_hand(merged, pixels, class_embeds, threshold, iou_gate)
    expected = bilinear(low_logits, SIZE, SIZE)
    out = segmentation(
        merged,
        "semantic_segmentation_refined",
        pixels,
        class_embeds,
        background_threshold=threshold,
        per_component=True,
        iou_gate=iou_gate,
    )
    assert len(ious) >= 3 and min(ious) < iou_gate <= max(ious)
    np.testing.assert_allclose(out.logits.double().numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(out.label_map.numpy(), expected.argmax(1))
