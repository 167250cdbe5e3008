"""The README's merge example runs as written, on teachers saved locally in place of the Hub ids."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_merge_example_runs(teachers, tokenizer, tmp_path, monkeypatch):
    sam, clip = teachers
    sam.save_pretrained(tmp_path / "sam")
    clip.save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    Image.fromarray((np.random.default_rng(0).random((96, 160, 3)) * 255).astype(np.uint8)).save(
        tmp_path / "photo.jpg"
    )
    block = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    # The three tasks from a merge stay a short read (ruff-formatted at 119 columns).
    assert len(block.strip().splitlines()) <= 20
    code = block.replace("facebook/sam-vit-base", str(tmp_path / "sam")).replace(
        "openai/clip-vit-large-patch14", str(tmp_path / "clip")
    )
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert torch.allclose(scope["probs"].sum(-1), torch.ones(1))
    assert scope["masks"][0].shape[-2:] == (96, 160)
    assert scope["label_map"].shape == (96, 160) and set(scope["label_map"].unique().tolist()) <= {1, 2}


def test_readme_label_everything_example_runs_without_the_package(tmp_path):
    """The README's label-everything block, on an exported mosaic model and the Space's example mosaic, in a process
    where `transformers_samclip` cannot be imported (the exported folder carries the pipeline)."""
    import json
    import shutil
    import subprocess
    import sys

    from transformers_samclip.hub.export import export_model

    export_model("mosaic", tmp_path / "samclip-mosaic")
    shutil.copy(Path(__file__).resolve().parents[1] / "demo" / "examples" / "mosaic-0.png", tmp_path / "mosaic.png")
    block = next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "label everything" in b)
    script = (
        "import importlib.abc, sys\n"
        "class NoPackage(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'transformers_samclip':\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, NoPackage())\n"
        + block
        + "\nimport json\nprint(json.dumps([[i['label'], i['mask'].size] for i in instances]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    instances = json.loads(result.stdout.strip().splitlines()[-1])
    # mosaic-0 shows a T-shirt and a sneaker; the one-pass labels may be wrong, the masks come at the image size.
    assert len(instances) >= 2 and all(size == [128, 128] for _, size in instances)


def test_result_tables_are_written_from_their_results_json(tmp_path):
    """Every marked results table in the README and docs/*.md is what `evaluation.tables` writes from the
    results.json it names."""
    from transformers_samclip.evaluation.tables import render_results_tables, update_results_tables

    pages = [README, *sorted((README.parent / "docs").glob("*.md"))]
    markers = {page.name: page.read_text().count("<!-- results-table:") for page in pages}
    assert markers["README.md"] >= 2 and markers["ablations.md"] >= 1, markers
    for page in pages:
        text = page.read_text()
        assert render_results_tables(text, page.parent) == text, (
            f"run: python -m transformers_samclip.evaluation.tables {page.relative_to(README.parent)}"
        )
    # A stale table is rewritten; an unknown column group is named.
    results = tmp_path / "results.json"
    results.write_text('{"rows": {"m": {"zero_shot_top1": 0.5, "box_miou": 0.25}}}')
    page = tmp_path / "page.md"
    page.write_text("<!-- results-table: results.json segmentation -->\n| old |\n<!-- /results-table -->\n")
    assert update_results_tables(page) and "| m | - | 0.250 |" not in page.read_text()
    assert page.read_text().splitlines()[3].startswith("| m | 0.250 |") and not update_results_tables(page)
    page.write_text("<!-- results-table: results.json nonsense -->\n<!-- /results-table -->\n")
    with pytest.raises(ValueError, match="unknown column group 'nonsense'"):
        update_results_tables(page)
