"""Runs stopped part-way (Ctrl-C, SIGTERM, a kill mid-write) leave nothing half-written that the next run trusts, and
the next run resumes: the teacher cache keeps its finished shards, results.json is either the old file or the new."""

import json
import os
import signal

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil

from transformers_samclip import cli
from transformers_samclip._atomic import atomic_files, atomic_folder, write_text_atomic
from transformers_samclip.distillation import DistillationImageDataset, TeacherOutputCache


@pytest.fixture(scope="module")
def image_dataset():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(12)]
    return DistillationImageDataset(
        datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))
    )


def _count_calls(monkeypatch, target, name, interrupt_at=None):
    """Count the calls of `target.name` (the returned list grows by one per call); with `interrupt_at`, that call
    raises KeyboardInterrupt (Ctrl-C, or SIGTERM through the command's boundary)."""
    calls, original = [], getattr(target, name)

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)
    return calls


def test_teacher_cache_interrupted_then_resumed(tmp_path, monkeypatch, teachers, image_dataset):
    _, clip = teachers
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    reference = TeacherOutputCache(tmp_path / "reference", batch_size=4, shard_size=4).clip_image_embeddings(
        clip, processor, image_dataset
    )

    with monkeypatch.context() as patch:  # Ctrl-C while the second of three shards is computed
        _count_calls(patch, clip, "get_image_features", interrupt_at=2)
        with pytest.raises(KeyboardInterrupt):
            TeacherOutputCache(tmp_path / "cache", batch_size=4, shard_size=4).clip_image_embeddings(
                clip, processor, image_dataset
            )
    (entry,) = (tmp_path / "cache").glob("clip-*")
    assert sorted(p.name for p in entry.iterdir()) == ["shard-00000.safetensors"]  # no marker, no partial shard

    with monkeypatch.context() as patch:  # a kill while the completion marker is written: no marker either
        calls = _count_calls(patch, clip, "get_image_features")
        real_replace = os.replace
        patch.setattr(
            os,
            "replace",
            lambda src, dst: (
                (_ for _ in ()).throw(KeyboardInterrupt)
                if str(dst).endswith("complete.json")
                else real_replace(src, dst)
            ),
        )
        with pytest.raises(KeyboardInterrupt):
            TeacherOutputCache(tmp_path / "cache", batch_size=4, shard_size=4).clip_image_embeddings(
                clip, processor, image_dataset
            )
    assert len(calls) == 2  # shards 2 and 3 only: shard 1 was reused
    assert sorted(p.name for p in entry.iterdir()) == [f"shard-0000{i}.safetensors" for i in range(3)]

    with monkeypatch.context() as patch:
        calls = _count_calls(patch, clip, "get_image_features")
        resumed = TeacherOutputCache(tmp_path / "cache", batch_size=4, shard_size=4)
        values = resumed.clip_image_embeddings(clip, processor, image_dataset)
    assert calls == [] and (entry / "complete.json").is_file()  # every shard was there: nothing recomputed
    torch.testing.assert_close(values[:], reference[:])


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for label, color in (("shirt", 30), ("bag", 220)):
        (root / label).mkdir()
        Image.new("RGB", (32, 32), (color, 90, 90)).save(root / label / "0.png")
    return root


def test_results_json_interrupted_then_rewritten(tmp_path, monkeypatch, image_folder, capsys):
    output = tmp_path / "results.json"
    argv = [
        "evaluate",
        "mosaic",
        "--suite",
        f"imagefolder:{image_folder}",
        "--split",
        "train",
        "--output",
        str(output),
    ]
    assert cli.main(argv) == 0
    first = output.read_text()
    assert json.loads(first)["skipped_samples"] == 0

    real_replace = os.replace
    with monkeypatch.context() as patch:  # SIGTERM arrives while results.json is being replaced

        def terminated(src, dst):
            if str(dst) == str(output):
                os.kill(os.getpid(), signal.SIGTERM)
            return real_replace(src, dst)

        patch.setattr(os, "replace", terminated)
        capsys.readouterr()
        assert cli.main(argv) == 130
    assert "samclip evaluate: interrupted" in capsys.readouterr().err
    assert output.read_text() == first  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary file left behind

    assert cli.main(argv) == 0
    assert json.loads(output.read_text())["rows"] == json.loads(first)["rows"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the boundary put the default handler back


def test_atomic_writes_leave_the_old_file_or_folder(tmp_path):
    path = write_text_atomic(tmp_path / "a" / "r.json", "old")
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "final") as folder:
            (folder / "model.safetensors").write_text("half")
            raise RuntimeError("killed")
    assert not (tmp_path / "final").exists() and path.read_text() == "old"
    with atomic_folder(tmp_path / "final") as folder:
        (folder / "model.safetensors").write_text("whole")
    with atomic_folder(tmp_path / "final") as folder:  # a second save replaces the first
        (folder / "config.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == ["config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "final"]


def test_resume_skips_a_checkpoint_cut_off_mid_write(tmp_path):
    from transformers_samclip.distillation.run import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path / "stage2") is None
    for step, finished in ((2, True), (10, True), (12, False)):  # killed while checkpoint-12 was being written
        folder = tmp_path / "stage2" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_text("weights")
        if finished:  # the Trainer writes trainer_state.json last
            (folder / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path / "stage2") == str(tmp_path / "stage2" / "checkpoint-10")


def test_saved_model_files_land_config_last(tmp_path, monkeypatch):
    moved, real_replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (moved.append(os.path.basename(dst)), real_replace(src, dst)))
    with pytest.raises(KeyboardInterrupt):
        with atomic_files(tmp_path / "run") as folder:
            (folder / "config.json").write_text("{}")
            raise KeyboardInterrupt  # killed while saving: nothing lands
    assert list((tmp_path / "run").iterdir()) == [] and moved == []
    with atomic_files(tmp_path / "run") as folder:
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (folder / name).write_text(name)
    assert moved[-1] == "config.json" and sorted(moved) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(moved)
