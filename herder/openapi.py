"""The OpenAPI 3.1 document of the herder, built from the app's route table.

Each resource declares the docs of its operations next to its routes, as a
`Docs` table: path (as aiohttp formats it, `{name}` for a variable) ->
method -> `Op`. `document()` walks the router and looks every route up in
those tables, so a route without docs (or docs without a route) is an error,
not a silent gap: the document cannot drift from what the app serves.
`HEAD` routes that aiohttp adds beside a `GET` need no docs of their own:
they are listed as the `GET` without a body. A route for any method (`*`,
the proxy) is listed under every method.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp.web import AbstractRoute

JSON = "application/json"
ANY_METHODS = ("get", "put", "post", "delete", "options", "head", "patch")
_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")

Schema = dict[str, Any]


def obj(required: Iterable[str] = (), **props: Schema) -> Schema:
    """A JSON object schema with these properties (`required` among them)."""
    schema: Schema = {"type": "object", "properties": props}
    required = list(required)
    if required:
        schema["required"] = required
    return schema


def arr(items: Schema) -> Schema:
    return {"type": "array", "items": items}


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
ERROR_REF: Schema = {"$ref": "#/components/schemas/Error"}


@dataclass(frozen=True)
class Param:
    """A query (or path) parameter."""

    name: str
    description: str
    schema: Schema = field(default_factory=lambda: dict(STR))
    where: str = "query"
    required: bool = False


@dataclass(frozen=True)
class Body:
    """A request body: one schema per media type."""

    description: str
    content: Mapping[str, Schema]
    required: bool = True


@dataclass(frozen=True)
class Op:
    """One operation: what it does, who may call it, what it takes and answers.

    `auth`: "none", "token" (a bearer JWT), "optional" (a token when the
    herder is configured to want one) or "password". `responses` maps a
    status to a description, or to a (description, schema, media type)
    tuple; a bare string answer of an error status gets the `Error` schema.
    `websocket`: the route upgrades to a WebSocket (described in the text).
    """

    summary: str
    tag: str
    description: str = ""
    auth: str = "none"
    params: tuple[Param, ...] = ()
    body: Body | None = None
    responses: Mapping[int, str | tuple[str, Schema] | tuple[str, Schema, str]] = field(
        default_factory=dict
    )
    websocket: bool = False


Docs = Mapping[str, Mapping[str, Op]]

# Shared by the resources' docs.
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


class DocsMismatch(Exception):
    """The route table and the docs disagree (a route without docs, or docs
    for a route the app does not serve)."""


def served_operations(routes: Iterable[AbstractRoute]) -> set[tuple[str, str]]:
    """(method, path) of every route, `HEAD` beside a `GET` left out, `*` kept."""
    found = _all_operations(routes)
    return {(m, p) for m, p in found if not (m == "head" and ("get", p) in found)}


def _all_operations(routes: Iterable[AbstractRoute]) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for route in routes:
        info = route.get_info()
        path = info.get("path") or info.get("formatter")
        if path is None:  # static resources: their prefix
            path = info.get("prefix", "") + "/{filename}"
        found.add((route.method.lower(), path))
    return found


def documented_operations(tables: Iterable[Docs]) -> set[tuple[str, str]]:
    return {(method.lower(), path) for t in tables for path, ops in t.items() for method in ops}


def document(
    routes: Iterable[AbstractRoute], tables: Iterable[Docs], *, version: str, server: str
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of these routes; `DocsMismatch` when a route
    has no docs or docs name no route."""
    tables = list(tables)
    routes = list(routes)
    heads = {p for m, p in _all_operations(routes) if m == "head"}
    served = served_operations(routes)
    documented = documented_operations(tables)
    if served != documented:
        missing = sorted(served - documented)
        extra = sorted(documented - served)
        raise DocsMismatch(f"routes without docs: {missing}; docs without a route: {extra}")
    paths: dict[str, dict[str, Any]] = {}
    tags: set[str] = set()
    for table in tables:
        for path, ops in table.items():
            entry = paths.setdefault(_openapi_path(path), {})
            for method, op in ops.items():
                tags.add(op.tag)
                methods = ANY_METHODS if method == "*" else (method.lower(),)
                for m in methods:
                    entry[m] = _operation(path, m, op)
                if method.lower() == "get" and path in heads:
                    head = _operation(path, "head", op)
                    head["summary"] = f"{op.summary} (headers only)"
                    for response in head["responses"].values():
                        response.pop("content", None)
                    entry["head"] = head
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "herder",
            "version": version,
            "description": (
                "Herds Docker containers: minions (one-shot runs), daemons (long-lived "
                "containers with a proxy and an attach socket), golems (headless "
                "Chromium per webstrate), tokens and metered credits. Errors are JSON "
                '`{"error": "..."}` with a 4xx status.'
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": server}],
        "tags": [{"name": t} for t in sorted(tags)],
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "queryToken": {"type": "apiKey", "in": "query", "name": "token"},
            },
            "schemas": {"Error": obj(["error"], error=STR)},
        },
    }


def _openapi_path(path: str) -> str:
    return _VARIABLE.sub(lambda m: "{" + m.group(1) + "}", path)


def _operation(path: str, method: str, op: Op) -> dict[str, Any]:
    names = _VARIABLE.findall(path)
    described = {p.name: p for p in op.params if p.where == "path"}
    params: list[dict[str, Any]] = []
    for name in names:
        given = described.get(name)
        params.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": given.description if given else name,
                "schema": given.schema if given else dict(STR),
            }
        )
    for p in op.params:
        if p.where != "path":
            params.append(
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.required,
                    "description": p.description,
                    "schema": p.schema,
                }
            )
    out: dict[str, Any] = {
        "summary": op.summary,
        "tags": [op.tag],
        "operationId": _operation_id(method, path),
        "responses": {str(s): _response(s, r) for s, r in sorted(op.responses.items())},
    }
    description = op.description
    if op.websocket:
        description = ("WebSocket: upgrade with `GET`. " + description).strip()
        out["x-websocket"] = True
    if description:
        out["description"] = description
    if params:
        out["parameters"] = params
    if op.body is not None and method not in ("get", "head", "delete", "options"):
        out["requestBody"] = {
            "description": op.body.description,
            "required": op.body.required,
            "content": {media: {"schema": s} for media, s in op.body.content.items()},
        }
    if op.auth == "token":
        out["security"] = [{"bearer": []}, {"queryToken": []}]
    elif op.auth == "optional":
        out["security"] = [{}, {"bearer": []}, {"queryToken": []}]
    else:
        out["security"] = []
    return out


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", _openapi_path(path)).strip("_") or "root"
    if path.endswith("/") and path != "/":  # /console/ beside /console
        words += "_index"
    return f"{method}_{words}"


def _response(status: int, given: str | tuple[str, Schema] | tuple[str, Schema, str]) -> Any:
    if isinstance(given, str):
        if status >= 400:
            return {"description": given, "content": {JSON: {"schema": ERROR_REF}}}
        return {"description": given}
    if len(given) == 2:
        description, schema = given
        media = JSON
    else:
        description, schema, media = given
    return {"description": description, "content": {media: {"schema": schema}}}
