"""PyCloud's messages as herder reads them (pure functions, no Redis)."""

from __future__ import annotations

import json

import pytest

from herder.channels.protocol import (
    Dropped,
    Keys,
    Refused,
    default_name,
    parse_script,
    read_request,
)
from herder.errors import BadRequest


def test_pyclouds_example_script() -> None:
    spawn = parse_script('year4000/pycloud\n{\n    "port": 80\n}', "req-1")
    assert (spawn.image, spawn.ports, spawn.name) == (
        "year4000/pycloud",
        (80,),
        default_name("req-1"),
    )
    assert spawn.files == {} and spawn.group is None


def test_script_with_everything() -> None:
    config = {"ports": [8080, "9000"], "name": "web", "group": "g1", "files": {"a/b.txt": "hé"}}
    spawn = parse_script("herder-test/busybox:1\n" + json.dumps(config), "r")
    assert spawn.ports == (8080, 9000) and spawn.name == "web" and spawn.group == "g1"
    assert spawn.files == {"a/b.txt": "hé".encode()}


@pytest.mark.parametrize(
    "script",
    [
        "herder-test/busybox:1",
        "herder-test/busybox:1\n",
        "herder-test/busybox:1\nnot json",
        "herder-test/busybox:1\n[80]",
        "UPPER/Case\n{}",
        "img\n" + json.dumps({"port": 80, "ports": [81]}),
        "img\n" + json.dumps({"port": True}),
        "img\n" + json.dumps({"ports": 80}),
        "img\n" + json.dumps({"ports": list(range(1, 18))}),
        "img\n" + json.dumps({"ports": [80, 80]}),
        "img\n" + json.dumps({"name": "tmp"}),
        "img\n" + json.dumps({"name": 5}),
        "img\n" + json.dumps({"group": "Bad Group"}),
        "img\n" + json.dumps({"files": {"/etc/passwd": "x"}}),
        "img\n" + json.dumps({"files": {"a": 1}}),
        "img\n" + json.dumps({"environment": {"A": "1"}}),
        "img\n" + json.dumps({"privileged": True}),
        "",
        "   ",
    ],
)
def test_bad_scripts_are_400(script: str) -> None:
    with pytest.raises(BadRequest):
        parse_script(script, "r")


def test_not_a_string_is_400() -> None:
    with pytest.raises(BadRequest):
        parse_script({"image": "x"}, "r")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "not_json"),
        (b"[]", "not_json"),
        (b'"id"', "not_json"),
        (b"{}", "no_id"),
        (b'{"id": ""}', "no_id"),
        (b'{"id": 7}', "no_id"),
        (b'{"id": "has space"}', "no_id"),
        (b'{"id": "glob*"}', "no_id"),
        (json.dumps({"id": "x" * 129}).encode(), "no_id"),
        (b"[" * 100_000, "not_json"),
    ],
)
def test_payloads_without_a_readable_id_are_dropped(raw: bytes, reason: str) -> None:
    with pytest.raises(Dropped) as caught:
        read_request("create", raw, 1 << 20)
    assert caught.value.reason == reason


def test_too_large_is_refused_when_the_id_comes_first() -> None:
    big = json.dumps({"id": "req-9", "script": "x" * 2000}).encode()
    with pytest.raises(Refused) as caught:
        read_request("create", big, 1024)
    assert caught.value.request_id == "req-9" and caught.value.error.status == 413
    late = json.dumps({"script": "x" * 2000, "id": "req-9"}).encode()
    with pytest.raises(Dropped) as dropped:
        read_request("create", late, 1024)
    assert dropped.value.reason == "too_large"


def test_a_good_request() -> None:
    request = read_request("status", b'{"id": "a-1", "session": "web-abc", "token": "t"}', 1024)
    assert (request.id, request.token, request.body["session"]) == ("a-1", "t", "web-abc")


def test_names_under_pyclouds_prefix() -> None:
    keys = Keys("year4000.pycloud")
    assert keys.channel("create") == "year4000.pycloud.create"
    assert keys.reply_channel("remove", "R") == "year4000.pycloud.remove.R"
    assert keys.rank == "year4000.pycloud.rank"
    assert keys.stream == "year4000.pycloud.requests"


def test_default_names_are_daemon_names_and_stable() -> None:
    name = default_name("any id at all")
    assert name == default_name("any id at all") != default_name("another id")
    parse_script(f"img\n{json.dumps({'name': name})}", "x")  # a valid daemon name
