"""The `msk-cds` command line: one subcommand per module listed in COMMANDS.

Each command module has `add_arguments(parser)` and `run(args) -> int`; adding a command is one line here.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# (name, module, one-line help)
COMMANDS: list[tuple[str, str, str]] = [
    ("serve", "service.cmd_serve", "run the service (development server on 127.0.0.1:8080 by default)"),
    ("analytics", "service.analytics", "per card rule: shown, accepted (which suggestion), overridden (why)"),
    ("replay", "service.replay", "send request files to a running service and print the cards readably"),
]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, just that command's module is imported (`serve --production` execs gunicorn, which
    imports the app itself: importing the analytics and replay modules first would only delay the start)."""
    parser = argparse.ArgumentParser(prog="msk-cds", description="MSK imaging CDS Hooks 2.0 service")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name, help_text in COMMANDS:
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    only = argv[0] if argv and argv[0] in {name for name, _, _ in COMMANDS} else None
    args = build_parser(only).parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
