"""Single-use tickets for the attach WebSocket, so a browser's token never
goes into a URL.

A browser's `WebSocket` cannot send an `Authorization` header, and a
`?token=` in the URL ends up in history, proxies' logs and `Referer`s. So
the console first asks `POST /daemon/v1/attach-ticket/<name>` with its bearer
header and opens the socket with `?ticket=<ticket>` (routes in
`herder/api/attach.py`): the ticket is random,
good once, for that daemon only, for `TICKET_SECONDS`, and kept in the
herder's memory (a ticket is redeemed on the herder that issued it). The
token behind it is checked again when the ticket is used (a token revoked
in between is refused).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from .errors import Unauthorized

TICKET_SECONDS = 30
MAX_TICKETS = 10_000


@dataclass(frozen=True)
class _Ticket:
    token: str
    daemon: str  # the container name
    expires: float


class AttachTickets:
    """Issued tickets, oldest first; expired ones are dropped as new ones come."""

    def __init__(self, seconds: float = TICKET_SECONDS, capacity: int = MAX_TICKETS) -> None:
        self._seconds = seconds
        self._capacity = capacity
        self._tickets: OrderedDict[str, _Ticket] = OrderedDict()

    def issue(self, token: str, daemon: str) -> str:
        now = time.monotonic()
        while self._tickets:
            oldest = next(iter(self._tickets.values()))
            if oldest.expires > now and len(self._tickets) < self._capacity:
                break
            self._tickets.popitem(last=False)
        ticket = secrets.token_urlsafe(24)
        self._tickets[ticket] = _Ticket(token, daemon, now + self._seconds)
        return ticket

    def redeem(self, ticket: str) -> tuple[str, str]:
        """The token and daemon (container name) behind `ticket`, which is
        used up; `Unauthorized` when it is unknown, used or expired."""
        found = self._tickets.pop(ticket, None)
        if found is None or found.expires <= time.monotonic():
            raise Unauthorized("invalid or expired attach ticket")
        return found.token, found.daemon

    @property
    def seconds(self) -> int:
        return int(self._seconds)
