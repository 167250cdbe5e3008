"""Hub release: load a SAM-CLIP model (a folder, a Hub id, or the shipped mosaic model), write a Hub-ready
folder (weights, config with `auto_map`, processor, remote code, model card), and upload it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..evaluation.results import DISTILLED_ROW
from ..modeling import pipeline_samclip
from ..mosaic.model import MOSAIC_MODEL_NAME, LoadedModel, load_mosaic_model, load_pretrained
from ..pipelines import EXPORTED_PIPELINES
from .card import (
    DEFAULT_BASE_MODELS,
    MODEL_CARD_TEMPLATE,
    MOSAIC_TEACHERS,
    class_names_of,
    load_results,
    render_model_card,
    teachers_of,
)

# Besides AutoModel (written by save_pretrained), the task Auto classes the pipelines load through.
TASK_AUTO_CLASSES = ("AutoModelForZeroShotImageClassification", "AutoModelForMaskGeneration")
PIPELINE_MODULE = Path(pipeline_samclip.__file__)
# Every task an exported folder serves, transformers' own task names included: for a folder or Hub id, pipeline()
# prefers these entries to its own classes, so each task gets the processor view it needs.
CUSTOM_PIPELINES = {
    task: {"impl": f"{PIPELINE_MODULE.stem}.{cls.__name__}", "pt": ["AutoModel"], "tf": [], "type": "multimodal"}
    for task, cls in EXPORTED_PIPELINES.items()
}


class HubError(RuntimeError):
    """A Hub operation failed for a reason the user can act on; the message is one line."""


def load_samclip(source: str | Path) -> LoadedModel:
    """Load a model and its processor from a folder or Hub id; `"mosaic"` means [`load_mosaic_model`]."""
    return load_mosaic_model() if str(source) == "mosaic" else load_pretrained(source)


def export_model(
    model_dir: str | Path,
    out_dir: str | Path,
    results_json: str | Path | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    base_models=DEFAULT_BASE_MODELS,
    template_path: str | Path = MODEL_CARD_TEMPLATE,
    onnx: bool = False,
    int8: bool = False,
) -> Path:
    """Write a Hub-ready folder: `model.safetensors`, `config.json` with `auto_map` and `custom_pipelines` (every
    task the folder serves, see `CUSTOM_PIPELINES`), processor and tokenizer files, the remote code from
    `modeling/`, and `README.md` rendered from the card template; with `onnx`, also
    the ONNX graphs under `onnx/` (see [`export_onnx`]), and with `int8` their int8 dynamic quantization.

    `model_dir` is a folder, a Hub id or `"mosaic"`; `results_json` is the `samclip evaluate` output, whose row
    of `model_name` (default: the folder's name) or `model_dir` fills `model-index`; without it, the model's own
    `results.json` (what `samclip distill` wrote beside it; its row is `DISTILLED_ROW`) fills the card, and its
    per-class results name the classes the model knows. `repo_id` goes into the usage snippets."""
    loaded = load_samclip(model_dir)
    model_name = model_name or (MOSAIC_MODEL_NAME if str(model_dir) == "mosaic" else Path(str(model_dir)).name)
    repo_id = repo_id or f"transformers-samclip/{model_name}"
    own_results = loaded.folder / "results.json" if loaded.folder else None
    if results_json is None and own_results and own_results.exists():
        results_json = own_results
    results = load_results(results_json) if results_json else None
    # Where the teachers came from: the recipe `samclip distill` recorded beside the model; `base_models` given here
    # (Hub ids) win.
    recorded_ids, teachers = teachers_of(own_results) if not loaded.merged_teachers else ((), MOSAIC_TEACHERS)
    base_models = tuple(base_models) or recorded_ids
    if base_models:
        teachers = ", ".join(f"`{name}`" for name in base_models)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = loaded.model
    # save_pretrained adds AutoConfig/AutoModel to an existing auto_map, so the task classes set here survive.
    model.config.auto_map = {name: f"modeling_samclip.{type(model).__name__}" for name in TASK_AUTO_CLASSES}
    # The pipeline ships as remote code too: `pipeline(task, model=folder, trust_remote_code=True)` finds it here.
    model.config.custom_pipelines = {task: dict(entry) for task, entry in CUSTOM_PIPELINES.items()}
    model.save_pretrained(out_dir)
    loaded.processor.save_pretrained(out_dir)
    shutil.copy(PIPELINE_MODULE, out_dir / PIPELINE_MODULE.name)
    card = render_model_card(
        model,
        repo_id=repo_id,
        model_name=model_name,
        results=results,
        base_models=base_models,
        model_description=loaded.description if loaded.merged_teachers else "",
        template_path=template_path,
        row_names=(str(model_dir), DISTILLED_ROW),
        teachers_description=teachers,
        class_names=class_names_of(results_json, model_name, str(model_dir), DISTILLED_ROW) if results_json else (),
    )
    card.save(out_dir / "README.md")
    if onnx or int8:
        from .onnx import export_onnx, quantize_onnx

        export_onnx(model, loaded.processor, out_dir)
        if int8:
            quantize_onnx(out_dir / "onnx")
    return out_dir


def push_model(
    model_dir: str | Path,
    repo_id: str,
    results_json: str | Path | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload SAM-CLIP model",
    **export_options,
) -> str:
    """Export `model_dir` to a temporary folder and upload it to the Hub model repo `repo_id` (created if needed).
    Returns the commit URL; raises [`HubError`] with a one-line message when the Hub cannot be reached or refuses."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    with tempfile.TemporaryDirectory(prefix="samclip-push-") as folder:
        export_model(model_dir, folder, results_json=results_json, repo_id=repo_id, **export_options)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
        except OfflineModeIsEnabled:
            raise HubError(
                f"cannot push to {repo_id}: the Hub is offline here (HF_HUB_OFFLINE is set); the export "
                "itself works: `samclip export MODEL_DIR OUT_DIR`."
            ) from None
        except HfHubHTTPError as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise HubError(
                f"cannot push to {repo_id}: the Hub refused ({first_line}); check the repo id and "
                "your token (`hf auth login`)."
            ) from None
        except (OSError, ValueError) as error:  # connection failures and missing tokens
            raise HubError(f"cannot push to {repo_id}: {type(error).__name__}: {error}".splitlines()[0]) from None
    return str(getattr(commit, "commit_url", commit))
