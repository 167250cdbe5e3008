"""`samclip distill --plan`: steps and samples as a real short run counts them, FLOPs as FlopCounterMode counts one
step of the real models, and the paper-size recipe planned without its Hub weights."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPImageProcessorPil, CLIPProcessor

from transformers_samclip import SamClipModel
from transformers_samclip.distillation import SamClipDistillationTrainer, configure_trainable, load_recipe
from transformers_samclip.distillation import run as run_module
from transformers_samclip.distillation.plan import format_plan, meta_models, plan_recipe

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _short_mosaic_recipe():
    """The mosaic recipe on tiny teachers' sizes, 30 item views (a short last batch) and epochs, not max_steps:
    stage 1 one epoch with gradient accumulation 2, stage 2 half an epoch."""
    overrides = {
        "model": {"sam_size": 64, "clip_size": 32, "head": {"num_hidden_layers": 1}},
        "data.clip.num_items": 30,
        "data.clip.size": 32,
        "data.sam.num_mosaics": 8,
        "data.sam.canvas_size": 64,
        "evaluation": None,
        "calibration": None,
    }
    stages = ({"num_train_epochs": 1, "gradient_accumulation_steps": 2}, {"num_train_epochs": 0.5})
    for index, settings in enumerate(stages):
        for key, value in dict(per_device_train_batch_size=8, save_steps=1, logging_steps=1, **settings).items():
            overrides[f"stages.{index}.training_args.{key}"] = value
    return load_recipe("mosaic").override(overrides)


@pytest.fixture(scope="module")
def tiny_models(teachers):
    sam, clip = teachers
    return {"sam": sam.config, "clip": clip.config}


def test_plan_steps_and_samples_equal_a_real_short_run(tmp_path, monkeypatch, tokenizer, teachers, tiny_models):
    recipe = _short_mosaic_recipe()
    plan = plan_recipe(recipe, models=meta_models(recipe, tiny_models), images_per_second=2.0)
    read = {"clip": [], "sam": []}
    compute_loss = SamClipDistillationTrainer.compute_loss

    def counting(self, model, inputs, *args, **kwargs):
        # Batches trained on (the dataloader also prefetches one it may never train on); a view comes as pixels, or
        # as the frozen encoder's cached tokens (stage 1 of the mosaic recipe: student_token_cache).
        for view in read:
            batch = inputs.get(f"{view}_pixel_values", inputs.get(f"{view}_trunk_tokens"))
            read[view].append(0 if batch is None else len(batch))
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(SamClipDistillationTrainer, "compute_loss", counting)
    sam, clip = teachers
    clip_processor = CLIPProcessor(
        CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer
    )
    stage_reads = []
    for index in range(len(recipe.stages)):  # one stage per run, so each stage's reads are counted apart
        read["clip"].clear(), read["sam"].clear()
        only = recipe.override({"stages": [dataclasses.asdict(recipe.stages[index])]})
        run_module.run_recipe(
            only,
            tmp_path / str(index),
            teachers={"sam_model": sam, "clip_model": clip, "clip_processor": clip_processor},
            evaluate=False,
        )
        stage_dir = next((tmp_path / str(index)).glob("stage1-*"))
        steps = max(int(path.name.split("-")[1]) for path in stage_dir.glob("checkpoint-*"))
        stage_reads.append({"steps": steps, "clip_images": sum(read["clip"]), "sam_images": sum(read["sam"])})
    planned = [{key: stage[key] for key in ("steps", "clip_images", "sam_images")} for stage in plan["stages"]]
    assert planned == stage_reads
    assert stage_reads == [
        {"steps": 2, "clip_images": 30, "sam_images": 30},
        {"steps": 2, "clip_images": 16, "sam_images": 8},
    ]
    assert plan["stages"][0]["gpu_hours"] == pytest.approx(30 / 2.0 / 3600)
    assert "stage 2 distillation: 2 steps" in format_plan(plan)


def test_plan_flops_equal_the_real_models_step(teachers, tiny_models):
    """Head probing with the cosine loss alone (no region or relational distillation): the student's step is one
    CLIP pass forward and backward (the frozen encoder needs no backward), the teachers' is the CLIP teacher's
    forward, both at the batch size."""
    recipe = _short_mosaic_recipe().override(
        {
            "losses.region_weight": 0.0,
            "losses.relational_weight": 0.0,
            "stages.0.training_args": {"per_device_train_batch_size": 4, "max_steps": 1},
        }
    )
    stage = plan_recipe(recipe, models=meta_models(recipe, tiny_models))["stages"][0]
    sam, clip = teachers
    student = SamClipModel.from_teachers(sam, clip, image_size=32, num_hidden_layers=1)
    configure_trainable(student, "head_probing")
    with FlopCounterMode(display=False) as student_counter:
        student(pixel_values=torch.zeros(4, 3, 32, 32)).image_embeds.sum().backward()
    with FlopCounterMode(display=False) as teacher_counter, torch.no_grad():
        clip.get_image_features(pixel_values=torch.zeros(4, 3, 32, 32))
    assert stage["student_flops"] == student_counter.get_total_flops() > 0
    assert stage["teacher_flops"] == teacher_counter.get_total_flops() > 0
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    assert stage["trainable_parameters"] == trainable and stage["optimizer_bytes"] == 8 * trainable


@pytest.mark.slow
def test_paper_recipe_plans_offline_without_its_weights():
    """`samclip distill --recipe samclip-vit-b16 --plan` from the command line: teachers built from their configs."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "transformers_samclip.distillation.cli",
            "--recipe",
            "samclip-vit-b16",
            "--plan",
            "--num-processes",
            "32",
            "--images-per-second",
            "400",
            "--threads",
            "1",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    # 40.6M images / (64 x 32 devices) = 19,825 steps per epoch; 20, 16 and 3 epochs (stage 3 at batch 32).
    assert "stage 1 head_probing: 396,500 steps (20 epochs of 19,825 steps, global batch 2,048)" in out
    assert "stage 2 distillation: 317,200 steps" in out and "D_SAM: 10,150,400 images" in out
    assert "stage 3 resolution_adaptation: 118,947 steps (3 epochs of 39,649 steps" in out
    assert "TFLOP" in out and "GPU-hours" in out


def test_plan_without_a_sample_count_says_what_to_give(capsys):
    from transformers_samclip._cli import UsageError
    from transformers_samclip.distillation.cli import main

    with pytest.raises(UsageError, match=r"data.clip: cannot count its samples .*give data.clip.num_samples"):
        main(
            [
                "--recipe",
                "samclip-vit-b16",
                "--plan",
                "--set",
                "data.clip.num_samples=null",
                "--set",
                "data.clip.data_dir=/nonexistent",
            ]
        )
    with pytest.raises(UsageError, match="--num-processes must be at least 1"):
        main(["--recipe", "mosaic", "--plan", "--num-processes", "0"])
