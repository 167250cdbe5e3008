"""SAM-CLIP's metrics as an `evaluate` module (loadable offline with `evaluate.load(<this folder>, config_name)`,
ready to push as a metric Space) and as the plain numpy functions it is computed with.

Configurations:
- `semantic_segmentation`: semantic mIoU and per-class IoU of label maps. The usual protocol (mmseg, `evaluate`'s
  mean_iou): one confusion matrix accumulated over the whole dataset, per-class IoU = TP / (TP + FP + FN), classes
  absent from both ground truth and prediction (union 0) left out of the mean.
- `prompted_segmentation`: mean IoU over instances of predicted masks against their own ground-truth masks.
- `zero_shot_classification`: top-1 accuracy of predicted class ids.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np


def confusion_matrix(prediction, target, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """`(num_classes, num_classes)` int64 pixel counts, rows = ground truth, columns = prediction.
    Ground-truth pixels equal to `ignore_index` (or outside `0..num_classes-1`) are not counted."""
    prediction = np.asarray(prediction).ravel().astype(np.int64)
    target = np.asarray(target).ravel().astype(np.int64)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction has {prediction.size} pixels but target has {target.size}.")
    valid = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        valid &= target != ignore_index
    if prediction[valid].size and (prediction[valid].min() < 0 or prediction[valid].max() >= num_classes):
        raise ValueError(f"prediction holds labels outside 0..{num_classes - 1}.")
    flat = target[valid] * num_classes + prediction[valid]
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_iou(confusion: np.ndarray) -> np.ndarray:
    """IoU of each class from a confusion matrix; NaN for a class absent from both ground truth and prediction."""
    confusion = np.asarray(confusion, dtype=np.float64)
    intersection = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, intersection / np.maximum(union, 1), np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    """Mean of :func:`per_class_iou` over the classes present in ground truth or prediction (NaN if none)."""
    ious = per_class_iou(confusion)
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")


def mask_ious(predictions, targets) -> np.ndarray:
    """IoU of each pair of bool masks `(N, H, W)` vs `(N, H, W)`; 1.0 where both masks are empty."""
    predictions = np.asarray(predictions, dtype=bool).reshape(len(predictions), -1)
    targets = np.asarray(targets, dtype=bool).reshape(len(targets), -1)
    if predictions.shape != targets.shape:
        raise ValueError(f"{predictions.shape} predicted masks vs {targets.shape} targets.")
    intersection = (predictions & targets).sum(axis=1)
    union = (predictions | targets).sum(axis=1)
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)


def instance_miou(predictions, targets) -> float:
    """Mean IoU over instances (each predicted mask against its own ground-truth mask)."""
    return float(mask_ious(predictions, targets).mean())


def top1_accuracy(scores, labels) -> float:
    """Fraction of rows of `scores (N, C)` whose argmax equals `labels (N,)`."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} score rows vs {len(labels)} labels.")
    return float((scores.argmax(axis=1) == labels).mean())


_CITATION = """@inproceedings{wang2024samclip,
  title={SAM-CLIP: Merging Vision Foundation Models towards Semantic and Spatial Understanding},
  author={Wang, Haoxiang and others}, booktitle={CVPR Workshops}, year={2024}}"""
_LABEL_MAPS = datasets.Sequence(datasets.Sequence(datasets.Value("int64")))
_MASKS = datasets.Sequence(datasets.Sequence(datasets.Value("bool")))
FEATURES = {
    "semantic_segmentation": datasets.Features({"predictions": _LABEL_MAPS, "references": _LABEL_MAPS}),
    "prompted_segmentation": datasets.Features({"predictions": _MASKS, "references": _MASKS}),
    "zero_shot_classification": datasets.Features(
        {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
    ),
}


@evaluate.utils.file_utils.add_start_docstrings(__doc__)
class SamclipMetrics(evaluate.Metric):
    """The three metrics of SAM-CLIP's evaluation; pick one with `config_name`."""

    def _info(self):
        if self.config_name not in FEATURES:
            raise KeyError(f"config_name must be one of {sorted(FEATURES)}, got {self.config_name!r}.")
        return evaluate.MetricInfo(
            description=__doc__, citation=_CITATION, inputs_description=__doc__, features=FEATURES[self.config_name]
        )

    def _compute(self, predictions, references, num_labels=None, ignore_index=None, label_names=None):
        if self.config_name == "zero_shot_classification":
            return {"accuracy": float((np.asarray(predictions) == np.asarray(references)).mean())}
        if self.config_name == "prompted_segmentation":
            return {"mean_iou": instance_miou(np.asarray(predictions), np.asarray(references))}
        if num_labels is None:
            raise ValueError("semantic_segmentation needs num_labels (background included).")
        confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
        for predicted, target in zip(predictions, references):
            confusion += confusion_matrix(predicted, target, num_labels, ignore_index)
        ious = per_class_iou(confusion)
        names = label_names or [str(index) for index in range(num_labels)]
        return {
            "mean_iou": mean_iou(confusion),
            "per_category_iou": {name: None if np.isnan(iou) else float(iou) for name, iou in zip(names, ious)},
        }
