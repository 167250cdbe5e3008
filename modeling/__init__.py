"""SAM-CLIP model definition (config, model, processor, mask generator). Self-contained: it ships to the Hub as
remote code."""

from .configuration_samclip import (
    DENSE_READOUTS,
    SAMCLIP_PRESETS,
    SamClipConfig,
    SamClipHeadConfig,
    samclip_config_from_preset,
)
from .dense_readout_samclip import trunk_affinity
from .mask_generation_samclip import (
    SamClipInstanceSegmentationOutput,
    SamClipMaskGenerator,
    SamClipMaskGeneratorOptions,
    SamClipSemanticSegmentationOutput,
    grid_points,
    mask_padding,
    mask_pooled_tokens,
    mask_region_features,
    mask_token_weights,
    peak_points,
    select_generated_masks,
    suppress_contained,
)
from .modeling_samclip import SamClipModel, SamClipOutput, SamClipPreTrainedModel
from .processing_samclip import SamClipImageProcessor, SamClipProcessor
from .text_samclip import DEFAULT_TEMPLATES, encode_class_names

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
    "mask_region_features",
    "mask_token_weights",
    "peak_points",
    "samclip_config_from_preset",
    "select_generated_masks",
    "suppress_contained",
    "trunk_affinity",
]
