"""``phoenix``: the one console script. Each area registers its own subcommands.

Modules are imported lazily inside each command so ``phoenix --help`` stays fast and a
subcommand never pays for another's imports (torch, ray, panel).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from phoenix import __version__


def emit_json(doc: object) -> None:
    """``--json`` contract: one JSON object on stdout and nothing else there."""
    sys.stdout.write(json.dumps(doc, separators=(",", ":"), default=str) + "\n")
    sys.stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    from capture import commands as capture_commands
    from dashboards import commands as dashboard_commands
    from fl import commands as fl_commands
    from flows import commands as flow_commands

    parser = argparse.ArgumentParser(
        prog="phoenix",
        description="Real-time IoT traffic classification (RabbitMQ + Bytewax + PyTorch, trained with Flower). "
        "Broker URL from PHOENIX_AMQP_URL (default amqp://guest:***@localhost:5672/%2F).",
    )
    parser.add_argument("--version", action="version", version=f"phoenix {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in (flow_commands.register, capture_commands.register, fl_commands.register,
                     dashboard_commands.register):
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int | None] = args.handler
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
