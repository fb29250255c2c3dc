"""Admission control's queue, as pure logic (the 200-minion test is in test_minion_load)."""

from __future__ import annotations

import asyncio

import pytest

from herder.admission import Admission, QueueFull


async def test_runs_beyond_the_limit_wait_in_order_and_a_full_queue_refuses_at_once() -> None:
    admission = Admission(limit=2, queue=2)
    assert await admission.acquire() == 0.0
    assert await admission.acquire() == 0.0
    order: list[str] = []

    async def wait(name: str) -> None:
        await admission.acquire()
        order.append(name)

    first = asyncio.create_task(wait("first"))
    await asyncio.sleep(0)
    second = asyncio.create_task(wait("second"))
    await asyncio.sleep(0)
    assert (admission.running, admission.waiting) == (2, 2)
    with pytest.raises(QueueFull) as refused:
        await admission.acquire()
    assert refused.value.status == 429
    assert int(refused.value.headers["Retry-After"]) >= 1
    assert admission.rejected == 1
    admission.release(0.5)
    await asyncio.sleep(0)
    assert order == ["first"] and admission.running == 2
    admission.release(0.5)
    await asyncio.gather(first, second)
    assert order == ["first", "second"] and admission.waiting == 0
    admission.release()
    admission.release()
    assert admission.running == 0


async def test_a_cancelled_wait_leaves_the_queue_and_loses_no_slot() -> None:
    admission = Admission(limit=1, queue=5)
    await admission.acquire()
    waiter = asyncio.create_task(admission.acquire())
    await asyncio.sleep(0)
    assert admission.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert admission.waiting == 0
    # Cancelled just as the slot was handed over: the slot goes on to the next.
    handed = asyncio.create_task(admission.acquire())
    nxt = asyncio.create_task(admission.acquire())
    await asyncio.sleep(0)
    admission.release()
    handed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handed
    assert await asyncio.wait_for(nxt, 1) >= 0.0
    assert admission.running == 1 and admission.waiting == 0


async def test_retry_after_follows_the_measured_pace() -> None:
    admission = Admission(limit=1, queue=0)
    for _ in range(40):  # runs that each held their slot for 8 s
        await admission.acquire()
        admission.release(8.0)
    await admission.acquire()
    with pytest.raises(QueueFull) as refused:
        await admission.acquire()
    assert refused.value.headers["Retry-After"] == "8"
    assert refused.value.payload()["retry_after"] == 8
