"""RS512 JWTs: creation and validation (`TokenService`); the routes and request
auth are in `herder.api.tokens` and `herder.api.auth`.

Validation pins the algorithm (RS512, hard-coded) and the herder's own public
key; header fields such as `jku`, `x5u` or `jwk` are never consulted. A token
is never logged.
"""

from __future__ import annotations

import hmac
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from .errors import BadRequest, MethodNotAllowed, Unauthorized
from .ledger import Ledger
from .settings import Settings
from .signing import KeyPair

ALGORITHM = "RS512"
APP = "herder"
MAX_SUBJECT_LENGTH = 320
MAX_JTI_LENGTH = 128
MAX_TOKEN_LENGTH = 8192


@dataclass(frozen=True)
class Claims:
    sub: str
    jti: str
    iat: int
    exp: int
    iss: str
    crd: int
    app: str = APP

    def __repr__(self) -> str:
        return f"Claims(sub={self.sub!r}, jti={self.jti!r}, exp={self.exp}, crd={self.crd})"


class TokenService:
    """Signs and checks tokens with one key pair; consults the ledger for
    revocations and the first-use grant."""

    def __init__(self, keys: KeyPair, settings: Settings, ledger: Ledger) -> None:
        self._keys = keys
        self._settings = settings
        self._ledger = ledger

    def create(
        self, email: str, credits: int | None = None, ttl_days: float = 365
    ) -> tuple[str, Claims]:
        email = _check_subject(email)
        credits = self._settings.default_credits if credits is None else credits
        if (
            not isinstance(credits, int)
            or credits < 0
            or credits > self._settings.token_max_credits
        ):
            raise BadRequest(
                f"credits must be an integer from 0 to {self._settings.token_max_credits}"
            )
        if not 0 < ttl_days <= 3650:
            raise BadRequest("ttl must be between 0 and 3650 days")
        now = int(time.time())
        claims = Claims(
            sub=email,
            jti=uuid.uuid4().hex,
            iat=now,
            exp=now + int(ttl_days * 86400),
            iss=self._settings.token_issuer,
            crd=credits,
        )
        payload = {
            "sub": claims.sub,
            "jti": claims.jti,
            "iat": claims.iat,
            "exp": claims.exp,
            "iss": claims.iss,
            "app": claims.app,
            "crd": claims.crd,
        }
        token = jwt.encode(payload, self._keys.private_pem, algorithm=ALGORITHM)
        return token, claims

    def generate(self, password: str, email: str, raw_credits: str) -> tuple[str, Claims]:
        """`/token/v1/generate`: a token for `email` (with `raw_credits`, or
        the default credits) when `password` is the configured one."""
        expected = self._settings.token_password
        if not expected:
            raise MethodNotAllowed("token generation is disabled: no password is configured")
        if not hmac.compare_digest(password.encode(), expected.encode()):
            raise Unauthorized("wrong password")
        try:
            credits = int(raw_credits) if raw_credits else self._settings.default_credits
        except ValueError:
            raise BadRequest("credits must be an integer") from None
        return self.create(email, credits)

    def decode(self, token: str) -> Claims:
        """Check signature and claims; raise `Unauthorized` for any fault."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized("missing or invalid token")
        try:
            payload = jwt.decode(
                token,
                self._keys.public_pem,
                algorithms=[ALGORITHM],
                issuer=self._settings.token_issuer,
                options={
                    "require": ["exp", "iat", "sub", "jti", "iss"],
                    "verify_sub": False,
                    "verify_jti": False,
                },
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.PyJWTError:
            raise Unauthorized("invalid token") from None
        return _claims_from(payload, self._settings.token_max_credits)

    async def authenticate(self, token: str) -> Claims:
        """Decode, refuse revoked `jti`s, and grant the token's credits on first use."""
        claims = self.decode(token)
        if await self._ledger.is_revoked(claims.jti):
            raise Unauthorized("token revoked")
        await self._ledger.grant_once(claims.sub, claims.jti, claims.crd)
        return claims


def _check_subject(email: Any) -> str:
    if not isinstance(email, str):
        raise BadRequest("email must be a string")
    value: str = email.strip()
    if not value or len(value) > MAX_SUBJECT_LENGTH or any(c in value for c in "\x00\r\n\t "):
        raise BadRequest("email must be 1 to 320 characters without spaces")
    return value


def _claims_from(payload: dict[str, Any], max_credits: int) -> Claims:
    sub, jti, crd = payload.get("sub"), payload.get("jti"), payload.get("crd", 0)
    if not isinstance(sub, str) or not sub or len(sub) > MAX_SUBJECT_LENGTH:
        raise Unauthorized("invalid token: bad sub")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
        raise Unauthorized("invalid token: bad jti")
    if isinstance(crd, bool) or not isinstance(crd, int) or not 0 <= crd <= max_credits:
        raise Unauthorized("invalid token: bad crd")
    iat, exp = payload["iat"], payload["exp"]
    if not isinstance(iat, int | float) or not isinstance(exp, int | float):
        raise Unauthorized("invalid token: bad times")
    return Claims(
        sub=sub,
        jti=jti,
        iat=int(iat),
        exp=int(exp),
        iss=str(payload["iss"]),
        crd=crd,
        app=str(payload.get("app", APP)),
    )
