"""Relay fixtures: a RelayStore on SQLite (always) and on PostgreSQL (when .ci/postgres.sh runs: BALSAM_TEST_PG_URL)."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def created_at(row_id: int) -> float:
    """A row's creation time in a pushed row, the same every time that row is pushed (as a site's is: a row pushed
    under a known id with another creation time is another row, which the relay refuses: balsam.relay.mirror)."""
    return 1_700_000_000.0 + (row_id & 0xFFFFFFFF) / 1000


def relay_store(kind: str, tmp_path: Path) -> Iterator[Any]:
    """A fresh, migrated RelayStore of ``kind``."""
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("alembic")
    from balsam.relay.store import RelayStore

    if kind == "sqlite":
        store = RelayStore(f"sqlite:///{tmp_path / 'relay.db'}")
    else:
        url = os.environ.get("BALSAM_TEST_PG_URL")
        if not url:
            pytest.skip("PostgreSQL is not running (bash .ci/postgres.sh start; export BALSAM_TEST_PG_URL=$(bash .ci/postgres.sh url))")
        import sqlalchemy as sa

        store = RelayStore(url)
        with store.begin() as c:
            c.execute(sa.text("DROP SCHEMA public CASCADE"))
            c.execute(sa.text("CREATE SCHEMA public"))
    store.migrate()
    yield store
    store.close()


class WsReader:
    """A WebSocket client (wsproto over a socket) that collects the server's JSON messages."""

    def __init__(self, url: str, token: str) -> None:
        import socket
        from urllib.parse import quote, urlsplit

        from wsproto import ConnectionType, WSConnection
        from wsproto.events import Request

        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=1)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host=f"{parts.hostname}", target=f"/v1/ws?token={quote(token)}")))
        self.messages: List[Dict[str, Any]] = []
        self.closed: Optional[int] = None

    def read_until(self, what: str, fn: Any, timeout: float = 60.0) -> List[Dict[str, Any]]:
        """Read until ``fn(messages)`` holds (AssertionError naming ``what`` after ``timeout``); the messages."""
        import socket
        import time

        from wsproto.events import CloseConnection, RejectConnection, TextMessage

        deadline = time.monotonic() + timeout
        while not fn(self.messages):
            assert time.monotonic() < deadline and self.closed is None, f"timed out waiting for {what}: {self.messages[-5:]}"
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            self.ws.receive_data(data or None)
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    self.messages.append(json.loads(event.data))
                elif isinstance(event, CloseConnection):
                    self.closed = event.code
                elif isinstance(event, RejectConnection):  # closed before it was accepted: an HTTP status
                    self.closed = event.status_code
        return self.messages

    def close(self) -> None:
        self.sock.close()


@contextmanager
def served(store: Any, *, wait_s: Optional[float] = None, options: Any = None) -> Iterator[Tuple[Any, str]]:
    """A relay server over ``store`` on a free port of 127.0.0.1 (``wait_s``: how long a write waits for its site;
    ``options``: ServeOptions), stopped on exit: (server, URL)."""
    from balsam.http.serve import ApiServer, ServeOptions
    from balsam.relay.server import build_relay_app

    app = build_relay_app(store) if wait_s is None else build_relay_app(store, wait_s=wait_s)
    server = ApiServer(app, options or ServeOptions(bind="127.0.0.1", port=0)).start()
    try:
        yield server, f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()
