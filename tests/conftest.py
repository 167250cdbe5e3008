"""Shared fixtures: tiny SAM and CLIP teachers (random weights), their merge, and a SAM-CLIP processor."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import pre_tokenizers
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    SamConfig,
    SamModel,
    SamProcessor,
)

from transformers_samclip import SamClipModel, SamClipProcessor, samclip_config_from_preset

torch.set_num_threads(1)


def make_char_tokenizer(max_length: int = 40) -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is the byte-level alphabet: every text tokenizes, ids stay small."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in alphabet + [s + "</w>" for s in alphabet]:
        vocab.setdefault(symbol, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def make_tiny_teachers(tokenizer, seed: int = 0, attn_implementation: str = "eager"):
    """A tiny `SamModel` and `CLIPModel` shaped like the `samclip-tiny` preset, with random weights."""
    preset = samclip_config_from_preset("samclip-tiny")
    torch.manual_seed(seed)
    sam_config = SamConfig(
        vision_config=preset.vision_config.to_dict(),
        prompt_encoder_config=preset.prompt_encoder_config.to_dict(),
        mask_decoder_config=preset.mask_decoder_config.to_dict(),
    )
    sam = SamModel._from_config(sam_config, attn_implementation=attn_implementation).eval()
    text = preset.text_config.to_dict()
    text.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=tokenizer.model_max_length,
    )
    clip_config = CLIPConfig(
        text_config=text,
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=24,
    )
    clip = CLIPModel._from_config(clip_config, attn_implementation=attn_implementation).eval()
    # Fresh SAM decoders output ~1e-5 logits; perturbed weights give O(1) outputs, so parity checks at 1e-5
    # compare real signals.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in (sam, clip):
            for parameter in model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return sam, clip


@pytest.fixture(scope="session")
def tokenizer():
    return make_char_tokenizer()


@pytest.fixture(scope="session")
def teachers(tokenizer):
    return make_tiny_teachers(tokenizer)


@pytest.fixture()
def merged(teachers):
    sam, clip = teachers
    return SamClipModel.from_teachers(sam, clip)


@pytest.fixture(scope="session")
def processor(tokenizer):
    return SamClipProcessor.from_sizes(tokenizer, sam_size=64, clip_size=32)


@pytest.fixture(scope="session")
def tiny_teachers(teachers, processor, tokenizer):
    """The tiny teachers as `load_mosaic_teachers()` returns the real ones: models and their processors."""
    sam, clip = teachers
    clip_processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    return {
        "sam_model": sam,
        "sam_processor": SamProcessor(image_processor=processor.image_processor),
        "clip_model": clip,
        "clip_processor": clip_processor,
    }


@pytest.fixture(scope="session")
def saved_tiny_model(tmp_path_factory, teachers, processor):
    """A folder holding the merged tiny model and its processor, as `save_pretrained` writes them."""
    folder = tmp_path_factory.mktemp("samclip-tiny")
    SamClipModel.from_teachers(*teachers).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def image():
    rng = np.random.default_rng(0)
    array = (rng.random((48, 80, 3)) * 255).astype(np.uint8)
    array[10:30, 20:50] = [250, 30, 30]
    return Image.fromarray(array)
