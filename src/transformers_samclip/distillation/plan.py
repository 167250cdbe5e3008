"""What a recipe will cost, before it runs (`samclip distill --recipe R --plan`): samples and optimizer steps per
epoch and stage (Trainer's own arithmetic), per-step FLOPs of the student and the teachers (counted by
`torch.utils.flop_counter.FlopCounterMode` on one step), weight, gradient, optimizer and activation memory per
device at the recipe's batch sizes, and GPU-hours at a given throughput.

Nothing trains and no weight is read: the teachers are built from their configs on the meta device (a local folder,
the Hub cache, or, offline, the configs of the paper's teachers in `KNOWN_TEACHER_CONFIGS`) and the student is
merged from them there; the step runs on meta tensors, so even the paper-size recipe plans in about a minute on a
2-core CPU. Sample counts come from a data spec's `num_samples` when given, else from loading the (map-style)
dataset."""

import dataclasses
import math
from unittest import mock

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import SamClipDistillationConfig
from .recipe import Recipe, as_recipe, needs_sam_batches, stage_losses
from .trainer import SamClipDistillationModule, configure_trainable

ADAMW_STATES = 2  # exp_avg and exp_avg_sq, fp32, per trainable parameter


def _paper_sam_config():
    from transformers import SamConfig

    from .. import samclip_config_from_preset

    preset = samclip_config_from_preset("samclip-vit-b16")
    return SamConfig(
        vision_config=preset.vision_config.to_dict(),
        prompt_encoder_config=preset.prompt_encoder_config.to_dict(),
        mask_decoder_config=preset.mask_decoder_config.to_dict(),
    )


def _paper_clip_config():
    from transformers import CLIPConfig

    from .. import samclip_config_from_preset

    # OpenCLIP ViT-L/14 (DataComp-1B): the preset's text tower, a ViT-L/14 image tower at 224 px, 768-d space.
    return CLIPConfig(
        text_config=samclip_config_from_preset("samclip-vit-b16").text_config.to_dict(),
        vision_config=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
        ),
        projection_dim=768,
    )


# Architectures of the paper's teachers, for planning offline (the plan needs shapes, never weights).
KNOWN_TEACHER_CONFIGS = {
    "facebook/sam-vit-base": _paper_sam_config,
    "laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K": _paper_clip_config,
}


def teacher_configs(recipe: Recipe) -> dict:
    """`{"sam": config, "clip": config}` of the recipe's teachers, without reading their weights."""
    from transformers import AutoConfig

    if recipe.teachers.source == "mosaic":
        from ..mosaic.teachers import SHIPPED_TEACHERS_DIR

        sources = {"sam": str(SHIPPED_TEACHERS_DIR / "sam"), "clip": str(SHIPPED_TEACHERS_DIR / "clip")}
    else:
        sources = {"sam": recipe.teachers.sam, "clip": recipe.teachers.clip}
    configs = {}
    for role, source in sources.items():
        try:
            configs[role] = AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as error:
            if source not in KNOWN_TEACHER_CONFIGS:
                raise ValueError(
                    f"teachers.{role}: cannot read the config of {source!r} ({error}); give a local "
                    "folder with its config.json, or run once online so the Hub cache holds it."
                ) from None
            configs[role] = KNOWN_TEACHER_CONFIGS[source]()
    return configs


def meta_models(recipe: Recipe, configs: dict | None = None) -> dict:
    """The teachers (eager attention, so every matmul is counted) and the merged student, on the meta device."""
    from transformers import AutoModel, SamModel

    from .. import SamClipModel

    configs = configs or teacher_configs(recipe)
    with torch.device("meta"):
        sam = SamModel._from_config(configs["sam"], attn_implementation="eager").eval()
        clip = AutoModel.from_config(configs["clip"], attn_implementation="eager").eval()
    # The merge reads the logit scale (and bias) as numbers, which a meta tensor has not; the plan needs no value.
    for name in ("logit_scale", "logit_bias"):
        if isinstance(getattr(clip, name, None), torch.nn.Parameter):
            setattr(clip, name, torch.nn.Parameter(torch.zeros(getattr(clip, name).shape)))
    with torch.device("meta"):
        student = SamClipModel.from_teachers(
            sam, clip, image_size=recipe.model.clip_size, **dataclasses.asdict(recipe.model.head)
        )
    return {"sam": sam, "clip": clip, "student": student}


def count_samples(spec, where: str) -> int:
    """Samples of a data spec (or list of them): its `num_samples`, else the length of the loaded dataset."""
    if isinstance(spec, list):
        return sum(count_samples(part, f"{where}.{index}") for index, part in enumerate(spec))
    if spec.get("num_samples") is not None:
        return int(spec["num_samples"])
    import datasets

    from .run import load_image_dataset

    hint = f"give {where}.num_samples (--set {where}.num_samples=N)"
    try:
        dataset = load_image_dataset(spec)
    except Exception as error:  # any loader failure: missing folder, Hub offline, bad spec
        raise ValueError(f"{where}: cannot count its samples ({type(error).__name__}: {error}); {hint}.") from None
    if isinstance(dataset, datasets.IterableDataset):
        raise ValueError(f"{where}: a streaming dataset has no length; {hint}.")
    return len(dataset)


def stage_steps(
    config: SamClipDistillationConfig, num_samples: int, num_processes: int, with_sam: bool = False
) -> dict:
    """Optimizer steps of a stage as `Trainer.set_initial_training_values` counts them for a map-style dataset of
    `num_samples` on `num_processes` devices, and the D_CLIP and D_SAM images the steps read (a SAM batch holds
    the SAM samples of a micro-batch's first `sam_batch_size` items). One process: exact, a short last batch
    included; more: accelerate's sharding fills every device's last batch with samples from the epoch's start."""
    batch, accumulation = config.per_device_train_batch_size, config.gradient_accumulation_steps
    full, last = divmod(num_samples, batch)
    if num_processes > 1 or config.dataloader_drop_last:
        last = 0  # whole batches only: dropped, or filled by accelerate
        full = math.ceil(num_samples / batch) if not config.dataloader_drop_last else full
    per_device = math.ceil((full + bool(last)) / num_processes)
    steps_per_epoch = max(per_device // accumulation + int(per_device % accumulation > 0), 1)
    steps = config.max_steps if config.max_steps > 0 else math.ceil(config.num_train_epochs * steps_per_epoch)
    sam_batch = config.sam_batch_size if with_sam else 0

    def read(micro_batches: int) -> tuple[int, int]:
        # D_CLIP and D_SAM images of an epoch's first `micro_batches` micro-batches on every device.
        whole = min(micro_batches, per_device - bool(last))
        clip, sam = whole * batch, whole * min(sam_batch, batch)
        if micro_batches > whole:
            clip, sam = clip + last, sam + min(sam_batch, last)
        return clip * num_processes, sam * num_processes

    epochs, remainder = divmod(steps, steps_per_epoch)
    epoch_clip, epoch_sam = read(per_device)
    tail_clip, tail_sam = read(min(remainder * accumulation, per_device))
    return {
        "steps_per_epoch": steps_per_epoch,
        "steps": steps,
        "epochs": steps / steps_per_epoch,
        "global_batch": batch * accumulation * num_processes,
        "clip_images": epochs * epoch_clip + tail_clip,
        "sam_images": epochs * epoch_sam + tail_sam,
    }


def _batch(
    recipe: Recipe, config: SamClipDistillationConfig, clip_size: int, teacher_size: int, patch: int, with_sam: bool
) -> dict:
    """One per-device micro-batch of meta tensors shaped as the collator builds it (teacher outputs uncached)."""
    meta = {"device": "meta"}
    size = config.per_device_train_batch_size
    batch = {
        "clip_pixel_values": torch.empty(size, 3, clip_size, clip_size, **meta),
        "clip_teacher_pixel_values": torch.empty(size, 3, teacher_size, teacher_size, **meta),
    }
    if not with_sam:
        return batch
    prompts, sam, images = recipe.prompts, recipe.model.sam_size, config.sam_batch_size
    batch["sam_pixel_values"] = torch.empty(images, 3, sam, sam, **meta)
    if prompts.num_boxes:
        batch["input_boxes"] = torch.empty(images, prompts.num_boxes, 4, **meta)
    if prompts.num_point_prompts:
        batch["input_points"] = torch.empty(images, prompts.num_point_prompts, prompts.max_points, 2, **meta)
        batch["input_labels"] = torch.ones(
            images, prompts.num_point_prompts, prompts.max_points, dtype=torch.long, **meta
        )
    if config.region_weight > 0 and prompts.num_regions:
        grid = sam // patch
        batch["region_masks"] = torch.empty(images, prompts.num_regions, grid, grid, **meta)
        # Real (not meta): the loss selects the valid rows by value; every region is valid here, the costliest case.
        batch["region_valid"] = torch.ones(images, prompts.num_regions, dtype=torch.bool)
        batch["region_teacher_pixel_values"] = torch.empty(
            images * prompts.num_regions, 3, teacher_size, teacher_size, **meta
        )
    return batch


def _saved_activation_bytes(module, batch: dict) -> tuple[int, dict]:
    """Bytes the forward keeps for backward (parameters excluded), and the loss terms; no activation checkpointing."""
    parameters = {id(p) for p in module.parameters()}
    total = 0

    def pack(tensor):
        nonlocal total
        base = tensor._base if tensor._base is not None else tensor
        if id(base) not in parameters and id(tensor) not in parameters:
            total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        terms = module(**batch)
    return total, terms


def measure_step(recipe: Recipe, config: SamClipDistillationConfig, models: dict) -> dict:
    """FLOPs of one optimizer step per device (student forward + backward, teachers forward, uncached), averaged
    over the stage's CLIP sizes, and the largest activation memory among them."""
    student, sam, clip = models["student"], models["sam"], models["clip"]
    losses = stage_losses(config.stage, config.losses)
    module = SamClipDistillationModule(student, clip_teacher=clip, sam_teacher=sam, losses=losses).train()
    configure_trainable(student, config.stage, train_sam_head=bool(losses.sam_loss_weight))
    with_sam = needs_sam_batches(config.stage, config.losses)
    teacher_size = clip.config.vision_config.image_size
    sizes = config.clip_sizes or [recipe.model.clip_size]
    student_flops, total_flops, activations = [], [], []
    for size in sizes:
        batch = _batch(recipe, config, size, teacher_size, student.config.patch_size, with_sam)
        student.zero_grad(set_to_none=True)
        # The model's input checks read tensor values, which meta tensors have not; it skips them while compiling.
        compiling = mock.patch.object(torch.compiler, "is_compiling", lambda: True)
        with FlopCounterMode(display=False) as counter, compiling:
            saved, terms = _saved_activation_bytes(module, batch)
            terms["loss"].backward()
        counts = counter.get_flop_counts()
        student_flops.append(sum(counts.get(f"{type(module).__name__}.student", {}).values()))
        total_flops.append(counter.get_total_flops())
        activations.append(saved)
    accumulation = config.gradient_accumulation_steps
    student_step = accumulation * sum(student_flops) / len(sizes)
    total_step = accumulation * sum(total_flops) / len(sizes)
    return {
        "student_flops": student_step,
        "teacher_flops": total_step - student_step,
        "activation_bytes": max(activations),
        "clip_sizes": sizes,
    }


def _memory(student, config: SamClipDistillationConfig, teachers: tuple) -> dict:
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    return {
        "student_weights_bytes": sum(p.numel() * p.element_size() for p in student.parameters()),
        "teacher_weights_bytes": sum(p.numel() * p.element_size() for t in teachers for p in t.parameters()),
        "trainable_parameters": trainable,
        "gradient_bytes": trainable * 4,
        "optimizer_bytes": trainable * 4 * ADAMW_STATES,
    }


def plan_recipe(
    recipe,
    *,
    num_processes: int = 1,
    images_per_second: float | None = None,
    models: dict | None = None,
    max_steps: int | None = None,
) -> dict:
    """The plan of `recipe` on `num_processes` devices (see the module docstring); `images_per_second` is one
    device's training throughput in D_CLIP images/s (then GPU-hours and wall hours per stage); `models` replaces
    the meta-device teachers and student (`meta_models`); `max_steps` overrides every stage's, as in a run."""
    recipe = as_recipe(recipe)
    if num_processes < 1:
        raise ValueError(f"num_processes must be at least 1, got {num_processes}.")
    if images_per_second is not None and not images_per_second > 0:
        raise ValueError(f"images_per_second must be > 0, got {images_per_second}.")
    clip_samples = count_samples(recipe.data.clip, "data.clip")
    sam_samples = (
        count_samples(recipe.data.sam, "data.sam")
        if any(recipe.needs_sam_batches(stage) for stage in recipe.stages)
        else None
    )
    models = models or meta_models(recipe)
    stages = []
    for index, stage in enumerate(recipe.stages):
        config = SamClipDistillationConfig.from_recipe(recipe, index, "plan", max_steps=max_steps, use_cpu=True)
        with_sam = recipe.needs_sam_batches(stage)
        entry = {
            "stage": stage.stage,
            **stage_steps(config, clip_samples, num_processes, with_sam),
            "clip_samples_per_epoch": clip_samples,
            "sam_samples": sam_samples if with_sam else None,
            "activation_checkpointing": bool(config.activation_checkpointing),
            "bf16": bool(config.bf16),
        }
        entry.update(measure_step(recipe, config, models))
        entry.update(_memory(models["student"], config, (models["sam"], models["clip"])))
        if images_per_second is not None:
            entry["gpu_hours"] = entry["clip_images"] / images_per_second / 3600
            entry["wall_hours"] = entry["gpu_hours"] / num_processes
        stages.append(entry)
    return {
        "recipe": recipe.name,
        "num_processes": num_processes,
        "images_per_second": images_per_second,
        "teacher_cache": recipe.teacher_cache,
        "stages": stages,
    }


def _flops(count: float) -> str:
    return f"{count / 1e12:.3g} TFLOP" if count >= 1e12 else f"{count / 1e9:.3g} GFLOP"


def _bytes(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def format_plan(plan: dict) -> str:
    """The plan as text, one block per stage."""
    lines = [
        f"plan of recipe {plan['recipe']!r} on {plan['num_processes']} device(s) (nothing trains; FLOPs counted "
        f"on one step of meta tensors, teacher outputs uncached, fp32, no activation checkpointing)"
    ]
    total_hours = 0.0
    for index, stage in enumerate(plan["stages"]):
        sam = (
            f"; D_SAM: {stage['sam_images']:,} images drawn from {stage['sam_samples']:,}"
            if stage["sam_samples"] is not None
            else "; no D_SAM batches"
        )
        lines += [
            f"stage {index + 1} {stage['stage']}: {stage['steps']:,} steps ({stage['epochs']:.3g} epochs of "
            f"{stage['steps_per_epoch']:,} steps, global batch {stage['global_batch']:,})",
            f"  D_CLIP: {stage['clip_samples_per_epoch']:,} samples per epoch, {stage['clip_images']:,} images seen"
            + sam,
            f"  FLOPs per step per device: student {_flops(stage['student_flops'])} (forward + backward), "
            f"teachers {_flops(stage['teacher_flops'])} (forward; CLIP sizes {stage['clip_sizes']})",
            f"  memory per device: student weights {_bytes(stage['student_weights_bytes'])}, teachers "
            f"{_bytes(stage['teacher_weights_bytes'])}, gradients {_bytes(stage['gradient_bytes'])}, AdamW "
            f"{_bytes(stage['optimizer_bytes'])} ({stage['trainable_parameters']:,} trainable), activations "
            f"{_bytes(stage['activation_bytes'])}"
            + (" (the recipe checkpoints activations: far less)" if stage["activation_checkpointing"] else "")
            + (" (bf16 autocast: about half)" if stage["bf16"] else ""),
        ]
        if "gpu_hours" in stage:
            total_hours += stage["gpu_hours"]
            lines.append(
                f"  at {plan['images_per_second']:g} images/s per device: {stage['gpu_hours']:,.1f} GPU-hours"
                f", {stage['wall_hours']:,.1f} h wall-clock"
            )
    if plan["images_per_second"] is not None:
        lines.append(
            f"total: {total_hours:,.1f} GPU-hours, {total_hours / plan['num_processes']:,.1f} h wall-clock "
            f"on {plan['num_processes']} device(s)"
        )
    return "\n".join(lines)
