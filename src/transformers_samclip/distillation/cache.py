"""Teacher-output cache: the CLIP teacher's image embeddings and the SAM teacher's image embeddings of fixed
views, computed once, stored as safetensors shards keyed by sample id, read memory-mapped, reused across epochs,
stages and resumed runs. It also holds the student encoder's trunk tokens while a stage keeps that encoder frozen
(`student_trunk_tokens`): the same rows of a fixed model on fixed views.

An entry (one view: a model, its preprocessing, a dataset) lives in `cache_dir/<kind>-<fingerprint>/` (kind: `clip`
and `sam` for the teachers, `student-clip` and `student-sam` for the student's tokens); the
fingerprint hashes the model (state dict and config), the preprocessing and the dataset, so changing any of them
misses and recomputes. Each rank writes the shards of its own samples (`rank{R}-of-{W}-shard-{N}.safetensors`; one
process: `shard-{N}.safetensors`), each holding `values` and, in its metadata, the ids of its rows: the dataset
index of a map-style dataset, the `__key__` of a streamed WebDataset / SA-1B sample. A `complete.json` marker is
written last; every file is written whole (temporary file, then rename), so shards written before an interruption
are reused and a half-written one is never read. Reading opens no tensor until a row is asked for
(`TeacherOutputs`), so a cache larger than memory serves a run."""

import functools
import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

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


class TeacherOutputs:
    """The rows of one cache entry, read lazily: `outputs[sample_id]` (a dataset index or a stream's `__key__`) is
    one sample's tensor, read from its shard through safetensors' memory map; `outputs[a:b]` stacks the rows of
    indices `a..b-1` (map-style data). `len`, `in` and `shape` read only the shards' headers."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self._rows: dict[str, tuple[str, int]] = {}
        self.row_shape: tuple[int, ...] = ()
        for path in sorted(self.directory.glob("*shard-*.safetensors")):
            with safe_open(str(path), framework="pt") as shard:
                ids = json.loads(shard.metadata()["ids"])
                self.row_shape = tuple(shard.get_slice("values").get_shape()[1:])
            for row, sample_id in enumerate(ids):
                self._rows.setdefault(sample_id, (path.name, row))
        self._open: dict = {}

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, sample_id) -> bool:
        return str(sample_id) in self._rows

    @property
    def shape(self) -> tuple[int, ...]:
        """`(number of samples, *row shape)`."""
        return (len(self), *self.row_shape)

    def __getitem__(self, sample_id) -> torch.Tensor:
        if isinstance(sample_id, slice):
            return torch.stack([self[index] for index in range(len(self))[sample_id]])
        name, row = self._rows[str(sample_id)]
        if name not in self._open:  # opened once per process (DataLoader workers reopen theirs)
            self._open[name] = safe_open(str(self.directory / name), framework="pt")
        return self._open[name].get_slice("values")[row : row + 1][0]

    def __getstate__(self):
        return {**self.__dict__, "_open": {}}


class TeacherOutputCache:
    """Per-sample teacher outputs (and a frozen student encoder's trunk tokens) of a `DistillationImageDataset` (rows
    keyed by index) or of a streamed `IterableDistillationImageDataset` (rows keyed by `__key__`), on disk under
    `cache_dir`.

    Under several processes, give each its `rank`, the `num_ranks` and a `barrier` (e.g.
    `PartialState().wait_for_everyone`): rank R computes the indices R, R + W, ... of a map-style dataset, or the
    samples of its own part of a stream (split by `run._wrap`), then every rank reads every shard. `hits`/`misses`
    count entries found/computed by this object."""

    def __init__(
        self,
        cache_dir,
        batch_size: int = 64,
        shard_size: int = 4096,
        dtype: torch.dtype | None = None,
        rank: int = 0,
        num_ranks: int = 1,
        barrier=None,
    ):
        self.cache_dir = Path(cache_dir)
        self.batch_size, self.shard_size, self.dtype = batch_size, shard_size, dtype
        self.rank, self.num_ranks, self.barrier = rank, num_ranks, barrier
        self.hits = self.misses = 0

    def clip_image_embeddings(self, teacher, image_processor, dataset) -> TeacherOutputs:
        """Per sample, `(dim,)`: the unnormalised `get_image_features(...).pooler_output` of the CLIP teacher."""

        def compute(pixel_values):
            output = teacher.get_image_features(pixel_values=pixel_values)
            return getattr(output, "pooler_output", output)

        return self._load_or_compute("clip", teacher, image_processor, dataset, compute)

    def sam_image_embeddings(self, teacher, image_processor, dataset) -> TeacherOutputs:
        """Per sample, `(channels, grid, grid)`: the SAM teacher's image embeddings of the SAM view."""

        return self._load_or_compute("sam", teacher, image_processor, dataset, teacher.get_image_embeddings)

    def student_trunk_tokens(self, encoder, image_processor, dataset, view: str) -> TeacherOutputs:
        """Per sample, `(grid_h, grid_w, hidden_size)`: the trunk tokens (`trunk_hidden_state`) of a student's frozen
        `SamClipVisionEncoder` on `view` (`"clip"` or `"sam"`, naming the entry) as `image_processor` makes it. Keyed
        by the encoder's own weights, so tokens of another encoder (a later stage's) are never read. On disk, one
        image takes grid_h x grid_w x hidden_size values in the encoder's dtype (fp32: 4 bytes each): 8x8x128, 32 KiB,
        per 64 px mosaic item view and 16x16x128, 128 KiB, per 128 px mosaic SAM view (~1.2 GiB for the mosaic
        recipe's 24,000 views and 4,000 mosaics); 14x14x768, 588 KiB, per 224 px view of the paper's ViT-B/16, and
        64x64x768, 12 MiB, per 1024 px SAM view."""

        def compute(pixel_values):
            return encoder(pixel_values, compute_neck=False).trunk_hidden_state

        return self._load_or_compute(f"student-{view}", encoder, image_processor, dataset, compute)

    def entry_dir(self, kind: str, model, image_processor, dataset) -> Path:
        """Where the outputs of `model` (a teacher, or a frozen student encoder) on `dataset` with this preprocessing
        live (the same for every rank)."""
        key = fingerprint(
            fingerprint_model(model),
            _preprocessing(image_processor),
            dataset.fingerprint,
            dataset.image_column,
            len(dataset) if hasattr(dataset, "__len__") else None,
            repr(self.dtype),
        )
        return self.cache_dir / f"{kind}-{key}"

    @torch.no_grad()
    def _load_or_compute(self, kind, model, image_processor, dataset, compute) -> TeacherOutputs:
        # `compute` maps a batch of `image_processor`'s pixel values (on the model's device and dtype) to its rows.
        if dataset.fingerprint is None:
            raise ValueError(
                "The teacher cache needs a dataset with a fingerprint (a datasets.Dataset, or a stream's data spec)."
            )
        directory = self.entry_dir(kind, model, image_processor, dataset)
        if (directory / "complete.json").exists():
            self.hits += 1
            return TeacherOutputs(directory)
        self.misses += 1
        directory.mkdir(parents=True, exist_ok=True)
        logger.info("computing %s outputs (rank %d of %d) into %s", kind, self.rank, self.num_ranks, directory)
        was_training = model.training
        model.eval()
        prefix = f"rank{self.rank:05d}-of-{self.num_ranks:05d}-" if self.num_ranks > 1 else ""
        for shard, samples in enumerate(self._shards(dataset)):
            path = directory / f"{prefix}shard-{shard:05d}.safetensors"
            if path.exists():
                continue
            ids, outputs = [], []
            for first in range(0, len(samples), self.batch_size):
                batch = [(sample_id, load()) for sample_id, load in samples[first : first + self.batch_size]]
                batch = [(sample_id, image) for sample_id, image in batch if image is not None]
                if batch:
                    pixel_values = image_processor([image for _, image in batch], return_tensors="pt")["pixel_values"]
                    values = compute(pixel_values.to(model.device, model.dtype)).cpu()
                    outputs.append(values.to(self.dtype) if self.dtype else values)
                    ids.extend(sample_id for sample_id, _ in batch)
            if outputs:
                values = torch.cat(outputs).contiguous()
                save_file({"values": values}, str(path.with_suffix(".tmp")), metadata={"ids": json.dumps(ids)})
                path.with_suffix(".tmp").replace(path)
        model.train(was_training)
        if self.barrier is not None:
            self.barrier()  # every rank's shards are written
        outputs = TeacherOutputs(directory)
        if self.rank == 0:
            write_text_atomic(directory / "complete.json", json.dumps({"num_samples": len(outputs), "kind": kind}))
        return outputs

    def _shards(self, dataset):
        """This rank's samples in lists of `shard_size` `(id, load)` pairs, `load()` giving the image (None:
        unreadable, not stored). A stream is decoded again up to where an interrupted pass stopped."""
        if hasattr(dataset, "__len__"):
            indices = list(range(self.rank, len(dataset), self.num_ranks))
            for start in range(0, len(indices), self.shard_size):
                yield [
                    (str(i), functools.partial(self._image, dataset, i))
                    for i in indices[start : start + self.shard_size]
                ]
            return
        samples = []
        for item in dataset:
            if item.get("key") is None:
                raise ValueError("a streamed sample has no __key__: only keyed streams (webdataset, sa1b) are cached")
            samples.append((str(item["key"]), functools.partial(lambda image: image, item["image"])))
            if len(samples) == self.shard_size:
                yield samples
                samples = []
        if samples:
            yield samples

    @staticmethod
    def _image(dataset, index: int):
        try:
            return dataset.load(index)["image"]
        except Exception as error:  # unreadable: no row (the dataset skips it, so it is never looked up)
            logger.warning("teacher cache: unreadable sample %d: %s", index, error)
            return None
