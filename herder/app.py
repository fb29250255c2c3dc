"""The composition root: `create_app(settings)` builds every service, wires
their hooks to each other and owns every lifetime; it reads like a table of
contents.

Cleanup contexts run in this order (and unwind in reverse): the database
and the token service, the Docker runtime, minions, daemons, the
reconciler, metering, the Redis channels (with `REDIS_URL`), golems, the
proxy's upstreams, attach sessions, the
container event log. Only this module and `herder.api` touch the app keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import AsyncIterator

from aiohttp import web

from .api import DOCS, ROUTES, keys
from .api.middleware import request_middleware, send_request_id
from .attach import AttachHub
from .channels.service import ChannelService
from .container_events import follow_events
from .daemons import DaemonService
from .golems import GolemService, render_emet
from .holds import SharedHolds
from .leadership import Leadership
from .ledger import Ledger
from .metering import Meter
from .metrics import Metrics
from .minions import MinionService
from .node import running_counts
from .peers import PeerAuth, PeerService, RelayDirectory, this_node
from .proxy.front import ProxyFront
from .proxy.upstreams import Upstreams
from .reconcile import Reconciler
from .relay import Relay
from .runtime import SwarmRuntime, make_runtime
from .settings import Settings
from .signing import instance_id, load_keypair
from .stream_limits import StreamLimits
from .tasks import owned_task
from .tickets import AttachTickets
from .tokens import TokenService

log = logging.getLogger("herder")


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[request_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = Metrics()
    app[keys.STREAMS] = StreamLimits(settings.streams_per_subject, settings.streams_total)
    app[keys.TICKETS] = AttachTickets()
    app[keys.API_DOCS] = DOCS
    # The proxy's front door for the server (`proxy_front`); owner-only
    # proxying goes through the route, which checks the token.
    app[keys.FRONT] = ProxyFront(
        settings.proxy_domain, app[keys.METRICS], enabled=not settings.proxy_require_token
    )
    app.on_response_prepare.append(send_request_id)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_runtime)
    app.cleanup_ctx.append(_minions)
    app.cleanup_ctx.append(_daemons)
    app.cleanup_ctx.append(_peers)
    app.cleanup_ctx.append(_reconciler)
    app.cleanup_ctx.append(_metering)
    app.cleanup_ctx.append(_channels)
    app[keys.RELAY] = Relay(settings.golem_wait, settings.relay_minions_per_webstrate)
    app.on_shutdown.append(_close_relay)
    app.on_shutdown.append(_end_streams)
    app.cleanup_ctx.append(_golems)
    app.cleanup_ctx.append(_upstreams)
    app.cleanup_ctx.append(_attach_hub)
    app.cleanup_ctx.append(_container_event_log)
    for routes in ROUTES:
        app.router.add_routes(routes)
    return app


def proxy_front(app: web.Application) -> ProxyFront:
    """The front door `herder.serving` puts before the app (ready while it runs)."""
    return app[keys.FRONT]


# -- shutdown hooks ---------------------------------------------------------------


async def _close_relay(app: web.Application) -> None:
    await app[keys.RELAY].shutdown()


async def _end_streams(app: web.Application) -> None:
    """At shutdown, before aiohttp waits for handlers: log follows end and
    attach sockets close (code 1001), so none holds the shutdown up."""
    app[keys.STREAMS].closing.set()
    if keys.ATTACH in app:
        await app[keys.ATTACH].close()


# -- cleanup contexts, in the order they start ------------------------------------


async def _database(app: web.Application) -> AsyncIterator[None]:
    """The ledger and the token service. On PostgreSQL, which several herders
    (a cluster's replicas) may share, credit holds and stream caps are rows
    of the ledger (`herder.holds.SharedHolds`, renewed by an owned task);
    on SQLite they stay in this process's memory."""
    settings = app[keys.SETTINGS]
    app[keys.INSTANCE] = instance_id(settings.data_dir)
    app[keys.REPLICA] = f"{socket.gethostname()}-{secrets.token_hex(4)}"
    ledger = await Ledger.open(settings.database_url)
    keypair = load_keypair(settings.data_dir)
    app[keys.LEDGER] = ledger
    app[keys.TOKENS] = TokenService(keypair, settings, ledger)
    if ledger.dialect != "postgresql":
        yield
        await ledger.close()
        return
    holds = SharedHolds(ledger, app[keys.INSTANCE], app[keys.REPLICA])
    app[keys.HOLDS] = holds
    app[keys.STREAMS].shared = holds
    try:
        async with owned_task(holds.run(), "holds"):
            yield
        with contextlib.suppress(Exception):
            await holds.close()
    finally:
        await ledger.close()


async def _runtime(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    runtime = make_runtime(settings.runtime, settings.docker_url)
    app[keys.RUNTIME] = runtime
    yield
    await runtime.close()


async def _minions(app: web.Application) -> AsyncIterator[None]:
    """The minion service and its warm pool (filled in the background; its
    waiting containers removed at shutdown). Minions a crash left behind are
    removed at start by the reconciler (`herder.reconcile`), with every
    unknown container, and stale pool containers by the pool."""
    minions = MinionService(
        app[keys.SETTINGS],
        app[keys.LEDGER],
        app[keys.RUNTIME],
        app[keys.INSTANCE],
        app[keys.METRICS],
        holds=app.get(keys.HOLDS),
    )
    app[keys.MINIONS] = minions
    app[keys.METRICS].watch_minions(minions.figures)
    await minions.pool.start()
    yield
    await minions.pool.close()


async def _daemons(app: web.Application) -> AsyncIterator[None]:
    app[keys.DAEMONS] = DaemonService(
        app[keys.SETTINGS],
        app[keys.LEDGER],
        app[keys.RUNTIME],
        app[keys.INSTANCE],
        app[keys.METRICS],
    )
    yield


async def _peers(app: web.Application) -> AsyncIterator[None]:
    """The herder-to-herder channel, with `CLUSTER_SECRET`: this replica in
    the peer registry (an owned task), exec carried to other nodes, and the
    relay's directory of golems across replicas."""
    settings = app[keys.SETTINGS]
    if not settings.cluster_secret:
        if settings.runtime == "swarm":
            log.warning(
                "no CLUSTER_SECRET: attach and exec reach only daemons on this replica's node"
            )
        yield
        return
    runtime = app[keys.RUNTIME]
    peers = PeerService(
        PeerAuth(settings.cluster_secret, app[keys.REPLICA]),
        app[keys.LEDGER],
        lambda: this_node(runtime),
        url=settings.peer_url,
        port=settings.port,
    )
    app[keys.PEERS] = peers
    app[keys.DAEMONS].remote_exec = peers.exec_on
    app[keys.RELAY_PEERS] = RelayDirectory(
        app[keys.LEDGER], peers, app[keys.INSTANCE], app[keys.RELAY]
    )
    try:
        async with owned_task(peers.run(), "peer-registry"):
            yield
    finally:
        await peers.close()


async def _channels(app: web.Application) -> AsyncIterator[None]:
    """PyCloud's Redis channels, when `REDIS_URL` is set: a second front door
    to the daemon and token services (an owned task)."""
    settings = app[keys.SETTINGS]
    if not settings.redis_url:
        yield
        return
    runtime, instance = app[keys.RUNTIME], app[keys.INSTANCE]
    service = ChannelService(
        settings,
        app[keys.DAEMONS],
        app[keys.TOKENS],
        app[keys.LEDGER],
        instance,
        app[keys.METRICS].registry,
        running=lambda: running_counts(runtime, instance),
    )
    app[keys.CHANNELS] = service
    try:
        async with owned_task(service.run(), "channels"):
            yield
    finally:
        await service.close()


async def _reconciler(app: web.Application) -> AsyncIterator[None]:
    """Reconcile the registry with Docker, then follow its events (owned task).

    Serving does not wait for it (with Docker down the herder still answers,
    `/healthz` with 503); metering does (see `Meter.run`).
    On a Swarm the replicas share the instance, and the one that holds the
    lease `meter:<instance>` (`Leadership`, renewed by an owned task)
    reconciles the services and meters; every replica sweeps its own node.
    """
    settings, ledger, runtime = app[keys.SETTINGS], app[keys.LEDGER], app[keys.RUNTIME]
    leadership = None
    if settings.runtime == "swarm":
        leadership = Leadership(ledger, f"meter:{app[keys.INSTANCE]}", app[keys.REPLICA])
    reconciler = Reconciler(
        settings,
        ledger,
        runtime,
        app[keys.INSTANCE],
        leadership=leadership,
        node_runtime=runtime.local if isinstance(runtime, SwarmRuntime) else None,
    )
    app[keys.RECONCILER] = reconciler
    async with owned_task(reconciler.run(), "reconciler"):
        if leadership is None:
            yield
            return
        async with owned_task(leadership.run(), "leadership"):
            yield
        # Given up at once: another replica leads without waiting it out.
        with contextlib.suppress(Exception):
            await leadership.release()


async def _metering(app: web.Application) -> AsyncIterator[None]:
    reconciler = app[keys.RECONCILER]
    meter = Meter(
        app[keys.SETTINGS],
        app[keys.LEDGER],
        app[keys.RUNTIME],
        app[keys.INSTANCE],
        recover=reconciler.reconcile,
        ready=reconciler.reconciled,
        leadership=reconciler.leadership,
    )
    app[keys.METER] = meter
    async with owned_task(meter.run(), "metering"):
        yield


async def _golems(app: web.Application) -> AsyncIterator[None]:
    """Needs the database, the runtime, the relay (and, in a cluster, the
    relay's directory, for whether a golem is connected to another replica)."""
    settings = app[keys.SETTINGS]
    script = await asyncio.to_thread(render_emet, settings.public_url)
    app[keys.GOLEMS] = GolemService(
        settings,
        app[keys.RUNTIME],
        app[keys.LEDGER],
        app[keys.RELAY],
        app[keys.INSTANCE],
        script,
        app[keys.METRICS],
    )
    if keys.RELAY_PEERS in app:
        app[keys.GOLEMS].connected_elsewhere = app[keys.RELAY_PEERS].elsewhere
    yield


async def _upstreams(app: web.Application) -> AsyncIterator[None]:
    """The proxy's shared upstream session lives as long as the app."""
    upstreams = Upstreams.create()
    app[keys.UPSTREAMS] = upstreams
    # A daemon that goes is forgotten at once, not when its cache entry expires.
    app[keys.DAEMONS].on_removed.append(upstreams.forget)
    app[keys.RECONCILER].on_closed.append(upstreams.forget)
    front = app[keys.FRONT]
    front.open(upstreams, app[keys.DAEMONS].running)
    yield
    front.close()
    await upstreams.close()


async def _attach_hub(app: web.Application) -> AsyncIterator[None]:
    """Attach sessions end (clients told why) before the runtime closes."""
    hub = AttachHub(app[keys.RUNTIME])
    app[keys.ATTACH] = hub
    yield
    await hub.close()


async def _container_event_log(app: web.Application) -> AsyncIterator[None]:
    """The event-following task lives as long as the app."""
    follow = follow_events(app[keys.RUNTIME], app[keys.INSTANCE])
    async with owned_task(follow, "herder-container-event-log"):
        yield
