"""Deterministic mosaics of Fashion-MNIST items with exact instance and semantic ground truth.

A mosaic is a textured background with 1-4 tinted items pasted at random scales and positions, in
order, each as an opaque silhouette (its thresholded, resized pixels), so later items occlude earlier
ones exactly. Test mosaics use only test items and train mosaics only train items.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from ..evaluation.geometry import mask_to_box
from ..evaluation.protocol import PROTOCOL
from .fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist_arrays

# A resized item pixel belongs to the silhouette above this grey level (of 255): Fashion-MNIST
# backgrounds are exactly 0, and bilinear resizing leaves faint halos below ~20 around the edges.
SILHOUETTE_THRESHOLD = 24
MIN_ITEM_SIZE = 28
MAX_ITEM_SIZE = 80


@dataclass(frozen=True)
class ItemSource:
    """The Fashion-MNIST items a mosaic may draw from (one split)."""

    split: str
    images: np.ndarray  # uint8 [N, 28, 28]
    labels: np.ndarray  # int64 [N]


@lru_cache(maxsize=2)
def item_source(split: str) -> ItemSource:
    """The cached :class:`ItemSource` of a Fashion-MNIST split ("train" or "test")."""
    images, labels = load_fashion_mnist_arrays(split)
    return ItemSource(split, images, labels)


def _as_source(items_source: ItemSource | str) -> ItemSource:
    return item_source(items_source) if isinstance(items_source, str) else items_source


def random_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float32 [size, size, 3] background: a two-colour gradient, blotches and pixel noise."""
    colours = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    coords = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    ramp = np.cos(angle) * coords[None, :] + np.sin(angle) * coords[:, None]
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    canvas = colours[0] + ramp[..., None] * (colours[1] - colours[0])
    # Low-frequency blotches: a coarse random grid upsampled smoothly.
    coarse = rng.uniform(-1, 1, size=(6, 6, 3)).astype(np.float32)
    blotches = np.stack(
        [np.asarray(Image.fromarray(coarse[..., c], mode="F").resize((size, size), Image.BICUBIC)) for c in range(3)],
        axis=-1,
    )
    canvas += rng.uniform(10, 40) * blotches
    canvas += rng.normal(0, rng.uniform(3, 12), size=canvas.shape).astype(np.float32)
    return canvas


def random_tint(rng: np.random.Generator) -> np.ndarray:
    """A random saturated RGB colour, float32 [3] in 0..255."""
    hue = rng.uniform(0, 1)
    saturation = rng.uniform(0.3, 1.0)
    value = rng.uniform(0.55, 1.0)
    rgb = np.clip(np.abs(((hue * 6 + np.array([0.0, 4.0, 2.0])) % 6) - 3) - 1, 0, 1)
    return (255 * value * (1 - saturation + saturation * rgb)).astype(np.float32)


# Captions of a whole mosaic: each names the classes visible in it (items mostly hidden are left out).
SCENE_TEMPLATES = ("a photo of {}.", "This is a photo of {}.", "{} on a textured background.", "{}.")
# An item counts as visible in a caption when at least this fraction of it shows (as for SAM's prompts).
CAPTION_MIN_VISIBLE_FRACTION = PROTOCOL.min_visible_fraction


def join_names(names: list[str]) -> str:
    """`["bag"]` -> "a bag"; `["bag", "coat"]` -> "a bag and a coat"; three or more with commas."""
    phrases = [f"a {name}" for name in names]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def scene_captions(labels, visible_fraction, min_visible_fraction: float = CAPTION_MIN_VISIBLE_FRACTION) -> list[str]:
    """Captions of a mosaic, one per :data:`SCENE_TEMPLATES`, naming each class visible in it once.

    The classes are listed front-most first (reverse paste order, itself random), so the order carries no
    information about the class; an empty list when no item is visible enough. A pure function of the
    mosaic's labels, so adding captions changes no image."""
    names = []
    for label, fraction in reversed(list(zip(labels, visible_fraction))):
        name = FASHION_MNIST_CLASSES[int(label)]
        if fraction >= min_visible_fraction and name not in names:
            names.append(name)
    if not names:
        return []
    return [template.format(join_names(names)) for template in SCENE_TEMPLATES]


def _resized_item(image28: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image28).resize((size, size), Image.BILINEAR), dtype=np.float32)


def _paint(canvas: np.ndarray, grey: np.ndarray, silhouette: np.ndarray, tint: np.ndarray, y: int, x: int):
    # Opaque paint keeps the silhouette edge exactly where the mask edge is; the shading keeps the
    # item's own texture (stitches, soles, handles) visible.
    size = grey.shape[0]
    shade = (0.3 + 0.7 * grey / 255.0)[..., None] * tint
    region = canvas[y : y + size, x : x + size]
    region[silhouette] = shade[silhouette]


def _to_uint8_image(canvas: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), mode="RGB")


def generate_mosaic(rng: np.random.Generator, items_source: ItemSource | str, canvas_size: int = 128) -> dict:
    """Draw one mosaic from ``rng`` with 1-4 items of ``items_source`` (an :class:`ItemSource` or a split).

    Returns a dict with ``image`` (PIL RGB), ``instance_masks`` (list of bool [H, W], visible pixels
    only, paste order), ``boxes`` (tight ``[x0, y0, x1, y1]`` of each visible mask, inclusive),
    ``labels`` (class ids), ``semantic_map`` (uint8 [H, W]: 0 background, ``c + 1`` class ``c``),
    ``visible_fraction`` (visible / unoccluded area), ``item_indices`` (indices in the split) and
    ``captions`` (:func:`scene_captions`).
    Items hidden entirely by later ones are left out.
    """
    source = _as_source(items_source)
    canvas = random_background(rng, canvas_size)
    num_items = int(rng.integers(1, 5))
    indices = rng.integers(0, len(source.labels), size=num_items)
    max_size = min(MAX_ITEM_SIZE, canvas_size)
    owner = np.full((canvas_size, canvas_size), -1, dtype=np.int64)
    full_areas = []
    for k, index in enumerate(indices):
        size = int(rng.integers(MIN_ITEM_SIZE, max_size + 1))
        y, x = (int(v) for v in rng.integers(0, canvas_size - size + 1, size=2))
        grey = _resized_item(source.images[index], size)
        silhouette = grey > SILHOUETTE_THRESHOLD
        _paint(canvas, grey, silhouette, random_tint(rng), y, x)
        owner[y : y + size, x : x + size][silhouette] = k
        full_areas.append(int(silhouette.sum()))

    instance_masks, boxes, labels, visible_fraction, item_indices = [], [], [], [], []
    semantic_map = np.zeros((canvas_size, canvas_size), dtype=np.uint8)
    for k, index in enumerate(indices):
        mask = owner == k
        area = int(mask.sum())
        if area == 0:
            continue
        label = int(source.labels[index])
        instance_masks.append(mask)
        boxes.append(mask_to_box(mask))
        labels.append(label)
        visible_fraction.append(area / max(full_areas[k], 1))
        item_indices.append(int(index))
        semantic_map[mask] = label + 1
    return {
        "image": _to_uint8_image(canvas),
        "instance_masks": instance_masks,
        "boxes": boxes,
        "labels": labels,
        "semantic_map": semantic_map,
        "visible_fraction": visible_fraction,
        "item_indices": item_indices,
        "captions": scene_captions(labels, visible_fraction),
    }


def generate_item_view(
    rng: np.random.Generator, image28: np.ndarray, size: int = 64
) -> tuple[Image.Image, np.ndarray]:
    """One item alone, tinted, on a random background: ``(PIL RGB [size, size], bool silhouette)``."""
    canvas = random_background(rng, size)
    item_size = int(rng.integers(int(0.6 * size), size + 1))
    y, x = (int(v) for v in rng.integers(0, size - item_size + 1, size=2))
    grey = _resized_item(image28, item_size)
    silhouette = grey > SILHOUETTE_THRESHOLD
    _paint(canvas, grey, silhouette, random_tint(rng), y, x)
    mask = np.zeros((size, size), dtype=bool)
    mask[y : y + item_size, x : x + item_size] = silhouette
    return _to_uint8_image(canvas), mask


def generate_heldout_view(rng: np.random.Generator, image28: np.ndarray, size: int = 64) -> Image.Image:
    """One item on a look that training never shows, to measure robustness: a flat background with sparse
    speckles (training: gradients and blotches), a darker, less saturated tint, and an item filling 35-60% of the
    view (training: 60-100%)."""
    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[:] = rng.uniform(0, 255, size=3).astype(np.float32)
    speckles = rng.random((size, size)) < 0.03
    canvas[speckles] = rng.uniform(0, 255, size=(int(speckles.sum()), 3)).astype(np.float32)
    item_size = int(rng.integers(int(0.35 * size), int(0.6 * size) + 1))
    y, x = (int(v) for v in rng.integers(0, size - item_size + 1, size=2))
    grey = _resized_item(image28, item_size)
    tint = random_tint(rng) * rng.uniform(0.35, 0.7)
    _paint(canvas, grey, grey > SILHOUETTE_THRESHOLD, tint, y, x)
    return _to_uint8_image(canvas)


def mosaic_features():
    """The ``datasets.Features`` of :func:`make_mosaic_dataset`."""
    import datasets

    return datasets.Features(
        {
            "image": datasets.Image(),
            "semantic_map": datasets.Image(),
            "instance_masks": datasets.List(datasets.Image()),
            "boxes": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
            "labels": datasets.List(datasets.ClassLabel(names=list(FASHION_MNIST_CLASSES))),
            "visible_fraction": datasets.List(datasets.Value("float32")),
            "item_indices": datasets.List(datasets.Value("int32")),
            "captions": datasets.List(datasets.Value("string")),
        }
    )


def iter_mosaics(
    split: str = PROTOCOL.split, num_mosaics: int = 1000, seed: int = PROTOCOL.seed, canvas_size: int = 128
):
    """Yield the mosaics of :func:`make_mosaic_dataset` as plain dicts (numpy masks), without encoding."""
    source = item_source(split)
    # One generator per mosaic, keyed by (seed, index): mosaic i is the same whatever num_mosaics is.
    for index in range(num_mosaics):
        yield generate_mosaic(np.random.default_rng([seed, index]), source, canvas_size)


def make_mosaic_dataset(
    split: str = PROTOCOL.split, num_mosaics: int = 1000, seed: int = PROTOCOL.seed, canvas_size: int = 128
):
    """Build ``num_mosaics`` mosaics from the ``split`` items as a ``datasets.Dataset``.

    Columns: ``image`` (RGB), ``semantic_map`` (L, 0 background / class + 1), ``instance_masks`` (list of
    mode-"1" images, decoding to bool arrays), ``boxes`` (list of ``[x0, y0, x1, y1]`` float32, inclusive),
    ``labels`` (list of ClassLabel), ``visible_fraction`` (list of float32), ``item_indices`` (list of
    int32, indices into the Fashion-MNIST split), ``captions`` (list of strings naming the visible classes, see
    :func:`scene_captions`). Same arguments, same bytes.
    """
    import datasets

    rows = {name: [] for name in mosaic_features()}
    for mosaic in iter_mosaics(split, num_mosaics, seed, canvas_size):
        rows["image"].append(mosaic["image"])
        rows["semantic_map"].append(Image.fromarray(mosaic["semantic_map"], mode="L"))
        rows["instance_masks"].append([Image.fromarray(mask) for mask in mosaic["instance_masks"]])
        for name in ("boxes", "labels", "visible_fraction", "item_indices", "captions"):
            rows[name].append(mosaic[name])
    return datasets.Dataset.from_dict(rows, features=mosaic_features())


# Views per random stream of style="looks": a view does not change when num_items does (beyond its chunk).
_LOOKS_CHUNK = 1000
ITEM_VIEW_STYLES = ("training", "heldout", "raw", "looks")


def make_item_views(
    split: str = PROTOCOL.split,
    num_items: int | None = None,
    seed: int = PROTOCOL.seed,
    size: int = 64,
    style: str = "training",
):
    """Each Fashion-MNIST item alone as a ``datasets.Dataset`` with ``image`` (RGB), ``label`` (ClassLabel) and
    ``item_index``: ``style="training"`` tinted on a random background at ``size`` (the look the SAM teacher's
    world and the first CLIP teacher train on), ``"heldout"`` the look of :func:`generate_heldout_view`, ``"raw"``
    the 28 px greyscale photo itself. ``num_items=None`` takes the whole split (10,000 test / 60,000 train items),
    in order.

    ``style="looks"`` is a training set, not an evaluation look: ``num_items`` views in every look the CLIP teacher
    is trained on (:data:`.clip_views.LOOK_WEIGHTS`: item views, small items on flat backgrounds, raw photos, square
    and masked crops of mosaic items), item and flat views at ``size``, photos at 28 px and crops as cut (the CLIP
    processor resizes), items drawn at random, so ``item_index`` is -1."""
    import datasets

    if style not in ITEM_VIEW_STYLES:
        raise ValueError(f"style must be one of {ITEM_VIEW_STYLES}, got {style!r}.")
    source = item_source(split)
    count = len(source.labels) if num_items is None else min(num_items, len(source.labels))
    item_indices = list(range(count))
    labels = source.labels[:count].tolist()
    if style == "looks":
        from tqdm.auto import tqdm

        from .clip_views import clip_training_views  # it builds on this module

        # Drawn in chunks, each from its own (seed, chunk) stream, so a view depends on its position only.
        images, labels = [], []
        starts = range(0, count, _LOOKS_CHUNK)
        for chunk, first in enumerate(tqdm(starts, desc=f"drawing {count} views in the CLIP teacher's looks")):
            chunk_images, chunk_labels = clip_training_views(
                np.random.default_rng([seed, chunk, 17]), source, min(_LOOKS_CHUNK, count - first), size
            )
            images.extend(chunk_images)
            labels.extend(chunk_labels.tolist())
        item_indices = [-1] * count
    elif style == "raw":
        images = [Image.fromarray(source.images[index]).convert("RGB") for index in range(count)]
    elif style == "heldout":  # its own seed stream, so no held-out view repeats a training draw
        images = [
            generate_heldout_view(np.random.default_rng([seed, index, 9]), source.images[index], size)
            for index in range(count)
        ]
    else:
        images = [
            generate_item_view(np.random.default_rng([seed, index]), source.images[index], size)[0]
            for index in range(count)
        ]
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(FASHION_MNIST_CLASSES)),
            "item_index": datasets.Value("int32"),
        }
    )
    return datasets.Dataset.from_dict(
        {"image": images, "label": labels, "item_index": item_indices}, features=features
    )
