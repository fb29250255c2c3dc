"""The herder-to-herder routes of a cluster, `/peer/v1/...` (`herder.peers`).

Only another replica's signed request is taken (a 401 for anything else,
a 403 when this herder has no `CLUSTER_SECRET`), before anything is read
or done. What a peer asks is done here, never carried further:

- `POST /peer/v1/exec`: `{"name", "cmd", "timeout"}`, exec in the signed
  subject's daemon on this node; the exec result.
- `WS /peer/v1/attach/{name}?tail=&binary=`: the attach socket of the
  signed subject's daemon on this node.
- `WS /peer/v1/minion/{webstrate}?type=` and
  `WS /peer/v1/connect-to/{webstrate}/{minion}?key=`: a relay minion's
  socket and a golem's data channel, carried here from the replica they
  reached, since the webstrate's golem control socket is here.
"""

from __future__ import annotations

import json

from aiohttp import web

from ..errors import BadRequest, HerderError
from ..openapi import WEBSTRATE, Docs, Op, Param
from ..peers import HEADER_SIGNATURE
from ..relay import MINION_TYPE_MAX, check_webstrate
from . import keys
from .attach import attach_query, serve_attach
from .daemons import EXPECTED, parse_command
from .relay import serve_channel, serve_minion

routes = web.RouteTableDef()


class PeerChannelOff(HerderError):
    status = 403
    message = "this herder takes no peer requests (no CLUSTER_SECRET)"


async def peer_subject(request: web.Request) -> str:
    """The subject a correctly signed peer request acts for (401 otherwise)."""
    peers = request.app.get(keys.PEERS)
    if peers is None:
        raise PeerChannelOff()
    if HEADER_SIGNATURE not in request.headers:  # refused before a byte of the body is read
        return peers.auth.verify(request.method, request.path, request.query, {}, b"")
    body = await request.read() if request.can_read_body else b""
    return peers.auth.verify(request.method, request.path, request.query, request.headers, body)


@routes.post("/peer/v1/exec")
async def peer_exec(request: web.Request) -> web.Response:
    subject = await peer_subject(request)
    try:
        body = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest(EXPECTED) from None
    if not subject or not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise BadRequest("a peer exec names a subject and a daemon")
    cmd, timeout = parse_command(body)
    result = await request.app[keys.DAEMONS].exec_here(subject, body["name"], cmd, timeout)
    return web.json_response(result)


@routes.get("/peer/v1/attach/{name}")
async def peer_attach(request: web.Request) -> web.StreamResponse:
    subject = await peer_subject(request)
    daemon = await request.app[keys.DAEMONS].find_running(subject, request.match_info["name"])
    tail, binary = attach_query(request)
    # The stream is counted by the replica the client is connected to.
    return await serve_attach(request, daemon.container_id or daemon.container_name, tail, binary)


@routes.get("/peer/v1/minion/{webstrate}")
async def peer_minion(request: web.Request) -> web.WebSocketResponse:
    await peer_subject(request)
    webstrate = check_webstrate(request.match_info["webstrate"])
    return await serve_minion(request, webstrate, request.query.get("type", "")[:MINION_TYPE_MAX])


@routes.get("/peer/v1/connect-to/{webstrate}/{minion}")
async def peer_connect_to(request: web.Request) -> web.WebSocketResponse:
    await peer_subject(request)
    webstrate = check_webstrate(request.match_info["webstrate"])
    return await serve_channel(request, webstrate, request.match_info["minion"])


# -- OpenAPI docs of these routes (herder.openapi) ---------------------------------

_SIGNED = (
    "Herder-to-herder, for the replicas of a cluster only: the request must be signed "
    "under the cluster secret (`X-Herder-Peer-*` headers), else 401 (403 without "
    "`CLUSTER_SECRET`)."
)
_REFUSED = {401: "not signed under the cluster secret", 403: "no CLUSTER_SECRET here"}
docs: Docs = {
    "/peer/v1/exec": {
        "POST": Op(
            "Exec in a daemon on this replica's node (for another replica)",
            "cluster",
            description=_SIGNED,
            responses={200: "the exec result", 400: "bad input", 404: "no such daemon", **_REFUSED},
        )
    },
    "/peer/v1/attach/{name}": {
        "GET": Op(
            "Attach to a daemon on this replica's node (for another replica)",
            "cluster",
            description=_SIGNED,
            websocket=True,
            params=(Param("name", "the daemon's container name", where="path"),),
            responses={101: "switching to the WebSocket", 404: "no such daemon", **_REFUSED},
        )
    },
    "/peer/v1/minion/{webstrate}": {
        "GET": Op(
            "A relay minion's socket, for the golem connected here (from another replica)",
            "cluster",
            description=_SIGNED,
            websocket=True,
            params=(WEBSTRATE, Param("type", "the minion's type")),
            responses={101: "switching to the WebSocket", 429: "too many minions", **_REFUSED},
        )
    },
    "/peer/v1/connect-to/{webstrate}/{minion}": {
        "GET": Op(
            "A golem's data channel to a minion relayed here (from another replica)",
            "cluster",
            description=_SIGNED,
            websocket=True,
            params=(
                WEBSTRATE,
                Param("minion", "the minion's id", where="path"),
                Param("key", "the golem's key"),
            ),
            responses={101: "switching to the WebSocket", 404: "unknown minion", **_REFUSED},
        )
    },
}
