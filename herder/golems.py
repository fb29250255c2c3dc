"""Golems: one headless-Chromium container per webstrate, and the emet script
(the routes are in `herder.api.golems`).

- `GET /` and `GET /golem/v1/`: the emet bootstrap script (`static/emet.js`)
  with the herder's public URL filled in.
- `GET /golem/v1/ls`: this herder's golems.
- `GET|POST /golem/v1/spawn/{webstrate}`: start the golem of a webstrate; one
  per webstrate, so spawning a running one returns it (200; a new one 201).
- `GET|POST /golem/v1/reset/{webstrate}`: replace the golem's container with a
  fresh one (a reloaded page); `.../kill/{webstrate}`: stop and remove it.

Spawns are anonymous by default, as in golem-herder; `golem_require_token`
makes spawn, reset and kill need a token, meters golems to the token's
subject (a metered row in the workload registry) and lets only that subject
reset or kill them. At most `golem_cap` golems run at once (then 429).

A golem runs the image `golem_image` as uid 1000, with all capabilities
dropped, no-new-privileges and the memory/CPU/pids limits of the
`golem_memory_mb`, `golem_cpus` and `golem_pids` settings; it opens
`<webstrates_url>/<webstrate>#herder-golem-key=<key>` (env `GOLEM_URL`): a
secret of its own, kept only as a digest label, that its control socket and
data channels present (`control_key_digest`). Its DevTools port 9222 is
published on 127.0.0.1 only, on a host port Docker assigns (`DebugPort`),
and the golem runs on the herder network (`network`), where no other
container can open a connection to it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .errors import Conflict, NoCredits, NotFound, TooManyRequests
from .keyedlocks import KeyedLocks
from .ledger import Ledger
from .metrics import Metrics
from .relay import Relay, key_digest
from .runtime import ContainerInfo, Runtime
from .runtime.base import (
    LABEL_INSTANCE,
    LABEL_JTI,
    LABEL_KIND,
    LABEL_MANAGED,
    LABEL_NAME,
    LABEL_SUBJECT,
    ServiceSpec,
)
from .settings import Settings

KIND = "golem"
DEBUG_PORT = 9222
GOLEM_USER = "1000:1000"
ANONYMOUS = "anonymous"
HERDER_URL_PLACEHOLDER = '"__HERDER_URL__"'
LIVE_STATES = ("running", "created", "restarting")
# The golem's secret: in the fragment of the page URL its Chromium opens
# (never sent to the Webstrates server), read there by the emet script; the
# container keeps only its digest, as a label, so a herder restarted later
# still knows it.
KEY_FRAGMENT = "herder-golem-key"
LABEL_KEY_DIGEST = "herder.golem-key-sha256"


@dataclass(frozen=True)
class Owner:
    """Who a golem is metered to; `anonymous` and unmetered by default."""

    subject: str = ANONYMOUS
    jti: str = ""
    metered: bool = False


@dataclass(frozen=True)
class Golem:
    webstrate: str
    container: ContainerInfo
    connected: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "Webstrate": self.webstrate,
            "Id": self.container.id,
            "Name": self.container.name,
            "State": self.container.state,
            "Status": self.container.status,
            "DebugPort": self.container.ports.get(str(DEBUG_PORT)),
            "Created": self.container.created,
            "Connected": self.connected,
        }


def render_emet(public_url: str) -> str:
    """The emet script with the herder's public URL in it (blocking: a file read)."""
    template = (resources.files("herder") / "static" / "emet.js").read_text(encoding="utf-8")
    url = json.dumps(public_url).replace("<", "\\u003c")
    return template.replace(HERDER_URL_PLACEHOLDER, url).replace("HERDER/", public_url + "/")


class GolemService:
    """Spawns, lists, resets and kills golems through the Runtime."""

    def __init__(
        self,
        settings: Settings,
        runtime: Runtime,
        ledger: Ledger,
        relay: Relay,
        instance: str,
        emet_script: str,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.settings = settings
        self.runtime = runtime
        self.ledger = ledger
        self.relay = relay
        self.instance = instance
        self.emet_script = emet_script
        self._webstrate_locks = KeyedLocks()
        self._create_lock = asyncio.Lock()  # count-then-create stays under the cap
        # The webstrates whose golem's control socket is on another replica
        # (`herder.peers.RelayDirectory`, in a cluster).
        self.connected_elsewhere: Callable[[], Awaitable[set[str]]] | None = None

    def _labels(self, webstrate: str | None = None) -> dict[str, str]:
        labels = {LABEL_MANAGED: "1", LABEL_KIND: KIND, LABEL_INSTANCE: self.instance}
        if webstrate is not None:
            labels[LABEL_NAME] = webstrate
        return labels

    def _golem(self, info: ContainerInfo, elsewhere: set[str] | None = None) -> Golem:
        webstrate = info.labels.get(LABEL_NAME, "")
        connected = self.relay.connected(webstrate) or webstrate in (elsewhere or set())
        return Golem(webstrate, info, connected)

    async def _elsewhere(self) -> set[str]:
        return set() if self.connected_elsewhere is None else await self.connected_elsewhere()

    async def ls(self) -> list[Golem]:
        containers, elsewhere = await asyncio.gather(
            self.runtime.list(self._labels()), self._elsewhere()
        )
        return sorted((self._golem(c, elsewhere) for c in containers), key=lambda g: g.webstrate)

    async def spawn(self, webstrate: str, owner: Owner) -> tuple[Golem, bool]:
        """The webstrate's running golem, or a new one; True when it is new."""
        async with self._webstrate_locks.hold(webstrate):
            existing = await self._find(webstrate)
            if existing is not None and existing.state == "running":
                return self._golem(existing, await self._elsewhere()), False
            if existing is not None:  # exited or dead: replace it
                await self._remove(webstrate, existing)
            return self._golem(await self._create(webstrate, owner)), True

    async def reset(self, webstrate: str, owner: Owner) -> Golem:
        """Replace the webstrate's golem with a fresh container."""
        async with self._webstrate_locks.hold(webstrate):
            existing = self._owned(webstrate, await self._find(webstrate), owner)
            await self._remove(webstrate, existing)
            return self._golem(await self._create(webstrate, owner))

    async def kill(self, webstrate: str, owner: Owner) -> Golem:
        """Stop and remove the webstrate's golem."""
        async with self._webstrate_locks.hold(webstrate):
            existing = self._owned(webstrate, await self._find(webstrate), owner)
            await self._remove(webstrate, existing)
            return Golem(webstrate, existing, connected=False)

    def _owned(self, webstrate: str, info: ContainerInfo | None, owner: Owner) -> ContainerInfo:
        if info is None or (
            self.settings.golem_require_token and info.labels.get(LABEL_SUBJECT) != owner.subject
        ):
            raise NotFound(f"no golem for webstrate {webstrate}")
        return info

    async def control_key_digest(self, webstrate: str, key: str) -> str | None:
        """The digest of `key` when it is the secret of the webstrate's running
        golem (what its control socket and data channels must present), else None."""
        if not key:
            return None
        info = await self._find(webstrate)
        if info is None or info.state != "running":
            return None
        expected = info.labels.get(LABEL_KEY_DIGEST, "")
        digest = key_digest(key)
        return digest if expected and hmac.compare_digest(digest, expected) else None

    async def _find(self, webstrate: str) -> ContainerInfo | None:
        found = await self.runtime.list(self._labels(webstrate))
        live = [c for c in found if c.state in LIVE_STATES]
        candidates = live or found
        return candidates[0] if candidates else None

    async def _create(self, webstrate: str, owner: Owner) -> ContainerInfo:
        if owner.metered and (await self.ledger.balance(owner.subject)).remaining <= 0:
            raise NoCredits()
        async with self._create_lock:
            live = [c for c in await self.runtime.list(self._labels()) if c.state in LIVE_STATES]
            if len(live) >= self.settings.golem_cap:
                raise TooManyRequests(
                    f"this herder runs its cap of {self.settings.golem_cap} golems; try again later"
                )
            spec = self._spec(webstrate, owner)
            try:
                try:
                    info = await self.runtime.run_service(spec)
                except Conflict:
                    # A container of ours with this name that the label lookup
                    # missed (e.g. half-created before a crash): replace it.
                    await self.runtime.remove(spec.name)
                    info = await self.runtime.run_service(spec)
                try:
                    await self._register(webstrate, info, owner)
                except BaseException:
                    await asyncio.shield(self.runtime.remove(info.id))
                    raise
            except Exception:
                self.metrics.spawned(KIND, ok=False)
                raise
            self.metrics.spawned(KIND, ok=True)
            return info

    def _spec(self, webstrate: str, owner: Owner) -> ServiceSpec:
        labels = self._labels(webstrate)
        labels[LABEL_SUBJECT] = owner.subject
        labels[LABEL_JTI] = owner.jti
        key = secrets.token_urlsafe(32)
        labels[LABEL_KEY_DIGEST] = key_digest(key)
        page = f"{self.settings.webstrates_url}/{webstrate}#{KEY_FRAGMENT}={key}"
        return ServiceSpec(
            name=f"golem-{webstrate}-{self.instance}",
            image=self.settings.golem_image,
            labels=labels,
            ports=(DEBUG_PORT,),
            bind_address="127.0.0.1",  # DevTools is full control of the browser
            env={"GOLEM_URL": page},
            memory_bytes=self.settings.golem_memory_mb << 20,
            nano_cpus=int(self.settings.golem_cpus * 1e9),
            pids=self.settings.golem_pids,
            restart="unless-stopped",
            open_stdin=False,
            user=GOLEM_USER,
            cap_drop_all=True,
            extra_hosts=("host.docker.internal:host-gateway",),
            network=self.settings.network,  # daemons cannot reach DevTools
        )

    async def _remove(self, webstrate: str, info: ContainerInfo) -> None:
        self.relay.drop_golem(webstrate)
        await self.runtime.remove(info.id)
        await self._unregister(info)
        self.metrics.lifetime(KIND, info.created)

    # -- the workload registry -------------------------------------------------

    async def _register(self, webstrate: str, info: ContainerInfo, owner: Owner) -> None:
        await self.ledger.register_workload(
            instance=self.instance,
            kind=KIND,
            subject=owner.subject,
            jti=owner.jti,
            name=webstrate,
            container_name=info.name,
            container_id=info.id,
            image=self.settings.golem_image,
            address=info.address,
            ports=info.ports,
            metered=owner.metered,
        )

    async def _unregister(self, info: ContainerInfo) -> None:
        await self.ledger.close_workload(
            self.instance, info.id, at=time.time(), rate=self.settings.credit_rate
        )
