"""The shipped files: the mosaic teachers and the distilled model are there (a missing one fails, never skips), every
one of them is package data (pyproject's globs, as setuptools expands them), and the distilled model reproduces its
recorded golden values (mosaic/golden.py) at 1e-4."""

import glob
import json

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the test extra installs tomli
    import tomli as tomllib

from transformers_samclip import SamClipModel, SamClipProcessor
from transformers_samclip.mosaic import SHIPPED_MOSAIC_MODEL_DIR, SHIPPED_TEACHERS_DIR
from transformers_samclip.mosaic.golden import GOLDEN_FILE, compute_golden

MODEL_FILES = ("config.json", "model.safetensors", "processor_config.json")
TEXT_FILES = ("tokenizer.json", "tokenizer_config.json")
SHIPPED_FILES = {
    SHIPPED_TEACHERS_DIR: ["BUILD.json", *(f"sam/{name}" for name in MODEL_FILES)]
    + [f"clip/{name}" for name in (*MODEL_FILES, *TEXT_FILES)],
    SHIPPED_MOSAIC_MODEL_DIR: ["BUILD.json", "results.json", GOLDEN_FILE, *MODEL_FILES, *TEXT_FILES],
}


def package_data_files(package: str) -> set:
    """Files of `package` that pyproject.toml's [tool.setuptools.package-data] ships, expanded as setuptools does
    (each pattern globbed under the package's folder, `**` recursive)."""
    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    parent, _, leaf = package.rpartition(".")
    folder = setuptools["package-dir"].get(package) or f"{setuptools['package-dir'][parent]}/{leaf}"
    root = REPO_ROOT / folder
    return {
        (root / path).resolve()
        for pattern in setuptools["package-data"].get(package, [])
        for path in glob.glob(pattern, root_dir=root, recursive=True)
        if (root / path).is_file()
    }


def test_the_teachers_and_the_distilled_model_are_shipped():
    for folder, names in SHIPPED_FILES.items():
        missing = [name for name in names if not (folder / name).is_file()]
        assert not missing, f"missing from {folder}: {missing}"
        # Weights, not Git LFS pointers (~130 bytes) or empty files.
        assert all((folder / name).stat().st_size > 100_000 for name in names if name.endswith(".safetensors"))


def test_every_shipped_file_is_package_data():
    shipped = package_data_files("transformers_samclip.mosaic")
    for folder in SHIPPED_FILES:
        files = {path.resolve() for path in folder.rglob("*") if path.is_file() and "__pycache__" not in path.parts}
        assert files, folder
        assert not files - shipped, f"not matched by package-data: {sorted(map(str, files - shipped))}"


def golden_of(folder):
    """The golden record of the model saved in `folder` (the one call into the model)."""
    return compute_golden(SamClipModel.from_pretrained(folder), SamClipProcessor.from_pretrained(folder))


def assert_matches(measured, recorded, where="golden"):
    """Same structure; numbers equal at 1e-4 (absolute) plus 1e-5 relative (mask logits reach ~40)."""
    if isinstance(recorded, dict):
        assert measured.keys() == recorded.keys(), where
        for key in recorded:
            assert_matches(measured[key], recorded[key], f"{where}.{key}")
    elif isinstance(recorded, str) or (isinstance(recorded, list) and recorded and isinstance(recorded[0], str)):
        assert measured == recorded, where
    else:
        np.testing.assert_allclose(measured, recorded, atol=1e-4, rtol=1e-5, err_msg=where)


def test_the_distilled_model_reproduces_its_golden_values():
    recorded = json.loads((SHIPPED_MOSAIC_MODEL_DIR / GOLDEN_FILE).read_text())
    measured = golden_of(SHIPPED_MOSAIC_MODEL_DIR)
    assert_matches(measured, recorded)
    assert recorded["inputs"]["sam_size"] == 128 and np.asarray(recorded["mask_logits"]).shape == (2, 3, 4)


def test_golden_values_catch_a_small_weight_change(tmp_path):
    model = SamClipModel.from_pretrained(SHIPPED_MOSAIC_MODEL_DIR)
    with torch.no_grad():
        model.text_projection.weight[0, 0] += 1e-3  # one weight of the text projection, about 0.1% of its size
    model.save_pretrained(tmp_path)
    SamClipProcessor.from_pretrained(SHIPPED_MOSAIC_MODEL_DIR).save_pretrained(tmp_path)
    recorded = json.loads((SHIPPED_MOSAIC_MODEL_DIR / GOLDEN_FILE).read_text())
    with pytest.raises(AssertionError, match="golden.text_features"):
        assert_matches(golden_of(tmp_path), recorded)
