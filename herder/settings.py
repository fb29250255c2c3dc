"""Typed settings, loaded once: flags, then `HERDER_*` variables, then defaults.

`Settings.load(flags, environ)` takes the environment as an argument so tests
inject theirs. A bad value raises `SettingsError` naming the setting and the
value in one line; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import SettingsError

DEFAULT_IMAGES: dict[str, str] = {
    "python": "herder/python:bookworm",
    "node": "herder/node:bookworm",
    "ruby": "herder/ruby:bookworm",
    "latex": "herder/latex:bookworm",
}

# Docker's network names; the engine's own networks would undo the isolation.
NETWORK_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
SHARED_NETWORKS = frozenset({"bridge", "host", "none", "default"})
# Channel names are `<prefix>.<verb>`: `herder`, `year4000.pycloud`.
CHANNEL_PREFIX_PATTERN = re.compile(r"(?=.{1,100}$)[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")

# Engine connections of the runtime's streaming client (log follows, attach
# sessions, event streams), apart from those of its short calls; aiodocker's
# default. `STREAMS_TOTAL` stays below it, leaving room for the event streams.
STREAM_CONNECTIONS = 100


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true or false")


def _parse_int(raw: str) -> int:
    return int(raw.strip())


def _parse_float(raw: str) -> float:
    value = float(raw.strip())
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number")
    return value


def _parse_str(raw: str) -> str:
    return raw


# Capabilities a daemon keeps (from Docker's default set): enough for a
# server that starts as root, binds a low port, chowns its files and drops to
# a user of its own. Left out: NET_RAW (raw and packet sockets: ARP scans and
# spoofing of the other containers on the bridge), MKNOD, SETFCAP, SETPCAP,
# SYS_CHROOT, AUDIT_WRITE.
DAEMON_CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "NET_BIND_SERVICE",
)
LINUX_CAPABILITIES = frozenset(
    """AUDIT_CONTROL AUDIT_READ AUDIT_WRITE BLOCK_SUSPEND BPF CHECKPOINT_RESTORE CHOWN
    DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID IPC_LOCK IPC_OWNER KILL LEASE
    LINUX_IMMUTABLE MAC_ADMIN MAC_OVERRIDE MKNOD NET_ADMIN NET_BIND_SERVICE
    NET_BROADCAST NET_RAW PERFMON SETFCAP SETGID SETPCAP SETUID SYS_ADMIN SYS_BOOT
    SYS_CHROOT SYS_MODULE SYS_NICE SYS_PACCT SYS_PTRACE SYS_RAWIO SYS_RESOURCE
    SYS_TIME SYS_TTY_CONFIG SYSLOG WAKE_ALARM""".split()
)


def _parse_capabilities(raw: str) -> tuple[str, ...]:
    """`CHOWN,SETUID,...` (a `CAP_` prefix and case do not matter); empty: none."""
    names = []
    for part in filter(None, (p.strip().upper() for p in raw.split(","))):
        name = part.removeprefix("CAP_")
        if name not in LINUX_CAPABILITIES:
            raise ValueError(f"unknown capability {part!r}")
        if name not in names:
            names.append(name)
    return tuple(names)


def _parse_images(raw: str) -> dict[str, str]:
    """`{"python": "img"}` as JSON, or `python=img,node=img2`."""
    raw = raw.strip()
    if raw.startswith("{"):
        value = json.loads(raw)
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ValueError("expected a JSON object of env name to image")
        images = dict(value)
    else:
        images = {}
        for part in filter(None, (p.strip() for p in raw.split(","))):
            name, sep, image = part.partition("=")
            if not sep or not name.strip() or not image.strip():
                raise ValueError("expected env=image pairs separated by commas")
            images[name.strip()] = image.strip()
    if not images:
        raise ValueError("no environments given")
    for name in images:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", name):
            raise ValueError(f"bad environment name {name!r}")
    return images


def _parse_pool(raw: str) -> dict[str, int]:
    """`python=4,node=2` (or JSON `{"python": 4}`); `0` or empty: no pool."""
    raw = raw.strip()
    if raw in ("", "0"):
        return {}
    if raw.startswith("{"):
        value = json.loads(raw)
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
            for k, v in value.items()
        ):
            raise ValueError("expected a JSON object of env name to pool size")
        sizes = dict(value)
    else:
        sizes = {}
        for part in filter(None, (p.strip() for p in raw.split(","))):
            name, sep, size = part.partition("=")
            if not sep or not name.strip() or not re.fullmatch(r"[0-9]{1,4}", size.strip()):
                raise ValueError("expected env=size pairs separated by commas, or 0")
            sizes[name.strip()] = int(size.strip())
    for name, size in sizes.items():
        if not 0 <= size <= 256:
            raise ValueError(f"pool size of {name!r} must be 0 to 256")
    return {name: size for name, size in sizes.items() if size > 0}


@dataclass(frozen=True)
class _Spec:
    parse: Callable[[str], Any]
    help: str
    minimum: float | None = None
    maximum: float | None = None
    secret: bool = False


def _setting(default: Any, parse: Callable[[str], Any], help: str, **kw: Any) -> Any:
    spec = _Spec(parse=parse, help=help, **kw)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"spec": spec})
    return field(default=default, metadata={"spec": spec, "secret": kw.get("secret", False)})


@dataclass(frozen=True)
class Settings:
    """Every setting of the herder. Each is a flag `--name` and `HERDER_NAME`."""

    data_dir: Path = _setting(
        Path(".herder"), lambda s: Path(s), "data directory (keys, SQLite, instance id)"
    )
    database_url: str = _setting(
        "", _parse_str, "SQLAlchemy async URL; default SQLite in the data dir", secret=True
    )
    docker_url: str = _setting(
        "", _parse_str, "Docker Engine URL; default DOCKER_HOST, else the local socket"
    )
    runtime: str = _setting(
        "docker", _parse_str, "docker (one engine) or swarm (services on a Docker Swarm)"
    )
    host: str = _setting("0.0.0.0", _parse_str, "address `serve` listens on")
    port: int = _setting(8080, _parse_int, "port `serve` listens on", minimum=0, maximum=65535)
    public_url: str = _setting(
        "",
        _parse_str,
        "how containers and browsers reach the herder; default http://localhost:PORT",
    )
    webstrates_url: str = _setting(
        "http://localhost:7007", _parse_str, "the Webstrates server golems open pages on"
    )
    token_password: str = _setting(
        "", _parse_str, "password for /token/v1/generate; empty: the route answers 405", secret=True
    )
    token_issuer: str = _setting("herder", _parse_str, "the `iss` claim of tokens")
    token_max_credits: int = _setting(
        10**12, _parse_int, "largest `crd` a token may carry", minimum=0
    )
    default_credits: int = _setting(
        30000, _parse_int, "credits of a new token when none are given", minimum=0
    )
    credit_rate: int = _setting(
        1, _parse_int, "credits charged per second of work", minimum=0, maximum=10**6
    )
    minion_timeout: float = _setting(
        30.0, _parse_float, "seconds a minion may run", minimum=0.1, maximum=3600
    )
    minion_memory_mb: int = _setting(
        256, _parse_int, "memory limit of a minion (MiB, no extra swap)", minimum=16
    )
    minion_cpus: float = _setting(1.0, _parse_float, "CPUs a minion may use", minimum=0.01)
    minion_pids: int = _setting(128, _parse_int, "process limit of a minion", minimum=8)
    minion_network: bool = _setting(
        False, _parse_bool, "give minions a network (the herder network)"
    )
    minion_output_limit: int = _setting(
        1 << 20, _parse_int, "bytes kept per output stream of a minion", minimum=1024
    )
    minion_disk_mb: int = _setting(
        128,
        _parse_int,
        "size of a minion's /minion (MiB; a tmpfs counted in its memory)",
        minimum=1,
        maximum=1 << 20,
    )
    minion_concurrency: int = _setting(
        0,
        _parse_int,
        "minion runs at once; more wait in the queue (0: twice the CPUs, at least 2)",
        minimum=0,
        maximum=10000,
    )
    minion_queue: int = _setting(
        64, _parse_int, "minion runs waiting for a slot; more get 429", minimum=0, maximum=100000
    )
    minion_pool: dict[str, int] = _setting(
        {},
        _parse_pool,
        "warm minion containers per env, e.g. python=4,node=2 (0: none)",
    )
    max_body_bytes: int = _setting(
        8 << 20, _parse_int, "largest request body accepted", minimum=1024
    )
    images: dict[str, str] = _setting(
        DEFAULT_IMAGES, _parse_images, "env-to-image map: JSON or env=image,..."
    )
    network: str = _setting(
        "herder",
        _parse_str,
        "Docker network of daemons and golems; made when missing, with no traffic "
        "between its containers",
    )
    daemon_memory_mb: int = _setting(512, _parse_int, "memory limit of a daemon (MiB)", minimum=16)
    daemon_cpus: float = _setting(1.0, _parse_float, "CPUs a daemon may use", minimum=0.01)
    daemon_pids: int = _setting(256, _parse_int, "process limit of a daemon", minimum=8)
    daemon_capabilities: tuple[str, ...] = _setting(
        DAEMON_CAPABILITIES,
        _parse_capabilities,
        "capabilities a daemon keeps (all others dropped): comma-separated names",
    )
    daemon_bind_address: str = _setting(
        "0.0.0.0", _parse_str, "host address daemon ports are published on"
    )
    metering_interval: float = _setting(
        1.0, _parse_float, "seconds between metering ticks", minimum=0.05, maximum=60
    )
    metering_grace: float = _setting(
        30.0, _parse_float, "seconds charges may fail before daemons are stopped", minimum=1
    )
    proxy_require_token: bool = _setting(
        False, _parse_bool, "the daemon proxy needs the owner's token"
    )
    proxy_domain: str = _setting(
        "",
        _parse_str,
        "serve daemon <Name> on its own origin at http://<Name>.<PROXY_DOMAIN>/ (a wildcard "
        "DNS name; `localhost` works in browsers); empty: path route only",
    )
    golem_image: str = _setting("herder/golem:bookworm", _parse_str, "image of golems")
    golem_cap: int = _setting(10, _parse_int, "most golems running at once", minimum=0)
    golem_require_token: bool = _setting(
        False, _parse_bool, "golem spawns need a token and are metered"
    )
    golem_open_control: bool = _setting(
        False,
        _parse_bool,
        "UNSAFE: any client may be a webstrate's golem (control socket and data channels "
        "without the golem's secret), as in golem-herder",
    )
    golem_wait: float = _setting(
        20.0, _parse_float, "seconds an ad-hoc minion waits for its golem", minimum=0.1
    )
    relay_minions_per_webstrate: int = _setting(
        256, _parse_int, "most ad-hoc minions connected to one webstrate at once", minimum=1
    )
    # Chromium needs more than a daemon's default.
    golem_memory_mb: int = _setting(1024, _parse_int, "memory limit of a golem (MiB)", minimum=64)
    golem_cpus: float = _setting(1.0, _parse_float, "CPUs a golem may use", minimum=0.01)
    golem_pids: int = _setting(512, _parse_int, "process limit of a golem", minimum=16)
    streams_per_subject: int = _setting(
        16,
        _parse_int,
        "most open log follows and attach sockets of one subject (429 above)",
        minimum=1,
    )
    streams_total: int = _setting(
        64,
        _parse_int,
        "most open log follows and attach sockets of the herder (429 above); below the "
        "engine connections kept for streams",
        minimum=1,
        maximum=STREAM_CONNECTIONS - 10,
    )
    log_format: str = _setting("text", _parse_str, "text or json")
    redis_url: str = _setting(
        "",
        _parse_str,
        "Redis for the PyCloud channels (redis://host:port/db); empty: channels off",
        secret=True,
    )
    channel_prefix: str = _setting(
        "herder", _parse_str, "prefix of the channel names (year4000.pycloud: PyCloud's)"
    )
    channel_lease: float = _setting(
        15.0,
        _parse_float,
        "seconds a herder holds a channel request it took before another may take it over",
        minimum=1,
        maximum=600,
    )
    header_timeout: float = _setting(
        10.0,
        _parse_float,
        "seconds a new connection has to send its request head (408 after)",
        minimum=0.1,
        maximum=3600,
    )
    body_min_rate: int = _setting(
        1024,
        _parse_int,
        "bytes a second a request body must arrive at, over BODY_RATE_WINDOW (408 below)",
        minimum=0,
    )
    body_rate_window: float = _setting(
        15.0, _parse_float, "seconds over which BODY_MIN_RATE is counted", minimum=0.5
    )
    connections_per_client: int = _setting(
        0,
        _parse_int,
        "most open connections from one address (503 above); 0: a quarter of what the "
        "open-files limit leaves for clients",
        minimum=0,
    )
    cluster_secret: str = _setting(
        "",
        _parse_str,
        "shared secret of a cluster's replicas (at least 32 characters): signs the "
        "herder-to-herder channel; empty: no peer channel",
        secret=True,
    )
    cluster_secret_file: Path | None = _setting(
        None,
        lambda s: Path(s) if s.strip() else None,
        "a file holding CLUSTER_SECRET (a Docker secret, e.g. /run/secrets/herder_cluster)",
    )
    peer_url: str = _setting(
        "",
        _parse_str,
        "how the other replicas reach this one; default http://<this node's Swarm address>:PORT "
        "(with the swarm runtime), else http://127.0.0.1:PORT",
    )
    uvloop: bool = _setting(
        True, _parse_bool, "serve on uvloop's event loop when it is installed (it is a dependency)"
    )

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata["spec"].secret and value:
                value = "***"
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def help_for(cls, name: str) -> str:
        spec: _Spec = {f.name: f for f in dataclasses.fields(cls)}[name].metadata["spec"]
        return spec.help

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        *,
        check_data_dir: bool = True,
    ) -> Settings:
        """Build settings from flags (highest), `HERDER_*` variables, defaults."""
        flags = flags or {}
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            spec: _Spec = f.metadata["spec"]
            env_name = "HERDER_" + f.name.upper()
            raw: Any = flags.get(f.name)
            source = "--" + f.name.replace("_", "-")
            if raw is None and env_name in environ:
                raw, source = environ[env_name], env_name
            if raw is None:
                continue
            if not isinstance(raw, str):
                values[f.name] = raw
                continue
            try:
                value = spec.parse(raw)
            except (ValueError, json.JSONDecodeError) as exc:
                shown = "***" if spec.secret else raw
                raise SettingsError(f"{source}: bad value {shown!r}: {exc}") from None
            if spec.minimum is not None and value < spec.minimum:
                raise SettingsError(f"{source}: {raw!r} is below the minimum {spec.minimum:g}")
            if spec.maximum is not None and value > spec.maximum:
                raise SettingsError(f"{source}: {raw!r} is above the maximum {spec.maximum:g}")
            values[f.name] = value
        settings = cls(**values)
        return settings._completed(environ, check_data_dir=check_data_dir)

    def _completed(self, environ: Mapping[str, str], *, check_data_dir: bool) -> Settings:
        changes: dict[str, Any] = {}
        data_dir = self.data_dir.expanduser()
        if check_data_dir:
            try:
                data_dir.mkdir(parents=True, exist_ok=True)
                probe = data_dir / ".write-probe"
                probe.write_text("")
                probe.unlink()
            except OSError as exc:
                raise SettingsError(
                    f"HERDER_DATA_DIR: cannot use {str(data_dir)!r}: {exc.strerror or exc}"
                ) from None
        changes["data_dir"] = data_dir.resolve() if check_data_dir else data_dir
        if not self.database_url:
            changes["database_url"] = f"sqlite+aiosqlite:///{changes['data_dir'] / 'herder.db'}"
        else:
            _check_database_url(self.database_url)
        if not self.docker_url:
            changes["docker_url"] = environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        elif not re.match(r"^(unix|tcp|http|https)://", self.docker_url):
            raise SettingsError(
                f"HERDER_DOCKER_URL: bad value {self.docker_url!r}: expected unix://, tcp:// or http(s)://"
            )
        if not self.public_url:
            changes["public_url"] = f"http://localhost:{self.port}"
        for name in ("public_url", "webstrates_url"):
            url = changes.get(name, getattr(self, name))
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise SettingsError(
                    f"HERDER_{name.upper()}: bad value {url!r}: expected an http(s) URL"
                )
            changes[name] = url.rstrip("/")
        if not NETWORK_PATTERN.fullmatch(self.network) or self.network in SHARED_NETWORKS:
            raise SettingsError(
                f"HERDER_NETWORK: bad value {self.network!r}: expected a network name of "
                "letters, digits, '_', '.', '-' other than bridge, host, none, default"
            )
        if self.runtime not in ("docker", "swarm"):
            raise SettingsError(
                f"HERDER_RUNTIME: bad value {self.runtime!r}: expected docker or swarm"
            )
        domain = self.proxy_domain.strip().lower().strip(".")
        if domain and not re.fullmatch(
            r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", domain
        ):
            raise SettingsError(
                f"HERDER_PROXY_DOMAIN: bad value {self.proxy_domain!r}: expected a host name "
                "such as apps.example.org (no scheme, port or wildcard)"
            )
        changes["proxy_domain"] = domain
        if self.minion_concurrency == 0:
            changes["minion_concurrency"] = max(2, 2 * (os.cpu_count() or 1))
        unknown = sorted(set(self.minion_pool) - set(self.images))
        if unknown:
            raise SettingsError(
                f"HERDER_MINION_POOL: unknown env {unknown[0]!r}; known: "
                f"{', '.join(sorted(self.images))}"
            )
        if self.log_format not in ("text", "json"):
            raise SettingsError(
                f"HERDER_LOG_FORMAT: bad value {self.log_format!r}: expected text or json"
            )
        if self.redis_url:
            check_redis_url(self.redis_url)
        if not CHANNEL_PREFIX_PATTERN.fullmatch(self.channel_prefix):
            raise SettingsError(
                f"HERDER_CHANNEL_PREFIX: bad value {self.channel_prefix[:100]!r}: expected "
                "dot-separated words of letters, digits, '_', '-' (at most 100 characters)"
            )
        changes.update(_cluster(self))
        return dataclasses.replace(self, **changes)


MIN_CLUSTER_SECRET = 32


def _cluster(settings: Settings) -> dict[str, Any]:
    """The cluster secret (from its file when given: a Docker secret) and the peer URL."""
    changes: dict[str, Any] = {}
    secret = settings.cluster_secret
    if settings.cluster_secret_file is not None:
        if secret:
            raise SettingsError(
                "HERDER_CLUSTER_SECRET_FILE: give the cluster secret or its file, not both"
            )
        try:
            secret = settings.cluster_secret_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not text"
            raise SettingsError(
                f"HERDER_CLUSTER_SECRET_FILE: cannot read {str(settings.cluster_secret_file)!r}: "
                f"{reason or exc}"
            ) from None
        changes["cluster_secret"] = secret
    if secret and (len(secret) < MIN_CLUSTER_SECRET or not secret.isprintable()):
        raise SettingsError(
            f"HERDER_CLUSTER_SECRET: expected at least {MIN_CLUSTER_SECRET} printable "
            "characters (e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    if settings.peer_url:
        parts = urlsplit(settings.peer_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SettingsError(
                f"HERDER_PEER_URL: bad value {settings.peer_url!r}: expected an http(s) URL"
            )
        changes["peer_url"] = settings.peer_url.rstrip("/")
    return changes


def check_redis_url(url: str) -> None:
    """`redis://[:password@]host[:port][/db]`, `rediss://…` or `unix:///path`."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        parts = parts._replace(scheme="")
    ok = (parts.scheme in ("redis", "rediss") and bool(parts.hostname)) or (
        parts.scheme == "unix" and bool(parts.path)
    )
    if ok and parts.scheme != "unix":
        ok = parts.path in ("", "/") or parts.path.lstrip("/").isdigit()
    if not ok:
        raise SettingsError(
            "HERDER_REDIS_URL: malformed Redis URL (expected redis://[:password@]host[:port][/db], "
            "rediss://... or unix:///path/to/socket)"
        )


def _check_database_url(url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise SettingsError(
            "HERDER_DATABASE_URL: malformed database URL (expected e.g. "
            "sqlite+aiosqlite:///path or postgresql+asyncpg://user@host/db)"
        ) from None
    if parsed.drivername not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        raise SettingsError(
            f"HERDER_DATABASE_URL: unsupported driver {parsed.drivername!r} "
            "(use sqlite+aiosqlite or postgresql+asyncpg)"
        )
