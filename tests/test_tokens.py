"""Tokens: hostile tokens are refused; good ones authenticate; the token routes."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from herder.settings import Settings
from herder.signing import load_keypair

from .conftest import auth, make_settings
from .hostile_bodies import JSON, MALFORMED_FORMS, MALFORMED_JSON, assert_refused, malformed


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "sub": "eve@example.org",
        "jti": "j-" + str(now),
        "iat": now,
        "exp": now + 3600,
        "iss": "herder",
        "app": "herder",
        "crd": 100,
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(settings: Settings, **over: Any) -> str:
    keys = load_keypair(settings.data_dir)
    return jwt.encode(_claims(**over), keys.private_pem, algorithm="RS512")


def hostile_tokens(settings: Settings) -> dict[str, str]:
    keys = load_keypair(settings.data_dir)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    good = _sign(settings)
    header, payload, _sig = good.split(".")
    return {
        "alg none": _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(_claims()) + ".",
        "HS256 with public key as secret": _b64({"alg": "HS256", "typ": "JWT"})
        + "."
        + payload
        + "."
        + base64.urlsafe_b64encode(
            __import__("hmac")
            .new(
                keys.public_pem,
                f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{payload}".encode(),
                "sha256",
            )
            .digest()
        )
        .rstrip(b"=")
        .decode(),
        "other RSA key": jwt.encode(_claims(), other, algorithm="RS512"),
        "expired": _sign(settings, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
        "wrong iss": _sign(settings, iss="someone-else"),
        "no exp": _sign(settings, exp=None),
        "no jti": _sign(settings, jti=None),
        "sub not a string": _sign(settings, sub=42),
        "negative crd": _sign(settings, crd=-5),
        "crd not an integer": _sign(settings, crd="100"),
        "crd above cap": _sign(settings, crd=10**13),
        "RS256 instead of RS512": jwt.encode(_claims(), keys.private_pem, algorithm="RS256"),
        "jku header pointing elsewhere": jwt.encode(
            _claims(), other, algorithm="RS512", headers={"jku": "http://127.0.0.1:1/keys"}
        ),
        "garbage": "not.a.token",
        "empty segments": "..",
    }


async def test_hostile_tokens_are_refused(client: Any, settings: Settings) -> None:
    for name, bad in hostile_tokens(settings).items():
        for kind, kwargs in (
            ("header", {"headers": auth(bad)}),
            ("query", {"params": {"token": bad}}),
        ):
            resp = await client.get("/token/v1/balance", **kwargs)
            assert resp.status == 401, f"{name} via {kind} got {resp.status}"
            body = await resp.json()
            assert "error" in body and bad not in body["error"]


async def test_malformed_authorization_headers(client: Any, token: str) -> None:
    for header in (
        f"Basic {token}",
        "Bearer",
        "Bearer ",
        f"Bearer {token} extra",
        token,
        f"Token {token}",
    ):
        resp = await client.get("/token/v1/balance", headers={"Authorization": header})
        assert resp.status == 401, header
        assert (await resp.json())["error"]


async def test_missing_token(client: Any) -> None:
    resp = await client.get("/token/v1/balance")
    assert resp.status == 401
    assert "token" in (await resp.json())["error"]


async def test_good_token_any_case_scheme_and_query(client: Any, make_token: Any) -> None:
    token = make_token("ann@example.org", credits=250)
    for kwargs in (
        {"headers": {"Authorization": f"bearer {token}"}},
        {"headers": {"Authorization": f"BEARER  {token}"}},
        {"params": {"token": token}},
    ):
        resp = await client.get("/token/v1/balance", **kwargs)
        assert resp.status == 200, kwargs
        body = await resp.json()
        assert body["email"] == "ann@example.org"
        assert body["credits"] == 250


async def test_revoked_token_is_refused(client: Any, settings: Settings, make_token: Any) -> None:
    token = make_token()
    assert (await client.get("/token/v1/balance", headers=auth(token))).status == 200
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    ledger = client.app[__import__("herder.api.keys", fromlist=["LEDGER"]).LEDGER]
    assert await ledger.revoke(jti)
    resp = await client.get("/token/v1/balance", headers=auth(token))
    assert resp.status == 401
    assert "revoked" in (await resp.json())["error"]


async def test_two_tokens_for_one_email_add_up(client: Any, make_token: Any) -> None:
    first = make_token("sam@example.org", credits=100)
    second = make_token("sam@example.org", credits=40)
    assert (await client.get("/token/v1/balance", headers=auth(first))).status == 200
    resp = await client.get("/token/v1/balance", headers=auth(second))
    assert (await resp.json())["credits"] == 140
    # Using a token again grants nothing more.
    resp = await client.get("/token/v1/balance", headers=auth(first))
    assert (await resp.json())["credits"] == 140
    resp = await client.get(f"/token/v1/inspect/{first}")
    assert resp.status == 200
    assert await resp.json() == {"token": first, "email": "sam@example.org", "credits": 140}


async def test_inspect_invalid_token_is_404(client: Any, settings: Settings) -> None:
    resp = await client.get("/token/v1/inspect/" + hostile_tokens(settings)["other RSA key"])
    assert resp.status == 404
    assert (await resp.json())["error"]


async def test_generate_without_password_is_405(client: Any) -> None:
    resp = await client.get("/token/v1/generate", params={"password": "x", "email": "a@b.c"})
    assert resp.status == 405
    assert "password" in (await resp.json())["error"]


@pytest.fixture
async def password_client(tmp_path: Any, aiohttp_client: Any) -> Any:
    from herder.app import create_app

    return await aiohttp_client(create_app(make_settings(tmp_path / "pw", token_password="s3cret")))


async def test_generate_with_password(password_client: Any) -> None:
    resp = await password_client.get(
        "/token/v1/generate", params={"password": "wrong", "email": "a@b.c"}
    )
    assert resp.status == 401
    resp = await password_client.post(
        "/token/v1/generate",
        data={"password": "s3cret", "email": "gen@example.org", "credits": "77"},
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["email"] == "gen@example.org" and body["credits"] == 77
    resp = await password_client.get("/token/v1/balance", headers=auth(body["token"]))
    assert (await resp.json())["credits"] == 77
    resp = await password_client.get(
        "/token/v1/generate", params={"password": "s3cret", "email": "x@y.z", "credits": "lots"}
    )
    assert resp.status == 400
    resp = await password_client.get(
        "/token/v1/generate", params={"password": "s3cret", "email": "x@y.z", "credits": "-1"}
    )
    assert resp.status == 400


async def test_tokens_never_reach_the_log(
    client: Any, make_token: Any, caplog: pytest.LogCaptureFixture
) -> None:
    token = make_token()
    caplog.set_level("DEBUG")
    await client.get(f"/token/v1/inspect/{token}")
    await client.get("/token/v1/balance", params={"token": token})
    await client.get("/token/v1/balance", headers=auth(token))
    await client.get("/token/v1/generate", params={"password": "hunter2", "email": "a@b.c"})
    # aiohttp's access log belongs to the test server; `herder serve` turns it off.
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("herder"))
    assert "/token/v1/inspect/***" in logged
    assert token not in logged and token.split(".")[1] not in logged
    assert "hunter2" not in logged


@malformed(
    MALFORMED_FORMS,
    MALFORMED_JSON,
    [
        ("list value", b'{"password": "s3cret", "email": ["a@b.c"]}', JSON, "email"),
        ("object value", b'{"password": "s3cret", "credits": {"n": 1}}', JSON, "credits"),
        ("not an object", b"[1]", JSON, "JSON object"),
    ],
)
async def test_generate_refuses_malformed_bodies(
    password_client: Any, body: bytes, content_type: str, word: str
) -> None:
    resp = await password_client.post(
        "/token/v1/generate", data=body, headers={"Content-Type": content_type}
    )
    await assert_refused(resp, word)
