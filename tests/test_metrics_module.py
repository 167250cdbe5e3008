"""The project's metrics as an `evaluate` module: loads offline from a local path, and equals the plain functions
that `samclip evaluate` reported before it went through the module."""

import evaluate
import numpy as np
import pytest
from datasets import Dataset

from transformers_samclip.evaluation import evaluate_label_maps
from transformers_samclip.evaluation.metrics import (
    METRIC_MODULE_DIR,
    confusion_matrix,
    instance_miou,
    mean_iou,
    per_class_iou,
    top1_accuracy,
)

RNG = np.random.default_rng(0)
# Label maps over 5 labels where label 4 never occurs (left out of the mean) and some pixels are ignored (255).
PREDICTIONS = RNG.integers(0, 4, (6, 12, 10))
REFERENCES = np.where(
    RNG.random((6, 12, 10)) < 0.1,
    255,
    np.where(RNG.random((6, 12, 10)) < 0.6, PREDICTIONS, RNG.integers(0, 4, (6, 12, 10))),
)


def test_semantic_segmentation_equals_the_plain_functions():
    metric = evaluate.load(METRIC_MODULE_DIR, "semantic_segmentation")  # a local path: no Hub call
    result = metric.compute(
        predictions=list(PREDICTIONS),
        references=list(REFERENCES),
        num_labels=5,
        ignore_index=255,
        label_names=["background", "a", "b", "c", "d"],
    )
    confusion = sum(confusion_matrix(p, r, 5, 255) for p, r in zip(PREDICTIONS, REFERENCES))
    assert result["mean_iou"] == mean_iou(confusion)
    expected = per_class_iou(confusion)
    assert [result["per_category_iou"][name] for name in ("background", "a", "b", "c")] == expected[:4].tolist()
    assert result["per_category_iou"]["d"] is None and np.isnan(expected[4])


def test_prompted_segmentation_and_zero_shot_classification_equal_the_plain_functions():
    masks, targets = PREDICTIONS > 1, REFERENCES % 255 > 1
    targets[0] = masks[0] = False  # both empty: IoU 1 by convention
    prompted = evaluate.load(METRIC_MODULE_DIR, "prompted_segmentation")
    assert prompted.compute(predictions=list(masks), references=list(targets))["mean_iou"] == instance_miou(
        masks, targets
    )
    scores, labels = RNG.random((50, 7)), RNG.integers(0, 7, 50)
    accuracy = evaluate.load(METRIC_MODULE_DIR, "zero_shot_classification")
    assert accuracy.compute(predictions=scores.argmax(1), references=labels)["accuracy"] == top1_accuracy(
        scores, labels
    )


def test_the_harness_reports_the_module_numbers():
    dataset = Dataset.from_dict({"image": list(range(6)), "semantic_map": [r.tolist() for r in REFERENCES]})
    result = evaluate_label_maps(
        lambda images: [PREDICTIONS[i] for i in images], dataset, ["a", "b", "c", "d"], batch_size=4
    )
    confusion = sum(confusion_matrix(p, r, 5, 255) for p, r in zip(PREDICTIONS, REFERENCES))
    assert result["miou"] == mean_iou(confusion) and result["num_images"] == 6


def test_unknown_configuration_names_the_choices():
    with pytest.raises(KeyError, match="semantic_segmentation"):
        evaluate.load(METRIC_MODULE_DIR, "mean_iou")
