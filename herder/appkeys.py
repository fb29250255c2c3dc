"""Every piece of shared application state, as typed `web.AppKey`s."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .daemons import DaemonService
    from .ledger import Ledger
    from .metering import Meter
    from .reconcile import Reconciler
    from .runtime import Runtime
    from .settings import Settings
    from .tokens import TokenService

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
LEDGER: web.AppKey[Ledger] = web.AppKey("ledger")
RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")
TOKENS: web.AppKey[TokenService] = web.AppKey("tokens")
INSTANCE: web.AppKey[str] = web.AppKey("instance")
DAEMONS: web.AppKey[DaemonService] = web.AppKey("daemons")
METER: web.AppKey[Meter] = web.AppKey("meter")
RECONCILER: web.AppKey[Reconciler] = web.AppKey("reconciler")
