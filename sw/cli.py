"""``rdu``: the command-line entry point of minirdu.

Sub-commands register themselves in :data:`COMMANDS` from their own modules (see
``_load_commands``), so each part of the stack owns its CLI code. Every command that fails on
bad input raises :class:`UserError`; ``main`` turns it into a one-line message and exit code 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["UserError", "command", "main"]


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit status 2."""


# name -> (help, add_arguments(parser), run(args) -> int)
COMMANDS: dict[str, tuple] = {}

# Modules that define sub-commands with @command. A module that does not exist yet is skipped,
# so the CLI grows as the stack does.
_COMMAND_MODULES = [
    "sw.frontend.cli",
    "sw.runtime.cli",
    "sw.kernels.cli",
    "sw.compiler.cli",
    "sw.bench.cli",
    "sw.bitstream_cli",
]


def command(name: str, help: str):
    """Decorator: ``@command("model info", "...")`` on a function ``f(parser)`` returning run(args)."""
    def deco(fn):
        COMMANDS[name] = (help, fn)
        return fn
    return deco


def _load_commands():
    for mod in _COMMAND_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name and (mod == e.name or mod.startswith(e.name + ".")):
                continue
            raise


def build_parser() -> argparse.ArgumentParser:
    _load_commands()
    parser = argparse.ArgumentParser(
        prog="rdu", description="minirdu: a cycle-accurate RDU model with kernel looping")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name in sorted(COMMANDS):
        help_, fn = COMMANDS[name]
        parts = name.split()
        if len(parts) == 1:
            p = sub.add_parser(parts[0], help=help_, description=help_)
        else:
            head, tail = parts
            if head not in groups:
                gp = sub.add_parser(head, help=f"{head} commands")
                groups[head] = gp.add_subparsers(dest=f"{head}_cmd", metavar="SUBCOMMAND")
                gp.set_defaults(_group=gp)
            p = groups[head].add_parser(tail, help=help_, description=help_)
        p.set_defaults(_run=fn(p))
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "_run", None)
    if run is None:
        (getattr(args, "_group", None) or parser).print_help()
        return 0 if args.cmd is None else 2
    try:
        return int(run(args) or 0)
    except UserError as e:
        print(f"rdu: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rdu: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into e.g. `head`: stop quietly, as Unix tools do.
        import os
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
