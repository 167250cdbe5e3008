"""The mosaic world's SAM-CLIP model: where the name `mosaic` finds it (your own `samclip distill` output, else the
distilled model shipped in the package), and the loader the command lines and the demo share."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from ..modeling import SamClipModel, SamClipProcessor

# Where the mosaic model is looked for: your own `samclip distill` output (relative to the working directory,
# then to the checkout), then the one shipped in the package (mosaic/distilled, with its BUILD.json).
MOSAIC_MODEL_NAME = "samclip-mosaic"
SHIPPED_MOSAIC_MODEL_DIR = Path(__file__).resolve().parent / "distilled"
MOSAIC_MODEL_DIRS = (
    Path("outputs") / MOSAIC_MODEL_NAME,
    Path(__file__).resolve().parents[3] / "outputs" / MOSAIC_MODEL_NAME,
    SHIPPED_MOSAIC_MODEL_DIR,
)


class LoadedModel(NamedTuple):
    """A model with its processor, a sentence saying what it is (for the model card), and where it came from."""

    model: SamClipModel
    processor: SamClipProcessor
    description: str
    merged_teachers: bool = False  # the not-yet-distilled fallback of `load_mosaic_model`
    folder: Path | None = None  # the local folder it came from (None for a Hub id or the merged fallback)


def load_pretrained(source: str | Path) -> LoadedModel:
    """Load a SAM-CLIP model (in eval mode) and its processor from a folder or Hub id."""
    model = SamClipModel.from_pretrained(source).eval()
    folder = Path(source) if Path(source).is_dir() else None
    return LoadedModel(model, SamClipProcessor.from_pretrained(source), f"`{source}`", folder=folder)


def load_mosaic_model() -> LoadedModel:
    """The mosaic model: your own `samclip distill` output when present, else the distilled model shipped in the
    package, else (a checkout without it) the shipped mosaic teachers merged with `SamClipModel.from_teachers`
    (the paper's initialisation, not yet distilled)."""
    for folder in MOSAIC_MODEL_DIRS:
        if (folder / "config.json").exists():
            loaded = load_pretrained(folder)
            if folder == SHIPPED_MOSAIC_MODEL_DIR:
                description = (
                    "the distilled mosaic model shipped with transformers-samclip (`samclip distill`, seed 0)"
                )
                loaded = loaded._replace(description=description)
            return loaded
    from . import load_mosaic_teachers  # through the package, where tests put their stand-in teachers

    teachers = load_mosaic_teachers()
    model = SamClipModel.from_teachers(teachers["sam_model"], teachers["clip_model"])
    processor = SamClipProcessor.from_sizes(
        teachers["clip_processor"].tokenizer,
        sam_size=model.config.image_size,
        clip_size=model.config.head_config.image_size,
    )
    return LoadedModel(
        model,
        processor,
        "No distilled mosaic model found (`samclip distill` writes outputs/samclip-mosaic): this is the "
        "shipped mosaic teachers merged with `SamClipModel.from_teachers`, whose CLIP head is not yet trained.",
        merged_teachers=True,
    )
