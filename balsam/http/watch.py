"""A client of the /v1/ws change stream (wsproto over a plain or TLS socket, so it runs from the zipapp).

:class:`ChangeStream` opens the WebSocket with the same credentials as :class:`balsam.http.client.HttpClient`
(the site secret's signature, or a bearer token), reads it on a daemon thread and hands out the job state
changes it carries. Waiting code (``Job.objects.as_completed``, ``wait``) blocks on it instead of polling.

A message is a hint, never trusted as the truth: the stream carries no per-message signature, and a stalled
subscriber may miss messages. Callers re-read the jobs it names through signed requests, and re-read everything
after :meth:`ChangeStream.wait` reports a gap (the stream closed or its reader fell behind) or when a long while
passed without news.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import ssl
import threading
from typing import Any, Dict, List, Optional, Tuple

from balsam.http.auth import sign_request
from balsam.http.serve import host_port

logger = logging.getLogger("balsam.http")

WS_PATH = "/v1/ws"
CONNECT_TIMEOUT_S = 10.0
_GAP = ("gap", "")


class StreamClosed(Exception):
    """The change stream could not be opened: the server is away (the caller may try again, or poll)."""


class StreamRefused(StreamClosed):
    """The server answered but refused the change stream (the caller polls)."""


class ChangeStream:
    """Job state changes from a server's /v1/ws: ``wait(timeout)`` returns ``[(job_id, state), ...]``."""

    def __init__(self, info: Dict[str, Any], *, secret: Optional[bytes] = None, token: str = "", host_index: int = 0) -> None:
        self.info = info
        self.secret = secret
        self.token = token
        self.host_index = host_index
        self._queue: "queue.SimpleQueue[Tuple[Any, str]]" = queue.SimpleQueue()
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._hello = threading.Event()
        self.closed = False

    def open(self) -> "ChangeStream":
        """Connect and complete the WebSocket handshake; StreamClosed (with why) if the server refuses or is away."""
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request

        host, port = host_port(self.info, self.host_index)
        try:
            raw = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
        except OSError as e:
            raise StreamClosed(f"cannot reach {host}:{port}: {e}") from None
        sock: socket.socket = raw
        try:
            if self.info.get("scheme") == "https":
                ctx = ssl.create_default_context(cafile=self.info.get("cafile") or None)
                sock = ctx.wrap_socket(raw, server_hostname=host)
            headers: Dict[str, str] = {}
            if self.secret is not None:
                headers = sign_request(self.secret, "GET", WS_PATH, b"")
            elif self.token:
                headers = {"Authorization": f"Bearer {self.token}"}
            ws = WSConnection(ConnectionType.CLIENT)
            sock.sendall(ws.send(Request(host=host, target=WS_PATH, extra_headers=[(k.encode(), v.encode()) for k, v in headers.items()])))
            while True:
                data = sock.recv(65536)
                if not data:
                    raise StreamClosed("the server closed the connection during the handshake")
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        sock.settimeout(None)
                        self._sock = sock
                        self._thread = threading.Thread(target=self._read, args=(ws, sock), name="balsam-ws", daemon=True)
                        self._thread.start()
                        # The server subscribes this stream, then says hello: changes from then on are ours.
                        if not self._hello.wait(CONNECT_TIMEOUT_S) or self.closed:
                            self.close()
                            raise StreamClosed("the change stream did not start")
                        return self
                    if isinstance(event, (RejectConnection, RejectData)):
                        raise StreamRefused(f"the server refused the change stream ({getattr(event, 'status_code', '')})")
        except (OSError, ssl.SSLError) as e:
            sock.close()
            raise StreamClosed(f"the change stream failed: {e}") from None
        except StreamClosed:
            sock.close()
            raise

    def _read(self, ws: Any, sock: socket.socket) -> None:
        from wsproto.events import CloseConnection, Ping, TextMessage

        text: List[str] = []
        try:
            while True:  # events first: the handshake's last read may hold the first messages
                for event in ws.events():
                    if isinstance(event, TextMessage):
                        text.append(event.data)
                        if event.message_finished:
                            self._message("".join(text))
                            text = []
                    elif isinstance(event, Ping):
                        sock.sendall(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        return
                data = sock.recv(65536)
                if not data:
                    break
                ws.receive_data(data)
        except (OSError, ValueError, RuntimeError):
            pass
        finally:
            self.closed = True
            self._hello.set()
            self._queue.put(_GAP)
            try:
                sock.close()
            except OSError:
                pass

    def _message(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            return
        if isinstance(msg, dict) and msg.get("type") == "hello":
            self._hello.set()
        elif isinstance(msg, dict) and msg.get("type") == "job" and isinstance(msg.get("id"), int):
            self._queue.put((int(msg["id"]), str(msg.get("state") or "")))

    def wait(self, timeout: float) -> Tuple[List[Tuple[int, str]], bool]:
        """Changes that arrived, waiting up to ``timeout`` s for the first: (changes, gap). ``gap``: the stream
        ended, so messages may have been missed (re-read, then open a new stream or poll)."""
        out: List[Tuple[int, str]] = []
        gap = False
        try:
            item = self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return out, self.closed
        while True:
            if item is _GAP or item == _GAP:
                gap = True
            else:
                out.append((int(item[0]), item[1]))
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return out, gap

    def close(self) -> None:
        self.closed = True
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


__all__ = ["ChangeStream", "StreamClosed", "StreamRefused", "WS_PATH"]
