"""Tar archives for the engine's copy-in API. Blocking: call in a thread."""

from __future__ import annotations

import io
import tarfile
import time


def files_tar(files: dict[str, bytes], *, uid: int = 0, gid: int = 0, mode: int = 0o644) -> bytes:
    """A tar of `files` (plain relative names, already validated), owned by uid:gid."""
    buffer = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        dirs: set[str] = set()
        for name, data in files.items():
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                directory = "/".join(parts[:i])
                if directory not in dirs:
                    dirs.add(directory)
                    info = tarfile.TarInfo(directory)
                    info.type = tarfile.DIRTYPE
                    info.mode, info.uid, info.gid, info.mtime = 0o755, uid, gid, now
                    tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, gid, now
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
