"""Atomic writes: a file or folder appears whole or not at all, so a run killed mid-write (SIGINT, SIGTERM, power)
leaves nothing half-written that the next run would trust."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def write_text_atomic(path, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return path


@contextlib.contextmanager
def atomic_files(folder, last: tuple[str, ...] = ("config.json",)):
    """Yield a temporary folder inside `folder`; when the block ends normally its files move into `folder` one by
    one (each move atomic), the `last` names last: a loader that looks for `config.json` never finds it beside
    half-written weights. On an error nothing moves."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=".saving.", dir=folder))
    try:
        yield temporary
        names = sorted(p.name for p in temporary.iterdir())
        for name in [n for n in names if n not in last] + [n for n in names if n in last]:
            os.replace(temporary / name, folder / name)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(path):
    """Yield a temporary folder beside `path`; when the block ends normally it replaces `path` (an older `path`
    is removed first), else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield temporary
        if path.exists():
            shutil.rmtree(path)
        os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
