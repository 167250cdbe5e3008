"""Engines through accelerate: the shipped accelerate configs, teachers prepared for evaluation, FSDP's wrapping
unit and gathered state dicts, and a 2-process DDP launch through a shipped config on streamed tar shards."""

import importlib.resources
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from conftest import distill_args
from test_distillation_streaming import _clip_spec, _sam_spec, shards  # noqa: F401  (shards: a fixture)
from transformers import (
    CLIPImageProcessorPil,
    CLIPProcessor,
    TrainingArguments,
)

from transformers_samclip import SamClipModel
from transformers_samclip.distillation import SamClipDistillationModule, SamClipDistillationTrainer, load_recipe

CONFIGS = importlib.resources.files("transformers_samclip") / "recipes" / "accelerate"
HOOKS = Path(__file__).parent / "launch_with_hooks.py"
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "ACCELERATE_USE_CPU": "1",
}


@pytest.mark.parametrize(
    "name, kind, processes, machines",
    [("1gpu", "NO", 1, 1), ("8gpu", "MULTI_GPU", 8, 1), ("4x8gpu", "MULTI_GPU", 32, 4), ("fsdp-8gpu", "FSDP", 8, 1)],
)
def test_shipped_accelerate_configs_load(name, kind, processes, machines):
    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert (str(config.distributed_type).split(".")[-1], config.num_processes, config.num_machines) == (
        kind,
        processes,
        machines,
    )
    assert "transformers_samclip.distillation.cli" in (CONFIGS / f"{name}.yaml").read_text()  # says how to run it


def test_fsdp_wraps_the_students_encoder_blocks(teachers):
    config = load_config_from_file(str(CONFIGS / "fsdp-8gpu.yaml"))
    layer = config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
    sam, clip = teachers
    module = SamClipDistillationModule(SamClipModel.from_teachers(sam, clip), clip_teacher=clip, sam_teacher=sam)
    assert module._no_split_modules == [layer] and config.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    wrapped = [m for m in module.modules() if type(m).__name__ == layer]
    student = module.student  # the shared encoder's blocks and the CLIP head's, which start as copies of them
    assert len(wrapped) == len(student.vision_encoder.layers) + len(student.clip_head.layers) > 0
    assert not any(name.startswith(("teachers", "clip_teacher", "sam_teacher")) for name in module.state_dict())


def test_teachers_are_prepared_for_evaluation_and_a_gathered_state_dict_saves_the_student(tmp_path, teachers):
    sam, clip = teachers
    student = SamClipModel.from_teachers(sam, clip)
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], remove_unused_columns=False)
    trainer = SamClipDistillationTrainer(student, stage="distillation", clip_teacher=clip, sam_teacher=sam, args=args)
    prepared = trainer.model.teachers
    assert prepared["clip"] is clip and prepared["sam"] is sam  # one process: placed, not wrapped
    assert not clip.training and not any(p.requires_grad for p in clip.parameters())
    assert trainer.student_state_dict() is None  # not sharded: the student saves its own parameters
    # What the Trainer passes under FSDP: the wrapper's whole state dict, which `_save` reduces to the student's.
    gathered = {name: value + 1 for name, value in trainer.model.state_dict().items()}
    trainer._save(str(tmp_path / "saved"), state_dict=gathered)
    loaded = SamClipModel.from_pretrained(tmp_path / "saved")
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, gathered[f"student.{name}"], msg=name)


def _launch(config: str, recipe, output_dir, **env) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file <shipped config> --num_processes 2` of `samclip distill` on CPU, through
    tests/launch_with_hooks.py (its `env` hooks: keys read per rank, a kill after a step)."""
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    command = [
        launcher,
        "launch",
        "--config_file",
        str(CONFIGS / config),
        "--num_processes",
        "2",
        "--main_process_port",
        "0",
        str(HOOKS),
        *distill_args(recipe, output_dir),
    ]
    return subprocess.run(command, env={**ENV, **env}, capture_output=True, text=True, timeout=1200)


def _logged_steps(stage_dir) -> list[dict]:
    state = json.loads(
        (max(stage_dir.glob("checkpoint-*"), key=lambda p: int(p.name[11:])) / "trainer_state.json").read_text()
    )
    return [entry for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow
def test_ddp_and_fsdp_launches_through_the_shipped_configs_agree_and_resume_after_a_kill(
    tmp_path,
    shards,  # noqa: F811  (the fixture imported above)
    saved_tiny_teachers,
):
    """`accelerate launch --config_file recipes/accelerate/{8gpu,fsdp-8gpu}.yaml --num_processes 2` on CPU (gloo): the
    mosaic recipe shortened to 1 + 4 steps on tiny teachers (region distillation on), D_CLIP and D_SAM streamed from
    tar shards split between the ranks. DDP runs through; FSDP2 (sharded checkpoints) is killed mid-epoch after
    checkpoint 2 of stage 2 and launched again into the same folder. FSDP's losses equal DDP's step by step, the
    resumed run ends at DDP's weights, both save a whole model that loads with from_pretrained, and the ranks read
    disjoint samples."""
    overrides = {
        "teachers": saved_tiny_teachers,
        "model": {"sam_size": 64, "clip_size": 32, "head": {"num_hidden_layers": 1}},
        "data": {"clip": _clip_spec(shards), "sam": _sam_spec(shards)},
        "evaluation": None,
        "calibration": None,
    }
    for index, steps in enumerate((1, 4)):
        for key, value in dict(max_steps=steps, per_device_train_batch_size=4, save_steps=2, logging_steps=1).items():
            overrides[f"stages.{index}.training_args.{key}"] = value
    recipe = tmp_path / "tiny-shards.json"
    recipe.write_text(json.dumps(load_recipe("mosaic").override(overrides).to_dict()))

    keys = tmp_path / "keys"
    keys.mkdir()
    ddp = _launch("8gpu.yaml", recipe, tmp_path / "ddp", SAMCLIP_TEST_KEYS_DIR=str(keys))
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "results.json").read_text())["num_processes"] == 2
    for side in ("clip", "sam"):
        read = [set((keys / f"{side}-rank{rank}.txt").read_text().split()) for rank in (0, 1)]
        assert read[0] and read[1] and not read[0] & read[1], side
    # The teacher cache and stage 1's student token cache: one entry per view, each rank's shards keyed by the
    # samples it read.
    for view in ("clip", "sam", "student-clip", "student-sam"):
        (entry,) = (tmp_path / "ddp" / "teacher-cache").glob(f"{view}-*")
        assert (entry / "complete.json").is_file()
        assert {p.name.split("-shard")[0] for p in entry.glob("*.safetensors")} == {
            "rank00000-of-00002",
            "rank00001-of-00002",
        }

    killed = _launch("fsdp-8gpu.yaml", recipe, tmp_path / "fsdp", SAMCLIP_TEST_KILL_AFTER="2")
    stage2 = tmp_path / "fsdp" / "stage2-distillation"
    assert killed.returncode != 0 and not (stage2 / "final").exists()
    assert sorted(p.name for p in (stage2 / "checkpoint-2" / "pytorch_model_fsdp_0").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]  # one shard per rank
    resumed = _launch("fsdp-8gpu.yaml", recipe, tmp_path / "fsdp")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from checkpoint-2" in resumed.stdout

    ddp_steps, fsdp_steps = _logged_steps(tmp_path / "ddp" / "stage2-distillation"), _logged_steps(stage2)
    assert [entry["step"] for entry in fsdp_steps] == [entry["step"] for entry in ddp_steps] == [1, 2, 3, 4]
    for ours, theirs in zip(fsdp_steps, ddp_steps):
        for name in ("loss", "loss_clip", "loss_sam", "loss_region", "grad_norm"):
            assert ours[name] == pytest.approx(theirs[name], rel=1e-5), (ours["step"], name)
    whole = SamClipModel.from_pretrained(tmp_path / "ddp").state_dict()
    for name, value in SamClipModel.from_pretrained(tmp_path / "fsdp").state_dict().items():
        torch.testing.assert_close(value, whole[name], rtol=1e-5, atol=1e-6, msg=name)


class _Killed(Exception):
    """Stands for a kill after a checkpoint: the run stops between optimizer steps, mid-epoch."""


@pytest.mark.slow
@pytest.mark.parametrize("streamed", [False, True])
def test_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(
    tmp_path,
    monkeypatch,
    shards,  # noqa: F811  (the fixture imported above)
    tokenizer,
    teachers,
    streamed,
):
    """Stage 2 of the shortened mosaic recipe (6 steps of 4 images: mid-epoch for the 32 item views, and mid-stream
    for the shards) stopped at step 3 after checkpoint 2, then run again into the same folder: it resumes from
    checkpoint 2 and ends at the weights of a run never stopped."""
    from safetensors.torch import load_file

    from transformers_samclip.distillation.run import run_recipe

    overrides = {
        "model": {"sam_size": 64, "clip_size": 32, "head": {"num_hidden_layers": 1}},
        "data.clip.num_items": 32,
        "data.clip.size": 32,
        "data.sam.num_mosaics": 8,
        "data.sam.canvas_size": 64,
        "evaluation": None,
        "calibration": None,
    }
    if streamed:
        overrides["data"] = {"clip": _clip_spec(shards), "sam": _sam_spec(shards)}
    for index, steps in enumerate((1, 6)):
        for key, value in dict(max_steps=steps, per_device_train_batch_size=4, save_steps=2, logging_steps=1).items():
            overrides[f"stages.{index}.training_args.{key}"] = value
    recipe = load_recipe("mosaic").override(overrides)
    sam, clip = teachers
    loaded = {
        "sam_model": sam,
        "clip_model": clip,
        "clip_processor": CLIPProcessor(
            CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer
        ),
    }
    run_recipe(recipe, tmp_path / "whole", teachers=loaded, evaluate=False)

    step = SamClipDistillationTrainer.training_step

    def killed_at_step_3(self, *args, **kwargs):
        if self.stage == "distillation" and self.state.global_step == 3:
            raise _Killed
        return step(self, *args, **kwargs)

    monkeypatch.setattr(SamClipDistillationTrainer, "training_step", killed_at_step_3)
    with pytest.raises(_Killed):
        run_recipe(recipe, tmp_path / "killed", teachers=loaded, evaluate=False)
    stage2 = tmp_path / "killed" / "stage2-distillation"
    assert (stage2 / "checkpoint-2").is_dir() and not (stage2 / "final").exists()
    monkeypatch.setattr(SamClipDistillationTrainer, "training_step", step)
    run_recipe(recipe, tmp_path / "killed", teachers=loaded, evaluate=False)
    state = json.loads((stage2 / "checkpoint-6" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4, 5, 6]
    whole, resumed = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("whole", "killed"))
    assert whole.keys() == resumed.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_two_process_ddp_first_step_equals_one_process_at_the_same_global_batch(
    tmp_path, teachers, saved_tiny_teachers
):
    """Head probing (L_CLIP alone, no regions: every term is a mean over the batch) for one step: 2 DDP processes of
    4 images through the shipped 8gpu.yaml read the same 8 images as one process of 8, so the logged loss and
    gradient norm agree within float tolerance."""
    from transformers_samclip.distillation.run import run_recipe

    sam, clip = teachers
    clip_processor = CLIPProcessor.from_pretrained(saved_tiny_teachers["clip"])
    base = load_recipe("mosaic")
    recipe = base.override(
        {
            "teachers": saved_tiny_teachers,
            "model": {"sam_size": 64, "clip_size": 32, "head": {"num_hidden_layers": 1}},
            "data.clip.num_items": 32,
            "data.clip.size": 32,
            "data.sam.num_mosaics": 4,
            "data.sam.canvas_size": 64,
            "evaluation": None,
            "calibration": None,
            "losses.region_weight": 0.0,
            "losses.relational_weight": 0.0,  # ranks within each process's own batch: not the one-process pool
            "stages": [base.to_dict()["stages"][0]],
            "stages.0.training_args": {
                "learning_rate": 2e-3,
                "max_steps": 1,
                "per_device_train_batch_size": 4,
                "logging_steps": 1,
                "save_steps": 1,
            },
        }
    )

    def first_step(run_dir):
        state = json.loads((run_dir / "stage1-head_probing" / "checkpoint-1" / "trainer_state.json").read_text())
        return next(entry for entry in state["log_history"] if "loss" in entry)

    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe.to_dict()))
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    result = subprocess.run(
        [
            launcher,
            "launch",
            "--config_file",
            str(CONFIGS / "8gpu.yaml"),
            "--num_processes",
            "2",
            "--main_process_port",
            "0",
            "-m",
            "transformers_samclip.distillation.cli",
            *distill_args(path, tmp_path / "ddp"),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    single = recipe.override({"stages.0.training_args.per_device_train_batch_size": 8})
    run_recipe(
        single,
        tmp_path / "one",
        teachers={"sam_model": sam, "clip_model": clip, "clip_processor": clip_processor},
        evaluate=False,
    )
    ddp, one = first_step(tmp_path / "ddp"), first_step(tmp_path / "one")
    assert ddp["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert ddp["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)
