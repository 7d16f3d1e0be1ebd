"""`balsam ui` session tokens end: after SESSION_IDLE_S without use, SESSION_MAX_S after the login however often
they are used, and at once when the dashboard logs out; each then gets the same 401 as a wrong token. A real
`balsam ui` server over HTTP, with the wall clock its tokens read moved forward. A logout outlives restarts of
`balsam ui` processes (Ctrl-C or kill -9), is seen by another `balsam ui` of the same token, and a damaged record of
logouts makes everyone log in again rather than letting an ended session back in."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import pytest

pytest.importorskip("starlette", reason="balsam ui needs starlette and uvicorn")
pytest.importorskip("uvicorn", reason="balsam ui needs starlette and uvicorn")

from balsam.http import ui  # noqa: E402
from tests.relay_support import WsReader  # noqa: E402
from tests.web_support import REPO, _read_link  # noqa: E402

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
    server = ui.start_ui(lambda: [], token=REUSABLE, home=Path(os.environ["BALSAM_HOME"]))
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
    again = ui.start_ui(lambda: [], token=REUSABLE, home=Path(os.environ["BALSAM_HOME"]))
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


# ---------------------------------------------------------------------------------- logouts outlive a restart
class UiProcess:
    """`balsam ui` as a user runs it (a subprocess of the `balsam` command), restarted on the same port."""

    def __init__(self, home: Path, token: Optional[str] = REUSABLE) -> None:
        self.env = {**os.environ, "BALSAM_HOME": str(home), "PYTHONPATH": str(REPO)}
        self.env.pop("BALSAM_UI_TOKEN", None)
        if token is not None:
            self.env["BALSAM_UI_TOKEN"] = token
        self.port = 0
        self.proc: "Optional[subprocess.Popen[str]]" = None
        self.link = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> "UiProcess":
        self.proc = subprocess.Popen([sys.executable, "-m", "balsam", "ui", "--port", str(self.port)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=self.env)
        self.link = _read_link(self.proc)
        self.port = int(self.link.split("/")[2].rsplit(":", 1)[1])
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Ctrl-C's SIGTERM (or kill -9: nothing is saved at exit)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.proc = None

    def login(self, token: str = REUSABLE) -> str:
        status, out = _call("POST", f"{self.url}v1/ui/session", {"token": token})
        assert status == 201, out
        return str(out["token"])

    def whoami(self, token: str) -> int:
        return _call("GET", f"{self.url}v1/whoami", token=token)[0]

    def log_out(self, token: str) -> Tuple[int, Any]:
        return _call("DELETE", f"{self.url}v1/token", token=token)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[List[UiProcess]]:
    """The `balsam ui` processes a test starts (all stopped at its end)."""
    started: List[UiProcess] = []
    yield started
    for p in started:
        p.stop(signal.SIGKILL)


def _ended_file(home: Path) -> Path:
    files = list((home / "ui").glob("ended-sessions-*.json"))
    assert len(files) == 1, files
    return files[0]


@pytest.mark.slow
def test_a_logged_out_session_stays_out_when_balsam_ui_restarts(tmp_path: Path, processes: List[UiProcess]) -> None:
    ui_ = UiProcess(tmp_path / "home").start()
    processes.append(ui_)
    ended, live = ui_.login(), ui_.login(ui_.link.rsplit("=", 1)[1])  # one with BALSAM_UI_TOKEN, one with the link
    assert ui_.log_out(ended) == (200, {"revoked": 1})
    assert ui_.whoami(ended) == 401
    for sig in (signal.SIGTERM, signal.SIGKILL):  # Ctrl-C, then a crash (nothing is saved at exit)
        ui_.stop(sig)
        ui_.start()  # the same BALSAM_UI_TOKEN and port
        assert ui_.whoami(ended) == 401
        assert _call("POST", f"{ui_.url}v1/ui/session", {"token": ended})[0] == 401  # nor does it buy a new session
        assert ui_.whoami(live) == 200  # a session that did not log out goes on: its dashboard reconnects
        assert ui_.whoami(REUSABLE) == 200
    again = ui_.login()
    assert ui_.log_out(again)[0] == 200 and ui_.whoami(again) == 401
    ui_.stop(signal.SIGKILL)
    ui_.start()
    assert ui_.whoami(again) == 401 and ui_.whoami(ended) == 401 and ui_.whoami(live) == 200
    # The file keeps the sessions' nonces, never a token or signature; only its owner may read it.
    path = _ended_file(tmp_path / "home")
    text = path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600
    assert REUSABLE not in text and ended.rsplit(".", 1)[1] not in text and ended.split(".")[1] in text


@pytest.mark.slow
def test_without_balsam_ui_token_a_restart_ends_every_session(tmp_path: Path, processes: List[UiProcess]) -> None:
    ui_ = UiProcess(tmp_path / "home", token=None).start()
    processes.append(ui_)
    session = ui_.login(ui_.link.rsplit("=", 1)[1])
    assert ui_.whoami(session) == 200
    ui_.stop()
    ui_.start()
    assert ui_.whoami(session) == 401  # the key that signed it was the last run's alone: log in with the new link
    assert ui_.whoami(ui_.login(ui_.link.rsplit("=", 1)[1])) == 200
    assert not (tmp_path / "home" / "ui").exists()  # nothing to keep


@pytest.mark.slow
def test_two_balsam_ui_of_one_token_see_each_other_s_logouts(tmp_path: Path, processes: List[UiProcess]) -> None:
    first, second = UiProcess(tmp_path / "home").start(), UiProcess(tmp_path / "home").start()
    processes += [first, second]
    sessions = [first.login() for _ in range(6)]  # signed with the same key: good at either server
    assert all(second.whoami(s) == 200 for s in sessions)
    for i, s in enumerate(sessions[:4]):  # logouts at both, alternating: none lost to the other's write
        assert (first if i % 2 else second).log_out(s)[0] == 200
    for server in (first, second):
        assert [server.whoami(s) for s in sessions] == [401] * 4 + [200] * 2
    first.stop()
    second.stop(signal.SIGKILL)
    first.start()
    assert [first.whoami(s) for s in sessions] == [401] * 4 + [200] * 2


@pytest.mark.slow
def test_a_damaged_file_of_ended_sessions_makes_everyone_log_in_again(tmp_path: Path, processes: List[UiProcess]) -> None:
    ui_ = UiProcess(tmp_path / "home").start()
    processes.append(ui_)
    ended, live = ui_.login(), ui_.login()
    assert ui_.log_out(ended)[0] == 200
    ui_.stop()
    path = _ended_file(tmp_path / "home")
    path.write_bytes(path.read_bytes()[:-7] + b"\x00garbage")  # half a file: no logout may be forgotten
    ui_.start()
    assert ui_.whoami(ended) == 401 and ui_.whoami(live) == 401  # every session from before: log in again
    fresh = ui_.login()
    assert ui_.whoami(fresh) == 200
    assert json.loads(path.read_text())["format"] == 1  # replaced by a good file
    ui_.stop()
    ui_.start()
    assert ui_.whoami(fresh) == 200 and ui_.whoami(live) == 401


def test_the_file_forgets_sessions_past_the_absolute_cap(served: Tuple[ui.UiServer, Clock], balsam_home: Path) -> None:
    server, clock = served
    old = _login(server, REUSABLE)
    assert _call("DELETE", f"{server.url}v1/token", token=old)[0] == 200
    path = _ended_file(balsam_home)
    assert list(json.loads(path.read_text())["ended"]) == [old.split(".")[1]]
    clock.now += ui.SESSION_MAX_S + 1
    new = _login(server, REUSABLE)
    assert _call("DELETE", f"{server.url}v1/token", token=new)[0] == 200
    assert list(json.loads(path.read_text())["ended"]) == [new.split(".")[1]]  # the old one is refused by its age alone
    _unauthorized_like_a_wrong_token(server, old)


def test_a_logout_that_cannot_be_recorded_says_so(served: Tuple[ui.UiServer, Clock], balsam_home: Path) -> None:
    server, _ = served
    session = _login(server, REUSABLE)
    (balsam_home / "ui").mkdir(parents=True, exist_ok=True)
    (balsam_home / "ui" / f"{ui.ended_sessions_path(balsam_home, ui.UiTokens.session_key(REUSABLE)).name}.lock").mkdir()  # unwritable
    status, out = _call("DELETE", f"{server.url}v1/token", token=session)
    assert status == 503 and "could not be recorded" in out["error"]["message"]
    _unauthorized_like_a_wrong_token(server, session)  # it holds for this run all the same


def test_a_session_logged_in_the_same_second_a_damaged_file_is_found_is_refused(tmp_path: Path) -> None:
    """Login times are whole seconds: a session logged in at 1000.2 s, before the file was found damaged at 1000.7 s,
    is refused like every older one, and a session logged in after it (still in that second) is taken (it carries
    the cut-off as its login time). The dashboard test of the damaged file passed or failed by which second a fast
    restart fell in."""
    from balsam.http.ended_sessions import EndedSessions, login_time

    clock = [1000.7]
    path = tmp_path / "ended.json"
    path.write_bytes(b'{"format":1,"ended":{"3e8-ab":1000.1}' + b"\x00garbage")
    ended = EndedSessions(path, 3600.0, lambda: clock[0])
    ended.load()
    before = f"{1000:x}-{'0' * 32}"  # logged in at 1000.2 s, before the damage was seen
    assert ended.refuses(before)
    cut = ended.login_not_before()
    assert cut == 1001.0 and not ended.refuses(f"{int(cut):x}-{'1' * 32}")
    assert login_time(f"{int(cut):x}-x") == cut
