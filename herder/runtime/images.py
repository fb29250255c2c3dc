"""Environment images: build `images/<name>/Dockerfile` through the Docker API.

`herder images build [NAME...] [--force]` calls `main_build`, which calls
`build_images`. Every Dockerfile starts `ARG BASE=debian:bookworm-slim` /
`FROM ${BASE}`. Our machines reach no container registry, so the base is
`debian:bookworm-slim` only when it is already present locally; otherwise it
is `herder/base:bookworm`, made here from scratch with `debootstrap
--variant=minbase` and imported with the Engine's `images/create?fromSrc=-`
(the `docker import` endpoint). Tags that already exist are not rebuilt
unless `force` is given; a forced rebuild still uses the layer cache, so it
only redoes the steps whose inputs changed.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiodocker
from aiodocker.exceptions import DockerError

from ..bundled import images_dir
from ..settings import Settings
from .build_progress import BuildReporter

UPSTREAM_BASE = "debian:bookworm-slim"
BASE_REPO, BASE_TAG = "herder/base", "bookworm"
BASE_IMAGE = f"{BASE_REPO}:{BASE_TAG}"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"  # the mirror this host's apt uses
GOLEM_BUILD = "golem"

# The same dpkg filter as Debian's slim images: no docs, man pages or
# translations, which keeps TeX Live and Chromium images much smaller.
_DPKG_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
"""

_BASE_CHANGES = [
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["bash"]',
]

Progress = Callable[[str], None]


class ImageBuildError(Exception):
    """A build that cannot go on; the message is one line meant for users."""


def print_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def known_builds(settings: Settings) -> dict[str, str]:
    """Build name -> tag, for every env (and the golem) that has a Dockerfile."""
    wanted = dict(settings.images)
    wanted[GOLEM_BUILD] = settings.golem_image
    root = images_dir()
    return {name: tag for name, tag in wanted.items() if (root / name / "Dockerfile").is_file()}


async def build_images(
    settings: Settings,
    names: list[str],
    *,
    force: bool = False,
    progress: Progress = print_to_stderr,
) -> list[str]:
    """Build the named images (all known ones when `names` is empty).

    Tags that already exist are skipped unless `force`. The base is made
    first when an image needs building and neither `debian:bookworm-slim`
    nor `herder/base:bookworm` is present. Returns the tags built, in order;
    raises `ImageBuildError` with one line when something fails.
    """
    builds = known_builds(settings)
    unknown = [name for name in names if name not in builds]
    if unknown:
        known = ", ".join(builds) or "none"
        raise ImageBuildError(
            f"unknown image {', '.join(unknown)}; known: {known} (from {images_dir()})"
        )
    chosen = list(dict.fromkeys(names)) if names else list(builds)

    docker = _connect(settings.docker_url)
    try:
        await _check_engine(docker, settings.docker_url)
        todo = []
        for name in chosen:
            tag = builds[name]
            if not force and await _image_exists(docker, tag):
                progress(f"{tag}: present, not rebuilt (use --force to rebuild)")
                continue
            todo.append(name)
        if not todo:
            return []
        base = await _ensure_base(docker, progress)
        built = []
        for name in todo:
            tag = builds[name]
            started = time.monotonic()
            progress(f"{tag}: building images/{name} on {base}")
            await _build_one(docker, name, tag, base, progress)
            progress(f"{tag}: built in {time.monotonic() - started:.0f}s")
            built.append(tag)
        return built
    finally:
        await docker.close()


def main_build(settings: Settings, names: list[str], force: bool) -> int:
    """`herder images build [NAME...] [--force]`: 0 on success, 1 on failure.

    On a terminal, progress is a status line per image (steps, bytes from
    the mirror); elsewhere, the builder's lines as they come."""
    reporter = BuildReporter(sys.stderr) if sys.stderr.isatty() else None
    try:
        built = asyncio.run(
            build_images(settings, names, force=force, progress=reporter or print_to_stderr)
        )
    except ImageBuildError as exc:
        if reporter:
            reporter.close()
        print(f"herder images build: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if reporter:
            reporter.close()
        print("herder images build: interrupted", file=sys.stderr)
        return 130
    if reporter:
        reporter.close()
    print(f"built: {', '.join(built)}" if built else "nothing to build", file=sys.stderr)
    return 0


def _connect(url: str) -> aiodocker.Docker:
    try:
        return aiodocker.Docker(url=url)
    except (ValueError, OSError) as exc:
        raise ImageBuildError(
            f"no Docker Engine answers at {url} ({exc}); run scripts/ensure-docker"
        ) from None


async def _check_engine(docker: aiodocker.Docker, url: str) -> None:
    try:
        await docker.version()
    except (DockerError, OSError) as exc:
        detail = exc.message if isinstance(exc, DockerError) else str(exc)
        raise ImageBuildError(
            f"no Docker Engine answers at {url}; run scripts/ensure-docker ({detail})"
        ) from None


async def _image_exists(docker: aiodocker.Docker, tag: str) -> bool:
    try:
        await docker.images.inspect(tag)
    except DockerError as exc:
        if exc.status == 404:
            return False
        raise ImageBuildError(f"cannot inspect image {tag}: {exc.message}") from None
    return True


async def _ensure_base(docker: aiodocker.Docker, progress: Progress) -> str:
    """The image to build on: Debian's slim image if present, else our own."""
    if await _image_exists(docker, UPSTREAM_BASE):
        return UPSTREAM_BASE
    if not await _image_exists(docker, BASE_IMAGE):
        started = time.monotonic()
        progress(f"{BASE_IMAGE}: not present, making it with debootstrap")
        await build_base(docker, progress)
        progress(f"{BASE_IMAGE}: made in {time.monotonic() - started:.0f}s")
    return BASE_IMAGE


def debian_mirror() -> str:
    return os.environ.get("HERDER_DEBIAN_MIRROR") or DEFAULT_MIRROR


def _security_mirror(mirror: str) -> str | None:
    explicit = os.environ.get("HERDER_DEBIAN_SECURITY_MIRROR")
    if explicit:
        return explicit
    if mirror.rstrip("/").endswith("/debian"):
        return mirror.rstrip("/") + "-security"
    return None


async def build_base(docker: aiodocker.Docker, progress: Progress) -> None:
    """Make `herder/base:bookworm`: debootstrap minbase, tar it, import it."""
    if shutil.which("debootstrap") is None:
        raise ImageBuildError(
            f"neither {UPSTREAM_BASE} nor {BASE_IMAGE} is present and debootstrap is "
            "not installed (apt-get install debootstrap)"
        )
    if os.geteuid() != 0:
        raise ImageBuildError(
            f"neither {UPSTREAM_BASE} nor {BASE_IMAGE} is present; making the base "
            "with debootstrap needs root"
        )
    mirror = debian_mirror()
    workdir = await asyncio.to_thread(tempfile.mkdtemp, prefix="herder-base-", dir="/var/tmp")
    rootfs = Path(workdir) / "rootfs"
    try:
        await _run_logged(
            ["debootstrap", "--variant=minbase", SUITE, str(rootfs), mirror],
            what="debootstrap",
            progress=progress,
        )
        await asyncio.to_thread(_prepare_rootfs, rootfs, mirror)
        progress(f"{BASE_IMAGE}: importing the root file system")
        await _import_rootfs(docker, rootfs)
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, True)


def _prepare_rootfs(rootfs: Path, mirror: str) -> None:
    """Point apt at the plain-HTTP mirror and trim what images never need."""
    lines = [f"deb {mirror} {SUITE} main", f"deb {mirror} {SUITE}-updates main"]
    security = _security_mirror(mirror)
    if security:
        lines.append(f"deb {security} {SUITE}-security main")
    (rootfs / "etc/apt/sources.list").write_text("\n".join(lines) + "\n")
    (rootfs / "etc/dpkg/dpkg.cfg.d/herder-slim").write_text(_DPKG_EXCLUDES)
    (rootfs / "etc/apt/apt.conf.d/herder-slim").write_text(
        'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
        'Acquire::Languages "none";\n'
    )
    for directory in ("var/lib/apt/lists", "var/cache/apt/archives", "var/log", "tmp"):
        target = rootfs / directory
        if not target.is_dir():
            continue
        for child in target.iterdir():
            if child.is_dir() and not child.is_symlink():
                if child.name != "partial":
                    shutil.rmtree(child)
            else:
                child.unlink()
    # The packages debootstrap installed predate the dpkg filter: trim them
    # the same way (Debian's slim images do too).
    for directory in ("usr/share/man", "usr/share/groff", "usr/share/info", "usr/share/locale"):
        # Keep the directories: some maintainer scripts expect e.g. man1/.
        for path in sorted((rootfs / directory).rglob("*"), reverse=True):
            if not path.is_dir() or path.is_symlink():
                path.unlink()
    docs = rootfs / "usr/share/doc"
    for package in docs.iterdir() if docs.is_dir() else ():
        for child in package.iterdir() if package.is_dir() and not package.is_symlink() else ():
            if child.name == "copyright":
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    for stale in (rootfs / "var/cache/debconf").glob("*-old"):
        stale.unlink()
    # Docker mounts its own /dev, /proc and /sys; keep the mount points only.
    for directory in ("dev", "proc", "sys"):
        target = rootfs / directory
        for child in target.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


async def _import_rootfs(docker: aiodocker.Docker, rootfs: Path) -> None:
    # aiodocker's `images.import_image` posts to /images/load, which expects a
    # `docker save` archive; a plain root file system goes to
    # /images/create?fromSrc=- as `docker import` does. `changes` repeats, so
    # the query is encoded here rather than through aiodocker's dict params.
    query = urlencode(
        [("fromSrc", "-"), ("repo", BASE_REPO), ("tag", BASE_TAG)]
        + [("changes", change) for change in _BASE_CHANGES]
    )
    tar = await asyncio.create_subprocess_exec(
        "tar",
        "--numeric-owner",
        "-C",
        str(rootfs),
        "-cf",
        "-",
        ".",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert tar.stdout is not None and tar.stderr is not None
    tar_out = tar.stdout

    async def chunks() -> AsyncIterator[bytes]:
        while chunk := await tar_out.read(1 << 20):
            yield chunk

    messages: list[dict[str, Any]] = []
    try:
        async with docker._query(  # noqa: SLF001 - no public import endpoint, see above
            f"images/create?{query}",
            "POST",
            data=chunks(),
            headers={"Content-Type": "application/x-tar"},
            timeout=None,
        ) as response:
            async for raw in response.content:
                text = raw.decode(errors="replace").strip()
                if text:
                    messages.append(_json_or_text(text))
    except DockerError as exc:
        raise ImageBuildError(f"importing {BASE_IMAGE} failed: {exc.message}") from None
    finally:
        if tar.returncode is None:
            tar.kill()
        tar_errors = await tar.stderr.read()
        await tar.wait()
    errors = [m["error"] for m in messages if "error" in m]
    if errors:
        raise ImageBuildError(f"importing {BASE_IMAGE} failed: {errors[-1]}")
    if tar.returncode not in (0, -9):
        raise ImageBuildError(
            f"tarring the base failed: {tar_errors.decode(errors='replace').strip()[-300:]}"
        )
    if not await _image_exists(docker, BASE_IMAGE):
        raise ImageBuildError(f"importing {BASE_IMAGE} left no image behind")


def _json_or_text(text: str) -> dict[str, Any]:
    import json

    try:
        value = json.loads(text)
    except ValueError:
        return {"status": text}
    return value if isinstance(value, dict) else {"status": text}


async def _run_logged(argv: list[str], *, what: str, progress: Progress) -> None:
    """Run a command, relaying its output lines; raise with its last line on failure."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    last = ""
    try:
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                last = line
                progress(f"{what}: {line}")
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise ImageBuildError(f"{what} failed (exit {proc.returncode}): {last}")


def _context_tar(context: Path) -> io.BytesIO:
    """The build context as a tar; owners are reset so the layer cache holds."""

    def reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for path in sorted(context.rglob("*")):
            tar.add(
                path, arcname=path.relative_to(context).as_posix(), recursive=False, filter=reset
            )
    buffer.seek(0)
    return buffer


async def _build_one(
    docker: aiodocker.Docker, name: str, tag: str, base: str, progress: Progress
) -> None:
    context = await asyncio.to_thread(_context_tar, images_dir() / name)
    last = ""
    try:
        async for item in docker.images.build(
            fileobj=context,
            tag=tag,
            buildargs={"BASE": base},
            labels={"herder.image": name},
            rm=True,
            forcerm=True,
            stream=True,
            encoding="gzip",
            timeout=None,
        ):
            for line in str(item.get("stream", "")).splitlines():
                if line.strip():
                    last = line.strip()
                    progress(f"{name}: {line.rstrip()}")
            if "error" in item:
                raise ImageBuildError(f"building {tag} failed: {str(item['error']).strip()}")
    except DockerError as exc:
        message = exc.message.strip() or last
        raise ImageBuildError(f"building {tag} failed: {message}") from None
    if not await _image_exists(docker, tag):
        raise ImageBuildError(f"building {tag} failed: no image after the build ({last})")
