"""The herder-to-herder channel of a cluster: signed requests between replicas.

With `CLUSTER_SECRET` set, each replica records itself in the ledger's peer
registry (`peers`: replica id, node id, URL; renewed every `HEARTBEAT`
seconds, alive for `TTL`), and what needs another node's engine or another
replica's memory is carried to that replica over plain HTTP and WebSocket
requests to its `/peer/v1/...` routes (`herder.api.peer`): exec and attach
to a daemon on another node, a relay minion's socket or a golem's data
channel to the replica holding the golem's control socket.

A peer request is signed, never trusted for where it comes from: headers
carry the sender's replica id, the time, a nonce, the subject it acts for
and the receiving replica's id, with an HMAC-SHA256 under the cluster
secret over the method, path and query, those headers and the body's
SHA-256. The receiver checks the HMAC in constant time and refuses a time
more than `MAX_SKEW` seconds off, a request meant for another replica and
a nonce seen before, so a client can neither forge one (it lacks the
secret) nor replay one it saw. The secret goes in no URL and no log. The
subject a signed request names was taken from a token the first replica
checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple
from urllib.parse import urlencode

import aiohttp
from aiohttp import WSMsgType, web

from .errors import HerderError, ServiceUnavailable, Unauthorized
from .ledger import Ledger
from .relay import MAX_FRAME_BYTES, Relay
from .runtime.base import NodeInfo, OnAnotherNode, Runtime

log = logging.getLogger("herder.peers")

HEADER_REPLICA = "X-Herder-Peer"
HEADER_TIME = "X-Herder-Peer-Time"
HEADER_NONCE = "X-Herder-Peer-Nonce"
HEADER_SUBJECT = "X-Herder-Peer-Subject"
HEADER_TO = "X-Herder-Peer-To"
HEADER_SIGNATURE = "X-Herder-Peer-Signature"
SIGNED_HEADERS = (HEADER_REPLICA, HEADER_TIME, HEADER_NONCE, HEADER_SUBJECT, HEADER_TO)

MAX_SKEW = 30.0
"""Seconds a signed request's time may be off the receiver's clock."""
MAX_NONCES = 100_000
HEARTBEAT = 3.0
TTL = 10.0
CONNECT_TIMEOUT = 5.0
REFUSED = "peer requests need a valid signature under the cluster secret"
HEADER_REFUSED = "X-Herder-Peer-Refused"
"""Sent with a refused signature, so the sender tells it from its client's 401."""


def _refusal() -> Unauthorized:
    return Unauthorized(REFUSED, headers={HEADER_REFUSED: "1"})


class PeerAuth:
    """Signs and checks peer requests under the cluster secret."""

    def __init__(self, secret: str, replica: str) -> None:
        self._key = hashlib.sha256(b"herder peer v1\n" + secret.encode()).digest()
        self.replica = replica
        self._nonces: dict[str, float] = {}

    def _mac(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        fields: tuple[str, ...],
        body: bytes,
    ) -> str:
        target = f"{path}?{urlencode(sorted(query.items()))}"
        message = "\n".join(
            (method.upper(), target, *fields, hashlib.sha256(body).hexdigest())
        ).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        *,
        to: str,
        subject: str = "",
        body: bytes = b"",
    ) -> dict[str, str]:
        """The headers that make a request to `path?query` of replica `to` a peer's."""
        fields = (self.replica, f"{time.time():.3f}", secrets.token_hex(16), subject, to)
        headers = dict(zip(SIGNED_HEADERS, fields, strict=True))
        headers[HEADER_SIGNATURE] = self._mac(method, path, query or {}, fields, body)
        return headers

    def verify(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes = b"",
        *,
        now: float | None = None,
    ) -> str:
        """The subject a correctly signed, fresh request to this replica acts
        for ("" for none); `Unauthorized` (one message for every reason) otherwise."""
        fields = tuple(headers.get(h, "") for h in SIGNED_HEADERS)
        given = headers.get(HEADER_SIGNATURE, "")
        expected = self._mac(method, path, query, fields, body)
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise _refusal()
        now = time.time() if now is None else now
        try:
            sent = float(fields[1])
        except ValueError:
            raise _refusal() from None
        if not abs(now - sent) <= MAX_SKEW or not hmac.compare_digest(fields[4], self.replica):
            raise _refusal()  # stale, or meant for another replica (replayed here)
        self._remember(fields[2], now)
        return fields[3]

    def _remember(self, nonce: str, now: float) -> None:
        """Refuse a nonce seen within the skew window (a replayed request)."""
        if len(self._nonces) >= MAX_NONCES // 2:
            self._nonces = {n: t for n, t in self._nonces.items() if now - t <= 2 * MAX_SKEW}
        if nonce in self._nonces or len(self._nonces) >= MAX_NONCES:
            raise _refusal()
        self._nonces[nonce] = now


class Target(NamedTuple):
    """Another replica: its id (what a request to it is signed for) and URL."""

    replica: str
    url: str


class PeerAnswered(HerderError):
    """What another replica answered, passed on (its status, its error)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def this_node(runtime: Runtime) -> NodeInfo:
    """The node this replica's engine is (a Swarm's local node; the engine's host)."""
    nodes = await runtime.nodes()
    node_id = getattr(runtime, "node_id", None)
    if node_id is not None:
        local = str(await node_id())
        for node in nodes:
            if node.id == local:
                return node
    return nodes[0]


class PeerService:
    """This replica's row in the peer registry, and its requests to the others."""

    def __init__(
        self,
        auth: PeerAuth,
        ledger: Ledger,
        locate: Callable[[], Awaitable[NodeInfo]],
        *,
        url: str,
        port: int,
    ) -> None:
        self.auth = auth
        self.ledger = ledger
        self._locate = locate
        self._url = url
        self._port = port
        self.node: NodeInfo | None = None
        self.renewals: list[Callable[[], Awaitable[None]]] = []
        """Called on every heartbeat (the relay renews its golems' leases)."""
        self._session: aiohttp.ClientSession | None = None

    @property
    def replica(self) -> str:
        return self.auth.replica

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT
                )
            )
        return self._session

    async def run(self) -> None:
        """Keep this replica's row (and the renewals) alive until cancelled."""
        while True:
            try:
                await self.heartbeat()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("peer registry: could not renew this replica", exc_info=True)
            await asyncio.sleep(HEARTBEAT)

    async def heartbeat(self) -> None:
        if self.node is None:
            self.node = await self._locate()
            if not self._url:
                host = self.node.address or "127.0.0.1"
                self._url = f"http://{host}:{self._port}"
            log.info(
                "peer registry: replica %s on node %s at %s",
                self.replica,
                self.node.hostname,
                self._url,
            )
        await self.ledger.register_peer(self.replica, self.node.id, self._url, TTL)
        for renew in self.renewals:
            await renew()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ledger.forget_peer(self.replica)
        if self._session is not None:
            await self._session.close()

    # -- finding a replica ---------------------------------------------------------

    async def on_node(self, node_id: str, hostname: str) -> Target:
        """The live replica on a node; 503 naming the node when none is."""
        found = await self.ledger.peer_on_node(node_id, other_than=self.replica)
        if found is None:
            raise ServiceUnavailable(
                f"no herder replica is running on node {hostname}: it cannot be reached now"
            )
        return Target(*found)

    async def find(self, replica: str) -> Target | None:
        url = await self.ledger.peer_url(replica)
        return None if url is None else Target(replica, url)

    # -- what runs on another node ------------------------------------------------

    async def exec_on(
        self, where: OnAnotherNode, subject: str, name: str, cmd: list[str], timeout: float
    ) -> dict[str, Any]:
        """Exec in the daemon `name` on another node, by the replica there."""
        target = await self.on_node(where.node_id, where.hostname)
        payload = {"name": name, "cmd": cmd, "timeout": timeout}
        answer = await self.post_json(
            target,
            "/peer/v1/exec",
            subject,
            payload,
            timeout=timeout + 15,
            where=f"on node {where.hostname}",
        )
        if not isinstance(answer, dict):
            raise ServiceUnavailable(f"the herder replica on node {where.hostname} failed")
        return answer

    async def attach_on(
        self,
        where: OnAnotherNode,
        subject: str,
        name: str,
        query: Mapping[str, str],
        *,
        max_msg_size: int,
    ) -> aiohttp.ClientWebSocketResponse:
        """An attach socket to the daemon `name` on another node, by the replica there."""
        target = await self.on_node(where.node_id, where.hostname)
        return await self.websocket(
            target,
            f"/peer/v1/attach/{name}",
            query,
            subject,
            where=f"on node {where.hostname}",
            max_msg_size=max_msg_size,
        )

    # -- requests ------------------------------------------------------------------

    async def post_json(
        self, target: Target, path: str, subject: str, payload: Any, *, timeout: float, where: str
    ) -> Any:
        """POST a signed JSON body; the JSON answer, or the peer's error passed on."""
        body = json.dumps(payload).encode()
        signed = self.auth.sign("POST", path, to=target.replica, subject=subject, body=body)
        headers = {"Content-Type": "application/json", **signed}
        try:
            async with self.session.post(
                target.url + path,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout, connect=CONNECT_TIMEOUT),
            ) as response:
                text = await response.text()
                status, refused = response.status, HEADER_REFUSED in response.headers
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _unreachable(where) from exc
        try:
            answer = json.loads(text)
        except json.JSONDecodeError:
            answer = None
        if status == 200 and answer is not None:
            return answer
        raise _refused(status, answer, where, signature=refused)

    async def websocket(
        self,
        target: Target,
        path: str,
        query: Mapping[str, str],
        subject: str,
        *,
        where: str,
        max_msg_size: int,
    ) -> aiohttp.ClientWebSocketResponse:
        """A signed WebSocket to another replica (its error passed on when it refuses)."""
        try:
            return await self.session.ws_connect(
                target.url + path,
                params=dict(query),
                headers=self.auth.sign("GET", path, query, to=target.replica, subject=subject),
                heartbeat=30,
                max_msg_size=max_msg_size,
                autoping=True,
            )
        except aiohttp.WSServerHandshakeError as exc:
            refused = exc.headers is not None and HEADER_REFUSED in exc.headers
            raise _refused(exc.status, None, where, signature=refused) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _unreachable(where) from exc


def _unreachable(where: str) -> ServiceUnavailable:
    return ServiceUnavailable(f"the herder replica {where} is not reachable now")


def _refused(status: int, answer: Any, where: str, *, signature: bool) -> HerderError:
    if signature or status == 403:
        log.error(
            "the replica %s refused this one's signature: is CLUSTER_SECRET the same "
            "on every replica, and are their clocks within 30 s?",
            where,
        )
        return ServiceUnavailable(f"the herder replica {where} refused this replica")
    if status >= 500 or status < 400:
        return ServiceUnavailable(f"the herder replica {where} failed ({status})")
    message = answer.get("error") if isinstance(answer, dict) else None
    return PeerAnswered(status, str(message or f"the herder replica {where} answered {status}"))


# -- carrying a WebSocket across ------------------------------------------------------

_ENDS = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)
_NO_CODE = (None, 1005, 1006)


async def bridge(
    client: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    *,
    lost: tuple[int, str],
    first: list[str | bytes] | None = None,
) -> None:
    """Carry frames both ways (text as text, binary as binary) until one side
    closes, then close the other with the same code and reason (`lost` when
    the upstream went without a close frame). `first`: frames for the upstream
    before any the client sends now."""

    async def up() -> tuple[int, str] | None:
        for data in first or ():
            await _send(upstream, data)
        while True:
            msg = await client.receive()
            if msg.type in _ENDS:
                return _close_of(msg)
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await _send(upstream, msg.data)

    async def down() -> tuple[int, str] | None:
        while True:
            msg = await upstream.receive()
            if msg.type in _ENDS:
                return _close_of(msg)
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await _send(client, msg.data)

    sending = asyncio.create_task(up())
    receiving = asyncio.create_task(down())
    try:
        done, _ = await asyncio.wait({sending, receiving}, return_when=asyncio.FIRST_COMPLETED)
        # Close the other side while its reader still waits: that wakes it.
        if receiving in done:
            ended = None if receiving.exception() else receiving.result()
            code, reason = ended or lost
            if code in _NO_CODE:
                code, reason = lost
            await _close(client, code, reason)
            await _close(upstream, 1000, "")
        else:
            ended = None if sending.exception() else sending.result()
            code, reason = ended or (1000, "")
            await _close(upstream, 1000 if code in _NO_CODE else code, reason)
            await _close(client, 1000 if code in _NO_CODE else code, reason)
    finally:
        for task in (sending, receiving):
            task.cancel()
        await asyncio.gather(sending, receiving, return_exceptions=True)
        if not upstream.closed:  # cancelled (the server shutting down): never leave it open
            await asyncio.shield(_close(upstream, 1001, "going away"))


def _close_of(msg: aiohttp.WSMessage) -> tuple[int, str] | None:
    if msg.type == WSMsgType.CLOSE:
        return int(msg.data), str(msg.extra or "")
    return None


async def _send(ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, data: Any) -> None:
    if isinstance(data, str):
        await ws.send_str(data)
    else:
        await ws.send_bytes(data)


async def _close(
    ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, code: int, reason: str
) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
        async with asyncio.timeout(5):
            await ws.close(code=code, message=reason.encode()[:120])


# -- the relay across replicas ------------------------------------------------------

RELAY_TTL = TTL


class RelayDirectory:
    """Which replica holds each webstrate's golem control socket: a lease
    `relay:<instance>:<webstrate>` in the ledger, taken with the socket,
    renewed on every heartbeat and given up when it closes. A minion's
    socket or a golem's data channel that lands on another replica is
    carried to the holder's `/peer/v1/minion/...` and
    `/peer/v1/connect-to/...`."""

    def __init__(self, ledger: Ledger, peers: PeerService, instance: str, relay: Relay) -> None:
        self.ledger = ledger
        self.peers = peers
        self.instance = instance
        self.relay = relay
        peers.renewals.append(self.renew)

    def _lease(self, webstrate: str) -> str:
        return f"relay:{self.instance}:{webstrate}"

    async def claim(self, webstrate: str) -> bool:
        """Hold the webstrate's golem for this replica; False when another live one does."""
        return await self.ledger.acquire_lease(
            self._lease(webstrate), self.peers.replica, RELAY_TTL
        )

    async def release(self, webstrate: str) -> None:
        with contextlib.suppress(Exception):
            await self.ledger.release_lease(self._lease(webstrate), self.peers.replica)

    async def renew(self) -> None:
        for webstrate in self.relay.webstrates():
            await self.claim(webstrate)

    async def elsewhere(self) -> set[str]:
        """The webstrates whose golem's control socket another live replica holds."""
        prefix = self._lease("")
        leases = await self.ledger.live_leases(prefix)
        return {name[len(prefix) :] for name, holder in leases if holder != self.peers.replica}

    async def holder(self, webstrate: str) -> Target | None:
        """The other live replica holding the webstrate's golem, if one does."""
        replica = await self.ledger.lease_holder(self._lease(webstrate))
        if replica is None or replica == self.peers.replica:
            return None
        return await self.peers.find(replica)

    async def minion_socket(
        self, target: Target, webstrate: str, minion_type: str
    ) -> aiohttp.ClientWebSocketResponse:
        return await self.peers.websocket(
            target,
            f"/peer/v1/minion/{webstrate}",
            {"type": minion_type},
            "",
            where=f"holding the golem of {webstrate}",
            max_msg_size=MAX_FRAME_BYTES,
        )

    async def channel_socket(
        self, target: Target, webstrate: str, minion: str, key: str
    ) -> aiohttp.ClientWebSocketResponse:
        return await self.peers.websocket(
            target,
            f"/peer/v1/connect-to/{webstrate}/{minion}",
            {"key": key},
            "",
            where=f"holding the golem of {webstrate}",
            max_msg_size=MAX_FRAME_BYTES,
        )
