"""`GET /node/v1/specs`: what this host offers (public: counts, no subject's data)."""

from __future__ import annotations

from aiohttp import web

from ..node import node_specs, nodes, specs
from ..openapi import (
    INT,
    NUM,
    STR,
    Docs,
    Op,
    Param,
    arr,
    obj,
)
from . import keys
from .auth import optional_claims

routes = web.RouteTableDef()


@routes.get("/node/v1/specs")
async def specs_route(request: web.Request) -> web.Response:
    app = request.app
    ref = request.query.get("node")
    if ref is not None:
        return web.json_response(await node_specs(app[keys.RUNTIME], ref))
    minions = app[keys.MINIONS]
    document = await specs(
        app[keys.RUNTIME],
        app[keys.INSTANCE],
        app[keys.SETTINGS].data_dir,
        minions.figures(),
        minions.pool.is_waiting,
    )
    return web.json_response(document)


@routes.get("/node/v1/nodes")
async def nodes_route(request: web.Request) -> web.Response:
    app = request.app
    claims = await optional_claims(request)
    subject = claims.sub if claims is not None else None
    return web.json_response(await nodes(app[keys.RUNTIME], app[keys.INSTANCE], subject))


# -- OpenAPI docs of these routes (herder.openapi) ---------------------------------

NODE = obj(
    ["ID", "Hostname", "Address", "Role", "Availability", "State", "CPUs", "MemoryBytes", "GPUs"],
    ID=STR,
    Hostname=STR,
    Address=STR,
    Role=STR,
    Availability=STR,
    State=STR,
    Leader={"type": "boolean"},
    CPUs=NUM,
    MemoryBytes=INT,
    GPUs=INT,
)

docs: Docs = {
    "/node/v1/specs": {
        "GET": Op(
            "The host's specs",
            "node",
            description="CPU, memory, disk of the data dir, GPUs, Docker version, "
            "running workloads by kind, the herder's version and instance; with "
            "`node`, that node of the cluster instead (400 for an unknown one).",
            params=(Param("node", "a node's hostname or id (a Swarm node)"),),
            responses={
                200: (
                    "the specs",
                    obj(
                        ["CPU", "Memory", "Disk", "GPUs", "Docker", "Running"],
                        Hostname=STR,
                        Platform=STR,
                        CPU=obj(Model=STR, Count=INT, Usable=NUM),
                        Memory=obj(TotalBytes=INT, AvailableBytes=INT),
                        Disk=obj(Path=STR, TotalBytes=INT, FreeBytes=INT),
                        GPUs=arr(obj(Name=STR, MemoryBytes={"type": ["integer", "null"]})),
                        Docker=obj(Version=STR, ApiVersion=STR, Os=STR, Arch=STR),
                        Running={"type": "object", "additionalProperties": INT},
                        Herder=obj(Version=STR, Instance=STR),
                    ),
                )
            },
        )
    },
    "/node/v1/nodes": {
        "GET": Op(
            "Every node, with the caller's workloads on it",
            "node",
            description="The Swarm's nodes (the engine's host on one engine): id, "
            "hostname, address, role, availability, state, CPUs, memory, GPUs; with a "
            "token, the caller's workloads on each (never another subject's).",
            auth="optional",
            responses={
                200: (
                    "the nodes",
                    arr(
                        {
                            "allOf": [
                                NODE,
                                obj(Workloads=arr(obj(Name=STR, Kind=STR, State=STR))),
                            ]
                        }
                    ),
                ),
                401: "an invalid token",
            },
        )
    },
}
