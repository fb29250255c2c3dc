"""Malformed bodies the routes must refuse with a clear 400: forms
(`POST /daemon/v1/spawn`, `/minion/v1/spawn`, `/token/v1/generate`) and
JSON (`/token/v1/generate`, `/daemon/v1/exec`)."""

from __future__ import annotations

from typing import Any

import pytest

BOUNDARY = "hostile0boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def _part(headers: str, value: str = "x") -> str:
    return f"--{BOUNDARY}\r\n{headers}\r\n\r\n{value}\r\n"


_FIELD = _part('Content-Disposition: form-data; name="name"', "ok")
_END = f"--{BOUNDARY}--\r\n"
_NESTED = _part(
    'Content-Disposition: form-data; name="nested"\r\n'
    "Content-Type: multipart/mixed; boundary=inner",
    '--inner\r\nContent-Disposition: attachment; filename="a"\r\n\r\nx\r\n--inner--',
)

# (id, body, Content-Type, a word the error must contain)
MALFORMED_FORMS: list[tuple[str, bytes, str, str]] = [
    ("no boundary", (_FIELD + _END).encode(), "multipart/form-data", "boundary"),
    (
        "part without a name",
        (_part("Content-Disposition: form-data") + _END).encode(),
        MULTIPART,
        "name",
    ),
    ("part without headers", (_part("X-Nothing: 1") + _END).encode(), MULTIPART, "name"),
    (
        "truncated part",
        (_FIELD + f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f"\r\n\r\nab').encode(),
        MULTIPART,
        "multipart",
    ),
    (
        "truncated headers",
        (_FIELD + f"--{BOUNDARY}\r\nContent-Disp").encode(),
        MULTIPART,
        "multipart",
    ),
    ("no starting boundary", b"garbage\r\n", MULTIPART, "multipart"),
    (
        "control character in a part header",
        (_part('Content-Disposition: form-data; name="a\x01b"') + _END).encode(),
        MULTIPART,
        "multipart",
    ),
    ("nested multipart", (_NESTED + _END).encode(), MULTIPART, "nested"),
    (
        "unknown charset",
        b"name=ok&image=x",
        "application/x-www-form-urlencoded; charset=foo",
        "charset",
    ),
    (
        "not a text charset",
        b"name=ok&image=x",
        "application/x-www-form-urlencoded; charset=rot13",
        "charset",
    ),
    (
        "bytes not in the charset",
        b"name=ok&image=\xff",
        "application/x-www-form-urlencoded",
        "utf-8",
    ),
]

JSON = "application/json"
MALFORMED_JSON: list[tuple[str, bytes, str, str]] = [
    ("invalid JSON", b'{"password": "s3cret", ', JSON, "JSON"),
    ("nested JSON", b"[" * 100_000, JSON, "JSON"),
    ("unknown JSON charset", b'{"password": "s3cret"}', f"{JSON}; charset=foo", "charset"),
    ("JSON not utf-8", b'{"password": "s3cret", "cmd": ["\xff"]}', JSON, "utf-8"),
]


def malformed(*cases: list[tuple[str, bytes, str, str]]) -> pytest.MarkDecorator:
    """Parametrize a test with `body`, `content_type` and `word` of the cases."""
    return pytest.mark.parametrize(
        ("body", "content_type", "word"),
        [pytest.param(body, ctype, word, id=name) for c in cases for name, body, ctype, word in c],
    )


async def assert_refused(resp: Any, word: str) -> None:
    """A 400 with a JSON `error` that names the problem."""
    assert resp.status == 400, await resp.text()
    assert resp.content_type == "application/json"
    error = (await resp.json())["error"]
    assert word.lower() in error.lower(), error
