"""Probe (not part of the package): label-everything's prompt sets on mosaics and on scenes the mosaic generator
did not make, with the shipped mosaic model. Backs the "8 peaks + the centre" default (docs/text-to-mask.md).

Command (from the repository root, ~6 min on 2 threads)::

    PYTHONPATH=src:. python docs/probes/label_everything_prompts.py

Data: 200 TRAIN mosaics (seed 7), 200 TEST mosaics (seed 0), and 150 "other scenes" (seed 5) drawn here, not by
`mosaic.mosaics`: Fashion-MNIST TEST items in their own grey levels (white on dark canvases, black on light ones,
or a random colour), blended by a soft alpha of the grey level instead of painted opaque, 2-5 items of 48-120 px on a
256 px canvas with a smooth two-colour gradient and pixel noise (the model sees it resized to 128 px). Metrics: the
painted semantic map's mIoU and label-everything's AP50 / PQ / F1@0.5 with every mask kept
(`evaluation.instance`, `evaluation.semantic`), one JSON line per (data, prompts).
"""

import json
import time

import datasets
import numpy as np
import torch
from PIL import Image

from transformers_samclip.evaluation.instance import evaluate_instance_segmentation, samclip_instance_segmenter
from transformers_samclip.evaluation.semantic import evaluate_instance_semantic_segmentation
from transformers_samclip.mosaic import FASHION_MNIST_CLASSES, SHIPPED_MOSAIC_MODEL_DIR, make_mosaic_dataset
from transformers_samclip.mosaic.model import load_pretrained
from transformers_samclip.mosaic.mosaics import item_source, mosaic_features
from transformers_samclip.mosaic.readouts import PROMPT_VARIANTS

PROMPTS = ("peaks 8 + centre", "peaks 8 + grid 4x4", "grid 8x8")  # the first is the default


def other_scene(rng: np.random.Generator, source, size: int = 256) -> dict:
    """One scene as described above, in `make_mosaic_dataset`'s columns."""
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    ramp = np.linspace(0, 1, size)
    ramp = ramp[:, None, None] if rng.random() < 0.5 else ramp[None, :, None]
    canvas = (start * (1 - ramp) + end * ramp) * np.ones((size, size, 1)) + rng.normal(0, 12, (size, size, 3))
    owner, areas, labels = np.full((size, size), -1), [], []
    for k in range(int(rng.integers(2, 6))):
        index, side = int(rng.integers(len(source.labels))), int(rng.integers(48, 121))
        grey = np.asarray(Image.fromarray(source.images[index]).resize((side, side), Image.BICUBIC), np.float32) / 255
        y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
        ink = np.full(3, 255.0 if canvas.mean() < 128 else 0.0)
        colour = rng.uniform(0, 255, 3) if rng.random() < 0.3 else ink
        alpha = np.clip(grey * 1.6, 0, 1)[..., None]
        patch = canvas[y : y + side, x : x + side]
        canvas[y : y + side, x : x + side] = patch * (1 - alpha) + colour * (0.35 + 0.65 * grey[..., None]) * alpha
        silhouette = grey > 0.1
        owner[y : y + side, x : x + side][silhouette] = k
        areas.append(int(silhouette.sum()))
        labels.append(int(source.labels[index]))
    row = {"instance_masks": [], "labels": [], "visible_fraction": []}
    semantic = np.zeros((size, size), np.uint8)
    for k, label in enumerate(labels):
        mask = owner == k
        if mask.any():
            row["instance_masks"].append(Image.fromarray(mask))
            row["labels"].append(label)
            row["visible_fraction"].append(float(mask.sum() / areas[k]))
            semantic[mask] = label + 1
    row["image"] = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    row["semantic_map"] = Image.fromarray(semantic, "L")
    return row


def other_scenes(num_scenes: int, seed: int) -> datasets.Dataset:
    """`num_scenes` scenes of :func:`other_scene`, scene i drawn from the generator keyed `(seed, i)`."""
    source = item_source("test")
    rows = [other_scene(np.random.default_rng([seed, i]), source) for i in range(num_scenes)]
    columns = ("image", "instance_masks", "labels", "visible_fraction", "semantic_map")
    features = datasets.Features({name: mosaic_features()[name] for name in columns})
    return datasets.Dataset.from_dict({name: [row[name] for row in rows] for name in features}, features=features)


def main() -> None:
    """Print one JSON line per data set and prompt set."""
    torch.set_num_threads(2)
    model, processor = load_pretrained(SHIPPED_MOSAIC_MODEL_DIR)[:2]
    data = {
        "train mosaics (200, seed 7)": make_mosaic_dataset("train", 200, 7),
        "test mosaics (200, seed 0)": make_mosaic_dataset("test", 200, 0),
        "other scenes (150, seed 5)": other_scenes(150, 5),
    }
    classes = list(FASHION_MNIST_CLASSES)
    for data_name, dataset in data.items():
        for prompts in PROMPTS:
            options = PROMPT_VARIANTS[prompts]
            began = time.perf_counter()
            painted = evaluate_instance_semantic_segmentation(model, processor, dataset, classes, **options)
            segmenter = samclip_instance_segmenter(model, processor, classes, score_threshold=0.0, **options)
            instances = evaluate_instance_segmentation(segmenter, dataset, classes)
            row = {"data": data_name, "prompts": prompts, "painted": painted["miou"]}
            row.update({key: instances[key] for key in ("ap50", "pq", "f1", "precision", "recall")})
            row["instances_per_image"] = instances["instances_per_image"]
            row["seconds"] = time.perf_counter() - began
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


if __name__ == "__main__":
    main()
