"""examples/onnx_inference.py, the numpy-only client: its tokenizer and views equal the processor's, and run in a
subprocess where importing torch or transformers fails, its three tasks agree with the torch model."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from transformers_samclip.cli import main as samclip_main
from transformers_samclip.hub import load_samclip
from transformers_samclip.mosaic import FASHION_MNIST_CLASSES

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "examples" / "onnx_inference.py"
IMAGE = ROOT / "demo" / "examples" / "mosaic-0.png"
LABELS = list(FASHION_MNIST_CLASSES)


@pytest.fixture(scope="module")
def client():
    spec = importlib.util.spec_from_file_location("onnx_inference", CLIENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx-client")
    assert samclip_main(["export", "mosaic", str(out), "--int8"]) == 0  # --int8: fp32 and int8 graphs
    loaded = load_samclip("mosaic")
    return out, loaded.model.eval(), loaded.processor


def test_tokenizer_and_views_equal_the_processor(client, mosaic):
    from PIL import Image

    folder, model, processor = mosaic
    onnx_model = client.SamClipOnnx(folder)
    texts = [template.format(label) for label in LABELS + ["Ankle boot's 2 soles_x!"] for template in onnx_model.config["templates"]]
    expected = processor.tokenizer(texts, padding=True, return_tensors="np")
    ours = onnx_model.tokenizer(texts)
    assert np.array_equal(ours["input_ids"], expected["input_ids"])
    assert np.array_equal(ours["attention_mask"], expected["attention_mask"])
    image = Image.open(IMAGE).convert("RGB").resize((150, 97))  # not square, not the view size
    sam_view, _ = onnx_model.square_view(image, onnx_model.config["sam_size"])
    assert np.abs(sam_view - processor(images=image, input_points=[[[1, 1]]])["pixel_values"].numpy()).max() <= 1e-5
    assert np.abs(onnx_model.clip_view(image) - processor(images=image)["pixel_values"].numpy()).max() <= 1e-5


def test_client_runs_without_torch_and_matches_the_torch_model(mosaic, tmp_path):
    folder, model, processor = mosaic
    blocker = tmp_path / "blocked"
    for name in ("torch", "transformers"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked in this test')\n")
    point = (40.0, 70.0)
    result = subprocess.run(
        [sys.executable, str(CLIENT), str(folder), str(IMAGE), "--labels", ",".join(LABELS),
         "--point", ",".join(map(str, point)), "--text", "Bag", "--output", str(tmp_path / "out.json")],
        env={"PYTHONPATH": str(blocker), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads((tmp_path / "out.json").read_text())
    # The blocker works: the same interpreter cannot import torch with that path.
    check = subprocess.run([sys.executable, "-c", "import torch"], env={"PYTHONPATH": str(blocker)}, capture_output=True, text=True)
    assert "torch is blocked" in check.stderr

    from PIL import Image

    image = Image.open(IMAGE).convert("RGB")
    with torch.no_grad():
        class_embeds = model.encode_class_names(LABELS, processor.tokenizer)
        image_embeds = model(**processor(images=image)).image_embeds
        probs = (model.logit_scale.exp() * image_embeds @ class_embeds.T).softmax(-1)[0].numpy()
        inputs = processor(images=image, input_points=[[list(point)]])
        outputs = model(**inputs)
        masks = processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])[0]
        best = int(outputs.iou_scores[0, 0].argmax())
        dense = processor(images=image, view="dense")
        label_map = processor.post_process_semantic_segmentation(
            model.semantic_segmentation(dense["pixel_values"], class_embeds).logits, dense["original_sizes"],
            dense["reshaped_input_sizes"])[0].numpy()
    assert np.abs(np.array([out["classification"][label] for label in LABELS]) - probs).max() <= 1e-4
    assert abs(out["click"]["predicted_iou"] - float(outputs.iou_scores[0, 0, best])) <= 1e-4
    assert out["click"]["mask_pixels"] == int(masks[0, best].sum())
    assert out["text"]["pixels_per_label"] == {label: int((label_map == i + 1).sum()) for i, label in enumerate(LABELS)}


def test_int8_graphs_stay_close_to_fp32(mosaic):
    """int8 dynamic quantization keeps the CLIP path's embeddings (the benchmark measures the task-level change)."""
    import onnxruntime as ort
    from PIL import Image

    folder, _, processor = mosaic
    images = [Image.open(path).convert("RGB") for path in sorted(IMAGE.parent.glob("*.png"))]
    pixels = processor(images=images)["pixel_values"].numpy()
    fp32, int8 = (ort.InferenceSession(str(folder / "onnx" / f"clip_encoder{suffix}.onnx"), providers=["CPUExecutionProvider"])
                  .run(None, {"pixel_values": pixels}) for suffix in ("", "_quantized"))
    assert (fp32[0] * int8[0]).sum(-1).min() >= 0.999  # measured 0.99998
    assert (fp32[1] * int8[1]).sum(1).min() >= 0.99  # per-patch features, measured 0.998
    assert (folder / "onnx" / "clip_encoder_quantized.onnx").stat().st_size < (folder / "onnx" / "clip_encoder.onnx").stat().st_size
