"""SAM-CLIP distillation: the recipe (typed, validated, overridable), losses, prompt sampler, data, teacher-output
cache, the multi-stage trainer and the `samclip distill` command (see SAM-CLIP.md sections 3-4)."""

from .annotations import (
    decode_rle,
    encode_rle,
    is_rle,
    load_coco_instances,
    load_sa1b,
    polygons_to_mask,
    rle_area,
)
from .cache import TeacherOutputCache, fingerprint, fingerprint_model
from .config import SamClipDistillationConfig
from .data import (
    DistillationImageDataset,
    IterableDistillationImageDataset,
    PairedDataset,
    PairedIterableDataset,
    SamClipDistillationCollator,
    background_mask,
    decode_image,
    decode_mask,
    region_frame_mask,
)
from .losses import (
    clip_distillation_loss,
    dice_loss,
    relational_distillation_loss,
    sam_distillation_loss,
    sigmoid_focal_loss,
)
from .prompts import PromptSampler, SamPrompts
from .recipe import (
    STAGES,
    Data,
    HeadSpec,
    LoraSpec,
    LossWeights,
    ModelSpec,
    Prompts,
    Recipe,
    Stage,
    Teachers,
    as_recipe,
    load_recipe,
    parse_override,
)
from .trainer import (
    SamClipDistillationModule,
    SamClipDistillationTrainer,
    configure_trainable,
)

__all__ = [
    "STAGES",
    "Data",
    "DistillationImageDataset",
    "HeadSpec",
    "IterableDistillationImageDataset",
    "LoraSpec",
    "LossWeights",
    "ModelSpec",
    "PairedDataset",
    "PairedIterableDataset",
    "PromptSampler",
    "Prompts",
    "Recipe",
    "SamClipDistillationCollator",
    "SamClipDistillationConfig",
    "SamClipDistillationModule",
    "SamClipDistillationTrainer",
    "SamPrompts",
    "Stage",
    "TeacherOutputCache",
    "Teachers",
    "as_recipe",
    "clip_distillation_loss",
    "configure_trainable",
    "decode_image",
    "decode_mask",
    "decode_rle",
    "dice_loss",
    "encode_rle",
    "is_rle",
    "fingerprint",
    "fingerprint_model",
    "load_coco_instances",
    "load_recipe",
    "load_sa1b",
    "parse_override",
    "relational_distillation_loss",
    "polygons_to_mask",
    "background_mask",
    "region_frame_mask",
    "rle_area",
    "sam_distillation_loss",
    "sigmoid_focal_loss",
]
