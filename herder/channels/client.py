"""A small client of the channels: publish a request, wait for its answer.

Used by `herder channel …`, the tests and `bench/channels.py`. It subscribes
to the answer's channel before it sends the request, so the answer cannot
slip by; through the Stream it also reads the kept answer, in case the
answer came while it was not listening.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from redis.asyncio import Redis

from .protocol import Keys


class NoAnswer(Exception):
    """No herder answered within the timeout."""


def new_request_id() -> str:
    return uuid.uuid4().hex


async def call(
    redis: Redis,
    prefix: str,
    verb: str,
    payload: dict[str, Any],
    *,
    timeout: float = 30.0,
    stream: bool = False,
) -> dict[str, Any]:
    """Send `payload` (it carries its `id`) as a `verb` request and return the
    answer's JSON object; `NoAnswer` after `timeout` seconds."""
    keys = Keys(prefix)
    request_id = str(payload["id"])
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(keys.reply_channel(verb, request_id))
        body = json.dumps(payload)
        if stream:
            await redis.xadd(keys.stream, {"verb": verb, "payload": body})
        else:
            await redis.publish(keys.channel(verb), body)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            message = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=min(left, 1.0)
            )
            if message is not None and message.get("type") == "message":
                answer = json.loads(message["data"])
                if isinstance(answer, dict):
                    return answer
            if stream:
                kept = await redis.get(keys.reply(verb, request_id))
                if kept is not None:
                    reply = json.loads(kept)["reply"]
                    if isinstance(reply, dict):
                        return reply
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    raise NoAnswer(f"no herder answered {verb} {request_id} within {timeout:g} s")


def script(
    image: str,
    *,
    ports: list[int] | None = None,
    name: str | None = None,
    group: str | None = None,
    files: dict[str, str] | None = None,
) -> str:
    """PyCloud's script string: the image, then a JSON object."""
    config: dict[str, Any] = {}
    if ports:
        config["ports"] = ports
    if name:
        config["name"] = name
    if group:
        config["group"] = group
    if files:
        config["files"] = files
    return f"{image}\n{json.dumps(config)}"
