"""SAM-CLIP distillation: losses, prompts, data, teacher cache and the trainer's stages on tiny random teachers."""

import io
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, TrainingArguments

from transformers_samclip import SamClipMaskGenerator, SamClipModel
from transformers_samclip.distillation import (
    DistillationImageDataset,
    IterableDistillationImageDataset,
    LossWeights,
    PairedDataset,
    PromptSampler,
    SamClipDistillationCollator,
    SamClipDistillationModule,
    SamClipDistillationTrainer,
    TeacherOutputCache,
    clip_distillation_loss,
    dice_loss,
    encode_rle,
    region_frame_mask,
    relational_distillation_loss,
    sam_distillation_loss,
    sigmoid_focal_loss,
)
from transformers_samclip.distillation.prompts import POINT_PAD_LABEL
from transformers_samclip.evaluation.geometry import masked_crop, square_crop

LN2 = math.log(2)


# ------------------------------------------------------------------------------------------------ fixtures
def _images_and_masks(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for i in range(count):
        array = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
        mask = np.zeros((48, 64), dtype=bool)
        y, x = rng.integers(0, 24), rng.integers(0, 36)
        mask[y : y + 16 + i % 8, x : x + 20] = True
        array[mask] = [230, 40, 40]
        images.append(Image.fromarray(array))
        masks.append([Image.fromarray(mask)])
    return images, masks


@pytest.fixture(scope="module")
def image_dataset():
    images, masks = _images_and_masks(24)
    features = datasets.Features({"image": datasets.Image(), "masks": datasets.List(datasets.Image())})
    return datasets.Dataset.from_dict({"image": images, "masks": masks}, features=features)


@pytest.fixture(scope="module")
def teacher_processor():
    return CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def _trainer(tmp_path, student, teachers, processor, teacher_processor, image_dataset, stage, steps=1, **kwargs):
    sam, clip = teachers
    clip_data = DistillationImageDataset(image_dataset)
    sam_data = DistillationImageDataset(image_dataset, masks_column="masks")
    regions = kwargs.pop("regions", False)  # region distillation: SAM batches carry regions, in every stage
    collator = SamClipDistillationCollator(
        processor,
        teacher_processor,
        sam_dataset=sam_data,
        sam_batch_size=2,
        clip_sizes=kwargs.pop("clip_sizes", None),
        region_teacher_image_processor=teacher_processor if regions else None,
        patch_size=8,
    )
    train = PairedDataset(clip_data, len(sam_data)) if stage == "distillation" or regions else clip_data
    values = dict(
        use_cpu=True,
        remove_unused_columns=False,
        report_to=[],
        max_steps=steps,
        learning_rate=1e-3,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
    )
    values.update(kwargs.pop("args", {}))
    args = TrainingArguments(str(tmp_path), **values)
    return SamClipDistillationTrainer(
        student,
        stage=stage,
        clip_teacher=clip,
        sam_teacher=sam,
        args=args,
        train_dataset=train,
        data_collator=collator,
        **kwargs,
    )


def _snapshot(module):
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _changed(before, module):
    return {name for name, value in module.state_dict().items() if not torch.equal(before[name], value)}


# --------------------------------------------------------------------------------------------------- losses
def test_clip_distillation_loss_is_one_minus_cosine():
    student = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    teacher = torch.tensor([[0.0, 3.0], [1.0, 1.0]])
    expected = ((1 - 0.0) + (1 - 1 / math.sqrt(2))) / 2
    assert clip_distillation_loss(student, teacher).item() == pytest.approx(expected, abs=1e-6)


def test_relational_loss_matches_the_teachers_ranking_not_its_scale():
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # A student that points where its teacher points ranks the teacher embeddings alike: nothing to learn.
    assert relational_distillation_loss(3.0 * teacher, teacher, 0.1).item() == pytest.approx(0.0, abs=1e-6)
    cos = torch.nn.functional.normalize(teacher, dim=-1) @ torch.nn.functional.normalize(teacher, dim=-1).T
    target = (cos / 0.5).softmax(-1)
    swapped = teacher[[1, 0, 2]]  # rows 0 and 1 point at each other's teacher
    predicted = torch.nn.functional.normalize(swapped, dim=-1) @ torch.nn.functional.normalize(teacher, dim=-1).T / 0.5
    expected = (target * (target.log() - predicted.log_softmax(-1))).sum(-1).mean()
    assert relational_distillation_loss(swapped, teacher, 0.5).item() == pytest.approx(expected.item(), abs=1e-6)
    assert expected > 0.1
    # Only the student learns from it.
    student = swapped.clone().requires_grad_(True)
    frozen = teacher.clone().requires_grad_(True)
    relational_distillation_loss(student, frozen, 0.5).backward()
    assert student.grad.abs().sum() > 0 and frozen.grad is None


def test_relational_bank_adds_earlier_teacher_embeddings_to_the_ranking():
    torch.manual_seed(0)
    teacher, bank = torch.randn(4, 8), torch.randn(6, 8)
    student = teacher + 0.5 * torch.randn(4, 8)
    normalise = torch.nn.functional.normalize
    anchors = normalise(torch.cat([teacher, bank]), dim=-1)
    target = (normalise(teacher, dim=-1) @ anchors.T / 0.2).softmax(-1)
    predicted = (normalise(student, dim=-1) @ anchors.T / 0.2).log_softmax(-1)
    expected = (target * (target.log() - predicted)).sum(-1).mean()
    with_bank = relational_distillation_loss(student, teacher, 0.2, bank=3.0 * bank)  # its scale does not matter
    assert with_bank.item() == pytest.approx(expected.item(), abs=1e-6)
    assert abs(with_bank.item() - relational_distillation_loss(student, teacher, 0.2).item()) > 1e-3
    # An empty bank is the step alone; a student on its teacher still has nothing to learn.
    assert relational_distillation_loss(student, teacher, 0.2, bank=torch.zeros(0, 8)).item() == pytest.approx(
        relational_distillation_loss(student, teacher, 0.2).item(), abs=1e-7
    )
    assert relational_distillation_loss(2 * teacher, teacher, 0.2, bank=bank).item() == pytest.approx(0.0, abs=1e-6)


def test_focal_and_dice_match_hand_computed_values():
    zero = torch.zeros(1, 1)
    # p = 0.5, target 1: ce = ln 2, (1 - p_t)^2 = 1/4, alpha_t = 0.25.
    assert sigmoid_focal_loss(zero, torch.ones(1, 1)).item() == pytest.approx(0.25 * 0.25 * LN2, abs=1e-6)
    # soft target 0.5: p_t = 0.5, alpha_t = 0.5.
    assert sigmoid_focal_loss(zero, torch.full((1, 1), 0.5)).item() == pytest.approx(0.5 * 0.25 * LN2, abs=1e-6)
    # p = 0.5 everywhere, targets [1, 1, 0, 0]: dice = (2 * 1 + 1) / (2 + 2 + 1) = 0.6.
    assert dice_loss(torch.zeros(2, 2), torch.tensor([[1.0, 1.0], [0.0, 0.0]])).item() == pytest.approx(0.4, abs=1e-6)


def test_sam_distillation_loss_weights_and_soft_targets():
    student = torch.zeros(1, 1, 3, 2, 2)
    teacher = torch.zeros(1, 1, 3, 2, 2)  # soft targets 0.5 everywhere
    student_iou, teacher_iou = torch.full((1, 1, 3), 0.5), torch.full((1, 1, 3), 0.7)
    terms = sam_distillation_loss(student, teacher, student_iou, teacher_iou, LossWeights(iou_weight=1.0))
    focal, dice = 0.5 * 0.25 * LN2, 1 - 3 / 5  # dice: (2 * 4 * 0.25 + 1) / (2 + 2 + 1)
    assert terms["focal"].item() == pytest.approx(focal, abs=1e-6)
    assert terms["dice"].item() == pytest.approx(dice, abs=1e-6)
    assert terms["iou"].item() == pytest.approx(0.04, abs=1e-6)
    assert terms["loss"].item() == pytest.approx(20 * focal + dice + 0.04, abs=1e-5)
    without_iou = sam_distillation_loss(student, teacher, student_iou, teacher_iou, LossWeights(iou_weight=0.0))
    assert without_iou["loss"].item() == pytest.approx(20 * focal + dice, abs=1e-5)
    default = sam_distillation_loss(student, teacher, student_iou, teacher_iou)  # LossWeights(): one default
    assert default["loss"].item() == pytest.approx(terms["loss"].item(), abs=1e-6)


# -------------------------------------------------------------------------------------------------- prompts
def test_prompt_sampler_is_deterministic_and_prompts_lie_inside_masks():
    rng = np.random.default_rng(1)
    masks = []
    for _ in range(3):
        mask = np.zeros((40, 50), dtype=bool)
        y, x = rng.integers(0, 20, size=2)
        mask[y : y + 15, x : x + 12] = True
        masks.append(mask)
    sampler = PromptSampler(num_boxes=4, num_point_prompts=5, max_points=3, box_jitter=0.0, seed=7)
    first, again = sampler(masks, 40, 50, index=3), sampler(masks, 40, 50, index=3)
    for name in ("boxes", "points", "labels"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.points, sampler(masks, 40, 50, index=4).points)
    tight = {
        tuple(
            float(v)
            for v in (
                np.flatnonzero(m.any(0))[0],
                np.flatnonzero(m.any(1))[0],
                np.flatnonzero(m.any(0))[-1],
                np.flatnonzero(m.any(1))[-1],
            )
        )
        for m in masks
    }
    assert {tuple(box.tolist()) for box in first.boxes} <= tight  # no jitter: exactly a mask's tight box
    union = np.logical_or.reduce(masks)
    for points, labels in zip(first.points, first.labels):
        real = labels == 1
        assert 1 <= real.sum() <= 3 and (labels[~real] == POINT_PAD_LABEL).all()
        owners = [m for m in masks if all(m[int(y), int(x)] for x, y in points[real])]
        assert owners, "all points of one prompt come from one mask"
        assert all(union[int(y), int(x)] for x, y in points[real])


def test_prompt_sampler_without_masks_uses_the_grid():
    sampler = PromptSampler(num_boxes=2, num_point_prompts=3, grid_size=4)
    prompts = sampler([], 32, 48, index=0)
    assert prompts.boxes.shape == (2, 4) and prompts.points.shape == (3, 3, 2)
    cells = {(x, y) for x in (np.arange(4) + 0.5) * 12 for y in (np.arange(4) + 0.5) * 8}
    assert all((float(x), float(y)) in cells for x, y in prompts.points[:, 0])
    assert (prompts.boxes[:, 2] <= 47).all() and (prompts.boxes[:, 3] <= 31).all()


# ----------------------------------------------------------------------------------------------------- data
def test_collator_builds_both_batches_with_prompts_in_the_sam_frame(processor, teacher_processor, image_dataset):
    clip_data = DistillationImageDataset(image_dataset)
    sam_data = DistillationImageDataset(image_dataset, masks_column="masks")
    collator = SamClipDistillationCollator(
        processor,
        teacher_processor,
        sam_dataset=sam_data,
        sam_batch_size=2,
        prompt_sampler=PromptSampler(box_jitter=0.0),
        clip_sizes=[32, 64],
    )
    batch = collator([PairedDataset(clip_data, len(sam_data))[i] for i in range(5)])
    assert batch["clip_pixel_values"].shape[0] == 5 and batch["clip_pixel_values"].shape[-1] in (32, 64)
    assert batch["clip_teacher_pixel_values"].shape == (5, 3, 32, 32)
    assert batch["sam_pixel_values"].shape == (2, 3, 64, 64)
    assert batch["input_boxes"].shape == (2, 2, 4) and batch["input_points"].shape == (2, 2, 3, 2)
    # 48x64 images are resized by 64/64 = 1: boxes stay the tight mask boxes (x1 <= 63, y1 <= 47).
    mask = np.asarray(image_dataset[0]["masks"][0])
    box = [
        np.flatnonzero(mask.any(0))[0],
        np.flatnonzero(mask.any(1))[0],
        np.flatnonzero(mask.any(0))[-1],
        np.flatnonzero(mask.any(1))[-1],
    ]
    assert batch["input_boxes"][0, 0].tolist() == pytest.approx([float(v) for v in box])
    assert int(batch["num_skipped"]) == 0


def test_corrupt_samples_are_skipped_and_counted(tmp_path, merged, teachers, processor, teacher_processor):
    images, _ = _images_and_masks(6)
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append({"bytes": buffer.getvalue(), "path": None})
    encoded[2] = {"bytes": b"not an image at all", "path": None}
    dataset = datasets.Dataset.from_dict({"image": encoded}, features=datasets.Features({"image": datasets.Image()}))
    data = DistillationImageDataset(dataset)
    item = data[2]
    assert item["index"] == 3 and item["skipped"] == 1
    trainer = _trainer(
        tmp_path,
        merged,
        teachers,
        processor,
        teacher_processor,
        dataset,
        "head_probing",
        steps=2,
        args={"per_device_train_batch_size": 3},
    )
    trainer.train()
    assert trainer.skipped_samples == 1
    assert trainer.state.log_history[-2]["skipped_samples"] == 1


def test_streaming_imagefolder_feeds_the_collator(tmp_path, processor, teacher_processor):
    images, _ = _images_and_masks(3)
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i + 1}.png")
    (tmp_path / "1b.png").write_bytes(b"\x89PNG broken")  # between readable files: counted on the next one
    stream = datasets.load_dataset("imagefolder", data_dir=str(tmp_path), split="train", streaming=True)
    items = list(IterableDistillationImageDataset(stream))
    assert len(items) == 3 and sum(item["skipped"] for item in items) == 1
    batch = SamClipDistillationCollator(processor, teacher_processor)(items)
    assert batch["clip_pixel_values"].shape == (3, 3, 32, 32) and int(batch["num_skipped"]) == 1


# -------------------------------------------------------------------------------------------------- regions
REGION_KEYS = {"region_masks", "region_valid", "region_teacher_pixel_values"}


def test_region_masks_land_on_the_low_res_frame_where_the_image_does(merged, processor, teacher_processor):
    patch = merged.config.patch_size  # 8: the 64 px SAM view is an 8 x 8 token grid, a 32 x 32 mask frame
    # A 40 x 80 image is resized by 0.8 to 32 x 64 and padded at the bottom to 64 x 64; a frame pixel is 2 x 2 px.
    aligned = np.zeros((40, 80), dtype=bool)
    aligned[10:20, 20:40] = True  # -> rows 8..16, cols 16..32: frame rows 4..8, cols 8..16, whole
    partial = np.zeros((40, 80), dtype=bool)
    partial[3:7, 5:13] = True  # -> rows 2.4..5.6 (0.8 of frame rows 1, 2), cols 4..10.4 (cols 2-4 whole, 0.2 of 5)
    speck = np.zeros((40, 80), dtype=bool)
    speck[39, 79] = True  # -> 0.16 of frame pixel (15, 31): below half of any pixel, so it keeps its best one
    expected_aligned, expected_partial, expected_speck = (torch.zeros(32, 32, dtype=torch.bool) for _ in range(3))
    expected_aligned[4:8, 8:16] = True
    expected_partial[1:3, 2:5] = True
    expected_speck[15, 31] = True
    array = np.zeros((40, 80, 3), dtype=np.uint8)
    array[aligned] = 255
    image = Image.fromarray(array)
    features = datasets.Features({"image": datasets.Image(), "masks": datasets.List(datasets.Image())})
    masks = [Image.fromarray(aligned), Image.fromarray(partial), Image.fromarray(speck)]
    dataset = datasets.Dataset.from_dict({"image": [image], "masks": [masks]}, features=features)

    def collate(**options):
        collator = SamClipDistillationCollator(
            processor,
            teacher_processor,
            sam_dataset=DistillationImageDataset(dataset, masks_column="masks"),
            prompt_sampler=PromptSampler(num_regions=4, min_mask_area=1),
            region_teacher_image_processor=teacher_processor,
            patch_size=patch,
            **options,
        )
        return collator([PairedDataset(DistillationImageDataset(dataset), 1)[0]])

    batch = collate()
    assert batch["region_masks"].dtype == torch.bool and batch["region_masks"].shape == (1, 4, 32, 32)
    assert batch["region_valid"].tolist() == [[True, True, True, False]]
    assert not batch["region_masks"][0, 3].any()  # only three masks: the fourth row stays empty
    rows = batch["region_masks"][0, :3].sum((-2, -1)).argsort()  # the speck, the partial mask, the aligned one
    for row, expected in zip(rows, (expected_speck, expected_partial, expected_aligned)):
        assert torch.equal(batch["region_masks"][0, row], expected)
    # The image went the same way: its white pixels, averaged per frame pixel of the SAM view, are the aligned mask.
    white = (batch["sam_pixel_values"][0, 0] > 0).float()
    assert torch.equal(torch.nn.functional.avg_pool2d(white[None], 2)[0] > 0.5, expected_aligned)
    # The teacher sees each valid region's square crop of the original image, in region_masks[region_valid] order.
    source = dict(zip(rows.tolist(), (speck, partial, aligned)))
    crops = [square_crop(image, source[row]) for row in range(3)]
    torch.testing.assert_close(
        batch["region_teacher_pixel_values"], teacher_processor(crops, return_tensors="pt")["pixel_values"]
    )
    # Masked crops grey what is outside the mask; the background region (no mask covers it) comes last.
    batch = collate(region_target="masked_crop", background_region=True)
    assert batch["region_valid"].tolist() == [[True, True, True, True, False]]
    background = ~(aligned | partial | speck)
    assert torch.equal(
        batch["region_masks"][0, 3], torch.from_numpy(region_frame_mask(background, (32, 64), (64, 64), (32, 32)))
    )
    assert batch["region_masks"][0, 3, 16:].sum() == 0 and batch["region_masks"][0, 3, 4:8, 8:16].sum() == 0
    views = [masked_crop(image, source[row]) for row in range(3)] + [masked_crop(image, background)]
    torch.testing.assert_close(
        batch["region_teacher_pixel_values"], teacher_processor(views, return_tensors="pt")["pixel_values"]
    )
    with pytest.raises(ValueError, match="region_target"):
        SamClipDistillationCollator(processor, region_target="box")


def test_regions_are_deterministic_distinct_and_decode_rle_as_arrays():
    masks = [np.zeros((30, 40), dtype=bool) for _ in range(6)]
    for i, mask in enumerate(masks):
        mask[i * 4 : i * 4 + 3 + i, 2 : 10 + 3 * i] = True
    masks[5][:] = False  # empty: never a region
    sampler = PromptSampler(num_regions=4, min_mask_area=1, seed=3)
    regions = sampler.regions(masks, index=2)
    assert len(regions) == 4 and len({m.tobytes() for m in regions}) == 4 and all(m.any() for m in regions)
    as_rle = sampler.regions([encode_rle(m) for m in masks], index=2)
    assert all(np.array_equal(a, b) for a, b in zip(regions, as_rle))
    assert [m.tobytes() for m in sampler.regions(masks, index=2)] == [m.tobytes() for m in regions]
    assert len(PromptSampler(num_regions=9, min_mask_area=1).regions(masks, 0)) == 5
    assert PromptSampler(min_mask_area=10_000).regions(masks, 0) == [] and sampler.regions(None, 0) == []


class _FixedTeacher(torch.nn.Module):
    """A CLIP teacher stand-in whose image embeddings are given."""

    def __init__(self, embeds):
        super().__init__()
        self.register_buffer("embeds", embeds)

    def get_image_features(self, pixel_values):
        """The given embeddings, whatever the pixels."""
        return self.embeds


def test_region_loss_is_zero_at_the_teachers_embedding_and_positive_elsewhere(merged):
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 64, 64)
    region_masks = torch.rand(2, 2, 32, 32) > 0.7  # on the 32 x 32 mask frame, 4 x 4 frame pixels per token
    region_valid = torch.tensor([[True, False], [True, True]])
    with torch.no_grad():
        tokens = merged.clip_head.dense_tokens(merged.vision_encoder(pixels, compute_neck=False).trunk_hidden_state)
    # The student's region features, by hand: the head tokens averaged with each token's share of the mask as
    # weight, then projected.
    pooled = []
    for b, r in region_valid.nonzero().tolist():
        share = region_masks[b, r].float().unflatten(0, (8, 4)).unflatten(2, (8, 4)).mean((1, 3))  # (8, 8)
        with torch.no_grad():
            pooled.append(merged.clip_head.projector((tokens[b] * share[..., None]).sum((0, 1)) / share.sum()))
    pooled = torch.stack(pooled)
    inputs = dict(
        sam_pixel_values=pixels,
        region_masks=region_masks,
        region_valid=region_valid,
        region_teacher_pixel_values=torch.zeros(3, 3, 32, 32),
    )

    def terms(teacher_embeds):
        module = SamClipDistillationModule(
            merged,
            clip_teacher=_FixedTeacher(teacher_embeds),
            losses=LossWeights(sam_loss_weight=0.0, region_weight=1.0),
        )
        return module(**inputs)

    at_teacher = terms(2.5 * pooled)  # cosine ignores the scale
    assert set(at_teacher) == {"loss", "loss_region"}
    assert at_teacher["loss_region"].item() == pytest.approx(0.0, abs=1e-5)
    other = torch.randn(pooled.shape[-1])
    away = terms(torch.cat([pooled[:2], other[None]]))
    expected = (1 - torch.nn.functional.cosine_similarity(pooled[2], other, dim=0).item()) / 3
    assert away["loss_region"].item() == pytest.approx(expected, abs=1e-5) and expected > 0
    assert torch.equal(away["loss"], away["loss_region"])
    assert terms(pooled)["loss_region"].requires_grad  # the CLIP head learns from it


def test_relational_loss_ranks_the_views_and_the_regions_of_a_step_together(merged):
    torch.manual_seed(0)
    views = torch.randn(3, 3, 32, 32)
    pixels = torch.randn(1, 3, 64, 64)
    region_masks = torch.rand(1, 2, 32, 32) > 0.6
    inputs = dict(
        clip_pixel_values=views,
        clip_teacher_embeds=torch.randn(3, merged.config.head_config.projection_dim),
        sam_pixel_values=pixels,
        region_masks=region_masks,
        region_valid=torch.ones(1, 2, dtype=torch.bool),
        region_teacher_pixel_values=torch.zeros(2, 3, 32, 32),
    )
    region_teacher = torch.randn(2, merged.config.head_config.projection_dim)

    def terms(relational_weight):
        losses = LossWeights(sam_loss_weight=0.0, region_weight=1.0, relational_weight=relational_weight)
        module = SamClipDistillationModule(merged, clip_teacher=_FixedTeacher(region_teacher), losses=losses)
        return module(**inputs)

    off, on = terms(0.0), terms(0.5)
    assert "loss_relational" not in off
    with torch.no_grad():
        views_out = merged(pixel_values=views).image_embeds
        module = SamClipDistillationModule(merged, losses=LossWeights(region_weight=1.0))
        trunk = merged.vision_encoder(pixels, compute_neck=False).trunk_hidden_state
        regions_out = module.region_features(trunk, region_masks, torch.ones(1, 2, dtype=torch.bool))
    expected = relational_distillation_loss(
        torch.cat([views_out, regions_out]), torch.cat([inputs["clip_teacher_embeds"], region_teacher]), 0.1
    )
    assert on["loss_relational"].item() == pytest.approx(expected.item(), abs=1e-5) and expected > 0
    torch.testing.assert_close(on["loss"], off["loss"] + 0.5 * on["loss_relational"])


def test_relational_bank_keeps_the_newest_teacher_embeddings_of_training_steps(merged):
    torch.manual_seed(0)
    dim = merged.config.head_config.projection_dim
    losses = LossWeights(sam_loss_weight=0.0, relational_weight=1.0, relational_bank_size=5)
    module = SamClipDistillationModule(merged, losses=losses).train()
    views = torch.randn(3, 3, 32, 32)
    steps = [torch.randn(3, dim) for _ in range(3)]
    first = module(clip_pixel_values=views, clip_teacher_embeds=steps[0])
    torch.testing.assert_close(module.relational_bank, torch.nn.functional.normalize(steps[0], dim=-1))
    second = module(clip_pixel_values=views, clip_teacher_embeds=steps[1])
    # The second step ranked the first step's embeddings too; the bank holds the newest 5, newest first.
    student = merged(pixel_values=views).image_embeds
    expected = relational_distillation_loss(student, steps[1], 0.1, bank=steps[0])
    assert second["loss_relational"].item() == pytest.approx(expected.item(), abs=1e-5)
    assert first["loss_relational"].item() != pytest.approx(second["loss_relational"].item(), abs=1e-4)
    newest = torch.nn.functional.normalize(torch.cat([steps[1], steps[0]]), dim=-1)[:5]
    torch.testing.assert_close(module.relational_bank, newest)
    # Evaluation reads the bank but does not fill it.
    module.eval()
    module(clip_pixel_values=views, clip_teacher_embeds=steps[2])
    torch.testing.assert_close(module.relational_bank, newest)


def test_region_features_trained_are_those_label_everything_reads(merged, tokenizer):
    # Region distillation and label-everything read a mask through one function: the student feature a training
    # region gets is the one whose cosines label-everything reports for the same mask.
    torch.manual_seed(1)
    pixels = torch.randn(1, 3, 64, 64)
    names = ["red square", "blue circle", "green bag"]
    class_embeds = torch.nn.functional.normalize(
        merged.get_text_features(**tokenizer(names, padding=True, return_tensors="pt")).pooler_output, dim=-1
    )
    generator = SamClipMaskGenerator(
        merged, points_per_side=4, prompts="grid", pred_iou_threshold=-100.0, stability_threshold=0.0
    )
    with torch.no_grad():
        instances = generator.instance_segmentation(pixels, class_embeds)
        trunk = merged.vision_encoder(pixels, compute_neck=False).trunk_hidden_state
        masks = instances.mask_logits[0] > 0
        module = SamClipDistillationModule(merged, losses=LossWeights(region_weight=1.0))
        features = module.region_features(trunk, masks[None], torch.ones(1, len(masks), dtype=torch.bool))
    assert len(masks) >= 2
    torch.testing.assert_close(
        torch.nn.functional.normalize(features, dim=-1) @ class_embeds.T, instances.class_cosines[0]
    )


def test_without_region_distillation_batches_and_loss_are_as_before(
    merged, teachers, processor, teacher_processor, image_dataset
):
    sam, clip = teachers
    clip_data = DistillationImageDataset(image_dataset)
    sam_data = DistillationImageDataset(image_dataset, masks_column="masks")
    features = [PairedDataset(clip_data, len(sam_data))[i] for i in range(4)]
    plain = SamClipDistillationCollator(processor, teacher_processor, sam_dataset=sam_data, sam_batch_size=2)(features)
    assert set(plain) == {
        "clip_pixel_values",
        "clip_teacher_pixel_values",
        "sam_pixel_values",
        "input_boxes",
        "input_points",
        "input_labels",
        "num_skipped",
    }
    regional = SamClipDistillationCollator(
        processor,
        teacher_processor,
        sam_dataset=sam_data,
        sam_batch_size=2,
        region_teacher_image_processor=teacher_processor,
        patch_size=8,
    )(features)
    assert set(regional) == set(plain) | REGION_KEYS
    for key, value in plain.items():  # regions draw from their own rng stream: the prompts stay the same
        assert torch.equal(value, regional[key]), key
    plain.pop("num_skipped"), regional.pop("num_skipped")
    module = SamClipDistillationModule(merged, clip_teacher=clip, sam_teacher=sam)  # region_weight 0 by default
    with torch.no_grad():
        before, after = module(**plain), module(**regional)
    assert "loss_region" not in after and set(before) == set(after)
    assert all(torch.equal(before[name], after[name]) for name in before)


def _count_sam_view_passes(trainer):
    # Records, per SAM-view encoder pass, whether autograd tracks it.
    encode, passes = trainer.model._encode_sam_view, []

    def spy(*args, **kwargs):
        encoded = encode(*args, **kwargs)
        passes.append(encoded.trunk_hidden_state.requires_grad)
        return encoded

    trainer.model._encode_sam_view = spy
    return passes


def test_head_probing_with_regions_trains_the_clip_head_alone_without_sam_loss(
    tmp_path, merged, teachers, processor, teacher_processor, image_dataset
):
    before = _snapshot(merged)
    trainer = _trainer(
        tmp_path,
        merged,
        teachers,
        processor,
        teacher_processor,
        image_dataset,
        "head_probing",
        regions=True,
        losses=LossWeights(region_weight=1.0),
    )
    passes = _count_sam_view_passes(trainer)
    trainer.train()
    assert passes == [False]  # the frozen encoder ran once, outside autograd
    logged = trainer.state.log_history[0]
    assert logged["loss_region"] > 0 and "loss_sam" not in logged
    assert logged["loss"] == pytest.approx(logged["loss_clip"] + logged["loss_region"], rel=1e-4)
    changed = _changed(before, merged)
    assert changed and all(name.startswith("clip_head.") for name in changed)


def test_stage2_with_regions_shares_one_encoder_pass_between_sam_and_region_losses(
    tmp_path, merged, teachers, processor, teacher_processor, image_dataset
):
    calls = []
    merged.vision_encoder.register_forward_hook(lambda _, args, out: calls.append(out.last_hidden_state is not None))
    trainer = _trainer(
        tmp_path,
        merged,
        teachers,
        processor,
        teacher_processor,
        image_dataset,
        "distillation",
        regions=True,
        losses=LossWeights(region_weight=2.0),
    )
    passes = _count_sam_view_passes(trainer)
    trainer.train()
    assert passes == [True] and calls == [False, True]  # the CLIP view, then the SAM view once (with its neck)
    logged = trainer.state.log_history[0]
    assert logged["loss_region"] > 0 and logged["loss_sam"] > 0
    assert logged["loss"] == pytest.approx(
        logged["loss_clip"] + 10 * logged["loss_sam"] + 2 * logged["loss_region"], rel=1e-4
    )


# ---------------------------------------------------------------------------------------------------- cache
def test_teacher_cache_hit_miss_and_invalidation(tmp_path, tokenizer, teachers, teacher_processor, image_dataset):
    from conftest import make_tiny_teachers

    _, clip = teachers
    data = DistillationImageDataset(image_dataset)
    cache = TeacherOutputCache(tmp_path, batch_size=5, shard_size=10)
    first = cache.clip_image_embeddings(clip, teacher_processor, data)
    assert (cache.hits, cache.misses) == (0, 1) and first.shape == (len(data), clip.config.projection_dim)
    assert len(list(tmp_path.glob("clip-*/shard-*.safetensors"))) == 3
    with torch.no_grad():
        pixels = teacher_processor([data[7]["image"]], return_tensors="pt")["pixel_values"]
        expected = clip.get_image_features(pixel_values=pixels).pooler_output[0]
    torch.testing.assert_close(first[7], expected, atol=1e-5, rtol=1e-5)

    again = TeacherOutputCache(tmp_path)
    torch.testing.assert_close(again.clip_image_embeddings(clip, teacher_processor, data)[:], first[:])
    assert (again.hits, again.misses) == (1, 0)

    _, other_clip = make_tiny_teachers(tokenizer, seed=1)  # other weights
    again.clip_image_embeddings(other_clip, teacher_processor, data)
    other_size = CLIPImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    again.clip_image_embeddings(clip, other_size, data)  # other preprocessing
    again.clip_image_embeddings(clip, teacher_processor, DistillationImageDataset(image_dataset.select(range(10))))
    assert (again.hits, again.misses) == (1, 3)


def test_student_trunk_tokens_are_the_encoders_and_keyed_by_its_weights_and_view(
    tmp_path, merged, processor, image_dataset
):
    data = DistillationImageDataset(image_dataset)
    encoder, view = merged.vision_encoder, processor.clip_image_processor
    cache = TeacherOutputCache(tmp_path, batch_size=5)
    tokens = cache.student_trunk_tokens(encoder, view, data, "clip")
    with torch.no_grad():
        pixels = view([data[i]["image"] for i in (3, 11)], return_tensors="pt")["pixel_values"]
        expected = merged.get_image_features(pixels).pooler_output
        _, from_tokens = merged.clip_head(torch.stack([tokens[3], tokens[11]]))
    assert tokens.shape == (len(data), 4, 4, merged.config.vision_config.hidden_size)  # 32 px view, patch 8
    torch.testing.assert_close(from_tokens, expected, atol=1e-5, rtol=1e-5)
    assert (cache.hits, cache.misses) == (0, 1) and cache.student_trunk_tokens(encoder, view, data, "clip") is not None
    assert (cache.hits, cache.misses) == (1, 1)
    bigger = CLIPImageProcessorPil(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    assert cache.student_trunk_tokens(encoder, bigger, data, "clip").shape[1:3] == (6, 6)  # another view size
    with torch.no_grad():
        encoder.layers[0].mlp.lin1.bias.add_(0.1)  # another encoder (a later stage's)
    cache.student_trunk_tokens(encoder, view, data, "clip")
    assert (cache.hits, cache.misses) == (1, 3) and len(list(tmp_path.glob("student-clip-*"))) == 3


def test_cached_teacher_outputs_reach_the_batch(tmp_path, teachers, processor, teacher_processor, image_dataset):
    sam, clip = teachers
    clip_data = DistillationImageDataset(image_dataset)
    sam_data = DistillationImageDataset(image_dataset, masks_column="masks")
    cache = TeacherOutputCache(tmp_path)
    clip_data.cached["clip_teacher_embeds"] = cache.clip_image_embeddings(clip, teacher_processor, clip_data)
    sam_data.cached["sam_teacher_embeddings"] = cache.sam_image_embeddings(sam, processor.image_processor, sam_data)
    collator = SamClipDistillationCollator(processor, None, sam_dataset=sam_data, sam_batch_size=2)
    batch = collator([PairedDataset(clip_data, len(sam_data))[i] for i in range(3)])
    assert "clip_teacher_pixel_values" not in batch and batch["clip_teacher_embeds"].shape[0] == 3
    with torch.no_grad():
        expected = sam.get_image_embeddings(batch["sam_pixel_values"])
    torch.testing.assert_close(batch["sam_teacher_embeddings"], expected, atol=1e-5, rtol=1e-5)


# -------------------------------------------------------------------------------------------------- trainer
@pytest.mark.parametrize(("stage", "clip_sizes"), [("head_probing", None), ("resolution_adaptation", [32, 64])])
def test_stage1_and_stage3_steps_change_only_the_clip_head(
    tmp_path, merged, teachers, processor, teacher_processor, image_dataset, stage, clip_sizes
):
    sam, clip = teachers
    before, sam_before, clip_before = _snapshot(merged), _snapshot(sam), _snapshot(clip)
    trainer = _trainer(
        tmp_path, merged, teachers, processor, teacher_processor, image_dataset, stage, steps=2, clip_sizes=clip_sizes
    )
    trainer.train()
    changed = _changed(before, merged)
    assert changed and all(name.startswith("clip_head.") for name in changed)
    assert not _changed(sam_before, sam) and not _changed(clip_before, clip)
    assert "loss_clip" in trainer.state.log_history[0] and "loss_sam" not in trainer.state.log_history[0]


def test_stage2_step_trains_encoder_and_heads_only_with_tenth_lr(
    tmp_path, merged, teachers, processor, teacher_processor, image_dataset
):
    sam, clip = teachers
    before, sam_before, clip_before = _snapshot(merged), _snapshot(sam), _snapshot(clip)
    trainer = _trainer(tmp_path, merged, teachers, processor, teacher_processor, image_dataset, "distillation")
    trainer.train()
    changed = _changed(before, merged)
    for part in ("vision_encoder.layers.", "vision_encoder.neck.", "mask_decoder.", "clip_head."):
        assert any(name.startswith(part) for name in changed), part
    frozen = ("prompt_encoder.", "shared_image_embedding.", "text_model.", "text_projection.", "logit_scale")
    assert not [name for name in changed if name.startswith(frozen)]
    assert not _changed(sam_before, sam) and not _changed(clip_before, clip)
    assert sam.training is False and clip.training is False
    encoder_ids = {id(p) for p in merged.vision_encoder.parameters()} | {
        id(p) for p in merged.mask_decoder.parameters()
    }
    rates = {
        ("sam_side" if id(group["params"][0]) in encoder_ids else "clip_head"): group["initial_lr"]
        for group in trainer.optimizer.param_groups
    }
    assert rates["sam_side"] == pytest.approx(0.1 * rates["clip_head"]) and rates["clip_head"] == pytest.approx(1e-3)
    logged = trainer.state.log_history[0]
    for term in ("loss", "loss_clip", "loss_sam", "loss_focal", "loss_dice", "loss_iou"):
        assert term in logged, term
    assert logged["loss"] == pytest.approx(logged["loss_clip"] + 10 * logged["loss_sam"], rel=1e-4)


def test_gradient_checkpointing_step(tmp_path, merged, teachers, processor, teacher_processor, image_dataset):
    before = _snapshot(merged)
    trainer = _trainer(
        tmp_path,
        merged,
        teachers,
        processor,
        teacher_processor,
        image_dataset,
        "distillation",
        args={"activation_checkpointing": True},
    )
    trainer.train()
    assert merged.is_activation_checkpointing
    assert any(n.startswith("vision_encoder.layers.") for n in _changed(before, merged))


def test_naive_stage2_trains_no_sam_side(tmp_path, merged, teachers, processor, teacher_processor, image_dataset):
    before = _snapshot(merged)
    trainer = _trainer(
        tmp_path,
        merged,
        teachers,
        processor,
        teacher_processor,
        image_dataset,
        "distillation",
        losses=LossWeights(sam_loss_weight=0.0),
    )
    trainer.train()
    changed = _changed(before, merged)
    assert any(n.startswith("vision_encoder.layers.") for n in changed)
    assert not [n for n in changed if n.startswith(("mask_decoder.", "vision_encoder.neck."))]
    assert "loss_sam" not in trainer.state.log_history[0]


def test_lora_stage2_trains_adapters_and_merges(
    tmp_path, merged, teachers, processor, teacher_processor, image_dataset
):
    from peft import LoraConfig, get_peft_model

    from transformers_samclip.distillation.run import LORA_TARGETS

    before = _snapshot(merged)
    peft_model = get_peft_model(
        merged,
        LoraConfig(r=2, lora_alpha=4, target_modules=LORA_TARGETS, modules_to_save=["clip_head", "mask_decoder"]),
    )
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    trainer = _trainer(tmp_path, peft_model, teachers, processor, teacher_processor, image_dataset, "distillation")
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable)
    assert not [n for n in trainable if "vision_encoder" in n and "lora_" not in n]
    trainer.train()
    student = peft_model.merge_and_unload()
    assert isinstance(student, SamClipModel)
    changed = _changed(before, student)
    assert any(n.startswith("vision_encoder.layers.") for n in changed) and any(
        n.startswith("clip_head.") for n in changed
    )
    assert not [n for n in changed if n.startswith(("prompt_encoder.", "text_model.", "vision_encoder.neck."))]


def test_siglip_teacher(tmp_path, processor, teacher_processor, image_dataset, teachers):
    from transformers import SiglipConfig, SiglipModel

    sam, _ = teachers
    config = SiglipConfig(
        text_config=dict(
            vocab_size=300,
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=40,
            pad_token_id=1,
            bos_token_id=2,
            eos_token_id=3,
        ),
        vision_config=dict(
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
    )
    torch.manual_seed(0)
    siglip = SiglipModel(config).eval()
    student = SamClipModel.from_teachers(sam, siglip)
    before = _snapshot(student)
    trainer = _trainer(tmp_path, student, (sam, siglip), processor, teacher_processor, image_dataset, "distillation")
    trainer.train()
    assert math.isfinite(trainer.state.log_history[0]["loss_clip"])
    assert any(n.startswith("clip_head.") for n in _changed(before, student))


def test_short_distillation_beats_the_untrained_merge_on_clip_cosine(
    tmp_path, teachers, processor, teacher_processor, image_dataset
):
    sam, clip = teachers
    student = SamClipModel.from_teachers(sam, clip)
    held_out = _images_and_masks(8, seed=5)[0]

    @torch.no_grad()
    def cosine(model):
        student_embeds = model.get_image_features(processor(held_out, view="clip")["pixel_values"]).pooler_output
        teacher_embeds = clip.get_image_features(
            teacher_processor(held_out, return_tensors="pt")["pixel_values"]
        ).pooler_output
        return torch.nn.functional.cosine_similarity(student_embeds, teacher_embeds).mean().item()

    start = cosine(student.eval())
    trainer = _trainer(
        tmp_path,
        student,
        teachers,
        processor,
        teacher_processor,
        image_dataset,
        "head_probing",
        steps=30,
        args={"per_device_train_batch_size": 8, "logging_steps": 10},
    )
    trainer.train()
    assert cosine(student.eval()) > start + 0.1


def test_resume_from_checkpoint_restores_the_student(tmp_path, teachers, processor, teacher_processor, image_dataset):
    sam, clip = teachers
    student = SamClipModel.from_teachers(sam, clip)
    trainer = _trainer(
        tmp_path,
        student,
        teachers,
        processor,
        teacher_processor,
        image_dataset,
        "distillation",
        steps=2,
        args={"save_strategy": "steps", "save_steps": 2},
    )
    trainer.train()
    checkpoint = tmp_path / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "config.json").is_file()
    assert SamClipModel.from_pretrained(checkpoint) is not None  # checkpoints are loadable models (no teachers)
    fresh = SamClipModel.from_teachers(sam, clip)
    resumed = _trainer(
        tmp_path,
        fresh,
        teachers,
        processor,
        teacher_processor,
        image_dataset,
        "distillation",
        steps=3,
        args={"save_strategy": "no"},
    )
    resumed._load_from_checkpoint(str(checkpoint))
    for name, value in student.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], value)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 3
