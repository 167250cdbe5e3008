"""`SamClipDistillationConfig`: one stage's settings as `TrainingArguments`, read by `HfArgumentParser` from YAML and
flags, mapped from a recipe stage, and running the recipe's stages with the same losses as before it existed."""

import dataclasses
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch
from transformers import CLIPImageProcessorPil, CLIPProcessor, HfArgumentParser, TrainingArguments

from transformers_samclip.distillation import LossWeights, SamClipDistillationTrainer, load_recipe
from transformers_samclip.distillation import run as run_module
from transformers_samclip.distillation.config import RUN_DEFAULTS, SamClipDistillationConfig


def test_hf_argument_parser_reads_a_stage_from_flags_and_yaml(tmp_path):
    parser = HfArgumentParser(SamClipDistillationConfig)
    (flags,) = parser.parse_args_into_dataclasses(
        args=[
            "--output_dir",
            str(tmp_path / "a"),
            "--use_cpu",
            "true",
            "--stage",
            "head_probing",
            "--clip_sizes",
            "224",
            "448",
            "--sam_loss_weight",
            "1",
            "--distill_single_mask",
            "false",
            "--sam_batch_size",
            "2",
        ]
    )
    assert flags.stage == "head_probing" and flags.clip_sizes == [224, 448] and flags.sam_batch_size == 2
    assert flags.losses == LossWeights(sam_loss_weight=1.0, distill_single_mask=False)
    assert flags.remove_unused_columns is False  # the collator's named tensors all reach the module
    yaml_file = tmp_path / "stage.yaml"
    yaml_file.write_text(
        f"output_dir: {tmp_path / 'b'}\nuse_cpu: true\nstage: distillation\nlearning_rate: 4.0e-4\n"
        "encoder_lr_scale: 0.2\nregion_weight: 1\nteacher_cache: false\n"
    )
    (from_yaml,) = parser.parse_yaml_file(str(yaml_file))
    assert (from_yaml.stage, from_yaml.learning_rate, from_yaml.encoder_lr_scale) == ("distillation", 4e-4, 0.2)
    assert from_yaml.region_weight == 1.0 and isinstance(from_yaml.region_weight, float)
    assert from_yaml.teacher_cache is False and from_yaml.losses.sam_loss_weight == LossWeights().sam_loss_weight


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("stage", "probing", "stage: must be one of"),
        ("sam_loss_weight", -1, "sam_loss_weight: must be >= 0"),
        ("sam_batch_size", 0, "sam_batch_size: must be >= 1"),
        ("clip_sizes", [0], "clip_sizes: must be null"),
    ],
)
def test_bad_stage_settings_name_the_field(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        SamClipDistillationConfig(str(tmp_path), use_cpu=True, **{field: value})


def test_recipe_stages_map_onto_the_config(tmp_path):
    recipe = load_recipe("mosaic")
    for index, stage in enumerate(recipe.stages):
        config = SamClipDistillationConfig.from_recipe(recipe, index, tmp_path, seed=3)
        assert config.output_dir == str(tmp_path / f"stage{index + 1}-{stage.stage}")
        assert (config.stage, config.sam_batch_size, config.encoder_lr_scale) == (
            stage.stage,
            stage.sam_batch_size,
            stage.encoder_lr_scale,
        )
        assert config.losses == recipe.losses and config.seed == 3 and config.teacher_cache == recipe.teacher_cache
        assert config.teacher_cache_dir == str(tmp_path / "teacher-cache")
        for key, value in stage.training_args.items():
            assert getattr(config, key) == value, key
        assert config.save_total_limit == RUN_DEFAULTS["save_total_limit"]
    paper = load_recipe("samclip-vit-b16")
    sizes = [SamClipDistillationConfig.from_recipe(paper, i, tmp_path).clip_sizes for i in range(3)]
    assert sizes == [[224, 448], [224, 448], [224, 448, 1024]]  # data.clip's, unless the stage has its own
    assert (
        SamClipDistillationConfig.from_recipe(recipe, 1, tmp_path, max_steps=7, cache_dir=tmp_path / "c").max_steps
        == 7
    )
    trainer = SamClipDistillationTrainer(
        torch.nn.Linear(1, 1), args=SamClipDistillationConfig.from_recipe(recipe, 0, tmp_path)
    )
    assert trainer.stage == "head_probing" and trainer.model.losses == dataclasses.replace(
        recipe.losses, sam_loss_weight=0.0
    )


def test_student_token_cache_runs_only_on_a_frozen_encoder_at_one_view_size(tmp_path, monkeypatch):
    """`student_token_cache_off` names why a stage recomputes the encoder's tokens: the mosaic recipe caches them in
    stage 1 alone; the switch, multi-size CLIP views (the paper recipe), FSDP and an unkeyed D_CLIP turn it off."""
    from types import SimpleNamespace

    keyed, unkeyed = SimpleNamespace(fingerprint="abc"), SimpleNamespace(fingerprint=None)
    recipe = load_recipe("mosaic")
    configs = [SamClipDistillationConfig.from_recipe(recipe, i, tmp_path) for i in range(2)]
    assert recipe.student_token_cache and all(config.student_token_cache for config in configs)
    assert [run_module.student_token_cache_off(c, keyed) for c in configs] == [None, "the stage trains the encoder"]
    assert run_module.student_token_cache_off(configs[0], unkeyed) == "D_CLIP has no fingerprint (an unkeyed stream)"
    off = SamClipDistillationConfig.from_recipe(recipe.override({"student_token_cache": False}), 0, tmp_path)
    assert run_module.student_token_cache_off(off, keyed) == "student_token_cache is false"
    paper = load_recipe("samclip-vit-b16")
    assert not paper.student_token_cache  # off unless a recipe turns it on (disk: 588 KiB per 224 px view)
    paper = paper.override({"student_token_cache": True})
    probing = SamClipDistillationConfig.from_recipe(paper, 0, tmp_path)
    assert run_module.student_token_cache_off(probing, keyed) == (
        "clip_sizes [224, 448] draws the CLIP view's size per batch"
    )
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # as `accelerate launch` with an FSDP config sets it
    assert run_module.student_token_cache_off(configs[0], keyed) == "FSDP is on"


class _KeywordTrainer(SamClipDistillationTrainer):
    """The trainer as `run_recipe` built it before the config: plain `TrainingArguments` from the recipe stage's
    `training_args`, and the stage, losses and LR scale as keywords read from the recipe, not from the config."""

    recipe = None

    def __init__(self, model, *, args, **kwargs):
        stages = enumerate(self.recipe.stages)
        stage = next(s for i, s in stages if args.output_dir.endswith(f"stage{i + 1}-{s.stage}"))
        values = dict(
            output_dir=args.output_dir,
            use_cpu=True,
            remove_unused_columns=False,
            report_to=[],
            seed=0,
            save_strategy="steps",
            save_total_limit=2,
            logging_first_step=True,
            dataloader_num_workers=0,
        )
        values.update(stage.training_args)
        super().__init__(
            model,
            stage=stage.stage,
            losses=self.recipe.losses,
            encoder_lr_scale=stage.encoder_lr_scale,
            args=TrainingArguments(**values),
            **kwargs,
        )


def _tiny_mosaic_recipe():
    overrides = {
        "model": {"sam_size": 64, "clip_size": 32, "head": {"num_hidden_layers": 1}},
        "data.clip.num_items": 32,
        "data.clip.size": 32,
        "data.sam.num_mosaics": 8,
        "data.sam.canvas_size": 64,
        "evaluation": None,
        "calibration": None,
    }
    for index in (0, 1):
        for key, value in dict(max_steps=2, per_device_train_batch_size=8, save_steps=2, logging_steps=1).items():
            overrides[f"stages.{index}.training_args.{key}"] = value
    return load_recipe("mosaic").override(overrides)


def _step_logs(output_dir):
    logs = {}
    for stage_dir in sorted(output_dir.glob("stage*")):
        state = json.loads((stage_dir / "checkpoint-2" / "trainer_state.json").read_text())
        logs[stage_dir.name] = [
            {k: v for k, v in entry.items() if k.startswith(("loss", "grad_norm", "step"))}
            for entry in state["log_history"]
            if "loss" in entry
        ]
    return logs


def test_mosaic_recipe_first_steps_lose_what_they_lost_before_the_config(tmp_path, monkeypatch, tokenizer, teachers):
    """Both stages of the mosaic recipe (tiny random teachers, 2 steps each): every logged loss term and gradient
    norm of the config-driven run equals the run whose trainer gets the recipe's values as before."""
    sam, clip = teachers
    clip_processor = CLIPProcessor(
        CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer
    )
    recipe = _tiny_mosaic_recipe()

    def run(output_dir):
        torch.manual_seed(0)
        loaded = {"sam_model": sam, "clip_model": clip, "clip_processor": clip_processor}
        run_module.run_recipe(recipe, output_dir, teachers=loaded, evaluate=False, seed=0)
        return _step_logs(output_dir)

    with_config = run(tmp_path / "config")
    monkeypatch.setattr(_KeywordTrainer, "recipe", recipe)
    monkeypatch.setattr(run_module, "SamClipDistillationTrainer", _KeywordTrainer)
    before = run(tmp_path / "keywords")
    assert list(with_config) == ["stage1-head_probing", "stage2-distillation"]
    assert [len(steps) for steps in with_config.values()] == [2, 2]
    assert "loss_sam" in with_config["stage2-distillation"][0]
    assert "loss_region" in with_config["stage1-head_probing"][0]
    for stage, steps in before.items():
        for old, new in zip(steps, with_config[stage], strict=True):
            assert new.keys() == old.keys()
            for key, value in old.items():
                assert new[key] == pytest.approx(value, rel=1e-6, abs=1e-7), (stage, old["step"], key)
