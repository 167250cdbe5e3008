"""`samclip distill` under `accelerate launch`, with two test hooks read from the environment (never in the package):

- `SAMCLIP_TEST_KEYS_DIR`: each rank appends the `__key__` of every D_CLIP and D_SAM sample it reads to
  `clip-rank{R}.txt` / `sam-rank{R}.txt` there.
- `SAMCLIP_TEST_KILL_AFTER=N`: once stage 2 has finished step N (and so written checkpoint N when N is a multiple of
  save_steps), all ranks meet at a barrier and rank 0 SIGKILLs its process group; the other ranks fail on their next
  collective and the launch ends: a kill mid-epoch, nothing saved after it.

Usage: accelerate launch ... tests/launch_with_hooks.py --recipe R --output-dir D ..."""

import os
import signal
import sys
from pathlib import Path

import torch

from transformers_samclip._cli import run_command
from transformers_samclip.distillation import SamClipDistillationTrainer
from transformers_samclip.distillation.cli import main
from transformers_samclip.distillation.data import IterableDistillationImageDataset

RANK = int(os.environ.get("RANK", "0"))


def _record_keys(directory: Path):
    iterate = IterableDistillationImageDataset.__iter__

    def recorded(self):
        with open(directory / f"{'sam' if self.masks_column else 'clip'}-rank{RANK}.txt", "a") as log:
            for item in iterate(self):
                log.write(f"{item.get('key')}\n")
                log.flush()
                yield item

    IterableDistillationImageDataset.__iter__ = recorded


def _kill_after(step: int):
    training_step = SamClipDistillationTrainer.training_step

    def killed(self, *args, **kwargs):
        if self.stage == "distillation" and self.state.global_step == step:
            torch.distributed.barrier()  # every rank is past checkpoint `step`
            if RANK == 0:
                os.killpg(os.getpgrp(), signal.SIGKILL)
            torch.distributed.barrier()  # the others wait here for the kill
        return training_step(self, *args, **kwargs)

    SamClipDistillationTrainer.training_step = killed


if __name__ == "__main__":
    if os.environ.get("SAMCLIP_TEST_KEYS_DIR"):
        _record_keys(Path(os.environ["SAMCLIP_TEST_KEYS_DIR"]))
    if os.environ.get("SAMCLIP_TEST_KILL_AFTER"):
        _kill_after(int(os.environ["SAMCLIP_TEST_KILL_AFTER"]))
    sys.exit(run_command("distill", main, sys.argv[1:]))
