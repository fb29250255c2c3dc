"""Prometheus metrics (served at `GET /metrics`), and the small API other modules call.

Each app owns a `Metrics` (built in `herder.app`, handed to the services) with its own
`CollectorRegistry`, never prometheus-client's global one: tests build many
apps in one process, and two herders in one process must not share counts.

Modules record what happened through methods named for the event:

    metrics.spawned("minion", ok=True)         # a spawn finished (or failed)
    metrics.run_seconds("minion", 1.7)         # a workload ran this long
    metrics.proxied(bytes_in, bytes_out)       # one proxied request
    metrics.websocket_opened("attach") ... metrics.websocket_closed("attach")

Two values are not counted by callers but read at scrape time, so they are
right after restarts and crashes and whichever code path charged or started
what: running workloads by kind (the runtime's running containers of this
instance) and credits charged (the ledger's total of all charges).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

log = logging.getLogger("herder.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST

KINDS = ("minion", "daemon", "golem")
# Minions run for seconds, daemons and golems for minutes to days.
RUN_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"}
)


class Metrics:
    """The herder's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._spawns = Counter(
            "herder_spawns",
            "Spawns of workloads by kind and outcome (ok or failed)",
            ["kind", "outcome"],
            registry=r,
        )
        self._run_seconds = Histogram(
            "herder_run_seconds",
            "How long workloads ran, by kind",
            ["kind"],
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self._running = Gauge(
            "herder_running_workloads",
            "Workloads of this herder running now, by kind (asked of the engine at scrape time)",
            ["kind"],
            registry=r,
        )
        self._credits = _ScrapedCounter(
            "herder_credits_charged", "Credits charged to subjects (the ledger's total)"
        )
        r.register(self._credits)
        self._proxy_requests = Counter(
            "herder_proxy_requests", "Requests through the daemon proxy", registry=r
        )
        self._proxy_bytes = Counter(
            "herder_proxy_bytes",
            "Body bytes through the daemon proxy; in = from clients, out = to clients",
            ["direction"],
            registry=r,
        )
        self._websockets = Gauge(
            "herder_websockets_open", "Open WebSockets by kind", ["kind"], registry=r
        )
        self._websockets_total = Counter(
            "herder_websockets_opened", "WebSockets opened, by kind", ["kind"], registry=r
        )
        self._requests = Counter(
            "herder_http_requests",
            "HTTP requests answered, by method and status class",
            ["method", "status"],
            registry=r,
        )
        self._up = Gauge(
            "herder_engine_up", "1 when the container engine answered the last scrape", registry=r
        )
        self._minion_waits = Histogram(
            "herder_minion_queue_wait_seconds",
            "How long minion runs waited for a slot (admission control)",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self._minion_rejected = Counter(
            "herder_minion_rejected",
            "Minion runs refused (429) because the queue was full",
            registry=r,
        )
        self._minions = _MinionFigures()
        r.register(self._minions)
        # Every kind shows from the first scrape, at zero, so rate() works at once.
        for kind in KINDS:
            self._running.labels(kind)
            self._run_seconds.labels(kind)
            for outcome in ("ok", "failed"):
                self._spawns.labels(kind, outcome)
        # Children looked up once: these are counted on every request.
        self._proxy_in = self._proxy_bytes.labels("in")
        self._proxy_out = self._proxy_bytes.labels("out")
        self._request_children: dict[tuple[str, int], Counter] = {}

    # -- the API other modules call ------------------------------------------

    def spawned(self, kind: str, ok: bool) -> None:
        """A spawn of `kind` finished: `ok` False when it failed (any error)."""
        self._spawns.labels(kind, "ok" if ok else "failed").inc()

    def run_seconds(self, kind: str, seconds: float) -> None:
        """A workload of `kind` ran `seconds` (a minion's run, a daemon's life)."""
        self._run_seconds.labels(kind).observe(max(0.0, seconds))

    def minion_waited(self, seconds: float) -> None:
        """A minion run got its slot after waiting `seconds` in the queue."""
        self._minion_waits.observe(max(0.0, seconds))

    def minion_rejected(self) -> None:
        """A minion run was refused: the queue was full."""
        self._minion_rejected.inc()

    def watch_minions(self, figures: Callable[[], dict[str, Any]]) -> None:
        """Where the queue and the pools are read at scrape time
        (`MinionService.figures`)."""
        self._minions.source = figures

    def proxied(self, bytes_in: int, bytes_out: int) -> None:
        """One request went through the daemon proxy with these body sizes."""
        self._proxy_requests.inc()
        if bytes_in > 0:
            self._proxy_in.inc(bytes_in)
        if bytes_out > 0:
            self._proxy_out.inc(bytes_out)

    def websocket_opened(self, kind: str) -> None:
        """A WebSocket of `kind` (attach, proxy, golem, relay, ...) opened."""
        self._websockets.labels(kind).inc()
        self._websockets_total.labels(kind).inc()

    def websocket_closed(self, kind: str) -> None:
        """The WebSocket of `kind` closed: call once per `websocket_opened`."""
        self._websockets.labels(kind).dec()

    @contextlib.contextmanager
    def websocket(self, kind: str) -> Iterator[None]:
        """`websocket_opened` on entry, `websocket_closed` on exit."""
        self.websocket_opened(kind)
        try:
            yield
        finally:
            self.websocket_closed(kind)

    def request(self, method: str, status: int) -> None:
        """Called by the request middleware for every answer."""
        # Methods are the caller's choice: others share one label, so the
        # number of series stays bounded.
        key = (method if method in HTTP_METHODS else "other", status // 100)
        child = self._request_children.get(key)
        if child is None:
            child = self._requests.labels(key[0], f"{key[1]}xx")
            self._request_children[key] = child
        child.inc()

    def lifetime(self, kind: str, created: str) -> None:
        """`run_seconds` from a container's creation time (epoch seconds, as
        `ContainerInfo.created` carries it for listed containers) until now."""
        try:
            started = float(created)
        except ValueError:
            return
        if started > 0:
            self.run_seconds(kind, time.time() - started)

    # -- scrape ---------------------------------------------------------------

    def set_running(self, counts: dict[str, int] | None) -> None:
        """Set the running gauge from engine counts; None when the engine failed."""
        if counts is None:
            self._up.set(0)
            return
        self._up.set(1)
        for kind in set(KINDS) | set(counts):
            self._running.labels(kind).set(counts.get(kind, 0))

    def set_charged(self, total: int | None) -> None:
        """The ledger's total of credits charged; None when it could not be read."""
        if total is not None:
            self._credits.value = float(total)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def scrape(
        self,
        running_counts: Callable[[], Awaitable[dict[str, int]]],
        total_charged: Callable[[], Awaitable[int]],
    ) -> bytes:
        """The exposition, with the two values read at scrape time refreshed
        first (each left as it was when its source does not answer)."""
        try:
            counts: dict[str, int] | None = await running_counts()
        except Exception:
            log.warning("metrics: the container engine did not answer; running counts not updated")
            counts = None
        self.set_running(counts)
        try:
            charged: int | None = await total_charged()
        except Exception:
            log.warning("metrics: the database did not answer; credits charged not updated")
            charged = None
        self.set_charged(charged)
        return self.exposition()


class _MinionFigures(Collector):
    """The minion queue and the warm pools, read from the minion service at
    scrape time: `herder_minion_queue_length`, `herder_minion_running`,
    `herder_pool_ready{env}`, `herder_pool_hits_total{env}`,
    `herder_pool_misses_total{env}`."""

    def __init__(self) -> None:
        self.source: Callable[[], dict[str, Any]] | None = None

    def describe(self) -> list[Metric]:
        return self._families({})

    def collect(self) -> list[Metric]:
        return self._families(self.source() if self.source is not None else {})

    @staticmethod
    def _families(figures: dict[str, Any]) -> list[Metric]:
        queue = GaugeMetricFamily(
            "herder_minion_queue_length", "Minion runs waiting for a slot now"
        )
        queue.add_metric([], float(figures.get("Waiting", 0)))
        running = GaugeMetricFamily(
            "herder_minion_running", "Minion runs holding a slot now (admission control)"
        )
        running.add_metric([], float(figures.get("Running", 0)))
        ready = GaugeMetricFamily(
            "herder_pool_ready", "Warm minion containers waiting, by env", labels=["env"]
        )
        hits = CounterMetricFamily(
            "herder_pool_hits", "Minion runs that found a warm container, by env", labels=["env"]
        )
        misses = CounterMetricFamily(
            "herder_pool_misses",
            "Minion runs of a pooled env that found none and made their own",
            labels=["env"],
        )
        for env, pool in (figures.get("Pool") or {}).items():
            ready.add_metric([env], float(pool["Ready"]))
            hits.add_metric([env], float(pool["Hits"]))
            misses.add_metric([env], float(pool["Misses"]))
        return [queue, running, ready, hits, misses]


class _ScrapedCounter(Collector):
    """A counter whose value is read from elsewhere (the ledger) at scrape time."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.value = 0.0

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation)]

    def collect(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, value=self.value)]
