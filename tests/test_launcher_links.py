"""The serial-mode link authenticates both ends before anything large is read, and bounds frames (defect 5)."""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest

from balsam.exceptions import LauncherError
from balsam.launcher import links
from balsam.launcher.wire import FrameSender, recv_frame

SECRET = b"s" * 64


def _master(secret: bytes = SECRET) -> Tuple[links.MasterServer, "queue.Queue[Any]"]:
    inbox: "queue.Queue[Any]" = queue.Queue()
    server = links.MasterServer(secret, inbox, lambda hello: (0, {"name": "n0"})).start()
    return server, inbox


def test_both_ends_with_the_secret_connect() -> None:
    server, inbox = _master()
    try:
        sock, sender, welcome = links.connect(f"127.0.0.1:{server.port}", SECRET, {"host": "h", "rank": 0, "index": 0})
        assert welcome["t"] == "welcome" and welcome["node"] == {"name": "n0"}
        assert inbox.get(timeout=10)[1] == {"t": "connected"}
        sock.close()
    finally:
        server.close()


def test_a_worker_without_the_secret_is_refused() -> None:
    server, inbox = _master()
    try:
        with pytest.raises(LauncherError):
            links.connect(f"127.0.0.1:{server.port}", b"wrong" * 10, {"host": "h"}, timeout_s=10)
        assert inbox.empty()
    finally:
        server.close()


def test_the_master_reads_no_large_frame_before_the_handshake() -> None:
    server, _ = _master()
    try:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        recv_frame(sock)  # the challenge
        sock.sendall(struct.pack(">I", 512 << 20))  # claims a 512 MiB hello, sends nothing more
        started = time.monotonic()
        sock.settimeout(10)
        assert sock.recv(100) == b"", "the master must hang up at once, not wait for 512 MiB"
        assert time.monotonic() - started < 5
    finally:
        server.close()


def _fake_master(script: Any) -> Tuple[int, List[Dict[str, Any]]]:
    """A server that is not the launcher's master: it does not know the secret."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    seen: List[Dict[str, Any]] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            script(conn, FrameSender(conn), seen)
        finally:
            time.sleep(0.5)
            conn.close()
            listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return int(listener.getsockname()[1]), seen


def test_a_worker_refuses_a_master_that_cannot_prove_the_secret() -> None:
    """An impostor that replays the challenge/welcome dance without the secret gets no worker (which would run
    the app code it sends)."""

    def impostor(conn: socket.socket, sender: FrameSender, seen: List[Dict[str, Any]]) -> None:
        sender.send(links.encode({"t": "challenge", "nonce": "abc"}))
        data: Optional[bytes] = recv_frame(conn)
        seen.append(links.decode(data or b"{}"))
        sender.send(links.encode({"t": "welcome", "index": 0, "node": {}, "mac": "0" * 64}))

    port, _ = _fake_master(impostor)
    with pytest.raises(LauncherError, match="prove"):
        links.connect(f"127.0.0.1:{port}", SECRET, {"host": "h"}, timeout_s=10)


def test_a_worker_reads_no_large_frame_before_the_master_proves_itself() -> None:
    def flood(conn: socket.socket, sender: FrameSender, seen: List[Dict[str, Any]]) -> None:
        conn.sendall(struct.pack(">I", 512 << 20))
        time.sleep(8)  # holds the connection open: a worker waiting for the 512 MiB would wait here

    port, _ = _fake_master(flood)
    started = time.monotonic()
    with pytest.raises(LauncherError):
        links.connect(f"127.0.0.1:{port}", SECRET, {"host": "h"}, timeout_s=10)
    assert time.monotonic() - started < 5
