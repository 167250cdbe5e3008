"""SAM-CLIP with onnxruntime, numpy, PIL and `tokenizers` only (no torch, no transformers), fed as transformers.js
feeds SAM and CLIP.

    samclip export mosaic samclip-onnx --onnx        # the graphs, tokenizer.json and onnx/samclip_onnx.json
    python examples/onnx_inference.py samclip-onnx photo.png --labels "T-shirt/top,Trouser,Bag" --point 40,60 \
        --text Bag --output result.json

Runs the three tasks on one image: zero-shot classification (`vision_model` + `text_model`), a click -> mask
(`vision_encoder` once, then `prompt_encoder_mask_decoder` per click, with transformers' `SamModel` prompts: the
click and its label, no padding point) and text -> mask (`dense_encoder` + `text_model`), and prints their results
as JSON (for the masks: pixel counts and the click mask's box). Preprocessing repeats SamClipProcessor's: PIL resizes
of the uint8 image, SAM normalisation, zero padding to the square view; the export's `tokenizer.json` is read by
`tokenizers` (CLIP's byte-level BPE, the same Rust code transformers runs).
About a second per task for the mosaic model on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from tokenizers import Tokenizer

GRAPHS = ("vision_encoder", "prompt_encoder_mask_decoder", "text_model", "vision_model", "dense_encoder")


def load_tokenizer(path: str | Path, max_length: int | None, pad_id: int) -> Tokenizer:
    """The export's `tokenizer.json`, truncating to the text tower's length and right-padding to the longest text
    with the model's pad token (as the processor's tokenizer does)."""
    tokenizer = Tokenizer.from_file(str(path))
    if max_length:
        tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=tokenizer.id_to_token(pad_id))
    return tokenizer


def tokenize(tokenizer: Tokenizer, texts: list[str]) -> dict[str, np.ndarray]:
    """`input_ids` and `attention_mask` (int64), right-padded to the longest text."""
    encodings = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
    }


def bilinear(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize the last two axes bilinearly with half-pixel centres (torch's `align_corners=False`)."""

    def axis(size_in, size_out):
        position = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, None)
        low = np.minimum(np.floor(position).astype(int), size_in - 1)
        return low, np.minimum(low + 1, size_in - 1), (position - low)

    y0, y1, wy = axis(array.shape[-2], height)
    x0, x1, wx = axis(array.shape[-1], width)
    rows = array[..., y0, :] * (1 - wy)[:, None] + array[..., y1, :] * wy[:, None]
    return rows[..., x0] * (1 - wx) + rows[..., x1] * wx


class SamClipOnnx:
    """The exported graphs and the preprocessing around them."""

    def __init__(self, folder: str | Path, threads: int = 1):
        folder = Path(folder)
        self.config = json.loads((folder / "onnx" / "samclip_onnx.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        options.log_severity_level = 3
        self.sessions = {
            name: ort.InferenceSession(
                str(folder / "onnx" / f"{name}.onnx"), options, providers=["CPUExecutionProvider"]
            )
            for name in GRAPHS
        }
        self.tokenizer = load_tokenizer(
            folder / "tokenizer.json", self.config["max_text_length"], self.config["pad_token_id"]
        )

    def _normalise(self, image: Image.Image) -> np.ndarray:
        pixels = np.asarray(image, np.float32) / 255.0
        return ((pixels - self.config["image_mean"]) / self.config["image_std"]).astype(np.float32).transpose(2, 0, 1)

    def square_view(self, image: Image.Image, size: int) -> tuple[np.ndarray, tuple[int, int]]:
        """SAM's view: longest side resized to `size` (bilinear), normalised, zero-padded to `size x size`;
        returns `(pixel_values (1, 3, size, size), resized (height, width))`."""
        scale = size / max(image.size)
        width, height = int(image.width * scale + 0.5), int(image.height * scale + 0.5)
        pixels = np.zeros((1, 3, size, size), np.float32)
        pixels[0, :, :height, :width] = self._normalise(image.resize((width, height), Image.BILINEAR))
        return pixels, (height, width)

    def clip_view(self, image: Image.Image) -> np.ndarray:
        """CLIP's view: shortest side resized to the CLIP size (bicubic), centre crop, SAM normalisation."""
        size = self.config["clip_size"]
        short, long = sorted(image.size)
        long = int(size * long / short)
        width, height = (size, long) if image.width <= image.height else (long, size)
        resized = image.resize((width, height), Image.BICUBIC)
        top, left = (height - size) // 2, (width - size) // 2
        return self._normalise(resized.crop((left, top, left + size, top + size)))[None]

    def class_embeddings(self, labels: list[str]) -> np.ndarray:
        """Template-averaged, renormalised text embeddings `(num_labels, dim)`, as SamClipModel.encode_class_names."""
        templates = self.config["templates"]
        prompts = [template.format(label) for label in labels for template in templates]
        (embeds,) = self.sessions["text_model"].run(None, tokenize(self.tokenizer, prompts))
        embeds = embeds.reshape(len(labels), len(templates), -1).mean(1)
        return embeds / np.linalg.norm(embeds, axis=-1, keepdims=True)

    def classify(self, image: Image.Image, labels: list[str]) -> dict[str, float]:
        """Zero-shot classification: softmax over the labels of scaled cosine similarities."""
        (image_embeds,) = self.sessions["vision_model"].run(None, {"pixel_values": self.clip_view(image)})
        logits = self.config["logit_scale"] * image_embeds[0] @ self.class_embeddings(labels).T
        probs = np.exp(logits - logits.max())
        return dict(zip(labels, (probs / probs.sum()).tolist()))

    def _to_original(self, maps: np.ndarray, resized: tuple[int, int], image: Image.Image) -> np.ndarray:
        # Padded square view -> the image's part -> the original size (the processor's post-processing).
        return bilinear(maps[..., : resized[0], : resized[1]], image.height, image.width)

    def click_to_mask(self, image: Image.Image, x: float, y: float) -> tuple[np.ndarray, float]:
        """One positive click (original pixel coordinates) -> the best of SAM's three masks and its predicted IoU."""
        size = self.config["sam_size"]
        pixels, resized = self.square_view(image, size)
        embeddings, positional = self.sessions["vision_encoder"].run(None, {"pixel_values": pixels})
        # The click in view coordinates, label 1; the graph adds SAM's padding point itself (there is no box).
        points = np.array([[[[x * resized[1] / image.width, y * resized[0] / image.height]]]], np.float32)
        labels = np.array([[[1]]], np.int64)
        iou, masks = self.sessions["prompt_encoder_mask_decoder"].run(
            None,
            {
                "image_embeddings": embeddings,
                "image_positional_embeddings": positional,
                "input_points": points,
                "input_labels": labels,
            },
        )
        best = int(iou[0, 0].argmax())
        full = self._to_original(bilinear(masks[0, 0, best], size, size), resized, image)
        return full > 0, float(iou[0, 0, best])

    def text_to_mask(self, image: Image.Image, labels: list[str]) -> np.ndarray:
        """Zero-shot semantic segmentation: `(height, width)` label map, 0 = background, i + 1 = labels[i]."""
        size = self.config["dense_size"]
        pixels, resized = self.square_view(image, size)
        (dense,) = self.sessions["dense_encoder"].run(None, {"pixel_values": pixels})
        cosine = np.einsum("dhw,cd->chw", dense[0], self.class_embeddings(labels))
        threshold = self.config["background_threshold"]
        background = np.full_like(cosine[:1], -2.0 if threshold is None else threshold)  # -2: never background
        logits = np.concatenate([background, cosine]) * self.config["logit_scale"]
        return self._to_original(bilinear(logits, size, size), resized, image).argmax(0)


def run(folder, image_path, labels, point, text, threads: int = 1) -> dict:
    """The three tasks on one image; returns a JSON-ready dict."""
    model = SamClipOnnx(folder, threads)
    image = Image.open(image_path).convert("RGB")
    mask, iou = model.click_to_mask(image, *point)
    text_map = model.text_to_mask(image, labels)
    ys, xs = np.nonzero(mask)
    return {
        "classification": model.classify(image, labels),
        "click": {
            "point": list(point),
            "predicted_iou": iou,
            "mask_pixels": int(mask.sum()),
            "mask_box": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())] if len(xs) else None,
        },
        "text": {
            "label": text,
            "mask_pixels": int((text_map == labels.index(text) + 1).sum()),
            "pixels_per_label": {label: int((text_map == i + 1).sum()) for i, label in enumerate(labels)},
        },
    }


def main(argv=None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a `samclip export --onnx` folder")
    parser.add_argument("image")
    parser.add_argument("--labels", required=True, help="comma-separated class names")
    parser.add_argument("--point", default=None, help="x,y of a positive click (default: the image centre)")
    parser.add_argument("--text", help="the label to segment (default: the first)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, help="write the JSON here too")
    args = parser.parse_args(argv)
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if args.text and args.text not in labels:
        parser.error(f"--text {args.text!r} is not one of --labels; add it to --labels.")
    point = (
        tuple(map(float, args.point.split(","))) if args.point else tuple(s / 2 for s in Image.open(args.image).size)
    )
    result = run(args.folder, args.image, labels, point, args.text or labels[0], args.threads)
    text = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
