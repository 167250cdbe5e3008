"""Instance-annotation files as D_SAM data: a COCO instances JSON (polygon or RLE segmentations) and SA-1B's
`sa_*.jpg` + `sa_*.json` pairs, read into a `datasets.Dataset` with one row per image.

Masks are stored as COCO compressed RLE dicts (`{"size": [height, width], "counts": str}`): a few hundred bytes
a mask where a decoded one takes `height * width` bytes, so a dataset of millions of masks stays small on disk,
and `decode_mask` turns one into a bool array only when its sample is loaded. Images are stored as paths and
decoded (and, when unreadable, skipped and counted) by `DistillationImageDataset`.

Bad input: a missing file raises `FileNotFoundError`; a JSON that is not COCO/SA-1B shaped or a mask whose
size is not its image's raises `ValueError` naming the key or the image and both sizes (such a file describes
other images, so no mask of it can be trusted); an image listed but missing on disk is skipped, and one warning
gives their count once the dataset is built (none found at all raises `FileNotFoundError`: a wrong folder).

The RLE codec follows COCO's definition (pycocotools' `maskApi.c`, not a dependency here): runs of 0s and 1s
alternate, starting with 0s, over the mask in column-major order; the compressed string writes each count
(from the fourth on, minus the count two before) in 5-bit groups, low first, one character per group
(`chr(48 + group)`, plus 32 when more groups follow), the last group's bit 4 being the sign."""

import json
import logging
from pathlib import Path

import datasets
import numpy as np
from PIL import Image, ImageDraw

from .cache import fingerprint

logger = logging.getLogger(__name__)
# Part of the cache fingerprint: bump it when rows change, so that datasets cached by older code are rebuilt.
ROWS_VERSION = 1


def _counts_to_string(counts) -> str:
    characters = []
    for i, count in enumerate(counts):
        value = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            group = value & 0x1F
            value >>= 5
            more = value != -1 if group & 0x10 else value != 0
            characters.append(chr(48 + (group | 0x20 if more else group)))
    return "".join(characters)


def _string_to_counts(string: str) -> list[int]:
    counts, value, shift = [], 0, 0
    for character in string:
        code = ord(character) - 48
        if not 0 <= code < 64:
            raise ValueError(f"invalid character {character!r} in RLE counts")
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:
            continue
        if code & 0x10:
            value -= 1 << shift
        counts.append(value + (counts[-2] if len(counts) > 2 else 0))
        value, shift = 0, 0
    if shift:
        raise ValueError("truncated RLE counts")
    return counts


def _counts(rle: dict) -> list[int]:
    counts = rle["counts"]
    if isinstance(counts, bytes):  # pycocotools' own encoder returns bytes
        counts = counts.decode("ascii")
    return _string_to_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]


def encode_rle(mask) -> dict:
    """COCO compressed RLE `{"size": [height, width], "counts": str}` of a `(height, width)` mask (nonzero =
    inside), as pycocotools' `mask.encode` writes it (with `counts` as `str`)."""
    mask = np.asarray(mask).astype(bool)
    flat = mask.ravel(order="F")
    ends = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], ends, [flat.size]])).tolist() if flat.size else []
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": _counts_to_string(counts)}


def is_rle(value) -> bool:
    """Whether `value` is a COCO RLE dict (`size` and `counts`)."""
    return isinstance(value, dict) and "counts" in value and "size" in value


def _checked_counts(rle: dict) -> tuple[int, int, list[int]]:
    height, width = (int(v) for v in rle["size"])
    counts = _counts(rle)
    if sum(counts) != height * width or min(counts, default=0) < 0:
        raise ValueError(f"RLE runs cover {sum(counts)} pixels, not {height}x{width}")
    return height, width, counts


def rle_area(rle: dict) -> int:
    """Pixels inside the mask of COCO RLE `rle`, from its run lengths alone (no decoding); raises like
    `decode_rle` on a corrupt one."""
    return int(sum(_checked_counts(rle)[2][1::2]))


def decode_rle(rle: dict) -> np.ndarray:
    """The bool `(height, width)` mask of COCO RLE `{"size": [height, width], "counts": ...}`, `counts` being
    the compressed string (`str` or `bytes`) or the uncompressed list of run lengths."""
    height, width, counts = _checked_counts(rle)
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape((height, width), order="F")


def polygons_to_mask(polygons, height: int, width: int) -> np.ndarray:
    """The bool `(height, width)` union of COCO polygons `[[x1, y1, x2, y2, ...], ...]`, rasterised by PIL."""
    canvas = Image.new("1", (width, height))
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        if len(polygon) >= 4:  # PIL raises on a single point; a degenerate polygon must not fail the file
            draw.polygon([float(v) for v in polygon], fill=1)
    return np.asarray(canvas, dtype=bool)


def _require(mapping, keys, where: str, kind: str):
    for key in keys:
        if not isinstance(mapping, dict) or key not in mapping:
            raise ValueError(f"{where}: not a {kind} file: missing key {key!r}")


def _read_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"No annotation file {str(path)!r}")
    with path.open() as file:
        return json.load(file)


def _rle(segmentation, image_id, height: int, width: int) -> dict:
    if isinstance(segmentation, list):
        return encode_rle(polygons_to_mask(segmentation, height, width))
    size = [int(v) for v in segmentation["size"]]
    if size != [height, width]:
        raise ValueError(f"image {image_id}: mask size {size[0]}x{size[1]} differs from the image's {height}x{width}")
    counts = segmentation["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    # Uncompressed RLE (COCO's crowd regions) is recompressed so that one column type holds every mask.
    return {"size": size, "counts": counts if isinstance(counts, str) else _counts_to_string(counts)}


def _features(masks_column: str) -> datasets.Features:
    rle = {"size": datasets.List(datasets.Value("int32")), "counts": datasets.Value("string")}
    return datasets.Features(
        {"image": datasets.Image(), "image_id": datasets.Value("int64"), masks_column: datasets.List(rle)}
    )


def _build(
    generator, gen_kwargs: dict, *, found: int, missing: list, masks_column: str, key: list, cache_dir, where: str
):
    if not found:  # an empty D_SAM would only fail later, in the middle of a run
        raise FileNotFoundError(f"{where}: no image found on disk (listed but missing: {len(missing)})")
    # An explicit fingerprint (file sizes and times, options, missing images) rather than datasets' hash of
    # the arguments: that hash would pickle a whole parsed COCO file, and miss a file edited in place.
    try:
        dataset = datasets.Dataset.from_generator(
            generator,
            features=_features(masks_column),
            gen_kwargs=gen_kwargs,
            cache_dir=cache_dir,
            fingerprint=fingerprint(ROWS_VERSION, masks_column, key, missing),
        )
    except datasets.exceptions.DatasetGenerationError as error:
        # datasets wraps errors raised while generating; a bad file should read as such.
        if isinstance(error.__cause__, ValueError):
            raise error.__cause__ from None
        raise
    if missing:
        logger.warning("%s: images missing on disk, skipped: %d (first: %s)", where, len(missing), missing[0])
    return dataset


def _signature(path: Path) -> list:
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _coco_rows(images, annotations, masks_column, min_area, include_crowd):
    for image, path in images:
        masks = []
        for annotation in annotations.get(image["id"], ()):
            _require(annotation, ("segmentation",), f"annotation {annotation.get('id')}", "COCO instances")
            if annotation.get("iscrowd", 0) and not include_crowd:
                continue
            rle = _rle(annotation["segmentation"], image["id"], int(image["height"]), int(image["width"]))
            area = annotation.get("area")
            if min_area and (area if area is not None else sum(_counts(rle)[1::2])) < min_area:
                continue
            masks.append(rle)
        yield {"image": path, "image_id": image["id"], masks_column: masks}


def load_coco_instances(
    annotation_file,
    image_dir,
    *,
    min_area: float = 0,
    include_crowd: bool = False,
    max_images: int | None = None,
    masks_column: str = "instance_masks",
    cache_dir=None,
) -> datasets.Dataset:
    """D_SAM from a COCO instances JSON (`images`, `annotations` with polygon or RLE `segmentation`) and the
    folder of its images: columns `image` (the file's path, decoded when loaded), `image_id` and
    `masks_column` (the image's masks as compressed RLE dicts, see the module docstring).

    Every listed image present on disk is kept, also one without annotations: D_SAM prompts those from a grid.
    `min_area` drops masks whose `area` (their pixel count when the file has none) is smaller; crowd regions
    (`iscrowd`: one region over many objects) are dropped unless `include_crowd`; `max_images` keeps the first
    images of the file. The dataset is cached by `datasets` (under `cache_dir` when given) and rebuilt when the
    file, the options or the set of missing images change."""
    # Absolute paths: rows keep them, and a cached dataset may be loaded from another working directory.
    annotation_file, image_dir = Path(annotation_file).resolve(), Path(image_dir).resolve()
    data = _read_json(annotation_file)
    _require(data, ("images", "annotations"), str(annotation_file), "COCO instances")
    annotations = {}
    for annotation in data["annotations"]:
        _require(annotation, ("image_id",), f"{annotation_file} annotation {annotation.get('id')}", "COCO instances")
        annotations.setdefault(annotation["image_id"], []).append(annotation)
    images, missing = [], []
    for image in data["images"]:
        if max_images is not None and len(images) >= max_images:
            break
        _require(image, ("id", "file_name", "height", "width"), f"{annotation_file} image", "COCO instances")
        path = image_dir / image["file_name"]
        if path.is_file():
            images.append((image, str(path)))
        else:
            missing.append(image["file_name"])
    key = ["coco", _signature(annotation_file), str(image_dir), min_area, include_crowd, max_images]
    # Tuples, not lists: datasets splits list arguments of a generator into shards.
    gen_kwargs = {
        "images": tuple(images),
        "annotations": annotations,
        "masks_column": masks_column,
        "min_area": min_area,
        "include_crowd": include_crowd,
    }
    return _build(
        _coco_rows,
        gen_kwargs,
        found=len(images),
        missing=missing,
        masks_column=masks_column,
        key=key,
        cache_dir=cache_dir,
        where=str(annotation_file),
    )


def _sa1b_rows(pairs, masks_column):
    for annotation_file, image_path in pairs:
        data = _read_json(Path(annotation_file))
        masks = sa1b_masks(data, annotation_file)
        yield {"image": image_path, "image_id": data["image"].get("image_id"), masks_column: masks}


def load_sa1b(
    directory, *, max_images: int | None = None, masks_column: str = "instance_masks", cache_dir=None
) -> datasets.Dataset:
    """D_SAM from a folder in SA-1B's layout (an extracted tar): `sa_N.json` (`{"image": {"image_id", "height",
    "width", ...}, "annotations": [{"segmentation": compressed RLE, ...}, ...]}`) beside its image `sa_N.jpg`.
    Columns as in `load_coco_instances`; rows in file-name order, `max_images` keeps the first. The JSONs are
    read one at a time while the dataset is written, so a folder of any size fits in memory."""
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise FileNotFoundError(f"No SA-1B folder {str(directory)!r}")
    pairs, missing, signatures = [], [], []
    for annotation_file in sorted(directory.glob("sa_*.json")):
        if max_images is not None and len(pairs) >= max_images:
            break
        image_path = annotation_file.with_suffix(".jpg")
        if image_path.is_file():
            pairs.append((str(annotation_file), str(image_path)))
            signatures.append(_signature(annotation_file))
        else:
            missing.append(image_path.name)
    key = ["sa1b", str(directory), signatures, max_images]
    gen_kwargs = {"pairs": tuple(pairs), "masks_column": masks_column}
    return _build(
        _sa1b_rows,
        gen_kwargs,
        found=len(pairs),
        missing=missing,
        masks_column=masks_column,
        key=key,
        cache_dir=cache_dir,
        where=str(directory),
    )


def sa1b_masks(annotation, where: str = "SA-1B sample") -> list[dict]:
    """The compressed-RLE masks of one SA-1B annotation (its JSON text, bytes or parsed dict: `{"image": {"height",
    "width", ...}, "annotations": [{"segmentation": RLE, ...}, ...]}`), each checked against the image's size."""
    data = json.loads(annotation) if isinstance(annotation, (str, bytes)) else annotation
    _require(data, ("image", "annotations"), where, "SA-1B")
    image = data["image"]
    _require(image, ("height", "width"), f"{where} image", "SA-1B")
    masks = []
    for entry in data["annotations"]:
        _require(entry, ("segmentation",), f"{where} annotation", "SA-1B")
        masks.append(
            _rle(entry["segmentation"], image.get("image_id", where), int(image["height"]), int(image["width"]))
        )
    return masks


def _sa1b_tar_rows(tar_paths, masks_column):
    # One tar at a time, one member at a time: SA-1B's tars (~10 GB, ~11k images each) are never extracted. A sample
    # is the jpg and json sharing a name; either missing leaves None, which the dataset skips and counts.
    import tarfile

    for tar_path in tar_paths:
        sample = {}
        with tarfile.open(tar_path, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                name = Path(member.name).name
                key, _, extension = name.partition(".")
                if extension not in ("jpg", "json"):
                    continue
                if sample and sample["__key__"] != key:
                    yield sample
                    sample = {}
                sample.setdefault("__key__", key)
                sample.setdefault("image", None)
                sample.setdefault(masks_column, None)
                content = archive.extractfile(member).read()
                if extension == "jpg":
                    sample["image"] = {"bytes": content, "path": name}
                else:
                    sample[masks_column] = content.decode("utf-8", errors="replace")
        if sample:
            yield sample


def load_sa1b_tars(data_files: list[str], *, masks_column: str = "instance_masks") -> datasets.IterableDataset:
    """D_SAM streamed from SA-1B's own tars (`sa_N.jpg` + `sa_N.json` per sample) without extracting them: columns
    `__key__`, `image` (undecoded bytes) and `masks_column` (the sample's annotation JSON text, parsed by the
    dataset with `sa1b_masks`; the prompt sampler decodes only the masks it prompts). Each tar is one shard, so
    `datasets.distributed.split_dataset_by_node` hands whole tars to the ranks."""
    features = datasets.Features(
        {
            "__key__": datasets.Value("string"),
            "image": datasets.Image(decode=False),
            masks_column: datasets.Value("string"),
        }
    )
    return datasets.IterableDataset.from_generator(
        _sa1b_tar_rows, features=features, gen_kwargs={"tar_paths": list(data_files), "masks_column": masks_column}
    )
