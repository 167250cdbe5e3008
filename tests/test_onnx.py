"""ONNX export (`samclip export --onnx`): every graph against the torch model in onnxruntime (fp32, CPU), on a tiny
random merge and on the shipped mosaic model; the int8 graphs; the CLI's error line."""

import json

import numpy as np
import onnxruntime as ort  # the onnx extra, which ./bootstrap installs: these tests must run in CI
import pytest
import torch
import torch.nn.functional as F

from transformers_samclip.cli import main as samclip_main
from transformers_samclip.hub import load_samclip
from transformers_samclip.hub.onnx import GRAPH_NAMES, ONNX_CONFIG_NAME

TOL = 1e-4


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3  # the mask-prompt defaults are initializers that are also inputs, on purpose
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module", params=["tiny", "mosaic"])
def exported(request, saved_tiny_model, tmp_path_factory):
    """`samclip export SOURCE OUT --onnx` for the tiny random merge and the shipped mosaic model."""
    source = str(saved_tiny_model) if request.param == "tiny" else "mosaic"
    out = tmp_path_factory.mktemp(f"onnx-{request.param}")
    assert samclip_main(["export", source, str(out), "--onnx"]) == 0
    loaded = load_samclip(source)
    sessions = {name: _session(out / "onnx" / f"{name}.onnx") for name in GRAPH_NAMES}
    return loaded.model.eval(), loaded.processor, sessions, json.loads((out / "onnx" / ONNX_CONFIG_NAME).read_text())


def _image_embeddings(model, processor, sessions, image):
    pixels = processor(images=image, input_points=[[[1, 1]]])["pixel_values"]
    embeddings, positional = sessions["vision_encoder"].run(None, {"pixel_values": pixels.numpy()})
    with torch.no_grad():
        expected = model.get_image_embeddings(pixels)
    return embeddings, positional, expected


def test_vision_encoder_matches_torch(exported, image):
    model, processor, sessions, _ = exported
    embeddings, positional, expected = _image_embeddings(model, processor, sessions, image)
    assert np.abs(embeddings - expected.numpy()).max() <= TOL
    assert np.abs(positional - model.get_image_wide_positional_embeddings().detach().numpy()).max() <= TOL


def _decode(model, sessions, embeddings, positional, points, labels, masks=None, **torch_prompts):
    feed = {"image_embeddings": embeddings, "image_positional_embeddings": positional,
            "input_points": points.astype(np.float32), "input_labels": labels.astype(np.int64)}
    if masks is not None:
        feed.update(input_masks=masks, has_input_masks=np.ones(len(embeddings), np.float32))
    iou, pred = sessions["prompt_encoder_mask_decoder"].run(None, feed)
    with torch.no_grad():
        expected_masks, expected_iou = model.segment(
            torch.from_numpy(embeddings), input_masks=None if masks is None else torch.from_numpy(masks), **torch_prompts
        )
    return np.abs(pred - expected_masks.numpy()).max(), np.abs(iou - expected_iou.numpy()).max(), pred


def test_prompt_decoder_matches_torch_for_points_boxes_and_masks(exported, image):
    model, processor, sessions, config = exported
    embeddings, positional, _ = _image_embeddings(model, processor, sessions, image)
    size = config["sam_size"]
    points = np.array([[[[0.3, 0.4], [0.7, 0.6]], [[0.5, 0.5], [0.1, 0.9]]]]) * size  # 2 prompts x 2 clicks
    labels = np.array([[[1, 0], [1, 1]]])
    # Points alone: SAM appends a padding point (label -1); the graph expects the client to do it.
    padded_points = np.concatenate([points, np.zeros((1, 2, 1, 2))], axis=2)
    padded_labels = np.concatenate([labels, -np.ones((1, 2, 1))], axis=2)
    torch_points = dict(input_points=torch.tensor(points, dtype=torch.float32), input_labels=torch.tensor(labels))
    mask_error, iou_error, pred = _decode(model, sessions, embeddings, positional, padded_points, padded_labels, **torch_points)
    assert mask_error <= TOL and iou_error <= TOL
    assert np.abs(pred).max() > 0.1  # a real signal, not zeros on both sides

    boxes = np.array([[[0.1, 0.2, 0.6, 0.7], [0.3, 0.3, 0.9, 0.8]]]) * size
    corner_labels = np.tile(np.array([[[2, 3]]]), (1, 2, 1))
    mask_error, iou_error, _ = _decode(model, sessions, embeddings, positional, boxes.reshape(1, 2, 2, 2),
                                       corner_labels, input_boxes=torch.tensor(boxes, dtype=torch.float32))
    assert mask_error <= TOL and iou_error <= TOL

    mask_prompt = np.random.default_rng(0).normal(0, 4, (1, 1, config["mask_size"], config["mask_size"])).astype(np.float32)
    mask_error, iou_error, _ = _decode(model, sessions, embeddings, positional, padded_points[:, :1],
                                       padded_labels[:, :1], masks=mask_prompt,
                                       input_points=torch_points["input_points"][:, :1],
                                       input_labels=torch_points["input_labels"][:, :1])
    assert mask_error <= TOL and iou_error <= TOL


def test_text_and_clip_path_match_torch(exported, image):
    model, processor, sessions, config = exported
    texts = ["a photo of a bag.", "sneaker", "This is a photo of trouser."]
    tokens = processor.tokenizer(texts, padding=True, return_tensors="np")
    feed = {"input_ids": tokens["input_ids"].astype(np.int64), "attention_mask": tokens["attention_mask"].astype(np.int64)}
    (text,) = sessions["text_encoder"].run(None, feed)
    clip_pixels = processor(images=[image, image.rotate(90)])["pixel_values"]
    image_embeds, dense = sessions["clip_encoder"].run(None, {"pixel_values": clip_pixels.numpy()})
    dense_pixels = processor(images=image, view="dense")["pixel_values"]
    (dense_view,) = sessions["dense_encoder"].run(None, {"pixel_values": dense_pixels.numpy()})
    with torch.no_grad():
        expected = model(pixel_values=clip_pixels, input_ids=torch.from_numpy(feed["input_ids"]),
                         attention_mask=torch.from_numpy(feed["attention_mask"]))
        expected_dense = F.normalize(model.get_dense_image_features(clip_pixels), dim=1).numpy()
        expected_dense_view = F.normalize(model.get_dense_image_features(dense_pixels), dim=1).numpy()
    assert (text * expected.text_embeds.numpy()).sum(-1).min() >= 0.9999
    assert (image_embeds * expected.image_embeds.numpy()).sum(-1).min() >= 0.9999
    assert np.abs(dense - expected_dense).max() <= TOL
    assert np.abs(dense_view - expected_dense_view).max() <= TOL
    assert config["clip_size"] == processor.clip_size and dense_view.shape[-1] * model.config.patch_size == config["dense_size"]


def test_export_onnx_without_onnx_installed_is_one_line(monkeypatch, tmp_path, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a))
    assert samclip_main(["export", "mosaic", str(tmp_path / "out"), "--onnx"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--onnx" in err and "transformers-samclip[onnx]" in err


def test_onnx_benchmark_fp32_equals_torch_and_int8_is_smaller(tmp_path):
    """`python -m benchmarks.bench_onnx --tiny`: onnxruntime fp32 predicts exactly what torch eager predicts on the
    mosaic world, and int8 shrinks the big graphs."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not part of the package
    from benchmarks import bench_onnx

    result = bench_onnx.main(["--tiny", "--output", str(tmp_path / "bench.json")])
    assert result["quality"]["onnxruntime fp32"] == result["quality"]["torch eager"]
    assert result["quality"]["torch eager"]["box_miou"] > 0.5
    for name in ("vision_encoder", "text_encoder", "dense_encoder"):
        assert result["latency"][name]["int8_mb"] < 0.5 * result["latency"][name]["fp32_mb"]
