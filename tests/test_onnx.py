"""ONNX export (`samclip export --onnx`): every graph against the torch model in onnxruntime (fp32, CPU), on a tiny
random merge and on the shipped mosaic model, fed as transformers.js feeds it; the files transformers.js reads; the
int8 graphs; the CLI's error line."""

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


@pytest.fixture(scope="module")
def exported_folder(saved_tiny_model, tmp_path_factory):
    """`samclip export TINY OUT --onnx` and the processor it was exported from."""
    out = tmp_path_factory.mktemp("onnx-folder")
    assert samclip_main(["export", str(saved_tiny_model), str(out), "--onnx"]) == 0
    return out, load_samclip(saved_tiny_model).processor


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


def _decode(model, sessions, embeddings, positional, feed, masks=None, **torch_prompts):
    """The graph on `feed` (prompt inputs by name) against `model.segment` on `torch_prompts`: max abs differences of
    the mask logits and IoU scores, and the graph's masks."""
    feed = {
        "image_embeddings": embeddings,
        "image_positional_embeddings": positional,
        **{name: value.astype(np.int64 if name == "input_labels" else np.float32) for name, value in feed.items()},
    }
    if masks is not None:
        feed.update(input_masks=masks, has_input_masks=np.ones(len(embeddings), np.float32))
    iou, pred = sessions["prompt_encoder_mask_decoder"].run(None, feed)
    torch_prompts = {name: torch.tensor(value) for name, value in torch_prompts.items()}
    with torch.no_grad():
        expected_masks, expected_iou = model.segment(
            torch.from_numpy(embeddings),
            input_masks=None if masks is None else torch.from_numpy(masks),
            **torch_prompts,
        )
    return np.abs(pred - expected_masks.numpy()).max(), np.abs(iou - expected_iou.numpy()).max(), pred


def test_prompt_decoder_takes_sam_model_prompts(exported, image):
    """Points, boxes, both and a mask prompt fed as transformers' SamModel takes them (the graph adds SAM's padding
    point itself when there is no box); a box given as corner points labelled 2 / 3 (how transformers.js passes
    one) equals the same box as `input_boxes`."""
    model, processor, sessions, config = exported
    embeddings, positional, _ = _image_embeddings(model, processor, sessions, image)
    size = config["sam_size"]
    points = np.array([[[[0.3, 0.4], [0.7, 0.6]], [[0.5, 0.5], [0.1, 0.9]]]]) * size  # 2 prompts x 2 clicks
    labels = np.array([[[1, 0], [1, -10]]])
    boxes = np.array([[[0.1, 0.2, 0.6, 0.7], [0.3, 0.3, 0.9, 0.8]]]) * size
    corners, corner_labels = boxes.reshape(1, 2, 2, 2), np.array([[[2, 3], [2, 3]]])
    no_points, no_labels = np.zeros((1, 2, 0, 2)), np.zeros((1, 2, 0))
    point_prompt = dict(input_points=points, input_labels=labels)
    cases = {
        "points": (point_prompt, point_prompt),
        "boxes": (dict(input_points=no_points, input_labels=no_labels, input_boxes=boxes), dict(input_boxes=boxes)),
        "points and boxes": (dict(point_prompt, input_boxes=boxes), dict(point_prompt, input_boxes=boxes)),
        "boxes as corners": (dict(input_points=corners, input_labels=corner_labels), dict(input_boxes=boxes)),
        "points and corners": (
            dict(
                input_points=np.concatenate([points, corners], 2),
                input_labels=np.concatenate([labels, corner_labels], 2),
            ),
            dict(point_prompt, input_boxes=boxes),
        ),
    }
    for name, (feed, torch_prompts) in cases.items():
        mask_error, iou_error, pred = _decode(model, sessions, embeddings, positional, feed, **torch_prompts)
        assert mask_error <= TOL and iou_error <= TOL, name
        assert np.abs(pred).max() > 0.1, name  # a real signal, not zeros on both sides

    mask_prompt = (
        np.random.default_rng(0).normal(0, 4, (1, 1, config["mask_size"], config["mask_size"])).astype(np.float32)
    )
    one_prompt = dict(input_points=points[:, :1], input_labels=labels[:, :1])
    mask_error, iou_error, _ = _decode(
        model, sessions, embeddings, positional, one_prompt, masks=mask_prompt, **one_prompt
    )
    assert mask_error <= TOL and iou_error <= TOL


def test_onnx_io_is_what_transformers_js_feeds(exported):
    """transformers.js feeds a session exactly onnxruntime's required inputs and reads outputs by name."""
    _, _, sessions, config = exported
    names = {
        name: ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        for name, session in sessions.items()
    }
    assert names["vision_encoder"] == (["pixel_values"], ["image_embeddings", "image_positional_embeddings"])
    assert names["prompt_encoder_mask_decoder"] == (
        ["image_embeddings", "image_positional_embeddings", "input_points", "input_labels"],
        ["iou_scores", "pred_masks"],
    )
    assert names["text_model"] == (["input_ids", "attention_mask"], ["text_embeds"])
    assert names["vision_model"] == (["pixel_values"], ["image_embeds"])
    assert config["clip_image_processor"]["image_processor_type"] == "CLIPImageProcessor"
    assert config["clip_image_processor"]["crop_size"] == {"height": config["clip_size"], "width": config["clip_size"]}


def test_text_and_clip_path_match_torch(exported, image):
    model, processor, sessions, config = exported
    texts = ["a photo of a bag.", "sneaker", "This is a photo of trouser."]
    tokens = processor.tokenizer(texts, padding=True, return_tensors="np")
    feed = {
        "input_ids": tokens["input_ids"].astype(np.int64),
        "attention_mask": tokens["attention_mask"].astype(np.int64),
    }
    (text,) = sessions["text_model"].run(None, feed)
    clip_pixels = processor(images=[image, image.rotate(90)])["pixel_values"]
    (image_embeds,) = sessions["vision_model"].run(None, {"pixel_values": clip_pixels.numpy()})
    dense_pixels = processor(images=image, view="dense")["pixel_values"]
    (dense_view,) = sessions["dense_encoder"].run(None, {"pixel_values": dense_pixels.numpy()})
    with torch.no_grad():
        expected = model(
            pixel_values=clip_pixels,
            input_ids=torch.from_numpy(feed["input_ids"]),
            attention_mask=torch.from_numpy(feed["attention_mask"]),
        )
        expected_dense_view = F.normalize(model.get_dense_image_features(dense_pixels), dim=1).numpy()
    assert (text * expected.text_embeds.numpy()).sum(-1).min() >= 0.9999
    assert (image_embeds * expected.image_embeds.numpy()).sum(-1).min() >= 0.9999
    assert np.abs(dense_view - expected_dense_view).max() <= TOL
    assert (
        config["clip_size"] == processor.clip_size
        and dense_view.shape[-1] * model.config.patch_size == config["dense_size"]
    )


def test_transformers_js_files_leave_the_transformers_load_unchanged(exported_folder):
    """`preprocessor_config.json` is SAM's view as transformers.js's `SamProcessor` reads it, and transformers still
    loads the folder's processor (both views) and model as before."""
    from transformers import AutoImageProcessor

    folder, expected = exported_folder
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    assert (
        preprocessor["image_processor_type"] == "SamImageProcessor"
        and preprocessor["processor_class"] == "SamProcessor"
    )
    assert preprocessor["size"] == {"longest_edge": expected.image_processor.size["longest_edge"]}
    assert json.loads((folder / "config.json").read_text())["transformers.js_config"] == {"dtype": "fp32"}
    reloaded = load_samclip(folder)
    assert reloaded.processor.image_processor.to_dict() == expected.image_processor.to_dict()
    assert reloaded.processor.clip_image_processor.to_dict() == expected.clip_image_processor.to_dict()
    image_processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(image_processor).__name__ == type(expected.image_processor).__name__


def test_export_onnx_without_onnx_installed_is_one_line(monkeypatch, tmp_path, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a)
    )
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
    for name in ("vision_encoder", "text_model", "dense_encoder"):
        assert result["latency"][name]["int8_mb"] < 0.5 * result["latency"][name]["fp32_mb"]
