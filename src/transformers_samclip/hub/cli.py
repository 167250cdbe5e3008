"""`samclip export`, `samclip push` and `samclip demo`."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from importlib.resources import files
from pathlib import Path

# The Space's demo/, found through the package (mapped in as transformers_samclip.demo; a wheel carries it).
DEMO_APP = Path(str(files("transformers_samclip.demo") / "app.py"))


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="model folder, Hub id, or 'mosaic' (the shipped mosaic model)")
    parser.add_argument("--results", type=Path, help="evaluation JSON of `samclip evaluate` (fills model-index)")
    parser.add_argument("--model-name", help="row of the results JSON that is this model (default: folder name)")
    parser.add_argument(
        "--base-model",
        action="append",
        dest="base_models",
        metavar="ID",
        help="a teacher's Hub id (give twice: SAM, CLIP); default: the Hub ids the model's recipe "
        "names, none for the mosaic teachers (not on the Hub)",
    )


def _export_options(args) -> dict:
    """The export options of the command line, after checking the model and `--results` before any loading."""
    from .._cli import check_model_source, check_path

    check_model_source(args.model_dir, "model_dir")
    if args.results is not None:
        check_path(args.results, "--results", "file")
    options = {"results_json": args.results, "model_name": args.model_name}
    if args.base_models:
        options["base_models"] = args.base_models
    return options


def export_main(argv=None) -> int:
    """Write a Hub-ready folder with weights, remote code, processor and model card."""
    parser = argparse.ArgumentParser(prog="samclip export", description=export_main.__doc__)
    _export_arguments(parser)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--repo-id", help="Hub id written into the card's usage snippets")
    parser.add_argument(
        "--onnx", action="store_true", help="also write ONNX graphs for onnxruntime under OUT_DIR/onnx/"
    )
    parser.add_argument(
        "--int8", action="store_true", help="also write int8 (dynamic) quantized graphs; implies --onnx"
    )
    args = parser.parse_args(argv)
    from .._cli import check_path
    from .export import export_model

    if (args.onnx or args.int8) and not all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime")):
        # A missing extra, not a bad argument: exit 1, one line that says what to install.
        print(
            "samclip export: --onnx needs onnx and onnxruntime: pip install 'transformers-samclip[onnx]'.",
            file=sys.stderr,
        )
        return 1

    check_path(args.out_dir, "out_dir", "output-folder")
    out = export_model(
        args.model_dir, args.out_dir, repo_id=args.repo_id, onnx=args.onnx, int8=args.int8, **_export_options(args)
    )
    print(f"exported to {out}")
    return 0


def push_main(argv=None) -> int:
    """Export a model and upload it to a Hub model repo."""
    parser = argparse.ArgumentParser(prog="samclip push", description=push_main.__doc__)
    _export_arguments(parser)
    parser.add_argument("repo_id")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    from .export import HubError, push_model

    try:
        url = push_model(args.model_dir, args.repo_id, private=args.private, **_export_options(args))
    except HubError as error:  # one line, already saying what failed: no exception type in front
        print(f"samclip push: {error}", file=sys.stderr)
        return 1
    print(f"pushed {args.repo_id}: {url}")
    return 0


def load_demo_app(path: Path = DEMO_APP):
    """Import the Space's `app.py` as a module."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: pass --app PATH to the Space's app.py.")
    spec = importlib.util.spec_from_file_location("samclip_demo_app", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def demo_main(argv=None) -> int:
    """Start the Gradio demo on 127.0.0.1."""
    parser = argparse.ArgumentParser(prog="samclip demo", description=demo_main.__doc__)
    parser.add_argument("--model", help="model folder or Hub id (default: $SAMCLIP_MODEL, else the mosaic model)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--app", type=Path, default=DEMO_APP, help="the Space's app.py")
    args = parser.parse_args(argv)
    from .._cli import UsageError, check_at_least, check_model_source, check_path

    check_path(args.app, "--app", "file")
    if args.model is not None:
        check_model_source(args.model, "--model")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be 1-65535; got {args.port}.")
    check_at_least("--threads", args.threads, 1)
    load_demo_app(args.app).main(model=args.model, port=args.port, share=args.share, threads=args.threads)
    return 0
