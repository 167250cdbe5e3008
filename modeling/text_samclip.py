"""SAM-CLIP's text side: the teacher's text tower built from its config, and zero-shot class embeddings averaged
over prompt templates. Ships beside the model code (imports only torch, transformers and its own files)."""

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoModel, PreTrainedModel

from ._validation import check_class_names, check_templates

# The 80 prompt templates of CLIP's ImageNet evaluation are long; these are the compact set used by default for
# class embeddings (callers may pass CLIP's full list). The first is the zero-shot pipeline's default.
DEFAULT_TEMPLATES = (
    "This is a photo of {}.",
    "a photo of a {}.",
    "a picture of a {}.",
    "a {} on a plain background.",
)


def build_text_tower(text_config) -> PreTrainedModel:
    """The teacher's text tower class from its config: AutoModel where registered (CLIP), else the transformers
    class named after the config (SiglipTextConfig -> SiglipTextModel, which AutoModel does not map)."""
    try:
        return AutoModel.from_config(text_config)
    except ValueError:
        name = type(text_config).__name__.removesuffix("Config") + "Model"
        model_class = getattr(transformers, name, None)
        if model_class is None:
            raise ValueError(
                f"No text model class for {type(text_config).__name__}; expected transformers.{name}."
            ) from None
        return model_class._from_config(text_config)


@torch.no_grad()
def encode_class_names(model, class_names, tokenizer, templates=DEFAULT_TEMPLATES) -> torch.Tensor:
    """Zero-shot class embeddings `(num_classes, dim)` from any dual encoder with `get_text_features` (SAM-CLIP,
    CLIP, SigLIP): each class is the mean of its L2-normalised template embeddings, renormalised, as in CLIP's
    zero-shot evaluation. `class_names` is a list (or one comma-separated string); `templates` one template string
    or a list, each with one `{}`."""
    class_names = check_class_names(class_names)
    templates = check_templates(templates)
    prompts = [template.format(name) for name in class_names for template in templates]
    max_length = getattr(model.config.text_config, "max_position_embeddings", None)
    tokens = tokenizer(
        prompts, padding=True, truncation=max_length is not None, max_length=max_length, return_tensors="pt"
    )
    tokens = {k: v.to(model.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
    embeds = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
    embeds = embeds.reshape(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(embeds, dim=-1)


__all__ = ["DEFAULT_TEMPLATES", "build_text_tower", "encode_class_names"]
