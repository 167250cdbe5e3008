"""Segmentation gallery: a PNG grid, one row per image, one column per label map (ground truth, SAM-CLIP plain,
SAM-CLIP SAM-refined, SAM-CLIP one pass (its labelled masks painted), the SAM+CLIP cascade baseline), with column
titles and a colour legend. Numbers say how much a segmenter gets right; the gallery shows what it gets wrong.

This module draws any label maps of any dataset; the mosaic world's galleries (what `samclip evaluate --gallery`
writes) are in `mosaic/gallery.py`. The PNG is a palette PNG: the label colours, then the photos quantised to the
remaining entries.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ._common import rgb

BACKGROUND_COLOR = (28, 28, 28)  # label 0: dark grey, not black, so that it stays apart from the ink
# Labels 1..10: tab10 with its mid grey made yellow (a dark background swallows mid grey) and its olive made light
# grey (olive next to yellow reads as one class).
CLASS_COLORS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (255, 215, 0),
    (200, 200, 200),
    (23, 190, 207),
)
PAPER_COLOR = (255, 255, 255)
INK_COLOR = (0, 0, 0)
GAP = 2  # pixels between cells and around the grid
TITLE_HEIGHT = 14  # the band of column titles above the grid
LEGEND_LINE_HEIGHT = 14
SWATCH = 10


def label_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """RGB colour of each label: index 0 background (dark grey), `c + 1` class `c`. The first 10 classes take
    fixed tab10-like colours; further ones golden-ratio hues, so that a class keeps its colour in every gallery."""
    colors = [BACKGROUND_COLOR, *CLASS_COLORS[:num_classes]]
    for index in range(len(CLASS_COLORS), num_classes):
        hue = (index * 0.618033988749895) % 1.0
        value = 0.95 if index % 2 else 0.75  # alternate brightness: neighbouring hues stay apart
        colors.append(tuple(int(round(255 * v)) for v in colorsys.hsv_to_rgb(hue, 0.7, value)))
    return colors


@dataclass
class GalleryLayout:
    """Where everything landed in a gallery PNG: `size` (width, height), `cells[row][column]` (left, top, right,
    bottom) boxes, `titles` (column titles), `legend` (name, RGB colour, swatch box) per label, `palette`
    (RGB per label)."""

    size: tuple[int, int]
    cell_size: int
    cells: list[list[tuple[int, int, int, int]]]
    titles: list[str]
    legend: list[tuple[str, tuple[int, int, int], tuple[int, int, int, int]]] = field(default_factory=list)
    palette: list[tuple[int, int, int]] = field(default_factory=list)


def _fit(size: tuple[int, int], cell_size: int) -> tuple[int, int]:
    # Keep the aspect ratio: a non-square image is letterboxed in its cell, never stretched.
    width, height = size
    scale = cell_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _legend_layout(draw, font, names, width, top):
    """Flow the legend entries into lines across the gallery width; returns swatch boxes and the line count."""
    boxes, x, line = [], GAP, 0
    for name in names:
        entry = SWATCH + 3 + math.ceil(draw.textlength(name, font=font)) + 10
        if x > GAP and x + entry > width:
            x, line = GAP, line + 1
        y = top + line * LEGEND_LINE_HEIGHT + (LEGEND_LINE_HEIGHT - SWATCH) // 2
        boxes.append((x, y, x + SWATCH, y + SWATCH))
        x += entry
    return boxes, line + 1 if names else 0


def _photo_indices(photos, cell_size: int, offset: int, num_colors: int):
    """Quantise all photos together to one shared palette of `num_colors` colours (no dithering: it would blow
    up the PNG) and return per-photo index arrays shifted by `offset`, plus that palette."""
    if not photos:
        return [], []
    fitted = [photo.resize(_fit(photo.size, cell_size), Image.Resampling.BILINEAR) for photo in photos]
    strip = Image.new("RGB", (cell_size, cell_size * len(fitted)), PAPER_COLOR)
    for index, photo in enumerate(fitted):
        strip.paste(photo, (0, index * cell_size))
    quantized = strip.quantize(colors=num_colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    indices = np.asarray(quantized).astype(np.int64) + offset
    palette = np.asarray(quantized.getpalette()[: 3 * num_colors]).reshape(-1, 3)
    crops = [indices[i * cell_size : i * cell_size + p.height, : p.width] for i, p in enumerate(fitted)]
    return crops, [tuple(int(v) for v in color) for color in palette]


def write_segmentation_gallery(
    path,
    images,
    columns: dict,
    class_names,
    cell_size: int = 128,
    image_title: str = "image",
) -> GalleryLayout:
    """Write a PNG grid to `path`: one row per image in `images` (PIL images, or None for no photo column), then
    one column per entry of `columns` (title -> one label map per row: `(H, W)` ints, 0 background, `c + 1`
    class `c` of `class_names`; arrays, tensors or mode-"L" images), column titles on top and a legend of the
    colours below. Each cell is `cell_size` px on its longer side (nearest-neighbour for label maps, so every
    label pixel is its palette colour exactly). Returns the :class:`GalleryLayout`."""
    class_names = list(class_names)
    palette = label_palette(len(class_names))
    num_rows = len(images) if images is not None else len(next(iter(columns.values()), []))
    for title, maps in columns.items():
        if len(maps) != num_rows:
            raise ValueError(f"column {title!r} has {len(maps)} label maps for {num_rows} rows")
    titles = ([image_title] if images is not None else []) + list(columns)
    # Palette PNG: labels take indices 0..C (index == label), then paper and ink, then the photos' colours.
    paper, ink = len(palette), len(palette) + 1
    reserved = len(palette) + 2
    if reserved > 240:
        raise ValueError(f"{len(class_names)} classes leave too few palette entries for the photos")
    photos, photo_palette = _photo_indices(
        [rgb(image) for image in images] if images is not None else [], cell_size, reserved, 256 - reserved
    )

    width = GAP + len(titles) * (cell_size + GAP)
    grid_bottom = TITLE_HEIGHT + num_rows * (cell_size + GAP)
    font = ImageFont.load_default()
    legend_names = ["background", *class_names]
    probe = ImageDraw.Draw(Image.new("P", (1, 1)))
    legend_boxes, legend_lines = _legend_layout(probe, font, legend_names, width, grid_bottom)
    height = grid_bottom + legend_lines * LEGEND_LINE_HEIGHT + GAP

    canvas = np.full((height, width), paper, dtype=np.uint8)
    cells = []
    for row in range(num_rows):
        top = TITLE_HEIGHT + row * (cell_size + GAP)
        row_cells = []
        for column, title in enumerate(titles):
            left = GAP + column * (cell_size + GAP)
            if images is not None and column == 0:
                indices = photos[row]
            else:
                label_map = np.asarray(
                    columns[title][row].cpu() if torch.is_tensor(columns[title][row]) else columns[title][row]
                ).astype(np.int64)
                if label_map.min() < 0 or label_map.max() > len(class_names):
                    raise ValueError(f"column {title!r} row {row}: labels outside 0..{len(class_names)}")
                fitted = Image.fromarray(label_map.astype(np.uint8), mode="L").resize(
                    _fit(label_map.shape[::-1], cell_size), Image.Resampling.NEAREST
                )
                indices = np.asarray(fitted)
            # Centre a letterboxed cell; a square one fills its box exactly.
            dy, dx = (cell_size - indices.shape[0]) // 2, (cell_size - indices.shape[1]) // 2
            canvas[top + dy : top + dy + indices.shape[0], left + dx : left + dx + indices.shape[1]] = indices
            row_cells.append((left, top, left + cell_size, top + cell_size))
        cells.append(row_cells)

    gallery = Image.fromarray(canvas, mode="P")
    colors = [*palette, PAPER_COLOR, INK_COLOR, *photo_palette]
    gallery.putpalette([value for color in colors for value in color])
    draw = ImageDraw.Draw(gallery)
    draw.fontmode = "1"  # no anti-aliasing: blended palette indices would be arbitrary colours
    for column, title in enumerate(titles):
        center = GAP + column * (cell_size + GAP) + cell_size / 2
        draw.text((center, TITLE_HEIGHT / 2), title, fill=ink, font=font, anchor="mm")
    legend = []
    for label, (name, box) in enumerate(zip(legend_names, legend_boxes)):
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=label)
        draw.text((box[2] + 3, (box[1] + box[3]) / 2), name, fill=ink, font=font, anchor="lm")
        legend.append((name, palette[label], box))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gallery.save(path, format="PNG", optimize=True)
    return GalleryLayout((width, height), cell_size, cells, titles, legend, palette)


# ------------------------------------------------------------------------------------------------ mosaic world
@torch.no_grad()
def instances_label_map(instances: dict, shape) -> np.ndarray:
    """`(H, W)` class map (0 unlabelled, `c + 1` class c) of instances `{"masks", "class_ids", "scores"}`, painted
    best score first, each pixel kept by the first instance that claims it (the panoptic painting with no instance
    dropped)."""
    from ..modeling.processing_samclip import paint_instances

    order = np.argsort(-np.asarray(instances["scores"], dtype=np.float64), kind="stable")
    masks = torch.as_tensor(np.asarray(instances["masks"], dtype=bool).reshape(-1, *shape)[order])
    segmentation, kept = paint_instances(masks, overlap_threshold=0.0)
    classes = np.concatenate([[0], np.asarray(instances["class_ids"], dtype=np.int64)[order][kept] + 1])
    return classes[segmentation.numpy()]


__all__ = [
    "GalleryLayout",
    "instances_label_map",
    "label_palette",
    "write_segmentation_gallery",
]
