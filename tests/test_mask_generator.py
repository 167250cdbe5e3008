"""SamClipMaskGenerator and its options (issue 22): every threshold written once, overrides per generator and per
call, bad options named; SamClipModel is a SamModel whose recipes ship beside it as remote code."""

import dataclasses
import inspect

import pytest
import torch
from transformers import SamModel, pipeline

from transformers_samclip import SamClipMaskGenerator, SamClipMaskGeneratorOptions, SamClipModel
from transformers_samclip.evaluation.semantic import segment_everything
from transformers_samclip.modeling import select_generated_masks, suppress_contained
from transformers_samclip.modeling.pipeline_samclip import GENERATOR_OPTIONS

LABELS = ["red square", "grey noise"]


def test_the_thresholds_are_written_once():
    defaults = SamClipMaskGeneratorOptions()
    assert (defaults.points_per_side, defaults.pred_iou_threshold, defaults.stability_threshold) == (8, 0.5, 0.8)
    assert (defaults.nms_threshold, defaults.stability_offset) == (0.7, 1.0)
    # The plain selection function and the teachers' cascade take their defaults from the options.
    for function in (select_generated_masks, segment_everything):
        parameters = inspect.signature(function).parameters
        for name in ("pred_iou_threshold", "stability_threshold", "nms_threshold"):
            assert name not in parameters or parameters[name].default == getattr(defaults, name), (function, name)
    # The pipeline takes every option by name (background_threshold is its own argument).
    fields = {field.name for field in dataclasses.fields(SamClipMaskGeneratorOptions)}
    assert set(GENERATOR_OPTIONS) == fields - {"background_threshold"}


def test_options_are_frozen_and_replace_returns_a_copy():
    defaults = SamClipMaskGeneratorOptions()
    changed = defaults.replace(points_per_side=4, nms_threshold=0.5)
    assert (changed.points_per_side, changed.nms_threshold, changed.num_peaks) == (4, 0.5, 8)
    assert defaults.points_per_side == 8 and defaults.replace() is defaults
    with pytest.raises(dataclasses.FrozenInstanceError):
        defaults.points_per_side = 2


def counting_prompts(model):
    """Replace `model.segment` by a wrapper recording how many prompts each call sends; returns the record."""
    prompted, segment = [], model.segment

    def counting_segment(embeddings, input_points=None, **kwargs):
        prompted.append(input_points.shape[0])
        return segment(embeddings, input_points=input_points, **kwargs)

    model.segment = counting_segment
    return prompted


def test_generator_options_and_call_overrides_reach_the_decoder(merged, processor, image, tokenizer):
    inputs = processor(images=image, view="sam")
    class_embeds = merged.encode_class_names(LABELS, tokenizer)
    prompted = counting_prompts(merged)
    generator = SamClipMaskGenerator(merged, SamClipMaskGeneratorOptions(prompts="grid"), points_per_side=4)
    assert (generator.options.prompts, generator.options.points_per_side) == ("grid", 4)
    with torch.no_grad():
        generator.instance_segmentation(inputs["pixel_values"], class_embeds)
        assert prompted == [16]  # a 4x4 grid, one decoder call
        prompted.clear()
        generator.instance_segmentation(inputs["pixel_values"], class_embeds, points_per_side=3, points_per_batch=4)
        assert prompted == [4, 4, 1]  # a 3x3 grid for this call only, 4 prompts per decoder call
        prompted.clear()
        generator.instance_segmentation(inputs["pixel_values"], class_embeds)
    assert prompted == [16] and generator.options.points_per_side == 4


def test_a_generator_threshold_equals_the_same_call_override(merged, processor, image, tokenizer):
    inputs = processor(images=image, view="sam")
    class_embeds = merged.encode_class_names(LABELS, tokenizer)
    loose = dict(pred_iou_threshold=-10.0, stability_threshold=0.0, points_per_side=4, score_threshold=0.0)
    with torch.no_grad():
        by_generator = SamClipMaskGenerator(merged, **loose).instance_segmentation(
            inputs["pixel_values"], class_embeds
        )
        by_call = SamClipMaskGenerator(merged).instance_segmentation(inputs["pixel_values"], class_embeds, **loose)
        strict = SamClipMaskGenerator(merged, **loose).instance_segmentation(
            inputs["pixel_values"], class_embeds, stability_threshold=1.01
        )
    assert len(by_generator.scores[0]) >= 2 and len(strict.scores[0]) == 0  # stability is at most 1
    for name in ("mask_logits", "class_ids", "scores", "iou_scores"):
        assert torch.equal(getattr(by_generator, name)[0], getattr(by_call, name)[0]), name


def test_label_everything_drops_masks_inside_a_more_confident_one(merged, processor, image, tokenizer):
    inputs = processor(images=image, view="sam")
    class_embeds = merged.encode_class_names(LABELS, tokenizer)
    loose = dict(pred_iou_threshold=-10.0, stability_threshold=0.0, points_per_side=4, score_threshold=0.0)
    generator = SamClipMaskGenerator(merged, **loose)
    with torch.no_grad():
        every = generator.instance_segmentation(inputs["pixel_values"], class_embeds, containment_threshold=None)
        default = generator.instance_segmentation(inputs["pixel_values"], class_embeds)
    masks, scores = every.mask_logits[0] > 0, every.scores[0]
    kept = suppress_contained(masks, scores, SamClipMaskGeneratorOptions().containment_threshold)
    assert 0 < len(kept) < len(scores)  # the untrained decoder's masks hold parts of each other
    assert torch.equal(default.scores[0], scores[kept])
    assert torch.equal(default.mask_logits[0], every.mask_logits[0][kept])
    inside = default.mask_logits[0] > 0
    for worse in range(1, len(inside)):  # no kept mask lies 60% inside a better one
        shares = (inside[worse] & inside[:worse]).flatten(1).sum(1) / inside[worse].sum().clamp(min=1)
        assert shares.max() < 0.6


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"point_per_side": 4},
            r"Unknown mask generator option\(s\) 'point_per_side' \(did you mean 'points_per_side'",
        ),
        ({"colour": "red"}, r"Unknown mask generator option\(s\) 'colour'; the options are the fields"),
        ({"points_per_side": 0}, r"points_per_side must be a positive integer, got 0 \(default 8\)"),
        ({"num_points": 2.5}, r"num_points must be a positive integer, got 2.5 \(default 3\)"),
        ({"peaks_grid_side": 0}, r"peaks_grid_side must be a positive integer, got 0 \(default 1\)"),
        ({"stability_threshold": -0.1}, r"stability_threshold must be >= 0, got -0.1 \(default 0.8\)"),
        ({"nms_threshold": float("nan")}, r"nms_threshold must be a finite number, got nan \(default 0.7\)"),
        ({"crop_padding": -1}, r"crop_padding must be >= 0, got -1 \(default 0.2\)"),
        ({"mask_prompt_scale": 0.0}, r"mask_prompt_scale must be > 0, got 0.0 \(default 8.0\)"),
        ({"score_threshold": -0.5}, r"score_threshold must be >= 0 \(scores lie in \[0, 1\]; 0 keeps every mask\)"),
        ({"background_threshold": "high"}, r"background_threshold must be a finite number \(a cosine"),
        ({"mask_pooling": "median"}, r"mask_pooling must be 'mean', 'max' or 'mean_tokens', got 'median'"),
        ({"prompts": "everywhere"}, r"prompts must be 'grid' or 'peaks', got 'everywhere'"),
        ({"per_component": "yes"}, r"per_component must be True or False, got 'yes'"),
        ({"containment_threshold": 1.5}, r"containment_threshold must be a share of a mask's area in \(0, 1\]"),
        ({"containment_threshold": 0}, r"or None to keep contained masks; got 0 \(default 0.6\)"),
    ],
)
def test_bad_options_name_the_option_and_the_fix(merged, overrides, message):
    with pytest.raises(ValueError, match=message):
        SamClipMaskGeneratorOptions().replace(**overrides)
    with pytest.raises(ValueError, match=message):
        SamClipMaskGenerator(merged, **overrides)
    with pytest.raises(ValueError, match=message):  # at call time, before the encoder runs
        SamClipMaskGenerator(merged).instance_segmentation(torch.zeros(1, 3, 2, 2), torch.zeros(1, 24), **overrides)


def _square(top, left, side, size=10):
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_a_part_inside_a_more_confident_thing_is_dropped_and_the_order_is_by_score():
    thing, part, neighbour, hanging = _square(0, 0, 6), _square(1, 1, 3), _square(6, 6, 4), _square(4, 4, 4)
    masks = torch.stack([part, thing, neighbour, hanging])
    scores = torch.tensor([0.5, 0.9, 0.7, 0.6])
    # The part (9 of 9 pixels inside the thing) goes; the hanging square has 4 of 16 pixels in the thing and 4 of 16
    # in the neighbour: 0.25 each, below 0.6, so it stays; order is by score.
    assert suppress_contained(masks, scores, 0.6).tolist() == [1, 2, 3]
    assert suppress_contained(masks, scores, 0.25).tolist() == [1, 2]
    assert suppress_contained(masks, scores, None).tolist() == [1, 2, 3, 0]
    # A part more confident than its thing keeps both: only a better mask can absorb a worse one.
    assert suppress_contained(masks, torch.tensor([0.95, 0.9, 0.7, 0.6]), 0.6).tolist() == [0, 1, 2, 3]
    assert suppress_contained(masks[:0], scores[:0], 0.6).tolist() == []


def test_predicted_iou_thresholds_may_be_negative():
    # An untrained decoder predicts IoUs below 0: a negative threshold keeps every mask.
    options = SamClipMaskGeneratorOptions(pred_iou_threshold=-10.0, iou_gate=-1.0)
    assert (options.pred_iou_threshold, options.iou_gate) == (-10.0, -1.0)


def test_options_must_be_an_options_object(merged):
    with pytest.raises(TypeError, match="options must be a SamClipMaskGeneratorOptions, got dict"):
        SamClipMaskGenerator(merged, {"points_per_side": 4})


def test_the_pipeline_takes_the_options_and_refuses_bad_values(merged, processor, image):
    segmenter = pipeline("zero-shot-image-segmentation", model=merged, processor=processor)
    with pytest.raises(ValueError, match=r"nms_threshold must be >= 0, got -1"):
        segmenter(image, candidate_labels=LABELS, subtask="instance", nms_threshold=-1)
    with pytest.raises(TypeError, match="Unexpected argument"):
        segmenter(image, candidate_labels=LABELS, colour="red")
    # A refinement option reaches the SAM-refined map: one prompt point per class instead of three.
    prompted = []
    segment = merged.segment

    def recording_segment(embeddings, input_points=None, **kwargs):
        prompted.append(tuple(input_points.shape))
        return segment(embeddings, input_points=input_points, **kwargs)

    merged.segment = recording_segment
    segmenter(image, candidate_labels=LABELS, method="refined", num_points=1)
    assert prompted and all(shape[-2] == 1 for shape in prompted)


def test_samclip_model_is_a_sam_model_and_its_recipes_ship_with_it(saved_tiny_model):
    model, info = SamClipModel.from_pretrained(saved_tiny_model, output_loading_info=True)
    assert isinstance(model, SamModel)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    # SAM's own methods, inherited rather than retyped.
    assert SamClipModel.get_image_wide_positional_embeddings is SamModel.get_image_wide_positional_embeddings
    assert SamClipModel.get_image_embeddings is SamModel.get_image_embeddings
    # save_pretrained copies the model module's relative imports: the generator and the sibling modules.
    shipped = {path.name for path in saved_tiny_model.glob("*.py")}
    assert {
        "modeling_samclip.py",
        "mask_generation_samclip.py",
        "text_samclip.py",
        "dense_readout_samclip.py",
    } <= shipped
