"""The evaluation protocol's defaults live in one table (`evaluation.protocol.PROTOCOL`); every reader's default is
the table's, so that changing one place cannot leave another behind."""

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

import transformers_samclip
from transformers_samclip.evaluation import instance, prompted, recognition
from transformers_samclip.evaluation.protocol import PROTOCOL, EvaluationProtocol
from transformers_samclip.mosaic import clip_views, gallery, mosaics, teachers
from transformers_samclip.mosaic import evaluation as mosaic_evaluation


def _default(function, name):
    return inspect.signature(function).parameters[name].default


def test_the_table_holds_the_published_protocol():
    # The numbers the README's tables and the shipped results.json were measured with.
    assert dataclasses.asdict(PROTOCOL) == {
        "split": "test",
        "seed": 0,
        "num_items": 10000,
        "num_mosaics": 500,
        "calibration_mosaics": 20,
        "gallery_mosaics": 8,
        "min_visible_fraction": 0.3,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROTOCOL.num_mosaics = 1
    with pytest.raises(ValueError, match="min_visible_fraction must be in"):
        EvaluationProtocol(min_visible_fraction=1.5)
    with pytest.raises(ValueError, match="num_mosaics must be at least 0"):
        EvaluationProtocol(num_mosaics=-1)


def test_command_line_defaults_are_the_table():
    from transformers_samclip.evaluate_cli import _parser

    args = _parser().parse_args(["mosaic"])
    for field in ("split", "seed", "num_items", "num_mosaics", "calibration_mosaics"):
        assert getattr(args, field) == getattr(PROTOCOL, field), field


@pytest.mark.parametrize(
    "function", [mosaic_evaluation.evaluate_samclip_on_mosaic, mosaic_evaluation.evaluate_teachers_on_mosaic]
)
def test_mosaic_harness_defaults_are_the_table(function):
    for field in ("num_items", "num_mosaics", "seed", "calibration_mosaics"):
        assert _default(function, field) == getattr(PROTOCOL, field), (function.__name__, field)


def test_gallery_defaults_are_the_table():
    assert _default(gallery.mosaic_gallery, "num_mosaics") == PROTOCOL.gallery_mosaics
    assert _default(gallery.mosaic_gallery, "seed") == PROTOCOL.seed
    assert _default(gallery.mosaic_gallery, "calibration_mosaics") == PROTOCOL.calibration_mosaics
    assert _default(gallery.label_everything_gallery, "num_mosaics") == PROTOCOL.gallery_mosaics
    assert _default(gallery.label_everything_gallery, "seed") == PROTOCOL.seed


@pytest.mark.parametrize("function", [mosaics.make_mosaic_dataset, mosaics.iter_mosaics, mosaics.make_item_views])
def test_mosaic_builder_defaults_are_the_table(function):
    assert _default(function, "split") == PROTOCOL.split
    assert _default(function, "seed") == PROTOCOL.seed


def test_min_visible_fraction_is_the_table_everywhere():
    readers = [
        _default(prompted.evaluate_prompted_segmentation, "min_visible_fraction"),
        _default(prompted.evaluate_mask_generation_recall, "min_visible_fraction"),
        _default(recognition.evaluate_recognition, "min_visible_fraction"),
        _default(instance.instance_targets, "min_visible_fraction"),
        _default(mosaics.scene_captions, "min_visible_fraction"),
        mosaics.CAPTION_MIN_VISIBLE_FRACTION,
        clip_views.MIN_VISIBLE_FRACTION,
        teachers.MIN_VISIBLE_FRACTION,
    ]
    assert readers == [PROTOCOL.min_visible_fraction] * len(readers)


def test_no_reader_types_a_protocol_number_again():
    """A new function taking `min_visible_fraction` or `calibration_mosaics` takes its default from the table, not a
    literal (a literal equal to today's table would pass the tests above and drift later)."""
    root = Path(transformers_samclip.__file__).parent
    typed = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args.args[len(node.args.args) - len(node.args.defaults) :] + node.args.kwonlyargs
                defaults = node.args.defaults + node.args.kw_defaults
                for argument, default in zip(arguments, defaults):
                    names = ("min_visible_fraction", "calibration_mosaics")
                    if argument.arg in names and isinstance(default, ast.Constant) and default.value is not None:
                        typed.append(f"{path.relative_to(root)}:{node.lineno} {node.name}({argument.arg}=...)")
    assert not typed, "take these defaults from evaluation.protocol.PROTOCOL: " + "; ".join(typed)
