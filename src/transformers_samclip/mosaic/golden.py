"""Golden values of a saved SAM-CLIP model: a few recorded outputs on fixed inputs built in code, so that a change to
the model code, the weights or their loading shows up as a number, in a second (transformers' SAM integration tests
pin "golden slices" the same way).

Command::

    python -m transformers_samclip.mosaic.golden [FOLDER]

writes FOLDER/golden.json (default FOLDER: the distilled mosaic model shipped in the package, mosaic/distilled). Run
time: ~2 s here. Inputs: one seeded picture (Fashion-MNIST-like blobs on a dark background, numpy's PCG64, no data
files) at the SAM size and at the CLIP size, normalised with the processor's mean and std (no resizing), fixed text
prompts, and fixed point prompts. Recorded: statistics and a slice of the SAM image embeddings, the pooled CLIP
image embedding, the text embeddings, and SAM's mask logits and IoU scores at the point prompts, each rounded to
`DECIMALS`; `tests/test_golden.py` recomputes them and compares at 1e-4.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ..modeling import SamClipModel, SamClipProcessor
from .model import SHIPPED_MOSAIC_MODEL_DIR

GOLDEN_FILE = "golden.json"
DECIMALS = 6
SEED = 20261203
PROMPTS = ("a photo of a sneaker", "a photo of a bag", "a photo of a trouser")
# (x, y) in the SAM input's pixels, as fractions of its side: one positive point per prompt.
POINTS = ((0.3, 0.3), (0.7, 0.6))
# Where mask logits are read, as fractions of the low-resolution mask's side.
MASK_PROBES = ((0.3, 0.3), (0.5, 0.5), (0.7, 0.6), (0.1, 0.9))


def golden_picture(size: int, seed: int = SEED) -> np.ndarray:
    """A `(size, size, 3)` uint8 picture: four bright textured ellipses on a dark noisy background."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    picture = rng.uniform(0, 40, (size, size, 3))
    for cx, cy, rx, ry in (
        (0.3, 0.3, 0.18, 0.12),
        (0.7, 0.6, 0.15, 0.22),
        (0.25, 0.75, 0.12, 0.1),
        (0.75, 0.2, 0.1, 0.1),
    ):
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
        picture[inside] = rng.uniform(60, 255, 3) * (0.8 + 0.2 * np.sin(40 * x[inside] * rx))[:, None]
    return picture.clip(0, 255).astype(np.uint8)


def pixel_values(picture: np.ndarray, mean, std) -> torch.Tensor:
    """`(1, 3, H, W)` float32 pixel values of a uint8 picture, rescaled and normalised as the processors do."""
    values = (picture.astype(np.float32) / 255 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(values).permute(2, 0, 1)[None].contiguous()


def _values(tensor: torch.Tensor) -> list:
    return np.round(tensor.detach().double().numpy(), DECIMALS).tolist()


@torch.no_grad()
def compute_golden(model: SamClipModel, processor: SamClipProcessor) -> dict:
    """The golden record of `model` (see the module docstring); deterministic on CPU in float32."""
    model = model.eval()
    sam_size, clip_size = model.config.image_size, model.config.head_config.image_size
    sam_pixels = pixel_values(
        golden_picture(sam_size), processor.image_processor.image_mean, processor.image_processor.image_std
    )
    clip_processor = processor.clip_image_processor
    clip_pixels = pixel_values(golden_picture(clip_size), clip_processor.image_mean, clip_processor.image_std)

    embeddings = model.get_image_embeddings(sam_pixels)
    pooled = model.get_image_features(clip_pixels).pooler_output
    tokens = processor.tokenizer(list(PROMPTS), padding=True, return_tensors="pt")
    text = model.get_text_features(tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
    points = torch.tensor(POINTS, dtype=torch.float32) * sam_size
    masks, iou = model.segment(
        embeddings.expand(len(POINTS), -1, -1, -1), input_points=points[:, None, None], multimask_output=True
    )
    low_res = masks.shape[-1]
    probes = [(int(fy * low_res), int(fx * low_res)) for fx, fy in MASK_PROBES]
    return {
        "inputs": {
            "seed": SEED,
            "sam_size": sam_size,
            "clip_size": clip_size,
            "prompts": list(PROMPTS),
            "points": _values(points),
            "mask_probes_yx": probes,
        },
        "image_embeddings": {
            "shape": list(embeddings.shape),
            "mean": round(embeddings.mean().item(), DECIMALS),
            "std": round(embeddings.std().item(), DECIMALS),
            "abs_max": round(embeddings.abs().max().item(), DECIMALS),
            "slice": _values(embeddings[0, :4, 0, :4]),
        },
        "image_features": {"norm": round(pooled.norm().item(), DECIMALS), "slice": _values(pooled[0, :8])},
        "text_features": {"norms": _values(text.norm(dim=-1)), "slice": _values(text[:, :6])},
        "mask_logits": _values(torch.stack([masks[:, 0, :, y, x] for y, x in probes], dim=-1)),
        "iou_scores": _values(iou[:, 0]),
    }


def main(argv: list[str] | None = None) -> Path:
    """Write FOLDER/golden.json for the model saved in FOLDER; returns its path."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", type=Path, default=SHIPPED_MOSAIC_MODEL_DIR, help="a saved model")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    record = compute_golden(SamClipModel.from_pretrained(args.folder), SamClipProcessor.from_pretrained(args.folder))
    path = args.folder / GOLDEN_FILE
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
