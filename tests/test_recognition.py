"""Recognition on ground-truth masks (evaluation/recognition.py) against a stand-in CLIP whose answers are known."""

from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from transformers_samclip.evaluation.recognition import crop_labeller, evaluate_recognition

# Class k is the colour COLOURS[k]; the stand-in names an image by its summed colour away from mid-grey.
COLOURS = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230]], dtype=np.uint8)
NAMES = ["red thing", "green thing", "blue thing"]


class ColourTokenizer:
    """Tokenizes a prompt to the index of the class name it contains."""

    def __call__(self, prompts, **kwargs):
        ids = [[next(k for k, name in enumerate(NAMES) if name in prompt)] for prompt in prompts]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.ones(len(ids), 1, dtype=torch.long)}


class ColourImageProcessor:
    """Pixels in [0, 1] at 32 px (nearest), no normalisation."""

    def __call__(self, images, return_tensors="pt"):
        arrays = [
            np.asarray(image.convert("RGB").resize((32, 32), Image.NEAREST), dtype=np.float32) / 255
            for image in images
        ]
        return {"pixel_values": torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)}


class ColourCLIP(torch.nn.Module):
    """Image embedding: the image's colour summed away from mid-grey (grey 128 adds nothing); text embedding of
    class k: its colour away from mid-grey."""

    config = SimpleNamespace(text_config=SimpleNamespace(max_position_embeddings=None))
    dtype = torch.float32
    device = torch.device("cpu")

    def get_image_features(self, pixel_values):
        return SimpleNamespace(pooler_output=(pixel_values - 128 / 255).sum(dim=(2, 3)))

    def get_text_features(self, input_ids, attention_mask=None):
        colours = torch.from_numpy(COLOURS.astype(np.float32) / 255 - 128 / 255)
        return SimpleNamespace(pooler_output=colours[input_ids[:, 0]])


def _scene():
    """A red hollow square outline (class 0) inside a green field (class 1), and a blue dot 10% visible (class 2):
    the crop around the red outline is mostly green, its masked crop only red."""
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[:] = COLOURS[1]
    outline = np.zeros((64, 64), dtype=bool)
    outline[20:36, 20:36] = True
    outline[21:35, 21:35] = False
    image[outline] = COLOURS[0]
    dot = np.zeros((64, 64), dtype=bool)
    dot[2:4, 2:4] = True
    image[dot] = COLOURS[2]
    field = ~outline & ~dot
    return {
        "image": Image.fromarray(image),
        "instance_masks": [Image.fromarray(m) for m in (outline, field, dot)],
        "labels": [0, 1, 2],
        "visible_fraction": [1.0, 0.9, 0.1],
    }


@pytest.fixture()
def scenes():
    rows = [_scene(), _scene()]
    return datasets.Dataset.from_dict(
        {key: [row[key] for row in rows] for key in rows[0]},
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "instance_masks": datasets.List(datasets.Image()),
                "labels": datasets.List(datasets.ClassLabel(names=NAMES)),
                "visible_fraction": datasets.List(datasets.Value("float32")),
            }
        ),
    )


def test_crops_and_masked_crops_have_the_known_accuracy_and_confusion(scenes):
    processor = SimpleNamespace(tokenizer=ColourTokenizer(), image_processor=ColourImageProcessor())
    labellers = {
        "crop": crop_labeller(ColourCLIP(), processor, NAMES, templates=["{}"]),
        "masked_crop": crop_labeller(ColourCLIP(), processor, NAMES, templates=["{}"], masked=True),
    }
    result = evaluate_recognition(labellers, scenes, num_classes=3)
    # The blue dot is less than 0.3 visible: not counted. The plain crop calls the red outline green.
    assert result["crop"]["num_items"] == result["masked_crop"]["num_items"] == 4
    assert result["crop"]["accuracy"] == 0.5
    assert result["crop"]["confusion"] == [[0, 2, 0], [0, 2, 0], [0, 0, 0]]
    assert result["masked_crop"]["accuracy"] == 1.0
    assert result["masked_crop"]["confusion"] == [[2, 0, 0], [0, 2, 0], [0, 0, 0]]
    # Counting every item: the 2 px dot fills its own crop, so both name it.
    everything = evaluate_recognition(labellers, scenes, num_classes=3, min_visible_fraction=0.0)
    assert everything["crop"]["num_items"] == 6
    assert everything["masked_crop"]["confusion"][2] == everything["crop"]["confusion"][2] == [0, 0, 2]


def test_no_visible_item_is_a_clear_error(scenes):
    processor = SimpleNamespace(tokenizer=ColourTokenizer(), image_processor=ColourImageProcessor())
    with pytest.raises(ValueError, match="nothing to recognise"):
        evaluate_recognition(
            {"crop": crop_labeller(ColourCLIP(), processor, NAMES, templates=["{}"])},
            scenes,
            num_classes=3,
            min_visible_fraction=1.01,
        )


def test_samclip_evaluate_measures_recognition_on_any_instance_dataset(tmp_path):
    """A dataset of instance masks with class labels (here parquet files of mosaics, read as a user's dataset):
    `samclip evaluate teachers --suite DIR` writes the CLIP teacher's recognition from crops and masked crops, the
    same numbers as the harness gives on the same rows."""
    import json

    from transformers_samclip.cli import main
    from transformers_samclip.evaluation.recognition import crop_labeller, evaluate_recognition
    from transformers_samclip.mosaic import FASHION_MNIST_CLASSES, load_mosaic_teachers, make_mosaic_dataset

    data = tmp_path / "instances"
    data.mkdir()
    mosaics = make_mosaic_dataset("test", 6, seed=3).remove_columns(["semantic_map"])
    mosaics.to_parquet(str(data / "test.parquet"))
    assert (
        main(["evaluate", "teachers", "--suite", str(data), "--split", "test", "--output", str(tmp_path / "r.json")])
        == 0
    )
    row = json.loads((tmp_path / "r.json").read_text())["rows"]["CLIP teacher"]
    teachers = load_mosaic_teachers()
    clip, clip_processor = teachers["clip_model"], teachers["clip_processor"]
    expected = evaluate_recognition(
        {
            "crop": crop_labeller(clip, clip_processor, FASHION_MNIST_CLASSES),
            "masked_crop": crop_labeller(clip, clip_processor, FASHION_MNIST_CLASSES, masked=True),
        },
        mosaics,
        10,
    )
    assert row["recognition_items"] == expected["crop"]["num_items"] > 0
    for name in ("crop", "masked_crop"):
        assert row[f"recognition_{name}"] == expected[name]["accuracy"]
        assert row[f"recognition_{name}_confusion"] == expected[name]["confusion"]
