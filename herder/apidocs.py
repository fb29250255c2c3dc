"""The docs of every route, one `Docs` table per resource (see `herder.openapi`).

Each table sits under the name of the resource module whose routes it
describes; `tests/test_openapi.py` checks that together they cover exactly
the app's route table.
"""

from __future__ import annotations

from .openapi import (
    BOOL,
    INT,
    JSON,
    NUM,
    STR,
    Body,
    Docs,
    Op,
    Param,
    Schema,
    arr,
    obj,
)

TEXT = "text/plain"
ANY_BYTES = "application/octet-stream"

UNAUTHORIZED = "missing, invalid, expired or revoked token"
NO_CREDITS = "the subject has no credits left"
UNKNOWN_DAEMON = "no such daemon of the caller"
BAD_INPUT = "malformed input (the message names the problem)"
TOO_MANY_STREAMS = "too many open log follows and attach sockets (`limit` in the body)"

NAME = Param("name", "the daemon's name (as given to spawn)", where="path")
GROUP = Param("group", "a daemon group (named like a daemon)")
WEBSTRATE = Param("webstrate", "webstrate id, `[A-Za-z0-9_-]{1,64}`", where="path")

# -- health -------------------------------------------------------------------

_CHECK = obj(["ok", "ms"], ok=BOOL, ms=NUM, error=STR)
HEALTH: Docs = {
    "/healthz": {
        "GET": Op(
            "Database and Docker reachability",
            "operations",
            responses={
                200: ("both reachable", obj(["ok"], ok=BOOL, database=_CHECK, docker=_CHECK)),
                503: ("either check failed", obj(["ok"], ok=BOOL, database=_CHECK, docker=_CHECK)),
            },
        )
    }
}

METRICS: Docs = {
    "/metrics": {
        "GET": Op(
            "Prometheus metrics",
            "operations",
            responses={200: ("Prometheus text exposition", STR, TEXT)},
        )
    }
}

NODE: Docs = {
    "/node/v1/specs": {
        "GET": Op(
            "The host's specs",
            "node",
            description="CPU, memory, disk of the data dir, GPUs, Docker version, "
            "running workloads by kind, the herder's version and instance.",
            responses={
                200: (
                    "the specs",
                    obj(
                        ["CPU", "Memory", "Disk", "GPUs", "Docker", "Running"],
                        Hostname=STR,
                        Platform=STR,
                        CPU=obj(Model=STR, Count=INT, Usable=NUM),
                        Memory=obj(TotalBytes=INT, AvailableBytes=INT),
                        Disk=obj(Path=STR, TotalBytes=INT, FreeBytes=INT),
                        GPUs=arr(obj(Name=STR, MemoryBytes={"type": ["integer", "null"]})),
                        Docker=obj(Version=STR, ApiVersion=STR, Os=STR, Arch=STR),
                        Running={"type": "object", "additionalProperties": INT},
                        Herder=obj(Version=STR, Instance=STR),
                    ),
                )
            },
        )
    }
}

# -- tokens and credits -------------------------------------------------------

_TOKEN_REPLY = obj(["token", "email", "credits"], token=STR, email=STR, credits=INT)
_GENERATE = Op(
    "Make a token (password protected)",
    "tokens",
    auth="password",
    params=(
        Param("password", "the herder's TOKEN_PASSWORD"),
        Param("email", "the token's subject"),
        Param("credits", "credits granted on first use", INT),
    ),
    body=Body(
        "the same fields as a form",
        {"application/x-www-form-urlencoded": obj(password=STR, email=STR, credits=INT)},
        required=False,
    ),
    responses={
        200: ("the new token", _TOKEN_REPLY),
        400: BAD_INPUT,
        401: "wrong password",
        405: "no password is configured",
    },
)
TOKENS: Docs = {
    "/token/v1/generate": {"GET": _GENERATE, "POST": _GENERATE},
    "/token/v1/balance": {
        "GET": Op(
            "The caller's subject and remaining credits",
            "credits",
            auth="token",
            responses={
                200: (
                    "the balance",
                    obj(
                        ["email", "jti", "credits", "granted"],
                        email=STR,
                        jti=STR,
                        credits=INT,
                        granted=INT,
                    ),
                ),
                401: UNAUTHORIZED,
            },
        )
    },
    "/token/v1/inspect/{token}": {
        "GET": Op(
            "A token's subject and remaining credits",
            "tokens",
            params=(Param("token", "the JWT", where="path"),),
            responses={200: ("the token", _TOKEN_REPLY), 404: "invalid token"},
        )
    },
}

_CHARGE = obj(
    ["id", "kind", "workload", "seconds", "credits", "at"],
    id=INT,
    kind=STR,
    workload=STR,
    seconds=INT,
    credits=INT,
    at={"type": "string", "format": "date-time"},
)
CREDITS: Docs = {
    "/token/v1/charges": {
        "GET": Op(
            "The caller's recent charges and current burn rate",
            "credits",
            description="`rate` is the credits per second being charged now for the "
            "subject's running metered work (daemons, golems); a running workload's "
            "charge row grows while it runs.",
            auth="token",
            params=(Param("limit", "how many charges, newest first (1 to 200, default 20)", INT),),
            responses={
                200: (
                    "charges and rate",
                    obj(
                        ["email", "credits", "rate", "running", "charges"],
                        email=STR,
                        credits=INT,
                        rate=NUM,
                        running=arr(obj(kind=STR, name=STR)),
                        charges=arr(_CHARGE),
                    ),
                ),
                400: BAD_INPUT,
                401: UNAUTHORIZED,
            },
        )
    }
}

# -- minions ------------------------------------------------------------------

_MINION_FORM = obj(["env"], env=STR, output=STR)
_MINION_FORM["additionalProperties"] = {"type": "string", "contentMediaType": ANY_BYTES}
MINIONS: Docs = {
    "/minion/v1/spawn": {
        "POST": Op(
            "Run a minion",
            "minions",
            description="Runs `sh /minion/main.sh` in the env's image once; every field "
            "but `env` and `output` is a file in `/minion/<field>`. With `output`, the "
            "answer is that file's bytes (MIME type from its extension).",
            auth="token",
            body=Body(
                "env, optional output file name, files by field name",
                {
                    "multipart/form-data": _MINION_FORM,
                    "application/x-www-form-urlencoded": _MINION_FORM,
                },
            ),
            responses={
                200: (
                    "the run",
                    obj(
                        ["StdOut", "StdErr", "ExitCode", "Duration"],
                        StdOut=STR,
                        StdErr=STR,
                        ExitCode=INT,
                        Duration=NUM,
                        OOMKilled=BOOL,
                    ),
                ),
                400: "unknown env (lists them) or bad file name",
                401: UNAUTHORIZED,
                402: NO_CREDITS,
                404: "image missing",
                413: "body too large",
                504: ("timeout, with the partial output", obj(error=STR, StdOut=STR, StdErr=STR)),
            },
        )
    },
    "/minion/v1/envs": {
        "GET": Op(
            "The environments and their images",
            "minions",
            responses={
                200: (
                    "the envs",
                    obj(
                        ["envs"],
                        envs=arr(
                            obj(["name", "image", "available"], name=STR, image=STR, available=BOOL)
                        ),
                    ),
                )
            },
        )
    },
}

# -- daemons ------------------------------------------------------------------

_DAEMON_FORM = obj(["name", "image"], name=STR, image=STR, ports=STR, group=STR)
_DAEMON_FORM["additionalProperties"] = {"type": "string", "contentMediaType": ANY_BYTES}
_LISTED: Schema = obj(
    ["Id", "Names", "Image", "State", "Status", "Ports", "Created", "Labels"],
    Id=STR,
    Names=arr(STR),
    Image=STR,
    State=STR,
    Status=STR,
    Ports=arr(obj(PrivatePort=INT, PublicPort=INT, Type=STR, IP=STR)),
    Created=INT,
    Labels={"type": "object", "additionalProperties": STR},
)
_KILLED = obj(["Killed"], Killed=arr(STR), Wiped=BOOL, Group=STR)
_KILL_ONE = Op(
    "Stop and remove a daemon",
    "daemons",
    auth="token",
    params=(NAME, Param("wipe", "`true` also deletes its data volume", BOOL)),
    responses={200: ("what was killed", _KILLED), 401: UNAUTHORIZED, 404: UNKNOWN_DAEMON},
)
_KILL_GROUP = Op(
    "Stop and remove every daemon of a group",
    "daemons",
    auth="token",
    params=(
        Param("group", "the group", required=True),
        Param("wipe", "`true` also deletes their data", BOOL),
    ),
    responses={200: ("what was killed", _KILLED), 400: BAD_INPUT, 401: UNAUTHORIZED},
)
DAEMONS: Docs = {
    "/daemon/v1/spawn": {
        "POST": Op(
            "Start (or restart) a daemon",
            "daemons",
            description="`ports` is a JSON list (`[80]`); every other field is a file "
            "copied into the daemon's data volume. A name the caller has already is "
            "replaced, keeping its data.",
            auth="token",
            body=Body(
                "name, image, ports, group, files",
                {
                    "multipart/form-data": _DAEMON_FORM,
                    "application/x-www-form-urlencoded": _DAEMON_FORM,
                },
            ),
            responses={
                200: (
                    "the daemon",
                    obj(
                        ["Name", "Address", "Ports"],
                        Name=STR,
                        Address=STR,
                        Ports={"type": "object", "additionalProperties": INT},
                    ),
                ),
                400: BAD_INPUT,
                401: UNAUTHORIZED,
                402: NO_CREDITS,
                404: "image not present locally",
            },
        )
    },
    "/daemon/v1/ls": {
        "GET": Op(
            "The caller's daemons",
            "daemons",
            auth="token",
            params=(GROUP,),
            responses={
                200: ("Docker's list format", arr(_LISTED)),
                400: BAD_INPUT,
                401: UNAUTHORIZED,
            },
        )
    },
    "/daemon/v1/kill/{name}": {"GET": _KILL_ONE, "POST": _KILL_ONE, "DELETE": _KILL_ONE},
    "/daemon/v1/kill": {"GET": _KILL_GROUP, "POST": _KILL_GROUP, "DELETE": _KILL_GROUP},
}

LOGS: Docs = {
    "/daemon/v1/logs/{name}": {
        "GET": Op(
            "A daemon's output",
            "daemons",
            auth="token",
            params=(
                NAME,
                Param("tail", "the last N lines", INT),
                Param("follow", "`1`: stream until the daemon stops", INT),
            ),
            responses={
                200: ("stdout and stderr, plain text", STR, TEXT),
                401: UNAUTHORIZED,
                404: UNKNOWN_DAEMON,
                429: TOO_MANY_STREAMS,
            },
        )
    }
}

_EXEC_BODY = Body(
    "the command",
    {JSON: obj(["cmd"], cmd=arr(STR), timeout={"type": "number", "maximum": 60})},
)
_EXEC_RESULT = obj(
    ["ExitCode", "StdOut", "StdErr"],
    Daemon=STR,
    Name=STR,
    ExitCode={"type": ["integer", "null"]},
    StdOut=STR,
    StdErr=STR,
    TimedOut=BOOL,
    Killed=BOOL,
    Truncated=BOOL,
    Duration=NUM,
)
EXEC: Docs = {
    "/daemon/v1/exec/{name}": {
        "POST": Op(
            "Run a command in a daemon",
            "daemons",
            auth="token",
            params=(NAME,),
            body=_EXEC_BODY,
            responses={
                200: ("the result", _EXEC_RESULT),
                400: BAD_INPUT,
                401: UNAUTHORIZED,
                404: UNKNOWN_DAEMON,
            },
        )
    },
    "/daemon/v1/exec": {
        "POST": Op(
            "Run a command in every daemon of a group",
            "daemons",
            auth="token",
            params=(Param("group", "the group", required=True),),
            body=_EXEC_BODY,
            responses={
                200: ("one result per daemon", arr(_EXEC_RESULT)),
                400: BAD_INPUT,
                401: UNAUTHORIZED,
            },
        )
    },
}

ATTACH: Docs = {
    "/daemon/v1/attach/{name}": {
        "GET": Op(
            "A WebSocket on a daemon's stdin and output",
            "daemons",
            description="Client frames go to stdin; output comes back as text (or "
            "binary with `binary=1`), the last `tail` lines first. A browser, which "
            "cannot send a header on a WebSocket, passes a `ticket` from "
            "`POST /daemon/v1/attach-ticket/{name}` instead of its token.",
            auth="token",
            websocket=True,
            params=(
                NAME,
                Param("tail", "lines of recent output first (default 100, at most 1000)", INT),
                Param("binary", "`1`: raw binary output frames", INT),
                Param("ticket", "a single-use ticket (instead of a token)"),
            ),
            responses={
                101: "switching to the WebSocket",
                400: BAD_INPUT,
                401: UNAUTHORIZED,
                404: UNKNOWN_DAEMON,
                429: TOO_MANY_STREAMS,
            },
        )
    },
    "/daemon/v1/attach-ticket/{name}": {
        "POST": Op(
            "A single-use ticket for the attach WebSocket",
            "daemons",
            description="Valid once, for this daemon, within `expires_in` seconds; the "
            "socket is then opened with `?ticket=`, so the token never goes in a URL.",
            auth="token",
            params=(NAME,),
            responses={
                200: ("the ticket", obj(["ticket", "expires_in"], ticket=STR, expires_in=INT)),
                401: UNAUTHORIZED,
                404: UNKNOWN_DAEMON,
            },
        )
    },
}

_PROXY = Op(
    "Reverse proxy to the daemon's first port",
    "daemons",
    description="Every method, HTTP and WebSocket; the prefix is stripped. `name` "
    "is the daemon's `Name` from spawn (or the plain name with the owner's token).",
    auth="optional",
    params=(Param("name", "the daemon's Name", where="path"),),
    responses={
        200: "the daemon's answer (any status)",
        404: "unknown or stopped daemon",
        502: "the daemon refused the connection",
        504: "the daemon timed out",
    },
)
PROXY: Docs = {
    "/daemon/v1/proxy/{name}/{path}": {"*": _PROXY},
    "/daemon/v1/proxy/{name}": {"*": _PROXY},
}

# -- golems and the relay -----------------------------------------------------

_GOLEM = obj(
    ["Webstrate", "Id", "Name", "State"],
    Webstrate=STR,
    Id=STR,
    Name=STR,
    State=STR,
    Status=STR,
    DebugPort={"type": ["integer", "null"]},
    Created=INT,
    Connected=BOOL,
)
_EMET = Op(
    "The emet script",
    "golems",
    description="`text/javascript` with PUBLIC_URL filled in.",
    responses={200: ("the script", STR, "text/javascript")},
)


def _golem_op(summary: str, created: bool = False) -> Op:
    responses: dict[int, str | tuple[str, Schema]] = {
        200: ("the golem", _GOLEM),
        400: "bad webstrate id",
        401: "a token is required (GOLEM_REQUIRE_TOKEN)",
        404: "no golem (or, for spawn, no golem image)",
    }
    if created:
        responses.update(
            {
                201: ("the new golem", _GOLEM),
                402: NO_CREDITS,
                429: "too many running golems (GOLEM_CAP)",
            }
        )
    return Op(summary, "golems", auth="optional", params=(WEBSTRATE,), responses=responses)


_SPAWN, _RESET, _KILL = (
    _golem_op("Start a webstrate's golem", created=True),
    _golem_op("Replace a golem's container"),
    _golem_op("Stop and remove a golem"),
)
GOLEMS: Docs = {
    "/": {"GET": _EMET},
    "/golem/v1/": {"GET": _EMET},
    "/golem/v1/ls": {
        "GET": Op("This herder's golems", "golems", responses={200: ("the golems", arr(_GOLEM))})
    },
    "/golem/v1/spawn/{webstrate}": {"GET": _SPAWN, "POST": _SPAWN},
    "/golem/v1/reset/{webstrate}": {"GET": _RESET, "POST": _RESET},
    "/golem/v1/kill/{webstrate}": {"GET": _KILL, "POST": _KILL},
}

_WS = {101: "switching to the WebSocket", 400: "bad webstrate id"}
RELAY: Docs = {
    "/golem/v1/connect/{webstrate}": {
        "GET": Op(
            "The golem's control socket",
            "golems",
            description="Receives `minion-connected` and `minion-disconnected` events.",
            websocket=True,
            params=(WEBSTRATE,),
            responses={**_WS, 409: "a control socket is open already"},
        )
    },
    "/minion/v1/connect/{webstrate}": {
        "GET": Op(
            "An ad-hoc minion's socket",
            "golems",
            websocket=True,
            params=(WEBSTRATE, Param("type", "the minion's type")),
            responses={**_WS, 429: "too many minions on this webstrate"},
        )
    },
    "/golem/v1/connect-to/{webstrate}/{minion}": {
        "GET": Op(
            "The golem's data channel to one minion",
            "golems",
            websocket=True,
            params=(WEBSTRATE, Param("minion", "the minion's id", where="path")),
            responses={**_WS, 404: "unknown minion", 409: "a channel is open already"},
        )
    },
}

# -- the console --------------------------------------------------------------

_HTML = "text/html"
CONSOLE: Docs = {
    "/console": {"GET": Op("Redirect to /console/", "console", responses={301: "to /console/"})},
    "/console/": {
        "GET": Op(
            "The console, a page for people",
            "console",
            responses={200: ("the single-page app", STR, _HTML)},
        )
    },
    "/console/api": {
        "GET": Op(
            "This document, rendered",
            "console",
            responses={200: ("a page rendering /openapi.json", STR, _HTML)},
        )
    },
    "/console/static/{path}": {
        "GET": Op(
            "The console's files",
            "console",
            params=(Param("path", "a file of the console", where="path"),),
            responses={200: "the file", 404: "no such file"},
        )
    },
    "/console/config.json": {
        "GET": Op(
            "What the console needs to know of this herder",
            "console",
            responses={
                200: (
                    "public facts",
                    obj(
                        ["version", "public_url", "webstrates_url", "credit_rate"],
                        version=STR,
                        public_url=STR,
                        webstrates_url=STR,
                        credit_rate=INT,
                    ),
                )
            },
        )
    },
    "/openapi.json": {
        "GET": Op(
            "This OpenAPI 3.1 document",
            "console",
            responses={200: ("the document", {"type": "object"})},
        )
    },
}

ALL: tuple[Docs, ...] = (
    HEALTH,
    METRICS,
    NODE,
    TOKENS,
    CREDITS,
    MINIONS,
    DAEMONS,
    LOGS,
    EXEC,
    ATTACH,
    PROXY,
    GOLEMS,
    RELAY,
    CONSOLE,
)
