"""Run a distillation recipe end to end: teachers, merge, data, teacher cache, stages (each resumable; head-only
stages on the student token cache), saving, and (mosaic world) the evaluation table. `samclip distill` (cli.py) is
a thin command line over `run_recipe`."""

import copy
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import torch
from transformers import set_seed

from .._atomic import atomic_files, atomic_folder, write_text_atomic
from ..evaluation.results import DISTILLED_ROW
from .cache import TeacherOutputCache, fingerprint, fingerprint_model
from .config import SamClipDistillationConfig
from .data import (
    DistillationImageDataset,
    IterableDistillationImageDataset,
    PairedDataset,
    PairedIterableDataset,
    PairedStreamsDataset,
    SamClipDistillationCollator,
)
from .prompts import PromptSampler
from .recipe import Recipe, Teachers, as_recipe, computes_sam_loss, needs_sam_batches, stage_trains
from .trainer import SamClipDistillationTrainer

logger = logging.getLogger(__name__)
# LoRA on the shared encoder's attention and MLP projections; the two heads train in full (modules_to_save).
LORA_TARGETS = r".*vision_encoder\.layers\.\d+\.(attn\.(qkv|proj)|mlp\.lin[12])"


def load_teachers(spec: Teachers) -> dict:
    """`sam_model`, `sam_processor`, `clip_model`, `clip_processor` of a recipe's `teachers` entry."""
    if spec.source == "mosaic":
        from ..mosaic import load_mosaic_teachers

        return load_mosaic_teachers()
    from transformers import AutoModel, AutoProcessor, SamModel, SamProcessor

    return {
        "sam_model": SamModel.from_pretrained(spec.sam).eval(),
        "sam_processor": SamProcessor.from_pretrained(spec.sam),
        "clip_model": AutoModel.from_pretrained(spec.clip).eval(),
        "clip_processor": AutoProcessor.from_pretrained(spec.clip),
    }


def load_image_dataset(spec: dict):
    """A `datasets` dataset from a recipe `data` entry: `source` is `mosaic-items` (`make_item_views`' arguments;
    `style: "looks"` for every look the mosaic CLIP teacher trains on), `mosaic` (the mosaic world),
    `coco` (`annotation_file`, `image_dir`, and `load_coco_instances`' options), `sa1b` (`data_dir` of extracted
    files and `max_images`, or `data_files`: SA-1B's own tars, streamed), `webdataset` (`data_files`: tar shards,
    e.g. img2dataset's output, streamed; the image column is the first of jpg/jpeg/png/webp), or anything
    `datasets.load_dataset` takes (`imagefolder` with `data_dir`, a Hub id; `streaming: true`). `coco` and `sa1b`
    put the masks in the column `masks_column` (default `instance_masks`), which stage 2 then samples its prompts
    from. `num_samples` (the dataset's size) is read by the plan alone."""
    masks_column = spec.get("masks_column") or "instance_masks"
    spec = {k: v for k, v in spec.items() if k not in ("masks_column", "image_column", "clip_sizes", "num_samples")}
    source = spec.pop("source")
    if source == "coco":
        from .annotations import load_coco_instances

        return load_coco_instances(masks_column=masks_column, **spec)
    if source == "sa1b":
        from .annotations import load_sa1b, load_sa1b_tars

        if "data_files" in spec:
            return load_sa1b_tars(data_file_paths(spec.pop("data_files")), masks_column=masks_column, **spec)
        return load_sa1b(spec.pop("data_dir"), masks_column=masks_column, **spec)
    if source == "webdataset":
        return load_webdataset(data_file_paths(spec.pop("data_files", None)), **spec)
    if source == "mosaic-items":
        from ..mosaic import make_item_views

        return make_item_views(**spec)
    if source == "mosaic":
        from ..mosaic import make_mosaic_dataset

        min_visible = spec.pop("min_visible_fraction", 0.0)
        dataset = make_mosaic_dataset(**spec)
        # Heavily occluded slivers are ambiguous prompts (the teacher was neither trained nor measured on them).
        return dataset.map(
            lambda row: {
                "instance_masks": [
                    m for m, f in zip(row["instance_masks"], row["visible_fraction"]) if f >= min_visible
                ]
            },
            desc="dropping occluded slivers",
        )
    import datasets

    return datasets.load_dataset(source, **spec)


def data_file_paths(data_files) -> list[str]:
    """The tar files of a `data_files` entry (a glob or path, or a list of them), sorted within each glob."""
    import glob

    if not data_files:
        raise ValueError('data_files: give a glob or a list of tar paths, e.g. "data/shards/*.tar"')
    paths = []
    for pattern in [data_files] if isinstance(data_files, str) else data_files:
        matched = sorted(glob.glob(os.path.expanduser(str(pattern))))
        if not matched:
            raise FileNotFoundError(f"data_files: no file matches {str(pattern)!r}")
        paths.extend(matched)
    return paths


def load_webdataset(data_files: list[str], **options):
    """D_CLIP streamed from WebDataset tar shards through datasets' `webdataset` builder, its image column (the
    first of jpg, jpeg, png, webp) renamed `image`; `options` go to `datasets.load_dataset`."""
    import datasets

    dataset = datasets.load_dataset(
        "webdataset", data_files={"train": data_files}, split="train", streaming=True, **options
    )
    columns = [name for name in ("jpg", "jpeg", "png", "webp") if name in (dataset.features or {})]
    if not columns:
        raise ValueError(
            f"webdataset shards {data_files[0]!r}...: no jpg/jpeg/png/webp member in the first samples "
            f"(columns {list(dataset.features or {})})"
        )
    # Undecoded before the rename (a map): the dataset decodes inside its error handling, so a corrupt image is
    # skipped and counted instead of ending the stream.
    dataset = dataset.cast_column(columns[0], datasets.Image(decode=False))
    return dataset.rename_column(columns[0], "image") if columns[0] != "image" else dataset


def load_clip_images(spec: dict | list[dict]):
    """D_CLIP from one `data.clip` entry, or from a list of them (e.g. item views and scenes) concatenated into one
    `image` column in the listed order; returns `(dataset, spec)` with the spec to wrap it by."""
    if isinstance(spec, dict):
        return load_image_dataset(spec), spec
    import datasets

    parts = []
    for index, part in enumerate(spec):
        dataset = load_image_dataset(part)
        if isinstance(dataset, datasets.IterableDataset):
            raise ValueError(
                f"data.clip.{index}: a streaming source cannot be concatenated with others; "
                "stream one source, or drop `streaming`."
            )
        column = part.get("image_column", "image")
        dataset = dataset.select_columns([column]).cast_column(column, datasets.Image())
        parts.append(dataset.rename_column(column, "image") if column != "image" else dataset)
    return datasets.concatenate_datasets(parts), {"image_column": "image"}


def _wrap(dataset, spec: dict, masks: bool = False, state=None):
    """`dataset` as a `DistillationImageDataset`, or a streaming one as an `IterableDistillationImageDataset`
    split among the ranks of `state` (each reads its own tars when there are enough, else every n-th sample)."""
    import datasets

    image_column = spec.get("image_column", "image")
    masks_column = spec.get("masks_column") or ("instance_masks" if spec.get("source") in ("coco", "sa1b") else None)
    masks_column = masks_column if masks else None
    if isinstance(dataset, datasets.IterableDataset):
        sharded = state is not None and state.num_processes > 1
        if sharded:
            from datasets.distributed import split_dataset_by_node

            dataset = split_dataset_by_node(dataset, rank=state.process_index, world_size=state.num_processes)
        stream = IterableDistillationImageDataset(dataset, image_column, masks_column, sharded_by_node=sharded)
        if spec.get("source") in ("webdataset", "sa1b"):  # keyed samples: the teacher cache can hold them
            stream.fingerprint = fingerprint({k: v for k, v in spec.items() if k != "num_samples"})
        return stream
    return DistillationImageDataset(dataset, image_column, masks_column)


def last_complete_checkpoint(stage_dir: Path) -> str | None:
    """The newest checkpoint of a stage that the Trainer finished writing (its `trainer_state.json` comes last), so
    a checkpoint cut off by a kill is skipped rather than resumed from; None when there is none."""
    finished = [
        path
        for path in Path(stage_dir).glob("checkpoint-*")
        if path.name.split("-")[-1].isdigit() and (path / "trainer_state.json").is_file()
    ]
    return str(max(finished, key=lambda path: int(path.name.split("-")[-1]))) if finished else None


def sam_teacher_reads(configs: list[SamClipDistillationConfig], num_clip: int, num_processes: int) -> int:
    """D_SAM images whose SAM-teacher embeddings the stages of `configs` read (those that compute `L_SAM`), for a
    map-style D_CLIP of `num_clip` samples (`plan.stage_steps`' count)."""
    from .plan import stage_steps

    return sum(
        stage_steps(config, num_clip, num_processes, with_sam=True)["sam_images"]
        for config in configs
        if computes_sam_loss(config.stage, config.losses)
    )


def _reads_every_sam_image(configs: list[SamClipDistillationConfig], clip_data, sam_data) -> bool:
    """Whether the stages read at least as many D_SAM images as it holds (always, for a stream: its length is
    unknown); says so on the main process when they read fewer."""
    if not (hasattr(clip_data, "__len__") and hasattr(sam_data, "__len__")):
        return True
    state = configs[0].distributed_state
    reads = sam_teacher_reads(configs, len(clip_data), state.num_processes)
    if reads < len(sam_data):
        state.print(f"SAM teacher run per step: the stages read {reads} of D_SAM's {len(sam_data)} images")
    return reads >= len(sam_data)


def _load_data(recipe: Recipe, configs: list[SamClipDistillationConfig], teachers: dict, sam_processor):
    """D_CLIP and D_SAM wrapped for the collator, with the teachers' cached outputs attached
    (`teacher_cache`; map-style data, or keyed webdataset / SA-1B streams), each rank computing its own
    samples' outputs; returns `(clip_data, sam_data, cache)`, `cache` None when uncached. The SAM teacher's
    outputs are cached only when the run reads D_SAM's samples at least once on average: caching a sample costs
    the teacher pass that reading it uncached costs, so a run that reads fewer (the mosaic recipe's stage 2: 752
    of 4,000) computes them per step."""
    config = configs[0]
    state = config.distributed_state
    with config.main_process_first(desc="datasets"):
        clip_data = _wrap(*load_clip_images(recipe.data.clip), state=state)
        sam_data = _wrap(load_image_dataset(recipe.data.sam), recipe.data.sam, masks=True, state=state)
    cache = None
    if config.teacher_cache and clip_data.fingerprint is not None:
        cache = TeacherOutputCache(
            config.teacher_cache_dir,
            rank=state.process_index,
            num_ranks=state.num_processes,
            barrier=state.wait_for_everyone,
        )
        clip_data.cached["clip_teacher_embeds"] = cache.clip_image_embeddings(
            teachers["clip_model"], teachers["clip_processor"].image_processor, clip_data
        )
        if (
            recipe.rehearses_sam
            and sam_data.fingerprint is not None
            and _reads_every_sam_image(configs, clip_data, sam_data)
        ):
            sam_data.cached["sam_teacher_embeddings"] = cache.sam_image_embeddings(
                teachers["sam_model"], sam_processor.image_processor, sam_data
            )
    return clip_data, sam_data, cache


def _with_cached(dataset, name: str, values):
    # A copy for one stage: the datasets are shared by the stages, and the tokens hold for this stage's encoder only.
    dataset = copy.copy(dataset)
    dataset.cached = {**dataset.cached, name: values}
    return dataset


def student_token_cache_off(config: SamClipDistillationConfig, clip_data) -> str | None:
    """Why `config`'s stage runs without the student token cache, or None when it caches: the switch is off, the
    stage trains the encoder, `clip_sizes` draws the CLIP view's size per batch (the tokens are cached at the
    model's one `clip_size`, not per size), FSDP is on (the cache is computed by whole students before the trainer
    shards them; untested with the encoder left out of FSDP's forward), or D_CLIP has no fingerprint to key it."""
    if not config.student_token_cache:
        return "student_token_cache is false"
    if "vision_encoder." in stage_trains(config.stage):
        return "the stage trains the encoder"
    if config.clip_sizes:
        return f"clip_sizes {config.clip_sizes} draws the CLIP view's size per batch"
    if config.fsdp or os.environ.get("ACCELERATE_USE_FSDP") == "true":
        return "FSDP is on"
    if clip_data.fingerprint is None:
        return "D_CLIP has no fingerprint (an unkeyed stream)"
    return None


def _student_tokens(config: SamClipDistillationConfig, student, processor, clip_data, sam_data, with_sam: bool):
    """`(clip_data, sam_data)` of one stage, carrying the frozen student encoder's trunk tokens of the CLIP view and
    (when the stage reads D_SAM, for `L_region`) of the SAM view, computed once per stage by each rank for its own
    samples; as given when `student_token_cache_off` says why not."""
    state = config.distributed_state
    reason = student_token_cache_off(config, clip_data)
    state.print(f"{config.stage}: student token cache " + (f"off ({reason})" if reason else "on"))
    if reason is not None:
        return clip_data, sam_data
    cache = TeacherOutputCache(
        config.teacher_cache_dir,
        rank=state.process_index,
        num_ranks=state.num_processes,
        barrier=state.wait_for_everyone,
    )
    encoder = student.vision_encoder
    clip_data = _with_cached(
        clip_data,
        "clip_trunk_tokens",
        cache.student_trunk_tokens(encoder, processor.clip_image_processor, clip_data, "clip"),
    )
    if with_sam and sam_data.fingerprint is not None:
        sam_data = _with_cached(
            sam_data,
            "sam_trunk_tokens",
            cache.student_trunk_tokens(encoder, processor.image_processor, sam_data, "sam"),
        )
    return clip_data, sam_data


def _train_stage(
    recipe: Recipe,
    config: SamClipDistillationConfig,
    student,
    processor,
    teachers: dict,
    clip_data,
    sam_data,
    cached: bool,
    checkpoint: str | None = None,
):
    """Train one stage from `checkpoint` (or from the start); returns `(student, trainer)` with the LoRA adapters,
    if any, merged into the student."""
    # LoRA adapters sit on the shared encoder, which only a stage that trains it has.
    use_lora = recipe.lora.enabled and "vision_encoder." in stage_trains(config.stage)
    trained = student
    if use_lora:
        from peft import LoraConfig, get_peft_model

        trained = get_peft_model(
            student,
            LoraConfig(
                target_modules=LORA_TARGETS,
                modules_to_save=["clip_head", "mask_decoder"],
                **recipe.lora.peft_options(),
            ),
        )
    # L_SAM (stage 2, lambda > 0) and L_region (any stage) read D_SAM; head-only stages then get L_region alone.
    with_sam = needs_sam_batches(config.stage, config.losses)
    clip_data, sam_data = _student_tokens(config, student, processor, clip_data, sam_data, with_sam)
    teacher_processor = teachers["clip_processor"].image_processor
    collator = SamClipDistillationCollator(
        processor,
        None if cached else teacher_processor,
        sam_dataset=sam_data if with_sam else None,
        sam_batch_size=config.sam_batch_size,
        prompt_sampler=PromptSampler(seed=config.seed, **dataclasses.asdict(recipe.prompts)),
        clip_sizes=config.clip_sizes,
        seed=config.seed,
        region_teacher_image_processor=teacher_processor if config.region_weight > 0 else None,
        patch_size=student.config.patch_size,
        region_target=config.region_target,
        background_region=config.region_background,
    )
    train_dataset = clip_data
    if with_sam and isinstance(sam_data, IterableDistillationImageDataset):
        if not isinstance(clip_data, IterableDistillationImageDataset):
            raise ValueError(
                "data.sam streams but data.clip does not: stream both (a webdataset source, or "
                "streaming: true), or give D_SAM as files (sa1b data_dir, coco, imagefolder)."
            )
        train_dataset = PairedStreamsDataset(
            clip_data, sam_data, config.per_device_train_batch_size, config.sam_batch_size
        )
    elif with_sam:
        paired = PairedIterableDataset if isinstance(clip_data, torch.utils.data.IterableDataset) else PairedDataset
        train_dataset = paired(clip_data, len(sam_data))
    trainer = SamClipDistillationTrainer(
        trained,
        clip_teacher=teachers["clip_model"],
        sam_teacher=teachers["sam_model"],
        args=config,
        train_dataset=train_dataset,
        data_collator=collator,
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    return (trained.merge_and_unload() if use_lora else student), trainer


def run_recipe(
    recipe: Recipe | dict,
    output_dir,
    *,
    seed: int = 0,
    max_steps: int | None = None,
    cache_dir=None,
    evaluate: bool = True,
    teachers: dict | None = None,
) -> dict:
    """Run every stage of `recipe` (a `Recipe`, or a dict, name or path it is parsed from; ablations are
    `Recipe.override`s) into `output_dir` and return the results dict (also written to `output_dir/results.json`
    on the main process). Each stage runs from its `SamClipDistillationConfig` (`from_recipe`). Re-running with the
    same `output_dir` resumes: finished stages are loaded, an interrupted one continues from its last checkpoint."""
    from .. import SamClipModel, SamClipProcessor

    began = time.perf_counter()
    recipe = as_recipe(recipe)
    output_dir = Path(output_dir)
    set_seed(seed)
    configs = [
        SamClipDistillationConfig.from_recipe(
            recipe, index, output_dir, seed=seed, max_steps=max_steps, cache_dir=cache_dir
        )
        for index in range(len(recipe.stages))
    ]
    state = configs[0].distributed_state  # set up by TrainingArguments (accelerate launch or a single process)
    teachers = teachers or load_teachers(recipe.teachers)
    head = dataclasses.asdict(recipe.model.head)
    student = SamClipModel.from_teachers(
        teachers["sam_model"], teachers["clip_model"], image_size=recipe.model.clip_size, **head
    )
    processor = SamClipProcessor.from_sizes(
        teachers["clip_processor"].tokenizer, sam_size=recipe.model.sam_size, clip_size=recipe.model.clip_size
    )
    untrained_state = {k: v.clone() for k, v in student.state_dict().items()} if evaluate else None
    clip_data, sam_data, cache = _load_data(recipe, configs, teachers, processor)

    trainer = None
    for index, config in enumerate(configs):
        final_dir = Path(config.output_dir) / "final"
        if (final_dir / "model.safetensors").is_file():
            state.print(f"stage {index + 1} ({config.stage}) already finished: loading {final_dir}")
            student = SamClipModel.from_pretrained(final_dir).eval()
            continue
        checkpoint = last_complete_checkpoint(config.output_dir)
        state.print(
            f"stage {index + 1}/{len(configs)}: {config.stage} -> {config.output_dir}"
            + (f" (resuming from {Path(checkpoint).name})" if checkpoint else "")
        )
        student, trainer = _train_stage(
            recipe,
            config,
            student,
            processor,
            teachers,
            clip_data,
            sam_data,
            cached=cache is not None,
            checkpoint=checkpoint,
        )
        gathered = trainer.student_state_dict()  # FSDP: every rank takes part; else None (the student is whole)
        if state.is_main_process:
            with atomic_folder(final_dir) as folder:  # a half-saved final/ would pass for a finished stage
                student.save_pretrained(folder, state_dict=gathered)
                processor.save_pretrained(folder)  # a stage's model is a whole folder: from_pretrained, evaluate
                (folder / "skipped_samples.json").write_text(json.dumps({"skipped_samples": trainer.skipped_samples}))
        state.wait_for_everyone()
        if gathered is not None:  # a sharded student goes on (next stage, saving, evaluation) whole
            student = SamClipModel.from_pretrained(final_dir)

    results = {
        "recipe": recipe.name,
        "seed": seed,
        "naive": recipe.naive,
        "lora": recipe.lora.enabled,
        "head": head,
        "losses": dataclasses.asdict(recipe.losses),
        "max_steps": max_steps,
        "num_processes": state.num_processes,
        "threads": torch.get_num_threads(),
        "effective_recipe": recipe.to_dict(),
    }
    if state.is_main_process:
        _finish(
            recipe,
            results,
            student,
            processor,
            teachers,
            untrained_state if evaluate else None,
            output_dir,
            cache_dir,
            began,
        )
    state.wait_for_everyone()
    if trainer is not None:
        trainer.accelerator.end_training()
    return results


def _finish(
    recipe: Recipe,
    results: dict,
    student,
    processor,
    teachers: dict,
    untrained_state,
    output_dir: Path,
    cache_dir,
    began: float,
) -> None:
    """Main process, after the stages: calibrate the background threshold, save the model and processor, evaluate
    (when `untrained_state` is given and the recipe has an evaluation) and write `results.json`."""
    from .. import SamClipModel

    if recipe.calibration is not None:
        student.config.background_threshold = calibrate_background(student, processor, recipe.calibration)
        results["background_threshold"] = student.config.background_threshold
        print(
            f"background threshold {student.config.background_threshold:.4f} (calibrated on "
            f"{recipe.calibration.get('num_mosaics', '?')} training images, stored in config.json)"
        )
    with atomic_files(output_dir) as folder:  # config.json lands last: a loader never sees half the files
        student.save_pretrained(folder)
        processor.save_pretrained(folder)
    results["train_wall_seconds"] = round(time.perf_counter() - began, 1)
    if untrained_state is not None and recipe.evaluation is not None:
        untrained = SamClipModel.from_teachers(
            teachers["sam_model"],
            teachers["clip_model"],
            image_size=recipe.model.clip_size,
            **dataclasses.asdict(recipe.model.head),
        )
        untrained.load_state_dict(untrained_state)
        results["rows"] = evaluate_rows(
            student, untrained, processor, teachers, recipe.evaluation, cache_dir or output_dir / "teacher-cache"
        )
    results["wall_seconds"] = round(time.perf_counter() - began, 1)
    write_text_atomic(output_dir / "results.json", json.dumps(results, indent=2))


def calibrate_background(model, processor, spec: dict) -> float:
    """The background cosine threshold that maximises plain semantic mIoU on the recipe's `calibration` images
    (a `data` entry with a semantic-map column, e.g. training mosaics; `class_names` defaults to Fashion-MNIST's for
    the mosaic world), read at the processor's default dense view as the pipeline reads it."""
    from ..evaluation.classification import class_text_embeddings
    from ..evaluation.semantic import calibrate_background_threshold, samclip_cosine_maps

    spec = dict(spec)
    class_names = spec.pop("class_names", None)
    columns = {k: spec.pop(k) for k in ("image_column", "semantic_column") if k in spec}
    if class_names is None:
        if spec.get("source") != "mosaic":
            raise ValueError("recipe calibration: give class_names for a source other than the mosaic world.")
        from ..mosaic import FASHION_MNIST_CLASSES as class_names
    dataset = load_image_dataset(spec)
    class_embeds = class_text_embeddings(model, processor.tokenizer, class_names)
    model.eval()
    return calibrate_background_threshold(
        samclip_cosine_maps(model, processor, class_embeds, processor.dense_size), dataset, class_names, **columns
    )


def evaluate_rows(model, untrained, processor, teachers: dict, spec: dict, cache_dir) -> dict:
    """Mosaic-world rows: teachers and baselines (cached in `cache_dir`: they depend only on the teachers and the
    evaluation sizes), the untrained merge and the distilled model."""
    from ..mosaic.evaluation import evaluate_samclip_on_mosaic, evaluate_teachers_on_mosaic

    key = fingerprint(
        fingerprint_model(teachers["sam_model"]),
        fingerprint_model(teachers["clip_model"]),
        spec,
        fingerprint_model(untrained),
        processor.to_dict() if hasattr(processor, "to_dict") else None,
    )
    cached = Path(cache_dir) / f"eval-{key}.json"
    if cached.is_file():
        rows = json.loads(cached.read_text())
    else:
        rows = evaluate_teachers_on_mosaic(teachers, **spec)
        rows["untrained merge"] = evaluate_samclip_on_mosaic(untrained.eval(), processor, **spec)
        write_text_atomic(cached, json.dumps(rows))
    rows[DISTILLED_ROW] = evaluate_samclip_on_mosaic(model.eval(), processor, **spec)
    return rows
