"""The CLIP teacher builder: every look in its training views, warm start onto a finer grid, batches that do not
depend on how many processes draw them, and a GPU flag that fails clearly where there is no GPU."""

import numpy as np
import pytest
import torch

from transformers_samclip.mosaic import teachers
from transformers_samclip.mosaic.clip_views import LOOK_WEIGHTS, clip_training_views
from transformers_samclip.mosaic.mosaics import item_source


def test_training_views_cover_every_look_with_the_right_labels():
    source = item_source("train")
    images, labels = clip_training_views(np.random.default_rng(0), source, 64)
    assert len(images) == len(labels) == 64 and labels.dtype == np.int64
    assert set(labels.tolist()) <= set(range(10)) and len(set(labels.tolist())) >= 5
    sizes = {image.size for image in images}
    assert (28, 28) in sizes and (64, 64) in sizes  # raw photos and item views
    assert any(w == h and w not in (28, 64) for w, h in sizes)  # square crops of mosaic items
    # The raw look is a photo on a flat background (black, its inverse, maybe tinted): most of the edge is one colour.
    raw = [np.asarray(image) for image in images if image.size == (28, 28)]
    for a in raw:
        edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
        _, counts = np.unique(edge, axis=0, return_counts=True)
        assert counts.max() > 0.5 * len(edge)
    assert sum(LOOK_WEIGHTS.values()) == pytest.approx(1.0)
    again, again_labels = clip_training_views(np.random.default_rng(0), source, 64)
    assert np.array_equal(labels, again_labels)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, again))


def test_warm_start_interpolates_the_grid_and_keeps_every_other_weight():
    from transformers import CLIPModel, CLIPTokenizer

    folder = teachers.SHIPPED_TEACHERS_DIR / "clip"
    model = CLIPModel(teachers.tiny_clip_config(CLIPTokenizer.from_pretrained(folder)))
    original = CLIPModel.from_pretrained(folder)
    teachers._warm_start_clip(model, folder)
    key = "vision_model.embeddings.position_embedding.weight"
    old, new = original.state_dict()[key], model.state_dict()[key]
    side = teachers.CLIP_IMAGE_SIZE // 8
    assert new.shape[0] == side * side + 1
    torch.testing.assert_close(new[0], old[0])  # the class token's position is not on the grid
    if old.shape == new.shape:
        torch.testing.assert_close(new, old)
    else:  # bilinear-like resampling keeps the grid's mean
        torch.testing.assert_close(new[1:].mean(0), old[1:].mean(0), atol=0.05, rtol=0)
    for name, value in original.state_dict().items():
        if name != key and not name.endswith("position_ids"):
            torch.testing.assert_close(model.state_dict()[name], value, msg=name)


def test_data_workers_draw_the_same_batches(tmp_path):
    options = dict(
        max_steps=2,
        minutes=None,
        batch_size=6,
        measure_every_minutes=None,
        init_from=teachers.SHIPPED_TEACHERS_DIR / "clip",
        log_every=1,
    )
    here, _, _ = teachers.train_clip(work_dir=tmp_path / "here", **options)
    workers, _, info = teachers.train_clip(work_dir=tmp_path / "workers", workers=2, **options)
    assert info["steps"] == 2
    for (name, a), b in zip(here.state_dict().items(), workers.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where no GPU exists")
def test_asking_for_a_gpu_that_is_not_there_is_one_clear_line(tmp_path, capsys):
    from transformers_samclip.cli import main

    assert main(["build-teachers", "--only", "clip", "--device", "cuda", "--output-dir", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda" in err[0] and "--device cpu" in err[0]


def test_a_learning_curve_interval_that_is_not_positive_is_one_clear_line(tmp_path, capsys):
    from transformers_samclip.cli import main

    code = main(["build-teachers", "--only", "clip", "--measure-every", "0", "--output-dir", str(tmp_path / "t")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--measure-every 0" in err[0] and "positive" in err[0]
    assert not (tmp_path / "t" / "BUILD.json").exists()
