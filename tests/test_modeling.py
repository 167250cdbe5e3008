"""SamClipModel: merge parity with the teachers, transformers model conventions, and input validation."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_teachers
from transformers import (
    AutoModel,
    AutoModelForMaskGeneration,
    AutoModelForZeroShotImageClassification,
    SamConfig,
    SamModel,
)

from transformers_samclip import SamClipConfig, SamClipMaskGenerator, SamClipModel, samclip_config_from_preset

SIZE = 64  # SAM-path size of the tiny preset


def sam_prompts(batch: int = 2):
    """Points (with a negative and a padded point), boxes and low-res mask prompts for the tiny model."""
    points = torch.tensor([[[10.0, 20.0], [30.0, 40.0], [0.0, 0.0]], [[5.0, 6.0], [50.0, 60.0], [63.0, 1.0]]])[
        :batch, None
    ]
    labels = torch.tensor([[1, 0, -10], [1, 1, 0]])[:batch, None]
    boxes = torch.tensor([[[1.0, 2.0, 30.0, 40.0]], [[10.0, 10.0, 60.0, 50.0]]])[:batch]
    masks = torch.randn(batch, 1, 32, 32, generator=torch.Generator().manual_seed(3)) * 5
    return points, labels, boxes, masks


def assert_close(a, b, atol=1e-5):
    assert (a - b).abs().max().item() <= atol, (a - b).abs().max().item()


@pytest.fixture()
def pixels():
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture()
def text(tokenizer):
    tokens = tokenizer(["a red square", "noise"], padding=True, return_tensors="pt")
    return tokens["input_ids"], tokens["attention_mask"]


# ------------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("kind", ["points", "boxes", "points+boxes", "masks", "boxes+masks"])
@pytest.mark.parametrize("multimask", [True, False])
def test_merged_model_reproduces_sam_teacher(teachers, merged, pixels, kind, multimask):
    sam, _ = teachers
    points, labels, boxes, masks = sam_prompts()
    prompts = {}
    if "points" in kind:
        prompts.update(input_points=points, input_labels=labels)
    if "boxes" in kind:
        prompts["input_boxes"] = boxes
    if "masks" in kind:
        prompts["input_masks"] = masks
    if kind == "masks":
        prompts.update(input_points=points[:, :, :1], input_labels=labels[:, :, :1])
    with torch.no_grad():
        expected = sam(pixel_values=pixels, multimask_output=multimask, **prompts)
        got = merged(pixel_values=pixels, multimask_output=multimask, **prompts)
    assert got.pred_masks.shape == expected.pred_masks.shape
    assert_close(got.pred_masks, expected.pred_masks)
    assert_close(got.iou_scores, expected.iou_scores)
    assert expected.pred_masks.abs().max() > 0.01  # the comparison is not between two zero tensors


def test_merged_image_embeddings_and_text_features_match_teachers(teachers, merged, pixels, text):
    sam, clip = teachers
    input_ids, attention_mask = text
    with torch.no_grad():
        assert_close(merged.get_image_embeddings(pixels), sam.get_image_embeddings(pixels))
        expected = clip.get_text_features(input_ids, attention_mask).pooler_output
        assert_close(merged.get_text_features(input_ids, attention_mask).pooler_output, expected)
    assert merged.logit_scale.item() == pytest.approx(clip.logit_scale.item())


def test_clip_head_starts_as_copies_of_sam_last_layer(teachers, merged):
    sam, _ = teachers
    reference = sam.vision_encoder.layers[-1].state_dict()
    assert len(merged.clip_head.layers) == merged.config.head_config.num_hidden_layers == 3  # the paper
    for layer in merged.clip_head.layers:
        for name, value in layer.state_dict().items():
            assert torch.equal(value, reference[name]), name
    assert merged.config.head_config.projection_dim == 24  # = the CLIP teacher's projection size


@pytest.mark.slow
def test_parity_at_full_vit_b_size():
    """SAM ViT-B at 1024 px (random weights): the merged model's masks equal SamModel's."""
    preset = samclip_config_from_preset("samclip-vit-b16")
    torch.manual_seed(0)
    sam = SamModel(
        SamConfig(
            vision_config=preset.vision_config.to_dict(),
            prompt_encoder_config=preset.prompt_encoder_config.to_dict(),
            mask_decoder_config=preset.mask_decoder_config.to_dict(),
        )
    ).eval()
    from transformers import CLIPConfig, CLIPModel

    clip = CLIPModel(
        CLIPConfig(
            text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2),
            vision_config=dict(
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=224,
                patch_size=14,
            ),
            projection_dim=768,
        )
    ).eval()
    merged = SamClipModel.from_teachers(sam, clip)
    pixels = torch.randn(1, 3, 1024, 1024)
    points = torch.tensor([[[[500.0, 375.0], [100.0, 900.0]]]])
    labels = torch.tensor([[[1, 0]]])
    boxes = torch.tensor([[[75.0, 275.0, 725.0, 850.0]]])
    with torch.no_grad():
        embeddings = sam.get_image_embeddings(pixels)
        assert_close(merged.get_image_embeddings(pixels), embeddings)
        for prompts in ({"input_points": points, "input_labels": labels}, {"input_boxes": boxes}):
            expected = sam(image_embeddings=embeddings, **prompts)
            got = merged(image_embeddings=embeddings, **prompts)
            assert_close(got.pred_masks, expected.pred_masks)
            assert_close(got.iou_scores, expected.iou_scores)
        assert merged.get_image_features(torch.randn(1, 3, 224, 224)).pooler_output.shape == (1, 768)


# ---------------------------------------------------------------------------------------- forward contract
def test_forward_returns_clip_fields_and_one_encoder_pass_for_both_heads(merged, pixels, text):
    input_ids, attention_mask = text
    points, labels, _, _ = sam_prompts()
    calls = []
    handle = merged.vision_encoder.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        both = merged(
            pixel_values=pixels,
            input_ids=input_ids,
            attention_mask=attention_mask,
            input_points=points,
            input_labels=labels,
        )
    handle.remove()
    assert len(calls) == 1
    assert both.logits_per_image.shape == (2, 2) and both.pred_masks.shape[:3] == (2, 1, 3)
    with torch.no_grad():
        clip_only = merged(pixel_values=pixels, input_ids=input_ids, attention_mask=attention_mask)
        sam_only = merged(pixel_values=pixels, input_points=points, input_labels=labels)
        image = F.normalize(merged.get_image_features(pixels).pooler_output, dim=-1)
        text_embeds = F.normalize(merged.get_text_features(input_ids, attention_mask).pooler_output, dim=-1)
    assert_close(both.logits_per_image, clip_only.logits_per_image)
    assert_close(both.pred_masks, sam_only.pred_masks)
    assert_close(clip_only.logits_per_image, image @ text_embeds.t() * merged.logit_scale.exp())
    assert_close(clip_only.logits_per_text, clip_only.logits_per_image.t())
    assert clip_only.pred_masks is None and sam_only.logits_per_image is None and sam_only.image_embeds is None
    with torch.no_grad():
        with_embeds = merged(pixel_values=pixels, input_points=points, input_labels=labels, return_image_embeds=True)
    assert_close(with_embeds.image_embeds, both.image_embeds)
    assert_close(with_embeds.pred_masks, sam_only.pred_masks)


def test_clip_path_runs_at_any_multiple_of_the_patch_size(merged):
    for size in (32, 48, 64, 96):
        with torch.no_grad():
            features = merged.get_image_features(torch.randn(1, 3, size, size)).pooler_output
            dense = merged.get_dense_image_features(torch.randn(1, 3, size, size))
        assert features.shape == (1, 24)
        assert dense.shape == (1, 24, size // 8, size // 8)


def test_pos_embed_interpolation_is_exact_at_native_size_and_cache_follows_training(merged):
    encoder = merged.vision_encoder
    assert encoder.interpolated_pos_embed(8, 8) is encoder.pos_embed
    with torch.no_grad():
        before = encoder.interpolated_pos_embed(4, 4).clone()
        encoder.pos_embed.add_(1.0)  # an in-place update as an optimizer step makes
        after = encoder.interpolated_pos_embed(4, 4)
    assert_close(after - before, torch.ones_like(before), atol=1e-4)


def test_project_before_pool_and_mean_pooling(teachers, pixels):
    sam, clip = teachers
    for options in ({"pooling": "mean"}, {"project_before_pool": True}):
        model = SamClipModel.from_teachers(sam, clip, dense_value_layers=0, **options)
        with torch.no_grad():
            trunk = model.vision_encoder(pixels).trunk_hidden_state
            tokens = model.clip_head(trunk)[0]
            dense = model.clip_head.dense_features(trunk)
            pooled = model.get_image_features(pixels).pooler_output
        if options.get("project_before_pool"):
            assert_close(pooled, dense.amax(dim=(2, 3)))
        else:
            assert_close(pooled, model.clip_head.projector(tokens.mean(dim=(1, 2))))


def test_dense_value_layers_keep_each_patch_to_itself(teachers):
    sam, clip = teachers
    trunk = torch.randn(1, 4, 4, sam.config.vision_config.hidden_size, generator=torch.Generator().manual_seed(2))
    changed = trunk.clone()
    changed[0, 1, 2] += torch.randn(trunk.shape[-1], generator=torch.Generator().manual_seed(3))  # not a constant:
    # LayerNorm would remove a uniform shift
    for value_layers, only_that_patch in ((0, False), (1, False), (2, True), (5, True)):
        model = SamClipModel.from_teachers(sam, clip, num_hidden_layers=2, dense_value_layers=value_layers).eval()
        with torch.no_grad():
            moved = (model.clip_head.dense_features(changed) - model.clip_head.dense_features(trunk)).abs().amax(1)[0]
        assert moved[1, 2] > 0
        others = moved.clone()
        others[1, 2] = 0
        # With every block value-only (5 is capped at the 2 blocks) no patch sees another (the other patches'
        # features are computed from the very same inputs, so they are equal to the bit); with fewer, they mix.
        assert bool(others.amax() == 0) == only_that_patch, (value_layers, others.amax())
    with pytest.raises(ValueError, match="dense_value_layers must be >= 0"):
        SamClipModel.from_teachers(sam, clip, dense_value_layers=-1)


# --------------------------------------------------------------------------------- semantic segmentation
def test_semantic_segmentation_is_patch_argmax_of_cosine(merged, pixels, tokenizer):
    class_embeds = merged.encode_class_names(["red", "noise", "square"], tokenizer, templates=("{}", "a {}."))
    assert class_embeds.shape == (3, 24)
    assert_close(class_embeds.norm(dim=-1), torch.ones(3))
    with torch.no_grad():
        out = SamClipMaskGenerator(merged).semantic_segmentation(pixels, class_embeds, output_size=(8, 8))
        dense = F.normalize(merged.get_dense_image_features(pixels), dim=1)
    expected = torch.einsum("bdhw,cd->bchw", dense, class_embeds).argmax(1) + 1
    assert torch.equal(out.label_map, expected)
    all_background = SamClipMaskGenerator(merged).semantic_segmentation(
        pixels, class_embeds, background_threshold=1.01
    )
    assert (all_background.label_map == 0).all()
    never = SamClipMaskGenerator(merged).semantic_segmentation(pixels, class_embeds)
    assert (never.label_map > 0).all() and never.label_map.shape == (2, SIZE, SIZE)
    background_embeds = F.normalize(torch.randn(2, 24, generator=torch.Generator().manual_seed(5)), dim=-1)
    with_background = SamClipMaskGenerator(merged).semantic_segmentation(
        pixels, class_embeds, background_embeds=background_embeds, output_size=(8, 8)
    )
    scores = torch.cat(
        [
            torch.einsum("bdhw,cd->bchw", dense, background_embeds).amax(1, keepdim=True),
            torch.einsum("bdhw,cd->bchw", dense, class_embeds),
        ],
        dim=1,
    )
    assert torch.equal(with_background.label_map, scores.argmax(1))
    assert (with_background.label_map == 0).any() and (with_background.label_map > 0).any()


def test_stored_background_threshold_is_the_default_and_an_argument_wins(merged, pixels, tokenizer, tmp_path):
    class_embeds = merged.encode_class_names(["red", "noise"], tokenizer)
    with torch.no_grad():
        best = F.normalize(merged.get_dense_image_features(pixels), dim=1)
        best = torch.einsum("bdhw,cd->bchw", best, class_embeds).amax(1)
    middle = best.flatten().sort().values[best.numel() // 2 - 1 : best.numel() // 2 + 1]
    threshold = float(middle.mean())  # half the patches fall below it, none on it
    merged.config.background_threshold = threshold
    try:
        out = SamClipMaskGenerator(merged).semantic_segmentation(
            pixels, class_embeds, output_size=tuple(best.shape[-2:])
        )
        assert torch.equal(out.label_map == 0, best < threshold)
        assert 0 < (out.label_map == 0).float().mean() < 1
        overridden = SamClipMaskGenerator(merged).semantic_segmentation(
            pixels, class_embeds, background_threshold=-1.5
        )
        assert (overridden.label_map > 0).all()  # an explicit argument wins over the stored default
        refined = SamClipMaskGenerator(merged).semantic_segmentation_refined(pixels, class_embeds)
        assert (refined.label_map == 0).any()
        merged.save_pretrained(tmp_path)
        assert SamClipModel.from_pretrained(tmp_path).config.background_threshold == threshold
    finally:
        merged.config.background_threshold = None
    with pytest.raises(Exception, match=r"background_threshold \(3.0\) is a cosine: it must lie in \[-1, 1\]"):
        SamClipConfig(**{**merged.config.to_dict(), "background_threshold": 3.0})


def test_semantic_segmentation_refined_uses_sam_head(merged, pixels, tokenizer):
    class_embeds = merged.encode_class_names(["red", "noise"], tokenizer)
    with torch.no_grad():
        coarse = SamClipMaskGenerator(merged).semantic_segmentation(pixels, class_embeds)
        refined = SamClipMaskGenerator(merged).semantic_segmentation_refined(pixels, class_embeds)
        again = SamClipMaskGenerator(merged).semantic_segmentation_refined(pixels, class_embeds)
    assert refined.label_map.shape == (2, SIZE, SIZE)
    assert torch.equal(refined.label_map, again.label_map)
    for index in range(2):
        present = set(coarse.label_map[index].unique().tolist())
        assert set(refined.label_map[index].unique().tolist()) <= present | {0}
    assert not torch.equal(refined.label_map, coarse.label_map)


# -------------------------------------------------------------------------------- transformers conventions
def test_save_and_load_round_trip_through_package_and_auto_classes(merged, pixels, text, tmp_path):
    input_ids, attention_mask = text
    points, labels, _, _ = sam_prompts()
    merged.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    inputs = dict(
        pixel_values=pixels,
        input_ids=input_ids,
        attention_mask=attention_mask,
        input_points=points,
        input_labels=labels,
    )
    with torch.no_grad():
        expected = merged(**inputs)
        for loader in (SamClipModel, AutoModel, AutoModelForZeroShotImageClassification, AutoModelForMaskGeneration):
            reloaded = loader.from_pretrained(tmp_path, attn_implementation="eager").eval()
            assert isinstance(reloaded, SamClipModel)
            got = reloaded(**inputs)
            assert_close(got.pred_masks, expected.pred_masks)
            assert_close(got.logits_per_image, expected.logits_per_image)
    assert isinstance(SamClipConfig.from_pretrained(tmp_path).head_config.mlp_hidden_sizes, list)


def test_deterministic_and_batch_equivalent(merged, pixels, text):
    input_ids, attention_mask = text
    points, labels, boxes, _ = sam_prompts()
    with torch.no_grad():
        first = merged(pixel_values=pixels, input_boxes=boxes)
        second = merged(pixel_values=pixels, input_boxes=boxes)
        assert torch.equal(first.pred_masks, second.pred_masks)
        for i in range(2):
            single = merged(pixel_values=pixels[i : i + 1], input_boxes=boxes[i : i + 1])
            assert_close(single.pred_masks[0], first.pred_masks[i])
            single_clip = merged(pixel_values=pixels[i : i + 1], input_ids=input_ids, attention_mask=attention_mask)
            batched = merged(pixel_values=pixels, input_ids=input_ids, attention_mask=attention_mask)
            assert_close(single_clip.logits_per_image[0], batched.logits_per_image[i])


def test_hidden_states_and_attentions(merged, pixels):
    with torch.no_grad():
        out = merged(pixel_values=pixels, output_hidden_states=True, output_attentions=True)
    layers = merged.config.vision_config.num_hidden_layers
    assert len(out.vision_hidden_states) == layers + 1  # the patch embeddings, then every layer, as SamModel
    assert len(out.vision_attentions) == layers
    with torch.no_grad():
        trunk = merged.vision_encoder(pixels).trunk_hidden_state
    assert_close(out.vision_hidden_states[-1], trunk)
    attention = out.vision_attentions[1]  # a global layer: 64 tokens attend to 64
    assert attention.shape[-2:] == (64, 64)
    assert_close(attention.sum(-1), torch.ones_like(attention.sum(-1)), atol=1e-4)


def test_training_step_with_gradient_checkpointing_reaches_every_trainable_parameter(merged, pixels, text):
    input_ids, attention_mask = text
    points, labels, boxes, masks = sam_prompts()
    labels = labels.clone()
    labels[0, 0, 2] = -1  # a "not a point" entry, so that embedding is used too
    merged.train()
    merged.activation_checkpointing_enable()
    assert any(getattr(m, "gradient_checkpointing", False) for m in merged.modules())
    first = merged(
        pixel_values=pixels,
        input_ids=input_ids,
        attention_mask=attention_mask,
        input_points=points,
        input_labels=labels,
    )
    second = merged(pixel_values=pixels, input_boxes=boxes, input_masks=masks, multimask_output=False)
    loss = (
        first.logits_per_image.logsumexp(-1).sum()
        + first.pred_masks.square().mean()
        + first.iou_scores.sum()
        + second.pred_masks.square().mean()
        + second.iou_scores.sum()
    )
    loss.backward()
    missing = [
        n for n, p in merged.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    # The tied prompt-encoder copy shares its tensor with shared_image_embedding, which is checked instead.
    assert missing == [], missing


def test_sdpa_matches_eager(tokenizer, pixels, text):
    input_ids, attention_mask = text
    points, labels, boxes, _ = sam_prompts()
    sam_e, clip_e = make_tiny_teachers(tokenizer, attn_implementation="eager")
    sam_s, clip_s = make_tiny_teachers(tokenizer, attn_implementation="sdpa")
    eager, sdpa = SamClipModel.from_teachers(sam_e, clip_e), SamClipModel.from_teachers(sam_s, clip_s)
    sdpa.load_state_dict(eager.state_dict())  # the new head layers are random: give both the same weights
    assert type(sdpa.vision_encoder.layers[0].attn).__name__ == "SamVisionSdpaAttention"
    assert type(eager.vision_encoder.layers[0].attn).__name__ == "SamVisionAttention"
    inputs = dict(pixel_values=pixels, input_ids=input_ids, attention_mask=attention_mask, input_boxes=boxes)
    with torch.no_grad():
        a, b = eager(**inputs), sdpa(**inputs)
    assert_close(a.pred_masks, b.pred_masks, atol=1e-4)
    assert_close(a.logits_per_image, b.logits_per_image, atol=1e-4)


def test_peft_lora_on_the_encoder_trains_and_saves(merged, pixels, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base_state = {k: v.clone() for k, v in merged.state_dict().items()}
    config = LoraConfig(r=4, lora_alpha=8, target_modules=r"vision_encoder\.layers\.\d+\.attn\.(qkv|proj)")
    peft_model = get_peft_model(copy.deepcopy(merged), config)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "vision_encoder" in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    target = torch.randn(2, 24)
    losses = []
    for _ in range(5):
        embeds = peft_model.base_model.model.get_image_features(pixels).pooler_output
        loss = (1 - F.cosine_similarity(embeds, target)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    peft_model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").exists()
    fresh = SamClipModel(merged.config)
    fresh.load_state_dict(base_state)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    peft_model.eval()
    with torch.no_grad():
        assert_close(
            reloaded.base_model.model.get_image_features(pixels).pooler_output,
            peft_model.base_model.model.get_image_features(pixels).pooler_output,
        )


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors(merged, pixels, text, tokenizer):
    points, labels, boxes, _ = sam_prompts()
    input_ids, attention_mask = text
    cases = [
        (lambda: merged(pixel_values=torch.randn(1, 3, 60, 64)), "multiple of the patch size"),
        (lambda: merged(pixel_values=pixels, input_points=points + 100, input_labels=labels), "inside the 64x64"),
        (lambda: merged(pixel_values=pixels, input_boxes=boxes * 3), "inside the 64x64"),
        (lambda: merged(pixel_values=pixels[:1], input_points=points, input_labels=labels), "are for 2 images but 1"),
        (lambda: merged(pixel_values=pixels[:1], input_boxes=boxes), "are for 2 images but 1"),
        (lambda: merged(pixel_values=torch.randn(2, 3, 32, 32), input_boxes=boxes), "SAM prompts need 64x64"),
        (lambda: merged(input_ids=torch.ones(1, 500, dtype=torch.long)), "longer than the text tower accepts"),
        (lambda: merged.encode_class_names([], tokenizer), "class_names must be non-empty"),
        (lambda: merged(pixel_values=pixels, image_embeddings=torch.randn(2, 32, 8, 8)), "either pixel_values or"),
        (lambda: merged(), "Nothing to do"),
        (lambda: merged(pixel_values=pixels, input_boxes=boxes[:, :, [2, 1, 0, 3]]), "x1 >= x0"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_teachers_that_do_not_fit_are_named(teachers, tokenizer):
    sam, clip = teachers
    with pytest.raises(ValueError, match="sam_model must be a transformers SamModel"):
        SamClipModel.from_teachers(clip, clip)
    with pytest.raises(ValueError, match="clip_model must be a dual encoder"):
        SamClipModel.from_teachers(sam, sam)
    with pytest.raises(ValueError, match="projection_dim=7 does not match"):
        SamClipModel.from_teachers(sam, clip, projection_dim=7)
    broken = copy.deepcopy(sam)
    broken.config.vision_config.num_pos_feats = 4
    with pytest.raises(ValueError, match="num_pos_feats"):
        SamClipModel.from_teachers(broken, clip)
    with pytest.raises(ValueError, match="pooling must be 'max' or 'mean'"):
        SamClipModel.from_teachers(sam, clip, pooling="median")


def test_presets_build_valid_configs():
    paper = samclip_config_from_preset("samclip-vit-b16")
    assert paper.vision_config.hidden_size == 768 and list(paper.vision_config.global_attn_indexes) == [2, 5, 8, 11]
    assert paper.head_config.projection_dim == paper.text_projection_dim == 768
    assert paper.head_config.mlp_hidden_sizes == [1536, 1536]
    with pytest.raises(ValueError, match="Unknown SAM-CLIP preset"):
        samclip_config_from_preset("samclip-vit-h")


def test_merge_with_a_siglip_teacher(teachers):
    from transformers import SiglipConfig, SiglipModel

    sam, _ = teachers
    torch.manual_seed(0)
    siglip = SiglipModel(
        SiglipConfig(
            text_config=dict(
                vocab_size=64,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=4,
                max_position_embeddings=16,
                projection_size=24,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=0,
            ),
            vision_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=4,
                image_size=32,
                patch_size=8,
            ),
        )
    ).eval()
    with torch.no_grad():
        siglip.logit_bias.fill_(-3.5)
    model = SamClipModel.from_teachers(sam, siglip)
    ids = torch.randint(3, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(model.get_text_features(ids).pooler_output, siglip.get_text_features(ids).pooler_output)
        out = model(pixel_values=torch.randn(1, 3, 32, 32), input_ids=ids)
    assert model.text_projection is None and model.config.text_embed_dim == 24
    image, text = out.image_embeds, out.text_embeds
    assert_close(out.logits_per_image, image @ text.t() * siglip.logit_scale.exp() - 3.5)
