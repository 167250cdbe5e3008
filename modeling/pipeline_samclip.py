"""The `zero-shot-image-segmentation` pipeline: an image and class names in, labelled masks out (semantic, instance
or panoptic), in the output format of transformers' `image-segmentation` pipeline.

    from transformers import pipeline
    import transformers_samclip  # registers the task (an exported folder also declares it: trust_remote_code=True)
    segmenter = pipeline("zero-shot-image-segmentation", model="path/or/hub-id", trust_remote_code=True)
    segments = segmenter(image, candidate_labels=["cat", "dog"], subtask="instance")

Ships beside the model code (imports only torch, transformers, numpy and PIL), so that an exported folder serves it
as a custom pipeline without this package installed.
"""

import numpy as np
from PIL import Image
from transformers import Pipeline

from ._validation import check_class_names, check_templates, check_threshold, to_rgb_image
from .modeling_samclip import DEFAULT_TEMPLATES

SUBTASKS = ("semantic", "instance", "panoptic")
# How the semantic subtask paints its map; the first is the default (best measured on train mosaics, issue 19).
SEMANTIC_METHODS = ("instances", "plain", "refined")
INSTANCE_OPTIONS = (
    "points_per_side", "pred_iou_threshold", "stability_threshold", "nms_threshold", "mask_pooling", "label_source",
    "prompts", "num_peaks", "score_threshold",
)


def _mask_image(region) -> Image.Image:
    return Image.fromarray(np.asarray(region, dtype=np.uint8) * 255, mode="L")


class ZeroShotImageSegmentationPipeline(Pipeline):
    """Text-to-mask segmentation with a SAM-CLIP model. `subtask="semantic"` (default): one mask per class present,
    background as the entry `"background"`, painted by `method`: `"instances"` (default) the one-pass labelled masks
    (`semantic_segmentation_from_instances`), `"plain"` the CLIP head's dense features, `"refined"` (or
    `refine=True`) those refined by the SAM head;
    `"instance"`: every object SAM's automatic masks find, labelled from ONE encoder pass (`instance_segmentation`;
    `label_source="crops"` labels each mask's crop through the CLIP path instead); `"panoptic"`: those instances
    made non-overlapping. Returns, like transformers' image-segmentation pipeline, a
    list of `{"score", "label", "mask"}` dicts with PIL "L" masks (0/255) at the original image size."""

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(self, candidate_labels=None, subtask=None, templates=None, refine=None, method=None,
                             background_threshold=None, background_labels=None, timeout=None, **instance_options):
        unknown = sorted(set(instance_options) - set(INSTANCE_OPTIONS))
        if unknown:
            raise TypeError(f"Unexpected argument(s) {unknown}; this pipeline takes candidate_labels, subtask, "
                            f"templates, refine, method, background_threshold, background_labels, timeout and {INSTANCE_OPTIONS}.")
        preprocess = {key: value for key, value in (("candidate_labels", candidate_labels), ("subtask", subtask),
                                                    ("refine", refine), ("method", method), ("timeout", timeout))
                      if value is not None}
        forward = dict(instance_options)
        if templates is not None:
            forward["templates"] = check_templates(templates)
        if background_threshold is not None:
            check_threshold(background_threshold)
            forward["background_threshold"] = background_threshold
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
            raise ValueError(f"method must be one of {SEMANTIC_METHODS} (refine=True means 'refined'); got "
                             f"method={method!r}, refine={refine!r}.")
        image = to_rgb_image(image, timeout=timeout)
        if min(image.size) < 2:
            raise ValueError(f"image is {image.size[0]}x{image.size[1]} pixels; give an image of at least 2x2 pixels.")
        view = "dense" if subtask == "semantic" and method == "plain" else "sam"
        inputs = self.processor(images=image, view=view)
        inputs.update(candidate_labels=labels, subtask=subtask, method=method)
        return inputs

    def _forward(self, model_inputs, templates=DEFAULT_TEMPLATES, background_threshold=None, background_labels=None,
                 **instance_options):
        labels, subtask, method = (model_inputs.pop(key) for key in ("candidate_labels", "subtask", "method"))
        tokenizer = self.processor.tokenizer
        class_embeds = self.model.encode_class_names(labels, tokenizer, templates)
        pixel_values = model_inputs["pixel_values"].to(self.model.dtype)
        sizes = {key: model_inputs[key] for key in ("original_sizes", "reshaped_input_sizes")}
        if subtask != "semantic":
            output = self.model.instance_segmentation(
                pixel_values, class_embeds, background_threshold=background_threshold,
                input_sizes=model_inputs["reshaped_input_sizes"].tolist(), **instance_options,
            )
            return {"instances": output, "candidate_labels": labels, "subtask": subtask, **sizes}
        background_embeds = self.model.encode_class_names(background_labels, tokenizer, templates) if background_labels else None
        if method == "instances":
            output = self.model.semantic_segmentation_from_instances(
                pixel_values, class_embeds, background_embeds=background_embeds,
                background_threshold=background_threshold, input_sizes=model_inputs["reshaped_input_sizes"].tolist(),
                **instance_options,
            )
        else:
            segment = self.model.semantic_segmentation_refined if method == "refined" else self.model.semantic_segmentation
            output = segment(pixel_values, class_embeds, background_embeds=background_embeds,
                             background_threshold=background_threshold)
        return {"logits": output.logits, "candidate_labels": labels, "subtask": subtask, **sizes}

    def postprocess(self, model_outputs):
        labels = model_outputs["candidate_labels"]
        sizes = (model_outputs["original_sizes"], model_outputs["reshaped_input_sizes"])
        if model_outputs["subtask"] == "instance":
            (instances,) = self.processor.post_process_instance_segmentation(model_outputs["instances"], *sizes)
            return [{"score": float(score), "label": labels[class_id], "mask": _mask_image(mask.numpy())}
                    for mask, class_id, score in zip(instances["masks"], instances["class_ids"].tolist(),
                                                     instances["scores"].tolist())]
        if model_outputs["subtask"] == "panoptic":
            (panoptic,) = self.processor.post_process_panoptic_segmentation(model_outputs["instances"], *sizes)
            segmentation = panoptic["segmentation"].numpy()
            return [{"score": segment["score"], "label": labels[segment["label_id"]],
                     "mask": _mask_image(segmentation == segment["id"])} for segment in panoptic["segments_info"]]
        (resized,) = self.processor.resize_semantic_logits(model_outputs["logits"].float(), *sizes)
        label_map, probabilities = resized.argmax(0), resized.softmax(0)
        segments = []
        for index, label in enumerate(["background", *labels]):
            region = label_map == index
            if region.any():
                segments.append({"score": probabilities[index][region].mean().item(), "label": label,
                                 "mask": _mask_image(region.numpy())})
        return segments


__all__ = ["ZeroShotImageSegmentationPipeline"]
