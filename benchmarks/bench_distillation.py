"""Distillation throughput of the mosaic recipe: stage 1 (head probing, with region distillation) and stage 2
(multi-task distillation), without caches, with the teacher-output cache, and (stage 1) with the student token cache
too, through `SamClipDistillationTrainer.compute_loss`.

Command (the CPU suite runs it with these settings)::

    python -m benchmarks.bench_distillation --threads 1 --repeats 10

Run time: 288 s wall here (2 AMD EPYC cores shared with two training jobs and tests, load ~4, under `nice -n 10`),
~2 min of CPU at 1 thread; `--tiny` (CI) takes ~5 s.

Timed on process CPU time (at 1 thread, a step's time on an idle core; stable while other jobs share the cores).
One optimizer step = the trainer's `compute_loss` (the distillation module's forward: student, teachers unless
cached, losses), backward and its AdamW step, on batches shaped as `recipes/mosaic.json` says (stage 1: 64 CLIP
images, 64 px student view, 32 px teacher view, plus `L_region` on 8 SAM views at 128 px with 4 regions each and
their 32 teacher crops; stage 2: 32 CLIP images + 4 SAM images at 128 px with 2 box and 2 point prompts, 3+1 masks
each, and their regions). Teachers have the mosaic teachers' shapes with random weights. Variants, interleaved
round-robin per step:
  - `no_cache`: the teachers' encoders run every step;
  - `teacher_cache`: batches carry the cached CLIP teacher embeddings and SAM teacher image embeddings (what
    `TeacherOutputCache` stores; the SAM teacher's decoder still runs per prompt, the CLIP teacher on region crops);
  - `stage1_trunk_cache`: the teacher cache plus the student token cache (`"student_token_cache": true`): batches
    carry the frozen encoder's trunk tokens of the CLIP and SAM views (what `student_trunk_tokens` stores) in place
    of their pixels, and the module runs only the CLIP head.
Data loading and preprocessing are excluded (ready tensors); a real run with the caches also skips the teacher's
preprocessing and, with the token cache, the student's CLIP-view preprocessing.

Expected (measured here, 10 repeats): stage 1 1076 ms per step without caches, 952 ms with the teacher cache
(1.17x), 633 ms with the student token cache too (1.73x over no cache, 1.50x over the teacher cache alone); stage 2
~1.16x with the teacher cache. Over the mosaic recipe's 1,125 stage-1 steps the token cache saves ~320 ms a step,
~6 min of CPU, less the one pass over 24,000 item views and 1,000 mosaics that fills it. The >= 3x stage-1 target is
out of reach at the mosaic shapes whatever is cached: the mosaic CLIP teacher (4 layers, 128 wide, 32 px) costs ~12%
of a stage-1 step, the student's frozen encoder ~30% and the rest ~59% (the CLIP head's forward, backward and AdamW,
the region read-out and the CLIP teacher on the region crops; the step breakdown table). At paper scale the ViT-L/14
teacher dominates instead: by the FLOPs of `bench_inference` (teacher 162 GFLOPs per 224 px image; student encoder
~35 and head ~9 forward, ~26 forward+backward) the teacher cache should give ~3.6x there (`bench_gpu` measures it).
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

from transformers_samclip import SamClipModel
from transformers_samclip.distillation import Recipe, SamClipDistillationTrainer, Stage, load_recipe
from transformers_samclip.distillation.recipe import needs_sam_batches

from .common import (
    check_target,
    make_parser,
    median,
    paired_ratio,
    render_tables,
    setup,
    table,
    target_rows,
    time_interleaved,
    write_result,
)

NAME = "bench_distillation"


def build_mosaic_teachers():
    """The mosaic teachers' architectures (`tiny_sam_config`, `tiny_clip_config`) with random weights."""
    from transformers import CLIPModel, SamModel

    from transformers_samclip.mosaic.teachers import build_clip_tokenizer, tiny_clip_config, tiny_sam_config

    sam = SamModel._from_config(tiny_sam_config()).eval()
    clip = CLIPModel._from_config(tiny_clip_config(build_clip_tokenizer())).eval()
    return sam, clip


def build_trainer(sam, clip, recipe: Recipe, stage: Stage, work_dir: str, use_cpu: bool) -> SamClipDistillationTrainer:
    """A fresh student merged from the teachers, in the trainer of `stage`, with its optimizer created."""
    from transformers import TrainingArguments

    student = SamClipModel.from_teachers(
        sam, clip, image_size=recipe.model.clip_size, **dataclasses.asdict(recipe.model.head)
    )
    settings = stage.training_args
    args = TrainingArguments(
        output_dir=work_dir,
        use_cpu=use_cpu,
        report_to=[],
        learning_rate=settings["learning_rate"],
        weight_decay=settings.get("weight_decay", 0.0),
    )
    trainer = SamClipDistillationTrainer(
        student,
        stage=stage.stage,
        clip_teacher=clip,
        sam_teacher=sam,
        losses=recipe.losses,
        encoder_lr_scale=stage.encoder_lr_scale,
        args=args,
    )
    if settings.get("activation_checkpointing"):
        trainer.model.activation_checkpointing_enable()
    trainer.create_optimizer()
    return trainer


def make_batch(sam, clip, recipe: Recipe, stage: Stage, clip_batch: int, sam_batch: int, device) -> dict:
    """Random inputs of one step of `stage`, with the teacher views (`no_cache`) and the teacher outputs
    (`teacher_cache`) both present; `step_inputs` picks one set. The SAM view comes with prompts in stage 2 and with
    `num_regions` valid regions per image (`L_region`) in every stage when the recipe distills regions."""
    clip_size, sam_size = recipe.model.clip_size, recipe.model.sam_size
    teacher_size = clip.config.vision_config.image_size
    batch = {
        "clip_pixel_values": torch.randn(clip_batch, 3, clip_size, clip_size, device=device),
        "clip_teacher_pixel_values": torch.randn(clip_batch, 3, teacher_size, teacher_size, device=device),
    }
    if needs_sam_batches(stage.stage, recipe.losses) and sam_batch:
        batch["sam_pixel_values"] = torch.randn(sam_batch, 3, sam_size, sam_size, device=device)
    if stage.rehearses_sam and sam_batch:
        prompts = recipe.prompts
        corner = torch.rand(sam_batch, prompts.num_boxes, 2, device=device) * sam_size / 2
        points = (sam_batch, prompts.num_point_prompts, prompts.max_points)
        batch.update(
            input_boxes=torch.cat([corner, corner + sam_size / 4], dim=-1),
            input_points=torch.rand(*points, 2, device=device) * sam_size,
            input_labels=torch.ones(*points, dtype=torch.int, device=device),
        )
    if recipe.distills_regions and sam_batch:
        regions, frame = recipe.prompts.num_regions, 4 * sam_size // sam.config.vision_config.patch_size
        masks = torch.zeros(sam_batch, regions, frame, frame, dtype=torch.bool, device=device)
        masks[..., frame // 4 : frame // 2, frame // 4 : frame // 2] = True
        batch.update(
            region_masks=masks,
            region_valid=torch.ones(sam_batch, regions, dtype=torch.bool, device=device),
            region_teacher_pixel_values=torch.randn(sam_batch * regions, 3, teacher_size, teacher_size, device=device),
        )
    with torch.no_grad():
        batch["clip_teacher_embeds"] = clip.get_image_features(
            pixel_values=batch["clip_teacher_pixel_values"]
        ).pooler_output
        if stage.rehearses_sam and "sam_pixel_values" in batch:
            batch["sam_teacher_embeddings"] = sam.get_image_embeddings(batch["sam_pixel_values"])
    return batch


def step_inputs(batch: dict, cached: bool) -> dict:
    """The batch as the collator gives it with (`cached`) or without the teacher cache."""
    dropped = ("clip_teacher_pixel_values",) if cached else ("clip_teacher_embeds", "sam_teacher_embeddings")
    return {k: v for k, v in batch.items() if k not in dropped}


@torch.no_grad()
def trunk_cached_inputs(trainer: SamClipDistillationTrainer, batch: dict) -> dict:
    """The teacher-cached batch as the collator gives it with the student token cache too: the frozen encoder's
    trunk tokens of each view (what `TeacherOutputCache.student_trunk_tokens` stores) in place of its pixels."""
    inputs = step_inputs(batch, cached=True)
    for view in ("clip", "sam"):
        if f"{view}_pixel_values" in inputs:
            pixels = inputs.pop(f"{view}_pixel_values")
            encoded = trainer.student.vision_encoder(pixels, compute_neck=False)
            inputs[f"{view}_trunk_tokens"] = encoded.trunk_hidden_state
    return inputs


def train_step(trainer: SamClipDistillationTrainer, inputs: dict) -> None:
    """One step as `Trainer.train` runs it, minus data loading and bookkeeping: the trainer's `compute_loss` (the
    distillation module's forward), backward, the optimizer step."""
    trainer.model.train()
    trainer.compute_loss(trainer.model, dict(inputs)).backward()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = make_parser(__doc__, default_repeats=10)
    parser.add_argument("--recipe", default="mosaic", help="recipe name or JSON path (batch sizes, prompts, losses)")
    args = parser.parse_args(argv)
    setup(args)
    started = time.perf_counter()
    recipe = load_recipe(args.recipe)
    stage1, stage2 = recipe.stages[:2]
    # --tiny keeps the shapes and shrinks the batches.
    clip_batches = [8, 4] if args.tiny else [s.training_args["per_device_train_batch_size"] for s in (stage1, stage2)]
    sam_batches = [1, 1] if args.tiny else [s.sam_batch_size for s in (stage1, stage2)]

    sam, clip = build_mosaic_teachers()
    with tempfile.TemporaryDirectory() as work_dir:
        trainer1 = build_trainer(sam, clip, recipe, stage1, str(Path(work_dir) / "1"), use_cpu=True)
        trainer2 = build_trainer(sam, clip, recipe, stage2, str(Path(work_dir) / "2"), use_cpu=True)
    batch1 = make_batch(sam, clip, recipe, stage1, clip_batches[0], sam_batches[0], "cpu")
    batch2 = make_batch(sam, clip, recipe, stage2, clip_batches[1], sam_batches[1], "cpu")
    trunk_cached1 = trunk_cached_inputs(trainer1, batch1)

    cases = {
        "stage1_no_cache": lambda: train_step(trainer1, step_inputs(batch1, cached=False)),
        "stage1_teacher_cache": lambda: train_step(trainer1, step_inputs(batch1, cached=True)),
        "stage1_trunk_cache": lambda: train_step(trainer1, trunk_cached1),
        "stage2_no_cache": lambda: train_step(trainer2, step_inputs(batch2, cached=False)),
        "stage2_teacher_cache": lambda: train_step(trainer2, step_inputs(batch2, cached=True)),
    }
    times = time_interleaved(cases, args.repeats)["cpu"]  # stable on a shared machine at 1 thread

    # Stage 1 reads D_SAM for L_region only: its SAM images count where the recipe distills regions.
    sam_images = [sam if "sam_pixel_values" in batch else 0 for sam, batch in zip(sam_batches, (batch1, batch2))]
    per_step = [clip + sam for clip, sam in zip(clip_batches, sam_images)]
    images = {name: per_step[0] if name.startswith("stage1") else per_step[1] for name in cases}
    steps = {
        name: {"median_ms": median(t) * 1e3, "images_per_s": images[name] / median(t), "images_per_step": images[name]}
        for name, t in times.items()
    }
    speedups = {
        "stage1_teacher_cache": 1 / paired_ratio(times, "stage1_teacher_cache", "stage1_no_cache"),
        "stage1_trunk_cache": 1 / paired_ratio(times, "stage1_trunk_cache", "stage1_no_cache"),
        "stage2_teacher_cache": 1 / paired_ratio(times, "stage2_teacher_cache", "stage2_no_cache"),
    }
    # Where a stage-1 step goes, from the differences of the three variants' medians (what each cache removes).
    stage1_ms = {name: steps[name]["median_ms"] for name in cases if name.startswith("stage1")}
    breakdown = {
        "clip_teacher_forward": stage1_ms["stage1_no_cache"] - stage1_ms["stage1_teacher_cache"],
        "frozen_student_encoder_forward": stage1_ms["stage1_teacher_cache"] - stage1_ms["stage1_trunk_cache"],
        "clip_head_forward_backward_adamw_and_region_teacher": stage1_ms["stage1_trunk_cache"],
    }
    targets = {
        "stage1_teacher_cache_speedup": check_target(speedups["stage1_teacher_cache"], ">=", 3.0),
        "stage1_trunk_cache_speedup": check_target(speedups["stage1_trunk_cache"], ">=", 3.0),
    }
    tables = [
        table(
            f"Distillation steps, recipe {args.recipe} (stage 1: {clip_batches[0]} CLIP + {sam_images[0]} SAM images; "
            f"stage 2: {clip_batches[1]} CLIP + {sam_images[1]} SAM images)",
            ["case", "CPU ms/step", "images/s (CPU time)", "speed-up vs no cache"],
            [[n, s["median_ms"], s["images_per_s"], speedups.get(n, 1.0)] for n, s in steps.items()],
        ),
        table(
            "Stage-1 step breakdown (differences of medians)",
            ["part", "ms", "share"],
            [[part, ms, ms / stage1_ms["stage1_no_cache"]] for part, ms in breakdown.items()],
        ),
        table("Distillation targets", ["target", "value", "target", "met"], target_rows(targets)),
    ]
    print(render_tables(tables))
    result = {
        "recipe": args.recipe,
        "clip_batch": {"stage1": clip_batches[0], "stage2": clip_batches[1]},
        "sam_batch": {"stage1": sam_images[0], "stage2": sam_images[1]},
        "steps": steps,
        "speedups": speedups,
        "stage1_breakdown_ms": breakdown,
        "targets": targets,
        "tables": tables,
    }
    write_result(NAME, args, argv, result, started)
    return result


if __name__ == "__main__":
    main()
