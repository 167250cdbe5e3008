"""The model card: evaluation results (the harness's JSON) -> `model-index` metadata and a results table,
rendered from `hub_cards/model_card.md` with `huggingface_hub.ModelCard`."""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..modeling.configuration_samclip import MIN_TRANSFORMERS_VERSION

# hub_cards/, found through the package (mapped in as transformers_samclip.hub_cards; a wheel carries it).
HUB_CARDS_DIR = Path(str(files("transformers_samclip.hub_cards")))
MODEL_CARD_TEMPLATE = HUB_CARDS_DIR / "model_card.md"

DATASET_ID = "zalando-datasets/fashion_mnist"
# The row `samclip distill` writes for the model it saved, in the results.json beside it.
DISTILLED_ROW = "SAM-CLIP (distilled)"
# The mosaic-world teachers (shipped in transformers_samclip/mosaic/teachers); pass others for other teachers.
DEFAULT_BASE_MODELS = ("transformers-samclip/mosaic-sam-teacher", "transformers-samclip/mosaic-clip-teacher")
DEFAULT_TAGS = (
    "samclip", "sam", "clip", "knowledge-distillation", "zero-shot-image-classification", "mask-generation",
    "image-segmentation", "zero-shot-image-segmentation", "custom_code",
)


@dataclass(frozen=True)
class Metric:
    """How one key of the evaluation JSON appears in `model-index` and in the card's table."""

    key: str
    title: str
    task_type: str
    task_name: str
    metric_type: str
    dataset_name: str


METRICS = (
    Metric("zero_shot_top1", "Zero-shot top-1", "zero-shot-image-classification", "Zero-shot classification",
           "accuracy", "Fashion-MNIST item views (test)"),
    Metric("zero_shot_top1_heldout", "Zero-shot top-1 (held-out look)", "zero-shot-image-classification",
           "Zero-shot classification, unseen backgrounds/tints/scales", "accuracy",
           "Fashion-MNIST item views, held-out look (test)"),
    Metric("zero_shot_top1_raw", "Zero-shot top-1 (raw photos)", "zero-shot-image-classification",
           "Zero-shot classification, raw 28 px photos", "accuracy", "Fashion-MNIST (test)"),
    Metric("box_miou", "Box mIoU", "mask-generation", "Promptable segmentation (box)", "mean_iou",
           "Fashion-MNIST mosaics (test)"),
    Metric("point1_miou", "1-point mIoU", "mask-generation", "Promptable segmentation (1 point)", "mean_iou",
           "Fashion-MNIST mosaics (test)"),
    Metric("point3_miou", "3-point mIoU", "mask-generation", "Promptable segmentation (3 points)", "mean_iou",
           "Fashion-MNIST mosaics (test)"),
    Metric("semseg_miou", "Semantic seg. mIoU", "image-segmentation", "Zero-shot semantic segmentation (CLIP head)",
           "mean_iou", "Fashion-MNIST mosaics (test)"),
    Metric("semseg_refined_miou", "Semantic seg. mIoU (SAM-refined)", "image-segmentation",
           "Zero-shot semantic segmentation (SAM-refined)", "mean_iou", "Fashion-MNIST mosaics (test)"),
)


def load_results(path: str | Path) -> dict[str, dict[str, float]]:
    """Read an evaluation JSON into `{model name: {metric key: value}}`, keeping numeric values only.

    Accepts rows keyed by model name at the top level or under `"results"`/`"rows"`/`"models"`, or a list of
    rows carrying their name in `"model"` or `"name"`; other keys (suite settings, versions) are ignored."""
    data = json.loads(Path(path).read_text())
    for key in ("results", "rows", "models"):
        if isinstance(data, dict) and isinstance(data.get(key), (dict, list)):
            data = data[key]
            break
    if isinstance(data, list):
        data = {str(row.get("model", row.get("name", f"model {i}"))): row for i, row in enumerate(data) if isinstance(row, dict)}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected rows keyed by model name, got {type(data).__name__}.")
    return {
        str(name): {k: float(v) for k, v in row.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}
        for name, row in data.items()
        if isinstance(row, dict)
    }


def find_row(results: dict[str, dict[str, float]], *names: str) -> str | None:
    """The key of the row that is this model: one of `names` exactly, else a key with the same last path part
    (the harness keys a model by the path it was given, e.g. `outputs/samclip-mosaic`)."""
    for name in names:
        if name in results:
            return name
    for name in names:
        for key in results:
            if Path(key).name == Path(name).name:
                return key
    return None


def class_names_of(path: str | Path, *names: str) -> list[str]:
    """The classes a model was evaluated on: the keys of its row's per-class semantic IoU (`semseg_per_class_iou`)
    in an evaluation JSON, without the background; empty when the row or the per-class results are missing."""
    data = json.loads(Path(path).read_text())
    rows = data.get("rows", data) if isinstance(data, dict) else {}
    row = find_row({key: {} for key in rows}, *names) if isinstance(rows, dict) else None
    per_class = rows[row].get("semseg_per_class_iou") if row and isinstance(rows[row], dict) else None
    return [name for name in per_class if name != "background"] if isinstance(per_class, dict) else []


def eval_results_for(metrics: dict[str, float]) -> list[EvalResult]:
    """`model-index` entries for the known metric keys present in one model's row (missing keys are skipped)."""
    return [
        EvalResult(
            task_type=metric.task_type, task_name=metric.task_name, dataset_type=DATASET_ID,
            dataset_name=metric.dataset_name, dataset_split="test", metric_type=metric.metric_type,
            metric_name=metric.title, metric_value=metrics[metric.key],
        )
        for metric in METRICS
        if metric.key in metrics
    ]


def results_table(results: dict[str, dict[str, float]]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Column titles and `(model, formatted values)` rows; columns no model reports are dropped, gaps are "–"."""
    columns = [m for m in METRICS if any(m.key in row for row in results.values())]
    rows = [(name, [f"{row[m.key]:.4f}" if m.key in row else "–" for m in columns]) for name, row in results.items()]
    return [m.title for m in columns], rows


def render_model_card(
    model,
    repo_id: str,
    model_name: str,
    results: dict[str, dict[str, float]] | None = None,
    base_models=DEFAULT_BASE_MODELS,
    example_labels=("cat", "Bag", "Sneaker"),
    class_names=(),
    model_description: str = "",
    training_description: str = "",
    license: str = "apache-2.0",
    template_path: str | Path = MODEL_CARD_TEMPLATE,
    row_names: tuple[str, ...] = (),
) -> ModelCard:
    """Render the card of `model` (a `SamClipModel`) for `repo_id`. The results row of `model_name` (or of one of
    `row_names`, see [`find_row`]) fills `model-index`; every row goes into the results table. `class_names` (the
    classes the model was distilled and evaluated on) are listed in the card and used as the snippets' labels."""
    results = results or {}
    row = find_row(results, model_name, *row_names)
    card_data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        tags=list(DEFAULT_TAGS),
        base_model=list(base_models),
        datasets=[DATASET_ID],
        model_name=model_name,
        eval_results=eval_results_for(results[row] if row else {}) or None,
    )
    # The harness names the row by the path it evaluated; the card calls it by the model's name.
    titles, rows = results_table({(model_name if key == row else key): value for key, value in results.items()})
    config = model.config
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=model_name,
        repo_id=repo_id,
        base_models=list(base_models),
        num_parameters=f"{sum(p.numel() for p in model.parameters()):,}",
        sam_size=config.image_size,
        clip_size=config.head_config.image_size,
        projection_dim=config.head_config.projection_dim,
        metric_titles=titles,
        result_rows=rows,
        results_description=(
            f"Measured by `samclip evaluate` (values as the harness reports them); the `model-index` metadata "
            f"holds the `{model_name}` row." if row else "Measured by `samclip evaluate` (values as the harness reports them)."
        ),
        example_labels=json.dumps(list(class_names or example_labels)),
        class_names=list(class_names),
        min_transformers_version=MIN_TRANSFORMERS_VERSION,
        model_description=model_description,
        training_description=training_description or "See the `transformers-samclip` package (`samclip distill`).",
    )
