"""Commands that work on the data dir and database directly, server or not."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from ..errors import Unauthorized
from ..ledger import Ledger
from ..settings import Settings
from ..signing import generate_keypair, key_paths, load_keypair
from ..tokens import MAX_JTI_LENGTH, TokenService


@asynccontextmanager
async def _tokens(settings: Settings) -> AsyncIterator[tuple[TokenService, Ledger]]:
    ledger = await Ledger.open(settings.database_url)
    try:
        yield TokenService(load_keypair(settings.data_dir), settings, ledger), ledger
    finally:
        await ledger.close()


# What a jti may look like here: ours are 32 hex digits; others printable, bounded.
_JTI = re.compile(rf"[\x21-\x7e]{{1,{MAX_JTI_LENGTH}}}")


def _when(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


async def token_create(settings: Settings, args: argparse.Namespace) -> int:
    async with _tokens(settings) as (tokens, _):
        token, claims = tokens.create(args.email, args.credits, args.ttl_days)
    print(f"subject: {claims.sub}", file=sys.stderr)
    print(f"jti:     {claims.jti}", file=sys.stderr)
    print(f"expires: {_when(claims.exp)}", file=sys.stderr)
    print(f"credits: {claims.crd}", file=sys.stderr)
    print(token)
    return 0


async def token_inspect(settings: Settings, args: argparse.Namespace) -> int:
    async with _tokens(settings) as (tokens, ledger):
        try:
            claims = tokens.decode(args.token)
        except Unauthorized as exc:
            print(f"herder: {exc.message}", file=sys.stderr)
            return 1
        revoked = await ledger.is_revoked(claims.jti)
        granted = await ledger.grant_of(claims.jti)
        balance = await ledger.balance(claims.sub)
    print(f"subject:   {claims.sub}")
    print(f"jti:       {claims.jti}")
    print(f"expires:   {_when(claims.exp)}")
    print(f"credits:   {claims.crd} in the token")
    print(f"granted:   {granted if granted is not None else 'not yet (granted on first use)'}")
    print(f"remaining: {balance.remaining} for {claims.sub}")
    print(f"revoked:   {'yes' if revoked else 'no'}")
    return 0


async def token_revoke(settings: Settings, args: argparse.Namespace) -> int:
    """Revoke by `jti`; a whole token of this herder's (three dotted parts)
    is taken for its `jti`. Anything else is refused, never stored."""
    async with _tokens(settings) as (tokens, ledger):
        jti = args.jti.strip()
        if jti.count(".") == 2:
            try:
                jti = tokens.decode(jti).jti
            except Unauthorized as exc:
                print(f"herder: cannot revoke: {exc.message}", file=sys.stderr)
                return 2
        elif not _JTI.fullmatch(jti):
            print(
                "herder: cannot revoke: give a token's jti (as `token inspect` shows) "
                "or the whole token",
                file=sys.stderr,
            )
            return 2
        fresh = await ledger.revoke(jti)
    print(f"revoked {jti}" if fresh else f"{jti} was already revoked")
    return 0


async def keys_generate(settings: Settings, args: argparse.Namespace) -> int:
    private_path, public_path = key_paths(settings.data_dir)
    if not generate_keypair(settings.data_dir, force=args.force):
        print(
            f"a key pair exists in {settings.data_dir}; use --force to replace it", file=sys.stderr
        )
        return 1
    load_keypair(settings.data_dir)
    print(f"wrote {private_path} (mode 0600) and {public_path}")
    return 0


async def db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    ledger = await Ledger.open(settings.database_url)
    await ledger.close()
    print("database is at the latest revision")
    return 0
