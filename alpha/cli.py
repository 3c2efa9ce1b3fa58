"""The ``alpha`` command line: a thin dispatcher over one module per subcommand.

Each module in ``alpha.commands`` defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Command modules keep heavy imports (torch, fastapi) inside ``run`` so that
``alpha --help`` and light commands start fast. Bad input raises ``ConfigError``, which becomes one
line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from alpha.errors import EXIT_BAD_INPUT, EXIT_SIGINT, ConfigError

# name -> module; a new subcommand is one line here plus its module.
COMMANDS: dict[str, str] = {
    "train": "alpha.commands.train",
    "sample": "alpha.commands.sample",
    "bench": "alpha.commands.bench",
    "data": "alpha.commands.data",
    "diagnose": "alpha.commands.diagnose",
    "serve": "alpha.commands.serve",
}


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="alpha", description="Train and run small GPT language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except ConfigError as exc:
        sys.stderr.write(f"alpha {args.command}: error: {exc}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return EXIT_SIGINT


if __name__ == "__main__":
    raise SystemExit(main())
