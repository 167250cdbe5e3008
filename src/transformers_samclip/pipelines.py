"""Registers SAM-CLIP's pipeline with transformers when this package is imported: `zero-shot-image-segmentation`
(subtask semantic / instance / panoptic) and its older name `zero-shot-semantic-segmentation`.

    from transformers import pipeline
    import transformers_samclip  # registers the tasks
    segmenter = pipeline("zero-shot-image-segmentation", model="path/or/hub-id", trust_remote_code=True)
    segments = segmenter(image, candidate_labels=["cat", "dog"], subtask="instance")

The class lives in the model code (`modeling/pipeline_samclip.py`) so that an exported folder serves it without this
package (`custom_pipelines` in its config.json).
"""

from transformers import AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

from .modeling.pipeline_samclip import ZeroShotImageSegmentationPipeline

PIPELINE_TASKS = ("zero-shot-image-segmentation", "zero-shot-semantic-segmentation")
# The older name keeps working: the same pipeline, whose default subtask is "semantic".
ZeroShotSemanticSegmentationPipeline = ZeroShotImageSegmentationPipeline

for _task in PIPELINE_TASKS:
    PIPELINE_REGISTRY.register_pipeline(
        _task, pipeline_class=ZeroShotImageSegmentationPipeline, pt_model=AutoModel, type="multimodal"
    )

__all__ = ["PIPELINE_TASKS", "ZeroShotImageSegmentationPipeline", "ZeroShotSemanticSegmentationPipeline"]
