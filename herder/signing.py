"""The herder's RSA key pair and instance id, kept in the data dir."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

PRIVATE_KEY_FILE = "herder-key.pem"
PUBLIC_KEY_FILE = "herder-key.pub.pem"
INSTANCE_FILE = "instance-id"


@dataclass(frozen=True)
class KeyPair:
    private_pem: bytes
    public_pem: bytes

    def __repr__(self) -> str:
        return "KeyPair(private_pem=***, public_pem=...)"


def key_paths(data_dir: Path) -> tuple[Path, Path]:
    return data_dir / PRIVATE_KEY_FILE, data_dir / PUBLIC_KEY_FILE


def generate_keypair(data_dir: Path, *, force: bool = False) -> bool:
    """Write a new RSA-3072 key pair; return False when one exists and not `force`."""
    private_path, public_path = key_paths(data_dir)
    if private_path.exists() and not force:
        return False
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = private_path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    os.chmod(tmp, 0o600)
    os.replace(tmp, private_path)
    public_path.write_bytes(public_pem)
    return True


def load_keypair(data_dir: Path, *, create: bool = True) -> KeyPair:
    private_path, public_path = key_paths(data_dir)
    if not private_path.exists():
        if not create:
            raise FileNotFoundError(f"no key pair in {data_dir}; run `herder keys generate`")
        generate_keypair(data_dir)
    private_pem = private_path.read_bytes()
    if not public_path.exists():
        key = serialization.load_pem_private_key(private_pem, password=None)
        public_path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return KeyPair(private_pem=private_pem, public_pem=public_path.read_bytes())


def instance_id(data_dir: Path) -> str:
    """A stable id for this herder: labels tell its containers from other herders'."""
    path = data_dir / INSTANCE_FILE
    try:
        value = path.read_text().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    value = secrets.token_hex(8)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value + "\n")
    try:
        os.link(tmp, path)  # first writer wins if two processes race
    except FileExistsError:
        value = path.read_text().strip()
    finally:
        tmp.unlink(missing_ok=True)
    return value
