"""The console: a single-page app for people (`/console/`), the OpenAPI
document for programs (`/openapi.json`) and a page rendering it (`/console/api`).

The app is static files in `static/` (vendored browser code in
`static/vendor/`, updated by `scripts/vendor-console`); nothing is fetched
from elsewhere. Its pages are served with a strict Content-Security-Policy:
scripts only from the herder itself, never inline, no framing. Styles may be
inline because xterm.js writes `<style>` elements for its renderer.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from .. import __version__, apidocs, appkeys
from ..errors import NotFound
from ..openapi import document

STATIC = Path(__file__).parent / "static"

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
    settings = request.app[appkeys.SETTINGS]
    return web.json_response(
        {
            "version": __version__,
            "public_url": settings.public_url,
            "webstrates_url": settings.webstrates_url,
            "credit_rate": settings.credit_rate,
        }
    )


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of the routes this app serves."""
    doc = document(
        request.app.router.routes(),
        apidocs.ALL,
        version=__version__,
        server=request.app[appkeys.SETTINGS].public_url,
    )
    return web.json_response(doc, headers={"Cache-Control": "no-cache"})
