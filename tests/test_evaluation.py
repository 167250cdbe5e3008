"""The evaluation harness: metrics by hand, evaluators on tiny random models, oracles that must score 1.0, the
`samclip evaluate` command, and the shipped trained mosaic teachers against floors."""

import json
import math
import types

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import SamProcessor

from transformers_samclip.evaluation import (
    calibrate_background_threshold,
    confusion_matrix,
    evaluate_label_maps,
    evaluate_prompted_segmentation,
    evaluate_zero_shot_classification,
    format_results_table,
    instance_miou,
    label_map_from_cosines,
    mask_ious,
    mean_iou,
    per_class_iou,
    top1_accuracy,
)
from transformers_samclip.evaluation.geometry import (
    center_point,
    evaluation_points,
    mask_depth,
    mask_iou,
    mask_to_box,
    random_points,
)
from transformers_samclip.mosaic import (
    FASHION_MNIST_CLASSES,
    evaluate_samclip_on_mosaic,
    evaluate_teachers_on_mosaic,
    make_mosaic_dataset,
)

TINY = dict(num_items=12, num_mosaics=3, calibration_mosaics=2, seed=0)
ROW_KEYS = (
    "zero_shot_top1",
    "box_miou",
    "point1_miou",
    "point3_miou",
    "semseg_miou",
    "semseg_refined_miou",
    "recognition_crop",
    "recognition_one_pass",
)


# --------------------------------------------------------------------------------------------------- metrics
def test_confusion_matrix_and_miou_by_hand():
    target = np.array([[0, 0, 1], [1, 2, 2]])
    prediction = np.array([[0, 1, 1], [1, 2, 0]])
    confusion = confusion_matrix(prediction, target, num_classes=4)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[2, 2], expected[2, 0] = 1, 1, 2, 1, 1
    np.testing.assert_array_equal(confusion, expected)
    # class 0: 1 / (2 + 2 - 1); class 1: 2 / (2 + 3 - 2); class 2: 1 / (2 + 1 - 1); class 3 absent: left out
    ious = per_class_iou(confusion)
    np.testing.assert_allclose(ious[:3], [1 / 3, 2 / 3, 1 / 2])
    assert math.isnan(ious[3])
    assert mean_iou(confusion) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_confusion_matrix_ignores_ignore_index():
    target = np.array([0, 255, 1, 255])
    prediction = np.array([0, 1, 1, 0])
    assert confusion_matrix(prediction, target, 2, ignore_index=255).sum() == 2
    assert mean_iou(confusion_matrix(prediction, target, 2, ignore_index=255)) == 1.0


def test_perfect_and_empty_predictions():
    target = np.random.default_rng(0).integers(0, 5, size=(16, 16))
    assert mean_iou(confusion_matrix(target, target, 5)) == 1.0
    # All background: background IoU = its share of pixels, every other present class 0.
    present = np.unique(target)
    expected = (target == 0).mean() / len(present)
    assert mean_iou(confusion_matrix(np.zeros_like(target), target, 5)) == pytest.approx(expected)
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, :2] = True
    np.testing.assert_array_equal(mask_ious(masks, masks), [1.0, 1.0])  # an empty pair counts as perfect
    assert instance_miou(np.zeros_like(masks), masks) == pytest.approx(0.5)


def test_top1_accuracy():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert top1_accuracy(scores, [0, 1, 1]) == pytest.approx(2 / 3)


def test_geometry_on_an_l_shaped_mask():
    mask = np.zeros((10, 10), dtype=bool)
    mask[1:9, 1:4] = True  # a 3-wide upright bar
    mask[6:9, 1:9] = True  # and a 3-high foot
    assert mask_to_box(mask) == [1.0, 1.0, 8.0, 8.0]
    expected_depth = np.zeros((10, 10), dtype=np.int32)
    expected_depth[mask] = 1
    expected_depth[2:8, 2] = 2  # the bar's spine
    expected_depth[7, 2:8] = 2  # the foot's spine
    expected_depth[6, 3] = 2  # the inner corner
    np.testing.assert_array_equal(mask_depth(mask), expected_depth)
    # The depth-2 ridge's mean is (x, y) = (3.33, 6.17): the inner corner is the ridge pixel nearest to it.
    assert center_point(mask) == (3.0, 6.0)
    points = evaluation_points(mask, 3, seed=0)
    assert points[0] == (3.0, 6.0) and all(mask[int(y), int(x)] for x, y in points[1:])
    assert evaluation_points(mask, 3, np.random.default_rng(0)) == points  # a Generator or its seed
    rng = np.random.default_rng(1)
    assert random_points(rng, mask, 50) != random_points(rng, mask, 50)  # the Generator advances
    foot_end = np.zeros_like(mask)
    foot_end[6:9, 6:9] = True
    assert mask.sum() == 39 and mask_iou(mask, foot_end) == pytest.approx(9 / 39)
    assert mask_iou(mask, mask) == 1.0 and mask_iou(mask, ~mask) == 0.0
    assert mask_iou(~np.ones_like(mask), ~np.ones_like(mask)) == 1.0  # both empty


def test_label_map_from_cosines_threshold():
    cosines = torch.tensor([[[0.9, 0.1]], [[0.2, 0.3]]])  # 2 classes, 1x2 pixels
    assert label_map_from_cosines(cosines, None).tolist() == [[1, 2]]
    assert label_map_from_cosines(cosines, 0.5).tolist() == [[1, 0]]


# ---------------------------------------------------------------------------------------- oracles score 1.0
def test_ground_truth_segmenter_scores_one():
    mosaics = make_mosaic_dataset("test", 3, seed=1)
    targets = iter(np.asarray(m) for m in mosaics["semantic_map"])
    result = evaluate_label_maps(
        lambda images: [next(targets) for _ in images], mosaics, FASHION_MNIST_CLASSES, batch_size=2
    )
    assert result["miou"] == 1.0
    assert result["per_class_iou"]["background"] == 1.0
    assert sum(v is None for v in result["per_class_iou"].values()) >= 1  # absent classes are left out


def test_background_calibration_finds_the_gap():
    # Cosines made from the ground truth: 0.8 for an item's own class, 0.2 elsewhere. The "image" column holds a
    # key, so that the fake cosine maps can look their ground truth up.
    targets = [np.asarray(m, dtype=np.int64) for m in make_mosaic_dataset("train", 3, seed=2)["semantic_map"]]
    dataset = datasets.Dataset.from_dict({"image": [0, 1, 2], "semantic_map": targets})

    def cosine_maps(keys):
        return [
            0.2 + 0.6 * torch.nn.functional.one_hot(torch.from_numpy(targets[k]), 11).permute(2, 0, 1)[1:].float()
            for k in keys
        ]

    threshold = calibrate_background_threshold(cosine_maps, dataset, FASHION_MNIST_CLASSES)
    assert 0.2 < threshold <= 0.8 + 1e-6
    segment = lambda keys: [label_map_from_cosines(c, threshold) for c in cosine_maps(keys)]  # noqa: E731
    assert evaluate_label_maps(segment, dataset, FASHION_MNIST_CLASSES)["miou"] == 1.0


class BoxOracle(torch.nn.Module):
    """A fake SAM whose box prompt returns the filled box: exact on rectangular instances."""

    def get_image_embeddings(self, pixel_values):
        return pixel_values

    def forward(self, image_embeddings, input_boxes=None, multimask_output=False, **kwargs):
        size = image_embeddings.shape[-1]
        ys, xs = torch.arange(size)[:, None], torch.arange(size)[None, :]
        x0, y0, x1, y1 = (input_boxes[0, :, i, None, None] for i in range(4))
        inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
        logits = torch.where(inside, 10.0, -10.0)[None, :, None]
        return types.SimpleNamespace(pred_masks=logits, iou_scores=torch.ones(logits.shape[:3]))


def test_box_oracle_scores_one(processor):
    # Non-square images (96 x 128, padded by SAM's processor) check the coordinate and un-padding path.
    sam_processor = SamProcessor(
        image_processor=type(processor.image_processor)(
            size={"longest_edge": 128}, pad_size={"height": 128, "width": 128}
        )
    )
    rng = np.random.default_rng(0)
    rows = {"image": [], "instance_masks": [], "boxes": []}
    for _ in range(3):
        masks, boxes = [], []
        for _ in range(2):
            x0, y0 = (int(v) for v in rng.integers(0, 60, size=2))
            mask = np.zeros((96, 128), dtype=bool)
            mask[y0 : y0 + 30, x0 : x0 + 40] = True
            masks.append(Image.fromarray(mask))
            boxes.append([x0, y0, x0 + 39, y0 + 29])
        rows["image"].append(Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)))
        rows["instance_masks"].append(masks)
        rows["boxes"].append(boxes)
    dataset = datasets.Dataset.from_dict(
        rows,
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "instance_masks": datasets.List(datasets.Image()),
                "boxes": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
            }
        ),
    )
    result = evaluate_prompted_segmentation(BoxOracle(), sam_processor, dataset, modes=("box",))
    assert result["box_miou"] == 1.0 and result["num_instances"] == 6


# ------------------------------------------------------------------------------------ tiny random models
def test_samclip_on_mosaic_ranges_and_determinism(merged, processor):
    first = evaluate_samclip_on_mosaic(merged, processor, **TINY)
    for key in ROW_KEYS:
        assert 0.0 <= first[key] <= 1.0, key
    assert first["num_items"] == 12 and first["num_mosaics"] == 3
    second = evaluate_samclip_on_mosaic(merged, processor, **TINY)
    assert {k: second[k] for k in ROW_KEYS} == {k: first[k] for k in ROW_KEYS}


def test_sam_outputs_shared_between_thresholds_give_the_masks_sam_gives_each_time(tiny_teachers):
    from transformers_samclip.evaluation import segment_everything

    sam, sam_processor = tiny_teachers["sam_model"], tiny_teachers["sam_processor"]
    images = make_mosaic_dataset("test", 3, 0)["image"]
    encoded, get_image_embeddings = [], sam.get_image_embeddings
    sam.get_image_embeddings = lambda pixel_values: encoded.append(1) or get_image_embeddings(pixel_values)
    try:
        cache = {}
        for threshold in (-100.0, 0.0, -100.0):
            for image in images:
                options = dict(pred_iou_threshold=threshold, stability_threshold=0.0)
                fresh = segment_everything(sam, sam_processor, image, **options)
                shared = segment_everything(sam, sam_processor, image, cache=cache, **options)
                assert torch.equal(fresh[0], shared[0]) and torch.equal(fresh[1], shared[1])
    finally:
        del sam.get_image_embeddings
    # 9 uncached calls and 3 images encoded once for the cache; a threshold keeping everything keeps some mask.
    assert len(encoded) == 9 + 3 and len(cache) == 3
    assert len(segment_everything(sam, sam_processor, images[0], pred_iou_threshold=-100.0, stability_threshold=0)[0])


def test_teachers_on_mosaic_rows_and_merge_parity(tiny_teachers, merged, processor):
    rows = evaluate_teachers_on_mosaic(tiny_teachers, **TINY)
    assert list(rows) == [
        "CLIP teacher",
        "SAM teacher",
        "MaskCLIP baseline",
        "SAM+CLIP cascade",
        "SAM+CLIP cascade (masked crops)",
    ]
    for name in ("MaskCLIP baseline", "SAM+CLIP cascade", "SAM+CLIP cascade (masked crops)"):
        assert 0 <= rows[name]["semseg_miou"] <= 1, name
    # Each cascade names SAM's masks with its labeller, whose recognition on ground-truth masks it reports.
    teacher = rows["CLIP teacher"]
    assert rows["SAM+CLIP cascade"]["recognition_crop"] == teacher["recognition_crop"]
    assert rows["SAM+CLIP cascade (masked crops)"]["recognition_masked_crop"] == teacher["recognition_masked_crop"]
    for name in ("crop", "masked_crop"):
        confusion = np.asarray(teacher[f"recognition_{name}_confusion"])
        assert confusion.sum() == teacher["recognition_items"] > 0
        assert teacher[f"recognition_{name}"] == pytest.approx(np.trace(confusion) / confusion.sum())
    # A fresh merge carries SAM's encoder and decoder unchanged: its prompted masks are the teacher's.
    mosaics = make_mosaic_dataset("test", TINY["num_mosaics"], TINY["seed"])
    merged_prompted = evaluate_prompted_segmentation(merged, processor, mosaics)
    for key in ("box_miou", "point1_miou", "point3_miou"):
        assert merged_prompted[key] == pytest.approx(rows["SAM teacher"][key], abs=1e-6)
    table = format_results_table(rows)
    assert table.splitlines()[0].startswith(
        "| model | zero-shot top-1 | top-1 held-out look | top-1 raw photos | box mIoU"
    )
    assert "| CLIP teacher |" in table and "| - |" in table


def test_zero_shot_same_api_for_clip_and_samclip(tiny_teachers, merged, processor):
    views = datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (40, 30), (i * 20, 0, 0)) for i in range(6)], "label": [0, 1, 2, 0, 1, 2]}
    )
    for model, model_processor in (
        (tiny_teachers["clip_model"], tiny_teachers["clip_processor"]),
        (merged, processor),
    ):
        result = evaluate_zero_shot_classification(model, model_processor, views, ["cat", "dog", "bird"], batch_size=4)
        assert 0 <= result["top1"] <= 1 and result["num_images"] == 6


def test_cli_on_tiny_saved_model(merged, processor, tmp_path):
    from transformers_samclip.cli import main

    merged.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    output = tmp_path / "out" / "results.json"
    argv = [
        "evaluate",
        str(tmp_path / "model"),
        "--num-items",
        "8",
        "--num-mosaics",
        "2",
        "--calibration-mosaics",
        "2",
        "--output",
        str(output),
    ]
    assert main(argv) == 0
    record = json.loads(output.read_text())
    assert {"command", "model", "suite", "seed", "sizes", "rows", "table", "wall_seconds", "versions"} <= set(record)
    row = record["rows"][str(tmp_path / "model")]
    assert set(ROW_KEYS) <= set(row) and record["sizes"]["num_mosaics"] == 2


# The shipped teachers are measured by `test_shipped_teachers_measured_by_the_harness` (test_mosaic_world.py: CLIP
# and SAM floors on 500 views / 100 mosaics, 20 s) and, every row of the evaluation protocol (2,000 items, 200
# mosaics: CLIP, SAM, MaskCLIP, both cascades) to 0.005 of the recorded values, by the slow shipped-model test in
# test_distillation_e2e.py. A floors check on 300 items / 50 mosaics (the fast set's longest
# test: 486 s of its 1,322 s at load 5) and one on the full split (6 minutes) repeated those two and were removed.


def test_cli_teachers_from_a_folder(tiny_teachers, tmp_path):
    from transformers_samclip.evaluate_cli import main

    for name in ("sam", "clip"):
        tiny_teachers[f"{name}_model"].save_pretrained(tmp_path / name)
        tiny_teachers[f"{name}_processor"].save_pretrained(tmp_path / name)
    output = tmp_path / "teachers.json"
    argv = [
        "teachers",
        "--teachers-dir",
        str(tmp_path),
        "--num-items",
        "6",
        "--num-mosaics",
        "2",
        "--calibration-mosaics",
        "2",
        "--output",
        str(output),
    ]
    assert main(argv) == 0
    rows = json.loads(output.read_text())["rows"]
    assert list(rows) == [
        "CLIP teacher",
        "SAM teacher",
        "MaskCLIP baseline",
        "SAM+CLIP cascade",
        "SAM+CLIP cascade (masked crops)",
    ]


def test_cli_imagefolder_suite(merged, processor, tmp_path):
    from transformers_samclip.evaluate_cli import main

    merged.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    for index, name in enumerate(["cat", "dog", "cat", "dog"]):
        (tmp_path / "images" / name).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 20), (60 * index, 90, 0)).save(tmp_path / "images" / name / f"{index}.png")
    output = tmp_path / "folder.json"
    assert (
        main(
            [
                str(tmp_path / "model"),
                "--suite",
                f"imagefolder:{tmp_path / 'images'}",
                "--split",
                "train",
                "--output",
                str(output),
            ]
        )
        == 0
    )
    row = json.loads(output.read_text())["rows"][str(tmp_path / "model")]
    assert 0 <= row["zero_shot_top1"] <= 1 and "semseg_miou" not in row
