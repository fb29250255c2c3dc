"""Reading what clients send: forms, JSON bodies, numbers and flags in query strings.

Every route reads client input through these helpers, so every client
mistake is a `BadRequest` naming it, never a 500: a multipart body without
a boundary, truncated, nested or with a part that has no name; a charset
Python does not know (or that is not a text encoding); bytes that are not
text in their charset; JSON that does not parse or nests too deep; a
number that is not plain ASCII digits.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import BodyPartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError, InvalidHeader

from ..errors import BadRequest, PayloadTooLarge

URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
MAX_FIELDS = 1024
MAX_DIGITS = 18
# aiohttp strips leading slashes from a part's name; the reader puts one back
# so that callers refuse an absolute name as it was sent.
_ABSOLUTE_NAME = re.compile(r'(?:^|;)\s*name\*?\s*=\s*"?\s*[\\/]')


@dataclass(frozen=True)
class FormField:
    """One field of a form, in the order sent; `is_file` for a multipart
    part with a file name."""

    name: str
    data: bytes
    is_file: bool = False

    def text(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"field {shown(self.name)!r} is not UTF-8 text") from None


def shown(value: str, limit: int = 100) -> str:
    """A client's string fit for an error message: cut, control characters escaped."""
    return value[:limit].encode("unicode_escape").decode()


def body_charset(request: web.Request) -> str:
    """The charset of the request's Content-Type (default utf-8), if it is a
    text encoding Python knows."""
    name = request.charset or "utf-8"
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        info = None
    if info is None or not getattr(info, "_is_text_encoding", True):
        raise BadRequest(f"unknown charset {shown(name)!r} in Content-Type; use utf-8")
    return name


@contextmanager
def client_input(what: str) -> Iterator[None]:
    """Map the errors of parsing a client's `what` (a body, a field) to `BadRequest`."""
    try:
        yield
    except LookupError as exc:  # charsets are checked first: not one of those
        raise BadRequest(f"malformed {what}: {shown(str(exc), 200)}") from None
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the {what} is not valid {exc.encoding} text") from None
    except RecursionError:
        raise BadRequest(f"the {what} is nested too deeply") from None
    except InvalidHeader as exc:
        raise BadRequest(
            f"malformed {what}: a bad part header (cut short, or a control character "
            "in a field name?): "
            f"{shown(exc.message, 200)}"
        ) from None
    except HttpProcessingError as exc:
        raise BadRequest(f"malformed {what}: {shown(exc.message, 200)}") from None
    except ValueError as exc:
        raise BadRequest(f"malformed or truncated {what}: {shown(str(exc), 200)}") from None


async def read_form(
    request: web.Request, max_bytes: int, max_fields: int = MAX_FIELDS
) -> list[FormField]:
    """The fields of an urlencoded or multipart body ([] without a body),
    never holding more than `max_bytes` of it (413 beyond)."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes)
    if not request.can_read_body:
        return []
    if request.content_type == MULTIPART:
        with client_input("multipart body"):
            return await _read_multipart(request, max_bytes, max_fields)
    if request.content_type == URLENCODED:
        with client_input("form"):
            return await _read_urlencoded(request, max_bytes, max_fields)
    raise BadRequest(f"expected a form: {URLENCODED} or {MULTIPART}")


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body too large (at most {max_bytes} bytes)")


async def _read_urlencoded(
    request: web.Request, max_bytes: int, max_fields: int
) -> list[FormField]:
    charset = body_charset(request)
    body = await request.read()  # the app's client_max_size applies (413)
    if len(body) > max_bytes:
        raise _too_large(max_bytes)
    text = body.decode(charset).rstrip()
    if text.count("&") >= max_fields:
        raise BadRequest(f"too many form fields (at most {max_fields})")
    pairs = parse_qsl(text, keep_blank_values=True, encoding=charset, errors="strict")
    return [FormField(name, value.encode("utf-8")) for name, value in pairs]


async def _read_multipart(request: web.Request, max_bytes: int, max_fields: int) -> list[FormField]:
    reader = await request.multipart()
    fields: list[FormField] = []
    total = 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart bodies are not supported")
        if not part.name:
            raise BadRequest(
                "a multipart part without a field name "
                '(expected Content-Disposition: form-data; name="...")'
            )
        if len(fields) >= max_fields:
            raise BadRequest(f"too many form fields (at most {max_fields})")
        name = part.name
        if _ABSOLUTE_NAME.search(part.headers.get(hdrs.CONTENT_DISPOSITION, "")):
            name = "/" + name
        chunks: list[bytes] = []
        while chunk := await part.read_chunk(1 << 16):
            total += len(chunk)
            if total > max_bytes:
                raise _too_large(max_bytes)
            chunks.append(chunk)
        fields.append(FormField(name, b"".join(chunks), is_file=part.filename is not None))
    return fields


async def read_json(request: web.Request, expected: str) -> Any:
    """The request's JSON body; `BadRequest` saying `expected` (and what is
    wrong) when it is not JSON in a known charset."""
    charset = body_charset(request)
    with client_input("JSON body"):
        text = (await request.read()).decode(charset)
    return parse_json(text, expected)


def parse_json(text: str, expected: str) -> Any:
    """`text` parsed as JSON; `BadRequest` saying `expected` when it does not
    parse or nests deeper than Python's recursion allows."""
    try:
        return json.loads(text)
    except RecursionError:
        raise BadRequest(f"{expected} (this JSON is nested too deeply)") from None
    except ValueError as exc:
        raise BadRequest(f"{expected} (not valid JSON: {exc})") from None


def plain_int(raw: str, maximum: int, error: str) -> int:
    """`raw` as a number from 0 to `maximum`: ASCII digits only (no sign,
    space, `_` or `²`, which `int()` or `str.isdigit` would let through)."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > MAX_DIGITS or int(raw) > maximum:
        raise BadRequest(error)
    return int(raw)


# Query flags: `?wipe=on`, `?binary=1`, `?follow=yes`.
FLAG_ON = frozenset({"1", "true", "yes", "on"})
FLAG_OFF = frozenset({"", "0", "false", "no", "off"})


def query_flag(raw: str | None, *, on: frozenset[str] = FLAG_ON, strict: str | None = None) -> bool:
    """A query flag's value: True when `raw` (trimmed, any case) is one of `on`.

    Anything else (absent included) is False; with `strict` (the flag's
    name), a value in neither `on` nor `FLAG_OFF` is a `BadRequest`.
    """
    value = (raw or "").strip().lower()
    if value in on:
        return True
    if strict is not None and value not in FLAG_OFF:
        raise BadRequest(f"{strict} must be 1 or 0")
    return False
