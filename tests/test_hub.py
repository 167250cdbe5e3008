"""Hub release: export folder, model card (metadata, model-index, executed snippets), remote-code reload in a
process without the package, and push (offline message, upload calls)."""

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from transformers_samclip.hub import export_model, load_results, push_model
from transformers_samclip.hub.card import METRICS, results_table

REPO_ID = "someone/samclip-tiny"
# Run before anything else in a child process: transformers_samclip cannot be imported there.
BLOCK_PACKAGE = "import sys; sys.modules['transformers_samclip'] = None\nimport torch; torch.set_num_threads(1)\n"
# Shaped like `samclip evaluate --output`: rows keyed by the evaluated path, sizes and timings beside metrics.
RESULTS = {
    "model": "outputs/samclip-tiny",
    "rows": {
        "CLIP teacher": {"zero_shot_top1": 0.75, "num_items": 10000, "wall_seconds": 12.5},
        "SAM teacher": {"box_miou": 0.66, "point1_miou": 0.45, "point3_miou": 0.55, "semseg_miou": None},
        "outputs/samclip-tiny": {"zero_shot_top1": 0.71, "box_miou": 0.62, "point1_miou": 0.4, "semseg_miou": 0.3},
    },
    "versions": {"torch": "2.13.0"},
}


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh offline interpreter; fail the test with its output when it fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def tiny_model_dir(saved_tiny_model):
    return saved_tiny_model


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    results = tmp_path_factory.mktemp("results") / "results.json"
    results.write_text(json.dumps(RESULTS))
    return export_model(
        tiny_model_dir,
        tmp_path_factory.mktemp("export"),
        results_json=results,
        repo_id=REPO_ID,
        model_name="samclip-tiny",
    )


def test_export_writes_a_hub_folder(exported):
    names = {path.name for path in exported.iterdir()}
    expected = {
        "model.safetensors",
        "config.json",
        "processor_config.json",
        "tokenizer.json",
        "README.md",
        "configuration_samclip.py",
        "modeling_samclip.py",
        "processing_samclip.py",
    }
    assert expected <= names, expected - names
    auto_map = json.loads((exported / "config.json").read_text())["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_samclip.SamClipConfig"
    for auto_class in ("AutoModel", "AutoModelForZeroShotImageClassification", "AutoModelForMaskGeneration"):
        assert auto_map[auto_class] == "modeling_samclip.SamClipModel"
    processor_map = json.loads((exported / "processor_config.json").read_text())["auto_map"]
    assert processor_map["AutoProcessor"] == "processing_samclip.SamClipProcessor"


def test_card_metadata_and_model_index(exported):
    card = ModelCard.load(exported / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0"
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "zero-shot-image-classification"
    # The tiny model's teachers are not on the Hub and its folder records no recipe: no base_model, and the card
    # says so; the images come from Fashion-MNIST, the results from the mosaic world built from it.
    assert "base_model" not in data and data["datasets"] == ["zalando-datasets/fashion_mnist"]
    assert "| Teachers | not recorded with this model" in card.text
    assert {"samclip", "sam", "clip", "custom_code"} <= set(data["tags"])
    results = card.data.eval_results
    assert {r.metric_name: r.metric_value for r in results} == {
        "Zero-shot top-1": 0.71,
        "Box mIoU": 0.62,
        "1-point mIoU": 0.4,
        "Semantic seg. mIoU": 0.3,
    }
    assert all(r.dataset_split == "test" and r.dataset_type == "samclip-mosaic-world" for r in results)
    assert all(
        r.dataset_name.startswith("SAM-CLIP mosaic world (synthetic, built from Fashion-MNIST photos)")
        for r in results
    )
    assert {r.metric_name: r.dataset_config for r in results} == {
        "Zero-shot top-1": "items",
        "Box mIoU": "mosaics",
        "1-point mIoU": "mosaics",
        "Semantic seg. mIoU": "mosaics",
    }
    assert "| Model | Zero-shot top-1 | Box mIoU | 1-point mIoU | 3-point mIoU | Semantic seg. mIoU |" in card.text
    assert "| CLIP teacher | 0.7500 | – | – | – | – |" in card.text
    assert "| SAM teacher | – | 0.6600 | 0.4500 | 0.5500 | – |" in card.text
    assert "| samclip-tiny | 0.7100 | 0.6200 | 0.4000 | – | 0.3000 |" in card.text
    assert "SAM-refined" not in card.text.split("## Results")[1].split("## Usage")[0]  # no model reports it


def test_results_json_shapes_and_missing_keys(tmp_path):
    rows = [{"model": "a", "zero_shot_top1": 0.5, "note": "text", "flag": True}, {"name": "b", "box_miou": 1}]
    path = tmp_path / "list.json"
    path.write_text(json.dumps(rows))
    assert load_results(path) == {"a": {"zero_shot_top1": 0.5}, "b": {"box_miou": 1.0}}
    path.write_text(json.dumps({"a": {"semseg_refined_miou": 0.25}, "versions": {"torch": "2.13"}}))
    results = load_results(path)
    assert results["a"] == {"semseg_refined_miou": 0.25} and results["versions"] == {}
    titles, table = results_table(results)
    refined = next(metric for metric in METRICS if metric.key == "semseg_refined_miou")
    assert titles == [refined.title] and table == [("a", ["0.2500"]), ("versions", ["–"])]


def test_card_without_results(tiny_model_dir, tmp_path):
    card = ModelCard.load(export_model(tiny_model_dir, tmp_path, repo_id=REPO_ID) / "README.md")
    assert "model-index" not in card.content.split("---")[1]
    assert "No evaluation results" in card.text


def test_card_snippets_run_on_the_export_without_the_package(exported, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (exported / "README.md").read_text(), re.DOTALL)
    assert len(blocks) == 4 and all(REPO_ID in block for block in blocks)
    assert "image_processor=" not in "".join(blocks) and "tokenizer=processor" not in "".join(blocks)
    runner = BLOCK_PACKAGE + textwrap.dedent(f"""
        for index, block in enumerate({[b.replace(REPO_ID, str(exported)) for b in blocks]!r}):
            exec(compile(block, f"snippet {{index}}", "exec"), {{"__name__": "__main__"}})
            print("snippet", index, "ok")
    """)
    result = run_python(runner, tmp_path)
    assert all(f"snippet {i} ok" in result.stdout for i in range(4))
    assert "'label': 'Sneaker'" in result.stdout  # the classification snippet printed its ranked labels
    assert "torchvision" not in result.stderr and "is not supported" not in result.stderr, result.stderr[-2000:]


def test_card_install_line_names_what_the_snippets_need(exported):
    """The card's one shell snippet (`pip install ...`) cannot run offline: each requirement it names is installed
    here at a version it accepts, and the Python snippets import nothing else."""
    from importlib.metadata import version

    from packaging.requirements import Requirement

    text = (exported / "README.md").read_text()
    (shell,) = re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
    words = shlex.split(shell.strip())
    assert words[:2] == ["pip", "install"]
    requirements = [Requirement(word) for word in words[2:]]
    for requirement in requirements:
        assert requirement.specifier.contains(version(requirement.name), prereleases=True), requirement
    imported = set(
        re.findall(
            r"^(?:from|import) (\w+)", "".join(re.findall(r"```python\n(.*?)```", text, re.DOTALL)), re.MULTILINE
        )
    )
    distributions = {"PIL": "pillow", "skimage": "scikit-image"}
    assert {distributions.get(name, name) for name in imported} == {r.name for r in requirements}


def test_card_teachers_come_from_the_recipe(tiny_model_dir, tmp_path):
    """base_model holds Hub ids only: the recipe's teachers when it named Hub repos, none for the mosaic teachers
    (the card says where they came from instead); --base-model wins."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    teachers = {"sam": "facebook/sam-vit-base", "clip": "openai/clip-vit-base-patch16"}
    hub_recipe = {"effective_recipe": {"teachers": teachers}}
    (folder / "results.json").write_text(json.dumps(hub_recipe))
    card = ModelCard.load(export_model(folder, tmp_path / "hub") / "README.md")
    assert card.data.base_model == ["facebook/sam-vit-base", "openai/clip-vit-base-patch16"]
    assert "| Teachers | `facebook/sam-vit-base`, `openai/clip-vit-base-patch16` |" in card.text
    (folder / "results.json").write_text(json.dumps({"effective_recipe": {"teachers": {"source": "mosaic"}}}))
    card = ModelCard.load(export_model(folder, tmp_path / "mosaic") / "README.md")
    assert card.data.base_model is None
    assert "mosaic-world teachers shipped in the `transformers-samclip` package" in card.text
    card = ModelCard.load(export_model(folder, tmp_path / "given", base_models=["a/sam", "b/clip"]) / "README.md")
    assert card.data.base_model == ["a/sam", "b/clip"]


def test_export_reloads_as_remote_code_with_identical_outputs(exported, tiny_model_dir, processor, image, tmp_path):
    from transformers_samclip import SamClipModel

    original = SamClipModel.from_pretrained(tiny_model_dir).eval()
    clip_inputs = processor(images=image, text=["a red box", "noise"], view="clip")
    sam_inputs = processor(
        images=image, input_points=[[[[30, 20], [60, 10]]]], input_labels=[[[1, 0]]], input_boxes=[[[20, 10, 50, 30]]]
    )
    torch.save({"clip": dict(clip_inputs), "sam": dict(sam_inputs)}, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = {
            "logits_per_image": original(**clip_inputs).logits_per_image,
            "pred_masks": original(**sam_inputs).pred_masks,
        }
    run_python(
        BLOCK_PACKAGE
        + textwrap.dedent(f"""
        from transformers import AutoModel, AutoProcessor
        folder = {str(exported)!r}
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert type(processor).__name__ == "SamClipProcessor", type(processor)
        inputs = torch.load("inputs.pt")
        with torch.no_grad():
            outputs = {{"logits_per_image": model(**inputs["clip"]).logits_per_image,
                        "pred_masks": model(**inputs["sam"]).pred_masks}}
        from PIL import Image
        image = Image.fromarray((torch.rand(48, 80, 3) * 255).byte().numpy())
        outputs["same_processing"] = processor(images=image, view="clip")["pixel_values"]
        torch.save(outputs, "outputs.pt")
    """),
        tmp_path,
    )
    reloaded = torch.load(tmp_path / "outputs.pt")
    for key, value in expected.items():
        torch.testing.assert_close(reloaded[key], value, atol=1e-5, rtol=1e-5)
    assert reloaded["same_processing"].shape == clip_inputs["pixel_values"].shape


def test_push_offline_fails_with_one_line(tiny_model_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    samclip = Path(sys.executable).with_name("samclip")
    result = subprocess.run(
        [str(samclip), "push", str(tiny_model_dir), "someone/samclip-tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("samclip push")]
    assert errors == [
        (
            "samclip push: cannot push to someone/samclip-tiny: the Hub is offline here (HF_HUB_OFFLINE is set); "
            "the export itself works: `samclip export MODEL_DIR OUT_DIR`."
        )
    ]
    assert "Traceback" not in result.stderr


def test_push_creates_the_repo_and_uploads_the_export(tiny_model_dir, monkeypatch):
    import huggingface_hub

    calls = []

    class RecordingApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            return "https://huggingface.co/someone/samclip-tiny/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    url = push_model(tiny_model_dir, "someone/samclip-tiny", private=True, token="hf_test")
    assert url.endswith("/commit/abc")
    assert calls[0] == ("init", "hf_test")
    assert calls[1] == (
        "create_repo",
        "someone/samclip-tiny",
        {"repo_type": "model", "private": True, "exist_ok": True},
    )
    assert calls[2][0] == "upload_folder" and {"README.md", "model.safetensors", "modeling_samclip.py"} <= set(
        calls[2][2]
    )


def test_mosaic_fallback_merges_the_teachers(teachers, tokenizer, monkeypatch):
    from types import SimpleNamespace

    from transformers_samclip import mosaic
    from transformers_samclip.hub import export as export_module
    from transformers_samclip.mosaic import model as mosaic_model_module

    sam, clip = teachers
    monkeypatch.setattr(mosaic_model_module, "MOSAIC_MODEL_DIRS", ())
    monkeypatch.setattr(
        mosaic,
        "load_mosaic_teachers",
        lambda: {
            "sam_model": sam,
            "clip_model": clip,
            "clip_processor": SimpleNamespace(tokenizer=tokenizer),
        },
    )
    loaded = export_module.load_samclip("mosaic")
    assert loaded.merged_teachers and "merged with `SamClipModel.from_teachers`" in loaded.description
    assert loaded.processor.target_size == sam.config.vision_config.image_size
    assert loaded.processor.clip_size == loaded.model.config.head_config.image_size


def test_mosaic_card_tells_the_truth_by_default(tmp_path):
    """`samclip export mosaic OUT`, no --results: the shipped model's own results fill the card, which names its
    ten classes."""
    from transformers_samclip.cli import main as samclip_main
    from transformers_samclip.mosaic import FASHION_MNIST_CLASSES, SHIPPED_MOSAIC_MODEL_DIR

    assert samclip_main(["export", "mosaic", str(tmp_path)]) == 0
    card = ModelCard.load(tmp_path / "README.md")
    own = json.loads((SHIPPED_MOSAIC_MODEL_DIR / "results.json").read_text())["rows"]["SAM-CLIP (distilled)"]
    assert f"| samclip-mosaic | {own['zero_shot_top1']:.4f} | {own['zero_shot_top1_heldout']:.4f} |" in card.text
    index = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert (
        index["Box mIoU"] == own["box_miou"]
        and index["Semantic seg. mIoU (SAM-refined)"] == own["semseg_refined_miou"]
    )
    assert f"| Classes it was distilled and evaluated on | {', '.join(FASHION_MNIST_CLASSES)} |" in card.text
    assert f"candidate_labels={json.dumps(list(FASHION_MNIST_CLASSES))}" in card.text


def test_remote_code_refuses_an_older_transformers_with_a_clear_message(exported, tmp_path):
    from transformers_samclip.modeling.configuration_samclip import MIN_TRANSFORMERS_VERSION

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert f'"transformers>={MIN_TRANSFORMERS_VERSION},' in pyproject  # one minimum: the package's and the Hub code's
    assert f"transformers>={MIN_TRANSFORMERS_VERSION}" in (exported / "README.md").read_text()
    output = run_python(
        BLOCK_PACKAGE
        + textwrap.dedent(f"""
        import transformers
        transformers.__version__ = "5.3.0"  # as an older install reports itself
        from transformers import AutoModel
        try:
            AutoModel.from_pretrained({str(exported)!r}, trust_remote_code=True)
        except ImportError as error:
            print("refused:", error)
    """),
        tmp_path,
    ).stdout
    assert output.strip().splitlines()[-1] == (
        f"refused: This SAM-CLIP model code needs transformers>={MIN_TRANSFORMERS_VERSION}, found 5.3.0: "
        f"pip install -U 'transformers>={MIN_TRANSFORMERS_VERSION}'."
    )


def test_readme_pipelines_run_without_the_package_and_with_it(exported, tmp_path, monkeypatch):
    """The README's pipeline blocks as written: the first in a process where transformers_samclip cannot be
    imported, the second (which imports it) after the first, in this process."""
    from PIL import Image

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    without, with_package = [
        re.search(r"```python\n(.*?)```", readme[readme.index(marker) :], re.S)
        .group(1)
        .replace("path/to/samclip", str(exported))
        for marker in ("without this package", "Importing this package registers")
    ]
    Image.fromarray((np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8)).save(tmp_path / "photo.jpg")
    # Random tiny weights: the mask generator's quality filters may keep no mask; that it answers is the claim.
    summary = (
        "print(sorted(l['label'] for l in labels), sorted(masks), len(features[0]), "
        "sum(np.asarray(s['mask']).astype(bool).sum() for s in segments))"
    )
    output = run_python(BLOCK_PACKAGE + without + "\nimport numpy as np\n" + summary, tmp_path).stdout
    # 24: the image embedding (projection_dim); 3840: the segments cover the 48 x 80 photo once
    assert output.strip().splitlines()[-1] == "['cat', 'dog'] ['masks', 'scores'] 24 3840"
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(without + with_package, "README.md", "exec"), scope)
    assert {segment["label"] for segment in scope["segments"]} <= {"background", "cat", "dog"}
    assert sum((np.asarray(segment["mask"]) > 0).sum() for segment in scope["segments"]) == 48 * 80


@pytest.mark.slow
def test_export_the_mosaic_model(tmp_path):
    folder = export_model("mosaic", tmp_path / "samclip-mosaic")
    card = ModelCard.load(folder / "README.md")
    assert card.data.model_name == "samclip-mosaic"
    run_python(
        BLOCK_PACKAGE + f"from transformers import AutoModel\nAutoModel.from_pretrained({str(folder)!r}, "
        "trust_remote_code=True)",
        tmp_path,
    )
