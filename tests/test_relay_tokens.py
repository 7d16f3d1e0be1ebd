"""A relay token revoked or expired stops working at once, on SQLite and PostgreSQL, for what stays open as well
as for new requests: a dashboard's change stream (WebSocket) ends within seconds when its token is revoked through
the API, by ``balsam relay token revoke`` in another process, or runs out; and a site's long poll for commands
that was waiting when its token was revoked answers 401, never the commands queued meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from balsam import exceptions as exc
from tests.relay_support import WsReader
from tests.test_relay_server import SITE_A, login, relay, two_users  # noqa: F401  (the fixtures)

PROMPTLY_S = 10.0
"""How long a revoked token's stream may go on (it went on for 30 s)."""


def opened(url: str, token: str) -> WsReader:
    stream = WsReader(url, token)
    stream.read_until("hello", lambda ms: any(m["type"] == "hello" for m in ms))
    return stream


def closed_within(stream: WsReader, seconds: float) -> float:
    """Seconds until the server closed ``stream`` (AssertionError after ``seconds``)."""
    t0 = time.monotonic()
    stream.read_until("the stream to close", lambda ms: stream.closed is not None, timeout=seconds)
    assert stream.closed == 4401
    return time.monotonic() - t0


def current_token_id(user: Any) -> int:
    return next(int(t["id"]) for t in user.request("GET", "/v1/tokens")["results"] if t["current"])



def _relay_cli(store: Any, *args: str, input: Optional[str] = None) -> "subprocess.CompletedProcess[str]":
    """``balsam relay ARGS --db URL`` in a process of its own (as an administrator runs it beside the relay)."""
    return subprocess.run([sys.executable, "-m", "balsam", "relay", *args, "--db", store.url], input=input, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


def test_a_stream_ends_at_once_when_its_token_is_revoked_through_the_api(two_users: Dict[str, Any]) -> None:  # noqa: F811
    url, alice = two_users["url"], two_users["alice"]
    second = login(url, "alice", "alice-password")
    stream = opened(url, alice.token)
    try:
        second.request("DELETE", f"/v1/tokens/{current_token_id(alice)}")
        assert closed_within(stream, PROMPTLY_S) < PROMPTLY_S
    finally:
        stream.close()
    with pytest.raises(exc.ServiceError, match="revoked"):
        alice.request("GET", "/v1/jobs")


def test_a_stream_ends_when_its_token_runs_out(two_users: Dict[str, Any], relay: Any) -> None:  # noqa: F811
    store, url = relay
    short = store.issue_token(store.user_id("alice"), kind="user", label="short", ttl_s=3.0)
    stream = opened(url, short)
    try:
        closed_within(stream, 3.0 + PROMPTLY_S)
    finally:
        stream.close()


def test_a_stream_ends_when_the_admin_revokes_its_token_from_another_process(two_users: Dict[str, Any], relay: Any,  # noqa: F811
                                                                             tmp_path: Path) -> None:
    store, url = relay
    alice = two_users["alice"]
    stream = opened(url, alice.token)
    try:
        out = _relay_cli(store, "token", "revoke", "alice", str(current_token_id(alice)))
        assert out.returncode == 0, out.stderr
        assert "Revoked token" in out.stdout
        closed_within(stream, PROMPTLY_S)
    finally:
        stream.close()


def test_a_long_poll_waiting_when_its_site_token_is_revoked_never_answers_the_commands(two_users: Dict[str, Any]) -> None:  # noqa: F811
    alice, agent = two_users["alice"], two_users["agent_a"]
    agent.request("GET", "/v1/sync/commands?after=0")  # the site is seen online: a write waits for it
    site_token = next(t["id"] for t in alice.request("GET", "/v1/tokens")["results"] if t["kind"] == "site" and t["site_id"] == SITE_A)
    answers: List[Any] = []

    def poll() -> None:
        try:
            answers.append(agent.request("GET", "/v1/sync/commands?after=0&wait=20", timeout=60))
        except exc.BalsamError as e:
            answers.append(e)

    waiting = threading.Thread(target=poll)
    waiting.start()
    time.sleep(1.5)  # the poll is waiting at the relay
    alice.request("DELETE", f"/v1/tokens/{site_token}")
    with pytest.raises(exc.CommandPending):
        alice.request("DELETE", f"/v1/jobs/{(SITE_A << 32) + 3}")  # a command for the site, queued while the poll waits
    waiting.join(60)
    assert len(answers) == 1 and isinstance(answers[0], exc.ServiceError), answers  # 401, not the command
    assert "revoked" in str(answers[0])


def test_a_password_change_revokes_all_the_users_tokens_and_ends_their_streams(two_users: Dict[str, Any], relay: Any) -> None:  # noqa: F811
    store, url = relay
    alice, bob = two_users["alice"], two_users["bob"]
    stream = opened(url, alice.token)
    try:
        out = _relay_cli(store, "user", "passwd", "alice", "--password-stdin", input="a-new-password-for-alice\n")
        assert out.returncode == 0, out.stderr
        assert "Revoked alice's tokens: 1 login, 1 site agent (alice must link that site again" in out.stdout
        closed_within(stream, PROMPTLY_S)
    finally:
        stream.close()
    with pytest.raises(exc.ServiceError, match="revoked"):
        alice.request("GET", "/v1/jobs")
    assert all(t["revoked"] for t in store.tokens(store.user_id("alice")))  # the site agent's token too
    with pytest.raises(exc.ServiceError, match="wrong user name or password"):
        login(url, "alice", "alice-password")
    again = login(url, "alice", "a-new-password-for-alice")
    assert [s["id"] for s in again.request("GET", "/v1/sites")["results"]] == [SITE_A]
    assert len(bob.request("GET", "/v1/jobs")["results"]) == 2  # another user's tokens are untouched


def test_a_token_is_taken_from_the_url_only_by_the_websocket(two_users: Dict[str, Any]) -> None:  # noqa: F811
    """Every route took ``?token=`` as well as the Authorization header: a token pasted into a URL ends up in proxies'
    logs, the browser's history and Referer headers. Only the WebSocket (which a browser cannot give a header) takes it."""
    import urllib.error
    import urllib.request
    from urllib.parse import quote

    url, alice = two_users["url"], two_users["alice"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{url}/v1/jobs?token={quote(alice.token)}", timeout=30)
    assert refused.value.code == 401
    with urllib.request.urlopen(urllib.request.Request(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {alice.token}"}),
                                timeout=30) as answer:
        assert answer.status == 200
    stream = opened(url, alice.token)  # the WebSocket still takes it
    stream.close()
