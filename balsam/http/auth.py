"""Who may call the /v1 API, checked from the request line and headers before any body is read.

Two kinds of credentials:

- **The site secret** (``.balsam/api.secret``, mode 0600, on the filesystem every host of the site sees): a
  request carries ``X-Balsam-Time`` (unix seconds), ``X-Balsam-Nonce`` (unique), ``X-Balsam-Content-SHA256``
  (the body's hash) and ``X-Balsam-Signature``, the HMAC-SHA256 under the secret of the method, the path with
  its query, the time, the nonce and the body hash. The server checks the signature first, reads the body only
  then, and refuses a body whose hash differs. Nonces are remembered for the skew window, so an exact replay
  is refused. The answer carries ``X-Balsam-Signature``: the HMAC of the request's nonce, the status and the
  answer body's hash, which the client checks in constant time (an answer cannot be replayed or forged).
- **A bearer token** (``Authorization: Bearer ...``): whatever :class:`TokenVerifier` the server is given
  says who it is (the relay's users, ``balsam ui``'s one-time tokens).

The secret is created once, when missing, and never regenerated while the file exists: launchers already
running keep working across agent restarts.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, FrozenSet, Mapping, Optional, Protocol, Tuple

from balsam.exceptions import ServiceError

SECRET_FILE = "api.secret"
MAX_SKEW_S = 300.0
MAX_NONCES = 1_000_000
H_TIME = "x-balsam-time"
H_NONCE = "x-balsam-nonce"
H_HASH = "x-balsam-content-sha256"
H_SIG = "x-balsam-signature"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def body_hash(body: bytes) -> str:
    """The hex SHA-256 of a request or answer body."""
    return hashlib.sha256(body).hexdigest()


def request_signature(secret: bytes, method: str, target: str, timestamp: str, nonce: str, content_hash: str) -> str:
    """The HMAC-SHA256 that signs one request (``target`` is the path with its query string)."""
    msg = f"balsam-request\n{method.upper()}\n{target}\n{timestamp}\n{nonce}\n{content_hash}".encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def response_signature(secret: bytes, nonce: str, status: int, content_hash: str) -> str:
    """The HMAC-SHA256 that binds an answer to the request that carried ``nonce``."""
    msg = f"balsam-response\n{nonce}\n{status}\n{content_hash}".encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def sign_request(secret: bytes, method: str, target: str, body: bytes) -> Dict[str, str]:
    """The auth headers of one request (a fresh nonce each call)."""
    ts = f"{time.time():.6f}"
    nonce = secrets.token_hex(16)
    digest = body_hash(body) if body else EMPTY_SHA256
    return {"X-Balsam-Time": ts, "X-Balsam-Nonce": nonce, "X-Balsam-Content-SHA256": digest,
            "X-Balsam-Signature": request_signature(secret, method, target, ts, nonce, digest)}


def check_response(secret: bytes, nonce: str, status: int, body: bytes, signature: Optional[str]) -> bool:
    """True if ``signature`` binds this answer to our request (constant-time comparison)."""
    if not signature:
        return False
    expected = response_signature(secret, nonce, status, body_hash(body))
    return hmac.compare_digest(expected.encode(), signature.encode())


@dataclass(frozen=True)
class Principal:
    """Who a request comes from. ``kind``: "site" (the site secret), "user" (relay), "ui" (a browser token)."""

    kind: str
    name: str
    site_ids: FrozenSet[int] = field(default_factory=frozenset)
    """Sites this principal may touch (empty: every site the backend serves)."""
    nonce: str = ""
    """The request nonce (site-secret requests), to sign the answer."""
    can_write: bool = True


class TokenVerifier(Protocol):
    """Turns a bearer token into a Principal, or None when it is unknown, expired or revoked."""

    def verify(self, token: str) -> Optional[Principal]: ...


class TokenSet:
    """In-memory tokens (``balsam ui`` one-time tokens, tests): compares hashes in constant time."""

    def __init__(self) -> None:
        self._tokens: Dict[str, Principal] = {}
        self._lock = threading.Lock()

    def issue(self, principal: Principal) -> str:
        """A new random token for ``principal``."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[hashlib.sha256(token.encode()).hexdigest()] = principal
        return token

    def revoke(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(hashlib.sha256(token.encode()).hexdigest(), None)

    def verify(self, token: str) -> Optional[Principal]:
        return self._tokens.get(hashlib.sha256(token.encode()).hexdigest())


class NonceCache:
    """Nonces seen within the skew window; a second sighting is a replay."""

    def __init__(self, window_s: float = MAX_SKEW_S, limit: int = MAX_NONCES) -> None:
        self.window_s = window_s
        self.limit = limit
        self._seen: "OrderedDict[str, float]" = OrderedDict()
        self._lock = threading.Lock()

    def add(self, nonce: str, now: Optional[float] = None) -> bool:
        """Record ``nonce``; False if it was seen already (or the cache is full of live nonces)."""
        now = time.time() if now is None else now
        with self._lock:
            seen = self._seen
            while seen:
                oldest, t = next(iter(seen.items()))
                if t > now - 2 * self.window_s:
                    break
                seen.popitem(last=False)
            if nonce in seen or len(seen) >= self.limit:
                return False
            seen[nonce] = now
            return True


class NonceStore(Protocol):
    """Where an Authenticator remembers nonces: :class:`NonceCache` (one process) or
    :class:`balsam.db.nonces.SharedNonces` (the several processes of one agent's server)."""

    def add(self, nonce: str, now: Optional[float] = None) -> bool: ...


class Unauthorized(Exception):
    """A request whose credentials are missing or wrong (answered 401)."""


class Authenticator:
    """Checks one request's headers: the site secret's HMAC, else a bearer token."""

    def __init__(self, secret: Optional[bytes], tokens: Optional[TokenVerifier] = None, *, site_ids: FrozenSet[int] = frozenset(),
                 window_s: float = MAX_SKEW_S, not_before: Optional[float] = None, nonces: Optional[NonceStore] = None) -> None:
        """``nonces``: where seen nonces are kept (default: this process's memory)."""
        self.secret = secret
        self.tokens = tokens
        self.site_ids = site_ids
        self.window_s = window_s
        self.nonces: NonceStore = nonces if nonces is not None else NonceCache(window_s)
        self.not_before = not_before
        """Requests signed before this time are refused: nonces seen by an earlier server are not known here."""

    def check(self, method: str, target: str, headers: Mapping[str, str], query_token: Optional[str] = None) -> Principal:
        """The caller, or Unauthorized with the reason (never reads the body)."""
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer " or (query_token and not headers.get(H_SIG)):
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else str(query_token)
            principal = self.tokens.verify(token) if self.tokens is not None and token else None
            if principal is None:
                raise Unauthorized("unknown, expired or revoked token")
            return principal
        sig = headers.get(H_SIG)
        if not sig:
            raise Unauthorized("no credentials: sign the request with the site secret or send a bearer token")
        if self.secret is None:
            raise Unauthorized("this server takes bearer tokens only")
        ts, nonce, digest = headers.get(H_TIME, ""), headers.get(H_NONCE, ""), headers.get(H_HASH, "")
        if not ts or not nonce or len(nonce) > 128 or len(digest) != 64:
            raise Unauthorized("incomplete signature headers (time, nonce, content hash)")
        try:
            sent = float(ts)
        except ValueError:
            raise Unauthorized("malformed X-Balsam-Time") from None
        now = time.time()
        if not abs(now - sent) <= self.window_s:
            raise Unauthorized(f"request time is {now - sent:.0f} s off (clocks out of sync, or a replay)")
        expected = request_signature(self.secret, method, target, ts, nonce, digest)
        if not hmac.compare_digest(expected.encode(), sig.encode()):
            raise Unauthorized("bad signature")
        if self.not_before is not None and sent < self.not_before:
            raise Unauthorized("request signed before this server started (a replay, or a retry: sign it again)")
        if not self.nonces.add(nonce, now):
            raise Unauthorized("replayed request (nonce already seen)")
        return Principal(kind="site", name="site", site_ids=self.site_ids, nonce=nonce)


# ------------------------------------------------------------------------------------------ the secret file
def read_secret(path: Path) -> bytes:
    """The site's API secret (ServiceError if missing, empty or readable by others)."""
    try:
        st = path.stat()
        data = path.read_bytes().strip()
    except OSError as exc:
        raise ServiceError(f"{path}: cannot read the site's API secret ({exc.strerror or exc}); has the site agent "
                           "ever run? start it on the site's home host with 'balsam site start'") from None
    if st.st_mode & 0o077:
        raise ServiceError(f"{path}: the API secret must be readable only by its owner (chmod 600 {path})")
    if not data:
        raise ServiceError(f"{path}: the API secret is empty")
    return data


def ensure_secret(path: Path) -> Tuple[bytes, bool]:
    """The site's API secret, created (mode 0600) only if the file is missing; (secret, created).

    An existing file is never replaced: a bad one (empty, too open) is an error for the owner to fix, since a
    new secret would lock out every launcher already running.
    """
    for attempt in range(4):
        if not path.exists():
            break
        try:
            return read_secret(path), False
        except ServiceError:  # a transient read error (NFS) is retried briefly; it never makes a new secret
            if attempt == 3 or not path.exists():
                raise
            time.sleep(0.05 * 2**attempt)
    secret = secrets.token_hex(32).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secret)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created it meanwhile: theirs wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return read_secret(path), True
