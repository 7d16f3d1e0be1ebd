"""Serial mode's master <-> node-worker links: in process (one node) or TCP (several).

Messages are dicts. Over TCP they travel as JSON frames (bytes values, such as pickled results, as base64).
The master listens on a free port on all interfaces (no fixed port: several launchers may share a node). Both
ends prove they know the launcher's secret (a file in the site's state folder, mode 0600, shared with compute
nodes through the filesystem) by answering the other's random challenge with an HMAC (domain-separated, so
neither answer can be replayed as the other), before either reads anything larger than a handshake frame
(:data:`HANDSHAKE_MAX_FRAME`): nobody else can feed the master results or take its jobs, and no worker runs app
code from anyone but its master. Frames after the handshake are bounded too (:data:`LINK_MAX_FRAME`).

    master -> worker   {"t": "challenge", "nonce"}  then  {"t": "welcome", "mac", "index", "node": {...}}
                       {"t": "jobs", "tasks": [...], "apps": {key: code}, "remaining_s"}  {"t": "kill", "ids"}  {"t": "exit", "reason"}
    worker -> master   {"t": "hello", "mac", "nonce", "host", "rank", "index"}
                       {"t": "status", "started": [[id, time]], "done": [...], "failed": [[id, why]], "want": n}
                       {"t": "bye"}
    (master-side only)  {"t": "lost", "why"} when a link breaks
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import queue
import secrets
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from balsam.exceptions import LauncherError
from balsam.launcher.wire import FrameSender, recv_frame

logger = logging.getLogger("balsam.launcher")

Message = Dict[str, Any]
HANDSHAKE_TIMEOUT_S = 30.0
HANDSHAKE_MAX_FRAME = 64 << 10
"""Largest frame either end reads before the other has proven it knows the secret."""
LINK_MAX_FRAME = 256 << 20
"""Largest frame on an authenticated link (a batch of tasks with app code, or of results)."""


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {"__b64__": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"cannot send {type(value).__name__}")


def _hook(obj: Dict[str, Any]) -> Any:
    if len(obj) == 1 and "__b64__" in obj:
        return base64.b64decode(obj["__b64__"])
    return obj


def encode(msg: Message) -> bytes:
    return json.dumps(msg, default=_default, separators=(",", ":")).encode()


def decode(data: bytes) -> Message:
    msg = json.loads(data, object_hook=_hook)
    if not isinstance(msg, dict):
        raise ValueError("a link message must be a JSON object")
    return msg


def mac(secret: bytes, nonce: str, role: str = "worker") -> str:
    """The HMAC answering ``nonce`` for ``role`` (``worker`` or ``master``: one answer never passes as the other)."""
    return hmac.new(secret, f"balsam-serial-link:{role}:{nonce}".encode(), hashlib.sha256).hexdigest()


def write_secret(path: Path) -> bytes:
    """A new random secret in a file only this user can read."""
    secret = secrets.token_hex(32).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secret)
    finally:
        os.close(fd)
    return secret


class WorkerHandle:
    """The master's view of one node worker."""

    def __init__(self, index: int, send: Callable[[Message], None]) -> None:
        self.index = index
        self._send = send
        self.want = 0
        self.sent: Dict[int, Any] = {}
        """Tasks sent and not started yet, by job id."""
        self.started: Dict[int, bool] = {}
        """Running jobs (value: Python app) by job id."""
        self.alive = True
        self.said_bye = False
        self.host = ""
        self.apps_sent: Set[str] = set()
        """Apps whose code this worker already has (sent once per link)."""

    def send(self, msg: Message) -> None:
        if not self.alive:
            return
        try:
            self._send(msg)
        except OSError as exc:
            logger.warning("node worker %s: send failed: %s", self.index, exc)

    def __repr__(self) -> str:
        return f"WorkerHandle({self.index}, host={self.host!r}, alive={self.alive})"


# --------------------------------------------------------------------------------------------- TCP, master side
class MasterServer:
    """Accepts node workers on a free TCP port."""

    def __init__(self, secret: bytes, inbox: "queue.SimpleQueue[Tuple[WorkerHandle, Message]]",
                 assign: Callable[[Message], Optional[Tuple[int, Dict[str, Any]]]]) -> None:
        self.secret = secret
        self.inbox = inbox
        self.assign = assign
        self.sock: Optional[socket.socket] = None
        self.port = 0
        self.handles: List[WorkerHandle] = []
        self._closed = False

    def start(self) -> "MasterServer":
        """Listen on a free port on all interfaces and accept workers on a thread."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("", 0))
        sock.listen(128)
        self.sock = sock
        self.port = int(sock.getsockname()[1])
        threading.Thread(target=self._accept, name="balsam-serial-accept", daemon=True).start()
        return self

    def _accept(self) -> None:
        assert self.sock is not None
        while not self._closed:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, addr), name="balsam-serial-link", daemon=True).start()

    def _serve(self, conn: socket.socket, addr: Any) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sender = FrameSender(conn)
        try:
            conn.settimeout(HANDSHAKE_TIMEOUT_S)
            nonce = secrets.token_hex(16)
            sender.send(encode({"t": "challenge", "nonce": nonce}))
            data = recv_frame(conn, HANDSHAKE_MAX_FRAME)
            hello = decode(data) if data is not None else {}
            if hello.get("t") != "hello" or not hmac.compare_digest(str(hello.get("mac", "")), mac(self.secret, nonce)):
                logger.warning("refused a node worker connection from %s: bad handshake", addr[0])
                conn.close()
                return
            assigned = self.assign(hello)
            if assigned is None:
                sender.send(encode({"t": "exit", "reason": "no node of this launcher matches the worker"}))
                conn.close()
                return
            index, node = assigned
            conn.settimeout(None)
            handle = WorkerHandle(index, lambda m: sender.send(encode(m)))
            handle.host = str(hello.get("host", ""))
            self.handles.append(handle)
            proof = mac(self.secret, str(hello.get("nonce", "")), "master")
            sender.send(encode({"t": "welcome", "mac": proof, "index": index, "node": node}))
            self.inbox.put((handle, {"t": "connected"}))
        except (OSError, ValueError) as exc:
            logger.warning("node worker handshake from %s failed: %s", addr[0], exc)
            conn.close()
            return
        why = "its connection closed"
        try:
            while True:
                data = recv_frame(conn, LINK_MAX_FRAME)
                if data is None:
                    break
                self.inbox.put((handle, decode(data)))
        except (OSError, ValueError) as exc:
            why = f"its connection failed: {exc}"
        handle.alive = False
        self.inbox.put((handle, {"t": "lost", "why": why}))
        try:
            conn.close()
        except OSError:
            pass

    def close(self) -> None:
        self._closed = True
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass


# --------------------------------------------------------------------------------------------- TCP, worker side
def connect(master: str, secret: bytes, hello: Message, timeout_s: float = 60.0) -> Tuple[socket.socket, FrameSender, Message]:
    """Connect to the master at ``host:port`` and pass the handshake; returns (socket, sender, welcome)."""
    host, _, port = master.rpartition(":")
    last: Optional[BaseException] = None
    for candidate in dict.fromkeys([host, "127.0.0.1"] if host not in ("", "127.0.0.1") else ["127.0.0.1"]):
        try:
            sock = socket.create_connection((candidate, int(port)), timeout=timeout_s)
            break
        except OSError as exc:
            last = exc
    else:
        raise LauncherError(f"cannot reach the serial-mode master at {master}: {last}")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sender = FrameSender(sock)
    nonce = secrets.token_hex(16)
    try:
        data = recv_frame(sock, HANDSHAKE_MAX_FRAME)
        challenge = decode(data) if data is not None else {}
        if challenge.get("t") != "challenge":
            raise LauncherError(f"the serial-mode master at {master} did not send a challenge")
        sender.send(encode(dict(hello, t="hello", mac=mac(secret, str(challenge["nonce"])), nonce=nonce)))
        data = recv_frame(sock, HANDSHAKE_MAX_FRAME)
        welcome = decode(data) if data is not None else {}
    except (OSError, ValueError) as exc:
        sock.close()
        raise LauncherError(f"handshake with the serial-mode master at {master} failed: {exc}") from None
    if welcome.get("t") != "welcome":
        sock.close()
        raise LauncherError(f"the serial-mode master refused this worker: {welcome.get('reason', 'handshake failed')}")
    if not hmac.compare_digest(str(welcome.get("mac", "")), mac(secret, nonce, "master")):
        sock.close()
        raise LauncherError(f"the peer at {master} did not prove it knows the launcher's secret: refusing to run its jobs")
    sock.settimeout(None)
    return sock, sender, welcome
