"""Text-to-mask from one pass (issue 19): the shared mask pooling, peak prompts, the trunk-affinity read-out, the
semantic map painted from labelled masks (also as the pipeline's semantic default), "none of these" rejection and
instance precision / recall / F1. Values are computed independently on tiny random models or stand-in inputs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import pipeline

from transformers_samclip import SamClipHeadConfig, SamClipInstanceSegmentationOutput, SamClipMaskGenerator
from transformers_samclip.evaluation.instance import above_score
from transformers_samclip.evaluation.metrics import instance_segmentation_metrics
from transformers_samclip.modeling import mask_pooled_tokens, mask_token_weights, peak_points

LABELS = ["red square", "grey noise", "blue sky"]


def test_mask_pooled_tokens_is_the_area_weighted_mean_of_the_tokens_a_mask_covers():
    tokens = torch.arange(12, dtype=torch.float32).reshape(2, 2, 3)  # (h, w, dim)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:4, :4] = True  # all of token (0, 0)
    mask[:4, 4:6] = True  # half of token (0, 1)
    empty = torch.zeros(8, 8, dtype=torch.bool)
    pooled = mask_pooled_tokens(tokens, torch.stack([mask, empty]))
    torch.testing.assert_close(pooled[0], (tokens[0, 0] + 0.5 * tokens[0, 1]) / 1.5)
    torch.testing.assert_close(pooled[1], torch.zeros(3))
    # Logits: > 0 is inside, as SAM's low-resolution masks come.
    torch.testing.assert_close(mask_pooled_tokens(tokens, torch.where(mask, 5.0, -5.0)[None])[0], pooled[0])
    torch.testing.assert_close(mask_token_weights(mask[None], (2, 2)), torch.tensor([[2 / 3, 1 / 3, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"tokens must be \(h, w, dim\)"):
        mask_pooled_tokens(tokens[None], mask[None])


def test_instance_labels_pool_the_head_tokens_with_the_shared_pooling(merged):
    grid = 8  # the tiny model: 64 px SAM path, patch 8; SAM's low-resolution masks are 4x the token grid
    tokens = torch.randn(grid, grid, merged.config.vision_config.hidden_size)
    logits = torch.full((2, 4 * grid, 4 * grid), -3.0)
    logits[0, 2:9, 5:20] = 3.0
    logits[1, 16:, :] = 3.0
    class_embeds = F.normalize(torch.randn(3, merged.config.head_config.projection_dim), dim=-1)
    with torch.no_grad():
        cosines = SamClipMaskGenerator(merged)._mask_class_cosines(tokens, logits, class_embeds, "mean_tokens")
        # Independently: each token weighs the share of its 4x4 block of low-resolution pixels inside the mask.
        share = (logits > 0).float().reshape(2, grid, 4, grid, 4).mean(dim=(2, 4)).flatten(1)
        pooled = (share / share.sum(1, keepdim=True)) @ tokens.flatten(0, 1)
        expected = F.normalize(merged.clip_head.projector(pooled), dim=-1) @ class_embeds.T
    torch.testing.assert_close(cosines, expected)


def test_peak_points_are_local_maxima_best_first_inside_the_image():
    scores = torch.zeros(4, 4)
    scores[0, 1] = 0.9  # a peak
    scores[2, 2] = 0.7  # another
    scores[3, 0] = 0.8  # a peak, but in the padding once the image is 3 tokens tall
    points = peak_points(scores, max_points=5, height=64.0, width=64.0, input_size=64)
    # Token (row, col) -> centre ((col + 0.5) * 16, (row + 0.5) * 16); zeros far from the peaks are plateaus
    # (local maxima too) and come after them.
    assert points[:3].tolist() == [[24.0, 8.0], [8.0, 56.0], [40.0, 40.0]]
    assert len(points) == 4  # token (0, 3), far from every peak, is a plateau
    cropped = peak_points(scores, max_points=5, height=48.0, width=64.0, input_size=64, min_score=0.5)
    assert cropped.tolist() == [[24.0, 8.0], [40.0, 40.0]]
    assert peak_points(scores, 5, 64.0, 64.0, 64, min_score=1.0).shape == (0, 2)


def test_trunk_affinity_read_out_averages_normalised_features_with_the_trunk_affinity(merged):
    trunk = torch.randn(1, 3, 3, merged.config.vision_config.hidden_size)
    with torch.no_grad():
        plain = merged.clip_head.dense_features(trunk)
        merged.clip_head.dense_affinity_temperature = 0.1
        smoothed = merged.clip_head.dense_features(trunk)
    flat = trunk.flatten(1, 2)[0]
    centred = F.normalize(flat - flat.mean(0), dim=-1)
    affinity = (centred @ centred.T / 0.1).softmax(-1)
    expected = affinity @ F.normalize(plain[0].flatten(1).T, dim=-1)
    torch.testing.assert_close(smoothed[0], expected.T.reshape(-1, 3, 3))
    with pytest.raises(
        (ValueError, StrictDataclassClassValidationError), match="dense_affinity_temperature must be > 0"
    ):
        SamClipHeadConfig(dense_affinity_temperature=0.0).validate_architecture()


def stand_in_instances(size):
    """Three instances on a `size` square SAM input (low-resolution logits at size / 2): class 1 with score 0.9
    over the left half, class 0 with 0.5 over the top half (under class 1 where they overlap), class 2 with 0.2
    over the bottom-right quarter."""
    low = size // 2
    logits = torch.full((3, low, low), -5.0)
    logits[0, :, : low // 2] = 5.0
    logits[1, : low // 2, :] = 5.0
    logits[2, low // 2 :, low // 2 :] = 5.0
    return SamClipInstanceSegmentationOutput(
        mask_logits=[logits],
        class_ids=[torch.tensor([1, 0, 2])],
        scores=[torch.tensor([0.9, 0.5, 0.2])],
        class_cosines=[None],
        iou_scores=[None],
    )


def test_semantic_map_from_instances_paints_the_most_confident_instance(merged, monkeypatch):
    size = merged.config.image_size
    generator = SamClipMaskGenerator(merged)
    monkeypatch.setattr(generator, "instance_segmentation", lambda *args, **kwargs: stand_in_instances(size))
    output = generator.semantic_segmentation_from_instances(torch.zeros(1, 3, size, size), torch.zeros(3, 24))
    half = size // 2
    expected = torch.zeros(size, size, dtype=torch.long)
    expected[:half, half:] = 1  # class 0 where class 1 is not
    expected[:, :half] = 2  # class 1 wins its overlap with class 0
    expected[half:, half:] = 3
    assert torch.equal(output.label_map[0], expected)
    assert output.logits.shape == (1, 4, size, size)
    assert output.logits[0, 2, 0, 0].item() == pytest.approx(0.9) and output.logits[
        0, 1, 0, 0
    ].item() == pytest.approx(0.5)
    assert output.logits[0, 3, 0, 0].item() == -1.0 and output.logits[0, 0].abs().sum() == 0


def test_pipeline_semantic_default_is_the_painted_instances(merged, processor, image, tokenizer, monkeypatch):
    # Random weights find no stable masks: the instances are the stand-in ones, the painting and the pipeline real.
    monkeypatch.setattr(
        SamClipMaskGenerator,
        "instance_segmentation",
        lambda *args, **kwargs: stand_in_instances(merged.config.image_size),
    )
    segmenter = pipeline("zero-shot-image-segmentation", model=merged, processor=processor)
    class_embeds = merged.encode_class_names(LABELS, tokenizer)
    for method, view in (("instances", "sam"), ("plain", "dense")):
        inputs = processor(images=image, view=view)
        with torch.no_grad():
            if method == "instances":
                logits = (
                    SamClipMaskGenerator(merged)
                    .semantic_segmentation_from_instances(
                        inputs["pixel_values"], class_embeds, input_sizes=inputs["reshaped_input_sizes"].tolist()
                    )
                    .logits
                )
            else:
                logits = (
                    SamClipMaskGenerator(merged).semantic_segmentation(inputs["pixel_values"], class_embeds).logits
                )
        (expected,) = processor.post_process_semantic_segmentation(
            logits, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )
        kwargs = {} if method == "instances" else {"method": "plain"}
        segments = segmenter(image, candidate_labels=LABELS, **kwargs)
        painted = np.full((48, 80), -1)
        for segment in segments:
            painted[np.array(segment["mask"]) > 0] = ["background", *LABELS].index(segment["label"])
        assert (painted == expected.numpy()).all(), method
        assert len(segments) >= 2, method  # not a vacuous one-label map
    with pytest.raises(ValueError, match="method must be one of"):
        segmenter(image, candidate_labels=LABELS, method="plain", refine=True)


def test_none_of_these_drops_low_scores_and_masks_the_background_prompt_wins(merged, processor, image, tokenizer):
    inputs = processor(images=image, view="sam")
    class_embeds = merged.encode_class_names(LABELS, tokenizer)
    common = dict(pred_iou_threshold=-10.0, stability_threshold=0.0, points_per_side=4)
    with torch.no_grad():
        every = SamClipMaskGenerator(merged).instance_segmentation(inputs["pixel_values"], class_embeds, **common)
        scores = every.scores[0]
        assert len(scores) >= 2
        middle = float(scores.median())
        kept = SamClipMaskGenerator(merged).instance_segmentation(
            inputs["pixel_values"], class_embeds, score_threshold=middle, **common
        )
        # A "background" prompt equal to the classes matches every mask as well as its best class: all dropped.
        rejected = SamClipMaskGenerator(merged).instance_segmentation(
            inputs["pixel_values"], class_embeds, background_embeds=class_embeds, **common
        )
    torch.testing.assert_close(kept.scores[0], scores[scores >= middle])
    assert len(rejected.scores[0]) == 0
    merged.config.instance_score_threshold = 1.0  # the config's calibrated default applies when none is given
    with torch.no_grad():
        assert (
            len(
                SamClipMaskGenerator(merged)
                .instance_segmentation(inputs["pixel_values"], class_embeds, **common)
                .scores[0]
            )
            == 0
        )


def test_peak_prompts_send_at_most_peaks_plus_a_sparse_grid_to_the_decoder(merged, processor, image, tokenizer):
    inputs = processor(images=image, view="sam")
    class_embeds = merged.encode_class_names(LABELS, tokenizer)
    prompted, points = [], []
    segment = merged.segment

    def counting_segment(embeddings, input_points=None, **kwargs):
        prompted.append(input_points.shape[0])
        points.append(input_points.reshape(-1, 2))
        return segment(embeddings, input_points=input_points, **kwargs)

    merged.segment = counting_segment
    with torch.no_grad():
        SamClipMaskGenerator(merged).instance_segmentation(
            inputs["pixel_values"], class_embeds, prompts="peaks", num_peaks=3, peaks_grid_side=2, points_per_side=5
        )
        peaks_total = sum(prompted)
        prompted.clear()
        points.clear()
        SamClipMaskGenerator(merged).instance_segmentation(inputs["pixel_values"], class_embeds, num_peaks=3)
        default_total = sum(prompted)
        centre = merged.config.image_size / 2
        torch.testing.assert_close(torch.cat(points)[-1], torch.tensor([centre, centre]))
        prompted.clear()
        SamClipMaskGenerator(merged).instance_segmentation(
            inputs["pixel_values"], class_embeds, prompts="grid", points_per_side=4
        )
    assert 4 <= peaks_total <= 3 + 4  # a 2x2 fallback grid plus up to 3 peaks; points_per_side is the grid's alone
    assert 1 <= default_total <= 3 + 1  # by default the centre of the image beside the peaks
    assert sum(prompted) == 16
    with pytest.raises(ValueError, match="prompts must be 'grid' or 'peaks'"):
        SamClipMaskGenerator(merged).instance_segmentation(inputs["pixel_values"], class_embeds, prompts="everywhere")


def test_precision_recall_f1_count_every_kept_prediction():
    a = np.zeros((10, 10), bool)
    a[:5, :5] = True
    b = np.zeros((10, 10), bool)
    b[5:, 5:] = True
    c = np.zeros((10, 10), bool)
    c[:5, 5:] = True
    sliver = np.zeros((10, 10), bool)
    sliver[9, 0] = True
    target = {"masks": np.stack([a, b, sliver]), "class_ids": [0, 1, 0], "ignore": [False, False, True]}
    # a right, b named wrong, c a background piece, the sliver matches an ignored target (not counted).
    prediction = {
        "masks": np.stack([a, b, c, sliver]),
        "class_ids": np.array([0, 0, 1, 0]),
        "scores": np.array([0.9, 0.8, 0.3, 0.7]),
    }
    metrics = instance_segmentation_metrics([prediction], [target], 2)
    assert metrics["precision"] == pytest.approx(1 / 3) and metrics["recall"] == pytest.approx(1 / 2)
    assert metrics["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    # Rejecting below 0.5 drops the background piece: precision 1/2, recall unchanged.
    rejected = instance_segmentation_metrics(above_score([prediction], 0.5), [target], 2)
    assert rejected["precision"] == pytest.approx(1 / 2) and rejected["recall"] == pytest.approx(1 / 2)


def test_connected_components_are_8_connected():
    from transformers_samclip.modeling.mask_generation_samclip import _connected_components

    region = torch.zeros(5, 5, dtype=torch.bool)
    region[0, 0] = region[1, 1] = True  # diagonal neighbours: one component
    region[3:, 3:] = True
    components = _connected_components(region)
    assert sorted(int(c.sum()) for c in components) == [2, 4]
    assert torch.equal(sum(c.int() for c in components).bool(), region)


def test_per_component_refinement_keeps_the_coarse_map_where_sam_is_not_trusted(merged, processor, image, tokenizer):
    inputs = processor(images=image, view="sam")
    class_embeds = merged.encode_class_names(LABELS, tokenizer)
    grid = merged.config.image_size // merged.config.patch_size
    low = 4 * merged.config.prompt_encoder_config.image_embedding_size
    with torch.no_grad():
        coarse = (
            SamClipMaskGenerator(merged)
            .semantic_segmentation(
                inputs["pixel_values"], class_embeds, background_threshold=0.0, output_size=(grid, grid)
            )
            .label_map
        )
        # An IoU gate SAM can never reach: every component stays as the coarse map drew it.
        kept = SamClipMaskGenerator(merged).semantic_segmentation_refined(
            inputs["pixel_values"],
            class_embeds,
            background_threshold=0.0,
            per_component=True,
            iou_gate=2.0,
            output_size=(low, low),
        )
        trusted = SamClipMaskGenerator(merged).semantic_segmentation_refined(
            inputs["pixel_values"],
            class_embeds,
            background_threshold=0.0,
            per_component=True,
            iou_gate=-1.0,
            output_size=(low, low),
        )
    expected = F.interpolate(coarse[:, None].float(), size=(low, low))[:, 0].long()
    assert len(coarse.unique()) >= 2  # not a vacuous one-label map
    assert torch.equal(kept.label_map, expected)
    assert not torch.equal(trusted.label_map, expected)  # SAM's masks replace the components when trusted


def test_none_of_these_calibration_and_rejected_rows(merged, processor):
    from transformers_samclip.evaluation.instance import (
        calibrate_instance_score_threshold,
        collect_instances,
        evaluate_instance_segmentation,
        samclip_instance_segmenter,
    )
    from transformers_samclip.mosaic import FASHION_MNIST_CLASSES, make_mosaic_dataset

    mosaics = make_mosaic_dataset("train", 2, seed=0)
    loose = dict(pred_iou_threshold=-10.0, stability_threshold=0.0, points_per_side=4)
    calibrated = calibrate_instance_score_threshold(merged, processor, mosaics, FASHION_MNIST_CLASSES, **loose)
    # The lowest candidate keeps every mask, so the chosen threshold is never worse than keeping all.
    assert calibrated["f1"] >= calibrated["f1_all_masks"]
    segment = samclip_instance_segmenter(merged, processor, FASHION_MNIST_CLASSES, score_threshold=0.0, **loose)
    result = evaluate_instance_segmentation(
        segment, mosaics, FASHION_MNIST_CLASSES, score_thresholds={"rejected": calibrated["threshold"]}
    )
    collected = collect_instances(segment, mosaics)
    kept = above_score(collected["predictions"], calibrated["threshold"])
    assert sum(len(p["scores"]) for p in kept) <= sum(len(p["scores"]) for p in collected["predictions"])
    expected = instance_segmentation_metrics(kept, collected["targets"], len(FASHION_MNIST_CLASSES))
    assert result["rejected"]["rejected"]["f1"] == pytest.approx(expected["f1"])
    assert result["rejected"]["rejected"]["precision"] == pytest.approx(expected["precision"])
