"""Cost of one metering tick with 1,000 and 10,000 running workloads.

    .venv/bin/python bench/metering.py            # SQLite, and PostgreSQL when
    HERDER_TEST_POSTGRES_URL=postgresql+asyncpg://... .venv/bin/python bench/metering.py

It measures the ledger: the registry is filled directly (one subject per four
workloads) and `Meter.tick` runs against a runtime that records stops (none
happen: every subject has credits). Each tick is one simulated second later.
The target is under 50 ms per tick at 10,000 workloads on SQLite.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from herder.ledger import Account, Charge, Grant, Ledger, Workload  # noqa: E402
from herder.metering import Meter  # noqa: E402
from herder.settings import Settings  # noqa: E402

SIZES = (1_000, 10_000)
TICKS = 30
INSTANCE = "bench"
T0 = 1_700_000_000


class NoStopsRuntime:
    """The runtime side of a tick: nothing to stop while credits last."""

    def __init__(self) -> None:
        self.stopped: list[str] = []

    async def stop(self, ref: str, *, timeout: float = 5) -> None:
        self.stopped.append(ref)


async def fresh_database(url: str | None, tmp: Path, size: int) -> str:
    if url is None:
        return f"sqlite+aiosqlite:///{tmp / f'bench-{size}.db'}"
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    await conn.close()
    return url


async def fill(ledger: Ledger, size: int) -> None:
    subjects = [f"user{i}@bench" for i in range(max(1, size // 4))]
    async with ledger.write() as conn:
        await conn.execute(
            insert(Grant), [{"jti": f"g-{s}", "subject": s, "credits": 10**9} for s in subjects]
        )
        await conn.execute(
            insert(Account), [{"subject": s, "granted": 10**9, "charged": 0} for s in subjects]
        )
        await conn.execute(
            insert(Charge),
            [
                {
                    "id": i + 1,
                    "subject": subjects[i % len(subjects)],
                    "jti": f"j{i}",
                    "kind": "daemon",
                    "workload": f"d{i}-j{i}",
                    "seconds": 0,
                    "credits": 0,
                }
                for i in range(size)
            ],
        )
        await conn.execute(
            insert(Workload),
            [
                {
                    "instance": INSTANCE,
                    "kind": "daemon",
                    "subject": subjects[i % len(subjects)],
                    "jti": f"j{i}",
                    "name": f"d{i}",
                    "container_name": f"d{i}-j{i}",
                    "container_id": f"{i:064x}",
                    "image": "bench",
                    "address": "172.17.0.2",
                    "ports": '{"80":32768}',
                    "state": "running",
                    "metered": True,
                    "started_at": T0,
                    "metered_until": T0,
                    "charge_id": i + 1,
                }
                for i in range(size)
            ],
        )
        if ledger.dialect == "postgresql":
            await conn.execute(text("SELECT setval('charges_id_seq', :n)"), {"n": size})
    if ledger.dialect == "postgresql":
        async with ledger.engine.connect() as conn:
            await conn.execute(text("ANALYZE"))
            await conn.commit()


async def bench(url: str | None, label: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.load({"data_dir": tmp, "credit_rate": "1"}, environ={})
        for size in SIZES:
            ledger = await Ledger.open(await fresh_database(url, Path(tmp), size))
            try:
                await fill(ledger, size)
                clock = {"wall": float(T0), "mono": 0.0}
                meter = Meter(
                    settings,
                    ledger,
                    NoStopsRuntime(),  # type: ignore[arg-type]
                    INSTANCE,
                    clock=lambda c=clock: c["wall"],  # type: ignore[misc]
                    monotonic=lambda c=clock: c["mono"],  # type: ignore[misc]
                )
                timings = []
                for _ in range(TICKS):
                    clock["wall"] += 1
                    clock["mono"] += 1
                    started = time.perf_counter()
                    result = await meter.tick()
                    timings.append((time.perf_counter() - started) * 1000)
                    assert result.workloads == size, (result.workloads, size)
                subject = "user0@bench"
                assert await ledger.balance(subject) == await ledger.audit(subject)
                charged = (await ledger.balance(subject)).charged
                assert charged == TICKS * 4 or size < 4, charged
                timings.sort()
                print(
                    f"{label:<10} {size:>6} workloads: median {statistics.median(timings):6.1f} ms, "
                    f"p95 {timings[int(len(timings) * 0.95) - 1]:6.1f} ms, "
                    f"max {timings[-1]:6.1f} ms per tick ({TICKS} ticks)"
                )
            finally:
                await ledger.close()


async def main() -> None:
    await bench(None, "sqlite")
    postgres = os.environ.get("HERDER_TEST_POSTGRES_URL")
    if postgres:
        await bench(postgres, "postgresql")
    else:
        print("postgresql: skipped (set HERDER_TEST_POSTGRES_URL)")


if __name__ == "__main__":
    asyncio.run(main())
