"""Killing what an exec left running, when the herder shares the engine's host.

Docker cannot kill an exec. Its inspect gives the exec's process id in the
host's PID namespace; when this process can see that PID (the herder runs on
the engine's host, not in a container of its own) and the process really
belongs to the container (its cgroup names the container id, so a reused PID
is never killed), the process and its descendants get SIGKILL. Anywhere else
this does nothing and says so.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

PROC = Path("/proc")


def _parent_of(stat_line: str) -> int | None:
    """The PPID field of /proc/<pid>/stat (the command may hold spaces and parens)."""
    try:
        return int(stat_line[stat_line.rindex(")") + 2 :].split()[1])
    except (ValueError, IndexError):
        return None


def descendants(pid: int, proc: Path = PROC) -> list[int]:
    """`pid`'s children, their children and so on (breadth first)."""
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = _parent_of((entry / "stat").read_text())
        except OSError:
            continue  # it ended meanwhile
        if parent is not None:
            children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    frontier = [pid]
    while frontier:
        nxt = [child for p in frontier for child in children.get(p, [])]
        found.extend(nxt)
        frontier = nxt
    return found


def in_container(pid: int, container_id: str, proc: Path = PROC) -> bool:
    """Whether `pid` runs in the container (its cgroup path names the id)."""
    try:
        cgroups = (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return False
    return len(container_id) >= 12 and container_id in cgroups


def kill_tree(pid: int, container_id: str, proc: Path = PROC) -> bool:
    """SIGKILL `pid` and its descendants if `pid` is in the container.
    True when they were signalled (blocking: reads /proc)."""
    if pid <= 1 or not in_container(pid, container_id, proc):
        return False
    victims = [pid, *descendants(pid, proc)]
    killed = False
    for victim in victims:
        try:
            os.kill(victim, signal.SIGKILL)
            killed = True
        except ProcessLookupError:
            continue
        except PermissionError:
            return killed
    return killed
