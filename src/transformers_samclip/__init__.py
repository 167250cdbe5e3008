"""transformers-samclip: SAM-CLIP for Hugging Face transformers.

Importing the package registers SAM-CLIP with transformers' Auto classes and its new pipeline tasks (transformers'
own tasks are left as they are: `SAMCLIP_PIPELINES` holds the `pipeline_class=` for a SAM-CLIP model object), and
marks the model classes for remote code so that every `save_pretrained` folder also loads with
`trust_remote_code=True`.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForMaskGeneration,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)

from .modeling import *  # noqa: F403  (the model classes, defined once in modeling/)
from .modeling import SamClipConfig, SamClipHeadConfig, SamClipImageProcessor, SamClipModel, SamClipProcessor
from .modeling import __all__ as _model_names

__version__ = "0.1.0"


def _register() -> None:
    AutoConfig.register(SamClipConfig.model_type, SamClipConfig, exist_ok=True)
    AutoConfig.register(SamClipHeadConfig.model_type, SamClipHeadConfig, exist_ok=True)
    for auto_class in (AutoModel, AutoModelForZeroShotImageClassification, AutoModelForMaskGeneration):
        auto_class.register(SamClipConfig, SamClipModel, exist_ok=True)
    AutoImageProcessor.register(SamClipConfig, image_processor_classes={"pil": SamClipImageProcessor}, exist_ok=True)
    AutoProcessor.register(SamClipConfig, SamClipProcessor, exist_ok=True)
    SamClipConfig.register_for_auto_class()
    SamClipModel.register_for_auto_class("AutoModel")
    SamClipImageProcessor.register_for_auto_class("AutoImageProcessor")
    SamClipProcessor.register_for_auto_class("AutoProcessor")


_register()

from .pipelines import (  # noqa: E402  (registers the new pipeline tasks)
    SAMCLIP_PIPELINES,
    ZeroShotImageSegmentationPipeline,
    ZeroShotSemanticSegmentationPipeline,
)

__all__ = [
    *_model_names,
    "SAMCLIP_PIPELINES",
    "ZeroShotImageSegmentationPipeline",
    "ZeroShotSemanticSegmentationPipeline",
]
