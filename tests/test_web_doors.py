"""The dashboard's other doors, at every server that serves it (the site agent, `balsam ui`, the relay): the change
stream (WebSocket) refuses a page of another site even when it holds good credentials, and takes the dashboard's
own page and scripts (no Origin); no answer that holds a caller's data may be kept by a browser's or a proxy's
cache; no answer sets a cookie or grants another origin CORS access; and a login door (the one route anyone may send
a body to) reads no more than a login needs.
"""

from __future__ import annotations

import http.client
import socket
from typing import Dict, List, Optional, Tuple

import pytest

from tests.web_support import SERVER_KINDS, Served, serving

served = pytest.fixture(params=SERVER_KINDS)(serving)


def _handshake(served: Served, origin: Optional[str], host: Optional[str] = None, forwarded: Optional[str] = None) -> Tuple[int, str]:
    """Open /v1/ws with the caller's credentials and these headers: (101 and the first message) or (the refusal's status, "")."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request, TextMessage

    sock = socket.create_connection(("127.0.0.1", served.port), timeout=30)
    try:
        ws = WSConnection(ConnectionType.CLIENT)
        extra = [(k.encode(), v.encode()) for k, v in served.auth("GET", "/v1/ws").items()]
        if origin is not None:
            extra.append((b"origin", origin.encode()))
        if forwarded is not None:
            extra.append((b"x-forwarded-host", forwarded.encode()))
        sock.sendall(ws.send(Request(host=host or f"127.0.0.1:{served.port}", target="/v1/ws", extra_headers=extra)))
        status = 0
        while True:
            data = sock.recv(65536)
            if not data:
                return status, ""
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    status = 101
                elif isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        return status, ""
                elif isinstance(event, RejectData):
                    if event.body_finished:
                        return status, ""
                elif isinstance(event, TextMessage):
                    return status, event.data
    finally:
        sock.close()


def test_the_change_stream_refuses_a_page_of_another_site(served: Served) -> None:
    here = f"http://127.0.0.1:{served.port}"
    for origin in ("http://evil.example", f"http://evil.example:{served.port}", "null",
                   "http://127.0.0.1:1", "file://", "http://127.0.0.1.evil.example"):
        assert _handshake(served, origin)[0] == 403, origin  # refused before any credential is looked at
    # The dashboard's own page (its origin is the address it was served from), and scripts, which send no Origin.
    for origin in (here, None):
        status, first = _handshake(served, origin)
        assert status == 101 and '"hello"' in first, origin
    # Behind a proxy that passes on its own Host (nginx's default), the browser's address is X-Forwarded-Host.
    assert _handshake(served, "https://relay.example.org", host="127.0.0.1:8000", forwarded="relay.example.org")[0] == 101
    assert _handshake(served, "https://evil.example", host="127.0.0.1:8000", forwarded="relay.example.org")[0] == 403


def _answer(served: Served, method: str, target: str, headers: Dict[str, str]) -> Tuple[int, Dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    try:
        conn.request(method, target, headers=headers)
        answer = conn.getresponse()
        answer.read()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}
    finally:
        conn.close()


ROUTES: List[Tuple[str, str]] = [("GET", "/v1/whoami"), ("GET", "/v1/jobs"), ("GET", "/v1/sites"), ("GET", "/v1/apps"),
                                 ("GET", "/v1/jobs/12345"), ("GET", "/v1/events"), ("DELETE", "/v1/jobs/12345")]


def test_no_answer_with_a_caller_s_data_may_be_cached_and_none_sets_a_cookie_or_grants_cors(served: Served) -> None:
    evil = {"Origin": "http://evil.example"}
    for method, target in ROUTES:
        for headers in (served.auth(method, target), {}):  # the caller's answer, and the refusal of no credentials
            status, got = _answer(served, method, target, {**headers, **evil})
            assert got.get("cache-control") == "no-store", (method, target, status)
            assert "set-cookie" not in got, (method, target)
            assert not any(k.startswith("access-control-") for k in got), (method, target, got)
    status, got = _answer(served, "GET", "/v1/whoami", served.auth("GET", "/v1/whoami"))
    assert status == 200 and got["cache-control"] == "no-store"
    # The dashboard's files: the page is checked every time, its hashed assets may be kept; neither holds data.
    status, got = _answer(served, "GET", "/", {})
    assert status == 200 and got["cache-control"] == "no-cache" and "set-cookie" not in got


LOGINS = {"ui": ("/v1/ui/session", {"token": "a-reusable-token-for-the-doors-0123456789"}),
          "relay": ("/v1/tokens", {"user": "alice", "password": "alice-password"})}
"""The routes anyone may call with a body (no credentials yet), and a good body of each."""


@pytest.mark.parametrize("served", ["ui", "relay"], indirect=True)
def test_a_login_door_reads_no_large_body(served: Served) -> None:
    import json

    path, good = LOGINS[served.kind]
    # Declared too large: refused before a byte of it is read.
    status, _ = _answer(served, "POST", path, {"Content-Length": str(100 * 1024 * 1024), "Content-Type": "application/json"})
    assert status == 413
    # Sent in chunks without a length: refused once past the limit (64 KiB), not after the request limit (256 MB).
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.putheader("Content-Type", "application/json")
        conn.endheaders()
        chunk = b'{"token": "' + b"x" * 16 * 1024
        try:
            for _ in range(64):  # up to 1 MiB; the server answers (and may close) well before
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\n\r\n")
        except OSError:
            pass
        answer = conn.getresponse()
        assert answer.status == 413 and json.loads(answer.read())["error"]["code"] == "too_large"
    finally:
        conn.close()
    # A login of ordinary size works.
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    try:
        conn.request("POST", path, body=json.dumps(good), headers={"Content-Type": "application/json"})
        assert conn.getresponse().status == 201
    finally:
        conn.close()
