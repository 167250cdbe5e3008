"""Label everything: SAM's automatic-mask selection, instance/panoptic metrics, dense read-outs, one-pass instance
segmentation on the shipped mosaic model, and the zero-shot-image-segmentation pipeline (also as remote code)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from PIL import Image
from transformers import pipeline

from transformers_samclip import SamClipHeadConfig, select_generated_masks
from transformers_samclip.evaluation.metrics import instance_segmentation_metrics
from transformers_samclip.modeling.dense_readout_samclip import training_free_block


def square_logits(size, x0, y0, x1, y1, inside=8.0):
    logits = torch.full((size, size), -8.0)
    logits[y0:y1, x0:x1] = inside
    return logits


def test_mask_selection_filters_low_iou_unstable_and_duplicate_masks():
    good = square_logits(16, 0, 0, 8, 8)
    duplicate = square_logits(16, 0, 0, 8, 7)  # IoU 7/8 with `good`
    other = square_logits(16, 8, 8, 16, 16)
    unstable = square_logits(16, 0, 8, 8, 16, inside=0.5)  # flips between +-1: stability 0
    low_iou = square_logits(16, 8, 0, 16, 8)
    logits = torch.stack([duplicate, good, other, unstable, low_iou])
    scores = torch.tensor([0.80, 0.90, 0.70, 0.95, 0.30])
    kept = select_generated_masks(logits, scores, pred_iou_threshold=0.5, stability_threshold=0.8, nms_threshold=0.7)
    assert kept.tolist() == [1, 2]  # best first; the duplicate, the unstable and the low-IoU mask are gone
    looser = select_generated_masks(logits, scores, pred_iou_threshold=0.5, stability_threshold=0.8, nms_threshold=0.9)
    assert looser.tolist() == [1, 0, 2]


def test_instance_metrics_on_hand_checked_cases():
    a = np.zeros((10, 10), bool)
    a[:5, :5] = True
    b = np.zeros((10, 10), bool)
    b[5:, 5:] = True
    sliver = np.zeros((10, 10), bool)
    sliver[0, 9] = True
    target = {"masks": np.stack([a, b, sliver]), "class_ids": [0, 1, 1], "ignore": [False, False, True]}
    perfect = instance_segmentation_metrics(
        [{"masks": np.stack([a, b, sliver]), "class_ids": [0, 1, 1], "scores": [0.9, 0.8, 0.7]}], [target], 2
    )
    assert perfect["ap"] == pytest.approx(1.0) and perfect["pq"] == pytest.approx(1.0)  # the ignored match is free
    wrong_class = instance_segmentation_metrics(
        [{"masks": np.stack([a, b]), "class_ids": [0, 0], "scores": [0.9, 0.8]}], [target], 2
    )
    # class 0: one hit then one false positive (AP 1, PQ 1 / 1.5); class 1: its instance missed (AP 0, PQ 0).
    assert wrong_class["ap50"] == pytest.approx(0.5)
    assert wrong_class["per_class_pq"] == pytest.approx([2 / 3, 0.0])
    # A false positive ranked first halves precision at every recall: 101-point AP 0.5.
    ranked = instance_segmentation_metrics(
        [{"masks": np.stack([b, a]), "class_ids": [0, 0], "scores": [0.9, 0.8]}],
        [{"masks": a[None], "class_ids": [0]}],
        1,
    )
    assert ranked["ap50"] == pytest.approx(0.5)


def test_dense_readouts_are_validated_and_clearclip_is_query_query_attention(merged):
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="dense_readout must be one of"):
        SamClipHeadConfig(dense_readout="gem")
    layer = merged.clip_head.layers[-1]
    tokens = torch.randn(1, 4, 4, merged.config.vision_config.hidden_size)
    attention = layer.attn
    heads = attention.num_attention_heads
    qkv = attention.qkv(layer.layer_norm1(tokens)).reshape(1, 16, 3, heads, -1).permute(2, 0, 3, 1, 4)
    query, value = qkv[0], qkv[2]
    expected = ((query @ query.transpose(-1, -2)) * attention.scale).softmax(-1) @ value
    expected = attention.proj(expected.transpose(1, 2).reshape(1, 4, 4, -1))
    torch.testing.assert_close(training_free_block(layer, tokens, "clearclip", 5.0), expected)
    trunk = torch.randn(1, 4, 4, merged.config.vision_config.hidden_size)
    maps = {}
    for readout in ("value", "clearclip", "naclip", "sclip"):
        merged.clip_head.dense_readout = readout
        maps[readout] = merged.clip_head.dense_features(trunk)
    merged.clip_head.dense_readout = "value"
    for readout in ("clearclip", "naclip", "sclip"):
        assert not torch.allclose(maps[readout], maps["value"]), readout


@pytest.fixture(scope="module")
def shipped():
    from transformers_samclip.hub.export import load_samclip
    from transformers_samclip.mosaic import SHIPPED_MOSAIC_MODEL_DIR

    return load_samclip(SHIPPED_MOSAIC_MODEL_DIR)


@pytest.fixture(scope="module")
def test_mosaics():
    from transformers_samclip.mosaic import make_mosaic_dataset

    return make_mosaic_dataset("test", 12, seed=0)


def labelled_recall(segments, row, min_visible_fraction=0.3):
    """Share of the row's clearly visible items that some segment covers (IoU >= 0.5) with the right label."""
    from transformers_samclip.mosaic import FASHION_MNIST_CLASSES

    found = total = 0
    for mask, label, visible in zip(row["instance_masks"], row["labels"], row["visible_fraction"]):
        if visible < min_visible_fraction:
            continue
        truth = np.asarray(mask).astype(bool)
        total += 1
        for segment in segments:
            predicted = np.asarray(segment["mask"]) > 0
            iou = (predicted & truth).sum() / max((predicted | truth).sum(), 1)
            if iou >= 0.5 and segment["label"] == FASHION_MNIST_CLASSES[label]:
                found += 1
                break
    return found, total


def test_instance_pipeline_labels_the_items_of_test_mosaics(shipped, test_mosaics):
    from transformers_samclip.mosaic import FASHION_MNIST_CLASSES

    segmenter = pipeline("zero-shot-image-segmentation", model=shipped.model, processor=shipped.processor)
    found = total = crops_found = 0
    for row in test_mosaics:
        crops = segmenter(
            row["image"], candidate_labels=list(FASHION_MNIST_CLASSES), subtask="instance", label_source="crops"
        )
        crops_found += labelled_recall(crops, row)[0]
        segments = segmenter(row["image"], candidate_labels=list(FASHION_MNIST_CLASSES), subtask="instance")
        # transformers' image-segmentation format: score, label, an "L" mask of 0/255 at the original size; and
        # the mask's box (issue 20).
        for segment in segments:
            assert set(segment) == {"score", "label", "box", "mask"}
            ys, xs = np.nonzero(np.asarray(segment["mask"]))
            assert segment["box"] == {"xmin": xs.min(), "ymin": ys.min(), "xmax": xs.max() + 1, "ymax": ys.max() + 1}
            assert segment["mask"].mode == "L" and segment["mask"].size == row["image"].size
            assert set(np.unique(np.asarray(segment["mask"]))) <= {0, 255}
            assert 0.0 <= segment["score"] <= 1.0 and segment["label"] in FASHION_MNIST_CLASSES
        assert [s["score"] for s in segments] == sorted((s["score"] for s in segments), reverse=True)
        hits, count = labelled_recall(segments, row)
        found, total = found + hits, total + count
    # Measured on these 12 mosaics with the shipped model: 14 of 32 items found and rightly labelled (0.44; the
    # model shipped before it: 12); a right mask with a chance label would score about 0.09 (10 classes).
    assert total >= 20 and found / total >= 0.35, (found, total)
    # Labelling each mask's crop through the CLIP path (a second, small pass) instead: measured 12 of 32 (before: 15).
    assert crops_found / total >= 0.3, (crops_found, found, total)


def test_panoptic_segments_do_not_overlap_and_semantic_alias_still_works(shipped, test_mosaics):
    from transformers_samclip.mosaic import FASHION_MNIST_CLASSES

    row = test_mosaics[0]
    segmenter = pipeline("zero-shot-image-segmentation", model=shipped.model, processor=shipped.processor)
    panoptic = segmenter(row["image"], candidate_labels=list(FASHION_MNIST_CLASSES), subtask="panoptic")
    instance = segmenter(row["image"], candidate_labels=list(FASHION_MNIST_CLASSES), subtask="instance")
    assert 0 < len(panoptic) <= len(instance)
    coverage = sum((np.asarray(s["mask"]) > 0).astype(int) for s in panoptic)
    assert coverage.max() == 1
    alias = pipeline("zero-shot-semantic-segmentation", model=shipped.model, processor=shipped.processor)
    semantic = segmenter(row["image"], candidate_labels=list(FASHION_MNIST_CLASSES))
    assert [(s["label"], s["score"]) for s in alias(row["image"], candidate_labels=list(FASHION_MNIST_CLASSES))] == [
        (s["label"], s["score"]) for s in semantic
    ]
    assert semantic[0]["label"] == "background"


@pytest.mark.parametrize(
    "call, message",
    [
        (dict(candidate_labels=[]), "candidate_labels must be non-empty"),
        (dict(candidate_labels=" , "), "candidate_labels must be non-empty"),
        (dict(candidate_labels=["Bag", "Bag"]), "duplicates"),
        (dict(candidate_labels=["Bag"], subtask="things"), "subtask must be one of"),
        (dict(candidate_labels=["Bag"], templates="a photo"), "templates: 'a photo' needs exactly one"),
        (dict(candidate_labels=["Bag"], points_per_image=4), "Unexpected argument"),
    ],
)
def test_pipeline_rejects_bad_arguments_with_clear_errors(shipped, call, message):
    segmenter = pipeline("zero-shot-image-segmentation", model=shipped.model, processor=shipped.processor)
    image = Image.new("RGB", (64, 48), "white")
    with pytest.raises((ValueError, TypeError), match=message):
        segmenter(image, **call)


def test_pipeline_rejects_a_one_pixel_image(shipped):
    segmenter = pipeline("zero-shot-image-segmentation", model=shipped.model, processor=shipped.processor)
    with pytest.raises(ValueError, match="at least 2x2"):
        segmenter(Image.new("RGB", (1, 1)), candidate_labels=["Bag"], subtask="instance")


def test_exported_folder_serves_the_pipeline_without_the_package(shipped, test_mosaics, tmp_path):
    from transformers_samclip.hub.export import export_model
    from transformers_samclip.mosaic import FASHION_MNIST_CLASSES

    folder = export_model("mosaic", tmp_path / "export")
    row = test_mosaics[1]
    row["image"].save(tmp_path / "mosaic.png")
    expected = pipeline("zero-shot-image-segmentation", model=shipped.model, processor=shipped.processor)(
        row["image"], candidate_labels=list(FASHION_MNIST_CLASSES), subtask="instance"
    )
    script = f"""
import importlib.abc, json, sys
class NoPackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "transformers_samclip":
            raise ImportError("transformers_samclip is not installed here")
sys.meta_path.insert(0, NoPackage())
from PIL import Image
from transformers import pipeline
segmenter = pipeline("zero-shot-image-segmentation", model={str(folder)!r}, trust_remote_code=True)
segments = segmenter(Image.open("mosaic.png"), candidate_labels={list(FASHION_MNIST_CLASSES)!r}, subtask="instance")
import numpy as np
print(json.dumps([[s["label"], s["score"], int((np.asarray(s["mask"]) > 0).sum())] for s in segments]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert [label for label, _, _ in remote] == [s["label"] for s in expected]
    assert [area for _, _, area in remote] == [int((np.asarray(s["mask"]) > 0).sum()) for s in expected]
    np.testing.assert_allclose([score for _, score, _ in remote], [s["score"] for s in expected], atol=1e-5)
