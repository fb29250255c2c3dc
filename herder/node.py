"""What this host, or the cluster's nodes, offer (P2PRC's server specs,
SONM's list of miners), served at `GET /node/v1/specs` and `GET /node/v1/nodes`.

CPUs, memory, the data dir's disk, GPUs (from `nvidia-smi` when present,
else an empty list), the Docker Engine's version and the workloads of this
herder running now, by kind. Public, like P2PRC's `/server_specs`: it shows
no subject's data, only counts.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__
from .errors import BadRequest
from .runtime.base import (
    LABEL_INSTANCE,
    LABEL_KIND,
    LABEL_MANAGED,
    LABEL_SUBJECT,
    NodeInfo,
    Runtime,
)

KINDS = ("minion", "daemon", "golem")
NVIDIA_SMI_TIMEOUT = 5.0


async def running_counts(
    runtime: Runtime, instance: str, idle: Callable[[str], bool] | None = None
) -> dict[str, int]:
    """Running containers of this herder instance, by `herder.kind`; those
    for which `idle(id)` holds (a warm pool's, waiting for a run) aside.

    Asked of the runtime each time (never a counter kept by hand), so it is
    right after restarts and crashes. Raises `RuntimeUnavailable` when the
    engine does not answer.
    """
    containers = await runtime.list({LABEL_MANAGED: "1", LABEL_INSTANCE: instance}, all=False)
    counts = dict.fromkeys(KINDS, 0)
    for container in containers:
        kind = container.labels.get(LABEL_KIND, "")
        if idle is not None and idle(container.id):
            continue
        if container.state == "running" and kind:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def _meminfo() -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    values[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return values


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _host_facts(data_dir: Path) -> dict[str, Any]:
    """Blocking reads of /proc and the file system: run in a thread."""
    mem = _meminfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    disk = shutil.disk_usage(data_dir)
    return {
        "Hostname": platform.node(),
        "Platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "CPU": {"Model": _cpu_model(), "Count": os.cpu_count() or 1, "Usable": usable},
        "Memory": {
            "TotalBytes": mem.get("MemTotal", 0),
            "AvailableBytes": mem.get("MemAvailable", mem.get("MemFree", 0)),
        },
        "Disk": {
            "Path": str(data_dir),
            "TotalBytes": disk.total,
            "FreeBytes": disk.free,
        },
    }


async def gpus() -> list[dict[str, Any]]:
    """NVIDIA GPUs from `nvidia-smi`; an empty list when it is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        proc = await asyncio.create_subprocess_exec(
            exe,
            "--query-gpu=name,memory.total,driver_version",
            "--format=csv,noheader,nounits",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return []
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), NVIDIA_SMI_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return []
    if proc.returncode != 0:
        return []
    return parse_nvidia_smi(out.decode(errors="replace"))


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    result = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[0]:
            continue
        memory = int(parts[1]) * 1024 * 1024 if parts[1].isdigit() else None
        result.append({"Name": parts[0], "MemoryBytes": memory, "Driver": parts[2]})
    return result


async def specs(
    runtime: Runtime,
    instance: str,
    data_dir: Path,
    minions: dict[str, Any] | None = None,
    idle: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """The node's specs document; `minions` are the minion service's figures
    (its queue and warm pools: `Minions`, and `Pool` by env)."""
    facts, gpu_list, version, running = await asyncio.gather(
        asyncio.to_thread(_host_facts, data_dir),
        gpus(),
        runtime.version(),
        running_counts(runtime, instance, idle),
    )
    figures = dict(minions or {})
    pool = figures.pop("Pool", {})
    return {
        **facts,
        "GPUs": gpu_list,
        "Docker": {
            "Version": str(version.get("Version", "")),
            "ApiVersion": str(version.get("ApiVersion", "")),
            "Os": str(version.get("Os", "")),
            "Arch": str(version.get("Arch", "")),
        },
        "Running": running,
        "Minions": figures,
        "Pool": pool,
        "Herder": {"Version": __version__, "Instance": instance},
    }


def node_json(node: NodeInfo) -> dict[str, Any]:
    return {
        "ID": node.id,
        "Hostname": node.hostname,
        "Address": node.address,
        "Role": node.role,
        "Availability": node.availability,
        "State": node.state,
        "Leader": node.leader,
        "CPUs": node.cpus,
        "MemoryBytes": node.memory_bytes,
        "GPUs": node.gpus,
    }


async def nodes(runtime: Runtime, instance: str, subject: str | None) -> list[dict[str, Any]]:
    """Every node; with a subject, that subject's workloads on each (never another's)."""
    listed = await runtime.nodes()
    mine: dict[str, list[dict[str, Any]]] = {n.id: [] for n in listed}
    if subject is not None:
        labels = {LABEL_MANAGED: "1", LABEL_INSTANCE: instance, LABEL_SUBJECT: subject}
        only = listed[0].id if len(listed) == 1 else None  # one engine: all is on it
        for c in await runtime.list(labels):
            where = c.node.id if c.node is not None else only
            if where in mine:
                mine[where].append(
                    {"Name": c.name, "Kind": c.labels.get(LABEL_KIND, ""), "State": c.state}
                )
    return [node_json(n) | {"Workloads": mine[n.id]} for n in listed]


async def node_specs(runtime: Runtime, ref: str) -> dict[str, Any]:
    """One node of the cluster by hostname or id; 400 naming it when unknown."""
    for node in await runtime.nodes():
        if ref in (node.id, node.hostname):
            return node_json(node) | {"Herder": {"Version": __version__}}
    raise BadRequest(f"unknown node {ref[:100]!r}")
