"""One log line per container event of this herder instance.

An owned task follows the runtime's event stream (containers labelled with
this instance) and logs start, die, oom, kill, destroy, ... with the
container's kind, name, subject and exit code as fields. When the stream
drops (engine restart, engine unreachable) it re-subscribes with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .runtime.base import (
    LABEL_GROUP,
    LABEL_INSTANCE,
    LABEL_KIND,
    LABEL_MANAGED,
    LABEL_NAME,
    LABEL_SUBJECT,
    Runtime,
    RuntimeEvent,
)

log = logging.getLogger("herder.containers")

# Docker also reports exec_create/exec_start/attach/resize...: noise for an operator.
LOGGED_ACTIONS = frozenset(
    {"create", "start", "restart", "die", "oom", "kill", "stop", "pause", "unpause", "destroy"}
)
MAX_BACKOFF = 30.0


def log_event(event: RuntimeEvent) -> None:
    if event.action not in LOGGED_ACTIONS:
        return
    kind = event.labels.get(LABEL_KIND, "?")
    name = event.labels.get(LABEL_NAME, "")
    fields: dict[str, object] = {
        "event": event.action,
        "container": event.id[:12],
        "kind": kind,
        "workload": name,  # `name` is taken by LogRecord
        "subject": event.labels.get(LABEL_SUBJECT, ""),
    }
    if event.labels.get(LABEL_GROUP):
        fields["group"] = event.labels[LABEL_GROUP]
    exit_note = ""
    if event.exit_code is not None:
        fields["exit_code"] = event.exit_code
        exit_note = f" exit={event.exit_code}"
    log.info(
        "container %s %s %s %s%s", event.action, kind, name, event.id[:12], exit_note, extra=fields
    )


async def follow_events(runtime: Runtime, instance: str) -> None:
    """Log the events of this instance's containers until cancelled (an owned task)."""
    labels = {LABEL_MANAGED: "1", LABEL_INSTANCE: instance}
    backoff = 1.0
    while True:
        try:
            stream = runtime.events(labels)
            async with contextlib.aclosing(stream) as events:
                async for event in events:
                    backoff = 1.0
                    log_event(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the engine went away: try again later
            if backoff == 1.0:  # once per outage, not once per retry
                log.warning("container event stream lost (%s); following again", type(exc).__name__)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF)
