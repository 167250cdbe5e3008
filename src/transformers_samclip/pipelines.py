"""Registers SAM-CLIP's pipelines with transformers when this package is imported: `zero-shot-image-segmentation`
(subtask semantic / instance / panoptic) and its older name `zero-shot-semantic-segmentation`.

    from transformers import pipeline
    import transformers_samclip  # registers the tasks
    segmenter = pipeline("zero-shot-image-segmentation", model=model, processor=processor)
    segments = segmenter(image, candidate_labels=["cat", "dog"], subtask="instance")

The classes live in the model code (`modeling/pipeline_samclip.py`) so that an exported folder serves every task
without this package (`custom_pipelines` in its config.json, which transformers prefers for a folder or Hub id).

Importing this module also makes transformers' `zero-shot-image-classification`, `mask-generation` and
`image-feature-extraction` pipelines serve a SAM-CLIP model object given with `processor=` (each takes the view its
task needs from it) and check their inputs with SAM-CLIP's validation layer; other models are served unchanged.
`zero-shot-object-detection` keeps transformers' class for other models: for a SAM-CLIP model object pass
`pipeline_class=SamClipZeroShotObjectDetectionPipeline`, or give the exported folder.
"""

from transformers import AutoModel
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.image_feature_extraction import ImageFeatureExtractionPipeline
from transformers.pipelines.mask_generation import MaskGenerationPipeline
from transformers.pipelines.zero_shot_image_classification import ZeroShotImageClassificationPipeline

from .modeling import pipeline_samclip
from .modeling.pipeline_samclip import SamClipZeroShotObjectDetectionPipeline, ZeroShotImageSegmentationPipeline

PIPELINE_TASKS = ("zero-shot-image-segmentation", "zero-shot-semantic-segmentation")
# The older name keeps working: the same pipeline, whose default subtask is "semantic".
ZeroShotSemanticSegmentationPipeline = ZeroShotImageSegmentationPipeline
# What an exported folder declares in `custom_pipelines`: each task name and the class that serves it there.
EXPORTED_PIPELINES = {
    **dict.fromkeys(PIPELINE_TASKS, ZeroShotImageSegmentationPipeline),
    "zero-shot-image-classification": pipeline_samclip.SamClipZeroShotImageClassificationPipeline,
    "image-feature-extraction": pipeline_samclip.SamClipImageFeatureExtractionPipeline,
    "mask-generation": pipeline_samclip.SamClipMaskGenerationPipeline,
    "zero-shot-object-detection": SamClipZeroShotObjectDetectionPipeline,
}
LOAD_FLAGS = ("_load_processor", "_load_image_processor", "_load_feature_extractor", "_load_tokenizer")

for _task in PIPELINE_TASKS:
    PIPELINE_REGISTRY.register_pipeline(
        _task, pipeline_class=ZeroShotImageSegmentationPipeline, pt_model=AutoModel, type="multimodal"
    )


def _serving_every_model(samclip_class, transformers_class):
    """`samclip_class` registered for a task serves every model of that task: it tries to load what transformers'
    own class loads, and the processor (a SAM-CLIP folder saved without `custom_pipelines` then still gets its
    task's view; a CLIP checkpoint keeps its image processor and tokenizer). Tried, not required, so that a model
    object given with `processor=` alone is served too."""
    flags = {
        flag: None if getattr(transformers_class, flag) or flag == "_load_processor" else False for flag in LOAD_FLAGS
    }
    return type(
        samclip_class.__name__, (samclip_class,), {**flags, "__doc__": samclip_class.__doc__, "__module__": __name__}
    )


SamClipZeroShotImageClassificationPipeline = _serving_every_model(
    pipeline_samclip.SamClipZeroShotImageClassificationPipeline, ZeroShotImageClassificationPipeline
)
SamClipMaskGenerationPipeline = _serving_every_model(
    pipeline_samclip.SamClipMaskGenerationPipeline, MaskGenerationPipeline
)
SamClipImageFeatureExtractionPipeline = _serving_every_model(
    pipeline_samclip.SamClipImageFeatureExtractionPipeline, ImageFeatureExtractionPipeline
)

# The task entries keep transformers' model classes and defaults; only the class that serves them changes.
for _task, _pipeline_class in (
    ("zero-shot-image-classification", SamClipZeroShotImageClassificationPipeline),
    ("mask-generation", SamClipMaskGenerationPipeline),
    ("image-feature-extraction", SamClipImageFeatureExtractionPipeline),
):
    PIPELINE_REGISTRY.supported_tasks[_task]["impl"] = _pipeline_class

__all__ = [
    "EXPORTED_PIPELINES",
    "PIPELINE_TASKS",
    "SamClipImageFeatureExtractionPipeline",
    "SamClipMaskGenerationPipeline",
    "SamClipZeroShotImageClassificationPipeline",
    "SamClipZeroShotObjectDetectionPipeline",
    "ZeroShotImageSegmentationPipeline",
    "ZeroShotSemanticSegmentationPipeline",
]
