"""`ChannelService`: PyCloud's Redis API as a second front door to the daemons.

Requests come from two inputs: the pub/sub channels `<prefix>.create`,
`.status`, `.remove` (every herder hears every request), and the Stream
`<prefix>.requests`, read in one consumer group (each entry goes to one
herder and stays pending until it is acknowledged). Either way a request is
acted on once, by one herder:

1. A status or remove names a session (daemon Name); a create may name a
   daemon the caller already runs. Such a request belongs to the herder
   instance running that daemon (the shared ledger says which): the others
   stay silent (a Stream entry is passed on to the owner's inbox Stream).
   An owner that has stopped announcing itself gets a 503 reply.
2. The herder claims the request id (`SET NX` with a lease it renews while it
   works); whoever loses stays silent.
3. It calls the same `DaemonService` and `TokenService` methods the HTTP
   routes call (tokens, credits, limits and errors are the same), keeps the
   reply (a request id seen again is answered the same, never acted on
   twice) and publishes it on `<prefix>.<verb>.<request id>`.

A herder that dies mid-request leaves its claim to lapse and its Stream
entries pending; another takes them over, and a create finds the daemon its
predecessor may already have started (by name, in the ledger) instead of
starting a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from ..daemons import DaemonService
from ..errors import Conflict, HerderError, NotFound, ServiceUnavailable, Unauthorized
from ..ledger import Ledger
from ..ledger.lookup import daemon_owner, running_daemons_started_since
from ..runtime.base import LABEL_INSTANCE, LABEL_KIND, LABEL_NAME, LABEL_SUBJECT
from ..settings import Settings
from ..tokens import Claims, TokenService
from . import protocol
from .protocol import GROUP, VERBS, Dropped, Keys, Refused, Request, Verb

log = logging.getLogger("herder.channels")

RANK_INTERVAL = 5.0
ALIVE_SECONDS = 3 * RANK_INTERVAL
REPLY_SECONDS = 24 * 3600  # how long an answer is kept for requests seen again
RESEND_MS = 1000  # one herder sends a kept answer again, at most once a second
WORKERS = 16  # requests one herder acts on at once
QUEUE = 1024  # pub/sub requests waiting for a worker (more are dropped, counted)
STREAM_MAXLEN = 100_000
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 10.0
REDIS_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


@dataclass(frozen=True)
class Delivery:
    """One request as it arrived: from pub/sub, or a Stream entry to acknowledge."""

    verb: Verb
    raw: bytes
    received_ms: int  # arrival (pub/sub) or the entry's time (Stream)
    stream: str | None = None
    entry_id: str | None = None


@dataclass(frozen=True)
class _Kept:
    reply: dict[str, Any]
    at_ms: int


@dataclass(frozen=True)
class _Attempt:
    cloud: str
    since: float


class ChannelMetrics:
    """The channels' Prometheus series, in the herder's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "herder_channel_requests",
            "Channel requests answered by this herder, by verb and outcome "
            "(ok, error, again: a kept answer sent again)",
            ["verb", "outcome"],
            registry=registry,
        )
        self.dropped = Counter(
            "herder_channel_dropped",
            "Channel payloads dropped unanswered, by reason",
            ["reason"],
            registry=registry,
        )
        self.seconds = Histogram(
            "herder_channel_seconds",
            "From a channel request's arrival to its answer, by verb",
            ["verb"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=registry,
        )
        self.up = Gauge(
            "herder_redis_up", "1 while the channels' Redis connection works", registry=registry
        )
        self.reconnects = Counter(
            "herder_redis_reconnects", "Times the channels reconnected to Redis", registry=registry
        )
        for verb in VERBS:
            self.seconds.labels(verb)
            for outcome in ("ok", "error", "again"):
                self.requests.labels(verb, outcome)
        for reason in ("not_json", "no_id", "too_large", "bad_entry", "overloaded"):
            self.dropped.labels(reason)


RunningCounts = Callable[[], Awaitable[dict[str, int]]]


class ChannelService:
    """Listens on the channels and the Stream of one prefix and answers
    requests with the daemon service. `run()` is the service's lifetime."""

    def __init__(
        self,
        settings: Settings,
        daemons: DaemonService,
        tokens: TokenService,
        ledger: Ledger,
        instance: str,
        registry: CollectorRegistry,
        running: RunningCounts | None = None,
    ) -> None:
        self.settings = settings
        self.daemons = daemons
        self.tokens = tokens
        self.ledger = ledger
        self.instance = instance
        self.keys = Keys(settings.channel_prefix)
        self.metrics = ChannelMetrics(registry)
        self._running = running
        self._lease_ms = int(settings.channel_lease * 1000)
        self._redis: Redis = Redis.from_url(
            settings.redis_url,
            protocol=2,  # RESP2: the same replies from every redis-py version
            socket_connect_timeout=2,
            socket_timeout=10,
            health_check_interval=15,
            # A pooled connection Redis closed (a restart) is retried on a new one.
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
            retry_on_error=[redis_errors.ConnectionError, redis_errors.TimeoutError],
        )
        self._renew = self._redis.register_script(_RENEW)
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue(QUEUE)
        self._up = False
        self._reconnects = 0

    # -- lifetime -------------------------------------------------------------

    async def run(self) -> None:
        """Listen, read the Stream, announce, act; until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._connected(self._listen, "pub/sub"))
            tasks.create_task(self._connected(self._read_streams, "stream"))
            tasks.create_task(self._connected(self._reclaim, "reclaim"))
            tasks.create_task(self._connected(self._announce, "rank"))
            for _ in range(WORKERS):
                tasks.create_task(self._work())

    async def close(self) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self._redis.delete(self.keys.alive(self.instance))
        await self._redis.aclose()

    async def ping(self) -> None:
        """For /healthz: Redis answers (raises otherwise)."""
        await cast(Awaitable[Any], self._redis.ping())

    async def _connected(self, loop: Callable[[], Awaitable[None]], what: str) -> None:
        """Run `loop`; when Redis goes, retry with back-off (jittered, capped)."""
        delay = BACKOFF_FIRST
        while True:
            try:
                await loop()
                return
            except REDIS_ERRORS as exc:
                if self._up:
                    log.warning("channels: lost Redis (%s: %s); reconnecting", what, exc)
                self._set_up(False)
            except redis_errors.ResponseError as exc:
                log.error("channels: Redis refused a command (%s): %s", what, exc)
            except Exception:
                # A bug must not end the channels for good: logged, then retried.
                log.exception("channels: the %s loop failed; restarting it", what)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(BACKOFF_MAX, delay * 2)

    def _set_up(self, up: bool) -> None:
        if up and not self._up:
            if self._reconnects:
                self.metrics.reconnects.inc()
                log.info("channels: Redis is back")
            self._reconnects += 1
        self._up = up
        self.metrics.up.set(1 if up else 0)

    # -- inputs ---------------------------------------------------------------

    async def _listen(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(*(self.keys.channel(v) for v in VERBS))
            self._set_up(True)
            by_channel = {self.keys.channel(v).encode(): v for v in VERBS}
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None or message.get("type") != "message":
                    continue
                verb = by_channel.get(message["channel"])
                if verb is None:
                    continue
                delivery = Delivery(verb, bytes(message["data"]), _now_ms())
                try:
                    self._queue.put_nowait(delivery)
                except asyncio.QueueFull:
                    self._drop("overloaded", "more requests waiting than this herder takes")
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _ensure_groups(self, *streams: str) -> None:
        for stream in streams:
            try:
                await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except redis_errors.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _read_streams(self) -> None:
        streams = (self.keys.stream, self.keys.inbox(self.instance))
        await self._ensure_groups(*streams)
        # Our own entries left pending by a previous life of this instance first.
        start = "0"
        while True:
            # No more than the workers take at once; `put` below waits for room.
            answer = cast(
                list[Any],
                await self._redis.xreadgroup(
                    GROUP,
                    self.instance,
                    dict.fromkeys(streams, start),
                    count=WORKERS if start == ">" else QUEUE,
                    block=1000,
                ),
            )
            self._set_up(True)
            for stream, entries in answer or []:
                for entry_id, fields in entries:
                    await self._queue_entry(_text(stream), _text(entry_id), fields)
            start = ">"  # then new entries only (those pending again: `_reclaim`)

    async def _reclaim(self) -> None:
        """Take over Stream entries another herder (or a previous life) read
        but never acknowledged."""
        streams = (self.keys.stream, self.keys.inbox(self.instance))
        await self._ensure_groups(*streams)
        while True:
            await asyncio.sleep(self.settings.channel_lease)
            for stream in streams:
                answer = await self._redis.xautoclaim(
                    stream, GROUP, self.instance, 2 * self._lease_ms, "0-0", count=WORKERS
                )
                for entry_id, fields in answer[1] if len(answer) > 1 else []:
                    if fields is not None:
                        await self._queue_entry(stream, _text(entry_id), fields)

    async def _queue_entry(self, stream: str, entry_id: str, fields: dict[Any, Any]) -> None:
        verb = _text(fields.get(b"verb", b""))
        payload = fields.get(b"payload")
        if verb not in VERBS or not isinstance(payload, bytes):
            self._drop("bad_entry", f"stream entry {entry_id} has no verb and payload")
            await self._ack(stream, entry_id)
            return
        try:
            received = int(fields.get(b"at") or entry_id.split("-")[0])
        except ValueError:
            received = _now_ms()
        await self._queue.put(Delivery(verb, payload, received, stream=stream, entry_id=entry_id))

    async def _ack(self, stream: str | None, entry_id: str | None) -> None:
        if stream is not None and entry_id is not None:
            await self._redis.xack(stream, GROUP, entry_id)

    def _drop(self, reason: str, detail: str) -> None:
        self.metrics.dropped.labels(reason).inc()
        log.warning("channels: dropped a payload (%s): %s", reason, detail)

    # -- announcements --------------------------------------------------------

    async def _announce(self) -> None:
        """Every 5 s: who we are, what runs, what is free (PyCloud's rank)."""
        while True:
            rank = await self.rank()
            text = json.dumps(rank)
            await self._redis.set(self.keys.alive(self.instance), text, ex=int(ALIVE_SECONDS))
            await self._redis.publish(self.keys.rank, text)
            self._set_up(True)
            with contextlib.suppress(redis_errors.ResponseError):
                await self._redis.xtrim(self.keys.stream, maxlen=STREAM_MAXLEN, approximate=True)
            await asyncio.sleep(RANK_INTERVAL)

    async def rank(self) -> dict[str, Any]:
        running: dict[str, int] | None = None
        if self._running is not None:
            try:
                # Bounded: a rank that never comes would read as a dead herder.
                running = await asyncio.wait_for(self._running(), RANK_INTERVAL / 2)
            except Exception:
                log.warning("channels: the engine did not answer; rank without running counts")
        cpus, memory = await asyncio.to_thread(_free_resources)
        return {
            "cloud": self.instance,
            "time": round(time.time(), 3),
            "url": self.settings.public_url,
            "running": running,
            "cpus": cpus,
            "memory": memory,
        }

    # -- acting -----------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            delivery = await self._queue.get()
            try:
                await self.handle(delivery)
            except REDIS_ERRORS as exc:
                # Unacknowledged: a Stream entry is taken over later; pub/sub is lost.
                log.warning("channels: Redis failed while answering a request: %s", exc)
            except Exception:
                log.exception("channels: unexpected error while answering a request")

    async def handle(self, delivery: Delivery) -> None:
        """Answer one delivery (or stay silent when it is another herder's)."""
        try:
            request = protocol.read_request(
                delivery.verb, delivery.raw, self.settings.max_body_bytes
            )
        except Dropped as exc:
            self._drop(exc.reason, exc.detail)
            await self._ack(delivery.stream, delivery.entry_id)
            return
        except Refused as exc:
            request = Request(delivery.verb, exc.request_id, {})
            await self._answer_once(delivery, request, error=exc.error)
            return
        kept = await self._kept(request.verb, request.id)
        if kept is not None:
            await self._again(delivery, request, kept)
            return
        # A create some herder took before goes to whoever takes it over (it
        # looks for its predecessor's daemon); anything else to its owner.
        retried = request.verb == "create" and bool(
            await self._redis.exists(self.keys.attempt(request.verb, request.id))
        )
        owner = None if retried else await self._owner(request)
        if owner is not None and owner != self.instance:
            if await self._redis.exists(self.keys.alive(owner)):
                # The owner hears pub/sub itself; a Stream entry is passed on.
                if delivery.stream is not None:
                    await self._redis.xadd(
                        self.keys.inbox(owner),
                        {"verb": request.verb, "payload": delivery.raw, "at": delivery.received_ms},
                    )
                    await self._ack(delivery.stream, delivery.entry_id)
                return
            down = ServiceUnavailable(f"the session is on herder {owner}, which is not answering")
            await self._answer_once(delivery, request, error=down)
            return
        await self._answer_once(delivery, request)

    async def _owner(self, request: Request) -> str | None:
        """The instance a request belongs to; None when any herder may take it."""
        try:
            if request.verb == "create":
                return await self._create_owner(request)
            owner = await daemon_owner(self.ledger, protocol.session_of(request))
        except HerderError:
            return None  # refused by whoever takes it
        return None if owner is None else owner.instance

    async def _create_owner(self, request: Request) -> str | None:
        """A create naming a daemon the caller runs belongs to its herder
        (a spawn replaces the caller's daemon of that name, as over HTTP)."""
        script = request.body.get("script")
        if not isinstance(script, str) or request.token is None:
            return None
        try:
            name = protocol.parse_script(script, request.id).name
            claims = self.tokens.decode(request.token)
        except HerderError:
            return None
        placed = await running_daemons_started_since(self.ledger, claims.sub, name, 0)
        return placed[0].instance if placed else None

    async def _answer_once(
        self, delivery: Delivery, request: Request, error: HerderError | None = None
    ) -> None:
        """Claim the request id; the winner acts (or refuses with `error`)."""
        verb, keys = request.verb, self.keys
        claim = f"{self.instance}:{uuid.uuid4().hex[:8]}"
        if not await self._redis.set(
            keys.claim(verb, request.id), claim, nx=True, px=self._lease_ms
        ):
            return  # another herder is on it (a Stream entry stays pending)
        kept = await self._kept(verb, request.id)
        if kept is not None:  # answered between our look and our claim
            await self._again(delivery, request, kept)
            return
        await self._act(delivery, request, claim, error)

    async def _again(self, delivery: Delivery, request: Request, kept: _Kept) -> None:
        """A request seen before: the same answer again, from one herder,
        unless it was given after this request arrived (the client has it)."""
        verb, keys = request.verb, self.keys
        if kept.at_ms < delivery.received_ms and await self._redis.set(
            keys.resent(verb, request.id), self.instance, nx=True, px=RESEND_MS
        ):
            await self._redis.publish(keys.reply_channel(verb, request.id), json.dumps(kept.reply))
            self.metrics.requests.labels(verb, "again").inc()
        await self._ack(delivery.stream, delivery.entry_id)

    async def _kept(self, verb: str, request_id: str) -> _Kept | None:
        raw = await self._redis.get(self.keys.reply(verb, request_id))
        if raw is None:
            return None
        value = json.loads(raw)
        return _Kept(reply=value["reply"], at_ms=int(value["at"]))

    async def _act(
        self, delivery: Delivery, request: Request, claim: str, error: HerderError | None
    ) -> None:
        verb, keys = request.verb, self.keys
        previous_raw = await self._redis.set(
            keys.attempt(verb, request.id),
            json.dumps({"cloud": self.instance, "since": time.time()}),
            ex=REPLY_SECONDS,
            get=True,
        )
        previous = _attempt(previous_raw)
        if previous is not None:
            # Keep the first attempt's time: a successor looks for work since then.
            await self._redis.set(
                keys.attempt(verb, request.id),
                json.dumps({"cloud": previous.cloud, "since": previous.since}),
                ex=REPLY_SECONDS,
            )
            log.info("channels: taking over %s %s from %s", verb, request.id, previous.cloud)
        renewing = asyncio.create_task(self._keep_claim(keys.claim(verb, request.id), claim))
        try:
            if error is not None:
                reply, code = self._refusal(request, error), error.status
            else:
                reply, code = await self._reply(request, previous)
        except _TryLater as exc:
            # Unanswered and unacknowledged: the Stream entry comes back.
            log.info("channels: %s %s waits: %s", verb, request.id, exc)
            await self._redis.delete(keys.claim(verb, request.id))
            return
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
        if code < 500:
            kept = json.dumps({"reply": reply, "at": _now_ms()})
            await self._redis.set(keys.reply(verb, request.id), kept, ex=REPLY_SECONDS)
        else:
            # Not kept: the same id may be tried again once the fault is gone.
            await self._redis.delete(keys.claim(verb, request.id), keys.attempt(verb, request.id))
        await self._redis.publish(keys.reply_channel(verb, request.id), json.dumps(reply))
        self.metrics.requests.labels(verb, "ok" if code < 400 else "error").inc()
        self.metrics.seconds.labels(verb).observe(max(0.0, _now_ms() - delivery.received_ms) / 1e3)
        await self._ack(delivery.stream, delivery.entry_id)

    async def _keep_claim(self, key: str, claim: str) -> None:
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            with contextlib.suppress(*REDIS_ERRORS):
                await self._renew(keys=[key], args=[claim, self._lease_ms])

    def _refusal(self, request: Request, error: HerderError) -> dict[str, Any]:
        session = request.body.get("session") if request.verb != "create" else None
        return protocol.refused(
            self.instance,
            request.verb,
            error.message,
            error.status,
            session if isinstance(session, str) and protocol.SESSION.fullmatch(session) else None,
        )

    async def _reply(
        self, request: Request, previous: _Attempt | None
    ) -> tuple[dict[str, Any], int]:
        try:
            if request.token is None:
                raise Unauthorized('a token is required (the request\'s "token")')
            claims = await self.tokens.authenticate(request.token)
            if request.verb == "create":
                return await self._create(request, claims, previous), 200
            return await self._session(request, claims, taken_over=previous is not None), 200
        except HerderError as exc:
            return self._refusal(request, exc), exc.status
        except (_TryLater, *REDIS_ERRORS):
            raise
        except Exception:
            log.exception("channels: %s %s failed", request.verb, request.id)
            return self._refusal(request, HerderError("internal error")), 500

    async def _create(
        self, request: Request, claims: Claims, previous: _Attempt | None
    ) -> dict[str, Any]:
        spawn = protocol.parse_script(request.body.get("script"), request.id)
        if previous is not None:
            # The herder that took this request first may have started it.
            found = await running_daemons_started_since(
                self.ledger, claims.sub, spawn.name, int(previous.since) - 1
            )
            if found:
                daemon = found[0]
                return protocol.created(
                    daemon.instance, daemon.container_name, daemon.ports, daemon.address
                )
        try:
            spawned = await self.daemons.spawn(claims, spawn)
        except Conflict:
            # A predecessor died between making the container and recording it.
            if previous is None or not await self._remove_leftover(claims, spawn.name):
                raise
            spawned = await self.daemons.spawn(claims, spawn)
        return protocol.created(self.instance, spawned.name, spawned.ports, spawned.address)

    async def _remove_leftover(self, claims: Claims, name: str) -> bool:
        """Remove the container a dead herder made for this request and never
        recorded (its restart would remove it too). One whose herder still
        announces itself may be a spawn under way: try again later."""
        container_name = f"{name}-{claims.jti}"  # as DaemonService names it
        runtime = self.daemons.runtime
        info = await runtime.inspect(container_name)
        if info is None:
            return True
        labels = info.labels
        owner = labels.get(LABEL_INSTANCE, "")
        if (
            labels.get(LABEL_KIND) != "daemon"
            or labels.get(LABEL_SUBJECT) != claims.sub
            or labels.get(LABEL_NAME) != name
            or await self.ledger.running_workload(owner, "daemon", container_name) is not None
        ):
            return False
        if owner != self.instance and await self._redis.exists(self.keys.alive(owner)):
            raise _TryLater(f"{container_name} of herder {owner}, which still announces itself")
        log.info("channels: removing %s, left unrecorded by herder %s", container_name, owner)
        await runtime.remove(info.id)
        return True

    async def _session(
        self, request: Request, claims: Claims, *, taken_over: bool
    ) -> dict[str, Any]:
        session = protocol.session_of(request)
        owner = await daemon_owner(self.ledger, session)
        if owner is None or owner.subject != claims.sub:
            raise NotFound(f"no session {session!r}")
        if request.verb == "status":
            mine = [d for d in await self.daemons.list(claims.sub) if f"/{session}" in d["Names"]]
            running = any(d["State"] == "running" for d in mine)
            return protocol.session_status(self.instance, session, running)
        wipe = request.body.get("wipe") is True
        try:
            await self.daemons.kill(claims.sub, session, wipe=wipe)
        except NotFound:
            if not taken_over:
                raise
            # Our predecessor removed it and died before answering.
        return protocol.session_status(self.instance, session, False)


class _TryLater(Exception):
    """Not now: leave the request unanswered (a Stream entry is retried)."""


def _attempt(raw: Any) -> _Attempt | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
        return _Attempt(cloud=str(value["cloud"]), since=float(value["since"]))
    except (ValueError, KeyError, TypeError):
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _free_resources() -> tuple[float, int]:
    """Free CPUs (usable CPUs less the 1-minute load) and available memory bytes."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    memory = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                memory = int(line.split()[1]) * 1024
                break
    return round(max(0.0, usable - load), 2), memory
