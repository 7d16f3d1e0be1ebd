"""Result keys: a site signs the pickled results it pushes to a relay, and a computer that reads them through the
relay loads only what the site signed (DESIGN.md section 7).

A ``run()`` return value or exception is a pickle, and loading a pickle runs code. Through the relay those bytes
come from the relay's database, which a relay operator, or whoever holds the site's relay token, could fill.
So each site has a result key (32 random bytes, ``<site>/.balsam/result.key``, mode 0600) that never leaves the
user's own computers: the site's sync service signs each result with it as it pushes (an HMAC-SHA256 over the
job id, the column and the bytes), and the Python API on another computer checks the signature with its copy of
the key before it unpickles anything. The relay stores and serves the signed bytes and can neither forge nor
alter them. A computer gets the key once::

    balsam site key                        # on the site's host: prints balsam-result-key-1:...
    balsam site key --trust balsam-result-key-1:...   # on the laptop: kept in $BALSAM_HOME/result-keys (0600)
    balsam site key --revoke polaris                  # no longer trusted, from the next result read on

The site's own host and hosts that reach the site through its agent read the site DB (inside the trust
boundary) and check nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import struct
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

from balsam.exceptions import ResultNotTrusted, ValidationError
from balsam.site.layout import SiteLayout

KEY_PREFIX = "balsam-result-key-1:"
"""How an exported result key starts (``balsam site key`` prints one)."""
MAGIC = b"BRS1"
"""How signed result bytes start: MAGIC, the key's id (8 bytes), the HMAC (32 bytes), then the pickle."""
_ID_LEN = 8
_TAG_LEN = 32
_HEADER = len(MAGIC) + _ID_LEN + _TAG_LEN
KEY_FILE = "result.key"
TRUSTED_FILE = "result-keys"
WHAT = {"serialized_return_value": "return value", "serialized_exception": "exception"}
"""The signed columns, as a message names them."""


def key_id(key: bytes) -> bytes:
    """The key's public id (8 bytes, in every signature): which key to check a result with."""
    return hashlib.sha256(b"balsam result key id\0" + key).digest()[:_ID_LEN]


def export_key(key: bytes) -> str:
    """The key as one line to copy to another computer."""
    return KEY_PREFIX + base64.urlsafe_b64encode(key).decode().rstrip("=")


def parse_key(text: str) -> bytes:
    """A line :func:`export_key` printed back to the key; ValidationError saying what is wrong."""
    text = text.strip()
    if not text.startswith(KEY_PREFIX):
        raise ValidationError(f"not a result key: one starts with {KEY_PREFIX} (`balsam site key` on the site's host prints it)")
    body = text[len(KEY_PREFIX):]
    try:
        key = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (ValueError, TypeError):
        key = b""
    if len(key) != 32:
        raise ValidationError("not a result key: it was cut short or changed; copy the whole line `balsam site key` prints")
    return key


def site_key(layout: SiteLayout) -> bytes:
    """The site's result key, made (0600) the first time it is asked for."""
    path = layout.state / KEY_FILE
    try:
        return parse_key(path.read_text())
    except FileNotFoundError:
        pass
    line = export_key(secrets.token_bytes(32)) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made by another process meanwhile: use theirs
        return parse_key(path.read_text())
    with os.fdopen(fd, "w") as f:
        f.write(line)
    return parse_key(line)


def _message(job_id: int, column: str, payload: bytes) -> bytes:
    return b"balsam-result\0" + struct.pack(">Q", int(job_id) & (2**64 - 1)) + column.encode() + b"\0" + payload


def sign(key: bytes, job_id: int, column: str, payload: bytes) -> bytes:
    """``payload`` (a pickled result of job ``job_id`` in ``column``) with the site's signature in front."""
    tag = hmac.new(key, _message(job_id, column, payload), hashlib.sha256).digest()
    return MAGIC + key_id(key) + tag + payload


RACY_S = 2.0
"""A trusted-keys file changed less than this long ago is read again at every use: an edit in the same tick of the
file system's clock as the one before could leave its size and times as they were."""
_cache: Dict[Path, Tuple[Tuple[int, ...], Dict[bytes, Tuple[bytes, str]]]] = {}
_cache_lock = threading.Lock()


def trusted_keys(home: Path) -> Dict[bytes, Tuple[bytes, str]]:
    """The result keys this computer holds (in ``home``, its BALSAM_HOME): key id -> (key, the site's name as given
    when trusted).

    Read once and kept while the file stays as it was (device, inode, size, modification and change times): reading
    results through the relay checks a signature per result, and a waiting loop reads many. Any change to the file
    (a key added, one revoked with ``balsam site key --revoke`` or by hand) is seen at the next use."""
    path = home / TRUSTED_FILE
    try:
        st = os.stat(path)
    except FileNotFoundError:
        with _cache_lock:
            _cache.pop(path, None)
        return {}
    stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _cache_lock:
        hit = _cache.get(path)
    if hit is not None and hit[0] == stamp:
        return dict(hit[1])
    keys = _read_trusted(path)  # read after the stat: a change meanwhile leaves a stamp that no longer matches
    if time.time() - st.st_ctime > RACY_S:
        with _cache_lock:
            _cache[path] = (stamp, keys)
    return dict(keys)


def _read_trusted(path: Path) -> Dict[bytes, Tuple[bytes, str]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    out: Dict[bytes, Tuple[bytes, str]] = {}
    for line in text.splitlines():
        parts = line.split(None, 1)
        if not parts:
            continue
        try:
            key = parse_key(parts[0])
        except ValidationError:
            continue
        out[key_id(key)] = (key, parts[1].strip() if len(parts) > 1 else "")
    return out


def revoke_key(which: str, home: Path) -> List[str]:
    """Stop trusting the keys named by ``which`` (a key id as ``balsam site key --trust`` printed it, or the label
    given with it), from the next result read on: the file is replaced whole. Returns the ids revoked (hex);
    ValidationError when none matches."""
    path = home / TRUSTED_FILE
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        lines = []
    keep: List[str] = []
    gone: List[str] = []
    for line in lines:
        parts = line.split(None, 1)
        try:
            kid = key_id(parse_key(parts[0])).hex() if parts else ""
        except ValidationError:
            kid = ""
        label = parts[1].strip() if len(parts) > 1 else ""
        if kid and which.strip() in (kid, label):
            gone.append(kid)
        else:
            keep.append(line)
    if not gone:
        raise ValidationError(f"no trusted result key has the id or label {which!r} on this computer")
    tmp = path.with_name(f".{TRUSTED_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(line + "\n" for line in keep))
    os.replace(tmp, path)
    return gone


def trust_key(text: str, home: Path, label: str = "") -> Tuple[str, bool]:
    """Keep a site's exported key in ``home`` (``balsam site key --trust``); (the key's id as hex, whether it is
    new here)."""
    key = parse_key(text)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    kid = key_id(key)
    if kid in trusted_keys(home):
        return kid.hex(), False
    path = home / TRUSTED_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(f"{export_key(key)} {' '.join(label.split())}\n")
    os.chmod(path, 0o600)
    return kid.hex(), True


def verified(blob: bytes, job_id: int, column: str, site: str, keys: Dict[bytes, Tuple[bytes, str]]) -> bytes:
    """The pickle inside ``blob`` (as read through the relay) if site ``site`` signed it for this job and column
    with a key this computer holds; else ResultNotTrusted, in one line saying why and what to do."""
    what = f"job {job_id}: its {WHAT.get(column, column)}"
    if len(blob) < _HEADER or not blob.startswith(MAGIC):
        raise ResultNotTrusted(f"{what} came through the relay without site {site}'s signature, so it was not loaded "
                               f"(a relay cannot prove where unsigned bytes came from); read it on the site's host, or "
                               f"run the job again with a Balsam that signs results")
    kid = blob[len(MAGIC):len(MAGIC) + _ID_LEN]
    held = keys.get(kid)
    if held is None:
        raise ResultNotTrusted(f"{what} is signed with site {site}'s result key, which this computer does not hold, so it "
                               f"was not loaded: run `balsam site key` on the site's host, then here "
                               f"`balsam site key --trust <the line it prints>`")
    tag = blob[len(MAGIC) + _ID_LEN:_HEADER]
    payload = blob[_HEADER:]
    if not hmac.compare_digest(tag, hmac.new(held[0], _message(job_id, column, payload), hashlib.sha256).digest()):
        raise ResultNotTrusted(f"{what} does not match site {site}'s signature (it was changed or moved after the site "
                               f"signed it: at the relay, or by someone holding the site's relay token), so it was not loaded")
    return payload
