"""`GET /node/v1/specs`: what this host offers (public: counts, no subject's data)."""

from __future__ import annotations

from aiohttp import web

from ..node import specs
from ..openapi import (
    INT,
    NUM,
    STR,
    Docs,
    Op,
    arr,
    obj,
)
from . import keys

routes = web.RouteTableDef()


@routes.get("/node/v1/specs")
async def specs_route(request: web.Request) -> web.Response:
    app = request.app
    minions = app[keys.MINIONS]
    document = await specs(
        app[keys.RUNTIME],
        app[keys.INSTANCE],
        app[keys.SETTINGS].data_dir,
        minions.figures(),
        minions.pool.is_waiting,
    )
    return web.json_response(document)


# -- OpenAPI docs of these routes (herder.openapi) ---------------------------------

docs: Docs = {
    "/node/v1/specs": {
        "GET": Op(
            "The host's specs",
            "node",
            description="CPU, memory, disk of the data dir, GPUs, Docker version, "
            "running workloads by kind, the herder's version and instance.",
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
    }
}
