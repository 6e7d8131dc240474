"""Signing keys for access tokens: loading, dev generation, publication (JWKS) and rotation.

Sources, in order:

1. the secret ``auth-signing-keys`` (``$SECRETS_DIR/auth-signing-keys`` or env
   ``AUTH_SIGNING_KEYS``): either a JSON set ``{"keys": [<private JWK>, ...]}`` where each JWK
   has ``kid``, ``alg`` (RS256 or EdDSA) and optionally ``created_at`` (epoch seconds), or one or
   more PEM private keys (the last one signs; kids are RFC 7638 thumbprints);
2. otherwise (dev), the file ``$AUTH_KEYS_FILE`` (default ``<data_dir>/auth-signing-keys.json``),
   generated once: created atomically, so concurrent processes and restarts share one key.
   ``AUTH_REQUIRE_SIGNING_KEYS=true`` turns the fallback off (production: fail the boot).

Rotation: the newest key signs; every key stays in the JWKS until the tokens it signed have
expired. ``python -m functions.auth.keys rotate [--file F] [--alg RS256|EdDSA]`` adds a key and
drops retired ones; the output is the new secret's content.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

from shared.config import ConfigError, data_dir, env_bool, env_str, read_secret

log = logging.getLogger("functions.auth.keys")

SECRET_NAME = "auth-signing-keys"
SUPPORTED_ALGORITHMS = ("RS256", "EdDSA")
_PUBLIC_MEMBERS = {"RSA": ("e", "n"), "OKP": ("crv", "x")}


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private_key: Any
    created_at: float

    @property
    def public_jwk(self) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.alg == "RS256" else OKPAlgorithm
        jwk = algorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {**{k: jwk[k] for k in ("kty", *_PUBLIC_MEMBERS[jwk["kty"]])}, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def private_jwk(self) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.alg == "RS256" else OKPAlgorithm
        jwk = algorithm.to_jwk(self.private_key, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig", "created_at": self.created_at}

    def sign(self, claims: Mapping[str, Any]) -> str:
        return jwt.encode(dict(claims), self.private_key, algorithm=self.alg, headers={"kid": self.kid, "typ": "at+jwt"})


class KeyRing:
    """The keys auth publishes; the newest signs."""

    def __init__(self, keys: Iterable[SigningKey]) -> None:
        self.keys = sorted(keys, key=lambda key: key.created_at)
        if not self.keys:
            raise ConfigError("no signing keys")
        self._public = {key.kid: jwt.PyJWK(key.public_jwk) for key in self.keys}

    @property
    def signing_key(self) -> SigningKey:
        return self.keys[-1]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk for key in reversed(self.keys)]}

    def public_keys(self) -> dict[str, jwt.PyJWK]:
        return self._public

    def to_json(self) -> str:
        return json.dumps({"keys": [key.private_jwk() for key in self.keys]}, indent=2)


# -- creation ------------------------------------------------------------------------------
def thumbprint(public_jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): a stable kid derived from the key."""
    members = {k: public_jwk[k] for k in ("kty", *_PUBLIC_MEMBERS[public_jwk["kty"]])}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _from_private_key(private_key: Any, created_at: float, kid: str | None = None) -> SigningKey:
    if isinstance(private_key, rsa.RSAPrivateKey):
        alg = "RS256"
        if private_key.key_size < 2048:
            raise ConfigError("RSA signing keys must have at least 2048 bits")
    elif isinstance(private_key, ed25519.Ed25519PrivateKey):
        alg = "EdDSA"
    else:
        raise ConfigError(f"unsupported signing key type {type(private_key).__name__} (use RSA or Ed25519)")
    provisional = SigningKey("-", alg, private_key, created_at)
    return SigningKey(kid or thumbprint(provisional.public_jwk), alg, private_key, created_at)


def generate_key(alg: str = "RS256", now: float | None = None) -> SigningKey:
    if alg == "RS256":
        private_key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "EdDSA":
        private_key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ConfigError(f"unsupported signing algorithm {alg!r}; use one of {SUPPORTED_ALGORITHMS}")
    return _from_private_key(private_key, time.time() if now is None else now)


# -- parsing -------------------------------------------------------------------------------
def parse_keys(text: str) -> KeyRing:
    """A key ring from a JSON private-key set or from PEM private keys."""
    text = text.strip()
    if text.startswith("{"):
        return _parse_jwk_set(text)
    if "-----BEGIN" in text:
        return _parse_pem(text)
    raise ConfigError(f"{SECRET_NAME} is neither a JSON key set nor PEM")


def _parse_jwk_set(text: str) -> KeyRing:
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{SECRET_NAME} is not valid JSON: {exc}") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f'{SECRET_NAME} must be {{"keys": [<private JWK>, ...]}}')
    keys = []
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or entry.get("kty") not in _PUBLIC_MEMBERS:
            raise ConfigError(f"{SECRET_NAME}: key #{position} is not an RSA or OKP JWK")
        algorithm = RSAAlgorithm if entry["kty"] == "RSA" else OKPAlgorithm
        try:
            private_key = algorithm.from_jwk(entry)
        except (jwt.InvalidKeyError, ValueError, KeyError) as exc:
            raise ConfigError(f"{SECRET_NAME}: key #{position} is unusable: {exc}") from None
        if not hasattr(private_key, "public_key") or isinstance(private_key, (rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
            raise ConfigError(f"{SECRET_NAME}: key #{position} is a public key; a private key is needed")
        # Without created_at the list order decides: later entries are newer.
        key = _from_private_key(private_key, float(entry.get("created_at", position)), entry.get("kid"))
        if entry.get("alg") not in (None, key.alg):
            raise ConfigError(f"{SECRET_NAME}: key {key.kid} says alg {entry.get('alg')!r} but is a {key.alg} key")
        keys.append(key)
    return KeyRing(keys)


def _parse_pem(text: str) -> KeyRing:
    blocks = [part for part in text.split("-----END") if "-----BEGIN" in part]
    keys = []
    for position, block in enumerate(blocks):
        begin = block.index("-----BEGIN")
        label_end = block.index("-----", begin + 10)
        label = block[begin + len("-----BEGIN") : label_end].strip()
        pem = f"{block[begin:]}-----END {label}-----\n".encode()
        try:
            private_key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{SECRET_NAME}: PEM block #{position} is not an unencrypted private key: {exc}") from None
        keys.append(_from_private_key(private_key, float(position)))
    return KeyRing(keys)


# -- loading -------------------------------------------------------------------------------
def dev_keys_file(environ: Mapping[str, str] | None = None) -> Path:
    return Path(env_str("AUTH_KEYS_FILE", str(data_dir(environ) / "auth-signing-keys.json"), environ=environ))


def load_key_ring(environ: Mapping[str, str] | None = None) -> KeyRing:
    secret = read_secret(SECRET_NAME, None, environ=environ)
    if secret:
        return parse_keys(secret.reveal())
    if env_bool("AUTH_REQUIRE_SIGNING_KEYS", False, environ=environ):
        raise ConfigError(f"secret {SECRET_NAME} is required (AUTH_REQUIRE_SIGNING_KEYS=true)")
    path = dev_keys_file(environ)
    if not path.exists():
        alg = env_str("AUTH_SIGNING_ALG", "RS256", environ=environ)
        _create_exclusively(path, KeyRing([generate_key(alg)]).to_json())
    return parse_keys(path.read_text())


def _create_exclusively(path: Path, content: str) -> None:
    """Write ``content`` to ``path`` unless another process got there first (then keep theirs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keys-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)  # atomic create-if-absent
            log.warning("generated a development signing key in %s (set the %s secret in production)", path, SECRET_NAME)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


# -- rotation ------------------------------------------------------------------------------
def rotate(ring: KeyRing, *, alg: str = "RS256", now: float | None = None, retire_after: float = 3600.0) -> KeyRing:
    """Add a new signing key; drop keys superseded more than ``retire_after`` seconds ago
    (which must exceed the access-token lifetime plus leeway, so their tokens have expired)."""
    now = time.time() if now is None else now
    new_key = generate_key(alg, now)
    keys = [*ring.keys, new_key]
    kept = [key for key, successor in zip(keys, keys[1:]) if now - successor.created_at < retire_after]
    return KeyRing([*kept, new_key])


def rotate_file(path: Path, *, alg: str = "RS256", retire_after: float = 3600.0) -> KeyRing:
    ring = rotate(parse_keys(path.read_text()) if path.exists() else KeyRing([generate_key(alg)]), alg=alg, retire_after=retire_after)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keys-")
    with os.fdopen(fd, "w") as handle:
        handle.write(ring.to_json())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return ring


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m functions.auth.keys", description="Manage auth signing keys.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("generate", "rotate"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--alg", default="RS256", choices=SUPPORTED_ALGORITHMS)
        cmd.add_argument("--file", type=Path, help="key-set file to update in place (default: print to stdout)")
        cmd.add_argument("--retire-after", type=float, default=3600.0, help="seconds a superseded key stays published")
    args = parser.parse_args(argv)
    if args.command == "generate":
        ring = KeyRing([generate_key(args.alg)])
    elif args.file:
        ring = rotate_file(args.file, alg=args.alg, retire_after=args.retire_after)
    else:
        ring = rotate(parse_keys(sys.stdin.read()), alg=args.alg, retire_after=args.retire_after)
    if args.file and args.command == "generate":
        args.file.write_text(ring.to_json())
    elif not args.file:
        print(ring.to_json())
    print(f"signing kid: {ring.signing_key.kid}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
