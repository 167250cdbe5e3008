"""SamClipProcessor views and errors; transformers' pipelines on a SAM-CLIP model agree with direct calls;
the saved folder loads as remote code where the package cannot be imported."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, pipeline

from transformers_samclip import SamClipMaskGenerator, SamClipProcessor

LABELS = ["red square", "grey noise"]


def test_sam_view_rescales_prompts_and_pads(processor, image):
    encoding = processor(images=image, input_points=[[[40, 24]]], input_boxes=[[[0, 0, 80, 48]]])
    assert encoding["pixel_values"].shape == (1, 3, 64, 64)
    assert encoding["original_sizes"].tolist() == [[48, 80]]
    assert encoding["reshaped_input_sizes"].tolist() == [[38, 64]]
    assert torch.allclose(encoding["input_points"][0, 0, 0].float(), torch.tensor([32.0, 19.0]), atol=0.1)
    assert torch.allclose(encoding["input_boxes"][0, 0].float(), torch.tensor([0.0, 0.0, 64.0, 38.0]), atol=0.1)
    # SAM normalisation: the padded area (zeros after normalising) and a pixel checked by hand.
    assert encoding["pixel_values"][0, :, 50:].abs().max() == 0
    red = torch.tensor([250 / 255, 30 / 255, 30 / 255])
    expected = (red - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(encoding["pixel_values"][0, :, 16, 32], expected, atol=0.05)


def test_clip_and_dense_views_and_text(processor, image, tokenizer):
    clip_view = processor(images=image, text=LABELS)
    assert clip_view["pixel_values"].shape == (1, 3, 32, 32)
    assert clip_view["input_ids"].shape[0] == 2
    assert clip_view["input_ids"][0, 0] == tokenizer.bos_token_id
    dense = processor(images=image, view="dense")  # twice the CLIP-path size by default
    assert processor.dense_size == 64
    assert dense["pixel_values"].shape == (1, 3, 64, 64) and dense["reshaped_input_sizes"].tolist() == [[38, 64]]
    assert processor(images=image, view="dense", dense_size=48)["pixel_values"].shape == (1, 3, 48, 48)


def test_semantic_maps_come_back_at_original_size(processor, image):
    dense = processor(images=image, view="dense", dense_size=32)
    logits = torch.zeros(1, 3, 32, 32)
    logits[0, 2, :, 16:] = 1.0  # right half of the view -> class 2
    (label_map,) = processor.post_process_semantic_segmentation(
        logits, dense["original_sizes"], dense["reshaped_input_sizes"]
    )
    assert label_map.shape == (48, 80)
    assert (label_map[:, :35] == 0).all() and (label_map[:, 45:] == 2).all()


def test_processor_errors(processor, image):
    with pytest.raises(ValueError, match=r"input_points\[0\] falls outside its 80x48 image"):
        processor(images=image, input_points=[[[200, 10]]])
    with pytest.raises(ValueError, match="need the SAM view"):
        processor(images=image, input_points=[[[2, 10]]], view="clip")
    with pytest.raises(ValueError, match="non-empty"):
        processor(text=[])
    with pytest.raises(ValueError, match="view must be one of"):
        processor(images=image, view="thumbnail")
    with pytest.raises(ValueError, match="Give images and/or text"):
        processor()


def test_processor_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, SamClipProcessor)
    assert reloaded.clip_size == 32 and reloaded.target_size == 64
    assert list(reloaded.clip_image_processor.image_mean) == [0.485, 0.456, 0.406]
    assert reloaded.tokenizer("a b")["input_ids"] == processor.tokenizer("a b")["input_ids"]


def test_zero_shot_classification_pipeline_agrees_with_model(merged, processor, image):
    classifier = pipeline(
        "zero-shot-image-classification",
        model=merged,
        tokenizer=processor.tokenizer,
        image_processor=processor.clip_image_processor,
    )
    result = classifier(image, candidate_labels=LABELS)
    inputs = processor(images=image, text=[f"This is a photo of {label}." for label in LABELS])
    with torch.no_grad():
        probabilities = merged(**inputs).logits_per_image.softmax(-1)[0]
    expected = sorted(zip(probabilities.tolist(), LABELS), reverse=True)
    assert [r["label"] for r in result] == [label for _, label in expected]
    assert [r["score"] for r in result] == pytest.approx([p for p, _ in expected], abs=1e-5)


def test_image_feature_extraction_pipeline_returns_image_embeds(merged, processor, image):
    extractor = pipeline("image-feature-extraction", model=merged, image_processor=processor.clip_image_processor)
    features = torch.tensor(extractor(image))
    with torch.no_grad():
        expected = merged(**processor(images=image)).image_embeds
    assert torch.allclose(features, expected, atol=1e-5)


def test_mask_generation_pipeline_agrees_with_prompted_model(merged, processor, image):
    generator = pipeline("mask-generation", model=merged, image_processor=processor.image_processor)
    result = generator(
        image,
        points_per_batch=64,
        points_per_crop=4,
        pred_iou_thresh=-10,
        stability_score_thresh=0.0,
        output_rle_mask=False,
    )
    assert len(result["masks"]) >= 1 and result["masks"][0].shape == (48, 80)
    assert all(-10 < s < 10 for s in result["scores"].tolist())
    # The top mask comes from one of the grid prompts: rerun all 16 through the model and find it.
    grid = (np.stack(np.meshgrid(np.arange(4), np.arange(4)), -1).reshape(-1, 2) + 0.5) / 4 * [80, 48]
    inputs = processor(images=image, input_points=[[[list(p)] for p in grid.tolist()]])
    with torch.no_grad():
        out = merged(**inputs)
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])[0]
    top = torch.as_tensor(result["masks"][0]).bool()
    assert any(torch.equal(top, m) for m in masks.flatten(0, 1))


def test_zero_shot_semantic_segmentation_pipeline(merged, processor, image, tokenizer):
    segmenter = pipeline("zero-shot-semantic-segmentation", model=merged, processor=processor)
    segments = segmenter(image, candidate_labels=LABELS, method="plain")
    class_embeds = merged.encode_class_names(LABELS, tokenizer)
    inputs = processor(images=image, view="dense")
    with torch.no_grad():
        logits = SamClipMaskGenerator(merged).semantic_segmentation(inputs["pixel_values"], class_embeds).logits
    (label_map,) = processor.post_process_semantic_segmentation(
        logits, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )
    union = np.zeros((48, 80), dtype=int)
    for segment in segments:
        mask = np.array(segment["mask"]) > 0
        assert segment["label"] in ["background", *LABELS] and 0 < segment["score"] <= 1
        index = (["background", *LABELS]).index(segment["label"])
        assert (label_map.numpy()[mask] == index).all()
        union += mask
    assert (union == 1).all()  # segments partition the image
    refined = segmenter(image, candidate_labels="red square, grey noise", refine=True)
    assert refined and all(np.array(s["mask"]).shape == (48, 80) for s in refined)
    with pytest.raises(ValueError, match="candidate_labels must be non-empty"):
        segmenter(image, candidate_labels=[])


def test_saved_folder_loads_as_remote_code_without_the_package(merged, processor, image, tmp_path):
    merged.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_samclip.SamClipModel"
    inputs = processor(images=image, input_points=[[[40, 24]]])
    with torch.no_grad():
        expected = merged(**inputs).pred_masks
        text_inputs = processor(images=image, text=LABELS)
        expected_logits = merged(**text_inputs).logits_per_image
    script = f"""
import sys, json, torch
sys.modules["transformers_samclip"] = None  # the package must not be importable here
from PIL import Image
from transformers import AutoModel, AutoProcessor
model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True, attn_implementation="eager").eval()
processor = AutoProcessor.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
image = Image.open({str(tmp_path / "image.png")!r})
with torch.no_grad():
    masks = model(**processor(images=image, input_points=[[[40, 24]]])).pred_masks
    logits = model(**processor(images=image, text={LABELS!r})).logits_per_image
print(json.dumps({{"masks": masks.flatten().tolist(), "logits": logits.flatten().tolist()}}))
"""
    image.save(tmp_path / "image.png")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert torch.allclose(torch.tensor(payload["masks"]), expected.flatten(), atol=1e-5)
    assert torch.allclose(torch.tensor(payload["logits"]), expected_logits.flatten(), atol=1e-5)


def test_default_pipeline_call_of_the_shipped_model_predicts_background_where_nothing_is():
    """A user who asks for the plain map with only an image and labels gets the threshold `samclip distill`
    calibrated: the map beats the all-background map (and the old never-background default) on test mosaics."""
    from transformers_samclip.evaluation.metrics import confusion_matrix, mean_iou
    from transformers_samclip.hub.export import load_samclip
    from transformers_samclip.mosaic import FASHION_MNIST_CLASSES, SHIPPED_MOSAIC_MODEL_DIR, make_mosaic_dataset

    shipped = load_samclip(SHIPPED_MOSAIC_MODEL_DIR)
    assert shipped.model.config.background_threshold is not None
    segmenter = pipeline("zero-shot-semantic-segmentation", model=shipped.model, processor=shipped.processor)
    labels = ["background", *FASHION_MNIST_CLASSES]
    confusion = {"default": 0, "all background": 0, "never background": 0}
    for row in make_mosaic_dataset("test", 30, seed=0):
        target = np.asarray(row["semantic_map"]).astype(np.int64)
        predicted = np.zeros_like(target)
        for segment in segmenter(row["image"], candidate_labels=list(FASHION_MNIST_CLASSES), method="plain"):
            predicted[np.asarray(segment["mask"]) > 0] = labels.index(segment["label"])
        never = np.zeros_like(target)
        for segment in segmenter(
            row["image"], candidate_labels=list(FASHION_MNIST_CLASSES), method="plain", background_threshold=-1.0
        ):
            never[np.asarray(segment["mask"]) > 0] = labels.index(segment["label"])
        for name, prediction in (
            ("default", predicted),
            ("all background", np.zeros_like(target)),
            ("never background", never),
        ):
            confusion[name] = confusion[name] + confusion_matrix(prediction, target, len(labels), None)
    miou = {name: mean_iou(matrix) for name, matrix in confusion.items()}
    assert confusion["default"][:, 0].sum() > 0  # background is predicted
    # Measured: default 0.113, all background 0.072, never background 0.069.
    assert miou["default"] > miou["all background"] + 0.02 and miou["default"] > miou["never background"] + 0.02, miou
