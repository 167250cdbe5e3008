"""The evaluation protocol's defaults, written once: the command line (`samclip evaluate`), the mosaic-world harness,
its gallery, the mosaic builder and the teachers' training read them from `PROTOCOL`, so that a change here changes
every one of them (tests/test_protocol.py checks that each reader's default is this table's)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvaluationProtocol:
    """Defaults of an evaluation run.

    Args:
        split: the split evaluated (the background threshold is calibrated on `"train"`, never on it).
        seed: seed of the mosaics, item views and prompts.
        num_items: test item views for zero-shot top-1 (the whole Fashion-MNIST test split).
        num_mosaics: test mosaics for prompted, semantic and instance segmentation.
        calibration_mosaics: train mosaics (or train images of a dataset) for the background threshold.
        gallery_mosaics: test mosaics a gallery shows.
        min_visible_fraction: items less visible than this are left out of prompted segmentation, recognition and
            instance targets (a sliver of an occluded item is ambiguous); the mosaic world trains and captions with
            the same bar.
    """

    split: str = "test"
    seed: int = 0
    num_items: int = 10000
    num_mosaics: int = 500
    calibration_mosaics: int = 20
    gallery_mosaics: int = 8
    min_visible_fraction: float = 0.3

    def __post_init__(self):
        for name in ("num_items", "num_mosaics", "calibration_mosaics", "gallery_mosaics"):
            if getattr(self, name) < 0:
                raise ValueError(f"EvaluationProtocol.{name} must be at least 0; got {getattr(self, name)}.")
        if not 0.0 <= self.min_visible_fraction <= 1.0:
            raise ValueError(
                f"EvaluationProtocol.min_visible_fraction must be in [0, 1]; got {self.min_visible_fraction}."
            )


PROTOCOL = EvaluationProtocol()
