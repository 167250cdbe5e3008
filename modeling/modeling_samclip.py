"""SAM-CLIP (arXiv 2310.15308): SAM's ViT-Det encoder shared by SAM's mask decoder and a CLIP head.

A `SamModel` subclass (as transformers' `SamHQModel`): SAM's prompt encoder and mask decoder as they are, SAM's
encoder layers and neck under a size-flexible encoder forward, plus a CLIP head and any text tower known to
`AutoModel` (CLIP, SigLIP). Only the CLIP head, the encoder forward and the merge are new here; the head's dense
read-outs live in `dense_readout_samclip`, the text side in `text_samclip`, and the task recipes (automatic masks,
instance and semantic segmentation) in `mask_generation_samclip`.
"""

# First, so that an older transformers fails with configuration_samclip's clear message.
from .configuration_samclip import MIN_TRANSFORMERS_VERSION  # noqa: F401, I001

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.sam.modeling_sam import (
    SamModel,
    SamPreTrainedModel,
    SamVisionEncoder,
    SamVisionLayer,
    SamVisionSdpaAttention,
)
from transformers.utils import ModelOutput
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from ._validation import (
    check_contrastive_pairs,
    check_input_ids,
    check_pixel_values,
    check_pretrained_folder,
    check_prompt_tensors,
)
from .configuration_samclip import SamClipConfig, SamClipHeadConfig
from .dense_readout_samclip import training_free_block, trunk_affinity, value_only_block

# The task recipes sit on the model (not in it), but ship with it: save_pretrained copies the model module's relative
# imports, and a model loaded as remote code finds its generator in its own module
# (`sys.modules[type(model).__module__].SamClipMaskGenerator`).
from .mask_generation_samclip import SamClipMaskGenerator, SamClipMaskGeneratorOptions
from .text_samclip import DEFAULT_TEMPLATES, build_text_tower, encode_class_names


@dataclass
class SamClipVisionEncoderOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.Tensor` of shape `(batch_size, output_channels, grid_h, grid_w)`):
        SAM image embeddings (the neck's output); `None` when the neck was skipped.
    trunk_hidden_state (`torch.Tensor` of shape `(batch_size, grid_h, grid_w, hidden_size)`):
        The ViT trunk tokens before the neck, which the CLIP head reads.
    """

    last_hidden_state: torch.Tensor | None = None
    trunk_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class SamClipOutput(ModelOutput):
    r"""
    loss (`torch.Tensor`, *optional*): CLIP contrastive loss, when `return_loss=True`.
    logits_per_image (`torch.Tensor` of shape `(image_batch_size, text_batch_size)`): scaled image-text scores.
    logits_per_text (`torch.Tensor` of shape `(text_batch_size, image_batch_size)`): their transpose.
    text_embeds (`torch.Tensor` of shape `(text_batch_size, projection_dim)`): L2-normalised text embeddings.
    image_embeds (`torch.Tensor` of shape `(batch_size, projection_dim)`): L2-normalised CLIP-head embeddings.
    iou_scores (`torch.Tensor` of shape `(batch_size, point_batch_size, num_masks)`): SAM head IoU predictions.
    pred_masks (`torch.Tensor` of shape `(batch_size, point_batch_size, num_masks, 4*grid, 4*grid)`): SAM
        low-resolution mask logits, to be post-processed by the processor.
    image_embeddings (`torch.Tensor` of shape `(batch_size, output_channels, grid, grid)`): SAM image embeddings
        of the pass (reuse them with `image_embeddings=` for more prompts).
    vision_hidden_states, vision_attentions: per-layer outputs of the shared encoder, when requested.
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    iou_scores: torch.Tensor | None = None
    pred_masks: torch.Tensor | None = None
    image_embeddings: torch.Tensor | None = None
    vision_hidden_states: tuple[torch.Tensor, ...] | None = None
    vision_attentions: tuple[torch.Tensor, ...] | None = None


def _cached(cache: dict, key, params: tuple[torch.Tensor, ...], compute):
    """`compute()`, a value derived from `params` alone, kept in `cache[key]` while the parameters keep their values
    (an optimizer step, `load_state_dict` or `.to()` changes their version, storage or dtype). Not kept when autograd
    must see it (trainable parameters with grad enabled) nor while torch.compile traces (the graph fuses it)."""
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
        return compute()
    # Inference-mode tensors cannot enter autograd later, so they are kept apart from the others.
    stamp = (torch.is_inference_mode_enabled(), *((p._version, p.data_ptr(), p.device, p.dtype) for p in params))
    hit = cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    value = compute()
    cache[key] = (stamp, value)
    return value


def _rel_pos_table(rel_pos: torch.Tensor, q_size: int, k_size: int) -> torch.Tensor:
    """`SamVisionAttention.get_rel_pos` with the same values, without its per-call host work: SAM builds the
    gather index on the CPU (on a GPU, a copy and a stream synchronisation in every layer) and interpolates even
    to the size the table already has (a no-op in value)."""
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        rel_pos = (
            F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).transpose(1, 2), size=max_rel_dist, mode="linear")
            .reshape(-1, max_rel_dist)
            .permute(1, 0)
        )
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative_coords.long()]


def _rel_pos_sdpa(attention: SamVisionSdpaAttention, hidden_states: torch.Tensor, tables) -> torch.Tensor:
    """`SamVisionSdpaAttention.forward` (same operations, so the same values) on precomputed relative-position
    tables `(table_h, table_w)` (or None): the decomposed bias is two einsums and one broadcast add written
    directly in SDPA's `(batch, heads, tokens, tokens)` layout, an additive mask its fused kernels take."""
    batch_size, height, width, _ = hidden_states.shape
    heads, tokens = attention.num_attention_heads, height * width
    qkv = attention.qkv(hidden_states).reshape(batch_size, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
    query, key, value = qkv.reshape(3, batch_size * heads, tokens, -1).unbind(0)
    bias = None
    if tables is not None:
        table_h, table_w = tables
        grid_query = query.reshape(batch_size * heads, height, width, -1)
        # einsum returns permuted views, and a broadcast add of permuted inputs allocates a permuted output that
        # the reshape must then copy whole (tokens^2 per head: SAM's largest copy at 1024 px). Made contiguous
        # first (tokens x grid), the add writes the bias once, in SDPA's layout.
        rel_h = torch.einsum("bhwc,hkc->bhwk", grid_query, table_h).contiguous()
        rel_w = torch.einsum("bhwc,wkc->bhwk", grid_query, table_w).contiguous()
        bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).view(batch_size, heads, tokens, tokens)
    query, key, value = (x.view(batch_size, heads, tokens, -1) for x in (query, key, value))
    output = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
    output = (
        output.view(batch_size, heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch_size, height, width, -1)
    )
    return attention.proj(output)


class SamClipVisionLayer(SamVisionLayer):
    """SAM's encoder layer (same parameters and names) without per-call work on the SDPA path: relative-position
    tables cached per token grid and parameter version, no window partition when the grid is exactly one window.
    With eager attention (attention maps) it runs SAM's own forward."""

    def __init__(self, config, window_size: int):
        super().__init__(config, window_size)
        self._rel_pos_cache = {}

    def rel_pos_tables(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The attention's relative-position tables for a `height x width` token grid, as SAM gathers them."""
        attention = self.attn
        if not attention.use_rel_pos:
            return None
        return _cached(
            self._rel_pos_cache,
            (height, width),
            (attention.rel_pos_h, attention.rel_pos_w),
            lambda: (
                _rel_pos_table(attention.rel_pos_h, height, height),
                _rel_pos_table(attention.rel_pos_w, width, width),
            ),
        )

    def value_path(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The block with its attention output replaced by its value projection (MaskCLIP's dense read-out); a
        method of the block so that a wrapper (FSDP2's `register_fsdp_forward_method`) can run it like `forward`."""
        return value_only_block(self, hidden_states)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.attn, SamVisionSdpaAttention):
            return super().forward(hidden_states)
        residual = hidden_states
        hidden_states = self.layer_norm1(hidden_states)
        height, width = hidden_states.shape[1:3]
        # A grid that is exactly one window is its own partition; partitioning would only copy it twice.
        windowed = self.window_size > 0 and (height, width) != (self.window_size, self.window_size)
        if windowed:
            hidden_states, padding_shape = self.window_partition(hidden_states, self.window_size)
        tables = self.rel_pos_tables(*hidden_states.shape[1:3])
        hidden_states = _rel_pos_sdpa(self.attn, hidden_states, tables)
        if windowed:
            hidden_states = self.window_unpartition(hidden_states, self.window_size, padding_shape, (height, width))
        hidden_states = residual + hidden_states
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class SamClipVisionEncoder(SamVisionEncoder):
    """SAM's ViT-Det encoder, run at any input size that is a multiple of the patch size (bicubic-interpolated
    absolute position embedding; windowed layers pad to the window, global layers interpolate their relative
    position tables as in SAM). Same parameters and names as `SamVisionEncoder`, so SAM weights load as is; its
    layers are `SamClipVisionLayer`s, which keep the resized tables between calls."""

    def __init__(self, config):
        super().__init__(config)
        self.layers = nn.ModuleList(
            SamClipVisionLayer(config, window_size=0 if i in config.global_attn_indexes else config.window_size)
            for i in range(config.num_hidden_layers)
        )
        self._pos_embed_cache = {}
        self.post_init()

    def interpolated_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """The absolute position embedding resized to a `grid_h x grid_w` token grid (cached when frozen)."""
        pos_embed = self.pos_embed
        if pos_embed.shape[1:3] == (grid_h, grid_w):
            return pos_embed

        def resize():
            # Bicubic in fp32, as SAM resizes its tables; the result is cached, so the upcast is paid once.
            resized = F.interpolate(
                pos_embed.permute(0, 3, 1, 2).float(), size=(grid_h, grid_w), mode="bicubic", align_corners=False
            )
            return resized.to(pos_embed.dtype).permute(0, 2, 3, 1)

        return _cached(self._pos_embed_cache, (grid_h, grid_w), (pos_embed,), resize)

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, pixel_values: torch.Tensor | None = None, compute_neck: bool = True, **kwargs):
        r"""
        compute_neck (`bool`, defaults to `True`): run the neck (SAM image embeddings); the CLIP path skips it.
        """
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values.")
        pixel_values = check_pixel_values(
            pixel_values, self.config.num_channels, self.patch_embed.projection.weight.dtype
        )
        height, width = pixel_values.shape[-2:]
        patch = self.config.patch_size
        if height % patch or width % patch:
            raise ValueError(
                f"Image size {height}x{width} is not a multiple of the patch size {patch}; resize or pad the image "
                f"(SamClipProcessor does this) to a multiple of {patch}."
            )
        hidden_states = self.patch_embed.projection(pixel_values).permute(0, 2, 3, 1)
        if self.pos_embed is not None:
            hidden_states = hidden_states + self.interpolated_pos_embed(height // patch, width // patch)
        for layer_module in self.layers:
            hidden_states = layer_module(hidden_states)
        return SamClipVisionEncoderOutput(
            last_hidden_state=self.neck(hidden_states) if compute_neck else None,
            trunk_hidden_state=hidden_states,
        )


class SamClipProjector(nn.Module):
    """LayerNorm then an MLP (hidden sizes from the config) into the teacher's embedding space."""

    def __init__(self, input_size: int, config: SamClipHeadConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(input_size, eps=config.layer_norm_eps)
        sizes = [input_size, *config.mlp_hidden_sizes, config.projection_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activation = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.layer_norm(hidden_states)
        for index, layer in enumerate(self.layers):
            hidden_states = layer(hidden_states)
            if index < len(self.layers) - 1:
                hidden_states = self.activation(hidden_states)
        return hidden_states


class SamClipHead(nn.Module):
    """The CLIP head: transformer blocks shaped like SAM's last encoder layer on the trunk tokens, then pooling and
    projection (in either order, `project_before_pool`)."""

    def __init__(self, config: SamClipConfig):
        super().__init__()
        vision, head = config.vision_config, config.head_config
        last = vision.num_hidden_layers - 1
        # The blocks are copies of SAM's last layer, so they use its attention kind (global in SAM).
        self.window_size = 0 if last in vision.global_attn_indexes else vision.window_size
        self.layers = nn.ModuleList(
            SamClipVisionLayer(vision, window_size=self.window_size) for _ in range(head.num_hidden_layers)
        )
        self.projector = SamClipProjector(vision.hidden_size, head)
        self.pooling = head.pooling
        self.dense_value_layers = head.dense_value_layers
        self.dense_readout = head.dense_readout
        self.neighbourhood_sigma = head.neighbourhood_sigma
        self.project_before_pool = head.project_before_pool
        self.dense_affinity_temperature = head.dense_affinity_temperature

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pool a `(batch, h, w, dim)` token map over space."""
        flat = tokens.flatten(1, 2)
        return flat.amax(dim=1) if self.pooling == "max" else flat.mean(dim=1)

    def forward(self, trunk_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return `(head_tokens (batch, h, w, hidden), image_embedding (batch, projection_dim))`, unnormalised."""
        tokens = trunk_tokens
        for layer in self.layers:
            tokens = layer(tokens)
        if self.project_before_pool:
            embedding = self.pool(self.projector(tokens))
        else:
            embedding = self.projector(self.pool(tokens))
        return tokens, embedding

    def dense_tokens(self, trunk_tokens: torch.Tensor) -> torch.Tensor:
        """Per-patch head tokens `(batch, h, w, hidden)` before the projector, read out as `dense_readout` says
        (see `SamClipHeadConfig`): MaskCLIP's value path in the last `dense_value_layers` blocks, or one
        training-free attention (ClearCLIP, NACLIP, SCLIP) in place of the last block."""
        tokens = trunk_tokens
        if self.dense_readout == "value":
            first_special = len(self.layers) - min(self.dense_value_layers, len(self.layers))
        else:
            first_special = len(self.layers) - min(1, len(self.layers))
        for index, layer in enumerate(self.layers):
            if index < first_special:
                tokens = layer(tokens)
            elif self.dense_readout == "value":
                tokens = layer.value_path(tokens)
            else:
                tokens = training_free_block(layer, tokens, self.dense_readout, self.neighbourhood_sigma)
        return tokens

    def dense_features(self, trunk_tokens: torch.Tensor) -> torch.Tensor:
        """Per-patch embeddings in text space, `(batch, projection_dim, h, w)`, unnormalised, from `(batch, h, w,
        hidden)` trunk tokens (the projector applied to :meth:`dense_tokens`), averaged with the trunk tokens' own
        affinity when `dense_affinity_temperature` is set (then each patch's feature is L2-normalised first)."""
        features = self.projector(self.dense_tokens(trunk_tokens))
        if self.dense_affinity_temperature is not None:
            features = trunk_affinity(trunk_tokens, self.dense_affinity_temperature) @ F.normalize(
                features, dim=-1
            ).flatten(1, 2)
            features = features.unflatten(1, trunk_tokens.shape[1:3])
        return features.permute(0, 3, 1, 2)


class SamClipPreTrainedModel(SamPreTrainedModel):
    """SAM's weight initialisation and loading conventions, with SAM-CLIP's config, text tower and logit scale."""

    config: SamClipConfig
    base_model_prefix = "samclip"
    input_modalities = ("image", "text")
    _no_split_modules = [
        "SamVisionLayer",
        "SamClipVisionLayer",
        "CLIPEncoderLayer",
        "CLIPTextEmbeddings",
        "SiglipEncoderLayer",
    ]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, after checking a local folder: it exists, holds a SAM-CLIP config (not a
        CLIP or SAM one) and untruncated safetensors weights; errors name the folder or file."""
        if pretrained_model_name_or_path is not None:
            check_pretrained_folder(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        # SamModel's constructor initialises the model once before the CLIP parts exist.
        if isinstance(module, SamClipModel) and hasattr(module, "logit_scale"):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
            if module.logit_bias is not None:
                init.constant_(module.logit_bias, self.config.logit_bias_init_value)


class SamClipModel(SamClipPreTrainedModel, SamModel):
    """SAM-CLIP: one image encoder, a SAM head for promptable masks and a CLIP head for image-text tasks.

    A `SamModel` (as `SamHQModel` is one) whose encoder runs at any size and feeds a CLIP head too, plus a text tower
    (`text_model` + `text_projection` as in `CLIPModel`); the SAM parts and their parameter names are `SamModel`'s.
    Build one from two teachers with [`SamClipModel.from_teachers`]; the task recipes (automatic masks, instance and
    semantic segmentation) are `SamClipMaskGenerator`'s.
    """

    def __init__(self, config: SamClipConfig):
        config.validate_architecture()
        config.head_config.validate_architecture()
        super().__init__(config)
        # What differs from SamModel: its encoder, with the same parameters, run at any size for the CLIP path.
        self.vision_encoder = SamClipVisionEncoder(config.vision_config)
        self.clip_head = SamClipHead(config)
        self.text_model = build_text_tower(config.text_config)
        self.text_projection = (
            nn.Linear(config.text_config.hidden_size, config.text_projection_dim, bias=False)
            if config.text_projection_dim is not None
            else None
        )
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.logit_bias = (
            nn.Parameter(torch.tensor(config.logit_bias_init_value))
            if config.logit_bias_init_value is not None
            else None
        )
        self.post_init()

    # ----------------------------------------------------------------------------------------------- encoders
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """CLIP-head features of CLIP-path pixel values, as `CLIPModel.get_image_features` in transformers 5:
        `pooler_output` is the (unnormalised) embedding in text space, `last_hidden_state` the head's tokens."""
        trunk = self.vision_encoder(pixel_values, compute_neck=False, **kwargs).trunk_hidden_state
        tokens, embedding = self.clip_head(trunk)
        return BaseModelOutputWithPooling(last_hidden_state=tokens.flatten(1, 2), pooler_output=embedding)

    def get_dense_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Per-patch CLIP-head embeddings in text space, `(batch, projection_dim, grid_h, grid_w)`, unnormalised."""
        trunk = self.vision_encoder(pixel_values, compute_neck=False).trunk_hidden_state
        return self.clip_head.dense_features(trunk)

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Text features as `CLIPModel.get_text_features`: `pooler_output` is the projected, unnormalised embedding."""
        text_config = self.config.text_config
        check_input_ids(
            input_ids, getattr(text_config, "max_position_embeddings", None), getattr(text_config, "vocab_size", None)
        )
        outputs = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, return_dict=True, **kwargs
        )
        if self.text_projection is not None:
            outputs.pooler_output = self.text_projection(outputs.pooler_output)
        return outputs

    # ------------------------------------------------------------------------------------------- SAM head
    def segment(
        self,
        image_embeddings: torch.Tensor,
        input_points: torch.Tensor | None = None,
        input_labels: torch.Tensor | None = None,
        input_boxes: torch.Tensor | None = None,
        input_masks: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run SAM's prompt encoder and mask decoder on image embeddings; returns `(pred_masks, iou_scores)`."""
        check_prompt_tensors(self.config, image_embeddings, input_points, input_labels, input_boxes, input_masks)
        if input_points is not None and input_labels is None:
            input_labels = torch.ones_like(input_points[..., 0], dtype=torch.int)
        # Embeddings and mask prompts follow the model's dtype, as pixel values do; SAM's prompt encoder casts
        # point and box coordinates itself, after normalising them (full precision until then).
        image_embeddings = image_embeddings.to(self.dtype)
        input_masks = None if input_masks is None else input_masks.to(self.dtype)
        positional = self.get_image_wide_positional_embeddings().repeat(image_embeddings.shape[0], 1, 1, 1)
        sparse, dense = self.prompt_encoder(
            input_points=input_points, input_labels=input_labels, input_boxes=input_boxes, input_masks=input_masks
        )
        masks, iou = self.mask_decoder(
            image_embeddings=image_embeddings,
            image_positional_embeddings=positional,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )
        return masks, iou

    # -------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        input_points: torch.Tensor | None = None,
        input_labels: torch.Tensor | None = None,
        input_boxes: torch.Tensor | None = None,
        input_masks: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_loss: bool = False,
        return_image_embeds: bool | None = None,
        **kwargs,
    ) -> SamClipOutput:
        r"""
        One call for every task. With `pixel_values` and no prompts, the CLIP head runs (`image_embeds`); with
        text too, `logits_per_image`/`logits_per_text`. With SAM prompts (points, boxes, masks) the SAM head runs
        (`pred_masks`, `iou_scores`) on SAM-path pixel values or on precomputed `image_embeddings`. With prompts
        and text, both heads read ONE encoder pass (the stage-3 setting); `return_image_embeds=True` asks for the
        CLIP head's embedding beside the masks without text.
        """
        has_prompts = any(x is not None for x in (input_points, input_labels, input_boxes, input_masks))
        if pixel_values is not None and image_embeddings is not None:
            raise ValueError("Pass either pixel_values or image_embeddings, not both.")
        if pixel_values is None and image_embeddings is None and input_ids is None:
            raise ValueError("Nothing to do: pass pixel_values, image_embeddings (with prompts) and/or input_ids.")
        if image_embeddings is not None and not has_prompts:
            raise ValueError("image_embeddings are only used by the SAM head: pass point, box or mask prompts too.")

        out = SamClipOutput()
        image_embeds = text_embeds = None
        if pixel_values is not None:
            pixel_values = check_pixel_values(pixel_values, self.config.vision_config.num_channels, self.dtype)
            if has_prompts and tuple(pixel_values.shape[-2:]) != (self.config.image_size,) * 2:
                raise ValueError(
                    f"SAM prompts need {self.config.image_size}x{self.config.image_size} pixel values (the SAM "
                    f"path), got {tuple(pixel_values.shape[-2:])}; use SamClipProcessor with prompts, which resizes "
                    "and pads to that size."
                )
            encoded = self.vision_encoder(pixel_values, compute_neck=has_prompts, **kwargs)
            out.vision_hidden_states, out.vision_attentions = encoded.hidden_states, encoded.attentions
            image_embeddings = encoded.last_hidden_state
            if return_image_embeds or input_ids is not None or not has_prompts:
                _, pooled = self.clip_head(encoded.trunk_hidden_state)
                image_embeds = F.normalize(pooled, dim=-1)
                out.image_embeds = image_embeds
        if has_prompts:
            out.pred_masks, out.iou_scores = self.segment(
                image_embeddings, input_points, input_labels, input_boxes, input_masks, multimask_output
            )
            out.image_embeddings = image_embeddings
        if input_ids is not None:
            text = self.get_text_features(input_ids, attention_mask=attention_mask, position_ids=position_ids)
            text_embeds = F.normalize(text.pooler_output, dim=-1)
            out.text_embeds = text_embeds
        if image_embeds is not None and text_embeds is not None:
            logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp()
            if self.logit_bias is not None:
                logits_per_text = logits_per_text + self.logit_bias
            out.logits_per_text, out.logits_per_image = logits_per_text, logits_per_text.t()
            if return_loss:
                check_contrastive_pairs(len(image_embeds), len(text_embeds))
                targets = torch.arange(len(logits_per_text), device=logits_per_text.device)
                out.loss = (
                    F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_text.t(), targets)
                ) / 2
        return out

    # ---------------------------------------------------------------------------------------------- texts
    def encode_class_names(self, class_names, tokenizer, templates=DEFAULT_TEMPLATES) -> torch.Tensor:
        """Template-averaged, L2-normalised text embeddings `(num_classes, projection_dim)` of class names."""
        return encode_class_names(self, class_names, tokenizer, templates)

    # ------------------------------------------------------------------------------------------------ merge
    @classmethod
    def from_teachers(cls, sam_model, clip_model, **head_options) -> "SamClipModel":
        """Merge a `SamModel` and a CLIP-like dual encoder (`CLIPModel`, `SiglipModel`) as the paper initialises
        SAM-CLIP: encoder, prompt encoder and mask decoder from SAM; CLIP-head blocks copied from SAM's last encoder
        layer; text tower, text projection and logit scale (and bias) from the CLIP teacher. `head_options` are
        `SamClipHeadConfig` fields (e.g. `num_hidden_layers`, `pooling`, `project_before_pool`, `image_size`)."""
        missing = [
            name
            for name in ("vision_encoder", "prompt_encoder", "mask_decoder", "shared_image_embedding")
            if not hasattr(sam_model, name)
        ]
        if missing:
            raise ValueError(f"sam_model must be a transformers SamModel; {type(sam_model).__name__} lacks {missing}.")
        if not (
            hasattr(clip_model, "text_model")
            and hasattr(clip_model, "logit_scale")
            and hasattr(clip_model, "get_image_features")
        ):
            raise ValueError(
                f"clip_model must be a dual encoder with text_model, logit_scale and get_image_features "
                f"(CLIPModel, SiglipModel); got {type(clip_model).__name__}."
            )
        sam_config, clip_config = sam_model.config, clip_model.config
        text_projection = getattr(clip_model, "text_projection", None)
        text_config = clip_config.text_config
        embed_dim = (
            text_projection.out_features
            if text_projection is not None
            else getattr(text_config, "projection_size", None) or text_config.hidden_size
        )
        if head_options.get("projection_dim", embed_dim) != embed_dim:
            raise ValueError(
                f"projection_dim={head_options['projection_dim']} does not match the CLIP teacher's embedding size "
                f"({embed_dim}); the CLIP head must output the teacher's space (leave projection_dim unset)."
            )
        patch = sam_config.vision_config.patch_size
        teacher_size = clip_config.vision_config.image_size
        head = {"projection_dim": embed_dim, "image_size": max(patch, round(teacher_size / patch) * patch)}
        head.update(head_options)
        logit_bias = getattr(clip_model, "logit_bias", None)
        try:
            config = SamClipConfig(
                vision_config=copy.deepcopy(sam_config.vision_config),
                prompt_encoder_config=copy.deepcopy(sam_config.prompt_encoder_config),
                mask_decoder_config=copy.deepcopy(sam_config.mask_decoder_config),
                text_config=copy.deepcopy(clip_config.text_config),
                head_config=SamClipHeadConfig(**head),
                text_projection_dim=text_projection.out_features if text_projection is not None else None,
                logit_scale_init_value=float(clip_model.logit_scale.detach()),
                logit_bias_init_value=float(logit_bias.detach().reshape(-1)[0]) if logit_bias is not None else None,
            )
        except (ValueError, StrictDataclassError) as error:
            # Strict config validation wraps our ValueError; surface its message alone.
            cause = error.__cause__ or error
            raise ValueError(f"These teachers cannot be merged: {cause}") from None
        config._attn_implementation = sam_config._attn_implementation
        config.vision_config._attn_implementation = sam_config.vision_config._attn_implementation
        model = cls(config).to(dtype=next(sam_model.parameters()).dtype, device=next(sam_model.parameters()).device)
        sam_state = sam_model.state_dict()
        result = model.load_state_dict(sam_state, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"SAM teacher has parameters SAM-CLIP cannot place: {result.unexpected_keys[:5]}.")
        last_layer = sam_model.vision_encoder.layers[-1].state_dict()
        for layer in model.clip_head.layers:
            layer.load_state_dict(last_layer)
        model.text_model.load_state_dict(clip_model.text_model.state_dict())
        if text_projection is not None:
            model.text_projection.load_state_dict(text_projection.state_dict())
        with torch.no_grad():
            model.logit_scale.copy_(clip_model.logit_scale.reshape(()))
            if logit_bias is not None:
                model.logit_bias.copy_(logit_bias.reshape(()))
        return model.eval() if not sam_model.training else model


__all__ = [
    "SamClipHead",
    "SamClipMaskGenerator",
    "SamClipMaskGeneratorOptions",
    "SamClipModel",
    "SamClipOutput",
    "SamClipPreTrainedModel",
    "SamClipVisionEncoder",
    "SamClipVisionLayer",
]
