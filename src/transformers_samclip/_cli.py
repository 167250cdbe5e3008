"""Checks and the error boundary shared by every `samclip` command module (a leaf: it imports nothing of the
package at import time, so any layer's command module can use it; `check_model_source` reads the model's own
validation layer, the bottom layer, when called).

One error boundary (`run_command`) for every job: a user error prints `samclip <command>: <message>` on stderr and
exits 2 (bad usage: an argument names a missing path or a broken recipe) or 1 (the run failed); `--debug` or
`SAMCLIP_DEBUG=1` shows the traceback instead. SIGTERM stops a run like Ctrl-C (exit 130); what a run writes is
written atomically, so the same command resumes.
"""

import os
import signal
import sys
import threading
from pathlib import Path

DEBUG_ENV = "SAMCLIP_DEBUG"


class UsageError(ValueError):
    """An argument of a command is wrong (a missing path, a broken recipe): exit status 2, checked before work."""


def check_path(path, argument: str, kind: str) -> Path:
    """Check a path argument before any heavy work; `kind` is `file` or `folder` (must exist), `output-file` or
    `output-folder` (may exist, as that kind; no parent may be a file). Raises `UsageError` naming the argument."""
    path = Path(path).expanduser()
    if kind in ("file", "folder"):
        if not path.exists():
            raise UsageError(f"{argument} {str(path)!r}: no such {kind}.")
        if (kind == "file") != path.is_file():
            raise UsageError(f"{argument} {str(path)!r} is a {'folder' if path.is_dir() else 'file'}; give a {kind}.")
        return path
    wanted_folder = kind == "output-folder"
    if path.exists() and path.is_dir() != wanted_folder:
        raise UsageError(
            f"{argument} {str(path)!r} is an existing {'folder' if path.is_dir() else 'file'}; give a "
            f"{'folder' if wanted_folder else 'file'} path."
        )
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{argument} {str(path)!r}: {str(parent)!r} is a file, not a folder.")
    return path


def check_at_least(option: str, value, minimum: int) -> None:
    """A numeric argument must be at least `minimum` (None, an unset option, passes)."""
    if value is not None and value < minimum:
        raise UsageError(f"{option} must be at least {minimum}; got {value}.")


def check_model_source(source, argument: str = "model", processor: bool = True) -> None:
    """A model argument before loading: `mosaic`, a Hub id, or an existing SAM-CLIP folder (with its processor
    files when `processor`); offline, a name that is no folder here is not looked up on the Hub."""
    if str(source) == "mosaic":
        return
    from .modeling._validation import PROCESSOR_FILES, PROCESSOR_HINT, check_pretrained_folder

    try:
        check_pretrained_folder(source)
        if processor:
            check_pretrained_folder(source, PROCESSOR_FILES, "SAM-CLIP processor", PROCESSOR_HINT)
    except (OSError, ValueError) as error:
        raise UsageError(f"{argument} {error}") from None
    if not Path(str(source)).expanduser().exists() and os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        raise UsageError(f"{argument} {str(source)!r}: no such folder here, and the Hub is offline (HF_HUB_OFFLINE).")


def _message(error: BaseException) -> str:
    # Our own errors and the file system's read well alone; anything else keeps its type as a hint.
    text = str(error).strip() or type(error).__name__
    if not isinstance(error, (ValueError, OSError, LookupError)):
        text = f"{type(error).__name__}: {text}"
    return text


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_command(command: str, function, argv) -> int:
    """Run `function(argv)` (a job's `main`) behind the error boundary; returns the exit status."""
    argv = list(argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "0") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]
    # SIGTERM (a scheduler, `kill`) unwinds like Ctrl-C, so cleanups run; signals can be set in the main thread only.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        status = function(argv)
        return status if isinstance(status, int) else 0  # some jobs return their results
    except KeyboardInterrupt:
        if debug:
            raise
        print(
            f"samclip {command}: interrupted; finished files are kept, re-run the same command to resume.",
            file=sys.stderr,
        )
        return 130
    except Exception as error:
        if debug:
            raise
        print(f"samclip {command}: {_message(error)}", file=sys.stderr)
        if isinstance(error, UsageError):
            return 2
        print(f"samclip {command}: (the traceback: add --debug or set {DEBUG_ENV}=1)", file=sys.stderr)
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
