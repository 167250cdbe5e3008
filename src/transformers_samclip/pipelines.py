"""Registers SAM-CLIP's pipeline with transformers when this package is imported: `zero-shot-image-segmentation`
(subtask semantic / instance / panoptic) and its older name `zero-shot-semantic-segmentation`.

    from transformers import pipeline
    import transformers_samclip  # registers the tasks
    segmenter = pipeline("zero-shot-image-segmentation", model="path/or/hub-id", trust_remote_code=True)
    segments = segmenter(image, candidate_labels=["cat", "dog"], subtask="instance")

The class lives in the model code (`modeling/pipeline_samclip.py`) so that an exported folder serves it without this
package (`custom_pipelines` in its config.json).

Importing this module also makes transformers' `zero-shot-image-classification`, `mask-generation` and
`image-feature-extraction` pipelines check their inputs with SAM-CLIP's validation layer when they serve a SAM-CLIP
model (images of every kind, candidate labels, the hypothesis template); other models are served unchanged.
"""

from transformers import AutoModel
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.image_feature_extraction import ImageFeatureExtractionPipeline
from transformers.pipelines.mask_generation import MaskGenerationPipeline
from transformers.pipelines.zero_shot_image_classification import ZeroShotImageClassificationPipeline

from .modeling import SamClipConfig
from .modeling._validation import check_class_names, check_templates, to_rgb_image
from .modeling.pipeline_samclip import ZeroShotImageSegmentationPipeline

PIPELINE_TASKS = ("zero-shot-image-segmentation", "zero-shot-semantic-segmentation")
# The older name keeps working: the same pipeline, whose default subtask is "semantic".
ZeroShotSemanticSegmentationPipeline = ZeroShotImageSegmentationPipeline

for _task in PIPELINE_TASKS:
    PIPELINE_REGISTRY.register_pipeline(
        _task, pipeline_class=ZeroShotImageSegmentationPipeline, pt_model=AutoModel, type="multimodal"
    )



class _SamClipInputs:
    """Checks a transformers pipeline's image (and its own arguments) with SAM-CLIP's validation layer before the
    pipeline's preprocessing, when the model is a SAM-CLIP model."""

    def _checks(self) -> bool:
        # By model type, not class: a model loaded with trust_remote_code has the Hub copy's class.
        return getattr(self.model.config, "model_type", None) == SamClipConfig.model_type

    def preprocess(self, image, *args, **kwargs):
        if self._checks():
            image = to_rgb_image(image, timeout=kwargs.get("timeout"))
        return super().preprocess(image, *args, **kwargs)


class SamClipZeroShotImageClassificationPipeline(_SamClipInputs, ZeroShotImageClassificationPipeline):
    """transformers' zero-shot image classification, with `candidate_labels` (a list, or one comma-separated
    string) and `hypothesis_template` (one `{}`) checked first for a SAM-CLIP model."""

    def _sanitize_parameters(self, tokenizer_kwargs=None, **kwargs):
        if self._checks():
            if "candidate_labels" in kwargs:
                kwargs["candidate_labels"] = check_class_names(kwargs["candidate_labels"] or [], "candidate_labels")
            if "hypothesis_template" in kwargs:
                check_templates(kwargs["hypothesis_template"], "hypothesis_template")
        return super()._sanitize_parameters(tokenizer_kwargs=tokenizer_kwargs, **kwargs)


class SamClipMaskGenerationPipeline(_SamClipInputs, MaskGenerationPipeline):
    """transformers' mask generation, with the image checked first for a SAM-CLIP model."""


class SamClipImageFeatureExtractionPipeline(_SamClipInputs, ImageFeatureExtractionPipeline):
    """transformers' image feature extraction, with the image checked first for a SAM-CLIP model."""


# The task entries keep transformers' model classes and defaults; only the class that serves them changes.
for _task, _pipeline_class in (
    ("zero-shot-image-classification", SamClipZeroShotImageClassificationPipeline),
    ("mask-generation", SamClipMaskGenerationPipeline),
    ("image-feature-extraction", SamClipImageFeatureExtractionPipeline),
):
    PIPELINE_REGISTRY.supported_tasks[_task]["impl"] = _pipeline_class

__all__ = [
    "PIPELINE_TASKS",
    "SamClipImageFeatureExtractionPipeline",
    "SamClipMaskGenerationPipeline",
    "SamClipZeroShotImageClassificationPipeline",
    "ZeroShotImageSegmentationPipeline",
    "ZeroShotSemanticSegmentationPipeline",
]
