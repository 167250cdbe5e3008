"""SAM-CLIP's pipelines for model objects: `zero-shot-image-segmentation` (subtask semantic / instance / panoptic) and
its older name `zero-shot-semantic-segmentation` are new task names, registered with transformers when this package
is imported; for transformers' own tasks, `SAMCLIP_PIPELINES` names the class that serves a SAM-CLIP model, passed
as `pipeline_class=` (transformers' registry entries for its own tasks are left as they are):

    from transformers import pipeline
    from transformers_samclip import SAMCLIP_PIPELINES  # importing the package registers the new tasks
    segmenter = pipeline("zero-shot-image-segmentation", model=model, processor=processor)
    segments = segmenter(image, candidate_labels=["cat", "dog"], subtask="instance")
    task = "zero-shot-image-classification"
    classifier = pipeline(task, model=model, processor=processor, pipeline_class=SAMCLIP_PIPELINES[task])

Each of transformers' tasks takes the view it needs (CLIP path or SAM) from `processor=` and checks its inputs with
SAM-CLIP's validation layer. The classes live in the model code (`modeling/pipeline_samclip.py`) so that an exported
folder serves every task without this package and without `pipeline_class=` (`custom_pipelines` in its
config.json, which transformers reads for a folder or Hub id).
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
    """`samclip_class` as a `pipeline_class=` for a model object or folder: it tries to load what transformers' own
    class loads, and the processor (a SAM-CLIP folder saved without `custom_pipelines` then still gets its task's
    view). Tried, not required, so that a model object given with `processor=` alone, or with `image_processor=` and
    `tokenizer=`, is served too."""
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

# The class that serves a SAM-CLIP model object, per task: pass it as `pipeline(task, ..., pipeline_class=...)`.
SAMCLIP_PIPELINES = {
    **dict.fromkeys(PIPELINE_TASKS, ZeroShotImageSegmentationPipeline),
    "zero-shot-image-classification": SamClipZeroShotImageClassificationPipeline,
    "mask-generation": SamClipMaskGenerationPipeline,
    "image-feature-extraction": SamClipImageFeatureExtractionPipeline,
    "zero-shot-object-detection": SamClipZeroShotObjectDetectionPipeline,
}

__all__ = [
    "EXPORTED_PIPELINES",
    "PIPELINE_TASKS",
    "SAMCLIP_PIPELINES",
    "SamClipImageFeatureExtractionPipeline",
    "SamClipMaskGenerationPipeline",
    "SamClipZeroShotImageClassificationPipeline",
    "SamClipZeroShotObjectDetectionPipeline",
    "ZeroShotImageSegmentationPipeline",
    "ZeroShotSemanticSegmentationPipeline",
]
