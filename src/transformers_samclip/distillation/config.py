"""`SamClipDistillationConfig`: one stage's settings as a `TrainingArguments` subclass (after TRL's
`GKDConfig(SFTConfig)`), so that `HfArgumentParser` reads a stage from YAML or the command line and a recipe stage
maps onto it (`SamClipDistillationConfig.from_recipe`).

A stage alone, from YAML::

    from transformers import HfArgumentParser
    (config,) = HfArgumentParser(SamClipDistillationConfig).parse_yaml_file("stage2.yaml")
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments

from .recipe import STAGES, LossWeights, Recipe, Stage, _choice, _number, _sizes, as_recipe, is_streaming

# Settings of a run that a recipe leaves to the code (a stage's training_args override them).
RUN_DEFAULTS = dict(save_strategy="steps", save_total_limit=2, logging_first_step=True, dataloader_num_workers=0)


@dataclass
class SamClipDistillationConfig(TrainingArguments):
    """`TrainingArguments` of one distillation stage, plus what the stage trains and how.

    Args:
        stage: `head_probing`, `distillation` or `resolution_adaptation` (see `recipe.Stage`).
        sam_loss_weight, focal_weight, dice_weight, iou_weight, distill_single_mask, region_weight, region_target,
            region_background, relational_weight, relational_temperature, relational_bank_size: the loss settings
            (`recipe.LossWeights`, whose defaults these are; `losses` gives them as one object).
        sam_batch_size: D_SAM images per step (stages that need D_SAM batches).
        encoder_lr_scale: LR multiplier of the shared encoder and the SAM head (stage 2).
        clip_sizes: CLIP input sizes drawn per batch (None: the model's `clip_size`).
        teacher_cache: cache the teachers' outputs on disk (map-style data only).
        teacher_cache_dir: where the cache lives (None: `output_dir/../teacher-cache`, shared by the stages).
        student_token_cache: in stages that keep the encoder frozen, cache its trunk tokens of the student's views
            beside the teacher outputs, so that only the CLIP head runs (see `run.student_token_cache_off`).
    """

    stage: str = field(default="distillation", metadata={"help": f"one of {list(STAGES)}"})
    sam_loss_weight: float = field(default=LossWeights.sam_loss_weight, metadata={"help": "lambda of L_SAM"})
    focal_weight: float = field(default=LossWeights.focal_weight, metadata={"help": "focal weight in L_SAM"})
    dice_weight: float = field(default=LossWeights.dice_weight, metadata={"help": "dice weight in L_SAM"})
    iou_weight: float = field(default=LossWeights.iou_weight, metadata={"help": "IoU-head MSE weight in L_SAM"})
    distill_single_mask: bool = field(
        default=LossWeights.distill_single_mask, metadata={"help": "also distill the single-mask output"}
    )
    region_weight: float = field(default=LossWeights.region_weight, metadata={"help": "weight of L_region"})
    region_target: str = field(
        default=LossWeights.region_target, metadata={"help": "teacher view of a region: crop or masked_crop"}
    )
    region_background: bool = field(
        default=LossWeights.region_background, metadata={"help": "the background as one more region per image"}
    )
    relational_weight: float = field(
        default=LossWeights.relational_weight, metadata={"help": "weight of L_relational"}
    )
    relational_temperature: float = field(
        default=LossWeights.relational_temperature, metadata={"help": "softmax temperature of L_relational"}
    )
    relational_bank_size: int = field(
        default=LossWeights.relational_bank_size,
        metadata={"help": "teacher embeddings of earlier steps L_relational ranks"},
    )
    sam_batch_size: int = field(default=Stage.sam_batch_size, metadata={"help": "D_SAM images per step"})
    encoder_lr_scale: float = field(
        default=Stage.encoder_lr_scale, metadata={"help": "LR multiplier of the shared encoder and SAM head"}
    )
    clip_sizes: list[int] | None = field(default=None, metadata={"help": "CLIP input sizes drawn per batch"})
    teacher_cache: bool = field(default=True, metadata={"help": "cache teacher outputs on disk"})
    teacher_cache_dir: str | None = field(default=None, metadata={"help": "teacher-output cache folder"})
    student_token_cache: bool = field(
        default=False, metadata={"help": "cache the frozen encoder's trunk tokens in head-only stages"}
    )
    # The collator's batches are dicts of named tensors the model's forward reads; none may be dropped.
    remove_unused_columns: bool = False

    def __post_init__(self):
        _choice("stage", self.stage, STAGES)
        for name, value in dataclasses.asdict(self.losses).items():  # validated, naming the field; ints as floats
            setattr(self, name, value)
        _number("sam_batch_size", self.sam_batch_size, minimum=1, integer=True)
        self.encoder_lr_scale = _number("encoder_lr_scale", self.encoder_lr_scale, minimum=0)
        _sizes("clip_sizes", self.clip_sizes)
        super().__post_init__()

    @property
    def losses(self) -> LossWeights:
        """The loss weights as one `LossWeights` (what `SamClipDistillationModule` takes)."""
        return LossWeights(
            sam_loss_weight=self.sam_loss_weight,
            focal_weight=self.focal_weight,
            dice_weight=self.dice_weight,
            iou_weight=self.iou_weight,
            distill_single_mask=self.distill_single_mask,
            region_weight=self.region_weight,
            region_target=self.region_target,
            region_background=self.region_background,
            relational_weight=self.relational_weight,
            relational_temperature=self.relational_temperature,
            relational_bank_size=self.relational_bank_size,
        )

    @classmethod
    def from_recipe(
        cls,
        recipe: Recipe | dict | str,
        index: int,
        output_dir,
        *,
        seed: int = 0,
        max_steps: int | None = None,
        cache_dir=None,
        **overrides,
    ) -> "SamClipDistillationConfig":
        """Stage `index` of `recipe` in the run folder `output_dir` (the stage writes to
        `output_dir/stage{index + 1}-{stage}`): its `training_args` over `RUN_DEFAULTS`, the recipe's losses and
        teacher cache, its sizes (else `data.clip`'s `clip_sizes`); `max_steps` overrides the stage's, `overrides`
        set any field last."""
        import torch

        recipe = as_recipe(recipe)
        stage = recipe.stages[index]
        clip_sizes = stage.clip_sizes
        if clip_sizes is None and isinstance(recipe.data.clip, dict):
            clip_sizes = recipe.data.clip.get("clip_sizes")
        output_dir = Path(output_dir)
        values = dict(RUN_DEFAULTS, use_cpu=not torch.cuda.is_available(), report_to=[], seed=seed)
        if is_streaming(recipe.data.clip):
            # Each rank reads its own part of the stream (run._wrap); the main process must not dispatch batches.
            values["accelerator_config"] = {"dispatch_batches": False}
        values.update(stage.training_args)
        if max_steps is not None:
            values["max_steps"] = max_steps
        values.update(
            output_dir=str(output_dir / f"stage{index + 1}-{stage.stage}"),
            stage=stage.stage,
            sam_batch_size=stage.sam_batch_size,
            encoder_lr_scale=stage.encoder_lr_scale,
            clip_sizes=list(clip_sizes) if clip_sizes else None,
            teacher_cache=recipe.teacher_cache,
            student_token_cache=recipe.student_token_cache,
            teacher_cache_dir=str(cache_dir or output_dir / "teacher-cache"),
            **dataclasses.asdict(recipe.losses),
        )
        values.update(overrides)
        return cls(**values)
