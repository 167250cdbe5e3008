"""Shared fixtures: tiny SAM and CLIP teachers (random weights), their merge, and a SAM-CLIP processor; every test
runs from its own empty folder, and the name "mosaic" means the shipped model (see `shipped_mosaic_model_only`)."""

import importlib
import os
import sys
from pathlib import Path

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
    SamImageProcessorPil,
    SamModel,
    SamProcessor,
)

from transformers_samclip import SamClipModel, SamClipProcessor, samclip_config_from_preset

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
# The module whose MOSAIC_MODEL_DIRS (searched in order) and SHIPPED_MOSAIC_MODEL_DIR decide what "mosaic" loads.
MOSAIC_RESOLUTION_MODULE = "transformers_samclip.mosaic.model"
# Run first in a child process that resolves "mosaic": the shipped model only, as in this process.
PIN_SHIPPED_MOSAIC_MODEL = (
    f"import {MOSAIC_RESOLUTION_MODULE} as _resolution\n"
    "_resolution.MOSAIC_MODEL_DIRS = (_resolution.SHIPPED_MOSAIC_MODEL_DIR,)\n"
)
_resolution = importlib.import_module(MOSAIC_RESOLUTION_MODULE)
# What a user gets: their own outputs/samclip-mosaic (cwd, then checkout) before the shipped model.
USER_MOSAIC_MODEL_DIRS = _resolution.MOSAIC_MODEL_DIRS


def samclip_command(*args) -> list[str]:
    """`samclip ARGS` as a command line for this interpreter, with "mosaic" pinned to the shipped model."""
    run = "import sys\nfrom transformers_samclip.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return [sys.executable, "-c", PIN_SHIPPED_MOSAIC_MODEL + run, *map(str, args)]


def distill_args(recipe, output_dir, *extra) -> list[str]:
    """`samclip distill`'s arguments in the end-to-end runs: `recipe` into `output_dir`, no evaluation, 1 thread."""
    return ["--recipe", str(recipe), "--output-dir", str(output_dir), "--no-eval", "--threads", "1", *map(str, extra)]


@pytest.fixture(scope="session", autouse=True)
def shipped_mosaic_model_only():
    """The name "mosaic" resolves to the model shipped in the package, never to an outputs/samclip-mosaic that a user's
    `samclip distill` left in the working directory or the checkout (tests assert the shipped model's numbers)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_resolution, "MOSAIC_MODEL_DIRS", (_resolution.SHIPPED_MOSAIC_MODEL_DIR,))
        yield


@pytest.fixture()
def user_mosaic_resolution(monkeypatch):
    """For tests of the resolution itself: "mosaic" is looked up as users get it (their outputs first)."""
    monkeypatch.setattr(_resolution, "MOSAIC_MODEL_DIRS", USER_MOSAIC_MODEL_DIRS)
    return _resolution


@pytest.fixture(scope="session", autouse=True)
def empty_session_cwd(tmp_path_factory):
    """Session and module fixtures run from an empty folder, not from wherever pytest was started."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("session-cwd"))
        yield


@pytest.fixture(autouse=True)
def own_cwd(tmp_path_factory, monkeypatch):
    """Each test runs from its own empty folder (not its `tmp_path`, whose contents tests may count)."""
    folder = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(folder)
    return folder


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
def saved_tiny_teachers(tmp_path_factory, teachers, tokenizer):
    """The tiny teachers saved as Hub checkpoints are, each with its processor (64 px SAM, 32 px CLIP):
    `{"sam": folder, "clip": folder}`, a recipe's `teachers` entry."""
    root = tmp_path_factory.mktemp("tiny-teachers")
    sam, clip = teachers
    sam.save_pretrained(root / "sam")
    SamProcessor(
        SamImageProcessorPil(
            size={"longest_edge": 64},
            pad_size={"height": 64, "width": 64},
            mask_size={"longest_edge": 16},
            mask_pad_size={"height": 16, "width": 16},
        )
    ).save_pretrained(root / "sam")
    clip.save_pretrained(root / "clip")
    CLIPProcessor(
        CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer
    ).save_pretrained(root / "clip")
    return {"sam": str(root / "sam"), "clip": str(root / "clip")}


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
