"""runtime.proctree on a made-up /proc: the tree it finds and the cgroup check
that keeps it from killing a process that is not the container's."""

from __future__ import annotations

from pathlib import Path

from herder.runtime import proctree

CONTAINER = "4f" * 32
OTHER = "9a" * 32


def fake_proc(tmp_path: Path, processes: dict[int, tuple[int, str, str]]) -> Path:
    """pid -> (ppid, comm, container id in its cgroup)."""
    for pid, (ppid, comm, container) in processes.items():
        entry = tmp_path / str(pid)
        entry.mkdir()
        (entry / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1\n")
        (entry / "cgroup").write_text(f"0::/system.slice/docker-{container}.scope\n")
    (tmp_path / "self").mkdir()
    return tmp_path


def test_descendants_follow_the_tree_whatever_the_command_names(tmp_path: Path) -> None:
    proc = fake_proc(
        tmp_path,
        {
            10: (1, "sh", CONTAINER),
            11: (10, "sleep) S 1 (odd", CONTAINER),  # a name with parens and spaces
            12: (11, "yes", CONTAINER),
            13: (10, "cat", CONTAINER),
            20: (1, "unrelated", CONTAINER),
        },
    )
    assert sorted(proctree.descendants(10, proc)) == [11, 12, 13]
    assert proctree.descendants(12, proc) == []


def test_only_a_process_of_the_container_is_killed(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {30: (1, "sh", OTHER)})
    assert proctree.in_container(30, OTHER, proc)
    assert not proctree.in_container(30, CONTAINER, proc)  # a reused pid
    assert not proctree.in_container(31, CONTAINER, proc)  # gone
    assert not proctree.in_container(30, "", proc)
    # Nothing is signalled: the pid is not the container's (or is init).
    assert proctree.kill_tree(30, CONTAINER, proc) is False
    assert proctree.kill_tree(1, CONTAINER, proc) is False
