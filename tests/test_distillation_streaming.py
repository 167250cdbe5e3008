"""Data at scale: D_CLIP from WebDataset tar shards, D_SAM from SA-1B's own tars (jpg + json with COCO RLE masks),
both streamed with their masks kept, split among ranks without overlap, unreadable samples skipped and counted, and
a short recipe trained on them."""

import io
import json
import os
import tarfile
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest
from transformers import CLIPImageProcessorPil, CLIPProcessor

from transformers_samclip.distillation import PromptSampler, encode_rle, is_rle, load_recipe
from transformers_samclip.distillation.run import _wrap, load_image_dataset, run_recipe
from transformers_samclip.mosaic.mosaics import iter_mosaics, make_item_views

CORRUPT_CLIP_KEY, CORRUPT_SAM_KEY = "clip-00005", "sa_3"


def _add(archive, name: str, content: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(content)
    archive.addfile(info, io.BytesIO(content))


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two img2dataset-style tars of 12 mosaic item views each (one jpg corrupt), and two SA-1B-layout tars of 4
    mosaics each (one annotation JSON cut short)."""
    root = tmp_path_factory.mktemp("shards")
    views = make_item_views("train", num_items=24, seed=1, size=32)
    for shard in range(2):
        with tarfile.open(root / f"clip-{shard:05d}.tar", "w") as archive:
            for index in range(shard * 12, shard * 12 + 12):
                key = f"clip-{index:05d}"
                image = _jpeg(views[index]["image"]) if key != CORRUPT_CLIP_KEY else b"not a jpeg"
                _add(archive, f"{key}.jpg", image)
                _add(archive, f"{key}.json", json.dumps({"caption": f"item {index}"}).encode())
    mosaics = list(iter_mosaics("train", 8, 1, 64))
    for shard in range(2):
        with tarfile.open(root / f"sa-{shard:06d}.tar", "w") as archive:
            for index in range(shard * 4, shard * 4 + 4):
                key, mosaic = f"sa_{index}", mosaics[index]
                height, width = np.asarray(mosaic["image"]).shape[:2]
                image = {"image_id": index, "height": height, "width": width, "file_name": f"{key}.jpg"}
                annotation = {
                    "image": image,
                    "annotations": [
                        {"id": i, "segmentation": encode_rle(mask), "area": int(mask.sum())}
                        for i, mask in enumerate(mosaic["instance_masks"])
                    ],
                }
                text = json.dumps(annotation).encode()
                _add(archive, f"{key}.jpg", _jpeg(mosaic["image"]))
                _add(archive, f"{key}.json", text if key != CORRUPT_SAM_KEY else text[: len(text) // 2])
    return root


def _clip_spec(root):
    return {"source": "webdataset", "data_files": str(root / "clip-*.tar")}


def _sam_spec(root):
    return {"source": "sa1b", "data_files": [str(root / "sa-000000.tar"), str(root / "sa-000001.tar")]}


def test_webdataset_d_clip_streams_and_counts_the_unreadable_sample(shards):
    items = list(_wrap(load_image_dataset(_clip_spec(shards)), _clip_spec(shards)))
    keys = [item["key"] for item in items]
    assert len(items) == 23 and CORRUPT_CLIP_KEY not in keys and len(set(keys)) == 23
    assert sum(item["skipped"] for item in items) == 1
    assert items[keys.index("clip-00006")]["skipped"] == 1  # counted on the next readable item
    assert items[0]["image"].size == (32, 32) and items[0]["image"].mode == "RGB"


def test_sa1b_tars_stream_with_their_masks_encoded(shards):
    items = list(_wrap(load_image_dataset(_sam_spec(shards)), _sam_spec(shards), masks=True))
    assert [item["key"] for item in items] == [f"sa_{i}" for i in range(8) if f"sa_{i}" != CORRUPT_SAM_KEY]
    assert sum(item["skipped"] for item in items) == 1
    expected = list(iter_mosaics("train", 8, 1, 64))
    for item in items:
        masks = expected[int(item["key"].split("_")[1])]["instance_masks"]
        assert len(item["masks"]) == len(masks) and all(is_rle(mask) for mask in item["masks"])
        assert all(mask["size"] == [64, 64] for mask in item["masks"])


@pytest.mark.parametrize("spec", [_clip_spec, _sam_spec])
def test_ranks_read_disjoint_parts_of_the_stream(shards, spec):
    parts = []
    for rank in range(2):
        state = SimpleNamespace(num_processes=2, process_index=rank)
        dataset = _wrap(load_image_dataset(spec(shards)), spec(shards), masks=spec is _sam_spec, state=state)
        assert dataset.sharded_by_node
        parts.append({item["key"] for item in dataset})
    whole = {item["key"] for item in _wrap(load_image_dataset(spec(shards)), spec(shards), masks=spec is _sam_spec)}
    assert parts[0] and parts[1] and not parts[0] & parts[1] and parts[0] | parts[1] == whole


def test_missing_shards_name_the_glob(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_files: no file matches .*nothing-\\*.tar"):
        load_image_dataset({"source": "webdataset", "data_files": str(tmp_path / "nothing-*.tar")})


def test_short_recipe_trains_on_streamed_shards_with_sam_prompts_from_the_masks(
    shards, tmp_path, monkeypatch, tokenizer, teachers
):
    prompted = []
    sample = PromptSampler.__call__
    monkeypatch.setattr(
        PromptSampler,
        "__call__",
        lambda self, masks, *args: prompted.append(len(masks or [])) or sample(self, masks, *args),
    )
    overrides = {
        "model": {"sam_size": 64, "clip_size": 32, "head": {"num_hidden_layers": 1}},
        "data": {"clip": _clip_spec(shards), "sam": _sam_spec(shards)},
        "evaluation": None,
        "calibration": None,
    }
    for index in (0, 1):
        for key, value in dict(max_steps=3, per_device_train_batch_size=8, save_steps=3, logging_steps=1).items():
            overrides[f"stages.{index}.training_args.{key}"] = value
    recipe = load_recipe("mosaic").override(overrides)
    sam, clip = teachers
    clip_processor = CLIPProcessor(
        CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer
    )
    run_recipe(
        recipe,
        tmp_path,
        teachers={"sam_model": sam, "clip_model": clip, "clip_processor": clip_processor},
        evaluate=False,
    )
    state = json.loads((tmp_path / "stage2-distillation" / "checkpoint-3" / "trainer_state.json").read_text())
    logs = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(logs) == 3 and all(np.isfinite(entry["loss_sam"]) for entry in logs)
    # Every D_SAM sample reached the prompt sampler with its masks (none fell back to the grid).
    assert prompted and min(prompted) > 0
    # 3 steps x 8 items read 24 of the 23 readable CLIP samples per pass: the corrupt one was met and counted.
    assert logs[-1]["skipped_samples"] >= 1
    assert (tmp_path / "model.safetensors").is_file()


def test_distill_names_a_shard_glob_that_matches_nothing(tmp_path):
    from transformers_samclip._cli import UsageError
    from transformers_samclip.distillation.cli import main

    with pytest.raises(UsageError, match=r"data.clip.data_files: no file matches .*none-\*.tar"):
        main(
            [
                "--recipe",
                "mosaic",
                "--output-dir",
                str(tmp_path / "out"),
                "--set",
                "data.clip.source=webdataset",
                "--set",
                f"data.clip.data_files={tmp_path / 'none-*.tar'}",
            ]
        )


def test_teacher_cache_keeps_streamed_samples_by_key_in_per_rank_shards(shards, tmp_path, teachers):
    """Two ranks each cache the CLIP teacher's outputs of their own tar (shards of 5 rows named by rank); every rank
    then reads all 23 readable samples by `__key__`, equal to the teacher's own outputs; a stream with the cache
    attached carries them; a second run hits the entry and computes nothing."""
    import torch
    from transformers import CLIPImageProcessorPil

    from transformers_samclip.distillation import TeacherOutputCache

    _, clip = teachers
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    spec = _clip_spec(shards)

    def stream(rank=None):
        state = None if rank is None else SimpleNamespace(num_processes=2, process_index=rank)
        return _wrap(load_image_dataset(spec), spec, state=state)

    for rank in (1, 0):  # rank 0 last: it marks the entry complete once every rank's shards are written
        cache = TeacherOutputCache(tmp_path, batch_size=4, shard_size=5, rank=rank, num_ranks=2)
        outputs = cache.clip_image_embeddings(clip, processor, stream(rank))
    (entry,) = tmp_path.glob("clip-*")
    assert sorted(p.name for p in entry.glob("*.safetensors")) == [
        f"rank0000{rank}-of-00002-shard-0000{shard}.safetensors" for rank in (0, 1) for shard in range(3)
    ]  # 11 readable samples on rank 0 (one corrupt), 12 on rank 1
    items = list(stream())
    with torch.no_grad():
        pixels = processor([item["image"] for item in items], return_tensors="pt")["pixel_values"]
        expected = clip.get_image_features(pixel_values=pixels).pooler_output
    assert outputs.shape == (23, clip.config.projection_dim) and all(item["key"] in outputs for item in items)
    torch.testing.assert_close(torch.stack([outputs[item["key"]] for item in items]), expected, atol=1e-5, rtol=1e-5)

    again = TeacherOutputCache(tmp_path)
    attached = stream()
    attached.cached["clip_teacher_embeds"] = again.clip_image_embeddings(clip, processor, attached)
    assert (again.hits, again.misses) == (1, 0)
    carried = torch.stack([item["clip_teacher_embeds"] for item in attached])
    torch.testing.assert_close(carried, expected, atol=1e-5, rtol=1e-5)
