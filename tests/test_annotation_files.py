"""COCO-style and SA-1B-style instance-annotation files as D_SAM data: the RLE codec, polygon rasterisation, the
two loaders, their handling of bad input, and a recipe `data.sam` entry with `source: coco` up to the collator."""

import json
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets
import numpy as np
import pytest
from PIL import Image

from transformers_samclip.distillation import (
    PairedDataset,
    PromptSampler,
    SamClipDistillationCollator,
    decode_mask,
    decode_rle,
    encode_rle,
    is_rle,
    load_coco_instances,
    load_sa1b,
    polygons_to_mask,
    rle_area,
)
from transformers_samclip.distillation.run import _wrap, load_image_dataset


# ----------------------------------------------------------------------------------------------------- codec
def test_rle_string_matches_the_hand_derived_coco_encoding():
    # A 5x10 mask: column 0 and the top two pixels of column 9. Column-major runs (0s first): 0 zeros, 5 ones,
    # 40 zeros, 2 ones, 3 zeros. COCO writes counts[i] - counts[i - 2] from i = 3 on (not i = 2), in 5-bit
    # groups low first, chr(48 + group), +32 when more groups follow, the last group's bit 4 the sign:
    #   0 -> "0";  5 -> "5";  40 = 0b01_01000 -> groups 8 (+32 = 40 -> "X") then 1 -> "1";
    #   2 - 5 = -3 -> low group 0b11101 = 29, rest -1 with bit 4 set: done -> chr(77) = "M";
    #   3 - 40 = -37 -> low group 0b11011 = 27, rest -2: more (+32 = 59 -> "k"); -2 -> 0b11110 = 30, rest -1,
    #   bit 4 set: done -> chr(78) = "N".
    mask = np.zeros((5, 10), dtype=bool)
    mask[:, 0] = True
    mask[0:2, 9] = True
    assert encode_rle(mask) == {"size": [5, 10], "counts": "05X1MkN"}
    np.testing.assert_array_equal(decode_rle({"size": [5, 10], "counts": "05X1MkN"}), mask)
    np.testing.assert_array_equal(decode_rle({"size": [5, 10], "counts": b"05X1MkN"}), mask)
    np.testing.assert_array_equal(decode_rle({"size": [5, 10], "counts": [0, 5, 40, 2, 3]}), mask)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (3, 7), (17, 5), (31, 33), (97, 45)])
def test_rle_round_trip_is_exact(shape):
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    blob = np.zeros(shape, dtype=bool)
    blob[shape[0] // 3 :, : shape[1] // 2 + 1] = True
    masks = [rng.random(shape) < density for density in (0.05, 0.5, 0.95)]
    masks += [np.zeros(shape, dtype=bool), np.ones(shape, dtype=bool), blob]
    for mask in masks:
        rle = encode_rle(mask)
        assert rle["size"] == list(shape) and isinstance(rle["counts"], str)
        decoded = decode_rle(rle)
        assert decoded.dtype == bool and decoded.shape == shape
        np.testing.assert_array_equal(decoded, mask)
        np.testing.assert_array_equal(decode_mask(rle), mask)


def test_decode_rle_rejects_runs_that_do_not_fill_the_mask():
    with pytest.raises(ValueError, match="5x10"):
        decode_rle({"size": [5, 10], "counts": [0, 5, 40]})
    with pytest.raises(ValueError, match="truncated"):
        decode_rle({"size": [5, 10], "counts": "05X"})


def test_polygons_cover_the_expected_pixels():
    square = [2, 3, 6, 3, 6, 8, 2, 8]  # PIL fills a polygon's outline too: columns 2..6, rows 3..8
    expected = np.zeros((12, 15), dtype=bool)
    expected[3:9, 2:7] = True
    np.testing.assert_array_equal(polygons_to_mask([square], 12, 15), expected)
    triangle = [9.0, 1.0, 14.0, 1.0, 14.0, 6.0]  # right angle at (14, 1): the lower-left half is outside
    union = polygons_to_mask([square, triangle, [4.0, 10.0]], 12, 15)  # a one-point polygon covers nothing
    assert union[3:9, 2:7].all() and union[1, 9:15].all() and union[1:7, 14].all() and union[4, 13]
    assert not union[5, 10] and not union[11].any() and not union[:, 0].any()
    assert union.sum() == expected.sum() + 21  # 6 + 5 + 4 + 3 + 2 + 1 pixels of the triangle


# -------------------------------------------------------------------------------------------------- loaders
def _image(height, width, seed=0):
    return Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8))


def _box(height, width, y0, y1, x0, x1):
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _runs(mask):
    """COCO's uncompressed RLE counts by their definition: run lengths over the column-major mask, 0s first."""
    runs, current, length = [], False, 0
    for value in mask.ravel(order="F"):
        if value != current:
            runs.append(length)
            current, length = value, 0
        length += 1
    return [*runs, length]


def _write_coco(folder, *, drop_image=None):
    """Three PNGs (one without annotations) and a COCO file with polygon, compressed RLE and crowd (uncompressed
    RLE) segmentations; returns the annotation file and the masks of each image by id."""
    sizes = {1: (48, 64), 2: (37, 29), 3: (20, 21)}
    for image_id, (height, width) in sizes.items():
        if image_id != drop_image:
            _image(height, width, image_id).save(folder / f"{image_id:04d}.png")
    polygon_mask = _box(48, 64, 5, 21, 10, 31)  # filled polygon incl. outline: rows 5..20, columns 10..30
    rle_mask = _box(48, 64, 30, 44, 40, 60)
    rle_mask[35:38, 45:50] = False
    crowd_mask = _box(37, 29, 0, 12, 0, 29)
    tiny_mask = _box(37, 29, 20, 22, 20, 22)
    annotations = [
        {
            "id": 10,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 0,
            "area": 336.0,
            "bbox": [10, 5, 20, 15],
            "segmentation": [[10, 5, 30, 5, 30, 20, 10, 20]],
        },
        {
            "id": 11,
            "image_id": 1,
            "category_id": 2,
            "iscrowd": 0,
            "area": float(rle_mask.sum()),
            "bbox": [40, 30, 20, 14],
            "segmentation": encode_rle(rle_mask),
        },
        {
            "id": 12,
            "image_id": 2,
            "category_id": 1,
            "iscrowd": 1,
            "area": float(crowd_mask.sum()),
            "bbox": [0, 0, 29, 12],
            "segmentation": {"size": [37, 29], "counts": _runs(crowd_mask)},
        },
        {
            "id": 13,
            "image_id": 2,
            "category_id": 2,
            "iscrowd": 0,
            "bbox": [20, 20, 2, 2],
            "segmentation": encode_rle(tiny_mask),
        },  # no `area`: its pixel count (4) is used
    ]
    data = {
        "info": {},
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": annotations,
        "images": [{"id": i, "file_name": f"{i:04d}.png", "height": h, "width": w} for i, (h, w) in sizes.items()],
    }
    path = folder / "instances.json"
    path.write_text(json.dumps(data))
    return path, {1: [polygon_mask, rle_mask], 2: [crowd_mask, tiny_mask], 3: []}


def _masks(row, column="instance_masks"):
    return [decode_mask(rle) for rle in row[column]]


def _assert_masks_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a, e)


def test_load_coco_instances_rows_masks_crowd_and_min_area(tmp_path):
    annotation_file, masks = _write_coco(tmp_path)
    dataset = load_coco_instances(annotation_file, tmp_path, cache_dir=tmp_path / "cache")
    assert len(dataset) == 3 and dataset["image_id"] == [1, 2, 3]
    assert dataset[0]["image"].size == (64, 48)  # a datasets Image, decoded from its path
    assert dataset.cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"] is None  # not loaded
    _assert_masks_equal(_masks(dataset[0]), masks[1])
    _assert_masks_equal(_masks(dataset[1]), masks[2][1:])  # the crowd region is dropped by default
    assert dataset[2]["instance_masks"] == []  # kept: D_SAM prompts it from a grid

    with_crowd = load_coco_instances(
        annotation_file, tmp_path, include_crowd=True, min_area=5, masks_column="masks", cache_dir=tmp_path / "cache"
    )
    _assert_masks_equal(_masks(with_crowd[1], "masks"), masks[2][:1])  # crowd kept, the 4-pixel mask dropped
    _assert_masks_equal(_masks(with_crowd[0], "masks"), masks[1])
    assert len(load_coco_instances(annotation_file, tmp_path, max_images=2, cache_dir=tmp_path / "cache")) == 2


def test_coco_cache_follows_the_file(tmp_path):
    annotation_file, _ = _write_coco(tmp_path)
    assert len(load_coco_instances(annotation_file, tmp_path, cache_dir=tmp_path / "cache")[0]["instance_masks"]) == 2
    data = json.loads(annotation_file.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["id"] != 11]
    annotation_file.write_text(json.dumps(data))
    assert len(load_coco_instances(annotation_file, tmp_path, cache_dir=tmp_path / "cache")[0]["instance_masks"]) == 1


def test_missing_images_are_skipped_and_counted_once(tmp_path, caplog):
    annotation_file, _ = _write_coco(tmp_path, drop_image=2)
    with caplog.at_level(logging.WARNING, logger="transformers_samclip.distillation.annotations"):
        dataset = load_coco_instances(annotation_file, tmp_path, cache_dir=tmp_path / "cache")
    assert dataset["image_id"] == [1, 3]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "images missing on disk, skipped: 1 (first: 0002.png)" in warnings[0]


def test_bad_coco_files_raise_clear_errors(tmp_path):
    annotation_file, _ = _write_coco(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        load_coco_instances(tmp_path / "nope.json", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no image found on disk \(listed but missing: 3\)"):
        load_coco_instances(annotation_file, tmp_path / "elsewhere")
    data = json.loads(annotation_file.read_text())
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({k: v for k, v in data.items() if k != "annotations"}))
    with pytest.raises(ValueError, match="missing key 'annotations'"):
        load_coco_instances(broken, tmp_path)
    broken.write_text(json.dumps({**data, "images": [{"id": 1, "file_name": "0001.png", "width": 64}]}))
    with pytest.raises(ValueError, match="missing key 'height'"):
        load_coco_instances(broken, tmp_path)
    annotations = [{k: v for k, v in a.items() if k != "segmentation"} for a in data["annotations"]]
    broken.write_text(json.dumps({**data, "annotations": annotations}))
    with pytest.raises(ValueError, match="missing key 'segmentation'"):
        load_coco_instances(broken, tmp_path, cache_dir=tmp_path / "cache")
    wrong = {**data["annotations"][1], "segmentation": encode_rle(np.zeros((40, 64), dtype=bool))}
    broken.write_text(json.dumps({**data, "annotations": [wrong]}))
    with pytest.raises(ValueError, match="image 1: mask size 40x64 differs from the image's 48x64"):
        load_coco_instances(broken, tmp_path, cache_dir=tmp_path / "cache")


def _write_sa1b(folder):
    """Three SA-1B pairs (JPEG images, compressed RLE masks) and one JSON whose image is missing."""
    expected = {}
    for number, (height, width) in zip((3, 1, 2, 7), [(40, 50), (33, 45), (26, 31), (20, 20)]):
        masks = [_box(height, width, 2, 15, 3, 20), _box(height, width, 10, height, 0, 9)]
        masks[1][12, 4] = False
        annotations = [
            {
                "id": number * 10 + i,
                "segmentation": encode_rle(m),
                "bbox": [0, 0, 1, 1],
                "area": int(m.sum()),
                "predicted_iou": 0.9,
                "stability_score": 0.95,
                "crop_box": [0, 0, width, height],
                "point_coords": [[5.0, 5.0]],
            }
            for i, m in enumerate(masks)
        ]
        image = {"image_id": number, "file_name": f"sa_{number}.jpg", "height": height, "width": width}
        (folder / f"sa_{number}.json").write_text(json.dumps({"image": image, "annotations": annotations}))
        if number != 7:
            _image(height, width, number).save(folder / f"sa_{number}.jpg", quality=90)
        expected[number] = masks
    return expected


def test_load_sa1b_rows_masks_and_missing_images(tmp_path, caplog):
    data_dir = tmp_path / "sa1b"
    data_dir.mkdir()
    expected = _write_sa1b(data_dir)
    with caplog.at_level(logging.WARNING, logger="transformers_samclip.distillation.annotations"):
        dataset = load_sa1b(data_dir, cache_dir=tmp_path / "cache")
    assert dataset["image_id"] == [1, 2, 3]  # file-name order; sa_7.jpg is missing
    assert any("images missing on disk, skipped: 1 (first: sa_7.jpg)" in r.getMessage() for r in caplog.records)
    for row in dataset:
        _assert_masks_equal(_masks(row), expected[row["image_id"]])
        assert row["image"].size == (expected[row["image_id"]][0].shape[1], expected[row["image_id"]][0].shape[0])
    assert load_sa1b(data_dir, max_images=2, cache_dir=tmp_path / "cache")["image_id"] == [1, 2]


def test_bad_sa1b_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No SA-1B folder"):
        load_sa1b(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no image found on disk"):
        load_sa1b(tmp_path)
    _write_sa1b(tmp_path)
    data = json.loads((tmp_path / "sa_2.json").read_text())
    (tmp_path / "sa_2.json").write_text(json.dumps({"image": data["image"]}))
    with pytest.raises(ValueError, match=r"sa_2\.json: not a SA-1B file: missing key 'annotations'"):
        load_sa1b(tmp_path, cache_dir=tmp_path / "cache")
    data["image"]["height"] += 1
    (tmp_path / "sa_2.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="image 2: mask size 26x31 differs from the image's 27x31"):
        load_sa1b(tmp_path, cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------------------------- end to end
def test_recipe_coco_entry_reaches_the_collator(tmp_path, processor):
    annotation_file, masks = _write_coco(tmp_path)
    spec = {
        "source": "coco",
        "annotation_file": str(annotation_file),
        "image_dir": str(tmp_path),
        "cache_dir": str(tmp_path / "cache"),
    }  # masks_column defaults to instance_masks for coco
    sam_data = _wrap(load_image_dataset(spec), spec, masks=True)
    item = sam_data[0]
    assert item["image"].mode == "RGB" and item["image"].size == (64, 48) and item["skipped"] == 0
    # RLE masks stay encoded until the prompt sampler decodes the ones it prompts.
    assert all(is_rle(mask) for mask in item["masks"])
    _assert_masks_equal([decode_mask(mask) for mask in item["masks"]], masks[1])
    assert sam_data[2]["masks"] == []
    collator = SamClipDistillationCollator(
        processor, sam_dataset=sam_data, sam_batch_size=3, prompt_sampler=PromptSampler(num_boxes=2, box_jitter=0.0)
    )
    batch = collator([PairedDataset(sam_data, len(sam_data))[i] for i in range(3)])
    assert batch["sam_pixel_values"].shape == (3, 3, 64, 64) and batch["input_boxes"].shape == (3, 2, 4)
    # 48x64 is resized by 64/64 = 1: image 1's boxes are exactly its two masks' tight boxes.
    boxes = {tuple(box) for box in batch["input_boxes"][0].tolist()}
    assert boxes == {(10.0, 5.0, 30.0, 20.0), (40.0, 30.0, 59.0, 43.0)}
    assert int(batch["num_skipped"]) == 0


def test_prompt_sampler_gives_the_same_prompts_from_rle_as_from_decoded_masks():
    rng = np.random.default_rng(3)
    masks = [rng.random((37, 53)) < p for p in (0.002, 0.3, 0.6)]  # the first is below min_mask_area
    rles = [encode_rle(mask) for mask in masks]
    assert [rle_area(rle) for rle in rles] == [int(mask.sum()) for mask in masks]
    sampler = PromptSampler(num_boxes=3, num_point_prompts=3, min_mask_area=16, seed=5)
    for index in range(4):
        from_arrays, from_rles = sampler(masks, 37, 53, index), sampler(rles, 37, 53, index)
        for name in ("boxes", "points", "labels"):
            np.testing.assert_array_equal(getattr(from_arrays, name), getattr(from_rles, name))


def test_a_corrupt_rle_sample_is_skipped_and_counted(tmp_path):
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:5, 3:6] = True
    good, corrupt = encode_rle(mask), {"size": [8, 8], "counts": "0"}  # runs cover 0 of 64 pixels
    image = Image.new("RGB", (8, 8))
    dataset = datasets.Dataset.from_dict(
        {"image": [image, image], "instance_masks": [[corrupt], [good]]},
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "instance_masks": [{"size": [datasets.Value("int32")], "counts": datasets.Value("string")}],
            }
        ),
    )
    spec = {"masks_column": "instance_masks"}
    item = _wrap(dataset, spec, masks=True)[0]
    assert item["index"] == 1 and item["skipped"] == 1
    np.testing.assert_array_equal(decode_mask(item["masks"][0]), mask)


def test_a_sample_whose_masks_are_not_its_image_size_is_skipped(tmp_path, caplog):
    mask = np.zeros((8, 8), dtype=bool)
    mask[1:4, 1:4] = True
    wrong_size = np.zeros((8, 9), dtype=bool)
    for encode in (encode_rle, lambda m: m.astype(np.uint8)):  # RLE masks and plain arrays
        dataset = datasets.Dataset.from_dict(
            {"image": [Image.new("RGB", (8, 8))] * 2, "instance_masks": [[encode(wrong_size)], [encode(mask)]]}
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            item = _wrap(dataset, {"masks_column": "instance_masks"}, masks=True)[0]
        assert item["index"] == 1 and item["skipped"] == 1
        assert "mask of size 8x9 on an image of 8x8" in caplog.text
        np.testing.assert_array_equal(decode_mask(item["masks"][0]), mask)
