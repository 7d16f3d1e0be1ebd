"""Passwords and tokens for the relay: scrypt password hashes, random bearer tokens stored as SHA-256 hashes.

A token is shown once, when it is made; the relay keeps only its hash, its owner, its kind (a user's login or
an agent's token scoped to one site), its expiry and whether it was revoked. Comparisons run in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Tuple

from balsam.exceptions import ValidationError

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
TOKEN_PREFIX = "bt_"
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    """``scrypt$N$r$p$salt$hash`` for a password (the parameters are kept so they can be raised later)."""
    check_password_text(password)
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return "$".join(["scrypt", str(n), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)])


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a stored hash (constant time; False for a malformed hash)."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt" or len(password) > MAX_PASSWORD:
            return False
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(digest))


def check_password_text(password: str) -> None:
    """Refuse passwords too short or too long, in one line."""
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValidationError(f"a password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters")


def new_token() -> Tuple[str, str]:
    """A fresh bearer token and the hash the relay stores."""
    text = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return text, token_hash(text)


def token_hash(text: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(text.encode()).hexdigest()


def one_time_password() -> str:
    """A password for a new user, printed once by ``balsam relay user add``."""
    return secrets.token_urlsafe(12)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
