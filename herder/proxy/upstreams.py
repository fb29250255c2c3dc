"""The proxy's upstreams: one pooled client session to daemons, the lean
client for plain GETs and HEADs, and the cache of daemon lookups."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from ..ledger.lookup import RunningDaemon
from .lean import UpstreamPool
from .links import LinkPool

# Positive lookups are cached this long: a request burst costs one query.
# Kills and container stops drop the entry at once (wired in `herder.app`).
LOOKUP_TTL = 1.0
LOOKUP_CACHE_SIZE = 4096


@dataclass
class Upstreams:
    """The proxy's one client session to daemons (keep-alive pooled) and its
    lookup cache. Timeouts are per phase: connecting, and each read; there is
    no total, which would cut long downloads and WebSockets."""

    session: aiohttp.ClientSession
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    # Plain GETs and HEADs (most requests) go through this lean client instead.
    pool: UpstreamPool = field(default_factory=UpstreamPool)

    def __post_init__(self) -> None:
        # The front door's links (`herder.proxy.front`): small answers without a task.
        self.links = LinkPool(self.pool)
        self._cache: dict[str, tuple[float, RunningDaemon]] = {}
        self._loading: dict[str, asyncio.Future[RunningDaemon | None]] = {}
        self._timeout_for: tuple[float, float] | None = None
        self._timeout = aiohttp.ClientTimeout()

    @classmethod
    def create(cls) -> Upstreams:
        connector = aiohttp.TCPConnector(limit=1024, keepalive_timeout=30, force_close=False)
        session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # one session serves everyone: keep no cookies
            auto_decompress=False,  # bodies pass through as the daemon encoded them
            trust_env=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        return cls(session)

    @property
    def timeout(self) -> aiohttp.ClientTimeout:
        """The per-phase timeouts, built once (and again if the fields change)."""
        key = (self.connect_timeout, self.read_timeout)
        if key != self._timeout_for:
            self._timeout = aiohttp.ClientTimeout(
                total=None, connect=None, sock_connect=key[0], sock_read=key[1]
            )
            self._timeout_for = key
        return self._timeout

    def cached(self, container_name: str) -> RunningDaemon | None:
        """The daemon of that container name if the cache holds it (fresh)."""
        entry = self._cache.get(container_name)
        if entry is not None and entry[0] >= time.monotonic():
            return entry[1]
        return None

    async def lookup(
        self, container_name: str, load: Callable[[], Awaitable[RunningDaemon | None]]
    ) -> RunningDaemon | None:
        """The daemon of that container name, from the cache or `load`.

        Found daemons are cached for `LOOKUP_TTL`; concurrent misses for one
        name share a single `load`, so a burst never queues up queries.
        """
        daemon = self.cached(container_name)
        if daemon is not None:
            return daemon
        pending = self._loading.get(container_name)
        if pending is None:
            pending = asyncio.ensure_future(load())
            self._loading[container_name] = pending
            pending.add_done_callback(lambda _: self._loading.pop(container_name, None))
        daemon = await asyncio.shield(pending)
        if daemon is not None:
            self._remember(daemon)
        return daemon

    def _remember(self, daemon: RunningDaemon) -> None:
        if len(self._cache) >= LOOKUP_CACHE_SIZE:
            now = time.monotonic()
            self._cache = {k: v for k, v in self._cache.items() if v[0] >= now}
            if len(self._cache) >= LOOKUP_CACHE_SIZE:
                self._cache.clear()
        self._cache[daemon.container_name] = (time.monotonic() + LOOKUP_TTL, daemon)

    def forget(self, container_name: str) -> None:
        self._cache.pop(container_name, None)

    async def close(self) -> None:
        await self.links.close()
        await self.pool.close()
        await self.session.close()
