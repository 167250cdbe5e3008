"""SAM-CLIP model definition (config, model, processor, mask generator). Self-contained: it ships to the Hub as
remote code."""

from .configuration_samclip import (
    DENSE_READOUTS,
    SAMCLIP_PRESETS,
    SamClipConfig,
    SamClipHeadConfig,
    samclip_config_from_preset,
)
from .mask_generation_samclip import (
    SamClipInstanceSegmentationOutput,
    SamClipMaskGenerator,
    SamClipMaskGeneratorOptions,
    SamClipSemanticSegmentationOutput,
    grid_points,
    mask_padding,
    mask_pooled_tokens,
    mask_token_weights,
    peak_points,
    select_generated_masks,
)
from .modeling_samclip import (
    DEFAULT_TEMPLATES,
    SamClipModel,
    SamClipOutput,
    SamClipPreTrainedModel,
    encode_class_names,
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
    "SamClipMaskGenerator",
    "SamClipMaskGeneratorOptions",
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
