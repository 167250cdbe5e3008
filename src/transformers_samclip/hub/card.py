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

# Where the mosaic world's photos come from (the card's training `datasets`); results are not measured on this
# dataset as published but on the synthetic world built from it, filed under `RESULTS_DATASET`.
DATASET_ID = "zalando-datasets/fashion_mnist"
RESULTS_DATASET = "samclip-mosaic-world"  # not a Hub dataset: `samclip evaluate mosaic` builds it
RESULTS_DATASET_NAME = "SAM-CLIP mosaic world (synthetic, built from Fashion-MNIST photos)"
# `base_model` lists Hub ids only; the mosaic-world teachers are not on the Hub, so the card says where they are from.
DEFAULT_BASE_MODELS = ()
MOSAIC_TEACHERS = (
    "the mosaic-world teachers shipped in the `transformers-samclip` package (`transformers_samclip/mosaic/teachers`: "
    "a tiny `SamModel` and `CLIPModel` trained from scratch on the mosaic world's Fashion-MNIST images by "
    "`python -m transformers_samclip.mosaic.teachers`; not Hub repositories)"
)
UNKNOWN_TEACHERS = (
    "not recorded with this model (`samclip export --base-model SAM_ID --base-model CLIP_ID` names them)"
)
DEFAULT_TAGS = (
    "samclip",
    "sam",
    "clip",
    "knowledge-distillation",
    "zero-shot-image-classification",
    "mask-generation",
    "image-segmentation",
    "zero-shot-image-segmentation",
    "custom_code",
)


@dataclass(frozen=True)
class Metric:
    """How one key of the evaluation JSON appears in `model-index` and in the card's table."""

    key: str
    title: str
    task_type: str
    task_name: str
    metric_type: str
    dataset_config: str
    dataset_name: str


# The mosaic world's parts, as dataset configs: the Hub groups `model-index` results by task, dataset and config.
ITEMS, HELDOUT, RAW, MOSAICS = (
    ("items", "item views"),
    ("items-heldout", "item views, held-out look"),
    ("raw-photos", "raw 28 px Fashion-MNIST test photos"),
    ("mosaics", "mosaics"),
)
METRICS = (
    Metric(
        "zero_shot_top1",
        "Zero-shot top-1",
        "zero-shot-image-classification",
        "Zero-shot classification",
        "accuracy",
        *ITEMS,
    ),
    Metric(
        "zero_shot_top1_heldout",
        "Zero-shot top-1 (held-out look)",
        "zero-shot-image-classification",
        "Zero-shot classification, unseen backgrounds/tints/scales",
        "accuracy",
        *HELDOUT,
    ),
    Metric(
        "zero_shot_top1_raw",
        "Zero-shot top-1 (raw photos)",
        "zero-shot-image-classification",
        "Zero-shot classification, raw 28 px photos",
        "accuracy",
        *RAW,
    ),
    Metric("box_miou", "Box mIoU", "mask-generation", "Promptable segmentation (box)", "mean_iou", *MOSAICS),
    Metric(
        "point1_miou", "1-point mIoU", "mask-generation", "Promptable segmentation (1 point)", "mean_iou", *MOSAICS
    ),
    Metric(
        "point3_miou", "3-point mIoU", "mask-generation", "Promptable segmentation (3 points)", "mean_iou", *MOSAICS
    ),
    Metric(
        "semseg_miou",
        "Semantic seg. mIoU",
        "image-segmentation",
        "Zero-shot semantic segmentation (CLIP head)",
        "mean_iou",
        *MOSAICS,
    ),
    Metric(
        "semseg_refined_miou",
        "Semantic seg. mIoU (SAM-refined)",
        "image-segmentation",
        "Zero-shot semantic segmentation (SAM-refined)",
        "mean_iou",
        *MOSAICS,
    ),
    Metric(
        "semseg_instances_miou",
        "Semantic seg. mIoU (one pass, labelled masks)",
        "image-segmentation",
        "Zero-shot semantic segmentation (one-pass labelled masks, the pipeline's default)",
        "mean_iou",
        *MOSAICS,
    ),
    Metric(
        "recognition_one_pass",
        "Recognition on ground-truth masks (one pass)",
        "zero-shot-image-classification",
        "Naming ground-truth instance masks from one encoder pass",
        "accuracy",
        *MOSAICS,
    ),
    Metric(
        "recognition_crop",
        "Recognition on ground-truth masks (crops)",
        "zero-shot-image-classification",
        "Naming ground-truth instance masks from their square crops",
        "accuracy",
        *MOSAICS,
    ),
)


def teachers_of(results_path: str | Path | None) -> tuple[tuple[str, ...], str]:
    """`(Hub ids for base_model, where the teachers came from)` read from the effective recipe in a `samclip
    distill` results.json (`effective_recipe.teachers`): Hub ids when the recipe named them, else the shipped
    mosaic-world teachers; unknown without a recipe."""
    data = json.loads(Path(results_path).read_text()) if results_path and Path(results_path).exists() else {}
    teachers = (data.get("effective_recipe") or {}).get("teachers") if isinstance(data, dict) else None
    if not isinstance(teachers, dict):
        return (), UNKNOWN_TEACHERS
    ids = tuple(teachers[key] for key in ("sam", "clip") if isinstance(teachers.get(key), str))
    if ids:
        return ids, ", ".join(f"`{name}`" for name in ids)
    return ((), MOSAIC_TEACHERS) if teachers.get("source") == "mosaic" else ((), UNKNOWN_TEACHERS)


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
        data = {
            str(row.get("model", row.get("name", f"model {i}"))): row
            for i, row in enumerate(data)
            if isinstance(row, dict)
        }
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
            task_type=metric.task_type,
            task_name=metric.task_name,
            dataset_type=RESULTS_DATASET,
            dataset_name=f"{RESULTS_DATASET_NAME}: {metric.dataset_name}",
            dataset_config=metric.dataset_config,
            dataset_split="test",
            metric_type=metric.metric_type,
            metric_name=metric.title,
            metric_value=metrics[metric.key],
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
    teachers_description: str = "",
) -> ModelCard:
    """Render the card of `model` (a `SamClipModel`) for `repo_id`. The results row of `model_name` (or of one of
    `row_names`, see [`find_row`]) fills `model-index`; every row goes into the results table. `class_names` (the
    classes the model was distilled and evaluated on) are listed in the card and used as the snippets' labels.
    `base_models` are the teachers' Hub ids (metadata `base_model`; none when they are not on the Hub);
    `teachers_description` says where the teachers came from (default: the `base_models`)."""
    results = results or {}
    row = find_row(results, model_name, *row_names)
    card_data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        tags=list(DEFAULT_TAGS),
        base_model=list(base_models) or None,
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
        teachers=teachers_description or ", ".join(f"`{name}`" for name in base_models) or UNKNOWN_TEACHERS,
        num_parameters=f"{sum(p.numel() for p in model.parameters()):,}",
        sam_size=config.image_size,
        clip_size=config.head_config.image_size,
        projection_dim=config.head_config.projection_dim,
        metric_titles=titles,
        result_rows=rows,
        results_description=(
            "Measured by `samclip evaluate` (values as the harness reports them) on the synthetic mosaic world built "
            "from Fashion-MNIST photos (single-item views in three looks and 128 px mosaics of several items), not "
            "on the Fashion-MNIST classification benchmark itself"
            + (f"; the `model-index` metadata holds the `{model_name}` row." if row else ".")
        ),
        example_labels=json.dumps(list(class_names or example_labels)),
        class_names=list(class_names),
        min_transformers_version=MIN_TRANSFORMERS_VERSION,
        model_description=model_description,
        training_description=training_description or "See the `transformers-samclip` package (`samclip distill`).",
    )
