"""Teacher-output cache: the CLIP teacher's image embeddings and the SAM teacher's image embeddings of fixed
views, computed once and stored as safetensors shards, reused across epochs and runs.

An entry lives in `cache_dir/<kind>-<fingerprint>/`; the fingerprint hashes the teacher (state dict and
config), the preprocessing and the dataset, so changing any of them misses and recomputes. A `complete.json`
marker is written last; every file is written whole (temporary file, then rename), so shards written before an
interruption are reused and a half-written one is never read."""

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .._atomic import write_text_atomic

logger = logging.getLogger(__name__)


def fingerprint_model(model: torch.nn.Module) -> str:
    """Hash of a model's config and every tensor of its state dict (names, shapes, dtypes, values)."""
    digest = hashlib.blake2b(digest_size=16)
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fingerprint(*parts) -> str:
    """Hash of JSON-serialisable parts (use `repr` for the rest)."""
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=repr).encode(), digest_size=16).hexdigest()


def _preprocessing(image_processor) -> dict:
    return image_processor.to_dict() if hasattr(image_processor, "to_dict") else repr(image_processor)


class TeacherOutputCache:
    """Per-sample teacher outputs of a `DistillationImageDataset`, on disk under `cache_dir`.

    `hits`/`misses` count entries found/computed by this object."""

    def __init__(self, cache_dir, batch_size: int = 64, shard_size: int = 4096, dtype: torch.dtype | None = None):
        self.cache_dir = Path(cache_dir)
        self.batch_size, self.shard_size, self.dtype = batch_size, shard_size, dtype
        self.hits = self.misses = 0

    def clip_image_embeddings(self, teacher, image_processor, dataset) -> torch.Tensor:
        """`(len(dataset), dim)` unnormalised `get_image_features(...).pooler_output` of the CLIP teacher."""

        def compute(images):
            pixels = image_processor(images, return_tensors="pt")["pixel_values"].to(teacher.device, teacher.dtype)
            output = teacher.get_image_features(pixel_values=pixels)
            return getattr(output, "pooler_output", output)

        return self._load_or_compute("clip", teacher, image_processor, dataset, compute)

    def sam_image_embeddings(self, teacher, image_processor, dataset) -> torch.Tensor:
        """`(len(dataset), channels, grid, grid)` SAM image embeddings of the SAM teacher (the SAM view)."""

        def compute(images):
            pixels = image_processor(images, return_tensors="pt")["pixel_values"].to(teacher.device, teacher.dtype)
            return teacher.get_image_embeddings(pixels)

        return self._load_or_compute("sam", teacher, image_processor, dataset, compute)

    def entry_dir(self, kind: str, teacher, image_processor, dataset) -> Path:
        """Where the outputs of `teacher` on `dataset` with this preprocessing live."""
        key = fingerprint(
            fingerprint_model(teacher),
            _preprocessing(image_processor),
            dataset.fingerprint,
            dataset.image_column,
            len(dataset),
            repr(self.dtype),
        )
        return self.cache_dir / f"{kind}-{key}"

    @torch.no_grad()
    def _load_or_compute(self, kind, teacher, image_processor, dataset, compute) -> torch.Tensor:
        if dataset.fingerprint is None:
            raise ValueError("The teacher cache needs a dataset with a fingerprint (a datasets.Dataset).")
        directory = self.entry_dir(kind, teacher, image_processor, dataset)
        if (directory / "complete.json").exists():
            self.hits += 1
            return self._read(directory)
        self.misses += 1
        directory.mkdir(parents=True, exist_ok=True)
        logger.info("computing %s teacher outputs for %d samples into %s", kind, len(dataset), directory)
        was_training = teacher.training
        teacher.eval()
        for shard, start in enumerate(range(0, len(dataset), self.shard_size)):
            path = directory / f"shard-{shard:05d}.safetensors"
            if path.exists():
                continue
            outputs = []
            for first in range(start, min(start + self.shard_size, len(dataset)), self.batch_size):
                indices = range(first, min(first + self.batch_size, start + self.shard_size, len(dataset)))
                images, readable = [], []
                for index in indices:
                    try:
                        images.append(dataset.load(index)["image"])
                        readable.append(index - first)
                    except Exception as error:  # unreadable: a zero row, never read (the dataset skips it)
                        logger.warning("teacher cache: unreadable sample %d: %s", index, error)
                values = compute(images) if images else None
                rows = torch.zeros(len(indices), *(values.shape[1:] if values is not None else ()))
                if values is not None:
                    rows = rows.to(values.dtype)
                    rows[readable] = values.cpu()
                outputs.append(rows.to(self.dtype) if self.dtype else rows)
            save_file({"values": torch.cat(outputs).contiguous()}, str(path.with_suffix(".tmp")))
            path.with_suffix(".tmp").replace(path)
        teacher.train(was_training)
        write_text_atomic(directory / "complete.json", json.dumps({"num_samples": len(dataset), "kind": kind}))
        return self._read(directory)

    @staticmethod
    def _read(directory: Path) -> torch.Tensor:
        return torch.cat([load_file(str(p))["values"] for p in sorted(directory.glob("shard-*.safetensors"))])
