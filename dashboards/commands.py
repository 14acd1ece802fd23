"""Subcommands of ``phoenix`` that belong to this area."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to the ``phoenix`` parser."""
    p = sub.add_parser(
        "dashboard", help="serve the live dashboard (panel serve dashboards/app.py)",
        description="Serve the live Panel dashboard. Broker, exchange, archive and model come from "
        "PHOENIX_AMQP_URL, PHOENIX_ALERTS_EXCHANGE, PHOENIX_ARCHIVE_DIR and PHOENIX_MODEL_PATH. "
        "Secrets are never taken on the command line: the basic-auth credentials are a JSON file "
        "and the cookie secret comes from PANEL_COOKIE_SECRET (a random one is made if unset).")
    p.add_argument("--port", type=int, default=5006, help="HTTP port (default 5006)")
    p.add_argument("--address", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1; 0.0.0.0 to expose it)")
    p.add_argument("--allow-websocket-origin", action="append", default=None, metavar="HOST[:PORT]",
                   help="public host name(s) browsers use to reach the dashboard (repeatable)")
    p.add_argument("--basic-auth", metavar="FILE",
                   help='JSON file {"user": "password", ...}: require a login (Panel basic auth)')
    p.add_argument("--show", action="store_true", help="open a browser")
    p.add_argument("panel_args", nargs=argparse.REMAINDER,
                   help="after --, more `panel serve` options (e.g. OAuth: --oauth-provider github)")
    p.set_defaults(handler=run)


def serve_command(args: argparse.Namespace) -> list[str]:
    """The ``panel serve`` command line ``phoenix dashboard`` runs."""
    cmd = [sys.executable, "-m", "panel", "serve", str(APP), "--port", str(args.port),
           "--address", args.address, "--num-procs", "1",
           # Start consuming with the server, not with the first visitor.
           "--setup", str(APP.parent / "setup.py")]
    origins = args.allow_websocket_origin or [f"{args.address}:{args.port}", f"localhost:{args.port}"]
    for origin in origins:
        cmd += ["--allow-websocket-origin", origin]
    if args.basic_auth:
        if not Path(args.basic_auth).is_file():
            raise SystemExit(f"phoenix dashboard: --basic-auth {args.basic_auth}: no such file")
        cmd += ["--basic-auth", str(Path(args.basic_auth).resolve())]
    if args.show:
        cmd.append("--show")
    extra = list(args.panel_args or [])
    if extra and extra[0] == "--":
        extra = extra[1:]
    return cmd + extra


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    needs_cookie = args.basic_auth or any(a.startswith("--oauth") for a in (args.panel_args or []))
    if needs_cookie and not env.get("PANEL_COOKIE_SECRET"):
        # Login cookies must be signed; a per-run secret only means logins do not survive a restart.
        env["PANEL_COOKIE_SECRET"] = secrets.token_urlsafe(32)
    cmd = serve_command(args)
    # exec, not a child process: Ctrl-C, SIGTERM from a supervisor or docker reach the server itself.
    os.execve(cmd[0], cmd, env)
    return 0  # not reached
