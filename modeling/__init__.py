"""SAM-CLIP model definition (config, model, processor). Self-contained: it ships to the Hub as remote code."""

from .configuration_samclip import SAMCLIP_PRESETS, SamClipConfig, SamClipHeadConfig, samclip_config_from_preset
from .modeling_samclip import (
    DEFAULT_TEMPLATES,
    SamClipModel,
    SamClipOutput,
    SamClipPreTrainedModel,
    SamClipSemanticSegmentationOutput,
    encode_class_names,
)
from .processing_samclip import SamClipImageProcessor, SamClipProcessor

__all__ = [
    "DEFAULT_TEMPLATES",
    "SAMCLIP_PRESETS",
    "SamClipConfig",
    "SamClipHeadConfig",
    "SamClipModel",
    "SamClipOutput",
    "SamClipPreTrainedModel",
    "SamClipImageProcessor",
    "SamClipProcessor",
    "SamClipSemanticSegmentationOutput",
    "encode_class_names",
    "samclip_config_from_preset",
]
