"""`samclip evaluate` on a dataset suite: the background threshold is calibrated on the suite's train split when it
declares one; a declared train split that does not load stops the run with a one-line usage error instead of
silently turning calibration off."""

import argparse

import pytest
from PIL import Image

from transformers_samclip import evaluate_cli
from transformers_samclip._cli import UsageError, run_command


def _folder(root, splits, per_split=3):
    for split in splits:
        for index in range(per_split):
            (root / split / "cat").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (40 * index, 0, 0)).save(root / split / "cat" / f"{index}.png")
    return f"imagefolder:{root}"


def _args(suite, split="test", calibration=2):
    return argparse.Namespace(suite=suite, split=split, calibration_mosaics=calibration)


def test_train_split_calibrates(tmp_path):
    suite = _folder(tmp_path, ("train", "test"))
    images = evaluate_cli._calibration_images(_args(suite))
    assert len(images) == 2


def test_no_train_split_means_no_calibration(tmp_path, capsys):
    suite = _folder(tmp_path, ("test",))
    assert evaluate_cli._calibration_images(_args(suite)) is None
    assert "no separate train split" in capsys.readouterr().out


def test_train_split_evaluated_or_zero_calibration_loads_nothing(tmp_path, monkeypatch, capsys):
    suite = _folder(tmp_path, ("train", "test"))

    def refuse(*args):
        raise AssertionError("nothing may be loaded")

    monkeypatch.setattr(evaluate_cli, "_load_suite", refuse)
    assert evaluate_cli._calibration_images(_args(suite, split="train")) is None
    assert evaluate_cli._calibration_images(_args(suite, calibration=0)) is None
    assert "--calibration-mosaics 0 to calibrate" in capsys.readouterr().out


def test_broken_train_split_is_a_usage_error(tmp_path, monkeypatch, capsys):
    suite = _folder(tmp_path, ("train", "test"))
    load = evaluate_cli._load_suite

    def broken_train(name, split):
        if split == "train":
            raise ValueError("JSON parse error: Invalid value. in row 0\n(more detail)")
        return load(name, split)

    monkeypatch.setattr(evaluate_cli, "_load_suite", broken_train)
    with pytest.raises(UsageError) as caught:
        evaluate_cli._calibration_images(_args(suite))
    message = str(caught.value)
    assert message == (
        f"--suite {suite}: its train split (the background threshold's calibration images) does not load "
        "(ValueError: JSON parse error: Invalid value. in row 0); fix it, or pass --calibration-mosaics 0 to "
        "calibrate nothing."
    )
    # Behind the command line's error boundary: exit status 2, the message as one line on stderr.
    assert run_command("evaluate", lambda argv: evaluate_cli._calibration_images(_args(suite)), []) == 2
    assert capsys.readouterr().err.strip() == f"samclip evaluate: {message}"
