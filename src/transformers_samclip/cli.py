"""The `samclip` command: one entry point, one subcommand per job; each job module owns its arguments."""

import importlib
import sys

# subcommand -> (module, function, one-line help)
COMMANDS = {
    "distill": ("transformers_samclip.distillation.cli", "main", "run the two-stage distillation (default: mosaic world)"),
    "evaluate": ("transformers_samclip.evaluation.cli", "main", "evaluate a model folder or Hub id on a suite"),
    "build-teachers": ("transformers_samclip.mosaic.teachers", "main", "retrain the shipped mosaic-world teachers"),
    "export": ("transformers_samclip.hub.cli", "export_main", "write a Hub-ready folder with model card"),
    "push": ("transformers_samclip.hub.cli", "push_main", "export and upload a model to the Hub"),
    "demo": ("transformers_samclip.hub.cli", "demo_main", "start the Gradio demo on 127.0.0.1"),
}


def main(argv=None) -> int:
    """Dispatch `samclip <command> [args]` to the module that implements it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_text}" for name, (_, _, help_text) in COMMANDS.items()]
        print("usage: samclip <command> [options]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"samclip: unknown command {command!r}; choose one of {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    module_name, function_name, _ = COMMANDS[command]
    result = getattr(importlib.import_module(module_name), function_name)(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
