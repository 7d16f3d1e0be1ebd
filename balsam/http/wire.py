"""A lean HTTP/1.1 keep-alive connection for the /v1 client (stdlib sockets and ssl only, so it runs from the zipapp).

``http.client`` parses every answer's headers with the email package and costs a launcher ~5x the CPU of the
request itself; the API needs much less: one request written with one ``sendall``, the status line, headers as a
dict, and a body framed by Content-Length (or chunked, or until close, for servers that do so). Errors are the
ones ``http.client`` raises (``OSError`` for the socket, ``http.client.HTTPException`` for a malformed or missing
answer), so the client's retry rules stay as they are.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from typing import Any, Dict, List, Optional, Tuple

MAX_HEAD_BYTES = 64 * 1024
"""Longest status line plus headers accepted from a server."""
MAX_LINE = 65537


class Connection:
    """One keep-alive connection to ``host:port`` (TLS with ``context``); :meth:`exchange` sends a request and
    reads its answer. Not thread-safe: the client keeps one per thread."""

    def __init__(self, host: str, port: int, *, timeout: float, context: Optional[ssl.SSLContext] = None) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.context = context
        self.sock: Optional[socket.socket] = None
        self._file: Any = None
        self._authority = (f"[{host}]" if ":" in host else host) + f":{port}"

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock: socket.socket = raw
            if self.context is not None:
                sock = self.context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        self.sock = sock
        self._file = sock.makefile("rb")

    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout
        if self.sock is not None:
            self.sock.settimeout(timeout)

    def close(self) -> None:
        file, self._file = self._file, None
        sock, self.sock = self.sock, None
        if file is not None:
            try:
                file.close()
            except OSError:
                pass
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def exchange(self, method: str, target: str, body: bytes, headers: Dict[str, str]) -> Tuple[int, Dict[str, str], bytes]:
        """Send one request; (status, headers with lower-case names, body) of its answer."""
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {self._authority}\r\nContent-Length: {len(body)}\r\n"]
        lines.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        lines.append("\r\n")
        try:
            self.sock.sendall("".join(lines).encode("latin-1") + body)
            status, answer_headers = self._head()
            data = self._body(method, status, answer_headers)
        except BaseException:
            self.close()
            raise
        if answer_headers.get("connection", "").lower() == "close":
            self.close()
        return status, answer_headers, data

    # ------------------------------------------------------------------ reading
    def _line(self, budget: List[int]) -> bytes:
        line: bytes = self._file.readline(MAX_LINE)
        budget[0] -= len(line)
        if budget[0] < 0 or len(line) >= MAX_LINE:
            raise http.client.LineTooLong("answer head")
        return line

    def _head(self) -> Tuple[int, Dict[str, str]]:
        budget = [MAX_HEAD_BYTES]
        while True:
            line = self._line(budget)
            if not line:  # the server closed a kept-alive connection: the caller retries on a new one
                raise http.client.RemoteDisconnected("the server closed the connection without answering")
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                raise http.client.BadStatusLine(line.decode("latin-1", errors="replace").strip())
            status = int(parts[1])
            headers: Dict[str, str] = {}
            while True:
                line = self._line(budget)
                if line in (b"\r\n", b"\n"):
                    break
                if not line:
                    raise http.client.IncompleteRead(b"")
                name, sep, value = line.decode("latin-1").partition(":")
                if not sep:
                    raise http.client.HTTPException(f"malformed answer header {line[:80]!r}")
                key = name.strip().lower()
                headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
            if 100 <= status < 200 and status != 101:
                continue  # an interim answer (100 Continue): the real one follows
            return status, headers

    def _read(self, n: int) -> bytes:
        data: bytes = self._file.read(n)
        if len(data) < n:
            raise http.client.IncompleteRead(data, n - len(data))
        return data

    def _body(self, method: str, status: int, headers: Dict[str, str]) -> bytes:
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks: List[bytes] = []
            budget = [MAX_HEAD_BYTES]
            while True:
                size_line = self._line(budget).split(b";", 1)[0].strip()
                try:
                    size = int(size_line, 16)
                except ValueError:
                    raise http.client.HTTPException(f"malformed chunk size {size_line[:20]!r}") from None
                if size == 0:
                    while self._line(budget) not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self._read(size))
                self._read(2)
        length = headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                raise http.client.HTTPException(f"malformed Content-Length {length[:20]!r}") from None
            return self._read(n)
        data: bytes = self._file.read()  # framed by the end of the connection
        self.close()
        return data


__all__ = ["Connection", "MAX_HEAD_BYTES"]
