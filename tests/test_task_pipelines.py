"""Issue 20: transformers' pipelines follow the task on an exported folder (each fed the view it needs, with only
`model=folder, trust_remote_code=True`, in a process where this package cannot be imported), SAM 3-style instance
post-processing with boxes, and `zero-shot-object-detection` from the one-pass instances.

Run time: ~40 s on 1 thread (tiny random model; one child process).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessorPil, pipeline

from transformers_samclip import SamClipMaskGenerator, SamClipModel, SamClipProcessor
from transformers_samclip.hub import export_model
from transformers_samclip.modeling import SamClipInstanceSegmentationOutput
from transformers_samclip.modeling.processing_samclip import masks_to_boxes
from transformers_samclip.pipelines import SamClipZeroShotObjectDetectionPipeline

LABELS = ["a red square", "grey noise", "a cat"]
# Run first in a child process: transformers_samclip cannot be imported there.
BLOCK_PACKAGE = """
import importlib.abc, sys
class NoPackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "transformers_samclip":
            raise ImportError("transformers_samclip is not installed here")
sys.meta_path.insert(0, NoPackage())
import torch; torch.set_num_threads(1)
"""
MASK_OPTIONS = {
    "points_per_batch": 64,
    "points_per_crop": 4,
    "pred_iou_thresh": -10,
    "stability_score_thresh": 0.0,
    "output_rle_mask": False,
}
# Random tiny weights: SAM's quality filters would keep no instance.
INSTANCE_OPTIONS = {"pred_iou_threshold": -10.0, "stability_threshold": 0.0}


@pytest.fixture(scope="module")
def exported(saved_tiny_model, tmp_path_factory):
    return export_model(saved_tiny_model, tmp_path_factory.mktemp("export"), repo_id="someone/samclip-tiny")


@pytest.fixture(scope="module")
def reference(saved_tiny_model):
    """The exported model and processor, loaded in this process through the package."""
    return SamClipModel.from_pretrained(saved_tiny_model).eval(), SamClipProcessor.from_pretrained(saved_tiny_model)


def detections(model, processor, image, threshold):
    """Boxes the harness's own SAM view gives: `instance_segmentation` + SAM 3-style post-processing."""
    inputs = processor(images=image, view="sam")
    with torch.no_grad():
        class_embeds = model.encode_class_names(LABELS, processor.tokenizer)
        output = SamClipMaskGenerator(model).instance_segmentation(
            inputs["pixel_values"],
            class_embeds,
            input_sizes=inputs["reshaped_input_sizes"].tolist(),
            **INSTANCE_OPTIONS,
        )
    (result,) = processor.post_process_instance_segmentation(
        output, threshold=threshold, target_sizes=inputs["original_sizes"]
    )
    return result


def test_exported_folder_serves_every_task_with_its_view_without_the_package(exported, reference, image, tmp_path):
    model, processor = reference
    image.save(tmp_path / "image.png")
    with torch.no_grad():
        clip_inputs = processor(images=image, text=[f"This is a photo of {label}." for label in LABELS])
        assert clip_inputs["pixel_values"].shape[-1] == 32  # the CLIP-path view, not the 64 px SAM view
        probabilities = model(**clip_inputs).logits_per_image.softmax(-1)[0].tolist()
        embeds = model(**processor(images=image)).image_embeds[0].tolist()
    masks = pipeline("mask-generation", model=model, image_processor=processor.image_processor)(image, **MASK_OPTIONS)
    found = detections(model, processor, image, threshold=0.0)
    script = BLOCK_PACKAGE + textwrap.dedent(f"""
        import json
        import numpy as np
        from PIL import Image
        from transformers import pipeline
        folder, image, labels = {str(exported)!r}, Image.open("image.png"), {LABELS!r}
        tasks = ("zero-shot-image-classification", "image-feature-extraction", "mask-generation",
                 "zero-shot-object-detection", "zero-shot-image-segmentation")
        served = {{task: pipeline(task, model=folder, trust_remote_code=True) for task in tasks}}
        masks = served["mask-generation"](image, **{MASK_OPTIONS!r})
        print(json.dumps({{
            "classes": {{task: type(p).__name__ for task, p in served.items()}},
            "view": served["zero-shot-image-classification"].image_processor.crop_size["height"],
            "classification": served["zero-shot-image-classification"](image, candidate_labels=labels),
            "features": np.asarray(served["image-feature-extraction"](image)).tolist(),
            "mask_scores": masks["scores"].tolist(), "mask_areas": [int(m.sum()) for m in masks["masks"]],
            "detections": served["zero-shot-object-detection"](image, candidate_labels=labels, threshold=0.0,
                                                                  **{INSTANCE_OPTIONS!r}),
            "instances": [{{"box": s["box"], "area": int((np.asarray(s["mask"]) > 0).sum())}} for s in
                          served["zero-shot-image-segmentation"](image, candidate_labels=labels, subtask="instance",
                                                                 **{INSTANCE_OPTIONS!r})],
        }}))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # No torchvision fallback warning, no "model not supported for this task" error on any load.
    assert "torchvision" not in result.stderr and "is not supported" not in result.stderr, result.stderr[-2000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert served["classes"] == {
        "zero-shot-image-classification": "SamClipZeroShotImageClassificationPipeline",
        "image-feature-extraction": "SamClipImageFeatureExtractionPipeline",
        "mask-generation": "SamClipMaskGenerationPipeline",
        "zero-shot-object-detection": "SamClipZeroShotObjectDetectionPipeline",
        "zero-shot-image-segmentation": "ZeroShotImageSegmentationPipeline",
    }
    assert served["view"] == 32
    expected = sorted(zip(probabilities, LABELS), reverse=True)
    assert [r["label"] for r in served["classification"]] == [label for _, label in expected]
    np.testing.assert_allclose([r["score"] for r in served["classification"]], [p for p, _ in expected], atol=1e-5)
    np.testing.assert_allclose(np.asarray(served["features"]).reshape(-1), embeds, atol=1e-5)
    assert len(served["mask_scores"]) == len(masks["scores"]) >= 1
    np.testing.assert_allclose(served["mask_scores"], masks["scores"].tolist(), atol=1e-5)
    assert served["mask_areas"] == [int(np.asarray(m).sum()) for m in masks["masks"]]
    assert len(served["detections"]) == len(found["scores"]) >= 1
    assert [d["label"] for d in served["detections"]] == [LABELS[i] for i in found["labels"].tolist()]
    np.testing.assert_allclose([d["score"] for d in served["detections"]], found["scores"].tolist(), atol=1e-5)
    boxes = [dict(zip(("xmin", "ymin", "xmax", "ymax"), map(int, box))) for box in found["boxes"].tolist()]
    assert [d["box"] for d in served["detections"]] == boxes
    assert [i["box"] for i in served["instances"]] == boxes
    assert [i["area"] for i in served["instances"]] == found["masks"].flatten(1).sum(1).tolist()


def test_processor_loads_the_clip_view_as_the_pil_class(exported):
    """transformers saves the CLIP view as "CLIPImageProcessor"; loading that name without torchvision warns and
    falls back. The processor names the class it uses instead."""
    assert (
        json.loads((exported / "processor_config.json").read_text())["clip_image_processor"]["image_processor_type"]
        == "CLIPImageProcessor"
    )
    assert type(SamClipProcessor.from_pretrained(exported).clip_image_processor) is CLIPImageProcessorPil


def test_model_object_with_its_processor_gets_each_task_view(reference, image):
    """A model object and `processor=` alone, with `SAMCLIP_PIPELINES[task]`: each of transformers' tasks takes its
    view."""
    from transformers_samclip import SAMCLIP_PIPELINES

    model, processor = reference

    def served(task, **kwargs):
        return pipeline(task, model=model, pipeline_class=SAMCLIP_PIPELINES[task], **kwargs)

    classifier = served("zero-shot-image-classification", processor=processor)
    features = served("image-feature-extraction", processor=processor)
    generator = served("mask-generation", processor=processor)
    assert classifier.image_processor is processor.clip_image_processor and classifier.tokenizer is processor.tokenizer
    assert features.image_processor is processor.clip_image_processor
    assert generator.image_processor is processor.image_processor
    with torch.no_grad():
        expected = model(**processor(images=image)).image_embeds
    assert torch.allclose(torch.tensor(features(image)), expected, atol=1e-6)
    with pytest.raises(ValueError, match="needs SAM-CLIP's processor"):
        served("image-feature-extraction")


def test_masks_to_boxes_uses_pixel_edges():
    masks = torch.zeros(3, 6, 8, dtype=torch.bool)
    masks[0, 1:4, 3:8] = True  # rows 1-3, columns 3-7
    masks[1, 5, 0] = True
    assert masks_to_boxes(masks).tolist() == [[3, 1, 8, 4], [0, 5, 1, 6], [0, 0, 0, 0]]
    assert masks_to_boxes(masks[:0]).shape == (0, 4)


def instance_output(size=16):
    """Two instances of one image, as mask logits in a `size`-px SAM view whose top half is a 2:1 image."""
    logits = torch.full((2, size // 4, size // 4), -5.0)
    logits[0, 0:2, 0:2] = 5.0  # left half of the image
    logits[1, 0:2, 2:4] = 0.5  # right half of the image, weak: sigmoid 0.62
    return SamClipInstanceSegmentationOutput(
        mask_logits=[logits], class_ids=[torch.tensor([2, 0])], scores=[torch.tensor([0.9, 0.2])]
    )


def test_post_process_instance_segmentation_takes_sam3_keywords(tokenizer):
    processor = SamClipProcessor.from_sizes(tokenizer, sam_size=16, clip_size=8)
    assert processor.reshaped_size((40, 80)) == (8, 16)
    (result,) = processor.post_process_instance_segmentation(instance_output(), target_sizes=[(40, 80)])
    assert set(result) == {"scores", "boxes", "masks", "labels"}
    assert result["labels"].tolist() == [2, 0] and result["scores"].tolist() == pytest.approx([0.9, 0.2])
    assert result["masks"].shape == (2, 40, 80) and result["masks"].dtype == torch.bool
    assert result["boxes"].tolist() == masks_to_boxes(result["masks"]).tolist()
    np.testing.assert_allclose(result["boxes"][0], [0, 0, 40, 40], atol=2)  # the left half of the 80 x 40 image
    assert result["boxes"][1, 0] >= 38 and result["boxes"][1, 2] == 80  # the weak mask: inside the right half
    (kept,) = processor.post_process_instance_segmentation(instance_output(), threshold=0.5, target_sizes=[(40, 80)])
    assert kept["labels"].tolist() == [2]
    (strict,) = processor.post_process_instance_segmentation(
        instance_output(), mask_threshold=0.7, target_sizes=[(40, 80)]
    )
    assert strict["labels"].tolist() == [2]  # the weak mask is empty at probability 0.7: left out
    (unsized,) = processor.post_process_instance_segmentation(instance_output())
    assert unsized["masks"].shape == (2, 16, 16)
    with pytest.raises(ValueError, match="mask_threshold must be a probability"):
        processor.post_process_instance_segmentation(instance_output(), mask_threshold=1.5)
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        processor.post_process_instance_segmentation(instance_output(), threshold=float("nan"))
    with pytest.raises(ValueError, match="target_sizes has 2 sizes for 1 images"):
        processor.post_process_instance_segmentation(instance_output(), target_sizes=[(40, 80), (4, 4)])


def test_zero_shot_object_detection_format_threshold_and_top_k(reference, image):
    model, processor = reference
    detector = pipeline(
        "zero-shot-object-detection",
        model=model,
        processor=processor,
        pipeline_class=SamClipZeroShotObjectDetectionPipeline,
    )
    everything = detector(image, candidate_labels=LABELS, threshold=0.0, **INSTANCE_OPTIONS)
    assert everything and all(set(d) == {"score", "label", "box"} for d in everything)
    assert all(set(d["box"]) == {"xmin", "ymin", "xmax", "ymax"} and d["label"] in LABELS for d in everything)
    assert all(
        0 <= d["box"]["xmin"] < d["box"]["xmax"] <= 80 and 0 <= d["box"]["ymin"] < d["box"]["ymax"] <= 48
        for d in everything
    )
    scores = [d["score"] for d in everything]
    assert scores == sorted(scores, reverse=True)
    middle = (scores[0] + scores[-1]) / 2
    assert detector(image, candidate_labels=LABELS, threshold=middle, **INSTANCE_OPTIONS) == [
        d for d in everything if d["score"] >= middle
    ]
    first = detector(image, candidate_labels=",".join(LABELS), threshold=0.0, top_k=1, **INSTANCE_OPTIONS)
    assert first == everything[:1]
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        detector(image, candidate_labels=LABELS, top_k=0)
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        detector(image, candidate_labels=LABELS, threshold="high")
    with pytest.raises(TypeError, match="always finds instances"):
        detector(image, candidate_labels=LABELS, subtask="semantic")


def test_saved_folder_with_the_package_gets_each_task_view(saved_tiny_model):
    """A folder `save_pretrained` wrote (no `custom_pipelines`), with `SAMCLIP_PIPELINES[task]`: the class loads the
    folder's processor and takes the task's view from it."""
    from transformers_samclip import SAMCLIP_PIPELINES

    views = {
        task: pipeline(task, model=str(saved_tiny_model), pipeline_class=SAMCLIP_PIPELINES[task]).image_processor
        for task in ("zero-shot-image-classification", "image-feature-extraction", "mask-generation")
    }
    assert type(views["zero-shot-image-classification"]) is CLIPImageProcessorPil
    assert views["image-feature-extraction"].crop_size["height"] == 32
    assert views["mask-generation"].size["longest_edge"] == 64


def test_box_ap_scores_boxes_not_masks():
    """`samclip evaluate`'s detection box AP50: a prediction whose mask barely overlaps the target's (a diagonal
    against a ring) but whose box is the target's box scores 1.0 as a detection, 0.0 as a mask."""
    from transformers_samclip.evaluation.instance import box_masks
    from transformers_samclip.evaluation.metrics import instance_segmentation_metrics

    ring = np.zeros((1, 16, 16), bool)
    ring[0, 2:12, 2:12] = True
    ring[0, 3:11, 3:11] = False
    diagonal = np.zeros((1, 16, 16), bool)
    diagonal[0, np.arange(2, 12), np.arange(2, 12)] = True
    boxes = box_masks(diagonal)
    assert boxes.sum() == 100 and boxes[0, 2:12, 2:12].all()
    prediction = {"masks": diagonal, "class_ids": [0], "scores": [0.9]}
    target = {"masks": ring, "class_ids": [0], "ignore": [False]}
    assert instance_segmentation_metrics([prediction], [target], 1)["ap50"] == 0.0
    boxed = instance_segmentation_metrics(
        [{**prediction, "masks": box_masks(diagonal)}], [{**target, "masks": box_masks(ring)}], 1
    )
    assert boxed["ap50"] == pytest.approx(1.0)
