"""A distillation recipe as typed dataclasses, parsed once from its JSON (after TRL's `GKDConfig` and big_vision's
`get_config`): every default lives here once, `__post_init__` validates each entry with errors that name the field
(as a dotted path, the same one `--set` takes) and the allowed values, and an ablation is an override of the one
object (`Recipe.override({"losses.sam_loss_weight": 1})`, `samclip distill --set losses.sam_loss_weight=1`).

Data specs (`data.clip`, `data.sam`, `calibration`) stay plain dicts: `run.load_image_dataset` consumes them and
each source takes its own options."""

import copy
import dataclasses
import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from .. import SamClipHeadConfig
from .prompts import PromptSampler

# What the CLIP teacher sees of a region in region distillation (`LossWeights.region_target`).
REGION_TARGETS = ("crop", "masked_crop")

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
# What each stage trains (parameter-name prefixes of the student); everything else stays frozen.
STAGE_TRAINS = {
    "head_probing": ("clip_head.",),
    "distillation": ("clip_head.", "vision_encoder.", "mask_decoder."),
    "resolution_adaptation": ("clip_head.",),
}
STAGES = tuple(STAGE_TRAINS)
POOLINGS = ("max", "mean")
TRAINING_ARGUMENTS = frozenset(f.name for f in dataclasses.fields(TrainingArguments) if f.init)


def stage_trains(stage: str) -> tuple[str, ...]:
    """Parameter-name prefixes of the student that `stage` trains (the rest stays frozen)."""
    if stage not in STAGE_TRAINS:
        raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}.")
    return STAGE_TRAINS[stage]


def rehearses_sam(stage: str) -> bool:
    """Whether `stage` adds `lambda * L_SAM`: only a stage that trains the SAM head rehearses SAM."""
    return "mask_decoder." in stage_trains(stage)


def stage_losses(stage: str, losses: "LossWeights") -> "LossWeights":
    """`losses` as `stage` applies them: lambda is 0 in a stage that does not rehearse SAM."""
    return losses if rehearses_sam(stage) else dataclasses.replace(losses, sam_loss_weight=0.0)


def computes_sam_loss(stage: str, losses: "LossWeights") -> bool:
    """Whether `stage` adds `lambda * L_SAM` under `losses` (it rehearses SAM, with lambda > 0)."""
    return stage_losses(stage, losses).sam_loss_weight > 0


def needs_sam_batches(stage: str, losses: "LossWeights") -> bool:
    """Whether `stage` needs D_SAM batches under `losses`: it computes `L_SAM` or `L_region` (`region_weight > 0`,
    in any stage: head-only stages too, without `L_SAM`)."""
    return computes_sam_loss(stage, losses) or losses.region_weight > 0


def is_streaming(spec) -> bool:
    """Whether a data spec (or list of them) is read as a stream: `webdataset`, SA-1B tars (`sa1b` with
    `data_files`) or `streaming: true`."""
    if isinstance(spec, list):
        return any(is_streaming(part) for part in spec)
    return (
        bool(spec.get("streaming"))
        or spec.get("source") == "webdataset"
        or (spec.get("source") == "sa1b" and "data_files" in spec)
    )


# ------------------------------------------------------------------------------------------------ validation
def _fail(name: str, problem: str):
    # Messages start with the field's path relative to the dataclass; `_section` prefixes the enclosing entries.
    raise ValueError(f"{name}: {problem}")


def _number(
    name: str,
    value,
    *,
    minimum: float | None = None,
    positive: bool = False,
    integer: bool = False,
    below: float | None = None,
):
    """`value` checked (a number, or an integer, within the bounds) and, unless `integer`, as a float."""
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        _fail(name, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
    if positive and not value > 0:
        _fail(name, f"must be > 0, got {value!r}")
    if minimum is not None and not value >= minimum:
        _fail(name, f"must be >= {minimum}, got {value!r}")
    if below is not None and not value < below:
        _fail(name, f"must be < {below}, got {value!r}")
    return value if integer else float(value)


def _boolean(name: str, value) -> bool:
    if not isinstance(value, bool):
        _fail(name, f"must be true or false, got {value!r}")
    return value


def _choice(name: str, value, allowed):
    if value not in allowed:
        _fail(name, f"must be one of {list(allowed)}, got {value!r}")
    return value


def _sizes(name: str, value):
    if value is not None and not (
        isinstance(value, list | tuple)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        _fail(name, f"must be null or a non-empty list of positive integers, got {value!r}")
    return value


def _data_spec(value, name: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, Mapping) or not isinstance(value.get("source"), str):
        _fail(
            name,
            f"must be a data spec: a JSON object with a string 'source' (see run.load_image_dataset), got {value!r}",
        )


def _keys(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _did_you_mean(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _section(cls, value, where: str):
    """`value` (a JSON object, or already a `cls`) as a validated `cls`; errors get the prefix `where`."""
    if isinstance(value, cls):
        return value
    prefix = f"{where}." if where else ""
    if not isinstance(value, Mapping):
        raise ValueError(f"{where or 'recipe'}: must be a JSON object with keys {_keys(cls)}, got {value!r}")
    unknown = [key for key in value if key not in _keys(cls)]
    if unknown:
        raise ValueError(
            f"{prefix}{unknown[0]}: unknown key{_did_you_mean(unknown[0], _keys(cls))}; "
            f"the keys of {where or 'a recipe'} are {_keys(cls)}"
        )
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in value]
    if missing:
        raise ValueError(f"{prefix}{missing[0]}: required (the required keys of {where or 'a recipe'} are {required})")
    try:
        return cls(**value)
    except ValueError as error:
        raise ValueError(f"{prefix}{error}") from None


# -------------------------------------------------------------------------------------------------- entries
@dataclass
class LossWeights:
    """The `losses` entry: `L = L_CLIP + sam_loss_weight * L_SAM + region_weight * L_region + relational_weight *
    L_relational` with
    `L_SAM = focal_weight * focal + dice_weight * dice + iou_weight * MSE(IoU heads)`.

    Args:
        sam_loss_weight: lambda (paper: 10); 0 is the naive baseline (CLIP loss only, no SAM rehearsal).
        focal_weight, dice_weight: SAM's 20:1 mask-loss weights.
        iou_weight: weight of the MSE between the student's and the teacher's IoU predictions.
        distill_single_mask: also distill the single-mask output (box and multi-point prompts use it at test time).
        region_weight: weight of `L_region` (CLIPSelf/RegionCLIP-style region distillation: the student's
            CLIP-head tokens pooled inside a D_SAM instance mask and projected, as label-everything reads a mask
            (`mask_region_features`), pulled by cosine toward the CLIP teacher's embedding of the region's view;
            `prompts.num_regions` masks per image). 0 (default) turns it off; when on, every stage gets D_SAM
            batches, and head-only stages add `L_region` without `L_SAM`.
        region_target: the teacher's view of a region: `"crop"` (the square crop around the mask) or
            `"masked_crop"` (the same with the pixels outside the mask grey).
        region_background: one more region per D_SAM image, the pixels no mask covers, whose target is the
            teacher's embedding of that background's masked crop (DenseVLM-style: background pools toward
            background, not toward a class).
        relational_weight: weight of `L_relational` (SEED/CompRess-style, `losses.relational_distillation_loss`):
            every student embedding of a step (the D_CLIP views' and the regions') should rank the step's teacher
            embeddings as its own teacher embedding does. 0 (default) turns it off. The embeddings ranked are those
            of one process's micro-batch (not gathered across processes), so the loss follows
            `per_device_train_batch_size` and `sam_batch_size`, unless `relational_bank_size` adds past ones.
        relational_temperature: the softmax temperature of `L_relational` (teacher and student alike).
        relational_bank_size: how many teacher embeddings of earlier steps `L_relational` ranks beside the step's
            own (CompRess's memory bank; the teacher is frozen, so they never go stale): a first-in first-out bank
            per process and per stage, refilled after a resume. 0 (default): the step's embeddings only.
    """

    sam_loss_weight: float = 10.0
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    distill_single_mask: bool = True
    region_weight: float = 0.0
    region_target: str = "crop"
    region_background: bool = False
    relational_weight: float = 0.0
    relational_temperature: float = 0.1
    relational_bank_size: int = 0

    def __post_init__(self):
        self.sam_loss_weight = _number("sam_loss_weight", self.sam_loss_weight, minimum=0)
        self.focal_weight = _number("focal_weight", self.focal_weight, minimum=0)
        self.dice_weight = _number("dice_weight", self.dice_weight, minimum=0)
        self.iou_weight = _number("iou_weight", self.iou_weight, minimum=0)
        _boolean("distill_single_mask", self.distill_single_mask)
        self.region_weight = _number("region_weight", self.region_weight, minimum=0)
        _choice("region_target", self.region_target, REGION_TARGETS)
        _boolean("region_background", self.region_background)
        self.relational_weight = _number("relational_weight", self.relational_weight, minimum=0)
        self.relational_temperature = _number("relational_temperature", self.relational_temperature, positive=True)
        _number("relational_bank_size", self.relational_bank_size, minimum=0, integer=True)


@dataclass
class HeadSpec:
    """The `model.head` entry: `SamClipHeadConfig` options of the student's CLIP head (defaults are that
    config's; `image_size` comes from `model.clip_size` and `projection_dim` from the CLIP teacher)."""

    num_hidden_layers: int = SamClipHeadConfig.num_hidden_layers
    pooling: str = SamClipHeadConfig.pooling
    project_before_pool: bool = SamClipHeadConfig.project_before_pool
    mlp_hidden_sizes: list[int] | None = SamClipHeadConfig.mlp_hidden_sizes
    hidden_act: str = SamClipHeadConfig.hidden_act
    layer_norm_eps: float = SamClipHeadConfig.layer_norm_eps
    dense_value_layers: int = SamClipHeadConfig.dense_value_layers

    def __post_init__(self):
        _number("num_hidden_layers", self.num_hidden_layers, minimum=0, integer=True)
        _choice("pooling", self.pooling, POOLINGS)
        _boolean("project_before_pool", self.project_before_pool)
        _sizes("mlp_hidden_sizes", self.mlp_hidden_sizes)
        if not isinstance(self.hidden_act, str):
            _fail("hidden_act", f"must be an activation name (e.g. 'gelu'), got {self.hidden_act!r}")
        self.layer_norm_eps = _number("layer_norm_eps", self.layer_norm_eps, positive=True)
        _number("dense_value_layers", self.dense_value_layers, minimum=0, integer=True)


@dataclass
class ModelSpec:
    """The `model` entry: the student's SAM and CLIP input sizes (pixels) and its CLIP head."""

    sam_size: int
    clip_size: int
    head: HeadSpec = field(default_factory=HeadSpec)

    def __post_init__(self):
        _number("sam_size", self.sam_size, positive=True, integer=True)
        _number("clip_size", self.clip_size, positive=True, integer=True)
        self.head = _section(HeadSpec, self.head, "head")


@dataclass
class Teachers:
    """The `teachers` entry: `source: "mosaic"` (the shipped mosaic-world teachers) or the `sam` and `clip`
    checkpoints (Hub ids or folders)."""

    source: str | None = None
    sam: str | None = None
    clip: str | None = None

    def __post_init__(self):
        if self.source is not None:
            _choice("source", self.source, ("mosaic",))
        elif not (isinstance(self.sam, str) and isinstance(self.clip, str)):
            _fail(
                "sam",
                f"give source 'mosaic', or both sam and clip checkpoints; got sam={self.sam!r}, clip={self.clip!r}",
            )


@dataclass
class Data:
    """The `data` entry: D_CLIP (`clip`: a data spec, or a list of them) and D_SAM (`sam`: a data spec whose
    masks column feeds the prompt sampler). A data spec is a dict with a `source` (see `run.load_image_dataset`)."""

    clip: dict | list[dict]
    sam: dict

    def __post_init__(self):
        if isinstance(self.clip, list):
            if not self.clip:
                _fail("clip", "must be a data spec or a non-empty list of data specs, got []")
            for index, spec in enumerate(self.clip):
                _data_spec(spec, f"clip.{index}")
        else:
            _data_spec(self.clip, "clip")
        _data_spec(self.sam, "sam")


@dataclass
class Prompts:
    """The `prompts` entry: `PromptSampler` options (defaults are its own; the seed is the run's).
    `num_regions` is how many instance masks per D_SAM image `L_region` uses (with `losses.region_weight > 0`)."""

    num_boxes: int = PromptSampler.num_boxes
    num_point_prompts: int = PromptSampler.num_point_prompts
    max_points: int = PromptSampler.max_points
    box_jitter: float = PromptSampler.box_jitter
    min_mask_area: int = PromptSampler.min_mask_area
    grid_size: int = PromptSampler.grid_size
    num_regions: int = PromptSampler.num_regions

    def __post_init__(self):
        _number("num_boxes", self.num_boxes, minimum=0, integer=True)
        _number("num_point_prompts", self.num_point_prompts, minimum=0, integer=True)
        _number("max_points", self.max_points, minimum=1, integer=True)
        self.box_jitter = _number("box_jitter", self.box_jitter, minimum=0)
        _number("min_mask_area", self.min_mask_area, minimum=0, integer=True)
        _number("grid_size", self.grid_size, minimum=1, integer=True)
        _number("num_regions", self.num_regions, minimum=0, integer=True)


@dataclass
class LoraSpec:
    """The `lora` entry: with `enabled`, stage 2 trains PEFT LoRA adapters (rank `r`, scale `lora_alpha / r`) on
    the shared encoder instead of its weights (the `--lora` ablation)."""

    enabled: bool = False
    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0

    def __post_init__(self):
        _boolean("enabled", self.enabled)
        _number("r", self.r, minimum=1, integer=True)
        self.lora_alpha = _number("lora_alpha", self.lora_alpha, positive=True)
        self.lora_dropout = _number("lora_dropout", self.lora_dropout, minimum=0, below=1)

    def peft_options(self) -> dict:
        """The `peft.LoraConfig` arguments."""
        return {"r": self.r, "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout}


@dataclass
class Stage:
    """One entry of `stages`: which stage (`STAGES`; `trains` says what it trains) and how.

    Args:
        stage: `head_probing` (CLIP head), `distillation` (CLIP head, shared encoder, SAM head: L_CLIP +
            lambda L_SAM) or `resolution_adaptation` (CLIP head at new resolutions); any of them adds
            `losses.region_weight * L_region` when that weight is > 0 (see `Recipe.needs_sam_batches`).
        training_args: `transformers.TrainingArguments` options of the stage.
        sam_batch_size: D_SAM images per step (stages that need D_SAM batches: stage 2, and any stage with
            region distillation).
        encoder_lr_scale: LR multiplier of the shared encoder and the SAM head in stage 2 (paper: 0.1).
        clip_sizes: CLIP input sizes drawn per batch (default: the `data.clip` spec's `clip_sizes`, else the
            model's `clip_size`).
    """

    stage: str
    training_args: dict = field(default_factory=dict)
    sam_batch_size: int = 1
    encoder_lr_scale: float = 0.1
    clip_sizes: list[int] | None = None

    def __post_init__(self):
        _choice("stage", self.stage, STAGES)
        if not isinstance(self.training_args, Mapping):
            _fail("training_args", f"must be a JSON object of TrainingArguments options, got {self.training_args!r}")
        unknown = sorted(set(self.training_args) - TRAINING_ARGUMENTS)
        if unknown:
            _fail(
                f"training_args.{unknown[0]}",
                f"not a transformers.TrainingArguments option{_did_you_mean(unknown[0], TRAINING_ARGUMENTS)}",
            )
        if "learning_rate" in self.training_args:
            _number("training_args.learning_rate", self.training_args["learning_rate"], positive=True)
        _number("sam_batch_size", self.sam_batch_size, minimum=1, integer=True)
        self.encoder_lr_scale = _number("encoder_lr_scale", self.encoder_lr_scale, minimum=0)
        _sizes("clip_sizes", self.clip_sizes)

    @property
    def trains(self) -> tuple[str, ...]:
        """Parameter-name prefixes of the student this stage trains (the rest stays frozen)."""
        return stage_trains(self.stage)

    @property
    def rehearses_sam(self) -> bool:
        """Whether this stage adds `lambda * L_SAM` (stage 2)."""
        return rehearses_sam(self.stage)


@dataclass
class Recipe:
    """A distillation recipe: what `samclip distill` runs, parsed once from JSON (`load_recipe`,
    `Recipe.from_dict`); `to_dict` gives the JSON back and `override` the ablations.

    Args:
        teachers, model, data, stages: see `Teachers`, `ModelSpec`, `Data`, `Stage` (required).
        name: the recipe's name (a loaded file's stem).
        about: free text (command, run time, what it reaches).
        prompts, losses, lora: see `Prompts`, `LossWeights`, `LoraSpec`.
        teacher_cache: cache the teachers' outputs on disk (map-style data only).
        student_token_cache: in head-only stages, cache the frozen student encoder's trunk tokens on disk too (see
            `TeacherOutputCache.student_trunk_tokens` for their disk size; off unless the recipe turns it on).
        calibration: a data spec of images with a semantic map for `run.calibrate_background`, or null.
        evaluation: `evaluate_samclip_on_mosaic` options of the results table, or null (no table).
    """

    teachers: Teachers
    model: ModelSpec
    data: Data
    stages: list[Stage]
    name: str = "custom"
    about: Any = None
    prompts: Prompts = field(default_factory=Prompts)
    losses: LossWeights = field(default_factory=LossWeights)
    lora: LoraSpec = field(default_factory=LoraSpec)
    teacher_cache: bool = True
    student_token_cache: bool = False
    calibration: dict | None = None
    evaluation: dict | None = None

    def __post_init__(self):
        if not isinstance(self.name, str):
            _fail("name", f"must be a string, got {self.name!r}")
        self.teachers = _section(Teachers, self.teachers, "teachers")
        self.model = _section(ModelSpec, self.model, "model")
        self.data = _section(Data, self.data, "data")
        if not isinstance(self.stages, list | tuple) or not self.stages:
            _fail("stages", f"must be a non-empty list of stages, got {self.stages!r}")
        self.stages = [_section(Stage, stage, f"stages.{i}") for i, stage in enumerate(self.stages)]
        self.prompts = _section(Prompts, self.prompts, "prompts")
        self.losses = _section(LossWeights, self.losses, "losses")
        self.lora = _section(LoraSpec, self.lora, "lora")
        _boolean("teacher_cache", self.teacher_cache)
        _boolean("student_token_cache", self.student_token_cache)
        _data_spec(self.calibration, "calibration", optional=True)
        if self.evaluation is not None and not isinstance(self.evaluation, Mapping):
            _fail("evaluation", f"must be null or a JSON object of evaluation options, got {self.evaluation!r}")

    @classmethod
    def from_dict(cls, data: Mapping) -> "Recipe":
        """The recipe of a JSON object (as in `transformers_samclip/recipes/*.json`); it owns a copy of every
        entry, so the caller's dict may change afterwards."""
        return _section(cls, copy.deepcopy(data), "")

    def to_dict(self) -> dict:
        """The recipe as a JSON-able dict (`Recipe.from_dict(r.to_dict()) == r`)."""
        return dataclasses.asdict(self)

    @property
    def naive(self) -> bool:
        """Whether this is the naive baseline (no SAM rehearsal: `losses.sam_loss_weight == 0`)."""
        return self.losses.sam_loss_weight == 0

    @property
    def rehearses_sam(self) -> bool:
        """Whether some stage adds `lambda * L_SAM` with a non-zero lambda (then D_SAM's teacher outputs are used)."""
        return not self.naive and any(stage.rehearses_sam for stage in self.stages)

    @property
    def distills_regions(self) -> bool:
        """Whether `L_region` is on (`losses.region_weight > 0`): D_SAM batches then carry region masks and the
        teacher's views of their crops, in every stage."""
        return self.losses.region_weight > 0

    def needs_sam_batches(self, stage: Stage) -> bool:
        """Whether `stage` pairs each D_CLIP batch with a D_SAM batch: it computes `L_SAM` (stage 2, lambda > 0)
        or `L_region` (any stage, `region_weight > 0`; head-only stages then compute `L_region` alone)."""
        return needs_sam_batches(stage.stage, self.losses)

    def override(self, overrides: Mapping[str, Any]) -> "Recipe":
        """A new recipe with `overrides` applied in order: each key is a dotted path into the recipe (a list
        index is a number: `stages.1.encoder_lr_scale`; keys inside data specs, `training_args` and
        `evaluation` are free), each value replaces what is there. The result is validated again."""
        recipe = self
        # Re-parsed after each override: a later path may reach into an entry an earlier one replaced.
        for path, value in overrides.items():
            data = recipe.to_dict()
            _assign(recipe, data, path, value)
            recipe = Recipe.from_dict(data)
        return recipe


def _assign(recipe: Recipe, data: dict, path: str, value) -> None:
    # Walks the typed recipe beside its dict form, so that an unknown key is named with the keys valid there.
    parts = path.split(".")
    node, typed = data, recipe
    for depth, key in enumerate(parts):
        where = ".".join(parts[:depth]) or "the recipe"
        if dataclasses.is_dataclass(typed):
            if key not in _keys(type(typed)):
                raise ValueError(
                    f"unknown recipe key {path!r}{_did_you_mean(key, _keys(type(typed)))}: "
                    f"the keys of {where} are {_keys(type(typed))}"
                )
            child = getattr(typed, key)
        elif isinstance(typed, list):
            if not key.isdigit() or int(key) >= len(typed):
                raise ValueError(
                    f"recipe key {path!r}: {where} is a list of {len(typed)}; give an index 0..{len(typed) - 1}"
                )
            key = int(key)
            child = typed[key]
        elif isinstance(typed, Mapping):
            child = typed.get(key, {})
            if depth < len(parts) - 1:
                node.setdefault(key, {})
        else:
            raise ValueError(
                f"recipe key {path!r}: {where} is {json.dumps(typed)}, not an entry with keys; set {where} as a whole"
            )
        if depth == len(parts) - 1:
            node[key] = value
        else:
            node, typed = node[key], child


def parse_override(text: str) -> tuple[str, Any]:
    """`"PATH=VALUE"` (as `--set` takes it) as `(path, value)`: the value is parsed as JSON when it parses
    (`1`, `0.5`, `true`, `[224, 448]`, `null`, `{"r": 4}`), else kept as a string (`mean`)."""
    path, separator, raw = text.partition("=")
    if not separator or not path:
        raise ValueError(f"an override is PATH=VALUE (e.g. losses.sam_loss_weight=1), got {text!r}")
    try:
        return path.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return path.strip(), raw


def load_recipe(name_or_path) -> Recipe:
    """A recipe by name (`mosaic`, `samclip-vit-b16`: files in `transformers_samclip/recipes/`) or JSON path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.json"
    if not path.is_file():
        available = sorted(p.stem for p in RECIPES_DIR.glob("*.json"))
        raise FileNotFoundError(f"No recipe {str(name_or_path)!r}; give a JSON path or one of {available}.")
    text = path.read_text()
    if not text.strip():
        raise ValueError(
            f"recipe {path} is empty; a recipe is a JSON object, e.g. a copy of {RECIPES_DIR / 'mosaic.json'}."
        )
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"recipe {path} is not valid JSON ({error}); a recipe is a JSON object.") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"recipe {path} is an empty or non-object JSON value; a recipe is a JSON object.")
    data["name"] = path.stem
    try:
        return Recipe.from_dict(data)
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"recipe {path}: {error}") from None


def as_recipe(recipe) -> Recipe:
    """`recipe` as a `Recipe`: a `Recipe` as is, a dict parsed, a name or path loaded."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, Mapping):
        return Recipe.from_dict(recipe)
    return load_recipe(recipe)
