"""The distillation recipe: parsed once into validated dataclasses, every default in one place, ablations as
overrides (`--set`, and the flags that are shorthands for it)."""

import dataclasses
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch
from transformers import CLIPImageProcessorPil, CLIPProcessor, TrainingArguments

from transformers_samclip.distillation import (
    LossWeights,
    PromptSampler,
    Recipe,
    SamClipDistillationModule,
    SamClipDistillationTrainer,
    Stage,
    load_recipe,
    parse_override,
)
from transformers_samclip.distillation.cli import build_parser, recipe_from_args
from transformers_samclip.distillation.recipe import RECIPES_DIR


def _cli(*argv):
    return recipe_from_args(build_parser().parse_args(list(argv)))


@pytest.mark.parametrize("name", sorted(p.stem for p in RECIPES_DIR.glob("*.json")))
def test_every_shipped_recipe_parses_and_round_trips(name):
    recipe = load_recipe(name)
    assert recipe.name == name and recipe.stages and all(isinstance(s, Stage) for s in recipe.stages)
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    raw = json.loads((RECIPES_DIR / f"{name}.json").read_text())
    assert dataclasses.asdict(recipe.losses) == {**dataclasses.asdict(LossWeights()), **raw.get("losses", {})}


def test_loss_defaults_live_once_in_loss_weights(tmp_path):
    assert SamClipDistillationModule(torch.nn.Linear(1, 1)).losses == LossWeights()
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[])
    trainer = SamClipDistillationTrainer(torch.nn.Linear(1, 1), stage="distillation", args=args)
    assert trainer.model.losses == LossWeights() and trainer.encoder_lr_scale == Stage("distillation").encoder_lr_scale
    # Stages without SAM rehearsal keep every weight but lambda.
    probing = SamClipDistillationTrainer(torch.nn.Linear(1, 1), stage="head_probing", args=args)
    assert probing.model.losses == dataclasses.replace(LossWeights(), sam_loss_weight=0.0)


def test_prompt_defaults_are_the_samplers():
    recipe = load_recipe("samclip-vit-b16").override({"prompts": {}})
    assert PromptSampler(**dataclasses.asdict(recipe.prompts)) == PromptSampler()


def test_set_overrides_reach_the_effective_recipe_with_json_types():
    recipe = _cli(
        "--set",
        "losses.sam_loss_weight=1",
        "--set",
        "model.head.pooling=mean",
        "--set",
        "model.head.project_before_pool=true",
        "--set",
        "stages.1.sam_batch_size=2",
        "--set",
        "stages.0.clip_sizes=[32, 64]",
        "--set",
        "stages.1.training_args.learning_rate=1e-4",
        "--set",
        "data.clip.num_items=100",
        "--set",
        "lora.lora_dropout=0.1",
    )
    assert recipe.losses.sam_loss_weight == 1.0 and isinstance(recipe.losses.sam_loss_weight, float)
    assert recipe.model.head.pooling == "mean" and recipe.model.head.project_before_pool is True
    assert recipe.stages[1].sam_batch_size == 2 and recipe.stages[0].clip_sizes == [32, 64]
    assert recipe.stages[1].training_args["learning_rate"] == 1e-4
    assert recipe.data.clip["num_items"] == 100 and recipe.lora.lora_dropout == 0.1
    untouched = load_recipe("mosaic")
    assert recipe.losses.focal_weight == untouched.losses.focal_weight
    assert recipe.stages[1].training_args["per_device_train_batch_size"] == 32
    assert parse_override("a.b=null") == ("a.b", None) and parse_override('x={"r": 4}') == ("x", {"r": 4})
    assert parse_override("model.head.pooling=max") == ("model.head.pooling", "max")


def test_ablation_flags_are_overrides_of_the_same_object():
    mosaic = load_recipe("mosaic")
    assert (
        _cli("--naive") == _cli("--set", "losses.sam_loss_weight=0") == mosaic.override({"losses.sam_loss_weight": 0})
    )
    assert _cli("--naive").naive and not mosaic.naive and not _cli("--naive").rehearses_sam
    assert _cli("--lambda", "1") == _cli("--set", "losses.sam_loss_weight=1")
    assert _cli("--pooling", "mean", "--project-before-pool") == _cli(
        "--set", "model.head.pooling=mean", "--set", "model.head.project_before_pool=true"
    )
    assert _cli("--lora") == _cli("--set", "lora.enabled=true") and _cli("--lora").lora.enabled
    assert _cli("--lambda", "5", "--naive").losses.sam_loss_weight == 0.0  # --naive wins, as it always did
    assert _cli("--naive", "--set", "losses.sam_loss_weight=3").losses.sam_loss_weight == 3.0  # --set comes last
    assert _cli() == mosaic


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"model.head.pooling": "median"}, ["model.head.pooling", "'max', 'mean'", "median"]),
        ({"stages.0.training_args.learning_rate": -0.1}, ["stages.0.training_args.learning_rate", "> 0"]),
        ({"stages.1.stage": "warmup"}, ["stages.1.stage", "head_probing", "distillation", "resolution_adaptation"]),
        ({"losses.sam_weight": 1}, ["losses.sam_weight", "sam_loss_weight", "focal_weight"]),
        ({"model.heads.pooling": "max"}, ["model.heads.pooling", "sam_size", "head"]),
        ({"stages.7.sam_batch_size": 2}, ["stages.7.sam_batch_size", "0..1"]),
        ({"losses.sam_loss_weight": -1}, ["losses.sam_loss_weight", ">= 0"]),
        ({"losses.distill_single_mask": "yes"}, ["losses.distill_single_mask", "true or false"]),
        ({"stages.0.training_args.learning_rat": 1e-3}, ["stages.0.training_args.learning_rat", "TrainingArguments"]),
        ({"data.sam": {"num_mosaics": 3}}, ["data.sam", "source"]),
        ({"model.head.pooling.kind": "max"}, ["model.head.pooling"]),
        ({"teachers": {"sam": "facebook/sam-vit-base"}}, ["teachers.sam", "clip"]),
        ({"losses.region_weight": -0.5}, ["losses.region_weight", ">= 0"]),
        ({"prompts.num_regions": 2.5}, ["prompts.num_regions", "integer"]),
        ({"prompts.num_regions": -1}, ["prompts.num_regions", ">= 0"]),
        ({"losses.region_target": "box"}, ["losses.region_target", "'crop', 'masked_crop'", "box"]),
        ({"losses.region_background": 1}, ["losses.region_background", "true or false"]),
        ({"losses.relational_weight": -1}, ["losses.relational_weight", ">= 0"]),
        ({"losses.relational_temperature": 0}, ["losses.relational_temperature", "> 0"]),
        ({"losses.relational_bank_size": 2.5}, ["losses.relational_bank_size", "an integer"]),
        ({"losses.relational_bank_size": -1}, ["losses.relational_bank_size", ">= 0"]),
    ],
)
def test_bad_keys_and_values_raise_naming_the_field(overrides, names):
    with pytest.raises(ValueError) as error:
        load_recipe("mosaic").override(overrides)
    for name in names:
        assert name in str(error.value)


def test_bad_recipe_file_and_bad_set_are_reported(tmp_path, capsys):
    data = load_recipe("mosaic").to_dict()
    data["stages"][0]["stage"] = "warmup"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"bad\.json: stages\.0\.stage: must be one of"):
        load_recipe(path)
    with pytest.raises(ValueError, match="unknown key"):
        Recipe.from_dict({**data, "stages": data["stages"][1:], "optimizer": "adamw"})
    from transformers_samclip.cli import main

    assert main(["distill", "--set", "losses.lambda=1", "--no-eval"]) == 2
    assert "samclip distill: --recipe mosaic: unknown recipe key 'losses.lambda'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="PATH=VALUE"):
        parse_override("losses.sam_loss_weight")


def test_which_stages_need_sam_batches():
    regions = load_recipe("mosaic")  # the mosaic recipe distills regions (docs/ablations.md)
    probing, distillation = regions.stages
    assert regions.distills_regions and regions.losses.region_weight == 1.0 and regions.prompts.num_regions == 4
    mosaic = regions.override({"losses.region_weight": 0})
    assert not mosaic.distills_regions
    assert [mosaic.needs_sam_batches(s) for s in mosaic.stages] == [False, True]
    assert not mosaic.override({"losses.sam_loss_weight": 0}).needs_sam_batches(distillation)  # naive: no L_SAM
    # L_region reads D_SAM in every stage; the head-only stage still adds no L_SAM.
    assert [regions.needs_sam_batches(s) for s in regions.stages] == [True, True]
    assert not probing.rehearses_sam and regions.override({"losses.sam_loss_weight": 0}).needs_sam_batches(
        distillation
    )


def test_data_clip_may_be_a_list_of_specs():
    items = {"source": "mosaic-items", "split": "train", "num_items": 10}
    scenes = {"source": "mosaic", "split": "train", "num_mosaics": 5}
    recipe = load_recipe("mosaic").override({"data.clip": [items, scenes], "data.clip.1.num_mosaics": 7})
    assert recipe.data.clip == [items, {**scenes, "num_mosaics": 7}]
    with pytest.raises(ValueError, match=r"data\.clip\.1"):
        recipe.override({"data.clip.1": {"split": "train"}})


# The mosaic recipe shrunk onto the tiny teachers (overrides, as `--set` gives them).
TINY = [
    "--set",
    "model.sam_size=64",
    "--set",
    "model.clip_size=32",
    "--set",
    "model.head.num_hidden_layers=1",
    "--set",
    "data.clip.num_items=16",
    "--set",
    "data.clip.size=32",
    "--set",
    "data.sam.num_mosaics=4",
    "--set",
    "data.sam.canvas_size=64",
    "--set",
    "calibration=null",
    "--set",
    "evaluation=null",
    "--set",
    "stages.0.training_args.per_device_train_batch_size=4",
    "--set",
    "stages.1.training_args.per_device_train_batch_size=4",
    "--set",
    "stages.1.sam_batch_size=1",
]


def _tiny_teachers(tokenizer, teachers) -> dict:
    sam, clip = teachers
    clip_processor = CLIPProcessor(
        CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer
    )
    return {"sam_model": sam, "clip_model": clip, "clip_processor": clip_processor}


def test_run_records_the_effective_recipe(tmp_path, tokenizer, teachers):
    """One optimizer step per stage of the tiny mosaic recipe; results.json records what ran."""
    from transformers_samclip.distillation.run import run_recipe

    recipe = _cli("--lambda", "2", "--pooling", "mean", *TINY)
    results = run_recipe(
        recipe.to_dict(), tmp_path / "run", max_steps=1, evaluate=False, teachers=_tiny_teachers(tokenizer, teachers)
    )
    assert (tmp_path / "run" / "stage2-distillation" / "final" / "model.safetensors").is_file()
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["effective_recipe"] == recipe.to_dict() == results["effective_recipe"]
    assert written["losses"] == dataclasses.asdict(recipe.losses) and written["losses"]["sam_loss_weight"] == 2.0
    assert written["head"]["pooling"] == "mean" and written["naive"] is False and written["lora"] is False
    from transformers_samclip import SamClipModel

    assert SamClipModel.from_pretrained(tmp_path / "run").config.head_config.pooling == "mean"


def test_run_with_region_distillation_logs_it_in_both_stages_and_trains_the_head_otherwise(
    tmp_path, tokenizer, teachers
):
    """`losses.region_weight=1` on the tiny mosaic recipe: both stages add `L_region` (stage 1 without `L_SAM`,
    its encoder untouched), and the CLIP head ends elsewhere than in the same run without it."""
    from safetensors.torch import load_file

    from transformers_samclip.distillation.run import run_recipe

    no_warmup = ["--set", "stages.0.training_args.warmup_steps=0", "--set", "stages.1.training_args.warmup_steps=0"]
    runs = {}
    for weight in (0, 1):
        recipe = _cli(*TINY, *no_warmup, "--set", f"losses.region_weight={weight}")
        run_recipe(
            recipe,
            tmp_path / f"run{weight}",
            max_steps=1,
            evaluate=False,
            teachers=_tiny_teachers(tokenizer, teachers),
        )
        runs[weight] = tmp_path / f"run{weight}"

    def logged(run, stage):
        state = json.loads(next((run / stage).glob("checkpoint-*/trainer_state.json")).read_text())
        return state["log_history"][0]

    def weights(run, stage):
        return load_file(run / stage / "final" / "model.safetensors")

    for stage in ("stage1-head_probing", "stage2-distillation"):
        assert "loss_region" not in logged(runs[0], stage) and logged(runs[1], stage)["loss_region"] > 0
    assert "loss_sam" not in logged(runs[1], "stage1-head_probing")
    assert logged(runs[1], "stage2-distillation")["loss_sam"] > 0
    first, untouched = weights(runs[1], "stage1-head_probing"), weights(runs[0], "stage1-head_probing")
    assert all(torch.equal(first[k], untouched[k]) for k in first if not k.startswith("clip_head."))
    for stage in ("stage1-head_probing", "stage2-distillation"):
        with_regions, without = weights(runs[1], stage), weights(runs[0], stage)
        assert any(not torch.equal(with_regions[k], without[k]) for k in with_regions if k.startswith("clip_head."))


def test_sam_teacher_is_cached_only_when_the_run_reads_every_d_sam_image(tmp_path, tokenizer, teachers):
    """The tiny recipe's stage 2 reads one D_SAM image a step (`sam_batch_size=1`) of its 4: at 3 steps the SAM
    teacher runs per step and nothing is cached for it; at 4 steps its embeddings of all 4 are cached. Stage 2 computes
    L_SAM either way. The mosaic recipe's stage 2 reads 188 x 4 of its D_SAM images, as the plan counts them."""
    from transformers_samclip.distillation.config import SamClipDistillationConfig
    from transformers_samclip.distillation.plan import stage_steps
    from transformers_samclip.distillation.run import run_recipe, sam_teacher_reads

    recipe = _cli(*TINY)
    for steps, cached in ((3, False), (4, True)):
        run = tmp_path / f"steps{steps}"
        options = dict(max_steps=steps, evaluate=False, teachers=_tiny_teachers(tokenizer, teachers))
        run_recipe(recipe, run, cache_dir=run / "cache", **options)
        assert bool(list((run / "cache").glob("sam-*/complete.json"))) is cached, steps
        state = json.loads(next((run / "stage2-distillation").glob("checkpoint-*/trainer_state.json")).read_text())
        assert state["log_history"][0]["loss_sam"] > 0

    mosaic = load_recipe("mosaic")
    configs = [SamClipDistillationConfig.from_recipe(mosaic, i, tmp_path / "plan", use_cpu=True) for i in (0, 1)]
    assert sam_teacher_reads(configs, 24000, 1) == 188 * 4 == stage_steps(configs[1], 24000, 1, True)["sam_images"]
    naive = [SamClipDistillationConfig.from_recipe(mosaic.override({"losses.sam_loss_weight": 0}), 1, tmp_path)]
    assert sam_teacher_reads(naive, 24000, 1) == 0


class _Killed(Exception):
    """Stands for a kill after a checkpoint: the run stops between optimizer steps."""


def test_student_token_cache_keeps_stage1_and_resumes_onto_the_same_tokens(tmp_path, monkeypatch, tokenizer, teachers):
    """Stage 1 of the tiny mosaic recipe (3 steps of L_CLIP + L_region) without, then with the frozen encoder's
    cached trunk tokens, the cached run stopped after checkpoint 2 and run again: with the cache the encoder never
    runs (tokens stand for both views' pixels), the resumed run reads the entries the first one wrote, and every
    step's loss terms and the final weights are those of the run without the cache."""
    from safetensors.torch import load_file

    from transformers_samclip.distillation.run import run_recipe

    recipe = _cli(*TINY, "--set", "stages.0.sam_batch_size=2", "--set", "stages.0.training_args.save_steps=2")
    recipe = recipe.override({"stages": recipe.to_dict()["stages"][:1]})
    options = dict(
        max_steps=3, cache_dir=tmp_path / "cache", evaluate=False, teachers=_tiny_teachers(tokenizer, teachers)
    )
    compute_loss, training_step = SamClipDistillationTrainer.compute_loss, SamClipDistillationTrainer.training_step
    steps = {False: [], True: []}

    def recorded(self, model, inputs, *args, **kwargs):
        keys = {key for key in inputs if key.endswith(("pixel_values", "trunk_tokens"))}
        loss, outputs = compute_loss(self, model, inputs, True)
        steps["clip_trunk_tokens" in keys].append((keys, {name: value.item() for name, value in outputs.items()}))
        return loss

    def killed_at_step_3(self, *args, **kwargs):
        if self.state.global_step == 2:
            raise _Killed
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(SamClipDistillationTrainer, "compute_loss", recorded)
    run_recipe(recipe.override({"student_token_cache": False}), tmp_path / "plain", **options)
    cached_recipe = recipe.override({"student_token_cache": True})
    monkeypatch.setattr(SamClipDistillationTrainer, "training_step", killed_at_step_3)
    with pytest.raises(_Killed):
        run_recipe(cached_recipe, tmp_path / "cached", **options)
    monkeypatch.setattr(SamClipDistillationTrainer, "training_step", training_step)
    run_recipe(cached_recipe, tmp_path / "cached", **options)

    region_view = {"region_teacher_pixel_values"}
    assert [keys for keys, _ in steps[False]] == [{"clip_pixel_values", "sam_pixel_values"} | region_view] * 3
    assert [keys for keys, _ in steps[True]] == [{"clip_trunk_tokens", "sam_trunk_tokens"} | region_view] * 3
    assert steps[False][2][1]["loss"] != steps[False][0][1]["loss"]  # the head trains: equal runs are not trivially so
    for (_, ours), (_, theirs) in zip(steps[True], steps[False]):
        assert ours.keys() == theirs.keys() == {"loss", "loss_clip", "loss_region", "loss_relational"}
        assert all(ours[name] == pytest.approx(theirs[name], rel=1e-5) for name in ours)
    plain, cached = (
        load_file(tmp_path / run / "stage1-head_probing" / "final" / "model.safetensors")
        for run in ("plain", "cached")
    )
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], rtol=0, atol=1e-6, msg=name)
    # One entry per view: the resumed run's encoder is the same, so it read the tokens the first run wrote.
    assert [len(list((tmp_path / "cache").glob(f"student-{view}-*"))) for view in ("clip", "sam")] == [1, 1]
