"""The README's merge example runs as written, on teachers saved locally in place of the Hub ids."""

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_merge_example_runs(teachers, tokenizer, tmp_path, monkeypatch):
    sam, clip = teachers
    sam.save_pretrained(tmp_path / "sam")
    clip.save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    Image.fromarray((np.random.default_rng(0).random((96, 160, 3)) * 255).astype(np.uint8)).save(tmp_path / "photo.jpg")
    block = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    assert len(block.strip().splitlines()) <= 15
    code = block.replace("facebook/sam-vit-base", str(tmp_path / "sam")).replace(
        "openai/clip-vit-large-patch14", str(tmp_path / "clip")
    )
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert torch.allclose(scope["probs"].sum(-1), torch.ones(1))
    assert scope["masks"][0].shape[-2:] == (96, 160)
    assert scope["label_map"].shape == (96, 160) and set(scope["label_map"].unique().tolist()) <= {1, 2}
