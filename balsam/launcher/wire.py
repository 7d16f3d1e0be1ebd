"""Length-prefixed frames over sockets: pickle between the launcher and its own Python workers (one trust
domain, a socketpair), JSON between the serial-mode master and its node workers (TCP, after an HMAC
handshake).

A frame is a 4-byte big-endian length and the payload. :class:`FrameReader` reassembles frames from
non-blocking reads; :func:`recv_frame` reads one frame from a blocking socket.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import List, Optional

_HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30
"""Largest frame between the launcher and its own Python workers (a socketpair: one trust domain)."""


def frame(payload: bytes) -> bytes:
    """A payload with its length prefix."""
    return _HEADER.pack(len(payload)) + payload


class FrameReader:
    """Collects bytes and yields whole frames."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> List[bytes]:
        """Add ``data``; return every frame now complete."""
        self._buf += data
        out: List[bytes] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 4:
            (size,) = _HEADER.unpack_from(buf, pos)
            if size > MAX_FRAME:
                raise ValueError(f"frame of {size} bytes is too large")
            if len(buf) - pos - 4 < size:
                break
            out.append(bytes(buf[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        if pos:
            del buf[:pos]
        return out


def _recv_exact(sock: socket.socket, n: int) -> Optional[bytes]:
    chunks = []
    while n:
        data = sock.recv(min(n, 1 << 20))
        if not data:
            return None
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


def recv_frame(sock: socket.socket, max_size: int = MAX_FRAME) -> Optional[bytes]:
    """One frame from a blocking socket; None at end of stream. A frame over ``max_size`` is refused from its
    header, before any of it is read (ValueError)."""
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (size,) = _HEADER.unpack(head)
    if size > max_size:
        raise ValueError(f"frame of {size} bytes is too large (at most {max_size} here)")
    return _recv_exact(sock, size) if size else b""


class FrameSender:
    """Sends frames on a socket from several threads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()

    def send(self, payload: bytes) -> None:
        with self._lock:
            self.sock.sendall(frame(payload))
