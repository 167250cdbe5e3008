"""The segmentation gallery: geometry, pixel-exact label colours, the legend, that the mosaic gallery shows what the
evaluation scores (decoded cells give the evaluators' mIoU), and the `--gallery` option of `samclip evaluate`."""

import json

import numpy as np
import pytest
from PIL import Image

from transformers_samclip.evaluation import (
    confusion_matrix,
    evaluate_cascade_baseline,
    evaluate_semantic_segmentation,
    label_palette,
    mean_iou,
    write_segmentation_gallery,
)
from transformers_samclip.evaluation.gallery import GAP, INK_COLOR, LEGEND_LINE_HEIGHT, TITLE_HEIGHT
from transformers_samclip.evaluation.semantic import evaluate_instance_semantic_segmentation
from transformers_samclip.mosaic import FASHION_MNIST_CLASSES, make_mosaic_dataset, mosaic_gallery

CLASSES = list(FASHION_MNIST_CLASSES)


def _crop(png: Image.Image, box) -> np.ndarray:
    return np.asarray(png.convert("RGB").crop(box))


def _decode(cell: np.ndarray, palette) -> np.ndarray:
    """Labels of an RGB cell whose every pixel must be a palette colour."""
    lookup = {color: label for label, color in enumerate(palette)}
    return np.vectorize(lambda r, g, b: lookup[(r, g, b)])(cell[..., 0], cell[..., 1], cell[..., 2])


def _colors(cell: np.ndarray) -> set:
    return {tuple(int(v) for v in color) for color in np.unique(cell.reshape(-1, 3), axis=0)}


def test_palette_is_fixed_and_distinguishable():
    palette = label_palette(10)
    assert len(palette) == 11 and len(set(palette)) == 11
    assert max(palette[0]) < 60  # background: dark
    assert label_palette(30)[:11] == palette and len(set(label_palette(30))) == 31
    assert (255, 255, 255) not in palette and INK_COLOR not in palette


def test_gallery_geometry_round_trip_and_legend(tmp_path):
    rng = np.random.default_rng(0)
    maps = [rng.integers(0, 11, size=(128, 128)), rng.integers(0, 11, size=(64, 64))]
    photos = [Image.fromarray((rng.random((128, 128, 3)) * 255).astype(np.uint8)) for _ in range(2)]
    columns = {"truth": maps, "all background": [np.zeros((128, 128), int)] * 2}
    layout = write_segmentation_gallery(tmp_path / "g.png", photos, columns, CLASSES, cell_size=128)
    png = Image.open(tmp_path / "g.png")

    legend_lines = len({box[1] for _, _, box in layout.legend})
    assert png.mode == "P" and 1 <= legend_lines <= 3
    assert (
        png.size
        == layout.size
        == (GAP + 3 * (128 + GAP), TITLE_HEIGHT + 2 * (128 + GAP) + legend_lines * LEGEND_LINE_HEIGHT + GAP)
    )
    assert layout.titles == ["image", "truth", "all background"]
    assert layout.cells[1][2] == (GAP + 2 * 130, TITLE_HEIGHT + 130, GAP + 2 * 130 + 128, TITLE_HEIGHT + 258)

    palette = np.array(label_palette(len(CLASSES)))
    np.testing.assert_array_equal(_crop(png, layout.cells[0][1]), palette[maps[0]])  # pixel-exact colours
    np.testing.assert_array_equal(_crop(png, layout.cells[1][1]), palette[np.kron(maps[1], np.ones((2, 2), int))])
    assert _colors(_crop(png, layout.cells[0][2])) == {tuple(palette[0])}
    photo = _crop(png, layout.cells[0][0]).astype(int)  # quantised, but close to the photo
    assert np.abs(photo - np.asarray(photos[0], dtype=int)).mean() < 20

    assert [name for name, _, _ in layout.legend] == ["background", *CLASSES]
    for label, (name, color, box) in enumerate(layout.legend):
        assert color == tuple(palette[label])
        assert _colors(_crop(png, box)) == {color}
        assert box[1] >= TITLE_HEIGHT + 2 * 130  # below the grid
        text = _crop(png, (box[2] + 2, box[1] - 2, box[2] + 30, box[3] + 2))
        assert INK_COLOR in _colors(text), name  # its name is written beside it
    assert INK_COLOR in _colors(_crop(png, (GAP, 0, GAP + 128, TITLE_HEIGHT)))  # column title


def test_gallery_rejects_bad_columns(tmp_path):
    with pytest.raises(ValueError, match="2 label maps for 1 rows"):
        write_segmentation_gallery(
            tmp_path / "g.png", [Image.new("RGB", (8, 8))], {"a": [np.zeros((8, 8))] * 2}, CLASSES
        )
    with pytest.raises(ValueError, match="labels outside"):
        write_segmentation_gallery(tmp_path / "g.png", None, {"a": [np.full((8, 8), 11)]}, CLASSES)


def _miou(maps, mosaics) -> float:
    confusion = sum(
        confusion_matrix(p, np.asarray(t).astype(np.int64), len(CLASSES) + 1, 255)
        for p, t in zip(maps, mosaics["semantic_map"])
    )
    return mean_iou(confusion)


def test_mosaic_gallery_shows_what_the_evaluation_scores(merged, processor, tiny_teachers, tmp_path):
    layout = mosaic_gallery(merged, processor, tiny_teachers, tmp_path / "m.png", num_mosaics=3, calibration_mosaics=2)
    assert layout.titles == [
        "image",
        "ground truth",
        "SAM-CLIP",
        "SAM-CLIP refined",
        "SAM-CLIP one pass",
        "SAM+CLIP cascade",
    ]
    png = Image.open(tmp_path / "m.png")
    mosaics = make_mosaic_dataset("test", 3, 0)
    decoded = {
        title: [_decode(_crop(png, layout.cells[row][column]), layout.palette) for row in range(3)]
        for column, title in enumerate(layout.titles)
        if column
    }

    for row, mosaic in enumerate(mosaics):  # ground truth: exactly the classes present, plus background
        present = {layout.palette[0]} | {layout.palette[label + 1] for label in mosaic["labels"]}
        assert _colors(_crop(png, layout.cells[row][1])) == present
        np.testing.assert_array_equal(decoded["ground truth"][row], np.asarray(mosaic["semantic_map"]))

    calibration = make_mosaic_dataset("train", 2, 0)
    for refine, title in ((False, "SAM-CLIP"), (True, "SAM-CLIP refined")):
        expected = evaluate_semantic_segmentation(
            merged, processor, mosaics, CLASSES, refine=refine, calibration_dataset=calibration
        )["miou"]
        assert _miou(decoded[title], mosaics) == pytest.approx(expected, abs=1e-12), title
    cascade = evaluate_cascade_baseline(
        tiny_teachers["sam_model"],
        tiny_teachers["sam_processor"],
        tiny_teachers["clip_model"],
        tiny_teachers["clip_processor"],
        mosaics,
        CLASSES,
        pred_iou_threshold=None,
        calibration_dataset=calibration,
    )
    assert _miou(decoded["SAM+CLIP cascade"], mosaics) == pytest.approx(cascade["miou"], abs=1e-12)
    painted = evaluate_instance_semantic_segmentation(merged, processor, mosaics, CLASSES)["miou"]
    assert _miou(decoded["SAM-CLIP one pass"], mosaics) == pytest.approx(painted, abs=1e-12)

    # The threshold calibrated for this random model paints each cell one colour; the one a model carries in its
    # config (used as is, no calibration) gives mixed maps, so the comparison sees every pixel's label.
    merged.config.background_threshold = -0.15
    without = mosaic_gallery(merged, processor, None, tmp_path / "n.png", num_mosaics=3)
    assert without.titles[-1] == "SAM-CLIP one pass"
    png = Image.open(tmp_path / "n.png")
    for refine, column in ((False, 2), (True, 3)):
        maps = [_decode(_crop(png, without.cells[row][column]), without.palette) for row in range(3)]
        assert len(np.unique(np.stack(maps))) >= 3
        expected = evaluate_semantic_segmentation(merged, processor, mosaics, CLASSES, refine=refine)
        assert expected["background_threshold"] == -0.15
        assert _miou(maps, mosaics) == pytest.approx(expected["miou"], abs=1e-12)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["teachers"], "'teachers' has none"),
        (["some/model", "--suite", "imagefolder:/nowhere"], "needs --suite mosaic"),
    ],
)
def test_cli_gallery_errors(argv, message, tmp_path, capsys):
    from transformers_samclip.cli import main

    assert main(["evaluate", *argv, "--gallery", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("samclip evaluate: --gallery") and message in err
    assert not (tmp_path / "g.png").exists()


def test_cli_writes_gallery(saved_tiny_model, tmp_path, capsys):
    from transformers_samclip.cli import main

    gallery, output = tmp_path / "out" / "g.png", tmp_path / "r.json"
    argv = [
        "evaluate",
        str(saved_tiny_model),
        "--num-items",
        "0",
        "--num-mosaics",
        "1",
        "--calibration-mosaics",
        "2",
        "--teachers-dir",
        str(tmp_path / "no-teachers"),
        "--gallery",
        str(gallery),
        "--output",
        str(output),
    ]
    assert main(argv) == 0
    assert f"wrote {gallery}" in capsys.readouterr().out
    width, height = Image.open(gallery).size
    assert width == GAP + 5 * (128 + GAP)  # no teachers there: no cascade column
    assert height > TITLE_HEIGHT + 8 * (128 + GAP)
    assert json.loads(output.read_text())["gallery"] == str(gallery)
