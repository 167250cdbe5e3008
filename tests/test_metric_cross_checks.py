"""The hand-written metrics and codecs against the libraries that define them, on random inputs: the COCO RLE codec
and class-aware mask AP against pycocotools, panoptic quality against torchmetrics' PanopticQuality, semantic mIoU
against torchmetrics' MulticlassJaccardIndex. Where the definitions differ on purpose, the test says how."""

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.detection import PanopticQuality

from transformers_samclip.distillation.annotations import decode_rle, encode_rle, rle_area
from transformers_samclip.evaluation.metrics import (
    confusion_matrix,
    instance_segmentation_metrics,
    mean_iou,
    per_class_iou,
)

SEEDS = range(6)


def random_masks(rng, count, height, width) -> np.ndarray:
    """`count` bool masks: rectangles and noisy blobs of random sizes (some touching the borders)."""
    masks = np.zeros((count, height, width), dtype=bool)
    for mask in masks:
        y0, x0 = rng.integers(0, height - 2), rng.integers(0, width - 2)
        y1, x1 = rng.integers(y0 + 1, height + 1), rng.integers(x0 + 1, width + 1)
        mask[y0:y1, x0:x1] = True
        if rng.random() < 0.5:
            mask &= rng.random((height, width)) < 0.8
    return masks


def coco_rle(mask) -> dict:
    return coco_mask.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))


# ------------------------------------------------------------------------------------------------------- RLE
@pytest.mark.parametrize("seed", SEEDS)
def test_rle_codec_equals_pycocotools(seed):
    rng = np.random.default_rng(seed)
    height, width = rng.integers(1, 40, size=2)
    masks = [*random_masks(rng, 8, max(height, 3), max(width, 3)), rng.random((height, width)) < 0.5]
    masks += [np.zeros((height, width), bool), np.ones((height, width), bool)]  # one run only; first run of 1s
    for mask in masks:
        reference = coco_rle(mask)
        ours = encode_rle(mask)
        assert ours == {"size": reference["size"], "counts": reference["counts"].decode("ascii")}
        np.testing.assert_array_equal(decode_rle(reference), mask)  # pycocotools' bytes counts decode too
        np.testing.assert_array_equal(coco_mask.decode(ours | {"counts": ours["counts"].encode()}), mask)
        assert rle_area(ours) == int(coco_mask.area(reference))


# ------------------------------------------------------------------------------------------------ mask AP
def random_instances(rng, num_images, num_classes, size, overlapping=True):
    """Targets and predictions per image: predictions are perturbed targets (some relabelled), plus strays."""
    targets, predictions = [], []
    for _ in range(num_images):
        count = int(rng.integers(1, 6))
        masks = random_masks(rng, count, size, size)
        if not overlapping:  # a panoptic map: later instances cover earlier ones
            owner = np.full((size, size), -1)
            for index, mask in enumerate(masks):
                owner[mask] = index
            masks = np.stack([owner == index for index in range(count)])
            keep = masks.reshape(count, -1).any(1)
            masks = masks[keep]
        classes = rng.integers(0, num_classes, len(masks))
        targets.append({"masks": masks, "class_ids": classes})
        noisy = masks ^ (rng.random(masks.shape) < 0.08) if overlapping else masks.copy()
        if not overlapping:  # shrink some segments by a random row/column band, keeping the map non-overlapping
            for mask in noisy:
                if rng.random() < 0.5:
                    mask[: int(rng.integers(0, size)), :] = False
        pred_classes = np.where(rng.random(len(masks)) < 0.2, rng.integers(0, num_classes, len(masks)), classes)
        strays = int(rng.integers(0, 3))
        if overlapping and strays:
            noisy = np.concatenate([noisy, random_masks(rng, strays, size, size)])
            pred_classes = np.concatenate([pred_classes, rng.integers(0, num_classes, strays)])
        keep = noisy.reshape(len(noisy), -1).any(1)
        predictions.append(
            {"masks": noisy[keep], "class_ids": pred_classes[keep], "scores": rng.permutation(keep.sum()) / 10 + 0.05}
        )
    return predictions, targets


def coco_ap(predictions, targets, num_classes, size) -> np.ndarray:
    """pycocotools' segm AP `(IoU threshold 0.50:0.95, class)` (101 recall points; NaN without ground truth)."""
    images, annotations, detections = [], [], []
    for image_id, (prediction, target) in enumerate(zip(predictions, targets), start=1):
        images.append({"id": image_id, "height": size, "width": size})
        for mask, class_id in zip(target["masks"], target["class_ids"]):
            rle = coco_rle(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCOeval reads a match to id 0 as no match: ids from 1
                    "image_id": image_id,
                    "category_id": int(class_id) + 1,
                    "segmentation": rle,
                    "area": float(coco_mask.area(rle)),
                    "bbox": coco_mask.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            )
        for mask, class_id, score in zip(prediction["masks"], prediction["class_ids"], prediction["scores"]):
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": int(class_id) + 1,
                    "segmentation": coco_rle(mask),
                    "score": score,
                }
            )
    ground_truth = COCO()
    ground_truth.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(detections), iouType="segm")
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][:, :, :, 0, -1]  # (IoU thresholds, recall points, classes), area all
    return np.where((precision > -1).all(axis=1), precision.mean(axis=1), np.nan)


@pytest.mark.parametrize("seed", SEEDS)
def test_mask_ap_equals_pycocotools(seed):
    """Same matching (greedy by score, best unmatched same-class IoU >= t), same 101-point interpolation, same mean
    over classes with ground truth. Not compared: `ignore` targets (COCO has only crowd regions, matched by
    intersection over the detection instead of IoU), and COCO's area ranges and maxDets (here all areas, under 100
    detections per image)."""
    rng = np.random.default_rng(seed)
    num_classes, size = 4, 24
    predictions, targets = random_instances(rng, num_images=5, num_classes=num_classes, size=size)
    ours = instance_segmentation_metrics(predictions, targets, num_classes)
    reference = coco_ap(predictions, targets, num_classes, size)
    np.testing.assert_allclose(ours["per_class_ap"], reference.mean(axis=0), atol=1e-9)
    assert ours["ap"] == pytest.approx(np.nanmean(reference.mean(axis=0)), abs=1e-9)
    assert ours["ap50"] == pytest.approx(np.nanmean(reference[0]), abs=1e-9)  # thresholds 0.50, 0.55, ..., 0.95
    assert ours["ap75"] == pytest.approx(np.nanmean(reference[5]), abs=1e-9)
    assert 0 < ours["ap"] < ours["ap50"] < 1  # random inputs that neither always nor never match


# ----------------------------------------------------------------------------------------------------- PQ
def panoptic_map(masks, class_ids, size, background) -> torch.Tensor:
    """`(H, W, 2)` (category, instance id) map of non-overlapping masks; uncovered pixels are the stuff class."""
    out = torch.zeros(size, size, 2, dtype=torch.long)
    out[..., 0] = background
    for index, (mask, class_id) in enumerate(zip(masks, class_ids), start=1):
        out[torch.from_numpy(mask)] = torch.tensor([int(class_id), index])
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_panoptic_quality_equals_torchmetrics(seed):
    """On non-overlapping segments (a panoptic map, what PQ is defined on) the per-class PQ of each thing class equals
    torchmetrics'. Definition differences: our PQ takes overlapping scored masks and paints them best first (a mask
    keeping under half of its area is dropped) before matching, and it has no stuff classes: the pixels no target
    covers are handed to torchmetrics as one stuff class (`background`), left out of the comparison, so that no pixel
    is void (COCO's PQ drops predictions that are mostly void, which ours has no notion of)."""
    rng = np.random.default_rng(seed)
    num_classes, size = 4, 24
    predictions, targets = random_instances(rng, 4, num_classes, size, overlapping=False)
    ours = instance_segmentation_metrics(predictions, targets, num_classes)
    background = num_classes
    metric = PanopticQuality(things=set(range(num_classes)), stuffs={background}, return_per_class=True)
    for prediction, target in zip(predictions, targets):
        metric.update(
            panoptic_map(prediction["masks"], prediction["class_ids"], size, background)[None],
            panoptic_map(target["masks"], target["class_ids"], size, background)[None],
        )
    reference = metric.compute().reshape(-1)[:num_classes].double().numpy()
    occurs = np.isfinite(ours["per_class_pq"])
    np.testing.assert_allclose(np.asarray(ours["per_class_pq"])[occurs], reference[occurs], atol=1e-6)
    assert ours["pq"] == pytest.approx(reference[occurs].mean(), abs=1e-6)


# ---------------------------------------------------------------------------------------------------- mIoU
@pytest.mark.parametrize("seed", SEEDS)
def test_semantic_miou_equals_torchmetrics_jaccard(seed):
    """One confusion matrix over the dataset, IoU per class, mean over classes present in ground truth or prediction,
    `ignore_index` pixels of the ground truth not counted: torchmetrics' macro Jaccard index accumulated over
    batches. (torchmetrics' segmentation.MeanIoU averages per image instead: another definition.)"""
    rng = np.random.default_rng(seed)
    num_classes, ignore_index = 6, 255
    images = []
    for _ in range(4):
        target = rng.integers(0, num_classes - 1, (20, 30))  # the last class occurs nowhere
        target[rng.random(target.shape) < 0.1] = ignore_index
        prediction = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, num_classes - 1, target.shape))
        prediction[prediction == ignore_index] = 0
        images.append((prediction, target))
    confusion = sum(confusion_matrix(p, t, num_classes, ignore_index) for p, t in images)
    per_class, macro = (
        MulticlassJaccardIndex(num_classes, average=a, ignore_index=ignore_index) for a in ("none", "macro")
    )
    for prediction, target in images:
        for metric in (per_class, macro):
            metric.update(torch.from_numpy(prediction)[None], torch.from_numpy(target)[None])
    present = confusion.sum(0) + confusion.sum(1) > 0
    assert not present.all()  # the macro mean must leave an absent class out, as ours does
    np.testing.assert_allclose(per_class_iou(confusion)[present], per_class.compute().double().numpy()[present])
    assert mean_iou(confusion) == pytest.approx(macro.compute().item(), abs=1e-6)
