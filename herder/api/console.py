"""The console's routes: a single-page app for people (`/console/`), the OpenAPI
document for programs (`/openapi.json`) and a page rendering it (`/console/api`).

The app is static files in `herder/console/static/` (vendored browser code
in `vendor/`, updated by `scripts/vendor-console`); nothing is fetched from
elsewhere. Its pages are served with a strict Content-Security-Policy:
scripts only from the herder itself, never inline, no framing. Styles may be
inline because xterm.js writes `<style>` elements for its renderer.
"""

from __future__ import annotations

from aiohttp import web

from .. import __version__
from ..console import STATIC
from ..errors import NotFound
from ..openapi import (
    INT,
    STR,
    Docs,
    Op,
    Param,
    document,
    obj,
)
from . import keys

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}

routes = web.RouteTableDef()


def _file(relative: str) -> web.FileResponse:
    """A file under static/ with the page headers; 404 for anything else
    (no `..`, no hidden files, only the types listed)."""
    parts = relative.split("/")
    if any(not p or p.startswith(".") for p in parts):
        raise NotFound("no such file")
    path = STATIC.joinpath(*parts)
    kind = _TYPES.get(path.suffix)
    if kind is None or not path.is_file():
        raise NotFound("no such file")
    headers = {**PAGE_HEADERS, "Content-Type": f"{kind}; charset=utf-8"}
    if kind.startswith("image/"):
        headers["Content-Type"] = kind
    return web.FileResponse(path, headers=headers)


@routes.get("/console")
async def console_redirect(request: web.Request) -> web.Response:
    raise web.HTTPMovedPermanently("/console/")


@routes.get("/console/")
async def console_page(request: web.Request) -> web.FileResponse:
    return _file("index.html")


@routes.get("/console/api")
async def api_page(request: web.Request) -> web.FileResponse:
    return _file("api.html")


@routes.get("/console/static/{path:.+}")
async def static_file(request: web.Request) -> web.FileResponse:
    return _file(request.match_info["path"])


@routes.get("/console/config.json")
async def config(request: web.Request) -> web.Response:
    """What the page needs to know of this herder (nothing secret)."""
    settings = request.app[keys.SETTINGS]
    return web.json_response(
        {
            "version": __version__,
            "public_url": settings.public_url,
            "webstrates_url": settings.webstrates_url,
            "credit_rate": settings.credit_rate,
            "proxy_domain": settings.proxy_domain,
        }
    )


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of the routes this app serves."""
    tables = request.app[keys.API_DOCS]
    doc = document(
        request.app.router.routes(),
        tables,
        version=__version__,
        server=request.app[keys.SETTINGS].public_url,
    )
    return web.json_response(doc, headers={"Cache-Control": "no-cache"})


# -- OpenAPI docs of these routes (herder.openapi) ---------------------------------

_HTML = "text/html"
docs: Docs = {
    "/console": {"GET": Op("Redirect to /console/", "console", responses={301: "to /console/"})},
    "/console/": {
        "GET": Op(
            "The console, a page for people",
            "console",
            responses={200: ("the single-page app", STR, _HTML)},
        )
    },
    "/console/api": {
        "GET": Op(
            "This document, rendered",
            "console",
            responses={200: ("a page rendering /openapi.json", STR, _HTML)},
        )
    },
    "/console/static/{path}": {
        "GET": Op(
            "The console's files",
            "console",
            params=(Param("path", "a file of the console", where="path"),),
            responses={200: "the file", 404: "no such file"},
        )
    },
    "/console/config.json": {
        "GET": Op(
            "What the console needs to know of this herder",
            "console",
            responses={
                200: (
                    "public facts",
                    obj(
                        ["version", "public_url", "webstrates_url", "credit_rate", "proxy_domain"],
                        version=STR,
                        public_url=STR,
                        webstrates_url=STR,
                        credit_rate=INT,
                        proxy_domain={
                            "type": "string",
                            "description": "PROXY_DOMAIN: daemon <Name> is also served at "
                            "<Name>.<proxy_domain> on the herder's port; empty when off",
                        },
                    ),
                )
            },
        )
    },
    "/openapi.json": {
        "GET": Op(
            "This OpenAPI 3.1 document",
            "console",
            responses={200: ("the document", {"type": "object"})},
        )
    },
}
