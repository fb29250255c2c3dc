"""Client commands: talk to a running herder over HTTP with aiohttp's client.

Configured by `--url`/`HERDER_URL` (default http://localhost:8080) and
`--token`/`HERDER_TOKEN`; these are the client's own flags, not server
settings. A server error is printed as one line on stderr
(`herder: <message> (HTTP <status>)`) and the command exits with code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

COMMANDS = ("ping", "daemon", "minion", "golem", "node")
DEFAULT_URL = "http://localhost:8080"
DETACH_KEY = b"\x1d"  # Ctrl-]
PIPE_QUIET_SECONDS = 1.0
PROGRESS_DELAY = 2.0


class ClientError(Exception):
    """Anything that ends a client command with one line and exit code 1."""


# -- arguments ------------------------------------------------------------------


def _client_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--url",
        default=None,
        help=f"the herder's URL (HERDER_URL; default {DEFAULT_URL})",
    )
    group.add_argument("--token", default=None, help="your token (HERDER_TOKEN)")
    return parent


def add_commands(commands: Any) -> None:
    """Add the client commands to the `herder` command's subparsers."""
    parent = _client_parent()
    commands.add_parser("ping", parents=[parent], help="is the herder up? (and your credits)")

    daemon = commands.add_parser("daemon", help="long-lived containers").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    spawn = daemon.add_parser("spawn", parents=[parent], help="start (or restart) a daemon")
    spawn.add_argument("name")
    spawn.add_argument("image")
    spawn.add_argument(
        "-p", "--port", dest="ports", action="append", default=[], help="container port (repeat)"
    )
    spawn.add_argument(
        "-f",
        "--file",
        dest="files",
        action="append",
        default=[],
        metavar="NAME=@PATH",
        help="a file for the data volume: NAME=@local/path, NAME=text, or @path (repeat)",
    )
    spawn.add_argument("--group", default=None, help="put the daemon in a group")
    spawn.add_argument("--node", default=None, help="run it on this node (hostname or id)")
    spawn.add_argument("--gpus", type=int, default=0, help="GPUs to reserve")
    spawn.add_argument("--json", action="store_true", help="print the server's JSON")

    ls = daemon.add_parser("ls", parents=[parent], help="your daemons")
    ls.add_argument("--group", default=None, help="only this group")
    ls.add_argument("--json", action="store_true", help="print JSON (for scripts)")

    kill = daemon.add_parser("kill", parents=[parent], help="stop and remove a daemon")
    kill.add_argument("name", nargs="?")
    kill.add_argument("--group", default=None, help="kill every daemon of this group")
    kill.add_argument("--wipe", action="store_true", help="also delete the data volume")

    attach = daemon.add_parser(
        "attach", parents=[parent], help="a terminal on a daemon's stdin/stdout (Ctrl-] detaches)"
    )
    attach.add_argument("name")

    logs = daemon.add_parser("logs", parents=[parent], help="a daemon's output")
    logs.add_argument("name")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    logs.add_argument("--tail", default=None, help="only the last N lines")

    execute = daemon.add_parser(
        "exec", parents=[parent], help="run a command in a daemon, or in a whole group"
    )
    execute.add_argument("name", nargs="?")
    execute.add_argument("--group", default=None, help="run in every daemon of this group")
    execute.add_argument("--timeout", type=float, default=None, help="seconds (default 10)")
    execute.add_argument("--json", action="store_true", help="print the server's JSON")
    execute.epilog = "the command follows --, e.g. herder daemon exec web -- ls -l /"

    minion = commands.add_parser("minion", help="short code runs").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    run = minion.add_parser("run", parents=[parent], help="run main.sh in an environment")
    run.add_argument("env")
    run.add_argument(
        "-f",
        "--file",
        dest="files",
        action="append",
        default=[],
        metavar="NAME=@PATH",
        help="a file for /minion: NAME=@local/path, NAME=text, or @path (repeat)",
    )
    run.add_argument("--output", default=None, help="return this file of the run instead")
    run.add_argument(
        "-O", "--save", default=None, help="write the returned file here (default: stdout)"
    )
    run.add_argument("--json", action="store_true", help="print the server's JSON")

    node = commands.add_parser("node", help="the machines of the herder").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    node_ls = node.add_parser("ls", parents=[parent], help="every node, with your workloads")
    node_ls.add_argument("--json", action="store_true", help="print JSON")

    golem = commands.add_parser("golem", help="headless browsers on webstrates").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    golem_ls = golem.add_parser("ls", parents=[parent], help="the golems")
    golem_ls.add_argument("--json", action="store_true", help="print JSON")
    for action, text in (
        ("spawn", "start the golem of a webstrate"),
        ("reset", "restart a golem"),
        ("kill", "stop and remove a golem"),
    ):
        golem_action = golem.add_parser(action, parents=[parent], help=text)
        golem_action.add_argument("webstrate")
        golem_action.add_argument("--json", action="store_true", help="print JSON")


# -- the HTTP client --------------------------------------------------------------


def _error_line(status: int, body: bytes, content_type: str) -> str:
    message = ""
    if "json" in content_type:
        with contextlib.suppress(ValueError):
            data = json.loads(body)
            if isinstance(data, dict):
                message = str(data.get("error") or "")
    if not message:
        lines = body.decode(errors="replace").strip().splitlines()
        message = lines[0] if lines else ""
    message = " ".join(message.split())[:300] or "no details"
    return f"{message} (HTTP {status})"


class Client:
    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
        self._session = aiohttp.ClientSession(timeout=timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None
        return self._session

    def headers(self, *, auth: bool = True) -> dict[str, str]:
        if not auth:
            return {}
        if not self.token:
            raise ClientError("a token is needed: give --token or set HERDER_TOKEN")
        return {"Authorization": f"Bearer {self.token}"}

    @contextlib.asynccontextmanager
    async def request(
        self, method: str, path: str, *, auth: bool = True, ok: Sequence[int] = (), **kw: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A response with a 2xx status (or one in `ok`); else `ClientError` with one line."""
        headers = self.headers(auth=auth)
        try:
            async with self.session.request(
                method, self.url + path, headers=headers, **kw
            ) as response:
                if response.status >= 400 and response.status not in ok:
                    body = await response.content.read(64 << 10)
                    raise ClientError(_error_line(response.status, body, response.content_type))
                yield response
        except aiohttp.ClientConnectorError as exc:
            raise ClientError(f"cannot reach {self.url}: {exc.os_error.strerror or exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ClientError(
                f"lost the connection to {self.url}: {exc or type(exc).__name__}"
            ) from None

    async def json(self, method: str, path: str, **kw: Any) -> Any:
        async with self.request(method, path, **kw) as response:
            try:
                return await response.json(content_type=None)
            except ValueError:
                raise ClientError(f"the server at {self.url} did not answer JSON") from None


# -- progress ---------------------------------------------------------------------

SPINNER = "|/-\\"


@contextlib.asynccontextmanager
async def progress(label: str) -> AsyncIterator[None]:
    """Show that a long operation is under way: on a terminal a spinner with
    the seconds, cleared when it ends; elsewhere one line, and only once the
    operation has taken `PROGRESS_DELAY` seconds (so quick calls, and their
    errors, stay one line)."""
    started = time.monotonic()
    tty = sys.stderr.isatty()

    async def show() -> None:
        if not tty:
            await asyncio.sleep(PROGRESS_DELAY)
            print(f"{label}...", file=sys.stderr, flush=True)
            return
        for i in range(1 << 62):
            elapsed = time.monotonic() - started
            print(f"\r{SPINNER[i % 4]} {label}... {elapsed:.0f}s", end="", file=sys.stderr)
            sys.stderr.flush()
            await asyncio.sleep(0.2)

    task = asyncio.create_task(show())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if tty:
            print("\r\x1b[K", end="", file=sys.stderr, flush=True)


# -- helpers ----------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    field: str
    data: bytes


def read_uploads(specs: Sequence[str], reserved: Sequence[str] = ()) -> list[Upload]:
    """`NAME=@path` (a file's bytes), `NAME=text`, or `@path` (named by the file)."""
    uploads = []
    for spec in specs:
        if spec.startswith("@"):
            path = Path(spec[1:])
            field, source = path.name, spec
        else:
            field, sep, source = spec.partition("=")
            if not sep or not field:
                raise ClientError(f"bad file {spec!r}: expected NAME=@path, NAME=text or @path")
        if field in reserved:
            raise ClientError(f"a file may not be called {field!r}")
        if source.startswith("@"):
            try:
                data = Path(source[1:]).expanduser().read_bytes()
            except OSError as exc:
                raise ClientError(f"cannot read {source[1:]}: {exc.strerror or exc}") from None
        else:
            data = source.encode()
        uploads.append(Upload(field, data))
    return uploads


def _form(fields: dict[str, str], uploads: Sequence[Upload]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for key, value in fields.items():
        form.add_field(key, value)
    for upload in uploads:
        form.add_field(
            upload.field,
            upload.data,
            filename=upload.field,
            content_type="application/octet-stream",
        )
    return form


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def _ports(value: Any) -> str:
    """Docker's list format or the herder's {"80": 32768}, as `80->32768`."""
    pairs: list[str] = []
    if isinstance(value, dict):
        pairs = [f"{k}->{v}" for k, v in value.items()]
    elif isinstance(value, list):
        for port in value:
            if isinstance(port, dict) and port.get("PrivatePort"):
                public = port.get("PublicPort")
                pairs.append(
                    f"{port['PrivatePort']}->{public}" if public else str(port["PrivatePort"])
                )
            elif isinstance(port, int | str):
                pairs.append(str(port))
    return ",".join(dict.fromkeys(pairs)) or "-"


def _daemon_name(entry: dict[str, Any]) -> str:
    labels = entry.get("Labels") or {}
    if labels.get("herder.name"):
        return str(labels["herder.name"])
    names = entry.get("Names") or entry.get("Name") or ""
    if isinstance(names, list):
        names = names[0] if names else ""
    return str(names).lstrip("/")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _path(*parts: str) -> str:
    return "/".join(quote(part, safe="") for part in parts)


# -- commands ---------------------------------------------------------------------


async def ping(client: Client, args: argparse.Namespace) -> int:
    async with client.request("GET", "/healthz", auth=False, ok=(503,)) as response:
        report = await response.json(content_type=None)
    database, docker = report.get("database") or {}, report.get("docker") or {}

    def part(name: str, check: dict[str, Any]) -> str:
        if check.get("ok"):
            return f"{name} {check.get('ms', '?')} ms"
        return f"{name} DOWN ({check.get('error', 'unreachable')})"

    line = f"herder {report.get('version', '?')} at {client.url}: " + ", ".join(
        (part("database", database), part("docker", docker))
    )
    if not report.get("ok"):
        raise ClientError(f"unhealthy: {line}")
    print(f"ok: {line}")
    if client.token:
        balance = await client.json("GET", "/token/v1/balance")
        print(f"token: {balance.get('email')} has {balance.get('credits')} credits")
    return 0


async def daemon_spawn(client: Client, args: argparse.Namespace) -> int:
    ports: list[int] = []
    for raw in args.ports:
        for item in str(raw).split(","):
            if not item.strip().isdigit() or not 0 < int(item) < 65536:
                raise ClientError(f"bad port {item!r}: expected a number from 1 to 65535")
            ports.append(int(item))
    fields = {"name": args.name, "image": args.image, "ports": json.dumps(ports)}
    if args.group:
        fields["group"] = args.group
    if args.node:
        fields["node"] = args.node
    if args.gpus:
        fields["gpus"] = str(args.gpus)
    form = _form(fields, args.uploads)
    async with progress(f"spawning daemon {args.name} from {args.image}"):
        result = await client.json("POST", "/daemon/v1/spawn", data=form)
    if args.json:
        _print_json(result)
        return 0
    print(f"{result.get('Name', args.name)} running at {result.get('Address') or '-'}")
    for port, host_port in (result.get("Ports") or {}).items():
        print(f"  port {port} -> host port {host_port}")
    if ports:
        print(f"  proxy: {client.url}/daemon/v1/proxy/{_path(str(result.get('Name', args.name)))}/")
    return 0


async def daemon_ls(client: Client, args: argparse.Namespace) -> int:
    params = {"group": args.group} if args.group else {}
    entries = await client.json("GET", "/daemon/v1/ls", params=params)
    if args.json:
        _print_json(entries)
        return 0
    if not entries:
        print("no daemons", file=sys.stderr)
        return 0
    rows = []
    for entry in entries:
        labels = entry.get("Labels") or {}
        rows.append(
            [
                _daemon_name(entry),
                str(entry.get("State", "")),
                str(entry.get("Status", "")),
                str(entry.get("Image", "")),
                _ports(entry.get("Ports")),
                labels.get("herder.group") or "-",
                str(entry.get("Id", ""))[:12],
            ]
        )
    print(_table(sorted(rows), ["NAME", "STATE", "STATUS", "IMAGE", "PORTS", "GROUP", "ID"]))
    return 0


async def daemon_kill(client: Client, args: argparse.Namespace) -> int:
    params = {"wipe": "true"} if args.wipe else {}
    if args.group and args.name:
        raise ClientError("give a NAME or --group, not both")
    if args.group:
        result = await client.json(
            "POST", "/daemon/v1/kill", params={**params, "group": args.group}
        )
        killed = result.get("Killed", []) if isinstance(result, dict) else result
        print(f"killed {len(killed)} daemon(s) of group {args.group}: {' '.join(killed) or '-'}")
        return 0
    if not args.name:
        raise ClientError("give the NAME of a daemon, or --group G")
    await client.json("POST", f"/daemon/v1/kill/{_path(args.name)}", params=params)
    print(f"killed {args.name}" + (" and wiped its data" if args.wipe else ""))
    return 0


async def daemon_logs(client: Client, args: argparse.Namespace) -> int:
    params = {}
    if args.tail is not None:
        params["tail"] = str(args.tail)
    if args.follow:
        params["follow"] = "1"
    out = sys.stdout.buffer
    async with client.request("GET", f"/daemon/v1/logs/{_path(args.name)}", params=params) as r:
        async for chunk in r.content.iter_any():
            out.write(chunk)
            out.flush()
    return 0


async def daemon_exec(client: Client, args: argparse.Namespace) -> int:
    cmd = list(getattr(args, "cmd", None) or [])
    if not cmd:
        raise ClientError("give the command after --, e.g. herder daemon exec web -- ls /")
    body: dict[str, Any] = {"cmd": cmd}
    if args.timeout is not None:
        body["timeout"] = args.timeout
    if args.group and args.name:
        raise ClientError("give a NAME or --group, not both")
    if args.group:
        results = await client.json(
            "POST", "/daemon/v1/exec", params={"group": args.group}, json=body
        )
    elif args.name:
        results = [await client.json("POST", f"/daemon/v1/exec/{_path(args.name)}", json=body)]
    else:
        raise ClientError("give the NAME of a daemon, or --group G")
    if args.json:
        _print_json(results if args.group else results[0])
        return 0
    failed = False
    for result in results:
        code = result.get("ExitCode")
        note = result.get("Error") or ("timed out" if result.get("TimedOut") else f"exit {code}")
        if result.get("Truncated"):
            note += ", output cut"
        if args.group:
            print(f"== {result.get('Daemon') or result.get('Name')} ({note})", flush=True)
        sys.stdout.write(result.get("StdOut") or "")
        sys.stdout.flush()
        sys.stderr.write(result.get("StdErr") or "")
        sys.stderr.flush()
        failed = failed or code != 0
    if not args.group:
        code = results[0].get("ExitCode")
        if code is None:
            raise ClientError(results[0].get("Error") or "the command did not finish in time")
        return int(code) if 0 <= int(code) < 256 else 1
    return 1 if failed else 0


async def minion_run(client: Client, args: argparse.Namespace) -> int:
    if args.save:
        # Checked before the run: a run is charged whether its output lands or not.
        folder = Path(args.save).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ClientError(f"cannot write {args.save}: {folder} is not a writable directory")
    fields = {"env": args.env}
    if args.output:
        fields["output"] = args.output
    form = _form(fields, args.uploads)
    async with (
        progress(f"running a minion in {args.env}"),
        client.request("POST", "/minion/v1/spawn", data=form, ok=(504,)) as response,
    ):
        status, content_type = response.status, response.content_type
        body = await response.read()
    if content_type != "application/json":
        if args.save:
            await asyncio.to_thread(Path(args.save).write_bytes, body)
            print(f"wrote {len(body)} bytes to {args.save}", file=sys.stderr)
        else:
            sys.stdout.buffer.write(body)
            sys.stdout.flush()
        return 0
    try:
        result = json.loads(body)
    except ValueError:
        raise ClientError("the server did not answer JSON") from None
    if args.json:
        _print_json(result)
    else:
        sys.stdout.write(str(result.get("StdOut") or ""))
        sys.stdout.flush()
        sys.stderr.write(str(result.get("StdErr") or ""))
        sys.stderr.flush()
    if status == 504:
        raise ClientError(f"{result.get('error') or 'the minion timed out'} (HTTP 504)")
    if args.output:
        print(f"herder: the run made no file {args.output!r}", file=sys.stderr)
    code = result.get("ExitCode", 1)
    if not isinstance(code, int):
        return 1
    return code if 0 <= code < 256 else 1


async def golem_ls(client: Client, args: argparse.Namespace) -> int:
    entries = await client.json("GET", "/golem/v1/ls", auth=bool(client.token))
    if args.json:
        _print_json(entries)
        return 0
    if not entries:
        print("no golems", file=sys.stderr)
        return 0
    rows = []
    for entry in entries:
        lower = {str(k).lower(): v for k, v in entry.items()} if isinstance(entry, dict) else {}
        rows.append(
            [
                str(lower.get("webstrate", "")),
                str(lower.get("state", "")),
                str(lower.get("debugport") or lower.get("debug_port") or "-"),
                str(lower.get("id") or lower.get("containerid") or lower.get("container_id") or "")[
                    :12
                ],
            ]
        )
    print(_table(sorted(rows), ["WEBSTRATE", "STATE", "DEBUG PORT", "ID"]))
    return 0


async def node_ls(client: Client, args: argparse.Namespace) -> int:
    entries = await client.json("GET", "/node/v1/nodes", auth=bool(client.token))
    if args.json:
        _print_json(entries)
        return 0
    keys = ("Hostname", "ID", "Address", "Role", "Availability", "State", "CPUs", "GPUs")
    rows = [
        [
            str(e.get(k) if e.get(k) not in (None, "") else "-")[: 12 if k == "ID" else None]
            for k in keys
        ]
        + [f"{int(e.get('MemoryBytes') or 0) / 2**30:.1f}G"]
        + [",".join(str(w.get("Name", "")) for w in e.get("Workloads") or []) or "-"]
        for e in (entries if isinstance(entries, list) else [])
        if isinstance(e, dict)
    ]
    print(_table(rows, [k.upper() for k in keys] + ["MEMORY", "YOUR WORKLOADS"]))
    return 0


async def golem_action(client: Client, args: argparse.Namespace) -> int:
    path = f"/golem/v1/{args.action}/{_path(args.webstrate)}"
    labels = {"spawn": "starting", "reset": "restarting", "kill": "stopping"}
    async with progress(f"{labels[args.action]} the golem of {args.webstrate}"):
        result = await client.json("POST", path, auth=bool(client.token))
    if args.json:
        _print_json(result)
    else:
        done = {"spawn": "running", "reset": "restarted", "kill": "killed"}[args.action]
        print(f"golem of {args.webstrate} {done}")
    return 0


# -- attach -----------------------------------------------------------------------


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[bool]:
    """Put a terminal in raw mode for attach; restore it on exit.

    Keys go through one by one as typed (Ctrl-C is sent, not a signal here;
    Ctrl-] is seen at once). Daemons have no TTY, so nothing echoes on their
    side and they read lines ending in \\n: the terminal echoes locally, turns
    Enter into \\n and output's \\n into \\r\\n. Yields False when `fd` is not
    a terminal (then nothing changes).
    """
    if not os.isatty(fd):
        yield False
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        mode = termios.tcgetattr(fd)
        mode[0] |= termios.ICRNL
        mode[1] |= termios.OPOST | termios.ONLCR
        mode[3] |= termios.ECHO
        termios.tcsetattr(fd, termios.TCSANOW, mode)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def daemon_attach(client: Client, args: argparse.Namespace) -> int:
    url = client.url + f"/daemon/v1/attach/{_path(args.name)}"
    try:
        ws = await client.session.ws_connect(url, headers=client.headers(), heartbeat=30)
    except aiohttp.WSServerHandshakeError as exc:
        raise ClientError(
            f"cannot attach to {args.name}: {exc.message} (HTTP {exc.status})"
        ) from None
    except aiohttp.ClientConnectorError as exc:
        raise ClientError(f"cannot reach {client.url}: {exc.os_error.strerror or exc}") from None
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    detached = asyncio.Event()
    last_output = time.monotonic()
    stdin_done = asyncio.Event()
    typed: asyncio.Queue[bytes] = asyncio.Queue()
    out = sys.stdout.buffer

    with raw_terminal(fd) as is_tty:
        print(
            f"attached to {args.name}; Ctrl-] detaches" + ("\r" if is_tty else ""),
            file=sys.stderr,
            flush=True,
        )

        def on_stdin() -> None:
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(fd)
                stdin_done.set()
                return
            before, key, _ = data.partition(DETACH_KEY)
            if before:
                typed.put_nowait(before)
            if key:
                loop.remove_reader(fd)
                detached.set()

        async def send() -> None:
            while True:
                await ws.send_bytes(await typed.get())

        async def receive() -> None:
            nonlocal last_output
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    out.write(message.data)
                elif message.type == aiohttp.WSMsgType.TEXT:
                    out.write(message.data.encode())
                else:
                    break
                out.flush()
                last_output = time.monotonic()

        async def quiet_after_eof() -> None:
            # stdin was a file or pipe: leave once the daemon has been quiet a moment
            await stdin_done.wait()
            while True:
                remaining = PIPE_QUIET_SECONDS - (time.monotonic() - last_output)
                if remaining <= 0:
                    return
                await asyncio.sleep(remaining)

        loop.add_reader(fd, on_stdin)
        tasks = [
            asyncio.create_task(receive()),
            asyncio.create_task(detached.wait()),
            asyncio.create_task(quiet_after_eof()),
            asyncio.create_task(send()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            loop.remove_reader(fd)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await ws.close()
        ended = tasks[0] in done
    end = "\r\n" if is_tty else "\n"
    message = f"{args.name} closed the session" if ended else f"detached from {args.name}"
    sys.stderr.write(f"{end if is_tty else ''}{message}{end}")
    sys.stderr.flush()
    return 0


# -- dispatch ---------------------------------------------------------------------

HANDLERS: dict[tuple[str, str | None], Callable[[Client, argparse.Namespace], Any]] = {
    ("ping", None): ping,
    ("daemon", "spawn"): daemon_spawn,
    ("daemon", "ls"): daemon_ls,
    ("daemon", "kill"): daemon_kill,
    ("daemon", "attach"): daemon_attach,
    ("daemon", "logs"): daemon_logs,
    ("daemon", "exec"): daemon_exec,
    ("minion", "run"): minion_run,
    ("golem", "ls"): golem_ls,
    ("node", "ls"): node_ls,
    ("golem", "spawn"): golem_action,
    ("golem", "reset"): golem_action,
    ("golem", "kill"): golem_action,
}


# Form fields of the spawn routes that are not files.
RESERVED_FIELDS = {
    "daemon": ("name", "image", "ports", "group", "node", "gpus"),
    "minion": ("env", "output"),
}


def split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """`herder daemon exec NAME [opts] -- CMD...`: the part after `--` is the
    command, kept out of argparse (which would mix it with the options)."""
    if "--" not in argv:
        return argv, None
    cut = argv.index("--")
    if argv[:cut][:1] != ["daemon"] or "exec" not in argv[:cut]:
        return argv, None
    return argv[:cut], argv[cut + 1 :]


def main(args: argparse.Namespace, environ: Any = None) -> int:
    environ = os.environ if environ is None else environ
    url = args.url or environ.get("HERDER_URL") or DEFAULT_URL
    token = args.token or environ.get("HERDER_TOKEN") or None
    if not url.startswith(("http://", "https://")):
        print(f"herder: bad --url {url!r}: expected http:// or https://", file=sys.stderr)
        return 2
    handler = HANDLERS[(args.command, getattr(args, "action", None))]
    try:
        # Files are read before the loop starts: no blocking reads on it.
        args.uploads = read_uploads(
            getattr(args, "files", []), reserved=RESERVED_FIELDS.get(args.command, ())
        )
        return int(asyncio.run(_run(handler, Client(url, token), args)))
    except ClientError as exc:
        print(f"herder: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    # Never a traceback: whatever else goes wrong is one line and exit 1.
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        print(f"herder: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except (AttributeError, KeyError, TypeError, IndexError) as exc:
        print(
            f"herder: the server at {url} answered in a shape this client does not "
            f"understand ({type(exc).__name__}: {exc})",
            file=sys.stderr,
        )
        return 1


async def _run(
    handler: Callable[[Client, argparse.Namespace], Any], client: Client, args: argparse.Namespace
) -> int:
    async with client:
        return int(await handler(client, args))
