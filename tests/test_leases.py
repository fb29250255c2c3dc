"""Leases in the ledger (SQLite and PostgreSQL): one holder at a time, taken
over once expired, renewed by its holder, given up at once on release."""

from __future__ import annotations

import asyncio

from herder.ledger import Ledger


async def test_one_holder_until_it_expires(ledger: Ledger) -> None:
    assert await ledger.acquire_lease("meter", "a", 5, now=1000.0)
    assert not await ledger.acquire_lease("meter", "b", 5, now=1001.0)
    assert await ledger.lease_holder("meter", now=1001.0) == "a"
    assert await ledger.acquire_lease("meter", "a", 5, now=1004.0)  # renewed to 1009
    assert not await ledger.acquire_lease("meter", "b", 5, now=1008.0)
    # a stops renewing: b takes it once it has expired.
    assert await ledger.lease_holder("meter", now=1009.5) is None
    assert await ledger.acquire_lease("meter", "b", 5, now=1009.5)
    assert not await ledger.acquire_lease("meter", "a", 5, now=1010.0)
    assert await ledger.lease_holder("meter", now=1010.0) == "b"
    # Other names are other leases.
    assert await ledger.acquire_lease("other", "a", 5, now=1010.0)


async def test_release_frees_it_at_once_and_only_for_its_holder(ledger: Ledger) -> None:
    assert await ledger.acquire_lease("meter", "a", 60)
    await ledger.release_lease("meter", "b")  # not b's: nothing happens
    assert await ledger.lease_holder("meter") == "a"
    await ledger.release_lease("meter", "a")
    assert await ledger.lease_holder("meter") is None
    assert await ledger.acquire_lease("meter", "b", 60)


async def test_racing_replicas_get_one_holder(ledger: Ledger) -> None:
    got = await asyncio.gather(*(ledger.acquire_lease("meter", f"r{i}", 30) for i in range(12)))
    assert sum(got) == 1
    winner = f"r{got.index(True)}"
    assert await ledger.lease_holder("meter") == winner


async def test_leadership_is_one_replicas_and_ends_before_its_lease(ledger: Ledger) -> None:
    """A replica counts itself the leader only until a margin before its
    lease's end: by then no other replica can have taken it."""
    from herder.leadership import MARGIN, Leadership

    clock = {"t": 1000.0}

    def replica(name: str) -> Leadership:
        return Leadership(
            ledger, "meter:i", name, ttl=6, clock=lambda: clock["t"], monotonic=lambda: clock["t"]
        )

    one, two = replica("one"), replica("two")
    assert await one.renew() and not await two.renew()
    assert (one.terms, two.terms) == (1, 0)
    # one stops renewing: it steps down before its lease ends...
    clock["t"] += 6 - MARGIN
    assert not one.held
    await one.wait_lost()  # returns at once
    assert not await two.renew()  # ...and only then may two take it
    clock["t"] += MARGIN + 0.1
    assert await two.renew() and two.held
    assert not await one.renew()
    await two.release()
    assert not two.held and await one.renew() and one.terms == 2
