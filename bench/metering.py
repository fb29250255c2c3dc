"""Cost of one metering tick with 1,000, 10,000 and 100,000 running workloads.

    .venv/bin/python bench/metering.py            # SQLite, and PostgreSQL when
    HERDER_TEST_POSTGRES_URL=postgresql+asyncpg://... .venv/bin/python bench/metering.py

It measures the ledger: the registry is filled directly (one subject per four
workloads) in the state a running herder keeps it in (every run settled on
the meter, every subject's `check_at` where the last tick put it), and
`Meter.tick` runs against a runtime that records stops. One more subject
with four runs has credits for half the ticks: the bench checks that the
tick its balance reaches zero stops exactly its four daemons. Each tick is
one simulated second later. The targets:
at most 15 ms (SQLite) and 25 ms (PostgreSQL) per tick at 10,000 workloads,
150 ms at 100,000 on PostgreSQL (medians).
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

from herder.ledger import Account, Charge, Grant, Ledger, MeterPosition, Workload  # noqa: E402
from herder.ledger.registry import CHECK_MARGIN  # noqa: E402
from herder.metering import Meter  # noqa: E402
from herder.settings import Settings  # noqa: E402

SIZES = (1_000, 10_000, 100_000)
TICKS = 30
INSTANCE = "bench"
T0 = 1_700_000_000
POOR = "poor@bench"  # four runs, credits for TICKS // 2 ticks
TARGETS = {10_000: ("≤ 15 ms", "≤ 25 ms"), 100_000: ("–", "≤ 150 ms")}


class RecordingRuntime:
    """The runtime side of a tick: records the daemons it stops."""

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
    runs = [size // len(subjects) + (i < size % len(subjects)) for i in range(len(subjects))]
    owners = [subjects[i % len(subjects)] for i in range(size)] + [POOR] * 4
    poor_credits = 4 * (TICKS // 2)
    async with ledger.write() as conn:
        await conn.execute(
            insert(Grant),
            [{"jti": f"g-{s}", "subject": s, "credits": 10**9} for s in subjects]
            + [{"jti": "g-poor", "subject": POOR, "credits": poor_credits}],
        )
        await conn.execute(
            insert(Account),
            [
                {
                    "subject": s,
                    "granted": 10**9,
                    "charged": 0,
                    "check_at": T0 + 10**9 // n - CHECK_MARGIN,
                }
                for s, n in zip(subjects, runs, strict=True)
            ]
            + [
                {
                    "subject": POOR,
                    "granted": poor_credits,
                    "charged": 0,
                    "check_at": T0 + poor_credits // 4 - CHECK_MARGIN,
                }
            ],
        )
        await conn.execute(
            insert(Charge),
            [
                {
                    "id": i + 1,
                    "subject": owners[i],
                    "jti": f"j{i}",
                    "kind": "daemon",
                    "workload": f"d{i}-j{i}",
                    "seconds": 0,
                    "credits": 0,
                }
                for i in range(size + 4)
            ],
        )
        await conn.execute(
            insert(Workload),
            [
                {
                    "instance": INSTANCE,
                    "kind": "daemon",
                    "subject": owners[i],
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
                    "base_seconds": 0,
                    "base_credits": 0,
                }
                for i in range(size + 4)
            ],
        )
        await conn.execute(
            insert(MeterPosition).values(
                instance=INSTANCE, metered_until=T0, seconds=0, credits=0, rate=1, runs=size + 4
            )
        )
        if ledger.dialect == "postgresql":
            await conn.execute(text("SELECT setval('charges_id_seq', :n)"), {"n": size + 4})
    if ledger.dialect == "postgresql":
        async with ledger.engine.connect() as conn:
            await conn.execute(text("ANALYZE"))
            await conn.commit()


Figures = dict[int, tuple[float, float]]  # workloads -> (median, p95) ms


async def bench(url: str | None) -> Figures:
    figures: Figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.load({"data_dir": tmp, "credit_rate": "1"}, environ={})
        for size in SIZES:
            ledger = await Ledger.open(await fresh_database(url, Path(tmp), size))
            try:
                await fill(ledger, size)
                clock = {"wall": float(T0), "mono": 0.0}
                runtime = RecordingRuntime()
                meter = Meter(
                    settings,
                    ledger,
                    runtime,  # type: ignore[arg-type]
                    INSTANCE,
                    clock=lambda c=clock: c["wall"],  # type: ignore[misc]
                    monotonic=lambda c=clock: c["mono"],  # type: ignore[misc]
                )
                timings = []
                for tick in range(1, TICKS + 1):
                    clock["wall"] += 1
                    clock["mono"] += 1
                    started = time.perf_counter()
                    result = await meter.tick()
                    timings.append((time.perf_counter() - started) * 1000)
                    poor_running = 4 if tick <= TICKS // 2 else 0
                    assert result.workloads == size + poor_running, (result.workloads, size)
                    # The poor subject's daemons stop in the tick its balance reaches zero.
                    assert len(runtime.stopped) == (4 if tick >= TICKS // 2 else 0), tick
                assert (await ledger.balance(POOR)).remaining == 0
                for subject in ("user0@bench", POOR):
                    assert await ledger.balance(subject) == await ledger.audit(subject)
                charged = (await ledger.balance("user0@bench")).charged
                assert charged == TICKS * 4 or size < 4, charged
                timings.sort()
                figures[size] = (statistics.median(timings), timings[int(len(timings) * 0.95) - 1])
            finally:
                await ledger.close()
    return figures


def cell(figures: Figures | None, size: int) -> str:
    if figures is None:
        return "skipped"
    median, p95 = figures[size]
    return f"{median:6.1f} ms ({p95:5.1f})"


async def main() -> None:
    load = os.getloadavg()[0]
    sqlite = await bench(None)
    postgres_url = os.environ.get("HERDER_TEST_POSTGRES_URL")
    postgres = await bench(postgres_url) if postgres_url else None
    print(
        f"one metering tick, median (p95) of {TICKS} ticks; load {load:.1f} -> "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(f"{'workloads':>10}  {'sqlite':<18}  {'postgresql':<18}  target (sqlite / postgresql)")
    for size in SIZES:
        target = " / ".join(TARGETS.get(size, ("–", "–")))
        print(f"{size:>10,}  {cell(sqlite, size):<18}  {cell(postgres, size):<18}  {target}")
    if postgres is None:
        print("postgresql: skipped (set HERDER_TEST_POSTGRES_URL)")


if __name__ == "__main__":
    asyncio.run(main())
