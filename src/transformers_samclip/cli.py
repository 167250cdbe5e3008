"""The `samclip` command: one entry point, one subcommand per job; each job module owns its arguments.

Every job runs behind one error boundary (`_cli.run_command`): a user error is one line on stderr and exit status 2
(bad usage) or 1 (the run failed); `--debug` or `SAMCLIP_DEBUG=1` shows the traceback. This module is the top layer:
it names the job modules and imports them only when their command runs.
"""

import importlib
import sys

from ._cli import DEBUG_ENV, run_command

# subcommand -> (module, function, one-line help)
COMMANDS = {
    "distill": (
        "transformers_samclip.distillation.cli",
        "main",
        "run the two-stage distillation (default: mosaic world)",
    ),
    "evaluate": ("transformers_samclip.evaluate_cli", "main", "evaluate a model folder or Hub id on a suite"),
    "build-teachers": ("transformers_samclip.mosaic.teachers", "main", "retrain the shipped mosaic-world teachers"),
    "export": ("transformers_samclip.hub.cli", "export_main", "write a Hub-ready folder with model card"),
    "push": ("transformers_samclip.hub.cli", "push_main", "export and upload a model to the Hub"),
    "demo": ("transformers_samclip.hub.cli", "demo_main", "start the Gradio demo on 127.0.0.1"),
}


def main(argv=None) -> int:
    """Dispatch `samclip <command> [args]` to the module that implements it, behind one error boundary."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_text}" for name, (_, _, help_text) in COMMANDS.items()]
        usage = (
            "usage: samclip <command> [options] [--debug]\n\ncommands:\n"
            + "\n".join(lines)
            + f"\n\n--debug (or {DEBUG_ENV}=1) shows the traceback of a failed run."
        )
        print(usage, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"samclip: unknown command {command!r}; choose one of {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    module_name, function_name, _ = COMMANDS[command]
    return run_command(command, lambda args: getattr(importlib.import_module(module_name), function_name)(args), rest)


if __name__ == "__main__":
    sys.exit(main())
