"""`balsam ui` session tokens end: after SESSION_IDLE_S without use, SESSION_MAX_S after the login however often
they are used, and at once when the dashboard logs out; each then gets the same 401 as a wrong token. A real
`balsam ui` server over HTTP, with the wall clock its tokens read moved forward."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any, Iterator, Optional, Tuple

import pytest

pytest.importorskip("starlette", reason="balsam ui needs starlette and uvicorn")
pytest.importorskip("uvicorn", reason="balsam ui needs starlette and uvicorn")

from balsam.http import ui  # noqa: E402
from tests.relay_support import WsReader  # noqa: E402

REUSABLE = "a-reusable-token-for-scripts-0123456789"


class Clock:
    """A wall clock the test moves."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _call(method: str, url: str, body: Any = None, token: Optional[str] = None) -> Tuple[int, Any]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method, headers=headers), timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[Tuple[ui.UiServer, Clock]]:
    """`balsam ui` (BALSAM_UI_TOKEN set) serving on an ephemeral port, its tokens reading a clock the test moves."""
    clock = Clock(1_800_000_000.0)
    monkeypatch.setattr(ui.UiTokens, "clock", staticmethod(clock))
    server = ui.start_ui(lambda: [], token=REUSABLE)
    try:
        yield server, clock
    finally:
        server.stop()


def _login(server: ui.UiServer, token: str) -> str:
    status, out = _call("POST", f"{server.url}v1/ui/session", {"token": token})
    assert status == 201, out
    return str(out["token"])


def _whoami(server: ui.UiServer, token: str) -> Tuple[int, Any]:
    return _call("GET", f"{server.url}v1/whoami", token=token)


def _unauthorized_like_a_wrong_token(server: ui.UiServer, token: str) -> None:
    status, out = _whoami(server, token)
    wrong_status, wrong = _whoami(server, "s." + "0" * 40 + "." + "0" * 64)
    assert (status, out["error"]) == (wrong_status, wrong["error"]) and status == 401


def test_a_session_unused_for_the_idle_time_expires(served: Tuple[ui.UiServer, Clock]) -> None:
    server, clock = served
    used, left = _login(server, server.token), _login(server, REUSABLE)
    for _ in range(3):  # used every 2/3 of the idle time: goes on well past it
        clock.now += ui.SESSION_IDLE_S * 2 / 3
        assert _whoami(server, used)[0] == 200
    _unauthorized_like_a_wrong_token(server, left)  # the other, unused as long, has expired
    clock.now += ui.SESSION_IDLE_S + 1
    _unauthorized_like_a_wrong_token(server, used)
    assert _call("POST", f"{server.url}v1/ui/session", {"token": used})[0] == 401  # nor does it buy a new one
    assert _whoami(server, _login(server, REUSABLE))[0] == 200  # logging in again works


def test_a_session_expires_at_the_absolute_cap_however_often_used(served: Tuple[ui.UiServer, Clock]) -> None:
    server, clock = served
    session = _login(server, REUSABLE)
    start = clock.now
    while clock.now + ui.SESSION_IDLE_S / 2 < start + ui.SESSION_MAX_S:
        clock.now += ui.SESSION_IDLE_S / 2
        assert _whoami(server, session)[0] == 200
    clock.now = start + ui.SESSION_MAX_S + 1
    _unauthorized_like_a_wrong_token(server, session)


def test_a_restarted_ui_keeps_the_absolute_cap(served: Tuple[ui.UiServer, Clock]) -> None:
    """A restart (same BALSAM_UI_TOKEN) takes open dashboards back, but not past SESSION_MAX_S after their login."""
    server, clock = served
    session = _login(server, REUSABLE)
    again = ui.start_ui(lambda: [], token=REUSABLE)
    try:
        assert _whoami(again, session)[0] == 200
        clock.now += ui.SESSION_MAX_S + 1
        _unauthorized_like_a_wrong_token(again, session)
    finally:
        again.stop()


def test_logging_out_ends_the_session_and_its_stream_at_once(served: Tuple[ui.UiServer, Clock]) -> None:
    server, _ = served
    session, other = _login(server, server.token), _login(server, REUSABLE)
    stream = WsReader(server.url, session)
    try:
        stream.read_until("hello", lambda ms: any(m["type"] == "hello" for m in ms))
        assert _call("DELETE", f"{server.url}v1/token", token=session) == (200, {"revoked": 1})
        t0 = time.monotonic()
        stream.read_until("the stream to close", lambda ms: stream.closed is not None, timeout=30)
        assert stream.closed == 4401 and time.monotonic() - t0 < 30
    finally:
        stream.close()
    _unauthorized_like_a_wrong_token(server, session)
    assert _call("POST", f"{server.url}v1/ui/session", {"token": session})[0] == 401
    assert _call("DELETE", f"{server.url}v1/token", token=session)[0] == 401  # once only
    assert _whoami(server, other)[0] == 200  # other dashboards stay logged in
    status, out = _call("DELETE", f"{server.url}v1/token", token=REUSABLE)
    assert status == 400 and "BALSAM_UI_TOKEN" in out["error"]["message"]  # only session tokens log out
    assert _whoami(server, REUSABLE)[0] == 200


def test_an_expired_session_s_stream_ends(served: Tuple[ui.UiServer, Clock]) -> None:
    server, clock = served
    session = _login(server, REUSABLE)
    stream = WsReader(server.url, session)
    try:
        stream.read_until("hello", lambda ms: any(m["type"] == "hello" for m in ms))
        clock.now += ui.SESSION_IDLE_S + 1
        stream.read_until("the stream to close", lambda ms: stream.closed is not None, timeout=30)
        assert stream.closed == 4401
    finally:
        stream.close()
