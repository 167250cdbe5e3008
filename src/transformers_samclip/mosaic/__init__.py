"""The mosaic world: Fashion-MNIST mosaics with exact ground truth, two trained tiny teachers, the distilled model
the package ships (`model.py`), the paper's tables in miniature (`evaluation.py`), galleries and ablations. It uses
the generic `evaluation` package, never the other way round."""

# The mask geometry lives in the evaluation harness; re-exported here for code written against the mosaic world.
from ..evaluation.geometry import center_point, evaluation_points, mask_iou, mask_to_box, random_points
from .evaluation import evaluate_samclip_on_mosaic, evaluate_teachers_on_mosaic
from .fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist, load_fashion_mnist_arrays
from .gallery import label_everything_gallery, mosaic_gallery
from .model import SHIPPED_MOSAIC_MODEL_DIR, LoadedModel, load_mosaic_model
from .mosaics import (
    ItemSource,
    generate_item_view,
    generate_mosaic,
    item_source,
    iter_mosaics,
    make_item_views,
    make_mosaic_dataset,
    mosaic_features,
    scene_captions,
)

_TEACHER_NAMES = ("SHIPPED_TEACHERS_DIR", "build_teachers", "load_mosaic_teachers")


def __getattr__(name):
    # Imported on first use, so that `python -m transformers_samclip.mosaic.teachers` runs the module
    # once, not twice.
    if name in _TEACHER_NAMES:
        from . import teachers

        return getattr(teachers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LoadedModel",
    "SHIPPED_MOSAIC_MODEL_DIR",
    "evaluate_samclip_on_mosaic",
    "evaluate_teachers_on_mosaic",
    "label_everything_gallery",
    "load_mosaic_model",
    "mosaic_gallery",
    "FASHION_MNIST_CLASSES",
    "ItemSource",
    "SHIPPED_TEACHERS_DIR",
    "build_teachers",
    "center_point",
    "evaluation_points",
    "generate_item_view",
    "generate_mosaic",
    "item_source",
    "iter_mosaics",
    "load_fashion_mnist",
    "load_fashion_mnist_arrays",
    "load_mosaic_teachers",
    "make_item_views",
    "make_mosaic_dataset",
    "mask_iou",
    "mask_to_box",
    "mosaic_features",
    "scene_captions",
    "random_points",
]
