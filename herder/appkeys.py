"""Every piece of shared application state, as typed `web.AppKey`s."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .attach import AttachHub
    from .ledger import Ledger
    from .proxy import Upstreams
    from .runtime import Runtime
    from .settings import Settings
    from .tokens import TokenService

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
LEDGER: web.AppKey[Ledger] = web.AppKey("ledger")
RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")
TOKENS: web.AppKey[TokenService] = web.AppKey("tokens")
INSTANCE: web.AppKey[str] = web.AppKey("instance")
UPSTREAMS: web.AppKey[Upstreams] = web.AppKey("upstreams")
ATTACH: web.AppKey[AttachHub] = web.AppKey("attach")
