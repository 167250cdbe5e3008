"""The project's metrics: the plain numpy functions, [`load_metric`] for the semantic, prompted and zero-shot
metrics as an `evaluate` module (`transformers_samclip/metrics/samclip_metrics`, loaded offline from the installed
package, which also holds their numpy code), and instance AP / PQ."""

from __future__ import annotations

from importlib.resources import files

import numpy as np

from ..metrics.samclip_metrics.samclip_metrics import (
    confusion_matrix,
    instance_miou,
    mask_ious,
    mean_iou,
    per_class_iou,
    top1_accuracy,
)

METRIC_MODULE_DIR = str(files("transformers_samclip") / "metrics" / "samclip_metrics")


def load_metric(name: str):
    """The `evaluate` module of one metric: `"semantic_segmentation"`, `"prompted_segmentation"` or
    `"zero_shot_classification"` (in memory: no cache files, so parallel evaluations do not collide)."""
    import evaluate

    return evaluate.load(METRIC_MODULE_DIR, name, keep_in_memory=True)


def _pairwise_ious(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """`(P, T)` IoU of every predicted bool mask `(P, H, W)` with every target `(T, H, W)`."""
    predictions = predictions.reshape(len(predictions), -1).astype(np.float32)
    targets = targets.reshape(len(targets), -1).astype(np.float32)
    intersection = predictions @ targets.T
    union = predictions.sum(1)[:, None] + targets.sum(1)[None, :] - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1), 0.0)


def _average_precision(scores: list, matched: list, num_targets: int) -> float:
    """COCO's 101-point interpolated AP of detections (`scores`, `matched` bools) against `num_targets`."""
    if num_targets == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = np.asarray(matched, dtype=np.float64)[order]
    true_positives, false_positives = np.cumsum(hits), np.cumsum(1 - hits)
    recall = true_positives / num_targets
    precision = true_positives / np.maximum(true_positives + false_positives, 1e-9)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # interpolated: best precision at this recall or more
    first_reaching = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    return float(np.append(precision, 0.0)[first_reaching].mean())


COCO_IOU_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.5, 0.96, 0.05), 2))


def instance_segmentation_metrics(predictions, targets, num_classes: int, iou_thresholds=COCO_IOU_THRESHOLDS) -> dict:
    """Class-aware mask AP (COCO style) and panoptic quality over a dataset.

    `predictions`: per image `{"masks": (M, H, W) bool, "class_ids": (M,), "scores": (M,)}`;
    `targets`: per image `{"masks": (T, H, W) bool, "class_ids": (T,), "ignore": (T,) bool}`; an ignored target
    (e.g. a sliver of an occluded object) is neither found nor missed, and a prediction that matches it is not
    counted. AP: per class and IoU threshold, predictions by descending score greedily take the unmatched target of
    their class with the highest IoU >= the threshold; 101-point interpolation; mean over classes with targets.
    PQ (Kirillov et al.): predictions made non-overlapping first (best score first, a segment kept when at least half
    of it is left to it), matched to same-class targets at IoU > 0.5, PQ_c = sum of matched IoUs / (TP + FP/2 + FN/2),
    mean over classes that occur. Precision, recall and F1 at IoU 0.5 count every prediction (the AP50 matching,
    pooled over classes). Returns `{"ap", "ap50", "ap75", "pq", "sq", "rq", "precision", "recall", "f1",
    "per_class_ap", "per_class_pq"}`."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions vs {len(targets)} targets: give one of each per image.")
    detections = {(c, t): ([], []) for c in range(num_classes) for t in iou_thresholds}
    num_targets = np.zeros(num_classes, dtype=np.int64)
    pq_sums = np.zeros((num_classes, 4))  # matched IoU sum, TP, FP, FN
    for prediction, target in zip(predictions, targets):
        pred_masks = np.asarray(prediction["masks"], dtype=bool)
        pred_classes = np.asarray(prediction["class_ids"], dtype=np.int64).reshape(-1)
        pred_scores = np.asarray(prediction["scores"], dtype=np.float64).reshape(-1)
        target_masks = np.asarray(target["masks"], dtype=bool)
        target_classes = np.asarray(target["class_ids"], dtype=np.int64).reshape(-1)
        ignore = np.asarray(target.get("ignore", np.zeros(len(target_classes), bool)), dtype=bool).reshape(-1)
        np.add.at(num_targets, target_classes[~ignore], 1)
        ious = (
            _pairwise_ious(pred_masks, target_masks)
            if len(pred_masks) and len(target_masks)
            else np.zeros((len(pred_masks), len(target_masks)))
        )
        same_class = pred_classes[:, None] == target_classes[None, :]
        order = np.argsort(-pred_scores, kind="stable")
        for threshold in iou_thresholds:
            taken = np.zeros(len(target_classes), dtype=bool)
            for p in order:
                candidates = np.where(same_class[p] & ~taken & (ious[p] >= threshold), ious[p], -1.0)
                best = int(np.argmax(candidates)) if len(candidates) else -1
                if best >= 0 and candidates[best] >= 0:
                    taken[best] = True
                    if ignore[best]:
                        continue
                    matched = True
                else:
                    matched = False
                scores, hits = detections[(int(pred_classes[p]), threshold)]
                scores.append(pred_scores[p])
                hits.append(matched)
        # Panoptic: paint best first, drop segments that keep less than half of their area.
        painted = np.zeros(target_masks.shape[1:] if len(target_masks) else pred_masks.shape[1:], dtype=bool)
        segments = []
        for p in order:
            free = pred_masks[p] & ~painted
            if pred_masks[p].sum() and free.sum() >= 0.5 * pred_masks[p].sum():
                painted |= free
                segments.append((free, int(pred_classes[p])))
        matched_targets = set()
        for free, class_id in segments:
            segment_ious = _pairwise_ious(free[None], target_masks)[0] if len(target_masks) else np.zeros(0)
            hit = [t for t in range(len(target_classes)) if target_classes[t] == class_id and segment_ious[t] > 0.5]
            if hit:
                matched_targets.add(hit[0])
                if not ignore[hit[0]]:
                    pq_sums[class_id] += (segment_ious[hit[0]], 1, 0, 0)
            else:
                pq_sums[class_id, 2] += 1
        for t in range(len(target_classes)):
            if t not in matched_targets and not ignore[t]:
                pq_sums[target_classes[t], 3] += 1
    per_class_ap = np.array(
        [[_average_precision(*detections[(c, t)], num_targets[c]) for t in iou_thresholds] for c in range(num_classes)]
    )
    iou_sum, tp, fp, fn = pq_sums.T
    occurs = tp + fp + fn > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class_pq = np.where(occurs, iou_sum / np.maximum(tp + fp / 2 + fn / 2, 1e-9), np.nan)
        sq = np.where(tp > 0, iou_sum / np.maximum(tp, 1), 0.0)
        rq = np.where(occurs, tp / np.maximum(tp + fp / 2 + fn / 2, 1e-9), np.nan)
    ap50_index = list(iou_thresholds).index(0.5) if 0.5 in iou_thresholds else None
    ap75_index = list(iou_thresholds).index(0.75) if 0.75 in iou_thresholds else None

    def mean(values):
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    # Precision / recall / F1 at IoU 0.5 over all kept predictions (the matches AP50 counts, every score kept):
    # how many named masks are right things, and how many things are found and named right.
    f1_threshold = 0.5 if 0.5 in iou_thresholds else iou_thresholds[0]
    hits = [hit for c in range(num_classes) for hit in detections[(c, f1_threshold)][1]]
    true_positives = float(sum(hits))
    precision = true_positives / len(hits) if hits else 0.0
    recall = true_positives / num_targets.sum() if num_targets.sum() else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0

    return {
        "ap": mean(per_class_ap.mean(axis=1)),
        "ap50": mean(per_class_ap[:, ap50_index]) if ap50_index is not None else float("nan"),
        "ap75": mean(per_class_ap[:, ap75_index]) if ap75_index is not None else float("nan"),
        "pq": mean(per_class_pq),
        "sq": mean(np.where(occurs, sq, np.nan)),
        "rq": mean(rq),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "per_class_ap": per_class_ap.mean(axis=1).tolist(),
        "per_class_pq": per_class_pq.tolist(),
    }


__all__ = [
    "METRIC_MODULE_DIR",
    "confusion_matrix",
    "instance_miou",
    "instance_segmentation_metrics",
    "load_metric",
    "mask_ious",
    "mean_iou",
    "per_class_iou",
    "top1_accuracy",
]
