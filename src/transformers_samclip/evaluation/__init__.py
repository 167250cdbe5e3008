"""Evaluation harness: metrics, evaluators for any dataset of the right shape (SAM-CLIP models and the plain
teachers), the paper's baselines, result tables and a segmentation gallery (PNG). Generic: the mosaic world's
tables and galleries live in `mosaic/` (which uses this package); the command line is `samclip evaluate`
(`evaluate_cli.py`)."""

from .classification import class_text_embeddings, evaluate_zero_shot_classification, image_embeddings
from .gallery import GalleryLayout, label_palette, write_segmentation_gallery
from .metrics import confusion_matrix, instance_miou, mask_ious, mean_iou, per_class_iou, top1_accuracy
from .prompted import evaluate_prompted_segmentation
from .results import DISTILLED_ROW, RESULT_COLUMNS, format_results_table
from .semantic import (
    calibrate_background_threshold,
    evaluate_cascade_baseline,
    evaluate_instance_semantic_segmentation,
    evaluate_label_maps,
    evaluate_maskclip_baseline,
    evaluate_semantic_segmentation,
    label_map_from_cosines,
    maskclip_dense_features,
    segment_everything,
)

__all__ = [
    "DISTILLED_ROW",
    "GalleryLayout",
    "RESULT_COLUMNS",
    "calibrate_background_threshold",
    "class_text_embeddings",
    "confusion_matrix",
    "evaluate_cascade_baseline",
    "evaluate_instance_semantic_segmentation",
    "evaluate_label_maps",
    "evaluate_maskclip_baseline",
    "evaluate_prompted_segmentation",
    "evaluate_semantic_segmentation",
    "evaluate_zero_shot_classification",
    "format_results_table",
    "image_embeddings",
    "instance_miou",
    "label_map_from_cosines",
    "label_palette",
    "mask_ious",
    "maskclip_dense_features",
    "mean_iou",
    "per_class_iou",
    "segment_everything",
    "top1_accuracy",
    "write_segmentation_gallery",
]
