"""The CLIP head's per-patch read-outs besides its trained attention: MaskCLIP's value path, the training-free
self-similarity attentions (ClearCLIP, NACLIP, SCLIP) and the trunk-token affinity that smooths the dense map. Ships
beside the model code (imports only torch and transformers)."""

import torch
import torch.nn.functional as F
from transformers.models.sam.modeling_sam import SamVisionLayer


def trunk_affinity(trunk_tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """`(batch, h*w, h*w)` row-stochastic affinity of `(batch, h, w, dim)` tokens: softmax over j of the cosine of
    the mean-centred tokens i and j divided by `temperature` (centring removes the component all patches share, which
    would otherwise make every patch look alike)."""
    flat = trunk_tokens.flatten(1, 2)
    flat = F.normalize(flat - flat.mean(dim=1, keepdim=True), dim=-1)
    return (flat @ flat.transpose(1, 2) / temperature).softmax(dim=-1)


def value_only_block(layer: SamVisionLayer, hidden_states: torch.Tensor) -> torch.Tensor:
    """`layer` (a SAM encoder block) with its attention output replaced by its value projection (MaskCLIP)."""
    # Every patch keeps its own content: the attention mix is what pooling is trained on, not what a per-patch map
    # needs.
    attention = layer.attn
    value = attention.qkv(layer.layer_norm1(hidden_states)).unflatten(-1, (3, -1))[..., 2, :]
    hidden_states = hidden_states + attention.proj(value)
    return hidden_states + layer.mlp(layer.layer_norm2(hidden_states))


def neighbourhood_prior(height: int, width: int, sigma: float, device, dtype) -> torch.Tensor:
    """`(h*w, h*w)` Gaussian of the distance between patch centres (NACLIP's prior on attention logits)."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    centres = torch.stack([ys.flatten(), xs.flatten()], dim=-1).to(dtype)
    return torch.exp(-torch.cdist(centres, centres).square() / (2 * sigma**2))


def training_free_block(
    layer: SamVisionLayer, hidden_states: torch.Tensor, readout: str, sigma: float
) -> torch.Tensor:
    """`layer`'s projections with the self-similarity attention of `readout` ("clearclip", "sclip" or "naclip",
    whose neighbourhood prior has width `sigma`) in place of its trained attention."""
    # The block's own projections with a self-similarity attention (no relative positions, no residual, no MLP):
    # ClearCLIP/NACLIP/SCLIP find that query-query or key-key affinity keeps each patch's attention on patches
    # like it, where the trained query-key attention gathers the global context that pooling needs.
    attention = layer.attn
    batch, height, width, channels = hidden_states.shape
    heads = attention.num_attention_heads
    qkv = attention.qkv(layer.layer_norm1(hidden_states)).reshape(batch, height * width, 3, heads, -1)
    query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (batch, heads, tokens, head_dim)

    def affinity(a):
        return (a @ a.transpose(-1, -2)) * attention.scale

    if readout == "clearclip":
        weights = affinity(query).softmax(-1)
    elif readout == "sclip":
        weights = affinity(query).softmax(-1) + affinity(key).softmax(-1)
    else:  # naclip
        prior = neighbourhood_prior(height, width, sigma, hidden_states.device, hidden_states.dtype)
        weights = (affinity(key) + prior).softmax(-1)
    mixed = (weights @ value).transpose(1, 2).reshape(batch, height, width, channels)
    return attention.proj(mixed)


__all__ = ["neighbourhood_prior", "training_free_block", "trunk_affinity", "value_only_block"]
