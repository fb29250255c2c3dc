"""Every piece of shared application state, as typed `web.AppKey`s.

Read by the handlers (`herder.api`) and set by the composition root
(`herder.app`); the services these keys name never import this module."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from ..attach import AttachHub
    from ..channels.service import ChannelService
    from ..daemons import DaemonService
    from ..golems import GolemService
    from ..holds import SharedHolds
    from ..ledger import Ledger
    from ..metering import Meter
    from ..metrics import Metrics
    from ..minions import MinionService
    from ..openapi import Docs
    from ..peers import PeerService, RelayDirectory
    from ..proxy.front import ProxyFront
    from ..proxy.upstreams import Upstreams
    from ..reconcile import Reconciler
    from ..relay import Relay
    from ..runtime import Runtime
    from ..settings import Settings
    from ..stream_limits import StreamLimits
    from ..tickets import AttachTickets
    from ..tokens import TokenService

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
LEDGER: web.AppKey[Ledger] = web.AppKey("ledger")
RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")
TOKENS: web.AppKey[TokenService] = web.AppKey("tokens")
INSTANCE: web.AppKey[str] = web.AppKey("instance")
# This process among the replicas of one herder (leases and holds name it).
REPLICA: web.AppKey[str] = web.AppKey("replica")
HOLDS: web.AppKey[SharedHolds] = web.AppKey("holds")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")
MINIONS: web.AppKey[MinionService] = web.AppKey("minions")
RELAY: web.AppKey[Relay] = web.AppKey("relay")
GOLEMS: web.AppKey[GolemService] = web.AppKey("golems")
DAEMONS: web.AppKey[DaemonService] = web.AppKey("daemons")
METER: web.AppKey[Meter] = web.AppKey("meter")
RECONCILER: web.AppKey[Reconciler] = web.AppKey("reconciler")
UPSTREAMS: web.AppKey[Upstreams] = web.AppKey("upstreams")
FRONT: web.AppKey[ProxyFront] = web.AppKey("front")
ATTACH: web.AppKey[AttachHub] = web.AppKey("attach")
STREAMS: web.AppKey[StreamLimits] = web.AppKey("streams")
TICKETS: web.AppKey[AttachTickets] = web.AppKey("tickets")
# Every resource's OpenAPI docs (`herder.api.DOCS`), for `/openapi.json`.
API_DOCS: web.AppKey[tuple[Docs, ...]] = web.AppKey("api_docs")
CHANNELS: web.AppKey[ChannelService] = web.AppKey("channels")
# The herder-to-herder channel; only with `CLUSTER_SECRET`.
PEERS: web.AppKey[PeerService] = web.AppKey("peers")
# Which replica holds each golem control socket; only with `CLUSTER_SECRET`.
RELAY_PEERS: web.AppKey[RelayDirectory] = web.AppKey("relay_peers")
