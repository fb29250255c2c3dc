"""Environment images, built and run on the real Docker Engine.

Builds are skipped when the tags exist, so this is quick on a machine that
has run `herder images build`; from nothing it takes a few minutes.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from herder.runtime.images import ImageBuildError, build_images, known_builds
from herder.settings import Settings

pytestmark = pytest.mark.docker

TEST_LABELS = {"herder.test": "images"}
BUILD_TIMEOUT = 1800  # from nothing, TeX Live and Chromium take minutes


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.load({"data_dir": str(tmp_path)}, environ={})


@pytest.fixture
async def docker(settings: Settings) -> AsyncIterator[aiodocker.Docker]:
    client = aiodocker.Docker(url=settings.docker_url)
    try:
        yield client
    finally:
        await client.close()


async def ensure_built(settings: Settings, name: str) -> str:
    await build_images(settings, [name], progress=lambda _line: None)
    return known_builds(settings)[name]


def tar_of(name: str, text: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.uid, info.gid = len(data), 0o644, 1000, 1000
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def run_in(
    docker: aiodocker.Docker,
    image: str,
    *,
    cmd: list[str] | None = None,
    main_sh: str | None = None,
) -> tuple[int, str, str]:
    """Run a container like a minion does; return (exit code, stdout, stderr)."""
    config: dict[str, Any] = {
        "Image": image,
        "Labels": TEST_LABELS,
        "Tty": False,
        "HostConfig": {
            "NetworkMode": "none",
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "Memory": 256 << 20,
        },
    }
    if cmd is not None:
        config["Cmd"] = cmd
    container = await docker.containers.create(config)
    try:
        if main_sh is not None:
            await container.put_archive("/minion", tar_of("main.sh", main_sh))
        await container.start()
        result = await container.wait(timeout=120)
        stdout = "".join(await container.log(stdout=True, stderr=False))
        stderr = "".join(await container.log(stdout=False, stderr=True))
        return result["StatusCode"], stdout, stderr
    finally:
        await container.delete(force=True)


async def test_unknown_name_lists_known_builds(settings: Settings) -> None:
    with pytest.raises(ImageBuildError) as info:
        await build_images(settings, ["cobol"])
    message = str(info.value)
    assert "cobol" in message
    for name in ("python", "node", "ruby", "latex", "golem"):
        assert name in message


async def test_unreachable_engine_is_one_clear_error(tmp_path: Path) -> None:
    settings = Settings.load(
        {"data_dir": str(tmp_path), "docker_url": "unix:///nonexistent.sock"}, environ={}
    )
    with pytest.raises(ImageBuildError) as info:
        await build_images(settings, ["python"])
    assert "no Docker Engine answers at unix:///nonexistent.sock" in str(info.value)
    assert "scripts/ensure-docker" in str(info.value)


@pytest.mark.timeout(BUILD_TIMEOUT)
async def test_existing_image_is_not_rebuilt(settings: Settings) -> None:
    await ensure_built(settings, "python")
    lines: list[str] = []
    assert await build_images(settings, ["python"], progress=lines.append) == []
    assert any("not rebuilt" in line for line in lines)


@pytest.mark.timeout(BUILD_TIMEOUT)
async def test_python_image_runs_main_sh_as_non_root(
    settings: Settings, docker: aiodocker.Docker
) -> None:
    image = await ensure_built(settings, "python")
    main_sh = (
        "id -u\n"
        "pwd\n"
        "python3 -c 'import sys; print(6 * 7); print(\"oops\", file=sys.stderr)'\n"
        "echo written > /minion/out.txt && cat /minion/out.txt\n"
    )
    code, stdout, stderr = await run_in(docker, image, main_sh=main_sh)
    assert code == 0, stderr
    uid, cwd, answer, written = stdout.split()
    assert int(uid) != 0
    assert (cwd, answer, written) == ("/minion", "42", "written")
    assert stderr.strip() == "oops"


@pytest.mark.timeout(BUILD_TIMEOUT)
@pytest.mark.parametrize(
    ("name", "command", "expected"),
    [
        ("node", "node --version", "v"),
        ("ruby", "ruby --version", "ruby "),
        ("latex", "pdflatex --version", "pdfTeX"),
        ("golem", "chromium --version", "Chromium"),
    ],
)
async def test_env_image_has_its_runtime(
    settings: Settings, docker: aiodocker.Docker, name: str, command: str, expected: str
) -> None:
    image = await ensure_built(settings, name)
    inspected = await docker.images.inspect(image)
    assert inspected["Config"]["User"] == "minion"
    code, stdout, stderr = await run_in(
        docker, image, cmd=["sh", "-c", f"id -u && test -w /minion && {command}"]
    )
    assert code == 0, stderr
    uid, version = stdout.split("\n", 1)
    assert int(uid) != 0
    assert expected in version


@pytest.mark.timeout(BUILD_TIMEOUT)
async def test_latex_image_typesets_a_plain_article(
    settings: Settings, docker: aiodocker.Docker
) -> None:
    image = await ensure_built(settings, "latex")
    main_sh = (
        "cat > doc.tex <<'TEX'\n"
        "\\documentclass{article}\n"
        "\\begin{document}\n"
        "\\section{Hello} $e^{i\\pi}+1=0$, \\textbf{bold}, \\emph{it}, \\texttt{mono}.\n"
        "\\end{document}\n"
        "TEX\n"
        "pdflatex -interaction=nonstopmode -halt-on-error doc.tex >/dev/null\n"
        "head -c 5 doc.pdf\n"
    )
    code, stdout, stderr = await run_in(docker, image, main_sh=main_sh)
    assert code == 0, stdout + stderr
    assert stdout == "%PDF-"


@pytest.mark.timeout(BUILD_TIMEOUT)
async def test_failing_build_reports_the_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker: aiodocker.Docker
) -> None:
    await ensure_built(Settings.load({"data_dir": str(tmp_path)}, environ={}), "python")
    context = tmp_path / "images" / "broken"
    context.mkdir(parents=True)
    (context / "Dockerfile").write_text(
        "ARG BASE=debian:bookworm-slim\nFROM ${BASE}\nRUN echo about to fail && exit 3\n"
    )
    monkeypatch.setenv("HERDER_IMAGES_DIR", str(tmp_path / "images"))
    tag = "herder-test/broken:never"
    settings = Settings.load({"data_dir": str(tmp_path), "images": f"broken={tag}"}, environ={})
    assert known_builds(settings) == {"broken": tag}
    with pytest.raises(ImageBuildError) as info:
        await build_images(settings, [], progress=lambda _line: None)
    assert f"building {tag} failed" in str(info.value)
    assert "returned a non-zero code: 3" in str(info.value)
    with pytest.raises(aiodocker.DockerError):
        await docker.images.inspect(tag)
