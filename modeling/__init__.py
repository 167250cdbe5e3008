"""SAM-CLIP model definition (config, model, processor). Self-contained: it ships to the Hub as remote code."""

from .configuration_samclip import (
    DENSE_READOUTS,
    SAMCLIP_PRESETS,
    SamClipConfig,
    SamClipHeadConfig,
    samclip_config_from_preset,
)
from .modeling_samclip import (
    DEFAULT_TEMPLATES,
    SamClipInstanceSegmentationOutput,
    SamClipModel,
    SamClipOutput,
    SamClipPreTrainedModel,
    SamClipSemanticSegmentationOutput,
    encode_class_names,
    grid_points,
    mask_padding,
    mask_pooled_tokens,
    mask_token_weights,
    peak_points,
    select_generated_masks,
    trunk_affinity,
)
from .processing_samclip import SamClipImageProcessor, SamClipProcessor

__all__ = [
    "DEFAULT_TEMPLATES",
    "DENSE_READOUTS",
    "SAMCLIP_PRESETS",
    "SamClipConfig",
    "SamClipHeadConfig",
    "SamClipInstanceSegmentationOutput",
    "SamClipModel",
    "SamClipOutput",
    "SamClipPreTrainedModel",
    "SamClipImageProcessor",
    "SamClipProcessor",
    "SamClipSemanticSegmentationOutput",
    "encode_class_names",
    "grid_points",
    "mask_padding",
    "mask_pooled_tokens",
    "mask_token_weights",
    "peak_points",
    "samclip_config_from_preset",
    "select_generated_masks",
    "trunk_affinity",
]
