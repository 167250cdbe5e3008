"""Input checks of SAM-CLIP in one place: images, prompts, texts and templates for the processor and the pipelines,
tensors for the model, and folders for `from_pretrained`. Every error names the argument, what it got and the fix;
the checks are vectorised (no per-pixel Python).

Images (`to_rgb_images`) are converted to RGB PIL images once: any PIL mode (alpha dropped, 16-bit and float modes
scaled as below), numpy arrays and torch tensors shaped HW, HWC or CHW (C in 1, 3, 4) or a batch of those (NHWC or
NCHW), holding uint8, uint16 (16-bit, scaled to 8 bits), bool, other integers within 0-255, or floats in [0, 1]
(rounded to 8 bits), and file paths or http(s) URLs. PIL "I" images are 8-bit when their values fit in 0-255,
else 16-bit.
"""

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers.image_utils import load_image

IMAGE_KINDS = (
    "a PIL image, a numpy array or torch tensor (HW, HWC or CHW; uint8, or float in [0, 1]), a file path or a URL"
)
POINT_LABELS = (-10, -1, 0, 1)  # SAM's: padding, not-a-point, background, foreground
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
PROCESSOR_HINT = (
    "Save the processor there too (processor.save_pretrained(folder)), or build one with "
    "SamClipProcessor.from_sizes(tokenizer, sam_size, clip_size)."
)


def describe(value) -> str:
    """A short description of a value for error messages."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"a {type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, (str, os.PathLike)):
        return repr(str(value)) if len(str(value)) < 80 else repr(str(value)[:77] + "...")
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) < 60 else text[:57] + '...'}"


# ------------------------------------------------------------------------------------------------------------ images
def to_rgb_images(images, argument: str = "images", min_resize: int | None = None) -> list[Image.Image]:
    """RGB PIL images from one image or a list of them (see the module docstring for what an image may be).
    `min_resize`: the smallest side the images will be resized to by their longest side; images so thin that
    their short side would become 0 pixels are refused."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"{argument} is an empty list; give at least one image ({IMAGE_KINDS}).")
        items = [(image, f"{argument}[{index}]") for index, image in enumerate(images)]
    elif isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        if images.shape[0] == 0:
            raise ValueError(f"{argument} is a batch of 0 images ({describe(images)}); give at least one image.")
        items = [(image, f"{argument}[{index}]") for index, image in enumerate(images)]
    else:
        items = [(images, argument)]
    converted = [_to_rgb(image, name) for image, name in items]
    if min_resize:
        for image, (_, name) in zip(converted, items):
            if min(image.size) * min_resize / max(image.size) < 0.5:
                raise ValueError(
                    f"{name} is {image.width}x{image.height} pixels: too thin to resize (its short side would be 0 "
                    f"pixels at {min_resize} pixels long); crop or pad it to a less extreme aspect ratio."
                )
    return converted


def to_rgb_image(image, argument: str = "image", timeout: float | None = None) -> Image.Image:
    """One RGB PIL image (see `to_rgb_images`; `timeout` for a URL); a list or a batch is refused."""
    if isinstance(image, (list, tuple)) or (isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4):
        raise ValueError(f"{argument} must be one image here; got {describe(image)} (pass several images as a list).")
    return _to_rgb(image, argument, timeout)


def _to_rgb(image, argument: str, timeout: float | None = None) -> Image.Image:
    if isinstance(image, (str, os.PathLike)):
        image = _open_image(image, argument, timeout)
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"{argument} is an empty image ({image.width}x{image.height} pixels).")
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # PIL's convert would clip these to 0-255
            array = np.asarray(image)
            if image.mode == "I" and 255 < array.max() <= 65535 and array.min() >= 0:
                array = array.astype(np.uint16)  # PIL opens some 16-bit files as 32-bit "I"
            return _array_to_rgb(array, argument)
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        return _array_to_rgb(
            (tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor).numpy(), argument
        )
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, argument)
    raise TypeError(f"{argument} must be {IMAGE_KINDS}; got {describe(image)}.")


def _open_image(path, argument: str, timeout: float | None = None) -> Image.Image:
    text = str(path)
    if text.startswith(("http://", "https://")):
        try:
            return load_image(text, timeout=timeout)
        except Exception as error:  # network errors come in many types; all mean the same to the caller
            raise ValueError(
                f"{argument}: could not load the image at {text} ({type(error).__name__}: {error})."
            ) from None
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{argument}: no such file {text!r}; give an existing image file, a URL or an image.")
    if path.is_dir():
        raise ValueError(f"{argument}: {text!r} is a folder, not an image file.")
    try:
        image = Image.open(path)
        image.load()  # PIL decodes lazily: a truncated file fails here, not later inside the processor
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{argument}: {text!r} is not a readable image ({error}).") from None
    return image


def _array_to_rgb(array: np.ndarray, argument: str) -> Image.Image:
    if array.dtype.kind not in "buif":
        raise TypeError(f"{argument} must hold numbers; got {describe(array)}.")
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"{argument} must be shaped HW, HWC or CHW with 1, 3 or 4 channels; got {describe(array)}.")
    if array.size == 0:
        raise ValueError(f"{argument} is empty ({describe(array)}).")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValueError(f"{argument} holds NaN or infinite values ({describe(array)}).")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            raise ValueError(
                f"{argument} is a float array with values in [{low:.3g}, {high:.3g}]; float images must lie in "
                "[0, 1] (divide uint8 values by 255, or pass them as uint8)."
            )
        array = np.round(array * 255).astype(np.uint8)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype != np.uint8:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"{argument} is an integer array ({array.dtype}) with values in [{low}, {high}]; give uint8 (0-255), "
                "uint16, or float in [0, 1]."
            )
        array = array.astype(np.uint8)
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[array.shape[-1] if array.ndim == 3 else 2]
    return Image.fromarray(np.ascontiguousarray(array), mode=mode).convert("RGB")


# ----------------------------------------------------------------------------------------------------------- prompts
def _per_image(value, argument: str, num_images: int) -> list[np.ndarray]:
    """One float array per image from a nested list, array or tensor whose first level is the image."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().float().numpy()
    if not isinstance(value, (list, tuple, np.ndarray)) or (isinstance(value, np.ndarray) and value.ndim == 0):
        raise TypeError(
            f"{argument} must be a nested list, array or tensor with one entry per image; got {describe(value)}."
        )
    if len(value) != num_images:
        raise ValueError(
            f"{argument} has entries for {len(value)} image(s) but {num_images} image(s) were given; its first level "
            "is the image: one point on one image is [[[x, y]]], one box [[[x0, y0, x1, y1]]]."
        )
    arrays = []
    for index, item in enumerate(value):
        try:
            arrays.append(np.asarray(item, dtype=np.float64))
        except (ValueError, TypeError):
            raise ValueError(
                f"{argument}[{index}] is ragged or not numeric ({describe(item)}); every prompt of an image must "
                "have the same number of values."
            ) from None
    return arrays


def check_prompts(image_sizes, input_points=None, input_labels=None, input_boxes=None):
    """Check prompts in original-image coordinates before any work; `image_sizes` holds each image's
    `(height, width)`. Returns `(input_points, input_labels, input_boxes)` as nested lists (None where absent)."""
    num_images = len(image_sizes)
    if input_labels is not None and input_points is None:
        raise ValueError(
            "input_labels were given without input_points: a label marks a point as foreground (1) or background "
            "(0); pass input_points too, or drop input_labels."
        )
    points = labels = boxes = None
    if input_points is not None:
        points = _per_image(input_points, "input_points", num_images)
        for index, array in enumerate(points):
            if array.ndim not in (2, 3) or array.shape[-1] != 2 or 0 in array.shape:
                raise ValueError(
                    f"input_points[{index}] has shape {array.shape}; each image needs (points, 2) or (prompts, "
                    "points, 2) (x, y) coordinates, at least one point, e.g. input_points=[[[120, 80]]]."
                )
            _check_coordinates(array, image_sizes[index], f"input_points[{index}]")
        if input_labels is not None:
            labels = _per_image(input_labels, "input_labels", num_images)
            for index, (label, array) in enumerate(zip(labels, points)):
                if label.shape != array.shape[:-1]:
                    raise ValueError(
                        f"input_labels[{index}] has shape {label.shape} but its points need {array.shape[:-1]} "
                        "(one label per point)."
                    )
                if not np.isin(label, POINT_LABELS).all():
                    raise ValueError(
                        f"input_labels[{index}] holds {sorted(set(label.ravel().tolist()) - set(POINT_LABELS))}; "
                        "labels are 1 (foreground), 0 (background) or -1 (ignored)."
                    )
        shapes = {array.shape for array in points}
        if len(shapes) > 1 and (labels is None or any(array.ndim != 2 for array in points)):
            raise ValueError(
                f"input_points have different shapes per image ({sorted(shapes)}); give every image the same "
                "number of points, or (points, 2) arrays with input_labels so that they can be padded."
            )
    if input_boxes is not None:
        boxes = _per_image(input_boxes, "input_boxes", num_images)
        for index, array in enumerate(boxes):
            if array.ndim != 2 or array.shape[-1] != 4 or array.shape[0] == 0:
                raise ValueError(
                    f"input_boxes[{index}] has shape {array.shape}; each image needs (boxes, 4) with boxes "
                    "[x0, y0, x1, y1], e.g. input_boxes=[[[10, 20, 60, 90]]]."
                )
            _check_coordinates(array.reshape(-1, 2), image_sizes[index], f"input_boxes[{index}]")
            if (array[:, 2] < array[:, 0]).any() or (array[:, 3] < array[:, 1]).any():
                raise ValueError(f"input_boxes[{index}]: boxes are [x0, y0, x1, y1] with x1 >= x0 and y1 >= y0.")
        if len({array.shape for array in boxes}) > 1:
            raise ValueError("input_boxes: give every image the same number of boxes.")
    if labels is not None:
        labels = [label.astype(np.int64) for label in labels]  # checked above to be whole numbers
    return tuple(None if arrays is None else [a.tolist() for a in arrays] for arrays in (points, labels, boxes))


def _check_coordinates(array: np.ndarray, size, argument: str):
    if not np.isfinite(array).all():
        raise ValueError(f"{argument} holds NaN or infinite coordinates; prompts are finite (x, y) pixel coordinates.")
    height, width = size
    if array.min() < 0 or (array[..., 0] > width).any() or (array[..., 1] > height).any():
        raise ValueError(
            f"{argument} falls outside its {width}x{height} image (values in [{array.min():.1f}, {array.max():.1f}]): "
            "prompts are (x, y) pixel coordinates of the original image, within its width and height."
        )


def check_prompt_tensors(config, image_embeddings, input_points, input_labels, input_boxes, input_masks):
    """Check SAM image embeddings and prompts already in model-input coordinates (what `SamClipModel.segment`
    takes)."""
    size = config.image_size
    grid = config.prompt_encoder_config.image_embedding_size
    channels = config.vision_config.output_channels
    if not isinstance(image_embeddings, torch.Tensor) or image_embeddings.ndim != 4 or 0 in image_embeddings.shape:
        raise ValueError(
            f"image_embeddings must be a (batch, {channels}, {grid}, {grid}) tensor; got {describe(image_embeddings)}."
        )
    if tuple(image_embeddings.shape[1:]) != (channels, grid, grid):
        raise ValueError(
            f"image_embeddings have shape {tuple(image_embeddings.shape)}; this model's are "
            f"(batch, {channels}, {grid}, {grid}) (get_image_embeddings of {size}x{size} SAM-path pixel values)."
        )
    for name, value in (
        ("input_points", input_points),
        ("input_labels", input_labels),
        ("input_boxes", input_boxes),
        ("input_masks", input_masks),
    ):
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor (SamClipProcessor returns them); got {describe(value)}.")
    batch_size = image_embeddings.shape[0]
    if input_labels is not None and input_points is None:
        raise ValueError("input_labels were given without input_points; pass the points they label, or drop them.")
    if not any(x is not None for x in (input_points, input_boxes, input_masks)):
        raise ValueError("No prompt to segment: pass input_points, input_boxes and/or input_masks.")
    if input_points is not None:
        if input_points.ndim != 4 or input_points.shape[-1] != 2 or 0 in input_points.shape:
            raise ValueError(
                f"input_points must have shape (batch, point_batch, points_per_mask, 2), none of them 0; got "
                f"{tuple(input_points.shape)}."
            )
        if input_points.shape[0] != batch_size:
            raise ValueError(
                f"input_points are for {input_points.shape[0]} images but {batch_size} images were given; pass one "
                "entry per image (several prompts of one image go in the point_batch dimension)."
            )
        if input_labels is not None and input_labels.shape != input_points.shape[:-1]:
            raise ValueError(
                f"input_labels shape {tuple(input_labels.shape)} does not match input_points "
                f"{tuple(input_points.shape[:-1])}."
            )
    if input_boxes is not None:
        if input_boxes.ndim != 3 or input_boxes.shape[-1] != 4 or input_boxes.shape[1] == 0:
            raise ValueError(
                f"input_boxes must have shape (batch, boxes, 4), boxes > 0; got {tuple(input_boxes.shape)}."
            )
        if input_boxes.shape[0] != batch_size:
            raise ValueError(f"input_boxes are for {input_boxes.shape[0]} images but {batch_size} images were given.")
        if input_points is not None and input_points.shape[1] != input_boxes.shape[1]:
            raise ValueError(
                f"Got {input_points.shape[1]} point prompts and {input_boxes.shape[1]} boxes per image; give as many "
                "of each (one mask per pair)."
            )
    if input_masks is not None:
        expected = 4 * config.prompt_encoder_config.image_embedding_size
        if input_masks.ndim != 4 or input_masks.shape[-2:] != (expected, expected):
            raise ValueError(
                f"input_masks must have shape (batch, 1, {expected}, {expected}) (low-resolution mask logits); got "
                f"{tuple(input_masks.shape)}."
            )
        if input_masks.shape[0] != batch_size:
            raise ValueError(f"input_masks are for {input_masks.shape[0]} images but {batch_size} were given.")
    _check_prompt_values(size, input_points, input_labels, input_boxes, input_masks)


def _check_prompt_values(size, input_points, input_labels, input_boxes, input_masks):
    # The value checks read the prompts back from the device: one synchronisation for all of them, and none while
    # torch.compile traces (a branch on tensor values would break the graph).
    if torch.compiler.is_compiling():
        return
    flags, real = {}, None
    if input_points is not None:
        real = (
            input_labels != POINT_LABELS[0]
            if input_labels is not None
            else torch.ones_like(input_points[..., 0], dtype=torch.bool)
        )
        flags["points_finite"] = ((~torch.isfinite(input_points)).any(-1) & real).any()
        flags["points_range"] = (((input_points < 0) | (input_points > size)).any(-1) & real).any()
        if input_labels is not None:
            flags["labels"] = ~torch.isin(input_labels, torch.tensor(POINT_LABELS, device=input_labels.device)).all()
    if input_boxes is not None:
        flags["boxes_finite"] = ~torch.isfinite(input_boxes).all()
        flags["boxes_range"] = ((input_boxes < 0) | (input_boxes > size)).any()
        flags["box_order"] = (input_boxes[..., 2:] < input_boxes[..., :2]).any()
    if input_masks is not None:
        flags["masks_finite"] = ~torch.isfinite(input_masks).all()
    if not flags:
        return
    failed = [name for name, bad in zip(flags, torch.stack(list(flags.values())).tolist()) if bad]
    if not failed:
        return
    outside = (
        f"must lie inside the {size}x{size} model input; pass prompts in original image coordinates through "
        "SamClipProcessor, which rescales them."
    )
    messages = {
        "points_finite": "input_points hold NaN or infinite coordinates; prompts are finite pixel coordinates.",
        "points_range": "input_points " + outside,
        "labels": "input_labels must be 1 (foreground), 0 (background), -1 (ignored) or -10 (padding).",
        "boxes_finite": "input_boxes hold NaN or infinite coordinates; prompts are finite pixel coordinates.",
        "boxes_range": "input_boxes " + outside,
        "box_order": "input_boxes must be (x0, y0, x1, y1) with x1 >= x0 and y1 >= y0.",
        "masks_finite": "input_masks hold NaN or infinite values; they are mask logits.",
    }
    message = messages[failed[0]]
    if failed[0] == "points_range":
        coords = input_points[real]
        message += f" Got values in [{coords.min().item():.1f}, {coords.max().item():.1f}]."
    raise ValueError(message)


# ------------------------------------------------------------------------------------------------------------ tensors
def check_pixel_values(pixel_values, num_channels: int, dtype: torch.dtype) -> torch.Tensor:
    """`pixel_values` as a `(batch >= 1, num_channels, H, W)` float tensor in the model's `dtype` (cast as
    transformers' models do)."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(
            f"pixel_values must be a torch tensor (from SamClipProcessor(images=...)); got {describe(pixel_values)}."
        )
    if pixel_values.ndim != 4 or pixel_values.shape[1] != num_channels or 0 in pixel_values.shape:
        raise ValueError(
            f"pixel_values must have shape (batch, {num_channels}, height, width) with batch >= 1; got "
            f"{tuple(pixel_values.shape)}."
        )
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"pixel_values must be floating point (normalised pixels from SamClipProcessor); got {pixel_values.dtype}."
        )
    if not torch.compiler.is_compiling() and not torch.isfinite(pixel_values).all():  # no value branch in a graph
        raise ValueError("pixel_values hold NaN or infinite values; check the image and its preprocessing.")
    return pixel_values.to(dtype)


def check_input_ids(input_ids, max_length: int | None, vocab_size: int | None = None):
    """`input_ids` must be a non-empty `(texts, tokens)` integer tensor within the text tower's length and, when
    `vocab_size` is given, hold token ids of its vocabulary (the embedding would raise a bare IndexError)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or 0 in input_ids.shape:
        raise ValueError(
            f"input_ids must be a (texts, tokens) tensor with at least one text; got {describe(input_ids)} (an empty "
            "list of texts or candidate labels?)."
        )
    if max_length is not None and input_ids.shape[-1] > max_length:
        raise ValueError(
            f"input_ids of {input_ids.shape[-1]} tokens are longer than the text tower accepts ({max_length}); "
            "tokenize with truncation=True and max_length <= that limit."
        )
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer token ids; got dtype {input_ids.dtype}.")
    # Skipped while torch.compile traces: a branch on tensor values would break the graph.
    if vocab_size is not None and not torch.compiler.is_compiling():
        outside = (input_ids < 0) | (input_ids >= vocab_size)
        if outside.any():  # one host synchronisation when all ids are valid
            raise ValueError(
                f"input_ids hold token id {int(input_ids[outside][0])}, outside this model's vocabulary (0 to "
                f"{vocab_size - 1}); tokenize with the model's own tokenizer (processor.tokenizer)."
            )


def check_contrastive_pairs(num_images: int, num_texts: int):
    """`return_loss=True` pairs image i with text i, so both batches must have the same size."""
    if num_images != num_texts:
        raise ValueError(
            f"return_loss=True pairs image i with text i, but got {num_images} image(s) and {num_texts} text(s); "
            "pass one text per image, or drop return_loss to score every image against every text."
        )


def check_class_embeds(embeds, width: int, argument: str = "class_embeds") -> torch.Tensor:
    """A non-empty, finite `(num_classes, width)` tensor of class embeddings."""
    if not isinstance(embeds, torch.Tensor) or embeds.ndim != 2 or embeds.shape[0] == 0:
        raise ValueError(
            f"{argument} must be a non-empty (num_classes, {width}) tensor (see encode_class_names()); got "
            f"{describe(embeds)}."
        )
    if embeds.shape[1] != width:
        raise ValueError(
            f"{argument} are {embeds.shape[1]} wide but this model's embeddings are {width} wide; encode the class "
            "names with this model's encode_class_names()."
        )
    if not torch.isfinite(embeds).all():
        raise ValueError(f"{argument} hold NaN or infinite values.")
    return embeds


def check_score_threshold(value, argument: str = "threshold"):
    """A finite number: instances scoring less are dropped."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ValueError(f"{argument} must be a finite number (a score between 0 and 1); got {describe(value)}.")


def check_threshold(value, argument: str = "background_threshold"):
    """A finite number or None."""
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value)
    ):
        raise ValueError(f"{argument} must be a finite number (a cosine, e.g. 0.2) or None; got {describe(value)}.")


# --------------------------------------------------------------------------------------------------- texts, templates
def check_class_names(names, argument: str = "class_names") -> list[str]:
    """A non-empty list of distinct, non-blank class names; a string is a comma-separated list (blank pieces, as
    after a trailing comma, are not names)."""
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
        raise TypeError(
            f"{argument} must be a list of strings (or one comma-separated string); got {describe(names)}."
        )
    if not names or any(not name.strip() for name in names):
        raise ValueError(
            f"{argument} must be non-empty strings, at least one, e.g. ['cat', 'dog']; got {list(names)!r}."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{argument} has duplicates: {list(names)}; give each class once.")
    return list(names)


def check_templates(templates, argument: str = "templates") -> tuple[str, ...]:
    """Prompt templates as a tuple: one string or a list of them, each with one `{}` for the class name."""
    if isinstance(templates, str):
        templates = (templates,)
    if not isinstance(templates, (list, tuple)) or not templates or not all(isinstance(t, str) for t in templates):
        raise ValueError(
            f"{argument} must be a template string or a non-empty list of them, such as 'a photo of a {{}}.'; got "
            f"{describe(templates)}."
        )
    for template in templates:
        try:
            ok = template.count("{}") == 1 and template.format("X").count("X") == 1
        except (ValueError, IndexError, KeyError):
            ok = False
        if not ok:
            raise ValueError(
                f"{argument}: {template!r} needs exactly one '{{}}' where the class name goes (and no other braces), "
                "e.g. 'a photo of a {}.'."
            )
    return tuple(templates)


# ------------------------------------------------------------------------------------------------------------ folders
def check_pretrained_folder(source, expected_files=("config.json",), what: str = "SAM-CLIP model", hint: str = ""):
    """Before `from_pretrained`: a local folder (or anything shaped like a path) must exist, hold one of
    `expected_files`, be a SAM-CLIP folder (not a CLIP or SAM one) and have readable safetensors weights; `hint`
    ends the message of a missing file. Hub ids pass."""
    text = str(source)
    path = Path(text).expanduser()
    if not path.exists():
        looks_like_path = isinstance(source, os.PathLike) or text.startswith(("/", ".", "~")) or text.count("/") > 1
        if looks_like_path or os.sep == "\\" and "\\" in text:
            raise FileNotFoundError(f"{text}: no such folder; give a saved {what} folder or a Hub repo id.")
        return
    if not path.is_dir():
        raise NotADirectoryError(
            f"{text} is a file; give the folder that holds config.json (save_pretrained's output)."
        )
    config_file = path / "config.json"
    if config_file.is_file():
        try:
            model_type = json.loads(config_file.read_text()).get("model_type")
        except (ValueError, UnicodeDecodeError) as error:
            raise OSError(f"{config_file} is not valid JSON ({error}); the folder is damaged.") from None
        if model_type not in (None, "samclip"):
            kind = {"clip": "CLIPModel", "sam": "SamModel", "siglip": "SiglipModel"}.get(model_type, model_type)
            raise ValueError(
                f"{text} holds a {kind} (model_type {model_type!r}), not a SAM-CLIP model; merge teachers with "
                "SamClipModel.from_teachers(sam, clip), or give a folder saved from a SamClipModel."
            )
    if not any((path / name).is_file() for name in expected_files):
        raise FileNotFoundError(
            f"{text} has no {' or '.join(expected_files)}: it is not a saved {what} folder. {hint}".strip()
        )
    for weights in sorted(path.glob("*.safetensors")):
        _check_safetensors(weights)


def _check_safetensors(path: Path):
    # The header names every tensor's byte range; a file shorter than the last range was cut off mid-write.
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            header_length = int.from_bytes(handle.read(8), "little")
            if header_length <= 0 or 8 + header_length > size:
                raise ValueError("header cut off")
            header = json.loads(handle.read(header_length))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError):
        raise OSError(
            f"{path} is not a readable safetensors file (truncated or corrupt); re-save or re-download it."
        ) from None
    if 8 + header_length + end > size:
        raise OSError(
            f"{path} is truncated ({size} bytes, its header needs {8 + header_length + end}); "
            "re-save or re-download it."
        )
