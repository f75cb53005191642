"""`tunebench`: the TUI with no arguments, the same actions as verbs for scripts.

Start-up stays light: this module imports only argparse; each verb's module imports what it needs
inside its handler, so `tunebench ls` never loads torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Each module registers its verbs (see tui/commands/__init__.py).
COMMAND_MODULES = [
    "tui.commands.presets_cmd",
    "tui.commands.data_cmd",
    "tui.commands.train_cmd",
    "tui.commands.jobs_cmd",
    "tui.commands.doctor_cmd",
    "tui.commands.chat_cmd",
    "tui.commands.ckpt_cmd",
    "tui.commands.demo_cmd",
    "tui.commands.store_cmd",
    "tui.commands.cache_cmd",
    "tui.commands.push_cmd",
    "tui.commands.compare_cmd",
    "tui.commands.samples_cmd",
    "tui.commands.probes_cmd",
    "tui.commands.wait_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunebench",
        description="A terminal workbench for fine-tuning language models. Without a verb, opens the TUI.",
    )
    parser.add_argument("--workspace", "-w", help="workspace directory (default: $TUNEBENCH_HOME or ./.tunebench)")
    parser.add_argument("--version", action="version", version=f"tunebench {_version()}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    completion = subparsers.add_parser("completion", help="print the shell completion script: bash, zsh or fish (README: Shell completion)")
    completion.add_argument("shell", choices=("bash", "zsh", "fish"))
    completion.set_defaults(handler=_completion)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a verb group not written yet
                continue
            raise
        module.register(subparsers)
    _accept_workspace_after_verb(subparsers)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tunebench")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _completion(args: argparse.Namespace) -> int:
    """argcomplete's script for the shell: it calls `tunebench` back to complete verbs and options."""
    import argcomplete

    sys.stdout.write(argcomplete.shellcode(["tunebench"], shell=args.shell))
    return 0


def _accept_workspace_after_verb(subparsers) -> None:
    """Let `tunebench VERB … -w DIR` work as well as `tunebench -w DIR VERB …`."""
    for sub in subparsers.choices.values():
        if not any("--workspace" in action.option_strings for action in sub._actions):
            # SUPPRESS: an absent option leaves the global one in place.
            sub.add_argument("--workspace", "-w", default=argparse.SUPPRESS, help="workspace directory")
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                _accept_workspace_after_verb(action)


def main(argv: list[str] | None = None) -> int:
    from jobs.workspace import PRIVATE_UMASK

    # Whatever this process writes (workspace databases with their -wal/-shm files, logs, presets,
    # checkpoints, the engine it starts) is its owner's alone; see jobs/workspace.py. Restored on
    # return for callers that run main() in-process (the tests).
    previous_umask = os.umask(PRIVATE_UMASK)
    try:
        return _main(argv)
    finally:
        os.umask(previous_umask)


def _warn_if_exposed(workspace_arg: str | None) -> None:
    from jobs.workspace import exposure_warning, resolve_workspace

    warning = exposure_warning(resolve_workspace(workspace_arg))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # a shell asking for completions (see _completion); exits when done
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    _warn_if_exposed(args.workspace)
    if args.verb is None:
        from tui.app import run_app

        return run_app(args.workspace)
    from rich.markup import escape

    from presets import TunebenchError
    from tui.commands.common import console
    from tui.format import user_message

    try:
        return args.handler(args) or 0
    except (TunebenchError, OSError) as exc:  # a file the command cannot read or write reads as its path
        console(stderr=True).print(f"[red]error:[/] {escape(user_message(exc))}")
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
