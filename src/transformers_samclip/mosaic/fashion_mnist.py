"""Fashion-MNIST (Xiao et al. 2017, MIT licence): the real images of the mosaic world.

Read from Debian's ``dataset-fashion-mnist`` IDX files when present, else from the Hub copy.
"""

from __future__ import annotations

import gzip
import io
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
HUB_DATASET_ID = "zalando-datasets/fashion_mnist"
_IDX_PREFIX = {"train": "train", "test": "t10k"}


def _fashion_mnist_dir() -> Path:
    return Path(os.environ.get("SAMCLIP_FASHION_MNIST_DIR", DEFAULT_FASHION_MNIST_DIR))


def _check_split(split: str) -> str:
    if split not in _IDX_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=offset)


def _hub_reachable() -> bool:
    offline = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    return not any(os.environ.get(name, "").lower() in {"1", "true", "yes", "on"} for name in offline)


@lru_cache(maxsize=2)
def load_fashion_mnist_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 [N,28,28], labels int64 [N])`` of one split, read once per process."""
    _check_split(split)
    folder = _fashion_mnist_dir()
    prefix = _IDX_PREFIX[split]
    image_path = folder / f"{prefix}-images-idx3-ubyte.gz"
    label_path = folder / f"{prefix}-labels-idx1-ubyte.gz"
    if image_path.exists() and label_path.exists():
        images = _read_idx(image_path, 16).reshape(-1, 28, 28)
        labels = _read_idx(label_path, 8).astype(np.int64)
    elif _hub_reachable():
        import datasets

        hub = datasets.load_dataset(HUB_DATASET_ID, split=split)
        images = np.stack([np.asarray(image, dtype=np.uint8) for image in hub["image"]])
        labels = np.asarray(hub["label"], dtype=np.int64)
    else:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {folder} (set SAMCLIP_FASHION_MNIST_DIR to another folder) and the "
            "Hub is offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE). Either run "
            f"`apt-get install dataset-fashion-mnist`, or allow network access to the Hub ({HUB_DATASET_ID})."
        )
    if len(images) != len(labels):
        raise RuntimeError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@lru_cache(maxsize=2)
def load_fashion_mnist(split: str):
    """Return one split as a ``datasets.Dataset`` with ``image`` (28x28 L) and ``label`` (ClassLabel)."""
    import datasets

    images, labels = load_fashion_mnist_arrays(split)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(FASHION_MNIST_CLASSES))}
    )
    # Encoding the PNGs here is several times faster than the Image feature's generic array path.
    encoded = [{"bytes": _png_bytes(image), "path": None} for image in images]
    return datasets.Dataset.from_dict({"image": encoded, "label": labels.tolist()}, features=features)
