"""The `msk-cds` command line: one subcommand per module listed in COMMANDS.

Each command module has `add_arguments(parser)` and `run(args) -> int`; adding a command is one line here.
A command that fails prints one line naming the problem (`msk-cds <command>: error: ...`), never a traceback;
MSK_CDS_TRACEBACK=1 shows the traceback for a bug report.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from typing import Sequence

# (name, module, one-line help)
COMMANDS: list[tuple[str, str, str]] = [
    ("serve", "service.cmd_serve", "run the service (development server on 127.0.0.1:8080 by default)"),
    ("analytics", "service.analytics", "per card rule: shown, accepted (which suggestion), overridden (why)"),
    ("replay", "service.replay", "send request files to a running service and print the cards readably"),
]
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130
_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]*@", re.IGNORECASE)


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error of the other failures (no usage block; --help has it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, just that command's module is imported (`serve --production` execs gunicorn, which
    imports the app itself: importing the analytics and replay modules first would only delay the start)."""
    parser = _Parser(prog="msk-cds", description="MSK imaging CDS Hooks 2.0 service")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name, help_text in COMMANDS:
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(_run=module.run)
    return parser


def error_line(exc: BaseException) -> str:
    """One line for the operator: what failed, without credentials (a database URL can carry a password)."""
    from service.config import ConfigError

    text = str(exc).strip()
    try:
        from sqlalchemy import exc as db_errors
    except ImportError:        # pragma: no cover - SQLAlchemy is a dependency
        db_errors = None
    if db_errors is not None and isinstance(exc, db_errors.ArgumentError):
        text = ("not a database URL (expected e.g. sqlite:///path/to/file.sqlite3 or "
                "postgresql://HOST:5432/DBNAME)")
    elif db_errors is not None and isinstance(exc, db_errors.NoSuchModuleError):
        text = "unknown database URL scheme (use sqlite:/// or postgresql://)"
    elif db_errors is not None and isinstance(exc, db_errors.DBAPIError):
        original = str(getattr(exc, "orig", None) or text).strip()
        text = f"cannot use the database: {original}"
    elif isinstance(exc, ModuleNotFoundError):
        text = f"missing module {exc.name} (for a database URL: only sqlite:/// and postgresql:// are supported)"
    elif isinstance(exc, ConfigError):
        text = f"bad configuration: {text}"
    elif isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    elif not text:
        text = exc.__class__.__name__
    first = next((line.strip() for line in text.splitlines() if line.strip()), exc.__class__.__name__)
    return _CREDENTIALS.sub(r"\g<scheme>***@", first)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    only = argv[0] if argv and argv[0] in {name for name, _, _ in COMMANDS} else None
    args = build_parser(only).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:     # noqa: BLE001 - the command line's one place that turns a failure into a line
        if os.environ.get("MSK_CDS_TRACEBACK"):
            raise
        print(f"msk-cds {args.command}: error: {error_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
