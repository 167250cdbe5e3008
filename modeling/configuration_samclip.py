"""SAM-CLIP configuration (arXiv 2310.15308): one SAM ViT-Det backbone, SAM's prompt encoder and mask
decoder, a CLIP head distilled from a CLIP teacher, and the teacher's frozen text tower."""

import re

import transformers

# The oldest transformers this code was tested with (pyproject's lower bound). Checked here, before the imports
# below, because older releases lack them and would fail with an ImportError or AttributeError deep inside.
MIN_TRANSFORMERS_VERSION = "5.24"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


if _version_tuple(transformers.__version__) < _version_tuple(MIN_TRANSFORMERS_VERSION):
    raise ImportError(
        f"This SAM-CLIP model code needs transformers>={MIN_TRANSFORMERS_VERSION}, found {transformers.__version__}: "
        f"pip install -U 'transformers>={MIN_TRANSFORMERS_VERSION}'."
    )

from huggingface_hub.dataclasses import strict  # noqa: E402 (after the version check)
from transformers import AutoConfig, CLIPTextConfig, PreTrainedConfig  # noqa: E402
from transformers.configuration_utils import SubConfigSpec  # noqa: E402
from transformers.models.sam.configuration_sam import (  # noqa: E402
    SamMaskDecoderConfig,
    SamPromptEncoderConfig,
    SamVisionConfig,
)

# SAM's image normalisation (ImageNet statistics); the shared encoder always sees it, on both paths.
SAM_IMAGE_MEAN = [0.485, 0.456, 0.406]
SAM_IMAGE_STD = [0.229, 0.224, 0.225]
DENSE_READOUTS = ("value", "clearclip", "naclip", "sclip")


@strict
class SamClipHeadConfig(PreTrainedConfig):
    r"""
    The CLIP head: `num_hidden_layers` transformer blocks on the encoder's trunk tokens (copies of SAM's last
    encoder layer at merge time), then pooling, LayerNorm and an MLP into the CLIP teacher's embedding space.

    Args:
        num_hidden_layers (`int`, defaults to 3): blocks in the head (the paper uses 3).
        pooling (`str`, defaults to `"max"`): `"max"` (the paper's choice) or `"mean"` over patch tokens.
        project_before_pool (`bool`, defaults to `False`): apply LayerNorm+MLP to every token, then pool
            (dense features and pooled embedding then come from the same map), instead of pooling first as in
            the paper.
        mlp_hidden_sizes (`list[int]`, *optional*): hidden widths of the MLP (two in the paper); `None` means
            two layers of twice the encoder width.
        projection_dim (`int`, defaults to 768): size of the output embedding (= the teacher's).
        image_size (`int`, defaults to 224): default input size of the CLIP path (224/336/448 in the paper).
        hidden_act (`str`, defaults to `"gelu"`): activation of the MLP.
        layer_norm_eps (`float`, defaults to 1e-6): epsilon of the LayerNorm.
        dense_value_layers (`int`, defaults to 2): for per-patch (dense) features, the last this many blocks run
            with their attention replaced by its value projection, MaskCLIP's read-out: each patch keeps its own
            content instead of the global mix that pooling is trained on. 0 reads the pooled path's tokens. 2 was
            chosen on training mosaics (plain semantic mIoU 0.078 / 0.074 / 0.101 / 0.097 for 0 / 1 / 2 / 3).
        dense_readout (`str`, defaults to `"value"`): how the head's LAST block reads out per-patch features.
            `"value"`: MaskCLIP (the last `dense_value_layers` blocks keep only their value path). The others
            replace the last block's attention by a training-free one and drop its residual and MLP (which carry
            the global mix): `"clearclip"` (query-query attention, ClearCLIP), `"naclip"` (key-key attention plus
            a Gaussian neighbourhood prior, NACLIP), `"sclip"` (query-query plus key-key attention, SCLIP).
        neighbourhood_sigma (`float`, defaults to 5.0): width in patches of NACLIP's Gaussian prior.
        dense_affinity_temperature (`float`, *optional*): when set, the per-patch features are averaged with the
            encoder's own trunk-token affinity, softmax over patches of cos(trunk_i, trunk_j) / temperature
            (ProxyCLIP-style: the SAM features, which group objects, tell the CLIP features where to pool).
            `None` (default) reads each patch alone.
    """

    model_type = "samclip_head"
    base_config_key = "head_config"

    num_hidden_layers: int = 3
    pooling: str = "max"
    project_before_pool: bool = False
    mlp_hidden_sizes: list[int] | tuple[int, ...] | None = None
    projection_dim: int = 768
    image_size: int = 224
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    dense_value_layers: int = 2
    dense_readout: str = "value"
    neighbourhood_sigma: float = 5.0
    dense_affinity_temperature: float | None = None

    def validate_architecture(self):
        """Reject head settings the model cannot build, naming the allowed values."""
        if self.pooling not in ("max", "mean"):
            raise ValueError(f"head_config.pooling must be 'max' or 'mean', got {self.pooling!r}.")
        if self.num_hidden_layers < 0:
            raise ValueError(f"head_config.num_hidden_layers must be >= 0, got {self.num_hidden_layers}.")
        if self.dense_value_layers < 0:
            raise ValueError(f"head_config.dense_value_layers must be >= 0, got {self.dense_value_layers}.")
        if self.dense_readout not in DENSE_READOUTS:
            raise ValueError(f"head_config.dense_readout must be one of {DENSE_READOUTS}, got {self.dense_readout!r}.")
        if not self.neighbourhood_sigma > 0:
            raise ValueError(f"head_config.neighbourhood_sigma must be > 0, got {self.neighbourhood_sigma}.")
        if self.dense_affinity_temperature is not None and not self.dense_affinity_temperature > 0:
            raise ValueError(
                "head_config.dense_affinity_temperature must be > 0 (or None: no affinity), got "
                f"{self.dense_affinity_temperature}."
            )
        if self.projection_dim <= 0:
            raise ValueError(f"head_config.projection_dim must be positive, got {self.projection_dim}.")


@strict
class SamClipConfig(PreTrainedConfig):
    r"""
    Configuration of [`SamClipModel`].

    Args:
        vision_config (`SamVisionConfig` or `dict`): the shared ViT-Det encoder (SAM's image encoder).
        prompt_encoder_config (`SamPromptEncoderConfig` or `dict`): SAM's prompt encoder.
        mask_decoder_config (`SamMaskDecoderConfig` or `dict`): SAM's mask decoder (the SAM head).
        text_config (`PreTrainedConfig` or `dict`): the CLIP teacher's text tower (any text model config
            known to `AutoConfig`, e.g. `CLIPTextConfig`, `SiglipTextConfig`).
        head_config (`SamClipHeadConfig` or `dict`): the CLIP head.
        text_projection_dim (`int`, *optional*): output size of the linear text projection (CLIP has one);
            `None` when the text tower's pooled output is already the embedding (SigLIP).
        logit_scale_init_value (`float`, defaults to 2.6592): log of the contrastive temperature.
        logit_bias_init_value (`float`, *optional*): SigLIP's logit bias; `None` for CLIP.
        initializer_range (`float`, defaults to 0.02): std of the normal initialiser of new layers.
        background_threshold (`float`, *optional*): default background score of zero-shot semantic segmentation:
            a pixel whose best class cosine is below it is background. `samclip distill` calibrates it on training
            images and stores it here; `None` (no calibration) means background is never predicted unless the
            caller gives a threshold or background labels.
        instance_score_threshold (`float`, *optional*): default "none of these" of label-everything
            (`SamClipMaskGenerator.instance_segmentation`): a mask whose confidence (class probability x predicted
            IoU) is below it is not named. Calibrated on training mosaics
            (`evaluation.instance.calibrate_instance_score_threshold`); `None` keeps every mask.
    """

    model_type = "samclip"
    sub_configs_defaults = {
        "vision_config": SamVisionConfig,
        "prompt_encoder_config": SamPromptEncoderConfig,
        "mask_decoder_config": SamMaskDecoderConfig,
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_text_model"),
        "head_config": SamClipHeadConfig,
    }

    vision_config: dict | PreTrainedConfig | None = None
    prompt_encoder_config: dict | PreTrainedConfig | None = None
    mask_decoder_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    head_config: dict | PreTrainedConfig | None = None
    text_projection_dim: int | None = 768
    logit_scale_init_value: float = 2.6592
    logit_bias_init_value: float | None = None
    initializer_range: float = 0.02
    background_threshold: float | None = None
    instance_score_threshold: float | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.head_config.mlp_hidden_sizes is None:
            self.head_config.mlp_hidden_sizes = [2 * self.vision_config.hidden_size] * 2
        else:
            self.head_config.mlp_hidden_sizes = list(self.head_config.mlp_hidden_sizes)

    def validate_architecture(self):
        """Check that SAM's parts and the text tower fit together; errors name the fields to change."""
        vision, prompt, decoder, head = (
            self.vision_config,
            self.prompt_encoder_config,
            self.mask_decoder_config,
            self.head_config,
        )
        problems = []
        if vision.image_size % vision.patch_size:
            problems.append(
                f"vision_config.image_size ({vision.image_size}) is not a multiple of patch_size ({vision.patch_size})"
            )
        if (prompt.image_size, prompt.patch_size) != (vision.image_size, vision.patch_size):
            problems.append(
                f"prompt_encoder_config image_size/patch_size ({prompt.image_size}/{prompt.patch_size}) differ from "
                f"vision_config ({vision.image_size}/{vision.patch_size})"
            )
        if not (vision.output_channels == prompt.hidden_size == decoder.hidden_size):
            problems.append(
                f"vision_config.output_channels ({vision.output_channels}), prompt_encoder_config.hidden_size "
                f"({prompt.hidden_size}) and mask_decoder_config.hidden_size ({decoder.hidden_size}) must be equal"
            )
        if vision.num_pos_feats * 2 != vision.output_channels:
            problems.append(
                f"vision_config.num_pos_feats ({vision.num_pos_feats}) must be output_channels // 2 "
                f"({vision.output_channels // 2})"
            )
        if head.image_size % vision.patch_size:
            problems.append(
                f"head_config.image_size ({head.image_size}) is not a multiple of patch_size ({vision.patch_size})"
            )
        if self.text_embed_dim != head.projection_dim:
            problems.append(
                f"head_config.projection_dim ({head.projection_dim}) must equal the text embedding size "
                f"({self.text_embed_dim}: text_projection_dim, or the text tower's own output size when there is "
                "no projection)"
            )
        if self.background_threshold is not None and not -1.0 <= self.background_threshold <= 1.0:
            problems.append(f"background_threshold ({self.background_threshold}) is a cosine: it must lie in [-1, 1]")
        if self.instance_score_threshold is not None and not 0.0 <= self.instance_score_threshold <= 1.0:
            problems.append(
                f"instance_score_threshold ({self.instance_score_threshold}) is a confidence: it must lie in [0, 1]"
            )
        if problems:
            raise ValueError("Invalid SamClipConfig: " + "; ".join(problems) + ".")

    @property
    def text_embed_dim(self) -> int:
        """Size of the text embedding space: the linear projection's output (CLIP), else the text tower's
        pooled output (SigLIP's `projection_size` head, or its hidden size)."""
        if self.text_projection_dim is not None:
            return self.text_projection_dim
        return getattr(self.text_config, "projection_size", None) or self.text_config.hidden_size

    @property
    def image_size(self) -> int:
        """Input size of the SAM path (the prompt encoder's coordinate frame)."""
        return self.vision_config.image_size

    @property
    def patch_size(self) -> int:
        """Patch size of the shared encoder."""
        return self.vision_config.patch_size


def _sam_vit_b_vision(**overrides) -> dict:
    # SAM ViT-B; initializer_range 0.02 (SamVisionConfig's 1e-10 default leaves a dead encoder trained from scratch).
    base = dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=1024,
        patch_size=16,
        output_channels=256,
        num_pos_feats=128,
        window_size=14,
        global_attn_indexes=[2, 5, 8, 11],
        initializer_range=0.02,
    )
    base.update(overrides)
    return base


def _preset_samclip_vit_b16() -> SamClipConfig:
    # The paper: SAM ViT-B/16 backbone; CLIP teacher OpenCLIP ViT-L/14 (DataComp-1B), 768-d embeddings.
    text = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=768,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0,
    )
    return SamClipConfig(
        vision_config=_sam_vit_b_vision(),
        prompt_encoder_config=dict(hidden_size=256, image_size=1024, patch_size=16),
        mask_decoder_config=dict(hidden_size=256),
        text_config=text,
        head_config=dict(num_hidden_layers=3, pooling="max", projection_dim=768, image_size=224),
        text_projection_dim=768,
    )


def _preset_samclip_tiny() -> SamClipConfig:
    # For tests: every part present, a few thousand parameters each, 64 px SAM path, 32 px CLIP path.
    text = CLIPTextConfig(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        projection_dim=24,
        bos_token_id=97,
        eos_token_id=98,
        pad_token_id=1,
    )
    return SamClipConfig(
        vision_config=_sam_vit_b_vision(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=64,
            patch_size=8,
            output_channels=32,
            num_pos_feats=16,
            window_size=4,
            global_attn_indexes=[1, 3],
            mlp_dim=64,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=8, mask_input_channels=8),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=4, iou_head_hidden_dim=32),
        text_config=text,
        head_config=dict(num_hidden_layers=2, projection_dim=24, image_size=32, mlp_hidden_sizes=[48, 48]),
        text_projection_dim=24,
    )


SAMCLIP_PRESETS = {
    "samclip-vit-b16": _preset_samclip_vit_b16,
    "samclip-tiny": _preset_samclip_tiny,
}


def samclip_config_from_preset(name: str, **overrides) -> SamClipConfig:
    """Build the config of a named variant ("samclip-vit-b16": the paper; "samclip-tiny": for tests)."""
    if name not in SAMCLIP_PRESETS:
        raise ValueError(f"Unknown SAM-CLIP preset {name!r}; choose one of {sorted(SAMCLIP_PRESETS)}.")
    config = SAMCLIP_PRESETS[name]()
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


__all__ = [
    "MIN_TRANSFORMERS_VERSION",
    "SamClipConfig",
    "SamClipHeadConfig",
    "SAMCLIP_PRESETS",
    "samclip_config_from_preset",
]
