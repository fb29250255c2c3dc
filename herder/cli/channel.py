"""`herder channel create|status|remove`: a client of the Redis channels.

It publishes one request on `<prefix>.<verb>` (or adds it to the Stream
`<prefix>.requests` with `--stream`), waits for the answer and prints it as
one line of JSON. Configured by `--redis-url` (`HERDER_REDIS_URL`),
`--prefix` (`HERDER_CHANNEL_PREFIX`, default `herder`) and `--token`
(`HERDER_TOKEN`). A refusal prints `herder: <error> (code N)` and exits 1;
so does no answer within `--timeout` or an unreachable Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from ..errors import SettingsError
from ..settings import CHANNEL_PREFIX_PATTERN, check_redis_url
from .client import ClientError, read_uploads


def add_commands(commands: Any) -> None:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument("--redis-url", default=None, help="the channels' Redis (HERDER_REDIS_URL)")
    group.add_argument(
        "--prefix", default=None, help="channel prefix (HERDER_CHANNEL_PREFIX; default herder)"
    )
    group.add_argument("--token", default=None, help="your token (HERDER_TOKEN)")
    group.add_argument("--id", default=None, help="the request id (default: a new random one)")
    group.add_argument(
        "--stream", action="store_true", help="send through the Stream <prefix>.requests"
    )
    group.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer")

    channel = commands.add_parser(
        "channel", help="daemons through the Redis channels (PyCloud's API)"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    create = channel.add_parser("create", parents=[parent], help="start a daemon (a session)")
    create.add_argument("image", nargs="?", help="the image (or give --script)")
    create.add_argument(
        "-p", "--port", dest="ports", action="append", type=int, default=[], help="container port"
    )
    create.add_argument("--name", default=None, help="the daemon's name (default: from the id)")
    create.add_argument("--group", default=None, help="put the daemon in a group")
    create.add_argument(
        "-f",
        "--file",
        dest="files",
        action="append",
        default=[],
        metavar="NAME=@PATH",
        help="a text file for the data volume: NAME=@local/path, NAME=text, or @path",
    )
    create.add_argument(
        "--script", default=None, metavar="FILE", help="a PyCloud script file ('-': stdin)"
    )
    status = channel.add_parser("status", parents=[parent], help="is the session running?")
    status.add_argument("session", help="the daemon Name create answered")
    remove = channel.add_parser("remove", parents=[parent], help="stop and remove the session")
    remove.add_argument("session", help="the daemon Name create answered")
    remove.add_argument("--wipe", action="store_true", help="also delete its data")


def _payload(args: argparse.Namespace, token: str | None) -> dict[str, Any]:
    # Imported here: every `herder` command loads this module (`herder ping`
    # is the image's health check and needs no Redis client).
    from ..channels import client as channels

    payload: dict[str, Any] = {"id": args.id or channels.new_request_id()}
    if token:
        payload["token"] = token
    if args.action != "create":
        payload["session"] = args.session
        if getattr(args, "wipe", False):
            payload["wipe"] = True
        return payload
    if args.script is not None:
        if args.image or args.ports or args.name or args.group or args.files:
            raise ClientError("give --script or an image with options, not both")
        try:
            text = sys.stdin.read() if args.script == "-" else open(args.script).read()
        except OSError as exc:
            raise ClientError(f"cannot read {args.script}: {exc.strerror or exc}") from None
        payload["script"] = text
        return payload
    if not args.image:
        raise ClientError("give an image (or --script FILE)")
    files: dict[str, str] = {}
    for upload in read_uploads(args.files):
        try:
            files[upload.field] = upload.data.decode()
        except UnicodeDecodeError:
            raise ClientError(f"file {upload.field!r} is not UTF-8 text") from None
    payload["script"] = channels.script(
        args.image, ports=args.ports, name=args.name, group=args.group, files=files
    )
    return payload


async def _send(url: str, prefix: str, args: argparse.Namespace, payload: dict[str, Any]) -> int:
    from redis import exceptions as redis_errors
    from redis.asyncio import Redis

    from ..channels import client as channels

    redis = Redis.from_url(url, protocol=2, socket_connect_timeout=5)
    try:
        answer = await channels.call(
            redis, prefix, args.action, payload, timeout=args.timeout, stream=args.stream
        )
    except channels.NoAnswer as exc:
        raise ClientError(str(exc)) from None
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        raise ClientError(f"cannot reach Redis: {exc}") from None
    finally:
        await redis.aclose()
    if "error" in answer:
        print(f"herder: {answer['error']} (code {answer.get('code')})", file=sys.stderr)
        return 1
    print(json.dumps(answer))
    return 0


def main(args: argparse.Namespace, environ: Any = None) -> int:
    environ = os.environ if environ is None else environ
    url = args.redis_url or environ.get("HERDER_REDIS_URL") or ""
    prefix = args.prefix or environ.get("HERDER_CHANNEL_PREFIX") or "herder"
    token = args.token or environ.get("HERDER_TOKEN") or None
    try:
        if not url:
            raise SettingsError("HERDER_REDIS_URL: not set (give --redis-url)")
        check_redis_url(url)
        if not CHANNEL_PREFIX_PATTERN.fullmatch(prefix):
            raise SettingsError(f"HERDER_CHANNEL_PREFIX: bad value {prefix[:100]!r}")
    except SettingsError as exc:
        print(f"herder: {exc}", file=sys.stderr)
        return 2
    try:
        payload = _payload(args, token)
        return asyncio.run(_send(url, prefix, args, payload))
    except ClientError as exc:
        print(f"herder: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
