"""Each caller's share of a real relay's connections: one logged-in user keeping connections alive, or anyone
opening connections from one address, cannot lock the other users out. Before, both held every slot of the server
(uvicorn answered 503 to everyone else for as long as they kept their connections busy)."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

pytest.importorskip("sqlalchemy")

from tests.relay_support import WsReader, relay_store, served  # noqa: E402


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Tuple[Any, Dict[str, str]]]:
    """A relay of 32 connections (8 per address, 4 per user) with alice and bob logged in: (server, tokens)."""
    from balsam.relay.server import relay_options

    for store in relay_store("sqlite", tmp_path):
        tokens = {}
        for user in ("alice", "bob"):
            store.add_user(user, f"{user}-password")
        with served(store, options=relay_options("127.0.0.1", 0, max_connections=32)) as (server, url):
            for user in ("alice", "bob"):
                status, answer, _ = request(_connect(server.port), "POST", "/v1/tokens", "",
                                            {"user": user, "password": f"{user}-password"})
                assert status == 201, answer
                tokens[user] = answer["token"]
            yield server, tokens


def _connect(port: int, source: str = "127.0.0.1") -> http.client.HTTPConnection:
    """A kept-alive connection from ``source`` (any 127.x address is this host)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    conn.connect()
    return conn


def request(conn: http.client.HTTPConnection, method: str, path: str, token: str, body: Any = None) -> Tuple[int, Any, bool]:
    """(status, parsed answer, whether the server closes the connection)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=None if body is None else json.dumps(body).encode(), headers=headers)
    answer = conn.getresponse()
    data = answer.read()
    return answer.status, json.loads(data) if data else None, answer.will_close


def _until(what: str, fn: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_one_user_holds_at_most_an_eighth_of_the_connections_and_others_still_get_in(relay: Tuple[Any, Dict[str, str]]) -> None:
    server, tokens = relay
    mine: List[http.client.HTTPConnection] = []
    try:
        for _ in range(4):  # alice's share: each kept alive by its requests
            conn = _connect(server.port)
            mine.append(conn)
            status, answer, closing = request(conn, "GET", "/v1/whoami", tokens["alice"])
            assert (status, answer["user"], closing) == (200, "alice", False)
        for conn in mine:  # the same connections keep serving her
            assert request(conn, "GET", "/v1/whoami", tokens["alice"])[0] == 200
        extra = _connect(server.port)
        status, answer, closing = request(extra, "GET", "/v1/whoami", tokens["alice"])
        assert status == 429 and closing, "one more connection of hers is refused and closed"
        assert answer["error"]["code"] == "too_many"
        assert answer["error"]["message"] == ("'alice' has 4 connections open to this server, the most one user may: close "
                                              "some (fewer clients at once) and try again")
        extra.close()
        bob = _connect(server.port)
        status, answer, _ = request(bob, "GET", "/v1/whoami", tokens["bob"])
        assert (status, answer["user"]) == (200, "bob"), "another user still gets in"
        bob.close()
        mine.pop().close()  # alice closes one: her share has room again once the server sees it closed

        def again() -> bool:
            conn = _connect(server.port)
            try:
                return request(conn, "GET", "/v1/whoami", tokens["alice"])[0] == 200
            finally:
                conn.close()

        _until("a connection of alice's after she closed one", again)
    finally:
        for conn in mine:
            conn.close()
    _until("every share freed", lambda: server.shares.held() == (0, 0))


def test_a_websocket_counts_in_its_users_share_until_it_closes(relay: Tuple[Any, Dict[str, str]]) -> None:
    server, tokens = relay
    streams = [WsReader(f"http://127.0.0.1:{server.port}", tokens["alice"]) for _ in range(4)]
    try:
        for s in streams:
            s.read_until("hello", lambda ms: any(m["type"] == "hello" for m in ms))
        conn = _connect(server.port)
        assert request(conn, "GET", "/v1/whoami", tokens["alice"])[0] == 429
        conn.close()
        fifth = WsReader(f"http://127.0.0.1:{server.port}", tokens["alice"])
        fifth.read_until("the fifth stream refused", lambda ms: fifth.closed is not None)
        assert fifth.closed == 403, "refused before it is accepted"
        fifth.close()
    finally:
        for s in streams:
            s.close()
    _until("the streams' shares freed", lambda: server.shares.held() == (0, 0))
    conn = _connect(server.port)
    assert request(conn, "GET", "/v1/whoami", tokens["alice"])[0] == 200
    conn.close()


def test_one_address_holds_at_most_a_quarter_of_the_connections(relay: Tuple[Any, Dict[str, str]]) -> None:
    server, tokens = relay
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=30, source_address=("127.0.0.2", 0)) for _ in range(8)]
    try:
        _until("the 8 connections counted", lambda: server.shares.held()[0] == 8)
        past = _connect(server.port, "127.0.0.2")
        status, answer, closing = request(past, "GET", "/v1/whoami", tokens["bob"])
        assert (status, closing) == (503, True)
        assert answer["error"]["message"] == "too many connections from this address: close some and try again"
        past.close()
        other = _connect(server.port, "127.0.0.3")
        status, answer, _ = request(other, "GET", "/v1/whoami", tokens["bob"])
        assert (status, answer["user"]) == (200, "bob"), "another address still gets in"
        other.close()
    finally:
        for s in idle:
            s.close()
    _until("every share freed", lambda: server.shares.held() == (0, 0))
    conn = _connect(server.port, "127.0.0.2")
    assert request(conn, "GET", "/v1/whoami", tokens["bob"])[0] == 200
    conn.close()
