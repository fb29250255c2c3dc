"""Minions: `POST /minion/v1/spawn` and `GET /minion/v1/envs` against real
Docker and real HTTP, the one-shot runtime verb, and the pure validation."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiodocker
import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from herder import minions
from herder.app import create_app
from herder.errors import BadRequest, UnknownEnv
from herder.runtime import DockerRuntime, RunSpec
from herder.runtime.oneshot import CappedBuffer, run_config
from herder.settings import Settings
from herder.signing import load_keypair
from herder.tokens import TokenService

from .conftest import INSTANCE_PREFIX, auth, make_settings, session_containers
from .hostile_bodies import MALFORMED_FORMS, assert_refused, malformed

docker = pytest.mark.docker
PYTHON = "herder/python:bookworm"
_dirs = itertools.count()


# -- pure validation ------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["main.sh", "src/app.py", "a b.txt", "ünï.tex", "x" * 255, ".hidden"]
)
def test_plain_relative_names_are_accepted(name: str) -> None:
    assert minions.check_file_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../x",
        "/etc/x",
        "a/../../b",
        "a\x00b",
        ".",
        "./x",
        "a/./b",
        "a//b",
        "a/",
        "line\nbreak",
        "x" * 256,
        "/".join(["d"] * 17),
        "é" * 600,
    ],
)
def test_hostile_names_are_refused(name: str) -> None:
    with pytest.raises(BadRequest):
        minions.check_file_name(name)


def test_a_name_cannot_be_both_file_and_directory() -> None:
    with pytest.raises(BadRequest, match="both a file and a directory"):
        minions.check_files({"lib": b"", "lib/x.py": b""})
    assert minions.check_files({"lib/a.py": b"", "lib/b.py": b""})


def test_too_many_files_are_refused() -> None:
    with pytest.raises(BadRequest, match="too many files"):
        minions.check_files({f"f{i}": b"" for i in range(minions.MAX_FILES + 1)})


def test_unknown_or_missing_env_lists_the_known_ones(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d")
    assert minions.image_for(settings, "python") == PYTHON
    for env in (None, "", "cobol"):
        with pytest.raises(UnknownEnv) as caught:
            minions.image_for(settings, env)
        assert caught.value.status == 400
        assert "latex, node, python, ruby" in caught.value.message


@pytest.mark.parametrize(
    ("seconds", "rate", "expected"),
    [(0.0, 1, (1, 1)), (0.2, 1, (1, 1)), (1.0, 1, (1, 1)), (1.01, 1, (2, 2)), (2.5, 3, (3, 9))],
)
def test_charge_is_ceil_seconds_times_rate_at_least_one(
    seconds: float, rate: int, expected: tuple[int, int]
) -> None:
    assert minions.credits_for(seconds, rate) == expected


def test_mime_types_come_from_the_extension() -> None:
    assert minions.mime_type("main.pdf") == "application/pdf"
    assert minions.mime_type("a.png") == "image/png"
    assert minions.mime_type("noext") == "application/octet-stream"


def test_capped_buffer_keeps_the_head_and_says_it_cut() -> None:
    buffer = CappedBuffer(10)
    for _ in range(3):
        buffer.add(b"abcdef")
    assert buffer.truncated and buffer.dropped == 8
    assert buffer.value().startswith(b"abcdefabcd\n[herder: output cut at 10 bytes")
    whole = CappedBuffer(10)
    whole.add(b"0123456789")
    assert not whole.truncated and whole.value() == b"0123456789"


def test_run_config_carries_every_limit() -> None:
    spec = RunSpec(image=PYTHON, files={}, labels={"herder.kind": "minion"}, memory_bytes=64 << 20)
    config = run_config(spec, ["sh", "/minion/main.sh"])
    host = config["HostConfig"]
    assert host["Memory"] == host["MemorySwap"] == 64 << 20
    assert host["NetworkMode"] == "none" and config["NetworkDisabled"] is True
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
    assert host["ReadonlyRootfs"] is True
    (workdir,) = host["Mounts"]
    assert (
        workdir["Target"] == "/minion" and workdir["Type"] == "volume" and "Source" not in workdir
    )
    options = workdir["VolumeOptions"]["DriverConfig"]["Options"]
    assert options["type"] == "tmpfs" and f"size={spec.disk_bytes}," in options["o"]
    assert config["Cmd"] == ["sh", "/minion/main.sh"] and config["Entrypoint"][:2] == ["sh", "-c"]
    assert host["Init"] is True and host["PidsLimit"] == 128
    assert "size=" in host["Tmpfs"]["/tmp"]
    assert host["Ulimits"][0]["Name"] == "nofile"
    assert host["LogConfig"]["Config"]["max-size"]
    assert config["User"] == "1000:1000" and not host.get("Binds")
    networked = run_config(RunSpec(image=PYTHON, files={}, labels={}, network="herder"), [])
    assert networked["HostConfig"]["NetworkMode"] == "herder"
    assert networked["NetworkDisabled"] is False


# -- the real herder ------------------------------------------------------------


@dataclass
class MinionClient:
    client: TestClient[Any, Any]
    settings: Settings
    token: str

    async def spawn(
        self,
        env: str | None = "python",
        files: dict[str, str | bytes] | None = None,
        output: str | None = None,
        token: str | None = None,
    ) -> aiohttp.ClientResponse:
        fields: list[tuple[str, str | bytes]] = list((files or {}).items())
        if env is not None:
            fields.append(("env", env))
        if output is not None:
            fields.append(("output", output))
        # Encoded by hand: aiohttp's client refuses control characters in names.
        body = urlencode([(k, v) for k, v in fields])
        return await self.client.post(
            "/minion/v1/spawn",
            data=io.BytesIO(body.encode()),
            headers={
                **auth(token or self.token),
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )

    async def run(self, script: str, **kw: Any) -> dict[str, Any]:
        files: dict[str, str | bytes] = {"main.sh": script, **kw.pop("files", {})}
        resp = await self.spawn(files=files, **kw)
        body = await resp.json()
        assert resp.status == 200, body
        assert isinstance(body, dict)
        return body

    async def remaining(self, token: str | None = None) -> int:
        resp = await self.client.get("/token/v1/balance", headers=auth(token or self.token))
        value = (await resp.json())["credits"]
        assert isinstance(value, int)
        return value

    def make_token(self, credits: int = 1000) -> str:
        service = TokenService(load_keypair(self.settings.data_dir), self.settings, None)  # type: ignore[arg-type]
        token, _ = service.create(f"m-{secrets.token_hex(3)}@example.org", credits, 1)
        return token


MinionClientMaker = Callable[..., Awaitable[MinionClient]]


@pytest.fixture
async def make_herder(tmp_path: Path, aiohttp_client: Callable[..., Any]) -> MinionClientMaker:
    async def make(**overrides: Any) -> MinionClient:
        settings = make_settings(tmp_path / f"herder{next(_dirs)}", **overrides)
        client = await aiohttp_client(create_app(settings))
        herder = MinionClient(client, settings, "")
        herder.token = herder.make_token()
        return herder

    return make


@pytest.fixture
async def herder(make_herder: MinionClientMaker) -> MinionClient:
    return await make_herder()


@pytest.fixture(autouse=True)
def no_minion_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if request.node.get_closest_marker("docker"):
        assert session_containers("herder.kind=minion") == [], "a minion container was left behind"


HELLO = {
    "python": ("exec python3 main.py\n", "main.py", "print('hello from python')\n"),
    "node": ("exec node main.js\n", "main.js", "console.log('hello from node')\n"),
    "ruby": ("exec ruby main.rb\n", "main.rb", "puts 'hello from ruby'\n"),
}


@docker
@pytest.mark.parametrize("env", sorted(HELLO))
async def test_hello_world(herder: MinionClient, env: str) -> None:
    script, name, source = HELLO[env]
    before = await herder.remaining()
    body = await herder.run(script, env=env, files={name: source})
    assert body["StdOut"] == f"hello from {env}\n"
    assert body["StdErr"] == "" and body["ExitCode"] == 0
    assert body["Duration"] > 0
    assert await herder.remaining() == before - max(1, math.ceil(body["Duration"]))


LATEX = r"""\documentclass{article}
\begin{document}
Hello from \LaTeX{} in a minion.
\end{document}
"""


@docker
async def test_latex_turns_tex_into_pdf(herder: MinionClient) -> None:
    resp = await herder.spawn(
        env="latex",
        files={
            "main.sh": "pdflatex -interaction=nonstopmode main.tex >/dev/null\n",
            "main.tex": LATEX,
        },
        output="main.pdf",
    )
    body = await resp.read()
    assert resp.status == 200, body[:500]
    assert resp.content_type == "application/pdf"
    assert body.startswith(b"%PDF")
    assert resp.headers["X-Minion-Exit-Code"] == "0"


@docker
async def test_stdout_and_stderr_apart_and_exit_code(herder: MinionClient) -> None:
    body = await herder.run("echo to-out; echo to-err >&2; echo more-out; exit 3\n")
    assert body["StdOut"] == "to-out\nmore-out\n"
    assert body["StdErr"] == "to-err\n"
    assert body["ExitCode"] == 3


@docker
async def test_output_file_is_returned_with_its_mime_type(herder: MinionClient) -> None:
    resp = await herder.spawn(
        files={"main.sh": "mkdir -p out && printf 'a,b\\n1,2\\n' > out/table.csv\n"},
        output="out/table.csv",
    )
    assert resp.status == 200
    assert resp.content_type == "text/csv"
    assert await resp.read() == b"a,b\n1,2\n"


@docker
async def test_missing_output_file_falls_back_to_json(herder: MinionClient) -> None:
    body = await herder.run("echo ran\n", output="nothing.txt")
    assert body["StdOut"] == "ran\n" and body["ExitCode"] == 0
    assert "'nothing.txt' was not found" in body["StdErr"]


@docker
async def test_multipart_files_binary_and_nested(herder: MinionClient) -> None:
    blob = bytes(range(256)) * 64
    form = aiohttp.FormData()
    form.add_field("env", "python")
    form.add_field("main.sh", b"python3 lib/run.py\n", filename="main.sh")
    form.add_field(
        "lib/run.py",
        b"import hashlib;print(hashlib.sha256(open('blob','rb').read()).hexdigest())\n",
        filename="run.py",
    )
    form.add_field("blob", blob, filename="blob", content_type="application/octet-stream")
    resp = await herder.client.post("/minion/v1/spawn", data=form, headers=auth(herder.token))
    body = await resp.json()
    assert resp.status == 200, body
    assert body["StdOut"].strip() == hashlib.sha256(blob).hexdigest()


@docker
async def test_sandbox_user_filesystem_and_privileges(herder: MinionClient) -> None:
    script = (
        "id -u; "
        "touch /minion/ok && echo minion-writable; "
        "touch /tmp/ok && echo tmp-writable; "
        "touch /etc/nope 2>/dev/null || echo root-read-only; "
        "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status\n"
    )
    body = await herder.run(script)
    lines = body["StdOut"].split("\n")
    assert lines[0] == "1000"
    assert {"minion-writable", "tmp-writable", "root-read-only"} <= set(lines)
    assert "CapEff:\t0000000000000000" in lines
    assert "NoNewPrivs:\t1" in lines


# -- bad requests: clear 4xx, nothing run, nothing charged ---------------------------


def _multipart(fields: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart body written by hand, so hostile names go through as they are."""
    boundary = secrets.token_hex(8)
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="f"\r\n\r\n'.encode()
        + value
        + b"\r\n"
        for name, value in fields
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@docker
@pytest.mark.parametrize("name", ["../x", "/etc/x", "a/../../b", "a\x00b"])
@pytest.mark.parametrize("form", ["urlencoded", "multipart"])
async def test_hostile_file_names_are_refused(herder: MinionClient, name: str, form: str) -> None:
    before = await herder.remaining()
    if form == "urlencoded":
        resp = await herder.spawn(files={"main.sh": "echo hi", name: "x"})
    else:
        body, content_type = _multipart([("env", b"python"), (name, b"x")])
        resp = await herder.client.post(
            "/minion/v1/spawn",
            data=body,
            headers={**auth(herder.token), "Content-Type": content_type},
        )
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert "file name" in error or "control character" in error
    assert await herder.remaining() == before


@docker
@malformed(MALFORMED_FORMS)
async def test_malformed_forms_are_refused(
    herder: MinionClient, body: bytes, content_type: str, word: str
) -> None:
    before = await herder.remaining()
    resp = await herder.client.post(
        "/minion/v1/spawn",
        data=body,
        headers={**auth(herder.token), "Content-Type": content_type},
    )
    await assert_refused(resp, word)
    assert await herder.remaining() == before


@docker
async def test_output_outside_minion_is_refused(herder: MinionClient) -> None:
    resp = await herder.spawn(files={"main.sh": "echo hi"}, output="../../etc/passwd")
    assert resp.status == 400
    text = await resp.text()
    assert "root:" not in text and "file name" in json.loads(text)["error"]


@docker
@pytest.mark.parametrize(
    ("script", "output"),
    [
        ("ln -s /etc/passwd leak", "leak"),
        ("ln -s /etc d", "d/passwd"),
        ("ln -s / up", "up/etc/passwd"),
        ("mkdir dir", "dir"),
        ("mkfifo pipe", "pipe"),
    ],
)
async def test_output_never_follows_a_link_or_returns_a_non_file(
    herder: MinionClient, script: str, output: str
) -> None:
    resp = await herder.spawn(files={"main.sh": script}, output=output)
    assert resp.status == 200
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert "root:x:0:0" not in json.dumps(body)
    assert "not returned" in body["StdErr"] or "not found" in body["StdErr"]


@docker
async def test_ten_megabyte_body_gets_413_urlencoded(herder: MinionClient) -> None:
    before = await herder.remaining()
    resp = await herder.spawn(files={"main.sh": "echo hi", "big": "x" * 10_000_000})
    assert resp.status == 413
    assert "too large" in (await resp.json())["error"]
    assert await herder.remaining() == before


@docker
async def test_ten_megabyte_streamed_multipart_gets_413(herder: MinionClient) -> None:
    before = await herder.remaining()
    boundary = "b0undary"

    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="env"\r\n\r\npython\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="big"; filename="big"\r\n\r\n'
        ).encode()
        for _ in range(10):
            yield b"x" * 1_000_000
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        resp = await herder.client.post(
            "/minion/v1/spawn",
            data=body(),  # chunked: no Content-Length to refuse it early
            headers={
                **auth(herder.token),
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
        )
    except aiohttp.ClientError:  # pragma: no cover - the server may close mid-upload
        pytest.fail("the herder closed the connection instead of answering 413")
    assert resp.status == 413
    assert "too large" in (await resp.json())["error"]
    assert await herder.remaining() == before


@docker
async def test_unknown_and_missing_env_are_400(herder: MinionClient) -> None:
    resp = await herder.spawn(env="cobol", files={"main.sh": "echo"})
    assert resp.status == 400
    body = await resp.json()
    assert "cobol" in body["error"] and "python" in body["error"]
    assert body["known"] == ["latex", "node", "python", "ruby"]
    resp = await herder.spawn(env=None, files={"main.sh": "echo"})
    assert resp.status == 400 and "env is required" in (await resp.json())["error"]


@docker
async def test_bad_requests(herder: MinionClient) -> None:
    resp = await herder.client.post("/minion/v1/spawn", data={"env": "python"})
    assert resp.status == 401
    resp = await herder.client.post(
        "/minion/v1/spawn", json={"env": "python"}, headers=auth(herder.token)
    )
    assert resp.status == 400 and "expected a form" in (await resp.json())["error"]
    resp = await herder.client.post(
        "/minion/v1/spawn", data=[("env", "python"), ("env", "ruby")], headers=auth(herder.token)
    )
    assert resp.status == 400 and "twice" in (await resp.json())["error"]


@docker
async def test_no_credits_is_402_and_nothing_runs(herder: MinionClient) -> None:
    broke = herder.make_token(credits=0)
    resp = await herder.spawn(files={"main.sh": "echo hi"}, token=broke)
    assert resp.status == 402
    assert "no credits" in (await resp.json())["error"]
    assert await herder.remaining(broke) == 0


@docker
async def test_concurrent_runs_cannot_overdraw_a_subject(make_herder: MinionClientMaker) -> None:
    """Credits are checked before a run and charged after it: the runs in
    flight hold what they may cost, so five at once with 1 credit start one."""
    herder = await make_herder(minion_timeout=2)
    poor = herder.make_token(credits=1)
    replies = await asyncio.gather(
        *(herder.spawn(files={"main.sh": "sleep 1.2; echo ran"}, token=poor) for _ in range(5))
    )
    statuses = sorted(r.status for r in replies)
    assert statuses == [200, 402, 402, 402, 402]
    refused = [await r.json() for r in replies if r.status == 402]
    assert all("wait for them to finish" in body["error"] for body in refused)
    # One run of 2 billed seconds: overdrawn by at most that one run.
    assert await herder.remaining(poor) == -1
    # Once it has finished, a subject in credit may run several at once again.
    rich = herder.make_token(credits=100)
    replies = await asyncio.gather(
        *(herder.spawn(files={"main.sh": "echo ran"}, token=rich) for _ in range(3))
    )
    assert [r.status for r in replies] == [200, 200, 200]


@docker
async def test_missing_image_is_404_naming_it(make_herder: MinionClientMaker) -> None:
    herder = await make_herder(images="python=herder/python:bookworm,ghost=herder/ghost:never")
    resp = await herder.spawn(env="ghost", files={"main.sh": "echo"})
    assert resp.status == 404
    error = (await resp.json())["error"]
    assert "herder/ghost:never" in error and "herder images build ghost" in error


@docker
async def test_envs_lists_environments_and_images(make_herder: MinionClientMaker) -> None:
    herder = await make_herder(images="python=herder/python:bookworm,ghost=herder/ghost:never")
    resp = await herder.client.get("/minion/v1/envs")
    assert resp.status == 200
    assert (await resp.json())["envs"] == [
        {"name": "ghost", "image": "herder/ghost:never", "available": False},
        {"name": "python", "image": "herder/python:bookworm", "available": True},
    ]


# -- limits ---------------------------------------------------------------------


@docker
async def test_timeout_kills_and_answers_504_with_partial_output(
    make_herder: MinionClientMaker,
) -> None:
    herder = await make_herder(minion_timeout=2)
    before = await herder.remaining()
    resp = await herder.spawn(
        files={"main.sh": "echo started; echo warn >&2; sleep 60; echo never"}
    )
    assert resp.status == 504
    body = await resp.json()
    assert "ran over" in body["error"]
    assert body["StdOut"] == "started\n" and body["StdErr"] == "warn\n"
    assert before - await herder.remaining() >= 2


@docker
async def test_five_megabytes_of_stdout_are_capped(herder: MinionClient) -> None:
    body = await herder.run("head -c 5000000 /dev/zero | tr '\\0' x; echo done >&2\n")
    limit = herder.settings.minion_output_limit
    assert body["StdOut"].startswith("x" * limit)
    assert "[herder: output cut at" in body["StdOut"]
    assert len(body["StdOut"]) < limit + 200
    assert body["StdErr"] == "done\n" and body["ExitCode"] == 0


@docker
async def test_network_is_off_by_default(herder: MinionClient) -> None:
    script = (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 80), timeout=3)\n"
        "    print('connected')\n"
        "except OSError as exc:\n"
        "    print('failed', exc.errno)\n"
        "print(sorted(n for _, n in socket.if_nameindex()))\n"
    )
    body = await herder.run("python3 net.py", files={"net.py": script})
    assert body["StdOut"].startswith("failed")
    assert "['lo']" in body["StdOut"]


@docker
async def test_a_networked_minion_is_on_the_herder_network(make_herder: MinionClientMaker) -> None:
    herder = await make_herder(minion_network="true")
    # The default route's gateway, from the kernel's table (no tools needed).
    script = (
        "import ipaddress\n"
        "for line in open('/proc/net/route').read().splitlines()[1:]:\n"
        "    fields = line.split()\n"
        "    if fields[1] == '00000000':\n"
        "        print(ipaddress.IPv4Address(bytes.fromhex(fields[2])[::-1]))\n"
    )
    body = await herder.run("python3 route.py", files={"route.py": script})
    assert body["ExitCode"] == 0, body
    engine = aiodocker.Docker()
    try:
        network = await (await engine.networks.get(herder.settings.network)).show()
    finally:
        await engine.close()
    assert network["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    assert body["StdOut"].strip() == network["IPAM"]["Config"][0]["Gateway"]


@docker
async def test_fork_bomb_is_stopped_by_the_pids_limit(make_herder: MinionClientMaker) -> None:
    herder = await make_herder(minion_pids=32, minion_timeout=5)
    counter = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while n < 1000:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError:\n"
        "    print('fork refused after', n)\n"
    )
    body = await herder.run(
        "python3 bomb.py; kill -9 -1 2>/dev/null; true", files={"bomb.py": counter}
    )
    assert body["StdOut"].startswith("fork refused after")
    assert int(body["StdOut"].split()[-1]) < 32
    # The classic one: it is contained, then killed at the timeout or by itself.
    resp = await herder.spawn(files={"main.sh": "b() { b | b & }; b; sleep 10"})
    assert resp.status in (200, 504)
    assert (await herder.run("echo still-fine"))["StdOut"] == "still-fine\n"


@docker
async def test_memory_hog_is_killed_and_reported(make_herder: MinionClientMaker) -> None:
    herder = await make_herder(minion_memory_mb=64)
    hog = "chunks = []\nwhile True:\n    chunks.append(b'x' * (8 << 20))\n"
    body = await herder.run("exec python3 hog.py", files={"hog.py": hog})
    assert body["ExitCode"] == 137
    assert body["OOMKilled"] is True
    assert "out of memory" in body["StdErr"]


@docker
async def test_two_minions_run_concurrently(herder: MinionClient) -> None:
    first, second = await asyncio.gather(
        herder.run("sleep 1; echo one"), herder.run("sleep 1; echo two")
    )
    assert (first["StdOut"], second["StdOut"]) == ("one\n", "two\n")


@docker
async def test_cancelled_run_still_removes_its_container(tmp_path: Path) -> None:
    runtime = DockerRuntime("unix:///var/run/docker.sock")
    labels = {
        "herder.managed": "1",
        "herder.kind": "minion",
        "herder.instance": INSTANCE_PREFIX + "cancel",
    }
    try:
        task = asyncio.create_task(
            runtime.run_once(
                RunSpec(image=PYTHON, files={"main.sh": b"sleep 60"}, labels=labels, timeout=60)
            )
        )
        for _ in range(100):
            await asyncio.sleep(0.1)
            running = await runtime.list(labels, all=False)
            if running:
                break
        assert running, "the run never started"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await runtime.list(labels) == []
    finally:
        await runtime.close()


@docker
async def test_output_file_over_its_limit_is_not_copied() -> None:
    runtime = DockerRuntime("unix:///var/run/docker.sock")
    labels = {
        "herder.managed": "1",
        "herder.kind": "minion",
        "herder.instance": INSTANCE_PREFIX + "big",
    }
    try:
        result = await runtime.run_once(
            RunSpec(
                image=PYTHON,
                files={
                    "main.sh": b"head -c 5000 /dev/zero > big.bin; head -c 10 /dev/zero > ok.bin"
                },
                labels=labels,
                output_file="big.bin",
                output_file_limit=1000,
            )
        )
        assert result.output is None and result.exit_code == 0
        assert result.output_note is not None and "larger than 1000 bytes" in result.output_note
    finally:
        await runtime.close()
