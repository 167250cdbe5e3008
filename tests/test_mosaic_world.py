"""The mosaic world: Fashion-MNIST reader, mosaic generator and the shipped tiny teachers."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json

import numpy as np
import pytest
import torch

from transformers_samclip import mosaic as mosaic_world
from transformers_samclip.evaluation import geometry
from transformers_samclip.evaluation.geometry import mask_iou
from transformers_samclip.mosaic import (
    FASHION_MNIST_CLASSES,
    SHIPPED_TEACHERS_DIR,
    fashion_mnist,
    generate_mosaic,
    item_source,
    iter_mosaics,
    load_fashion_mnist,
    load_fashion_mnist_arrays,
    load_mosaic_teachers,
    make_item_views,
    make_mosaic_dataset,
    scene_captions,
    teachers,
)
from transformers_samclip.mosaic.mosaics import SCENE_TEMPLATES

# Floors a little below what the shipped teachers measure (500 test views: CLIP top-1 0.820, held-out look 0.648,
# raw photos 0.860; recognition on the ground-truth masks of 50 test mosaics from masked crops 0.815; the SAM
# teacher's full-split box 0.846 / 1-point 0.806, 50 mosaics 0.830 / 0.786); the metrics are deterministic. The CLIP
# teacher is below two of issue 18's floors (0.85 items, 0.70 held-out on the full test split): BUILD.json has its
# curve.
CLIP_TOP1_FLOOR_500 = 0.80
CLIP_FLOORS_500 = {
    "zero_shot_top1": CLIP_TOP1_FLOOR_500,
    "zero_shot_top1_heldout": 0.63,
    "zero_shot_top1_raw": 0.84,
    "recognition_masked_crop": 0.79,
}
SAM_BOX_MIOU_FLOOR_100 = 0.80
SAM_POINT_MIOU_FLOOR_100 = 0.75


# --- Fashion-MNIST -----------------------------------------------------------------------------


@pytest.mark.parametrize("split, count", [("train", 60000), ("test", 10000)])
def test_fashion_mnist_arrays(split, count):
    images, labels = load_fashion_mnist_arrays(split)
    assert images.shape == (count, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == [count // 10] * 10
    assert images.max() == 255 and images.min() == 0
    assert load_fashion_mnist_arrays(split)[0] is images  # cached


def test_fashion_mnist_dataset():
    dataset = load_fashion_mnist("test")
    assert len(dataset) == 10000
    assert dataset.features["label"].names == list(FASHION_MNIST_CLASSES)
    row = dataset[0]
    assert row["image"].size == (28, 28) and row["image"].mode == "L"
    assert np.array_equal(np.asarray(row["image"]), load_fashion_mnist_arrays("test")[0][0])


def test_fashion_mnist_missing_names_both_remedies(monkeypatch, tmp_path):
    monkeypatch.setenv("SAMCLIP_FASHION_MNIST_DIR", str(tmp_path))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    fashion_mnist.load_fashion_mnist_arrays.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as error:
            fashion_mnist.load_fashion_mnist_arrays("test")
        assert "Hub" in str(error.value)
    finally:
        fashion_mnist.load_fashion_mnist_arrays.cache_clear()


# --- Mosaics -----------------------------------------------------------------------------------


def _mosaic(seed, split="test"):
    return generate_mosaic(np.random.default_rng(seed), split)


def test_mosaic_is_deterministic():
    first, again, other = _mosaic(7), _mosaic(7), _mosaic(8)
    assert first["image"].tobytes() == again["image"].tobytes()
    assert np.array_equal(first["semantic_map"], again["semantic_map"])
    assert first["boxes"] == again["boxes"] and first["item_indices"] == again["item_indices"]
    assert first["image"].tobytes() != other["image"].tobytes()


def test_mosaic_ground_truth_is_consistent():
    test_labels = item_source("test").labels
    for mosaic in iter_mosaics("test", num_mosaics=60, seed=3):
        masks = np.stack(mosaic["instance_masks"])
        semantic = mosaic["semantic_map"]
        assert mosaic["image"].size == (128, 128) and mosaic["image"].mode == "RGB"
        assert 1 <= len(masks) <= 4 and masks.dtype == bool
        assert masks.sum(axis=0).max() <= 1  # disjoint: occlusion is exact
        assert np.array_equal(masks.any(axis=0), semantic > 0)
        for mask, box, label, fraction, index in zip(
            masks, mosaic["boxes"], mosaic["labels"], mosaic["visible_fraction"], mosaic["item_indices"]
        ):
            assert mask.any() and 0 < fraction <= 1
            assert set(np.unique(semantic[mask])) == {label + 1}
            assert test_labels[index] == label  # provenance: a test item
            rows, cols = np.nonzero(mask)
            assert box == [cols.min(), rows.min(), cols.max(), rows.max()]  # tight, inclusive
        # The last pasted item is never occluded.
        assert mosaic["visible_fraction"][-1] == 1.0


def test_scene_captions_name_each_visible_class_once():
    for mosaic in iter_mosaics("test", num_mosaics=40, seed=4):
        visible = {
            FASHION_MNIST_CLASSES[label]
            for label, fraction in zip(mosaic["labels"], mosaic["visible_fraction"])
            if fraction >= 0.3
        }
        assert len(mosaic["captions"]) == len(SCENE_TEMPLATES) if visible else mosaic["captions"] == []
        for caption in mosaic["captions"]:
            named = [name for name in FASHION_MNIST_CLASSES if f"a {name}" in caption]
            assert set(named) == visible and all(caption.count(f"a {name}") == 1 for name in named)
    assert scene_captions([8, 7, 8], [1.0, 0.2, 1.0])[0] == "a photo of a Bag."  # hidden sneaker left out
    assert scene_captions([0, 4, 8], [1.0, 0.5, 0.9])[0] == "a photo of a Bag, a Coat and a T-shirt/top."
    assert scene_captions([3], [0.1]) == []
    # The dataset column holds the generator's captions.
    rows = make_mosaic_dataset("test", num_mosaics=3, seed=4)
    assert rows["captions"] == [m["captions"] for m in iter_mosaics("test", num_mosaics=3, seed=4)]


def test_mosaics_draw_from_their_own_split():
    train = item_source("train")
    mosaic = _mosaic(11, "train")
    assert all(train.labels[i] == c for i, c in zip(mosaic["item_indices"], mosaic["labels"]))
    assert max(max(m["item_indices"]) for m in iter_mosaics("test", 60)) < 10000
    assert max(max(m["item_indices"]) for m in iter_mosaics("train", 20)) >= 10000


def test_mosaic_dataset_round_trip(tmp_path):
    dataset = make_mosaic_dataset("test", num_mosaics=8, seed=5)
    again = make_mosaic_dataset("test", num_mosaics=8, seed=5)
    dataset.save_to_disk(tmp_path / "mosaics")
    import datasets

    reloaded = datasets.load_from_disk(tmp_path / "mosaics")
    assert reloaded.features == dataset.features
    assert reloaded.features["labels"].feature.names == list(FASHION_MNIST_CLASSES)
    for row, mosaic, same in zip(reloaded, iter_mosaics("test", 8, seed=5), again):
        assert np.array_equal(np.asarray(row["image"]), np.asarray(mosaic["image"]))
        assert np.array_equal(np.asarray(row["image"]), np.asarray(same["image"]))
        assert row["semantic_map"].mode == "L"
        assert np.array_equal(np.asarray(row["semantic_map"]), mosaic["semantic_map"])
        decoded = [np.asarray(m) for m in row["instance_masks"]]
        assert all(d.dtype == bool for d in decoded)
        assert all(np.array_equal(d, m) for d, m in zip(decoded, mosaic["instance_masks"]))
        assert row["labels"] == mosaic["labels"] and row["item_indices"] == mosaic["item_indices"]
        assert np.allclose(row["boxes"], mosaic["boxes"])
        assert np.allclose(row["visible_fraction"], mosaic["visible_fraction"], atol=1e-6)


def test_item_views():
    views = make_item_views("test", num_items=20, seed=0)
    again = make_item_views("test", num_items=20, seed=0)
    other = make_item_views("test", num_items=20, seed=1)
    assert views.features["label"].names == list(FASHION_MNIST_CLASSES)
    assert list(views["label"]) == item_source("test").labels[:20].tolist()
    assert views[0]["image"].size == (64, 64) and views[0]["image"].mode == "RGB"
    assert all(a.tobytes() == b.tobytes() for a, b in zip(list(views["image"]), list(again["image"])))
    assert views[0]["image"].tobytes() != other[0]["image"].tobytes()


def test_heldout_and_raw_item_views():
    source = item_source("test")
    raw = make_item_views("test", num_items=5, style="raw")
    assert all(np.array_equal(np.asarray(image)[..., 0], source.images[i]) for i, image in enumerate(raw["image"]))
    heldout = make_item_views("test", num_items=40, seed=0, style="heldout")
    assert list(heldout["label"]) == source.labels[:40].tolist()
    again = make_item_views("test", num_items=40, seed=0, style="heldout")
    assert all(a.tobytes() == b.tobytes() for a, b in zip(heldout["image"], again["image"]))
    for image in heldout["image"]:
        pixels = np.asarray(image).reshape(-1, 3)
        colours, counts = np.unique(pixels, axis=0, return_counts=True)
        # A flat background: its one colour fills at least 40% of the view (the item covers at most 36%).
        assert image.size == (64, 64) and counts.max() >= 0.4 * len(pixels)
    with pytest.raises(ValueError, match="style must be one of"):
        make_item_views("test", num_items=2, style="noir")


def test_item_views_in_the_clip_teachers_looks():
    looks = make_item_views("train", num_items=1200, seed=3, style="looks")
    again = make_item_views("train", num_items=1200, seed=3, style="looks")
    assert all(a.tobytes() == b.tobytes() for a, b in zip(looks["image"], again["image"]))
    assert list(looks["label"]) == list(again["label"]) and set(looks["item_index"]) == {-1}
    # Every class, and every look by its size: 28 px photos, 64 px item and flat views, crops of other sizes.
    assert set(looks["label"]) == set(range(len(FASHION_MNIST_CLASSES)))
    sizes = np.array([image.size[0] for image in looks["image"]])
    assert all(image.mode == "RGB" and image.size[0] == image.size[1] for image in looks["image"][:100])
    assert 0.10 < np.mean(sizes == 28) < 0.20  # raw photos: 15%
    assert 0.40 < np.mean(sizes == 64) < 0.60  # item views 30% + flat views 20% (+ the odd 64 px crop)
    assert 0.25 < np.mean((sizes != 28) & (sizes != 64)) < 0.45  # crops and masked crops: 35%
    # A view depends on its position only: the first chunk of a longer set is the same set.
    shorter = make_item_views("train", num_items=1000, seed=3, style="looks")
    assert all(a.tobytes() == b.tobytes() for a, b in zip(shorter["image"], looks["image"][:1000]))
    # `size` is the item and flat views' side, as in the other styles.
    small = make_item_views("train", 300, seed=3, size=32, style="looks")["image"]
    small = np.array([image.size[0] for image in small])
    assert 0.4 < np.mean(small == 32) < 0.6  # item and flat views: 50%


def test_mask_geometry_is_the_harness_one():
    # Moved to evaluation.geometry (tested in test_evaluation.py); the mosaic world still exports it.
    for name in ("center_point", "evaluation_points", "mask_iou", "mask_to_box", "random_points"):
        assert getattr(mosaic_world, name) is getattr(geometry, name)


# --- Teachers ----------------------------------------------------------------------------------


def test_clip_tokenizer_round_trip_and_pooling(tmp_path):
    from transformers import CLIPModel, CLIPTokenizer

    tokenizer = teachers.build_clip_tokenizer()
    assert tokenizer.eos_token_id != 2
    assert tokenizer.bos_token_id < len(tokenizer) and tokenizer.eos_token_id < len(tokenizer)
    texts = [teachers.PIPELINE_TEMPLATE.format(name) for name in FASHION_MNIST_CLASSES]
    encoded = tokenizer(texts, padding=True)
    tokenizer.save_pretrained(tmp_path)
    assert CLIPTokenizer.from_pretrained(tmp_path)(texts, padding=True)["input_ids"] == encoded["input_ids"]

    model = CLIPModel(teachers.tiny_clip_config(tokenizer)).eval()
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        output = model.text_model(**tokens)
    # Unknown text maps to eos too (unk == eos), so the first eos must be the real end of each caption.
    eos_position = tokens["attention_mask"].sum(dim=1) - 1
    assert (tokens["input_ids"][torch.arange(len(texts)), eos_position] == tokenizer.eos_token_id).all()
    assert ((tokens["input_ids"] == tokenizer.eos_token_id).int().argmax(dim=1) == eos_position).all()
    expected = output.last_hidden_state[torch.arange(len(texts)), eos_position]
    assert torch.allclose(output.pooler_output, expected)


def _shipped():
    if not (SHIPPED_TEACHERS_DIR / "sam" / "model.safetensors").exists():
        pytest.fail(f"shipped teachers missing; rebuild with `{teachers.REBUILD_COMMAND}`")
    return load_mosaic_teachers()


def test_shipped_teachers_are_small_and_recorded():
    files = [p for p in SHIPPED_TEACHERS_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20 * 2**20
    assert not [p for p in files if p.suffix in {".bin", ".pt", ".pth"}]
    build = json.loads((SHIPPED_TEACHERS_DIR / "BUILD.json").read_text())
    assert {"clip", "sam", "versions"} <= set(build)
    assert build["clip"]["metrics"]["zero_shot_top1"] >= CLIP_TOP1_FLOOR_500


def test_load_mosaic_teachers_missing_names_rebuild(tmp_path):
    with pytest.raises(FileNotFoundError, match="transformers_samclip.mosaic.teachers"):
        load_mosaic_teachers(teachers_dir=tmp_path)


def test_shipped_clip_teacher_serves_the_pipeline():
    from transformers import pipeline

    loaded = _shipped()
    classifier = pipeline(
        "zero-shot-image-classification",
        model=loaded["clip_model"],
        tokenizer=loaded["clip_processor"].tokenizer,
        image_processor=loaded["clip_processor"].image_processor,
    )
    views = make_item_views("test", num_items=20)
    hits = sum(
        classifier(row["image"], candidate_labels=list(FASHION_MNIST_CLASSES))[0]["label"]
        == FASHION_MNIST_CLASSES[row["label"]]
        for row in views
    )
    assert hits >= 8


def test_shipped_teachers_measured_by_the_harness(monkeypatch):
    # The builder's own measurement (what BUILD.json records), on the first 500 views and 100 mosaics.
    loaded = _shipped()
    assert not loaded["clip_model"].training and not loaded["sam_model"].training
    monkeypatch.setattr(
        teachers,
        "make_item_views",
        lambda split, num_items=None, seed=0, style="training": make_item_views(
            split, min(num_items or 500, 500), seed, style=style
        ),
    )
    monkeypatch.setattr(
        teachers, "make_mosaic_dataset", lambda split, num, seed: make_mosaic_dataset(split, min(num, 100), seed)
    )
    clip = teachers._clip_metrics(loaded["clip_model"], loaded["clip_processor"], num_mosaics=50)
    assert clip["num_views"] == 500
    for key, floor in CLIP_FLOORS_500.items():
        assert clip[key] >= floor, (key, clip[key])
    assert clip["floors"]["zero_shot_top1"] == {
        "floor": 0.85,
        "measured": clip["zero_shot_top1"],
        "met": clip["zero_shot_top1"] >= 0.85,
    }
    sam = teachers._sam_metrics(loaded["sam_model"], loaded["sam_processor"])
    assert sam["num_mosaics"] == 100 and sam["min_visible_fraction"] == teachers.MIN_VISIBLE_FRACTION
    assert sam["box_miou"] >= SAM_BOX_MIOU_FLOOR_100
    assert sam["point1_miou"] >= SAM_POINT_MIOU_FLOOR_100


def test_shipped_sam_processor_post_processing_matches_training():
    loaded = _shipped()
    model, processor = loaded["sam_model"], loaded["sam_processor"]
    mosaic = _mosaic(0)
    inputs = processor(images=mosaic["image"], input_boxes=[[mosaic["boxes"][-1]]], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs, multimask_output=False)
    masks = processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])
    assert masks[0].shape == (1, 1, 128, 128)
    assert mask_iou(masks[0][0, 0].numpy(), mosaic["instance_masks"][-1]) > 0.5
