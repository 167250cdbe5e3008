"""The built wheel works outside the checkout: installed (not editable) into a fresh venv, run from another
folder, `samclip export mosaic OUT --onnx`, `samclip evaluate mosaic` and the demo app import all work, with the
card template, the demo and the shipped models found through the installed package. About 4-5 minutes here (pip
installs torch and the extras from the local mirror)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, samclip_command

SHIPPED_MOSAIC_MODEL_DIR = REPO_ROOT / "src" / "transformers_samclip" / "mosaic" / "distilled"
# What a clean clone has besides the sources is not copied: environments, outputs, caches.
IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "outputs", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"
)
EVALUATE = ["evaluate", "mosaic", "--num-items", "100", "--num-mosaics", "10", "--output", "eval.json"]


def _run(command, cwd, timeout=900):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
def test_wheel_works_in_a_fresh_venv_outside_the_checkout(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT, source, ignore=IGNORE)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "dist", source], tmp_path)
    (wheel,) = (tmp_path / "dist").glob("transformers_samclip-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp_path)
    python, samclip = venv / "bin" / "python", venv / "bin" / "samclip"
    # torch first, pinned to this environment's build, so that no extra pulls another one.
    _run([python, "-m", "pip", "install", "-q", f"torch=={torch.__version__.split('+')[0]}"], tmp_path)
    _run([python, "-m", "pip", "install", "-q", f"{wheel}[demo,onnx]"], tmp_path)
    shutil.rmtree(source)  # nothing of the checkout is left to fall back on

    work = tmp_path / "work"
    work.mkdir()
    location = _run([python, "-c", "import transformers_samclip; print(transformers_samclip.__file__)"], work)
    assert location.strip().startswith(str(venv))

    _run([samclip, "export", "mosaic", "out", "--onnx"], work)
    card = (work / "out" / "README.md").read_text()
    own = json.loads((SHIPPED_MOSAIC_MODEL_DIR / "results.json").read_text())["rows"]["SAM-CLIP (distilled)"]
    assert "| Classes it was distilled and evaluated on | T-shirt/top, Trouser," in card
    assert f"| samclip-mosaic | {own['zero_shot_top1']:.4f} |" in card  # the shipped model's own results
    assert {p.name for p in (work / "out" / "onnx").glob("*.onnx")} >= {
        "vision_encoder.onnx",
        "prompt_encoder_mask_decoder.onnx",
    }

    _run([samclip, *EVALUATE], work)
    # The installed wheel measures what this checkout's install measures (both resolve "mosaic" to the shipped model).
    (tmp_path / "here").mkdir()
    _run(samclip_command(*EVALUATE), tmp_path / "here")

    def measured(folder):
        row = json.loads((folder / "eval.json").read_text())["rows"]["mosaic"]
        return {key: value for key, value in row.items() if "seconds" not in key}  # timings differ between runs

    installed, here = measured(work), measured(tmp_path / "here")
    assert installed == here and installed["zero_shot_top1"] > 0.5

    demo = _run(
        [
            python,
            "-c",
            "from transformers_samclip.hub.cli import load_demo_app; app = load_demo_app(); "
            "print(app.__file__); print(sorted(p.name for p in app.EXAMPLES_DIR.iterdir()))",
        ],
        work,
    )
    app_file, examples = demo.strip().splitlines()[-2:]
    assert app_file.startswith(str(venv)) and "mosaic-0.png" in examples
