"""Importing the package adds its own pipeline tasks and leaves transformers' own task entries as they were."""

import importlib
import json
import subprocess
import sys

from transformers_samclip.pipelines import PIPELINE_TASKS, SAMCLIP_PIPELINES

SNAPSHOT = """
import json, sys
from transformers.pipelines import PIPELINE_REGISTRY

def snapshot():
    return {task: {key: repr(value) for key, value in sorted(entry.items())}
            for task, entry in PIPELINE_REGISTRY.supported_tasks.items()}

before = snapshot()
import transformers_samclip
after = snapshot()
json.dump({"before": before, "after": after}, sys.stdout)
"""


def test_import_leaves_transformers_tasks_unchanged():
    result = subprocess.run(
        [sys.executable, "-c", SNAPSHOT],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": ""},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    snapshots = json.loads(result.stdout)
    before, after = snapshots["before"], snapshots["after"]
    # transformers' own tasks: every entry (class, model classes, defaults, type) exactly as before the import.
    assert {task: after[task] for task in before} == before
    for task in ("zero-shot-image-classification", "mask-generation", "image-feature-extraction"):
        assert "transformers.pipelines." in after[task]["impl"], after[task]["impl"]
    # Only the package's own task names were added, served by its text-to-mask pipeline.
    assert set(after) - set(before) == set(PIPELINE_TASKS)
    assert all("ZeroShotImageSegmentationPipeline" in after[task]["impl"] for task in PIPELINE_TASKS)


def test_samclip_pipelines_cover_every_task_a_model_object_serves():
    from transformers.pipelines import PIPELINE_REGISTRY

    tasks = set(PIPELINE_REGISTRY.get_supported_tasks())
    assert set(SAMCLIP_PIPELINES) <= tasks
    assert {"zero-shot-image-classification", "mask-generation", "image-feature-extraction"} <= set(SAMCLIP_PIPELINES)
    # A class for transformers' own task is a subclass of transformers' class for it (same outputs, plus the view).
    for task in ("zero-shot-image-classification", "mask-generation", "image-feature-extraction"):
        module, _, name = PIPELINE_REGISTRY.supported_tasks[task]["impl"].rpartition(".")  # a dotted name
        transformers_class = getattr(importlib.import_module(module), name)
        assert issubclass(SAMCLIP_PIPELINES[task], transformers_class), task
