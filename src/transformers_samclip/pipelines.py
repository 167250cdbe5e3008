"""The `zero-shot-semantic-segmentation` pipeline: an image and class names in, one mask per class out.

    from transformers import pipeline
    import transformers_samclip  # registers the task
    segmenter = pipeline("zero-shot-semantic-segmentation", model="path/or/hub-id", trust_remote_code=True)
    segments = segmenter(image, candidate_labels=["cat", "dog"], refine=True)
"""

import numpy as np
from PIL import Image
from transformers import AutoModel, Pipeline
from transformers.image_utils import load_image
from transformers.pipelines import PIPELINE_REGISTRY

from .modeling import DEFAULT_TEMPLATES


class ZeroShotSemanticSegmentationPipeline(Pipeline):
    """Text-to-mask semantic segmentation with a SAM-CLIP model (CLIP head alone, or SAM-refined with
    `refine=True`). Returns, like transformers' image-segmentation pipeline, a list of
    `{"label", "score", "mask"}` dicts (PIL "L" masks at the original size), one per class present; the
    background (pixels no class claims) is the entry labelled `"background"`."""

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(
        self,
        candidate_labels=None,
        templates=None,
        refine=None,
        background_threshold=None,
        background_labels=None,
        timeout=None,
    ):
        preprocess = {}
        if candidate_labels is not None:
            preprocess["candidate_labels"] = candidate_labels
        if refine is not None:
            preprocess["refine"] = refine
        if timeout is not None:
            preprocess["timeout"] = timeout
        forward = {}
        if templates is not None:
            forward["templates"] = tuple(templates)
        if background_threshold is not None:
            forward["background_threshold"] = background_threshold
        if background_labels is not None:
            forward["background_labels"] = list(background_labels)
        return preprocess, forward, {}

    def __call__(self, image, candidate_labels=None, **kwargs):
        """Segment `image` (path, URL or PIL image) into `candidate_labels` (a list, or a comma-separated string)."""
        return super().__call__(image, candidate_labels=candidate_labels, **kwargs)

    def preprocess(self, image, candidate_labels=None, refine=False, timeout=None):
        if isinstance(candidate_labels, str):
            candidate_labels = [label.strip() for label in candidate_labels.split(",")]
        labels = [label for label in (candidate_labels or []) if label and label.strip()]
        if not labels:
            raise ValueError("candidate_labels is empty: give at least one class name, e.g. ['cat', 'dog'].")
        if len(set(labels)) != len(labels):
            raise ValueError(f"candidate_labels has duplicates: {labels}; give each class once.")
        image = load_image(image, timeout=timeout)
        inputs = self.processor(images=image, view="sam" if refine else "dense")
        inputs["candidate_labels"] = labels
        inputs["refine"] = refine
        return inputs

    def _forward(self, model_inputs, templates=DEFAULT_TEMPLATES, background_threshold=None, background_labels=None):
        labels = model_inputs.pop("candidate_labels")
        refine = model_inputs.pop("refine")
        tokenizer = self.processor.tokenizer
        class_embeds = self.model.encode_class_names(labels, tokenizer, templates)
        background_embeds = (
            self.model.encode_class_names(background_labels, tokenizer, templates) if background_labels else None
        )
        segment = self.model.semantic_segmentation_refined if refine else self.model.semantic_segmentation
        output = segment(
            model_inputs["pixel_values"].to(self.model.dtype),
            class_embeds,
            background_embeds=background_embeds,
            background_threshold=background_threshold,
        )
        return {
            "logits": output.logits,
            "candidate_labels": labels,
            "refine": refine,
            "original_sizes": model_inputs["original_sizes"],
            "reshaped_input_sizes": model_inputs["reshaped_input_sizes"],
        }

    def postprocess(self, model_outputs):
        labels = ["background", *model_outputs["candidate_labels"]]
        logits = model_outputs["logits"].float()
        (resized,) = self.processor.resize_semantic_logits(
            logits, model_outputs["original_sizes"], model_outputs["reshaped_input_sizes"]
        )
        label_map = resized.argmax(0)
        probabilities = resized.softmax(0)
        segments = []
        for index, label in enumerate(labels):
            region = label_map == index
            if not region.any():
                continue
            score = probabilities[index][region].mean().item()
            mask = Image.fromarray(region.numpy().astype(np.uint8) * 255, mode="L")
            segments.append({"label": label, "score": score, "mask": mask})
        return segments


PIPELINE_REGISTRY.register_pipeline(
    "zero-shot-semantic-segmentation",
    pipeline_class=ZeroShotSemanticSegmentationPipeline,
    pt_model=AutoModel,
    type="multimodal",
)

__all__ = ["ZeroShotSemanticSegmentationPipeline"]
