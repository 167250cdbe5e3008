"""ONNX export of SAM-CLIP for onnxruntime: SAM split as transformers.js/optimum split it, plus the text tower
and the CLIP path, and int8 dynamic quantization.

Graphs written under `OUT_DIR/onnx/` (batch is dynamic everywhere, view sizes are fixed at export):

- `vision_encoder.onnx`: `pixel_values (B, 3, S, S)` at the SAM size -> `image_embeddings (B, C, g, g)`,
  `image_positional_embeddings (B, C, g, g)`.
- `prompt_encoder_mask_decoder.onnx`: `image_embeddings`, `image_positional_embeddings`, `input_points (B, P, N, 2)`
  and `input_labels (B, P, N)` (SAM-path pixel coordinates) -> `iou_scores (B, P, 3)`, `pred_masks (B, P, 3, 4g, 4g)`.
  Labels follow SAM's ONNX demo: 1 / 0 positive / negative click, -1 padding point (append `(0, 0)` with label -1
  when there is no box), 2 / 3 a box's top-left / bottom-right corner, -10 ignored. Two optional inputs carry a
  mask prompt: `input_masks (B, 1, 4g, 4g)` (low-resolution logits) with `has_input_masks (B,)` = 1; both default
  to "no mask", so the four-input call of transformers.js works unchanged.
- `text_encoder.onnx`: `input_ids`, `attention_mask (T, L)` -> `text_embeds (T, D)`, L2-normalised.
- `clip_encoder.onnx`: `pixel_values` at the CLIP size -> `image_embeds (B, D)` (L2-normalised) and
  `dense_features (B, D, h, w)` (per-patch, L2-normalised over D).
- `dense_encoder.onnx`: `pixel_values` at the dense view's size (twice the CLIP size) -> `dense_features`, the map
  zero-shot semantic segmentation reads.

`onnx/samclip_onnx.json` records what a client needs besides the graphs (sizes, normalisation, logit scale,
background threshold, prompt templates).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling import DEFAULT_TEMPLATES, SamClipModel, SamClipProcessor

ONNX_SUBDIR = "onnx"
ONNX_CONFIG_NAME = "samclip_onnx.json"
GRAPH_NAMES = ("vision_encoder", "prompt_encoder_mask_decoder", "text_encoder", "clip_encoder", "dense_encoder")
OPSET = 18
BOX_TOP_LEFT_LABEL, BOX_BOTTOM_RIGHT_LABEL = 2, 3


class VisionEncoderGraph(nn.Module):
    """SAM path: pixel values -> image embeddings and the (batch-repeated) dense positional grid."""

    def __init__(self, model: SamClipModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        embeddings = self.model.vision_encoder(pixel_values).last_hidden_state
        positional = self.model.get_image_wide_positional_embeddings().expand(embeddings.shape[0], -1, -1, -1)
        return embeddings, positional


class PromptDecoderGraph(nn.Module):
    """SAM's prompt encoder and mask decoder with box corners as labelled points and a switchable mask prompt,
    so that one graph with fixed inputs serves points, boxes and masks (SAM's own ONNX demo does the same)."""

    def __init__(self, model: SamClipModel):
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder

    def forward(self, image_embeddings, image_positional_embeddings, input_points, input_labels, input_masks, has_input_masks):
        encoder = self.prompt_encoder
        sparse = encoder._embed_points(input_points, input_labels, pad=False)
        for label in (BOX_TOP_LEFT_LABEL, BOX_BOTTOM_RIGHT_LABEL):
            sparse = torch.where((input_labels == label)[..., None], sparse + encoder.point_embed[label].weight, sparse)
        no_mask = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = torch.where(has_input_masks.reshape(-1, 1, 1, 1) > 0, encoder.mask_embed(input_masks), no_mask)
        dense = dense.expand(image_embeddings.shape[0], -1, image_embeddings.shape[2], image_embeddings.shape[3])
        masks, iou = self.mask_decoder(
            image_embeddings=image_embeddings,
            image_positional_embeddings=image_positional_embeddings,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        return iou, masks


class TextEncoderGraph(nn.Module):
    """Token ids -> L2-normalised text embeddings."""

    def __init__(self, model: SamClipModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return F.normalize(self.model.get_text_features(input_ids, attention_mask=attention_mask).pooler_output, dim=-1)


class ClipEncoderGraph(nn.Module):
    """CLIP path: pixel values -> normalised image embedding (optional) and normalised per-patch features."""

    def __init__(self, model: SamClipModel, with_embedding: bool = True):
        super().__init__()
        self.model = model
        self.with_embedding = with_embedding

    def forward(self, pixel_values):
        head = self.model.clip_head
        trunk = self.model.vision_encoder(pixel_values, compute_neck=False).trunk_hidden_state
        dense = F.normalize(head.dense_features(trunk), dim=1)
        if not self.with_embedding:
            return dense
        return F.normalize(head(trunk)[1], dim=-1), dense


def onnx_config(model: SamClipModel, processor: SamClipProcessor) -> dict:
    """What a client needs besides the graphs: view sizes, normalisation, logit scale, background threshold,
    the zero-shot prompt templates and the text length limit."""
    config = model.config
    image_processor = processor.image_processor
    return {
        "sam_size": config.image_size,
        "clip_size": processor.clip_size,
        "dense_size": processor.dense_size,
        "mask_size": 4 * config.prompt_encoder_config.image_embedding_size,
        "image_mean": list(image_processor.image_mean),
        "image_std": list(image_processor.image_std),
        "logit_scale": float(model.logit_scale.detach().exp()),
        "background_threshold": config.background_threshold,
        "templates": list(DEFAULT_TEMPLATES),
        "max_text_length": getattr(config.text_config, "max_position_embeddings", None),
        "pad_token_id": processor.tokenizer.pad_token_id,
        "labels": {"positive": 1, "negative": 0, "padding": -1, "box_top_left": BOX_TOP_LEFT_LABEL,
                   "box_bottom_right": BOX_BOTTOM_RIGHT_LABEL},
    }


def example_inputs(model: SamClipModel, processor: SamClipProcessor, batch: int = 2) -> dict[str, tuple]:
    """Per graph, the example inputs it is traced with (batch 2, so that the batch axis stays symbolic)."""
    config = model.config
    sam, clip, dense = config.image_size, processor.clip_size, processor.dense_size
    grid = config.prompt_encoder_config.image_embedding_size
    channels = config.vision_config.output_channels
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(batch, 1, 3, 2, generator=generator) * sam
    labels = torch.tensor([[[1, 0, -1]]] * batch, dtype=torch.int64)
    ids = torch.randint(2, config.text_config.vocab_size, (batch, 7), generator=generator)
    return {
        "vision_encoder": (torch.randn(batch, 3, sam, sam, generator=generator),),
        "prompt_encoder_mask_decoder": (
            torch.randn(batch, channels, grid, grid, generator=generator),
            model.get_image_wide_positional_embeddings().detach().expand(batch, -1, -1, -1).contiguous(),
            points, labels,
            torch.randn(batch, 1, 4 * grid, 4 * grid, generator=generator),
            torch.ones(batch),
        ),
        "text_encoder": (ids, torch.ones_like(ids)),
        "clip_encoder": (torch.randn(batch, 3, clip, clip, generator=generator),),
        "dense_encoder": (torch.randn(batch, 3, dense, dense, generator=generator),),
    }


GRAPH_IO = {
    "vision_encoder": (("pixel_values",), ("image_embeddings", "image_positional_embeddings")),
    "prompt_encoder_mask_decoder": (
        ("image_embeddings", "image_positional_embeddings", "input_points", "input_labels", "input_masks", "has_input_masks"),
        ("iou_scores", "pred_masks"),
    ),
    "text_encoder": (("input_ids", "attention_mask"), ("text_embeds",)),
    "clip_encoder": (("pixel_values",), ("image_embeds", "dense_features")),
    "dense_encoder": (("pixel_values",), ("dense_features",)),
}
# Axes that stay symbolic: batch everywhere, prompts per image and points per prompt, text length.
DYNAMIC_AXES = {
    "pixel_values": {0: "batch"}, "image_embeddings": {0: "batch"}, "image_positional_embeddings": {0: "batch"},
    "input_points": {0: "batch", 1: "point_batch", 2: "num_points"},
    "input_labels": {0: "batch", 1: "point_batch", 2: "num_points"},
    "input_masks": {0: "batch"}, "has_input_masks": {0: "batch"},
    "iou_scores": {0: "batch", 1: "point_batch"}, "pred_masks": {0: "batch", 1: "point_batch"},
    "input_ids": {0: "text_batch", 1: "sequence"}, "attention_mask": {0: "text_batch", 1: "sequence"},
    "text_embeds": {0: "text_batch"}, "image_embeds": {0: "batch"}, "dense_features": {0: "batch"},
}


def graph_module(name: str, model: SamClipModel) -> nn.Module:
    """The torch module that `name` is exported from (the benchmark runs it as the torch eager baseline)."""
    if name == "vision_encoder":
        return VisionEncoderGraph(model)
    if name == "prompt_encoder_mask_decoder":
        return PromptDecoderGraph(model)
    if name == "text_encoder":
        return TextEncoderGraph(model)
    return ClipEncoderGraph(model, with_embedding=name == "clip_encoder")


def _export_graph(module: nn.Module, args: tuple, path: Path, input_names, output_names) -> None:
    # The TorchScript exporter: torch 2.13's dynamo exporter fixes the decoder's point-batch axis to the example's
    # (iou_scores came out (batch, 1, 3)) and takes 47 s instead of 3 s on the mosaic model.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), input_names=list(input_names), output_names=list(output_names),
            dynamic_axes={name: DYNAMIC_AXES[name] for name in (*input_names, *output_names)},
            opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )


def _add_mask_defaults(path: Path, mask_size: int) -> None:
    """Give `input_masks` and `has_input_masks` initializers of the same name: onnxruntime then treats them as
    optional inputs whose default is "no mask prompt" (has_input_masks = 0)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph_model = onnx.load(str(path))
    graph_model.graph.initializer.extend([
        numpy_helper.from_array(np.zeros((1, 1, mask_size, mask_size), np.float32), "input_masks"),
        numpy_helper.from_array(np.zeros((1,), np.float32), "has_input_masks"),
    ])
    onnx.save(graph_model, str(path))


def export_onnx(model: SamClipModel, processor: SamClipProcessor, out_dir: str | Path, graphs=GRAPH_NAMES) -> dict[str, Path]:
    """Write the graphs (default: all five) and `samclip_onnx.json` under `out_dir/onnx/`; returns
    `{graph name: path}`."""
    import onnx

    folder = Path(out_dir) / ONNX_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    config = onnx_config(model, processor)
    inputs = example_inputs(model, processor)
    paths = {}
    with torch.no_grad():
        for name in graphs:
            path = folder / f"{name}.onnx"
            input_names, output_names = GRAPH_IO[name]
            _export_graph(graph_module(name, model), inputs[name], path, input_names, output_names)
            if name == "prompt_encoder_mask_decoder":
                _add_mask_defaults(path, config["mask_size"])
            onnx.checker.check_model(str(path))
            paths[name] = path
    (folder / ONNX_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return paths


def quantize_onnx(onnx_dir: str | Path, graphs=GRAPH_NAMES) -> dict[str, Path]:
    """int8 dynamic quantization (weights int8, activations quantized on the fly) of each graph with
    onnxruntime's quantizer: `NAME.onnx` -> `NAME_quantized.onnx` (transformers.js's naming)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx_dir = Path(onnx_dir)
    paths = {}
    root = logging.getLogger()
    level = root.level
    # The quantizer warns on the root logger for every integer shape tensor it rightly leaves alone.
    root.setLevel(logging.ERROR)
    try:
        for name in graphs:
            target = onnx_dir / f"{name}_quantized.onnx"
            quantize_dynamic(onnx_dir / f"{name}.onnx", target, weight_type=QuantType.QInt8)
            paths[name] = target
    finally:
        root.setLevel(level)
    return paths
