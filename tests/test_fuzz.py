"""Bad and odd inputs against every public entry point of the shipped mosaic model: the processor's views, the model's
forward and segmentation methods, each pipeline, `from_pretrained` and each `samclip` command. Every row states its
outcome: a correct result (a value is checked) or a clear error of an expected type whose message names the argument
(for the command line: the exit status and a `samclip <command>: ...` line on stderr, no traceback). Anything else
is a crash; `test_counts` (last) prints the totals and requires zero crashes.

Run time: ~1 minute on 1 thread (the model is the 128 px mosaic model shipped in the package).
"""

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoModel, pipeline

from transformers_samclip import SamClipMaskGenerator, SamClipModel, SamClipProcessor, cli
from transformers_samclip._cli import UsageError
from transformers_samclip.distillation import load_recipe
from transformers_samclip.mosaic import SHIPPED_MOSAIC_MODEL_DIR, SHIPPED_TEACHERS_DIR

COUNTS = {"inputs tried": 0, "correct results": 0, "clear errors": 0, "crashes": 0}


@dataclass
class Ok:
    """A correct result: `check(result, ctx)` returns True."""

    check: Callable[[Any, Any], bool]


@dataclass
class Err:
    """A clear error: an exception of `types` whose message matches `pattern` (which names the argument)."""

    types: type | tuple
    pattern: str


@dataclass
class Exit:
    """A `samclip` command line: its exit status, a stderr line matching `pattern`, and `check(ctx)` when given."""

    code: int
    pattern: str = ""
    check: Callable[[Any], bool] | None = None


# ------------------------------------------------------------------------------------------------------ context
@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """The shipped mosaic model and processor, reference images and the files and folders the rows read."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("fuzz")
    model = SamClipModel.from_pretrained(SHIPPED_MOSAIC_MODEL_DIR).eval()
    processor = SamClipProcessor.from_pretrained(SHIPPED_MOSAIC_MODEL_DIR)
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    image.save(root / "image.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "truncated.png").write_bytes((root / "image.png").read_bytes()[:60])
    (root / "notes.txt").write_text("hello")
    # A model saved with model.save_pretrained alone (no processor files), and damaged copies.
    model.save_pretrained(root / "model-only")
    for name, damage in (
        ("truncated-weights", lambda b: b[: len(b) // 2]),
        ("garbage-weights", lambda b: b"garbage!"),
    ):
        folder = root / name
        shutil.copytree(SHIPPED_MOSAIC_MODEL_DIR, folder)
        weights = folder / "model.safetensors"
        weights.write_bytes(damage(weights.read_bytes()))
    (root / "empty-folder").mkdir()
    (root / "bad-config").mkdir()
    (root / "bad-config" / "config.json").write_text("{not json")
    # An image folder of two classes with one corrupt file, for `samclip evaluate --suite imagefolder:`.
    for label, color in (("shirt", 40), ("bag", 200)):
        (root / "images" / label).mkdir(parents=True)
        for index in range(2):
            Image.new("RGB", (32, 32), (color, color + index, 90)).save(root / "images" / label / f"{index}.png")
    (root / "images" / "bag" / "broken.png").write_bytes(b"not an image")
    for name, text in (("empty.json", ""), ("bad.json", "{nope"), ("list.json", "[]")):
        (root / name).write_text(text)
    (root / "results-bad.json").write_text("{broken")
    recipe = load_recipe("mosaic").to_dict()
    recipe["data"]["sam"] = {"source": "coco", "annotation_file": str(root / "instances.json"), "image_dir": str(root)}
    (root / "coco-recipe.json").write_text(json.dumps(recipe))
    shapes = Image.new("RGB", (80, 60), (20, 20, 20))  # two objects on a dark ground, for the instance rows
    ImageDraw.Draw(shapes).rectangle([10, 10, 35, 45], fill=(230, 230, 230))
    ImageDraw.Draw(shapes).ellipse([45, 15, 75, 50], fill=(200, 120, 60))
    pixels = processor(images=image)["pixel_values"]
    sam = processor(images=image, input_points=[[[10, 10]]])
    with torch.no_grad():
        embeds = model(pixel_values=pixels).image_embeds
        sam_embeddings = model.get_image_embeddings(sam["pixel_values"])
        class_embeds = model.encode_class_names(["shirt", "bag"], processor.tokenizer)
    return SimpleNamespace(
        root=root,
        model=model,
        processor=processor,
        image=image,
        array=array,
        shapes=shapes,
        pixels=pixels,
        embeds=embeds,
        sam=sam,
        sam_embeddings=sam_embeddings,
        class_embeds=class_embeds,
        dense=processor(images=image, view="dense"),
        width=model.config.head_config.projection_dim,
    )


def clip_pixels(ctx, image):
    """The processor's CLIP view of `image` (what every accepted image kind must match)."""
    return ctx.processor(images=image)["pixel_values"]


def same_pixels(expected_image=None, atol=1e-6, batch=1):
    """A check: the CLIP view equals that of `expected_image` (default: the reference image) for each image."""

    def check(result, ctx):
        expected = clip_pixels(ctx, expected_image if expected_image is not None else ctx.image)
        values = result["pixel_values"]
        return values.shape[0] == batch and all(torch.allclose(v, expected[0], atol=atol) for v in values)

    return check


def modes_match(mode):
    """A check: a PIL image of `mode` gives the CLIP view of its RGB conversion."""
    return lambda result, ctx: torch.allclose(
        result["pixel_values"], clip_pixels(ctx, ctx.image.convert(mode).convert("RGB"))
    )


def cosine(a, b) -> float:
    return torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


# --------------------------------------------------------------------------------------------------------- rows
def processor_rows():
    """Images of every kind, prompts, texts and views through `SamClipProcessor.__call__`."""
    p = lambda **kw: lambda c: c.processor(**kw)  # noqa: E731
    img = lambda f, **kw: lambda c: c.processor(images=f(c), **kw)  # noqa: E731
    rows = {}
    for mode in ("1", "L", "P", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA", "RGBX", "I"):
        rows[f"pil mode {mode}"] = (img(lambda c, m=mode: c.image.convert(m)), Ok(modes_match(mode)))
    rows.update(
        {
            "pil mode F, values 0-255": (
                img(lambda c: c.image.convert("F")),
                Err(ValueError, r"images is a float array .* \[0, 1\]"),
            ),
            "pil mode F, values in [0, 1]": (
                img(lambda c: Image.fromarray(np.asarray(c.image.convert("L"), np.float32) / 255, "F")),
                Ok(modes_match("L")),
            ),
            "pil mode I;16 (16-bit)": (
                img(lambda c: Image.fromarray(np.asarray(c.image.convert("L"), np.uint16) * 257)),
                Ok(modes_match("L")),
            ),
            "pil 16-bit I, values > 255": (
                img(lambda c: Image.fromarray(np.asarray(c.image.convert("L"), np.int32) * 257, "I")),
                Ok(modes_match("L")),
            ),
            "numpy HWC uint8": (img(lambda c: c.array), Ok(same_pixels())),
            "numpy CHW uint8": (img(lambda c: c.array.transpose(2, 0, 1)), Ok(same_pixels())),
            "numpy HW uint8": (
                img(lambda c: c.array[..., 0]),
                Ok(
                    lambda r, c: torch.allclose(
                        r["pixel_values"], clip_pixels(c, Image.fromarray(c.array[..., 0]).convert("RGB"))
                    )
                ),
            ),
            "numpy HWC 1 channel": (
                img(lambda c: c.array[..., :1]),
                Ok(
                    lambda r, c: torch.allclose(
                        r["pixel_values"], clip_pixels(c, Image.fromarray(c.array[..., 0]).convert("RGB"))
                    )
                ),
            ),
            "numpy HWC 4 channels": (
                img(lambda c: np.dstack([c.array, np.full((30, 40), 7, np.uint8)])),
                Ok(same_pixels()),
            ),
            "numpy float32 in [0, 1]": (img(lambda c: c.array.astype(np.float32) / 255), Ok(same_pixels())),
            "numpy float64 CHW in [0, 1]": (img(lambda c: c.array.transpose(2, 0, 1) / 255.0), Ok(same_pixels())),
            "numpy float16 in [0, 1]": (img(lambda c: (c.array / 255).astype(np.float16)), Ok(same_pixels(atol=0.02))),
            "numpy uint16": (img(lambda c: c.array.astype(np.uint16) * 257), Ok(same_pixels())),
            "numpy int64 within 0-255": (img(lambda c: c.array.astype(np.int64)), Ok(same_pixels())),
            "numpy bool": (
                img(lambda c: c.array[..., 0] > 127),
                Ok(lambda r, c: r["pixel_values"].shape == (1, 3, 64, 64)),
            ),
            "numpy batch NHWC": (img(lambda c: np.stack([c.array, c.array])), Ok(same_pixels(batch=2))),
            "numpy float above 1": (
                img(lambda c: c.array.astype(np.float32)),
                Err(ValueError, r"images is a float array"),
            ),
            "numpy float NaN": (
                img(lambda c: np.full((30, 40, 3), np.nan, np.float32)),
                Err(ValueError, "images holds NaN"),
            ),
            "numpy int64 negative": (
                img(lambda c: c.array.astype(np.int64) - 300),
                Err(ValueError, r"images is an integer array"),
            ),
            "numpy 5 channels": (
                img(lambda c: np.zeros((30, 40, 5), np.uint8)),
                Err(ValueError, "images must be shaped HW, HWC or CHW"),
            ),
            "numpy 1-D": (img(lambda c: np.zeros(40, np.uint8)), Err(ValueError, "images must be shaped")),
            "numpy empty": (img(lambda c: np.zeros((0, 40, 3), np.uint8)), Err(ValueError, "images is empty")),
            "numpy batch of 0": (
                img(lambda c: np.zeros((0, 30, 40, 3), np.uint8)),
                Err(ValueError, "images is a batch of 0"),
            ),
            "numpy object dtype": (
                img(lambda c: np.array([[None, 1]], dtype=object)),
                Err(TypeError, "images must hold numbers"),
            ),
            "numpy complex": (
                img(lambda c: np.zeros((30, 40, 3), np.complex64)),
                Err(TypeError, "images must hold numbers"),
            ),
            "torch CHW float": (
                img(lambda c: torch.from_numpy(c.array).permute(2, 0, 1).float() / 255),
                Ok(same_pixels()),
            ),
            "torch HWC uint8": (img(lambda c: torch.from_numpy(c.array)), Ok(same_pixels())),
            "torch bfloat16 CHW": (
                img(lambda c: (torch.from_numpy(c.array).permute(2, 0, 1) / 255).bfloat16()),
                Ok(same_pixels(atol=0.05)),
            ),
            "torch NCHW batch, requires_grad": (
                img(lambda c: (torch.from_numpy(c.array).permute(2, 0, 1)[None].float() / 255).requires_grad_()),
                Ok(same_pixels()),
            ),
            "path str": (img(lambda c: str(c.root / "image.png")), Ok(same_pixels())),
            "path Path": (img(lambda c: c.root / "image.png"), Ok(same_pixels())),
            "path missing": (
                img(lambda c: str(c.root / "missing.png")),
                Err(FileNotFoundError, "images: no such file"),
            ),
            "path corrupt": (
                img(lambda c: str(c.root / "corrupt.png")),
                Err(ValueError, "images: .* is not a readable image"),
            ),
            "path truncated": (
                img(lambda c: str(c.root / "truncated.png")),
                Err(ValueError, "images: .* is not a readable image"),
            ),
            "path folder": (img(lambda c: str(c.root)), Err(ValueError, "images: .* is a folder")),
            "path text file": (
                img(lambda c: str(c.root / "notes.txt")),
                Err(ValueError, "images: .* is not a readable image"),
            ),
            "int image": (img(lambda c: 5), Err(TypeError, "images must be a PIL image")),
            "dict image": (img(lambda c: {"x": 1}), Err(TypeError, "images must be")),
            "None in a list": (img(lambda c: [c.image, None]), Err(TypeError, r"images\[1\] must be")),
            "nested list": (img(lambda c: [[c.image]]), Err(TypeError, r"images\[0\] must be")),
            "empty list": (img(lambda c: []), Err(ValueError, "images is an empty list")),
            "tuple of images": (img(lambda c: (c.image, c.array)), Ok(same_pixels(batch=2))),
            "generator of images": (
                img(lambda c: (i for i in [c.image])),
                Err(TypeError, "images must be a PIL image"),
            ),
            "1x1 image": (
                img(lambda c: Image.new("RGB", (1, 1), (9, 9, 9))),
                Ok(lambda r, c: r["pixel_values"][0].flatten(1).std(1).max() < 1e-5),
            ),
            "1x300 image": (
                img(lambda c: Image.new("RGB", (1, 300))),
                Err(ValueError, "images is 1x300 pixels: too thin"),
            ),
            "0x0 image": (img(lambda c: Image.new("RGB", (0, 0))), Err(ValueError, "images is an empty image")),
            "2000x1500 image": (
                img(lambda c: c.image.resize((2000, 1500))),
                Ok(lambda r, c: r["pixel_values"].shape == (1, 3, 64, 64)),
            ),
            "view dense": (
                img(lambda c: c.image, view="dense"),
                Ok(
                    lambda r, c: (
                        r["pixel_values"].shape == (1, 3, 128, 128)
                        and r["reshaped_input_sizes"].tolist() == [[96, 128]]
                    )
                ),
            ),
            "view sam": (
                img(lambda c: c.image, view="sam"),
                Ok(lambda r, c: r["pixel_values"].shape == (1, 3, 128, 128)),
            ),
            "view unknown": (img(lambda c: c.image, view="thumbnail"), Err(ValueError, "view must be one of")),
            "dense_size 0": (
                img(lambda c: c.image, view="dense", dense_size=0),
                Err(ValueError, "dense_size must be"),
            ),
            "dense_size 64": (
                img(lambda c: c.image, view="dense", dense_size=64),
                Ok(lambda r, c: r["pixel_values"].shape[-1] == 64),
            ),
        }
    )
    pts = lambda **kw: lambda c: c.processor(images=c.image, **kw)  # noqa: E731
    rows.update(
        {
            "points 3-level": (
                pts(input_points=[[[10, 10]]]),
                Ok(lambda r, c: r["input_points"].tolist() == [[[[32.0, 32.0]]]]),
            ),
            "points 4-level": (
                pts(input_points=[[[[10, 10], [20, 20]]]]),
                Ok(lambda r, c: r["input_points"].shape == (1, 1, 2, 2)),
            ),
            "points tensor": (
                pts(input_points=torch.tensor([[[10.0, 10.0]]])),
                Ok(lambda r, c: r["input_points"][0, 0, 0, 0] == 32),
            ),
            "points numpy": (
                pts(input_points=np.array([[[39.0, 29.0]]])),
                Ok(lambda r, c: r["input_points"].max() <= 128),
            ),
            "points NaN": (pts(input_points=[[[float("nan"), 10]]]), Err(ValueError, r"input_points\[0\] holds NaN")),
            "points inf": (
                pts(input_points=[[[float("inf"), 10]]]),
                Err(ValueError, r"input_points\[0\] holds NaN or infinite"),
            ),
            "points negative": (pts(input_points=[[[-1, 10]]]), Err(ValueError, r"input_points\[0\] falls outside")),
            "points outside": (
                pts(input_points=[[[41, 10]]]),
                Err(ValueError, r"input_points\[0\] falls outside its 40x30"),
            ),
            "points [[[]]]": (pts(input_points=[[[]]]), Err(ValueError, r"input_points\[0\] has shape")),
            "points []": (pts(input_points=[]), Err(ValueError, r"input_points has entries for 0 image")),
            "points for 2 images": (
                pts(input_points=[[[1, 1]], [[2, 2]]]),
                Err(ValueError, "input_points has entries for 2"),
            ),
            "points ragged": (pts(input_points=[[[1, 2], [3]]]), Err(ValueError, r"input_points\[0\] is ragged")),
            "500 points": (
                pts(input_points=[np.random.default_rng(0).uniform(0, 30, (500, 2)).tolist()]),
                Ok(lambda r, c: r["input_points"].shape == (1, 1, 500, 2) and r["input_points"].max() <= 128),
            ),
            "points int64 tensor": (
                pts(input_points=torch.tensor([[[10, 10]]])),
                Ok(lambda r, c: r["input_points"].tolist() == [[[[32.0, 32.0]]]]),
            ),
            "labels as floats": (
                pts(input_points=[[[10, 10]]], input_labels=[[1.0]]),
                Ok(lambda r, c: r["input_labels"].item() == 1),
            ),
            "points strings": (
                pts(input_points=[[["a", "b"]]]),
                Err(ValueError, r"input_points\[0\] is ragged or not numeric"),
            ),
            "points int": (pts(input_points=5), Err(TypeError, "input_points must be a nested list")),
            "points 3 coordinates": (pts(input_points=[[[1, 2, 3]]]), Err(ValueError, r"input_points\[0\] has shape")),
            "labels without points": (
                pts(input_labels=[[1]]),
                Err(ValueError, "input_labels were given without input_points"),
            ),
            "labels with points": (
                pts(input_points=[[[10, 10]]], input_labels=[[0]]),
                Ok(lambda r, c: r["input_labels"].tolist() == [[[0]]]),
            ),
            "labels through the model": (
                lambda c: c.model(
                    **c.processor(images=c.image, input_points=[[[10, 10], [30, 20]]], input_labels=[[1, 0]])
                ),
                Ok(lambda r, c: r.pred_masks.shape == (1, 1, 3, 64, 64) and torch.isfinite(r.pred_masks).all()),
            ),
            "labels -1": (
                pts(input_points=[[[10, 10]]], input_labels=[[-1]]),
                Ok(lambda r, c: r["input_labels"].item() == -1),
            ),
            "labels value 2": (
                pts(input_points=[[[10, 10]]], input_labels=[[2]]),
                Err(ValueError, r"input_labels\[0\] holds \[2"),
            ),
            "labels shape": (
                pts(input_points=[[[10, 10]]], input_labels=[[1, 1]]),
                Err(ValueError, r"input_labels\[0\] has shape"),
            ),
            "boxes": (
                pts(input_boxes=[[[5, 5, 20, 20]]]),
                Ok(lambda r, c: r["input_boxes"].tolist() == [[[16.0, 16.0, 64.0, 64.0]]]),
            ),
            "boxes 3 numbers": (
                pts(input_boxes=[[[1, 2, 3]]]),
                Err(ValueError, r"input_boxes\[0\] has shape \(1, 3\)"),
            ),
            "boxes flat": (pts(input_boxes=[[1, 2, 3, 4]]), Err(ValueError, r"input_boxes\[0\] has shape \(4,\)")),
            "boxes inverted": (pts(input_boxes=[[[20, 5, 5, 20]]]), Err(ValueError, r"input_boxes\[0\]: boxes are")),
            "boxes NaN": (
                pts(input_boxes=[[[5, 5, float("nan"), 20]]]),
                Err(ValueError, r"input_boxes\[0\] holds NaN"),
            ),
            "boxes outside": (pts(input_boxes=[[[5, 5, 50, 20]]]), Err(ValueError, r"input_boxes\[0\] falls outside")),
            "boxes empty": (pts(input_boxes=[[]]), Err(ValueError, r"input_boxes\[0\] has shape")),
            "boxes and points": (
                pts(input_boxes=[[[5, 5, 20, 20]]], input_points=[[[[10, 10]]]]),
                Ok(lambda r, c: r["input_boxes"].shape == (1, 1, 4) and r["input_points"].shape == (1, 1, 1, 2)),
            ),
            "prompts in the clip view": (
                pts(input_points=[[[1, 1]]], view="clip"),
                Err(ValueError, "need the SAM view"),
            ),
            "prompts without images": (p(text="a", input_points=[[[1, 1]]]), Err(ValueError, "pass images= as well")),
            "text": (p(text="a shirt"), Ok(lambda r, c: r["input_ids"].shape[0] == 1)),
            "text long": (
                p(text="shirt " * 500),
                Ok(lambda r, c: r["input_ids"].shape[1] <= c.model.config.text_config.max_position_embeddings),
            ),
            "text control characters": (p(text="\x00\x07 shirt\t\n"), Ok(lambda r, c: r["input_ids"].shape[0] == 1)),
            "text punctuation only": (p(text="?!..."), Ok(lambda r, c: r["input_ids"].shape[0] == 1)),
            "text unicode": (p(text=["🐱 猫", "ünïcödé"]), Ok(lambda r, c: r["input_ids"].shape[0] == 2)),
            "text []": (p(text=[]), Err(ValueError, "text must be a non-empty")),
            "text blank": (p(text=["  "]), Err(ValueError, "text must be a non-empty")),
            "text int": (p(text=5), Err(ValueError, "text must be .* got int 5")),
            "nothing": (p(), Err(ValueError, "Give images and/or text")),
        }
    )
    return {f"processor: {name}": row for name, row in rows.items()}


def model_rows():
    """`SamClipModel.forward`, its encoders and its segmentation methods."""
    close_embeds = lambda tolerance: Ok(lambda r, c: cosine(r.image_embeds, c.embeds) > tolerance)  # noqa: E731
    rows = {
        "pixel_values float16": (lambda c: c.model(pixel_values=c.pixels.half()), close_embeds(0.999)),
        "pixel_values float64": (lambda c: c.model(pixel_values=c.pixels.double()), close_embeds(0.99999)),
        "pixel_values batch 0": (
            lambda c: c.model(pixel_values=c.pixels[:0]),
            Err(ValueError, "pixel_values must have shape"),
        ),
        "pixel_values 3-D": (
            lambda c: c.model(pixel_values=c.pixels[0]),
            Err(ValueError, "pixel_values must have shape"),
        ),
        "pixel_values int": (
            lambda c: c.model(pixel_values=c.pixels.long()),
            Err(TypeError, "pixel_values must be floating"),
        ),
        "pixel_values list": (
            lambda c: c.model(pixel_values=c.pixels.tolist()),
            Err(TypeError, "pixel_values must be a torch tensor"),
        ),
        "pixel_values NaN": (
            lambda c: c.model(pixel_values=c.pixels * float("nan")),
            Err(ValueError, "pixel_values hold NaN"),
        ),
        "pixel_values 60x64": (
            lambda c: c.model(pixel_values=torch.zeros(1, 3, 60, 64)),
            Err(ValueError, "multiple of the patch size"),
        ),
        "pixel_values 1 channel": (
            lambda c: c.model(pixel_values=c.pixels[:, :1]),
            Err(ValueError, "pixel_values must have shape"),
        ),
        "text and image": (
            lambda c: c.model(pixel_values=c.pixels, **c.processor(text=["shirt", "bag"])),
            Ok(
                lambda r, c: (
                    r.logits_per_image.shape == (1, 2)
                    and torch.allclose(
                        r.logits_per_image, (r.image_embeds @ r.text_embeds.T) * c.model.logit_scale.exp()
                    )
                )
            ),
        ),
        "input_ids empty": (
            lambda c: c.model(input_ids=torch.zeros(0, 5, dtype=torch.long)),
            Err(ValueError, "input_ids must be"),
        ),
        "input_ids too long": (
            lambda c: c.model(input_ids=torch.ones(1, 500, dtype=torch.long)),
            Err(ValueError, "input_ids of 500 tokens"),
        ),
        "input_ids beyond the vocabulary": (
            lambda c: c.model(input_ids=torch.full((1, 5), c.model.config.text_config.vocab_size)),
            Err(ValueError, "input_ids hold token id .* outside this model's vocabulary"),
        ),
        "input_ids negative": (
            lambda c: c.model(input_ids=torch.full((1, 5), -1)),
            Err(ValueError, "token id -1, outside"),
        ),
        "input_ids float": (
            lambda c: c.model(input_ids=torch.ones(1, 5)),
            Err(TypeError, "input_ids must hold integer"),
        ),
        "return_loss 1 image, 2 texts": (
            lambda c: c.model(pixel_values=c.pixels, **c.processor(text=["shirt", "bag"]), return_loss=True),
            Err(ValueError, "return_loss=True pairs image i with text i, but got 1 image"),
        ),
        "return_loss paired": (
            lambda c: c.model(
                pixel_values=c.pixels.repeat(2, 1, 1, 1), **c.processor(text=["shirt", "bag"]), return_loss=True
            ),
            Ok(lambda r, c: r.loss.ndim == 0 and torch.isfinite(r.loss)),
        ),
        "points NaN tensor": (
            lambda c: c.model(pixel_values=c.sam["pixel_values"], input_points=torch.full((1, 1, 1, 2), float("nan"))),
            Err(ValueError, "input_points hold NaN"),
        ),
        "labels without points": (
            lambda c: c.model(pixel_values=c.sam["pixel_values"], input_labels=torch.ones(1, 1, 1)),
            Err(ValueError, "input_labels were given without input_points"),
        ),
        "points 3-D tensor": (
            lambda c: c.model(pixel_values=c.sam["pixel_values"], input_points=torch.ones(1, 1, 2)),
            Err(ValueError, "input_points must have shape"),
        ),
        "points int64 tensor": (
            lambda c: c.model(pixel_values=c.sam["pixel_values"], input_points=c.sam["input_points"].long()),
            Ok(lambda r, c: torch.isfinite(r.pred_masks).all() and r.pred_masks.shape == (1, 1, 3, 64, 64)),
        ),
        "input_masks NaN": (
            lambda c: c.model(image_embeddings=c.sam_embeddings, input_masks=torch.full((1, 1, 64, 64), float("nan"))),
            Err(ValueError, "input_masks hold NaN"),
        ),
        "input_masks wrong size": (
            lambda c: c.model(image_embeddings=c.sam_embeddings, input_masks=torch.zeros(1, 1, 32, 32)),
            Err(ValueError, "input_masks must have shape"),
        ),
        "input_masks": (
            lambda c: c.model(
                image_embeddings=c.sam_embeddings, input_masks=torch.zeros(1, 1, 64, 64), multimask_output=False
            ),
            Ok(lambda r, c: r.pred_masks.shape == (1, 1, 1, 64, 64) and torch.isfinite(r.pred_masks).all()),
        ),
        "points list": (
            lambda c: c.model(pixel_values=c.sam["pixel_values"], input_points=[[[[1.0, 1.0]]]]),
            Err(TypeError, "input_points must be a torch tensor"),
        ),
        "boxes of 3": (
            lambda c: c.model(pixel_values=c.sam["pixel_values"], input_boxes=torch.ones(1, 1, 3)),
            Err(ValueError, "input_boxes must have shape"),
        ),
        "labels value 5": (
            lambda c: c.model(
                pixel_values=c.sam["pixel_values"],
                input_points=c.sam["input_points"],
                input_labels=torch.full((1, 1, 1), 5),
            ),
            Err(ValueError, "input_labels must be 1"),
        ),
        "points with the clip view": (
            lambda c: c.model(pixel_values=c.pixels, input_points=c.sam["input_points"]),
            Err(ValueError, "SAM prompts need 128x128"),
        ),
        "image_embeddings and points": (
            lambda c: c.model(image_embeddings=c.sam_embeddings, input_points=c.sam["input_points"]),
            Ok(lambda r, c: torch.allclose(r.pred_masks, c.model(**c.sam).pred_masks, atol=1e-5)),
        ),
        "image_embeddings wrong grid": (
            lambda c: c.model(image_embeddings=torch.zeros(1, 64, 8, 8), input_points=c.sam["input_points"]),
            Err(ValueError, "image_embeddings have shape"),
        ),
        "image_embeddings alone": (
            lambda c: c.model(image_embeddings=c.sam_embeddings),
            Err(ValueError, "image_embeddings are only used"),
        ),
        "nothing": (lambda c: c.model(), Err(ValueError, "Nothing to do")),
        "segment without prompts": (
            lambda c: c.model.segment(c.sam_embeddings),
            Err(ValueError, "No prompt to segment"),
        ),
        "get_image_embeddings of a list": (
            lambda c: c.model.get_image_embeddings([1, 2]),
            Err(TypeError, "pixel_values must be a torch"),
        ),
        "semantic_segmentation": (
            lambda c: SamClipMaskGenerator(c.model).semantic_segmentation(c.dense["pixel_values"], c.class_embeds),
            Ok(lambda r, c: r.logits.shape == (1, 3, 128, 128) and torch.equal(r.label_map, r.logits.argmax(1))),
        ),
        "class_embeds 32 wide": (
            lambda c: SamClipMaskGenerator(c.model).semantic_segmentation(c.dense["pixel_values"], torch.randn(2, 32)),
            Err(ValueError, "class_embeds are 32 wide but this model's embeddings are 64"),
        ),
        "class_embeds 1-D": (
            lambda c: SamClipMaskGenerator(c.model).semantic_segmentation(c.dense["pixel_values"], torch.randn(64)),
            Err(ValueError, "class_embeds must be a non-empty"),
        ),
        "class_embeds empty": (
            lambda c: SamClipMaskGenerator(c.model).semantic_segmentation(c.dense["pixel_values"], torch.randn(0, 64)),
            Err(ValueError, "class_embeds must be a non-empty"),
        ),
        "class_embeds NaN": (
            lambda c: SamClipMaskGenerator(c.model).semantic_segmentation(
                c.dense["pixel_values"], torch.full((2, 64), float("nan"))
            ),
            Err(ValueError, "class_embeds hold NaN"),
        ),
        "class_embeds list": (
            lambda c: SamClipMaskGenerator(c.model).semantic_segmentation(c.dense["pixel_values"], [[0.0] * 64]),
            Err(ValueError, "class_embeds must be a non-empty"),
        ),
        "background_embeds wrong width": (
            lambda c: SamClipMaskGenerator(c.model).semantic_segmentation(
                c.dense["pixel_values"], c.class_embeds, background_embeds=torch.randn(1, 8)
            ),
            Err(ValueError, "background_embeds are 8 wide"),
        ),
        "background_threshold text": (
            lambda c: SamClipMaskGenerator(c.model).semantic_segmentation(
                c.dense["pixel_values"], c.class_embeds, background_threshold="high"
            ),
            Err(ValueError, "background_threshold must be a finite number"),
        ),
        "background_threshold NaN": (
            lambda c: SamClipMaskGenerator(c.model).semantic_segmentation(
                c.dense["pixel_values"], c.class_embeds, background_threshold=float("nan")
            ),
            Err(ValueError, "background_threshold must be a finite number"),
        ),
        "refined": (
            lambda c: SamClipMaskGenerator(c.model).semantic_segmentation_refined(
                c.sam["pixel_values"], c.class_embeds
            ),
            Ok(lambda r, c: r.logits.shape == (1, 3, 128, 128) and set(r.label_map.unique().tolist()) <= {0, 1, 2}),
        ),
        "refined on the dense view": (
            lambda c: SamClipMaskGenerator(c.model).semantic_segmentation_refined(
                torch.zeros(1, 3, 64, 64), c.class_embeds
            ),
            Err(ValueError, "SAM refinement runs on the 128x128"),
        ),
        "refined num_points 0": (
            lambda c: SamClipMaskGenerator(c.model).semantic_segmentation_refined(
                c.sam["pixel_values"], c.class_embeds, num_points=0
            ),
            Err(ValueError, "num_points must be a positive integer"),
        ),
        "instance_segmentation": (
            lambda c: SamClipMaskGenerator(c.model).instance_segmentation(
                c.sam["pixel_values"], c.class_embeds, points_per_side=2
            ),
            Ok(
                lambda r, c: (
                    len(r.class_ids) == 1
                    and set(r.class_ids[0].tolist()) <= {0, 1}
                    and (r.scores[0][:-1] >= r.scores[0][1:]).all()
                )
            ),
        ),
        "instance_segmentation class_embeds 32 wide": (
            lambda c: SamClipMaskGenerator(c.model).instance_segmentation(c.sam["pixel_values"], torch.randn(2, 32)),
            Err(ValueError, "class_embeds are 32 wide"),
        ),
        "instance_segmentation points_per_side 0": (
            lambda c: SamClipMaskGenerator(c.model).instance_segmentation(
                c.sam["pixel_values"], c.class_embeds, points_per_side=0
            ),
            Err(ValueError, "points_per_side must be a positive integer"),
        ),
        "instance_segmentation mask_pooling": (
            lambda c: SamClipMaskGenerator(c.model).instance_segmentation(
                c.sam["pixel_values"], c.class_embeds, mask_pooling="median"
            ),
            Err(ValueError, "mask_pooling must be"),
        ),
        "instance_segmentation dense view": (
            lambda c: SamClipMaskGenerator(c.model).instance_segmentation(
                c.dense["pixel_values"][..., :64, :64], c.class_embeds
            ),
            Err(ValueError, "Instance segmentation runs on the 128x128"),
        ),
        "bfloat16 model, float32 pixels and prompts": (
            lambda c: c.bf16(
                pixel_values=c.sam["pixel_values"], input_points=c.sam["input_points"], return_image_embeds=True
            ),
            Ok(
                lambda r, c: (
                    r.pred_masks.dtype == torch.bfloat16
                    and cosine(
                        r.image_embeds,
                        c.model(
                            pixel_values=c.sam["pixel_values"],
                            input_points=c.sam["input_points"],
                            return_image_embeds=True,
                        ).image_embeds,
                    )
                    > 0.98
                )
            ),
        ),
    }
    enc = lambda *a, **kw: lambda c: c.model.encode_class_names(*a, c.processor.tokenizer, **kw)  # noqa: E731

    def unit_rows(n):
        return Ok(lambda r, c: r.shape == (n, c.width) and torch.allclose(r.norm(dim=-1), torch.ones(n), atol=1e-5))

    rows.update(
        {
            "encode_class_names": (enc(["shirt", "bag"]), unit_rows(2)),
            "encode_class_names one string": (enc("shirt"), unit_rows(1)),
            "encode_class_names comma string": (enc("shirt, bag"), Ok(lambda r, c: torch.allclose(r, c.class_embeds))),
            "encode_class_names []": (enc([]), Err(ValueError, "class_names must be non-empty")),
            "encode_class_names numbers": (enc([1, 2]), Err(TypeError, "class_names must be a list of strings")),
            "encode_class_names duplicates": (enc(["bag", "bag"]), Err(ValueError, "class_names has duplicates")),
            "template string": (
                enc(["bag"], templates="a photo of a {}."),
                Ok(
                    lambda r, c: torch.allclose(
                        r, c.model.encode_class_names(["bag"], c.processor.tokenizer, ["a photo of a {}."])
                    )
                ),
            ),
            "template without {}": (
                enc(["bag"], templates=["a photo"]),
                Err(ValueError, "templates: 'a photo' needs exactly one"),
            ),
            "template with two {}": (
                enc(["bag"], templates="{} and {}"),
                Err(ValueError, "templates: .* needs exactly one"),
            ),
            "template {0}": (enc(["bag"], templates="a {0}"), Err(ValueError, "templates: .* needs exactly one")),
            "template {name}": (
                enc(["bag"], templates="a {name} {}"),
                Err(ValueError, "templates: .* needs exactly one"),
            ),
            "templates []": (enc(["bag"], templates=[]), Err(ValueError, "templates must be a template string")),
            "templates int": (enc(["bag"], templates=5), Err(ValueError, "templates must be a template string")),
        }
    )
    return {f"model: {name}": row for name, row in rows.items()}


def pipeline_rows():
    """Our zero-shot semantic segmentation pipeline and transformers' three pipelines serving the model."""
    seg = lambda image=None, **kw: lambda c: c.segmenter(image(c) if image else c.image, **kw)  # noqa: E731

    def labels_ok(r, c):
        return {s["label"] for s in r} <= {"background", "shirt", "bag"} and all(
            s["mask"].size == (40, 30) and 0 <= s["score"] <= 1 for s in r
        )

    rows = {
        "segmentation": (seg(candidate_labels=["shirt", "bag"]), Ok(labels_ok)),
        "segmentation refined": (seg(candidate_labels=["shirt", "bag"], refine=True), Ok(labels_ok)),
        "segmentation comma string": (seg(candidate_labels="shirt, bag"), Ok(labels_ok)),
        "segmentation path": (seg(lambda c: str(c.root / "image.png"), candidate_labels=["bag"]), Ok(labels_ok)),
        "segmentation numpy": (seg(lambda c: c.array, candidate_labels=["bag"]), Ok(labels_ok)),
        "segmentation two images": (
            seg(lambda c: [c.image, c.image], candidate_labels=["bag"]),
            Ok(lambda r, c: len(r) == 2 and [s["label"] for s in r[0]] == [s["label"] for s in r[1]]),
        ),
        "segmentation template string": (seg(candidate_labels=["bag"], templates="a photo of a {}."), Ok(labels_ok)),
        "segmentation template without {}": (
            seg(candidate_labels=["bag"], templates="a photo"),
            Err(ValueError, "templates: 'a photo'"),
        ),
        "segmentation instance": (
            seg(lambda c: c.shapes, candidate_labels=["shirt", "bag"], subtask="instance", points_per_side=2),
            Ok(
                lambda r, c: (
                    len(r) > 0 and all(s["label"] in ("shirt", "bag") and s["mask"].size == (80, 60) for s in r)
                )
            ),
        ),
        "segmentation panoptic": (
            seg(lambda c: c.shapes, candidate_labels=["shirt", "bag"], subtask="panoptic", points_per_side=2),
            Ok(lambda r, c: len(r) > 0 and sum((np.asarray(s["mask"]) > 0).astype(int) for s in r).max() == 1),
        ),
        "segmentation subtask unknown": (
            seg(candidate_labels=["bag"], subtask="things"),
            Err(ValueError, "subtask must be one of"),
        ),
        "segmentation unknown option": (
            seg(candidate_labels=["bag"], points_per_image=4),
            Err(TypeError, "Unexpected argument"),
        ),
        "segmentation labels []": (seg(candidate_labels=[]), Err(ValueError, "candidate_labels must be non-empty")),
        "segmentation labels None": (seg(), Err(ValueError, "candidate_labels must be non-empty")),
        "segmentation labels duplicates": (
            seg(candidate_labels=["bag", "bag"]),
            Err(ValueError, "candidate_labels has duplicates"),
        ),
        "segmentation missing path": (
            seg(lambda c: str(c.root / "nope.jpg"), candidate_labels=["bag"]),
            Err(FileNotFoundError, "image: no such file"),
        ),
        "segmentation int image": (
            seg(lambda c: 3, candidate_labels=["bag"]),
            Err(TypeError, "image must be a PIL image"),
        ),
        "segmentation refine text": (
            seg(candidate_labels=["bag"], refine="yes"),
            Err(TypeError, "refine must be True or False"),
        ),
        "segmentation background_threshold text": (
            seg(candidate_labels=["bag"], background_threshold="x"),
            Err(ValueError, "background_threshold must be"),
        ),
        "segmentation background_labels []": (
            seg(candidate_labels=["bag"], background_labels=[]),
            Err(ValueError, "background_labels must be non-empty"),
        ),
    }
    zs = lambda image=None, **kw: lambda c: c.classifier(image(c) if image else c.image, **kw)  # noqa: E731
    scores_ok = lambda n: Ok(lambda r, c: len(r) == n and abs(sum(s["score"] for s in r) - 1) < 1e-4)  # noqa: E731
    rows.update(
        {
            "zero-shot classification": (zs(candidate_labels=["shirt", "bag"]), scores_ok(2)),
            "zero-shot classification comma string": (zs(candidate_labels="shirt, bag, coat"), scores_ok(3)),
            "zero-shot classification float array": (
                zs(lambda c: c.array / 255.0, candidate_labels=["shirt", "bag"]),
                scores_ok(2),
            ),
            "zero-shot classification labels []": (
                zs(candidate_labels=[]),
                Err(ValueError, "candidate_labels must be non-empty"),
            ),
            "zero-shot classification template without {}": (
                zs(candidate_labels=["bag"], hypothesis_template="a photo"),
                Err(ValueError, "hypothesis_template: 'a photo'"),
            ),
            "zero-shot classification missing path": (
                zs(lambda c: "/no/such/file.png", candidate_labels=["bag"]),
                Err(FileNotFoundError, "image: no such file"),
            ),
            "mask generation": (
                lambda c: c.masks(c.image, points_per_crop=4, points_per_batch=16),
                Ok(lambda r, c: all(m.shape == (30, 40) for m in r["masks"]) and len(r["scores"]) == len(r["masks"])),
            ),
            "mask generation corrupt path": (
                lambda c: c.masks(str(c.root / "corrupt.png"), points_per_crop=4),
                Err(ValueError, "image: .* is not a readable image"),
            ),
            "feature extraction": (
                lambda c: c.features(c.image, return_tensors=True),
                Ok(lambda r, c: r.shape[0] == 1 and torch.isfinite(r).all()),
            ),
            "mask generation numpy": (
                lambda c: c.masks(c.array, points_per_crop=4, points_per_batch=16),
                Ok(lambda r, c: all(m.shape == (30, 40) for m in r["masks"])),
            ),
            "feature extraction tensor": (
                lambda c: c.features(torch.from_numpy(c.array).permute(2, 0, 1), return_tensors=True),
                Ok(lambda r, c: torch.allclose(r, c.features(c.image, return_tensors=True))),
            ),
            "feature extraction dict image": (
                lambda c: c.features({"a": 1}),
                Err(TypeError, "image must be a PIL image"),
            ),
        }
    )
    return {f"pipeline: {name}": row for name, row in rows.items()}


def loading_rows():
    """`SamClipModel.from_pretrained`, `AutoModel.from_pretrained` and `SamClipProcessor.from_pretrained`."""
    load = lambda f, cls=SamClipModel: lambda c: cls.from_pretrained(f(c))  # noqa: E731
    rows = {
        "model": (
            load(lambda c: SHIPPED_MOSAIC_MODEL_DIR),
            Ok(lambda r, c: torch.equal(r.logit_scale, c.model.logit_scale)),
        ),
        "AutoModel": (
            load(lambda c: SHIPPED_MOSAIC_MODEL_DIR, AutoModel),
            Ok(lambda r, c: type(r).__name__ == "SamClipModel"),
        ),
        "model missing folder": (
            load(lambda c: str(c.root / "nowhere")),
            Err(FileNotFoundError, "nowhere: no such folder"),
        ),
        "model missing relative folder": (
            load(lambda c: "./runs/none"),
            Err(FileNotFoundError, "runs/none: no such folder"),
        ),
        "model CLIP folder": (
            load(lambda c: SHIPPED_TEACHERS_DIR / "clip"),
            Err(ValueError, "clip holds a CLIPModel"),
        ),
        "model SAM folder": (load(lambda c: SHIPPED_TEACHERS_DIR / "sam"), Err(ValueError, "sam holds a SamModel")),
        "AutoModel CLIP folder through SamClipModel": (
            load(lambda c: str(SHIPPED_TEACHERS_DIR / "clip")),
            Err(ValueError, "not a SAM-CLIP model"),
        ),
        "model truncated weights": (
            load(lambda c: c.root / "truncated-weights"),
            Err(OSError, "truncated-weights/model.safetensors is truncated"),
        ),
        "model garbage weights": (
            load(lambda c: c.root / "garbage-weights"),
            Err(OSError, "garbage-weights/model.safetensors is not a readable"),
        ),
        "model empty folder": (
            load(lambda c: c.root / "empty-folder"),
            Err(FileNotFoundError, "empty-folder has no config.json"),
        ),
        "model a file": (load(lambda c: c.root / "notes.txt"), Err(NotADirectoryError, "notes.txt is a file")),
        "model bad config.json": (
            load(lambda c: c.root / "bad-config"),
            Err(OSError, "bad-config/config.json is not valid JSON"),
        ),
        "processor": (
            load(lambda c: SHIPPED_MOSAIC_MODEL_DIR, SamClipProcessor),
            Ok(lambda r, c: r.clip_size == 64 and r.target_size == 128),
        ),
        "processor of a model-only folder": (
            load(lambda c: c.root / "model-only", SamClipProcessor),
            Err(FileNotFoundError, "model-only has no processor_config.json .*processor.save_pretrained"),
        ),
        "processor missing folder": (
            load(lambda c: c.root / "nowhere", SamClipProcessor),
            Err(FileNotFoundError, "nowhere: no such folder"),
        ),
        "processor CLIP folder": (
            load(lambda c: SHIPPED_TEACHERS_DIR / "clip", SamClipProcessor),
            Err(ValueError, "holds a CLIPModel"),
        ),
    }
    return {f"loading: {name}": row for name, row in rows.items()}


def _evaluation_counted_one_skip(ctx) -> bool:
    record = json.loads((ctx.root / "eval.json").read_text())
    return record["skipped_samples"] == 1 and 0 <= record["rows"]["mosaic"]["zero_shot_top1"] <= 1


def cli_rows():
    """Each `samclip` command with wrong (and a few right) arguments, in process."""
    r = lambda *a: lambda c: [str(x).format(root=c.root) for x in a]  # noqa: E731
    rows = {
        "no command": (r(), Exit(2, "usage: samclip <command>")),
        "--help": (r("--help"), Exit(0)),
        "unknown command": (r("train"), Exit(2, "samclip: unknown command 'train'")),
        "distill missing recipe": (
            r("distill", "--recipe", "{root}/none.json"),
            Exit(2, "samclip distill: --recipe .*No recipe"),
        ),
        "distill non-JSON recipe": (
            r("distill", "--recipe", "{root}/bad.json"),
            Exit(2, "samclip distill: --recipe .*not valid JSON"),
        ),
        "distill empty recipe": (
            r("distill", "--recipe", "{root}/empty.json"),
            Exit(2, "samclip distill: --recipe .*is empty"),
        ),
        "distill list recipe": (
            r("distill", "--recipe", "{root}/list.json"),
            Exit(2, "samclip distill: --recipe .*not a JSON object|non-object"),
        ),
        "distill unknown recipe name": (
            r("distill", "--recipe", "vit-huge"),
            Exit(2, "samclip distill: --recipe vit-huge: No recipe"),
        ),
        "distill recipe naming a missing file": (
            r("distill", "--recipe", "{root}/coco-recipe.json"),
            Exit(2, "samclip distill: --recipe .*: data.sam.annotation_file .*instances.json': no such file"),
        ),
        "distill output-dir is a file": (
            r("distill", "--output-dir", "{root}/notes.txt"),
            Exit(2, "samclip distill: --output-dir .* is an existing file"),
        ),
        "distill output-dir under a file": (
            r("distill", "--output-dir", "{root}/notes.txt/run"),
            Exit(2, "samclip distill: --output-dir .*is a file, not a folder"),
        ),
        "distill --set without =": (
            r("distill", "--set", "losses.sam_loss_weight"),
            Exit(2, "samclip distill: --recipe .*PATH=VALUE"),
        ),
        "distill --set unknown entry": (
            r("distill", "--set", "losses.nope=1"),
            Exit(2, "samclip distill: --recipe .*nope"),
        ),
        "distill --threads 0": (
            r("distill", "--threads", "0"),
            Exit(2, "samclip distill: --threads must be at least 1"),
        ),
        "distill unknown flag": (
            r("distill", "--fast"),
            Exit(2, "samclip distill: error: unrecognized arguments: --fast"),
        ),
        "distill --lambda text": (
            r("distill", "--lambda", "ten"),
            Exit(2, "samclip distill: error: argument --lambda"),
        ),
        "evaluate missing folder": (
            r("evaluate", "{root}/nowhere"),
            Exit(2, "samclip evaluate: model .*nowhere: no such folder"),
        ),
        "evaluate offline Hub id": (
            r("evaluate", "someone/model"),
            Exit(2, "samclip evaluate: model 'someone/model': no such folder here, and the Hub is offline"),
        ),
        "evaluate CLIP folder": (
            r("evaluate", str(SHIPPED_TEACHERS_DIR / "clip")),
            Exit(2, "samclip evaluate: model .*holds a CLIPModel"),
        ),
        "evaluate SAM folder": (
            r("evaluate", str(SHIPPED_TEACHERS_DIR / "sam")),
            Exit(2, "samclip evaluate: model .*holds a SamModel"),
        ),
        "evaluate model-only folder": (
            r("evaluate", "{root}/model-only"),
            Exit(2, "samclip evaluate: model .*has no processor_config.json"),
        ),
        "evaluate truncated weights": (
            r("evaluate", "{root}/truncated-weights"),
            Exit(2, "samclip evaluate: model .*model.safetensors is truncated"),
        ),
        "evaluate missing imagefolder": (
            r("evaluate", "mosaic", "--suite", "imagefolder:{root}/none"),
            Exit(2, "samclip evaluate: --suite imagefolder: .*no such folder"),
        ),
        "evaluate --output is a folder": (
            r("evaluate", "mosaic", "--output", "{root}"),
            Exit(2, "samclip evaluate: --output .* is an existing folder"),
        ),
        "evaluate --threads 0": (
            r("evaluate", "mosaic", "--threads", "0"),
            Exit(2, "samclip evaluate: --threads must be at least 1"),
        ),
        "evaluate --gallery off mosaic": (
            r("evaluate", "mosaic", "--suite", "imagefolder:{root}/images", "--gallery", "{root}/g.png"),
            Exit(2, "samclip evaluate: --gallery draws mosaics"),
        ),
        "evaluate --debug": (
            lambda c: cli.main(["evaluate", str(c.root / "nowhere"), "--debug"]),
            Err(UsageError, "nowhere: no such folder"),
        ),
        "evaluate imagefolder with a corrupt file": (
            r(
                "evaluate",
                "mosaic",
                "--suite",
                "imagefolder:{root}/images",
                "--split",
                "train",
                "--output",
                "{root}/eval.json",
            ),
            Exit(0, "skipped 1 unreadable sample\\(s\\) of 5 \\(.*broken.png\\)", _evaluation_counted_one_skip),
        ),
        "export into an existing file": (
            r("export", "mosaic", "{root}/notes.txt"),
            Exit(2, "samclip export: out_dir .* is an existing file"),
        ),
        "export missing --results": (
            r("export", "mosaic", "{root}/export", "--results", "{root}/none.json"),
            Exit(2, "samclip export: --results .*no such file"),
        ),
        "export model-only folder": (
            r("export", "{root}/model-only", "{root}/export"),
            Exit(2, "samclip export: model_dir .*has no processor_config.json"),
        ),
        "export missing model": (
            r("export", "{root}/nowhere", "{root}/export"),
            Exit(2, "samclip export: model_dir .*no such folder"),
        ),
        "export broken --results": (
            r("export", "mosaic", "{root}/export2", "--results", "{root}/results-bad.json"),
            Exit(1, "samclip export: .*"),
        ),
        "export": (
            r("export", "mosaic", "{root}/export3"),
            Exit(
                0,
                "",
                lambda c: (
                    (c.root / "export3" / "README.md").is_file()
                    and (c.root / "export3" / "model.safetensors").is_file()
                ),
            ),
        ),
        "push offline": (
            r("push", "mosaic", "someone/samclip"),
            Exit(1, "samclip push: cannot push to someone/samclip: the Hub is offline"),
        ),
        "push missing model": (
            r("push", "{root}/nowhere", "someone/samclip"),
            Exit(2, "samclip push: model_dir .*no such folder"),
        ),
        "demo missing app": (r("demo", "--app", "{root}/app.py"), Exit(2, "samclip demo: --app .*no such file")),
        "demo port 0": (r("demo", "--port", "0"), Exit(2, "samclip demo: --port must be 1-65535; got 0")),
        "demo missing model": (
            r("demo", "--model", "{root}/nowhere"),
            Exit(2, "samclip demo: --model .*no such folder"),
        ),
        "build-teachers missing --init-from": (
            r("build-teachers", "--init-from", "{root}/nowhere"),
            Exit(2, "samclip build-teachers: --init-from .*no such folder"),
        ),
        "build-teachers --threads 0": (
            r("build-teachers", "--threads", "0", "--output-dir", "{root}/teachers"),
            Exit(2, "samclip build-teachers: --threads must be"),
        ),
        "build-teachers --only bogus": (
            r("build-teachers", "--only", "bogus"),
            Exit(2, "samclip build-teachers: error: argument --only"),
        ),
    }
    return {f"cli: {name}": row for name, row in rows.items()}


ROWS = {**processor_rows(), **model_rows(), **pipeline_rows(), **loading_rows(), **cli_rows()}


@pytest.fixture(scope="module")
def served(ctx):
    """`ctx` with the pipelines and a bfloat16 copy of the model (built once, for the rows that need them)."""
    from copy import deepcopy

    from transformers_samclip import SAMCLIP_PIPELINES

    def served_pipeline(task, **kwargs):  # SAM-CLIP's class for transformers' own tasks: its validation layer
        return pipeline(task, model=ctx.model, pipeline_class=SAMCLIP_PIPELINES[task], **kwargs)

    ctx.segmenter = pipeline("zero-shot-semantic-segmentation", model=ctx.model, processor=ctx.processor)
    ctx.classifier = served_pipeline(
        "zero-shot-image-classification",
        tokenizer=ctx.processor.tokenizer,
        image_processor=ctx.processor.clip_image_processor,
    )
    ctx.masks = served_pipeline("mask-generation", image_processor=ctx.processor.image_processor)
    ctx.features = served_pipeline("image-feature-extraction", image_processor=ctx.processor.clip_image_processor)
    ctx.bf16 = deepcopy(ctx.model).to(torch.bfloat16)
    return ctx


def _run_cli(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("name", list(ROWS))
def test_row(name, served, capsys, recwarn):
    call, expected = ROWS[name]
    COUNTS["inputs tried"] += 1
    COUNTS["crashes"] += 1  # taken back below once the outcome is the expected one
    if isinstance(expected, Exit):
        code, err = _run_cli(call(served), capsys)
        shown = err + "".join(str(w.message) for w in recwarn)
        assert "Traceback" not in err, err
        assert code == expected.code, f"exit {code}, expected {expected.code}: {err[-2000:]}"
        assert re.search(expected.pattern, shown), f"{expected.pattern!r} not in: {shown[-2000:]}"
        assert expected.check is None or expected.check(served)
        outcome = "correct results" if code == 0 else "clear errors"
    elif isinstance(expected, Err):
        with pytest.raises(expected.types, match=expected.pattern):
            with torch.no_grad():
                call(served)
        outcome = "clear errors"
    else:
        with torch.no_grad():
            result = call(served)
        assert expected.check(result, served), f"wrong result: {str(result)[:500]}"
        outcome = "correct results"
    COUNTS["crashes"] -= 1
    COUNTS[outcome] += 1


def test_counts():
    """The totals of the table (every row above ran in this session when the whole file runs)."""
    print("\nfuzz counts: " + ", ".join(f"{key} {value}" for key, value in COUNTS.items()))
    assert COUNTS["crashes"] == 0
    assert COUNTS["correct results"] + COUNTS["clear errors"] == COUNTS["inputs tried"]


def test_console_commands_print_one_line_and_a_traceback_only_when_asked(tmp_path):
    """The installed `samclip` script and `python -m ...distillation.cli` (what accelerate launches) go through the
    same boundary: one line on stderr and exit 2; SAMCLIP_DEBUG=1 shows the traceback instead."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "SAMCLIP_DEBUG": "0"}
    samclip = str(Path(sys.executable).with_name("samclip"))
    commands = {
        "samclip evaluate": [samclip, "evaluate", str(tmp_path / "nowhere")],
        "samclip distill": [
            sys.executable,
            "-m",
            "transformers_samclip.distillation.cli",
            "--recipe",
            str(tmp_path / "none.json"),
        ],
    }
    for prefix, command in commands.items():
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and result.stderr.startswith(f"{prefix}: "), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    debug = subprocess.run(
        commands["samclip evaluate"], env={**env, "SAMCLIP_DEBUG": "1"}, capture_output=True, text=True, timeout=300
    )
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "UsageError" in debug.stderr
