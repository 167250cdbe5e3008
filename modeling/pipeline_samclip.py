"""SAM-CLIP's pipelines: transformers' task names served with the view each task needs, and the text-prompted tasks
transformers has no SAM-CLIP-shaped class for.

- `zero-shot-image-classification`, `image-feature-extraction`: transformers' classes fed the CLIP-path view.
- `mask-generation`: transformers' class fed the SAM view.
- `zero-shot-image-segmentation` (and its older name `zero-shot-semantic-segmentation`): an image and class names in,
  labelled masks out (semantic, instance or panoptic), in the output format of transformers' `image-segmentation`
  pipeline; instances also carry their `box`.
- `zero-shot-object-detection`: the instances as boxes, in the output format of transformers' pipeline of that name.

An exported folder declares them all (`custom_pipelines` in its config.json), so plain transformers serves them with
only the folder and `trust_remote_code=True`, without this package:

    from transformers import pipeline
    classifier = pipeline("zero-shot-image-classification", model="path/or/hub-id", trust_remote_code=True)
    detector = pipeline("zero-shot-object-detection", model="path/or/hub-id", trust_remote_code=True)
    boxes = detector(image, candidate_labels=["cat", "dog"], threshold=0.1)

Ships beside the model code (imports only torch, transformers, numpy and PIL).
"""

import dataclasses

import numpy as np
from PIL import Image
from transformers import Pipeline
from transformers.pipelines.image_feature_extraction import ImageFeatureExtractionPipeline
from transformers.pipelines.mask_generation import MaskGenerationPipeline
from transformers.pipelines.zero_shot_image_classification import ZeroShotImageClassificationPipeline

from ._validation import check_class_names, check_score_threshold, check_templates, to_rgb_image
from .configuration_samclip import SamClipConfig
from .mask_generation_samclip import SamClipMaskGenerator, SamClipMaskGeneratorOptions
from .text_samclip import DEFAULT_TEMPLATES

SUBTASKS = ("semantic", "instance", "panoptic")
# How the semantic subtask paints its map; the first is the default (best measured on train mosaics, issue 19).
SEMANTIC_METHODS = ("instances", "plain", "refined")
# The mask generator's options this pipeline takes by name (background_threshold is one of its own arguments).
GENERATOR_OPTIONS = tuple(
    field.name for field in dataclasses.fields(SamClipMaskGeneratorOptions) if field.name != "background_threshold"
)


def _mask_image(region) -> Image.Image:
    return Image.fromarray(np.asarray(region, dtype=np.uint8) * 255, mode="L")


def _box(box) -> dict[str, int]:
    """A `(x_min, y_min, x_max, y_max)` box as transformers' detection pipelines return it."""
    xmin, ymin, xmax, ymax = (int(round(float(v))) for v in box)
    return {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax}


def is_samclip(model) -> bool:
    """Whether `model` is a SAM-CLIP model; by model type, not class: a model loaded with trust_remote_code has the
    Hub copy's class."""
    return getattr(getattr(model, "config", None), "model_type", None) == SamClipConfig.model_type


class _SamClipTaskPipeline:
    """Mixin for one of transformers' own pipeline classes: with a SAM-CLIP model and its `SamClipProcessor`
    (loaded from the folder, or passed as `processor=`), the pipeline's image processor is the processor's view for
    this task (`view`) and its tokenizer the processor's (a processor given wins over `image_processor=` and
    `tokenizer=`); images and the task's own arguments are checked by SAM-CLIP's validation layer first. Other
    models are served as transformers serves them."""

    view = "clip"
    # An exported folder holds the processor: load it, and take the view and the tokenizer from it.
    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        model, processor = kwargs.get("model", args[0] if args else None), kwargs.get("processor")
        if is_samclip(model) and processor is not None:
            views = {"clip": processor.clip_image_processor, "sam": processor.image_processor}
            kwargs["image_processor"] = views[self.view]
            kwargs["tokenizer"] = processor.tokenizer
        super().__init__(*args, **kwargs)
        if is_samclip(model) and self.image_processor is None:
            raise ValueError(
                f"The {self.task or 'pipeline'} pipeline needs SAM-CLIP's processor: pass processor=SamClipProcessor "
                "(e.g. AutoProcessor.from_pretrained(folder, trust_remote_code=True)), or model=<an exported folder>."
            )

    def check_model_type(self, supported_models):
        """transformers' check, except for a SAM-CLIP model: it serves this task without being in transformers'
        model mapping for it (remote code), which would log an error on every load."""
        if not is_samclip(self.model):
            super().check_model_type(supported_models)

    def preprocess(self, image, *args, **kwargs):
        if is_samclip(self.model):
            image = to_rgb_image(image, timeout=kwargs.get("timeout"))
        return super().preprocess(image, *args, **kwargs)


class SamClipZeroShotImageClassificationPipeline(_SamClipTaskPipeline, ZeroShotImageClassificationPipeline):
    """transformers' zero-shot image classification on the CLIP-path view, with `candidate_labels` (a list, or one
    comma-separated string) and `hypothesis_template` (one `{}`) checked first for a SAM-CLIP model."""

    def _sanitize_parameters(self, tokenizer_kwargs=None, **kwargs):
        if is_samclip(self.model):
            if "candidate_labels" in kwargs:
                kwargs["candidate_labels"] = check_class_names(kwargs["candidate_labels"] or [], "candidate_labels")
            if "hypothesis_template" in kwargs:
                check_templates(kwargs["hypothesis_template"], "hypothesis_template")
        return super()._sanitize_parameters(tokenizer_kwargs=tokenizer_kwargs, **kwargs)


class SamClipImageFeatureExtractionPipeline(_SamClipTaskPipeline, ImageFeatureExtractionPipeline):
    """transformers' image feature extraction on the CLIP-path view: the L2-normalised CLIP-head embedding."""


class SamClipMaskGenerationPipeline(_SamClipTaskPipeline, MaskGenerationPipeline):
    """transformers' mask generation ("segment everything") on the SAM view."""

    view = "sam"


class ZeroShotImageSegmentationPipeline(Pipeline):
    """Text-to-mask segmentation with a SAM-CLIP model. `subtask="semantic"` (default): one mask per class present,
    background as the entry `"background"`, painted by `method`: `"instances"` (default) the one-pass labelled masks
    (`SamClipMaskGenerator.semantic_segmentation_from_instances`), `"plain"` the CLIP head's dense features,
    `"refined"` (or `refine=True`) those refined by the SAM head;
    `"instance"`: every object SAM's automatic masks find, labelled from ONE encoder pass (`instance_segmentation`;
    `label_source="crops"` labels each mask's crop through the CLIP path instead); `"panoptic"`: those instances
    made non-overlapping. Any option of `SamClipMaskGeneratorOptions` may be passed by name (`points_per_side=4`).
    Returns, like transformers' image-segmentation pipeline, a list of `{"score", "label", "mask"}` dicts with PIL
    "L" masks (0/255) at the original image size; instances also carry their `box` (`{"xmin", "ymin", "xmax",
    "ymax"}` pixel edges)."""

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(
        self,
        candidate_labels=None,
        subtask=None,
        templates=None,
        refine=None,
        method=None,
        background_threshold=None,
        background_labels=None,
        timeout=None,
        **generator_options,
    ):
        unknown = sorted(set(generator_options) - set(GENERATOR_OPTIONS))
        if unknown:
            raise TypeError(
                f"Unexpected argument(s) {unknown}; this pipeline takes candidate_labels, subtask, templates, refine, "
                f"method, background_threshold, background_labels, timeout and the mask generator's options "
                f"{GENERATOR_OPTIONS}."
            )
        preprocess = {
            key: value
            for key, value in (
                ("candidate_labels", candidate_labels),
                ("subtask", subtask),
                ("refine", refine),
                ("method", method),
                ("timeout", timeout),
            )
            if value is not None
        }
        forward = dict(generator_options)
        if background_threshold is not None:
            forward["background_threshold"] = background_threshold
        SamClipMaskGeneratorOptions().replace(**forward)  # a bad value fails here, naming the option
        if templates is not None:
            forward["templates"] = check_templates(templates)
        if background_labels is not None:
            forward["background_labels"] = check_class_names(background_labels, "background_labels")
        return preprocess, forward, {}

    def __call__(self, image, candidate_labels=None, **kwargs):
        """Segment `image` (path, URL, PIL image, array or tensor) into `candidate_labels` (a list, or a
        comma-separated string); `templates` is one template string or a list, each with one `{}`."""
        return super().__call__(image, candidate_labels=candidate_labels, **kwargs)

    def preprocess(self, image, candidate_labels=None, subtask="semantic", refine=False, method=None, timeout=None):
        if subtask not in SUBTASKS:
            raise ValueError(f"subtask must be one of {SUBTASKS}, got {subtask!r}.")
        labels = check_class_names([] if candidate_labels is None else candidate_labels, "candidate_labels")
        if not isinstance(refine, bool):
            raise TypeError(f"refine must be True or False; got {refine!r}.")
        if method is None:
            method = "refined" if refine else SEMANTIC_METHODS[0]
        elif method not in SEMANTIC_METHODS or (refine and method != "refined"):
            raise ValueError(
                f"method must be one of {SEMANTIC_METHODS} (refine=True means 'refined'); got "
                f"method={method!r}, refine={refine!r}."
            )
        image = to_rgb_image(image, timeout=timeout)
        if min(image.size) < 2:
            raise ValueError(f"image is {image.size[0]}x{image.size[1]} pixels; give an image of at least 2x2 pixels.")
        view = "dense" if subtask == "semantic" and method == "plain" else "sam"
        inputs = self.processor(images=image, view=view)
        inputs.update(candidate_labels=labels, subtask=subtask, method=method)
        return inputs

    def _forward(self, model_inputs, templates=DEFAULT_TEMPLATES, background_labels=None, **generator_options):
        labels, subtask, method = (model_inputs.pop(key) for key in ("candidate_labels", "subtask", "method"))
        tokenizer = self.processor.tokenizer
        generator = SamClipMaskGenerator(self.model, **generator_options)
        class_embeds = self.model.encode_class_names(labels, tokenizer, templates)
        pixel_values = model_inputs["pixel_values"].to(self.model.dtype)
        sizes = {key: model_inputs[key] for key in ("original_sizes", "reshaped_input_sizes")}
        input_sizes = model_inputs["reshaped_input_sizes"].tolist()
        if subtask != "semantic":
            output = generator.instance_segmentation(pixel_values, class_embeds, input_sizes=input_sizes)
            return {"instances": output, "candidate_labels": labels, "subtask": subtask, **sizes}
        background_embeds = (
            self.model.encode_class_names(background_labels, tokenizer, templates) if background_labels else None
        )
        if method == "instances":
            output = generator.semantic_segmentation_from_instances(
                pixel_values, class_embeds, background_embeds=background_embeds, input_sizes=input_sizes
            )
        else:
            segment = (
                generator.semantic_segmentation_refined if method == "refined" else generator.semantic_segmentation
            )
            output = segment(pixel_values, class_embeds, background_embeds=background_embeds)
        return {"logits": output.logits, "candidate_labels": labels, "subtask": subtask, **sizes}

    def postprocess(self, model_outputs):
        labels = model_outputs["candidate_labels"]
        sizes = (model_outputs["original_sizes"], model_outputs["reshaped_input_sizes"])
        if model_outputs["subtask"] == "instance":
            (instances,) = self.processor.post_process_instance_segmentation(
                model_outputs["instances"], target_sizes=sizes[0], reshaped_input_sizes=sizes[1]
            )
            return [
                {"score": float(score), "label": labels[label], "box": _box(box), "mask": _mask_image(mask.numpy())}
                for score, label, box, mask in zip(
                    instances["scores"].tolist(), instances["labels"].tolist(), instances["boxes"], instances["masks"]
                )
            ]
        if model_outputs["subtask"] == "panoptic":
            (panoptic,) = self.processor.post_process_panoptic_segmentation(model_outputs["instances"], *sizes)
            segmentation = panoptic["segmentation"].numpy()
            return [
                {
                    "score": segment["score"],
                    "label": labels[segment["label_id"]],
                    "mask": _mask_image(segmentation == segment["id"]),
                }
                for segment in panoptic["segments_info"]
            ]
        (resized,) = self.processor.resize_semantic_logits(model_outputs["logits"].float(), *sizes)
        label_map, probabilities = resized.argmax(0), resized.softmax(0)
        segments = []
        for index, label in enumerate(["background", *labels]):
            region = label_map == index
            if region.any():
                segments.append(
                    {
                        "score": probabilities[index][region].mean().item(),
                        "label": label,
                        "mask": _mask_image(region.numpy()),
                    }
                )
        return segments


class SamClipZeroShotObjectDetectionPipeline(ZeroShotImageSegmentationPipeline):
    """Open-vocabulary detection from ONE encoder pass: the instances of `subtask="instance"` as boxes, in the output
    format of transformers' `zero-shot-object-detection` pipeline: a list of `{"score", "label", "box": {"xmin",
    "ymin", "xmax", "ymax"}}`, best score first, at the original image size. `threshold` (default 0.1, as
    transformers') drops instances scoring less (score: class probability times SAM's predicted IoU); `top_k` keeps
    that many; `templates` and the instance options of `zero-shot-image-segmentation` apply too."""

    def _sanitize_parameters(self, candidate_labels=None, threshold=None, top_k=None, **kwargs):
        if "subtask" in kwargs or "refine" in kwargs:
            raise TypeError("zero-shot-object-detection always finds instances; drop subtask= and refine=.")
        preprocess, forward, _ = super()._sanitize_parameters(candidate_labels=candidate_labels, **kwargs)
        postprocess = {}
        if threshold is not None:
            check_score_threshold(threshold)
            postprocess["threshold"] = threshold
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"top_k must be a positive integer or None; got {top_k!r}.")
            postprocess["top_k"] = top_k
        return preprocess, forward, postprocess

    def preprocess(self, image, candidate_labels=None, timeout=None):
        return super().preprocess(image, candidate_labels=candidate_labels, subtask="instance", timeout=timeout)

    def postprocess(self, model_outputs, threshold=0.1, top_k=None):
        labels = model_outputs["candidate_labels"]
        (instances,) = self.processor.post_process_instance_segmentation(
            model_outputs["instances"],
            threshold=threshold,
            target_sizes=model_outputs["original_sizes"],
            reshaped_input_sizes=model_outputs["reshaped_input_sizes"],
        )
        results = [
            {"score": score, "label": labels[label], "box": _box(box)}
            for score, label, box in zip(
                instances["scores"].tolist(), instances["labels"].tolist(), instances["boxes"]
            )
        ]
        return results[:top_k] if top_k else results


__all__ = [
    "SamClipImageFeatureExtractionPipeline",
    "SamClipMaskGenerationPipeline",
    "SamClipZeroShotImageClassificationPipeline",
    "SamClipZeroShotObjectDetectionPipeline",
    "ZeroShotImageSegmentationPipeline",
    "is_samclip",
]
