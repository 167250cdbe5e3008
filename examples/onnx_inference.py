"""SAM-CLIP with onnxruntime, numpy and PIL only (no torch, no transformers), the way SAM's web demo runs SAM.

    samclip export mosaic samclip-onnx --onnx        # the graphs, tokenizer.json and onnx/samclip_onnx.json
    python examples/onnx_inference.py samclip-onnx photo.png --labels "T-shirt/top,Trouser,Bag" --point 40,60 \
        --text Bag --output result.json

Runs the three tasks on one image: zero-shot classification (`clip_encoder` + `text_encoder`), a click -> mask
(`vision_encoder` once, then `prompt_encoder_mask_decoder` per click) and text -> mask (`dense_encoder` +
`text_encoder`), and prints their results as JSON (for the masks: pixel counts and the click mask's box). Preprocessing repeats SamClipProcessor's: PIL resizes of the uint8 image, SAM normalisation,
zero padding to the square view; the tokenizer is CLIP's byte-level BPE read from the export's `tokenizer.json`.
About a second per task for the mosaic model on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import re
import unicodedata
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

# CLIP's pre-tokenizer, with the Unicode classes \p{L} / \p{N} written in Python's re: letters are word characters
# that are neither digits nor "_".
TOKEN_PATTERN = re.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+")


def _byte_alphabet() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character map, which byte-level BPE vocabularies are written in.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(extra)}


class ClipBpeTokenizer:
    """CLIP's tokenizer (lowercase, byte-level BPE with `</w>` word ends, bos/eos) from a `tokenizer.json`."""

    def __init__(self, path: str | Path, max_length: int | None = None, pad_id: int | None = None):
        model = json.loads(Path(path).read_text())["model"]
        self.vocab = model["vocab"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.unk = self.vocab.get(model.get("unk_token") or "", 0)
        self.bos, self.eos = self.vocab["<|startoftext|>"], self.vocab["<|endoftext|>"]
        self.pad = self.eos if pad_id is None else pad_id
        self.max_length = max_length
        self.bytes = _byte_alphabet()

    def _bpe(self, word: str) -> list[str]:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = set(zip(parts, parts[1:]))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, with bos and eos, truncated to `max_length`."""
        text = re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).lower()
        ids = [self.bos]
        for piece in TOKEN_PATTERN.findall(text):
            mapped = "".join(self.bytes[b] for b in piece.encode("utf-8"))
            ids += [self.vocab.get(token, self.unk) for token in self._bpe(mapped)]
        ids.append(self.eos)
        if self.max_length and len(ids) > self.max_length:
            ids = ids[: self.max_length - 1] + [self.eos]
        return ids

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        """`input_ids` and `attention_mask` (int64), right-padded to the longest text."""
        encoded = [self.encode(text) for text in texts]
        length = max(map(len, encoded))
        ids = np.full((len(encoded), length), self.pad, np.int64)
        mask = np.zeros((len(encoded), length), np.int64)
        for row, tokens in enumerate(encoded):
            ids[row, : len(tokens)], mask[row, : len(tokens)] = tokens, 1
        return {"input_ids": ids, "attention_mask": mask}


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
            name: ort.InferenceSession(str(folder / "onnx" / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
            for name in ("vision_encoder", "prompt_encoder_mask_decoder", "text_encoder", "clip_encoder", "dense_encoder")
        }
        self.tokenizer = ClipBpeTokenizer(folder / "tokenizer.json", self.config["max_text_length"], self.config["pad_token_id"])

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
        (embeds,) = self.sessions["text_encoder"].run(None, self.tokenizer([t.format(l) for l in labels for t in templates]))
        embeds = embeds.reshape(len(labels), len(templates), -1).mean(1)
        return embeds / np.linalg.norm(embeds, axis=-1, keepdims=True)

    def classify(self, image: Image.Image, labels: list[str]) -> dict[str, float]:
        """Zero-shot classification: softmax over the labels of scaled cosine similarities."""
        image_embeds, _ = self.sessions["clip_encoder"].run(None, {"pixel_values": self.clip_view(image)})
        logits = self.config["logit_scale"] * image_embeds[0] @ self.class_embeddings(labels).T
        probs = np.exp(logits - logits.max())
        return dict(zip(labels, (probs / probs.sum()).tolist()))

    def _to_original(self, maps: np.ndarray, resized: tuple[int, int], image: Image.Image) -> np.ndarray:
        # Maps of the padded square view -> crop the image's part -> the original size (the processor's post-processing).
        return bilinear(maps[..., : resized[0], : resized[1]], image.height, image.width)

    def click_to_mask(self, image: Image.Image, x: float, y: float) -> tuple[np.ndarray, float]:
        """One positive click (original pixel coordinates) -> the best of SAM's three masks and its predicted IoU."""
        size = self.config["sam_size"]
        pixels, resized = self.square_view(image, size)
        embeddings, positional = self.sessions["vision_encoder"].run(None, {"pixel_values": pixels})
        # The click in view coordinates, then SAM's padding point (label -1) since there is no box.
        points = np.array([[[[x * resized[1] / image.width, y * resized[0] / image.height], [0.0, 0.0]]]], np.float32)
        labels = np.array([[[1, -1]]], np.int64)
        iou, masks = self.sessions["prompt_encoder_mask_decoder"].run(
            None, {"image_embeddings": embeddings, "image_positional_embeddings": positional,
                   "input_points": points, "input_labels": labels})
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
        "click": {"point": list(point), "predicted_iou": iou, "mask_pixels": int(mask.sum()),
                  "mask_box": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())] if len(xs) else None},
        "text": {"label": text, "mask_pixels": int((text_map == labels.index(text) + 1).sum()),
                 "pixels_per_label": {label: int((text_map == i + 1).sum()) for i, label in enumerate(labels)}},
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
    point = tuple(map(float, args.point.split(","))) if args.point else tuple(s / 2 for s in Image.open(args.image).size)
    result = run(args.folder, args.image, labels, point, args.text or labels[0], args.threads)
    text = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
