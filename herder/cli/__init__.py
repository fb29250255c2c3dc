"""The `herder` command. Commands that need no server (`token`, `keys`, `db`,
`images`) call the same code as the server, never HTTP."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import HerderError, SettingsError
from ..settings import Settings
from . import channel, client

SETTING_FLAGS = [f.name for f in dataclasses.fields(Settings)]


def _settings_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("settings (each also HERDER_<NAME>)")
    for name in SETTING_FLAGS:
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest="setting_" + name,
            default=None,
            metavar=name.upper(),
            help=Settings.help_for(name),
        )
    return parent


def build_parser() -> argparse.ArgumentParser:
    parent = _settings_parent()
    parser = argparse.ArgumentParser(
        prog="herder", description="Herds containers: minions, daemons, golems."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("serve", parents=[parent], help="run the service")

    token = commands.add_parser("token", help="create, inspect, revoke tokens").add_subparsers(
        dest="action", required=True
    )
    create = token.add_parser(
        "create", parents=[parent], help="print a new signed token as the last line"
    )
    create.add_argument("-e", "--email", required=True)
    create.add_argument("-c", "--credits", type=int, default=None)
    create.add_argument("--ttl-days", type=float, default=365)
    inspect = token.add_parser(
        "inspect", parents=[parent], help="show a token's subject, expiry and credits"
    )
    inspect.add_argument("token")
    revoke = token.add_parser("revoke", parents=[parent], help="refuse a token from now on")
    revoke.add_argument("jti")

    keys = commands.add_parser("keys", help="the RSA key pair").add_subparsers(
        dest="action", required=True
    )
    generate = keys.add_parser(
        "generate", parents=[parent], help="write the key pair into the data dir"
    )
    generate.add_argument("--force", action="store_true", help="replace an existing key pair")

    db = commands.add_parser("db", help="the database").add_subparsers(dest="action", required=True)
    db.add_parser("upgrade", parents=[parent], help="run the migrations to head")

    images = commands.add_parser("images", help="environment images").add_subparsers(
        dest="action", required=True
    )
    build = images.add_parser("build", parents=[parent], help="build images from images/ (offline)")
    build.add_argument("names", nargs="*", metavar="ENV")
    build.add_argument("--force", action="store_true", help="rebuild images that exist")

    client.add_commands(commands)
    channel.add_commands(commands)
    return parser


def settings_from(args: argparse.Namespace, environ: Any = None) -> Settings:
    flags = {
        name: getattr(args, "setting_" + name)
        for name in SETTING_FLAGS
        if getattr(args, "setting_" + name, None) is not None
    }
    return Settings.load(flags, environ)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv, command = client.split_command(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    args.cmd = command
    if args.command == "channel":
        # A Redis client: it loads no server settings either.
        return channel.main(args)
    if args.command in client.COMMANDS:
        # Client commands talk HTTP to a herder; they load no server settings.
        try:
            return client.main(args)
        except KeyboardInterrupt:
            return 130
    # Server-side commands only: the ledger (SQLAlchemy, Alembic) takes
    # seconds to import, and `herder ping` (the image's health check) needs none of it.
    from ..ledger.migrate import SchemaBehind

    try:
        settings = settings_from(args)
        return dispatch(args, settings)
    except (SettingsError, SchemaBehind) as exc:
        print(f"herder: {exc}", file=sys.stderr)
        return 2
    except HerderError as exc:
        print(f"herder: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    command = args.command
    if command == "serve":
        from .serve import serve

        return serve(settings)
    if command == "images":
        from ..runtime.images import main_build

        return main_build(settings, list(args.names), bool(args.force))
    from . import admin

    handler = {
        ("token", "create"): admin.token_create,
        ("token", "inspect"): admin.token_inspect,
        ("token", "revoke"): admin.token_revoke,
        ("keys", "generate"): admin.keys_generate,
        ("db", "upgrade"): admin.db_upgrade,
    }[(command, args.action)]
    return asyncio.run(handler(settings, args))


if __name__ == "__main__":
    sys.exit(main())
