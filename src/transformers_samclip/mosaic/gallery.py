"""The mosaic world's segmentation galleries: test mosaics segmented by the evaluation's own code, drawn with
`evaluation.gallery.write_segmentation_gallery`.

Make one (the mosaic model, 8 test mosaics; `--teachers` adds the teacher rows to the table and is not needed for
the cascade column, which uses the shipped teachers when they are there)::

    samclip evaluate mosaic --num-items 0 --num-mosaics 8 --gallery gallery.png --threads 1

Run time (1 torch thread, the shared 2-core machine under load): ~13 s wall for that command (imports, loading
and the 8-mosaic table included), of which the gallery itself (background calibration on 20 train mosaics, plain +
refined + cascade on 8 mosaics) is ~3-4 s. The PNG is ~85 KB at 128 px cells.
"""

from __future__ import annotations

import numpy as np

from ..evaluation._common import rgb
from ..evaluation.gallery import GalleryLayout, instances_label_map, write_segmentation_gallery
from ..evaluation.protocol import PROTOCOL
from .fashion_mnist import FASHION_MNIST_CLASSES
from .mosaics import make_mosaic_dataset


def mosaic_gallery(
    model,
    processor,
    teachers: dict | None,
    path,
    num_mosaics: int = PROTOCOL.gallery_mosaics,
    seed: int = PROTOCOL.seed,
    calibration_mosaics: int = PROTOCOL.calibration_mosaics,
    cell_size: int = 128,
    cascade_iou_threshold: float | None = None,
) -> GalleryLayout:
    """Gallery of the first `num_mosaics` test mosaics (`make_mosaic_dataset("test", num_mosaics, seed)`): image,
    ground truth, the SAM-CLIP `model`'s plain, SAM-refined and one-pass painted (labelled masks) segmentation, and
    (when `teachers`, a dict as from
    `load_mosaic_teachers()`, is given) the SAM+CLIP cascade, all predicted by the evaluation's own code with its
    background threshold (the model's `config.background_threshold`, else calibrated on `calibration_mosaics`
    train mosaics; the cascade's predicted-IoU threshold `cascade_iou_threshold`, else calibrated there too).
    Writes the PNG to `path`; returns the :class:`GalleryLayout`."""
    from ..evaluation.classification import class_text_embeddings
    from ..evaluation.semantic import (
        _samclip_segmentation,
        calibrate_background_threshold,
        calibrate_cascade_iou_threshold,
        cascade_segmenter,
        instance_semantic_segmenter,
        samclip_cosine_maps,
    )

    class_names = list(FASHION_MNIST_CLASSES)
    mosaics = make_mosaic_dataset("test", num_mosaics, seed)
    images = [rgb(image) for image in mosaics["image"]]
    model.eval()
    class_embeds = class_text_embeddings(model, processor.tokenizer, class_names)
    size = processor.dense_size
    calibration = make_mosaic_dataset("train", calibration_mosaics, seed)  # never the test mosaics shown
    threshold = getattr(model.config, "background_threshold", None)
    if threshold is None:  # as evaluate_samclip_on_mosaic
        threshold = calibrate_background_threshold(
            samclip_cosine_maps(model, processor, class_embeds, size), calibration, class_names
        )
    columns = {"ground truth": [np.asarray(m) for m in mosaics["semantic_map"]]}
    for refine, title in ((False, "SAM-CLIP"), (True, "SAM-CLIP refined")):
        logits, encoding = _samclip_segmentation(model, processor, images, class_embeds, refine, size, threshold)
        columns[title] = processor.post_process_semantic_segmentation(
            logits, encoding["original_sizes"], encoding["reshaped_input_sizes"]
        )
    columns["SAM-CLIP one pass"] = instance_semantic_segmenter(model, processor, class_names)(images)
    if teachers is not None:
        sam = (teachers["sam_model"], teachers["sam_processor"], teachers["clip_model"], teachers["clip_processor"])
        iou_threshold = cascade_iou_threshold
        if iou_threshold is None:
            iou_threshold = calibrate_cascade_iou_threshold(*sam, class_names, calibration)
        columns["SAM+CLIP cascade"] = cascade_segmenter(*sam, class_names, pred_iou_threshold=iou_threshold)(images)
    return write_segmentation_gallery(path, images, columns, class_names, cell_size=cell_size)


def label_everything_gallery(
    model,
    processor,
    teachers: dict | None,
    path,
    num_mosaics: int = PROTOCOL.gallery_mosaics,
    seed: int = PROTOCOL.seed,
    cell_size: int = 128,
) -> GalleryLayout:
    """Gallery of label-everything on the first `num_mosaics` test mosaics: image, ground truth, SAM-CLIP from one
    pass (`SamClipMaskGenerator` defaults), SAM-CLIP labelling crops (`label_source="crops"`) and, with `teachers`,
    the SAM+CLIP cascade; instances coloured by their class. Writes the PNG to `path`."""
    from ..evaluation.instance import cascade_instance_segmenter, samclip_instance_segmenter

    class_names = list(FASHION_MNIST_CLASSES)
    mosaics = make_mosaic_dataset("test", num_mosaics, seed)
    images = [rgb(image) for image in mosaics["image"]]
    segmenters = {
        "SAM-CLIP one pass": samclip_instance_segmenter(model, processor, class_names),
        "SAM-CLIP crops": samclip_instance_segmenter(model, processor, class_names, label_source="crops"),
    }
    if teachers is not None:
        segmenters["SAM+CLIP cascade"] = cascade_instance_segmenter(
            teachers["sam_model"],
            teachers["sam_processor"],
            teachers["clip_model"],
            teachers["clip_processor"],
            class_names,
        )
    columns = {"ground truth": [np.asarray(m) for m in mosaics["semantic_map"]]}
    for title, segment in segmenters.items():
        columns[title] = [
            instances_label_map({k: np.asarray(v) for k, v in result.items()}, (image.height, image.width))
            for image, result in zip(images, segment(images))
        ]
    return write_segmentation_gallery(path, images, columns, class_names, cell_size=cell_size)


__all__ = ["label_everything_gallery", "mosaic_gallery"]
