"""``balsam ui``: the dashboard and the /v1 API of this host's sites, for a browser on this host (or through ``ssh -L``).

It is the site agent's app (:func:`balsam.http.server.build_app`) over every site whose home host this is (or
the one ``--site`` names), through :class:`balsam.http.host.HostBackend`, which routes each request to its
site and merges listings; a site created while it runs appears. The routes that read a site's directory
(its row with the agent's health, a job's output, why a job waits) are answered per site here. It has its own
credentials (:class:`UiTokens`):

- the printed link (``/#/login?token=...``: the part after ``#`` never reaches the server or its logs) carries a
  ONE-TIME token: the login page exchanges it (``POST /v1/ui/session``) for a session token, kept in the tab's
  sessionStorage and sent as a Bearer header; the link then stops working, so a link left in a terminal's
  scrollback or a shell history logs nobody else in;
- ``BALSAM_UI_TOKEN``, when set, is a reusable token (for scripts, and for the login page's token field); session
  tokens are then signed with a key derived from it, so a restarted ``balsam ui`` with the same token and port
  takes open dashboards back;
- a session token expires after :data:`SESSION_IDLE_S` without use and :data:`SESSION_MAX_S` after the login,
  whichever comes first, and at once when its dashboard logs out (``DELETE /v1/token``, as at a relay); an expired or
  logged-out token gets the same 401 as a wrong one, and its open change streams end within
  :data:`balsam.http.server.REVERIFY_S`. With BALSAM_UI_TOKEN, a logout is also written to a file under
  ``$BALSAM_HOME/ui/`` (:mod:`balsam.http.ended_sessions`), so a restarted ``balsam ui`` refuses that token too.

What a restart does to live sessions: with BALSAM_UI_TOKEN (same token), every session that was neither logged
out nor past :data:`SESSION_MAX_S` goes on (open dashboards reconnect), and its idle time counts again from the
restart; without it, the session key was this run's alone, so every session ends and the new printed link logs in.

It binds 127.0.0.1 by default, so only this host's users can reach the port.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import math
import secrets
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Tuple

from balsam.http.auth import Principal, Unauthorized
from balsam.http.ended_sessions import EndedSessions, login_time
from balsam.http.host import HostBackend, HostSite, HostSites

if TYPE_CHECKING:
    from balsam.http.handlers import Call
    from balsam.http.serve import ApiServer

MIN_TOKEN_CHARS = 24


LINK_USED = ("this login link was already used (a link logs in once): run `balsam ui` again for a new link, or set "
             "BALSAM_UI_TOKEN to a token of your own and log in with it")
LINK_IS_FOR_LOGIN = ("this is a login link's one-time token, for the login page only: open the link in a browser, or set "
                     "BALSAM_UI_TOKEN for a reusable token")
SESSION_PREFIX = "s."

SESSION_IDLE_S = 12 * 3600.0
"""A session token not used for this long (seconds) expires. An open dashboard uses its token all the time (its
change stream is checked every few seconds); a token kept by a closed tab, or copied elsewhere, ends this long after
its last use."""
SESSION_MAX_S = 7 * 86400.0
"""A session token expires this long (seconds) after its login, however often it is used. The time of the login
is part of the signed token, so a restarted ``balsam ui`` (same BALSAM_UI_TOKEN) keeps this cap; the idle time
is counted in memory and starts again from a restart."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def ended_sessions_path(home: Path, key: bytes) -> Path:
    """The file (under BALSAM_HOME ``home``) of the logged-out sessions signed with session key ``key`` (named by a
    digest of it)."""
    name = hmac.new(key, b"balsam-ui-ended-sessions", hashlib.sha256).hexdigest()[:24]
    return Path(home) / "ui" / f"ended-sessions-{name}.json"


@dataclass(frozen=True)
class UiPrincipal(Principal):
    """The caller of a ``balsam ui`` request made with a session token: which session (to log it out)."""

    session: str = ""
    """The session token's nonce (never the token)."""


class UiTokens:
    """The credentials of one ``balsam ui`` run (a :class:`balsam.http.auth.TokenVerifier`).

    ``link_token`` is good for one exchange (:meth:`exchange`) and never as a bearer token; ``reusable`` (from
    BALSAM_UI_TOKEN) is good as a bearer token and for any number of exchanges; session tokens are
    ``s.<login time in hex>-<nonce>.<hmac>``: the signature proves them, and a table of the ones in use (last
    use, and the logged-out ones until they would have expired anyway) makes them expire. ``ended``: where
    logouts are kept for the next run (with ``reusable``; :meth:`ended_for` makes it), else in memory only.
    """

    clock: Callable[[], float] = staticmethod(time.time)
    """The wall clock that session expiry reads (tests move it)."""

    def __init__(self, principal: Principal, reusable: Optional[str] = None, ended: Optional[EndedSessions] = None) -> None:
        self.principal = principal
        self.link_token = secrets.token_urlsafe(32)
        self._link = _digest(self.link_token)
        self._link_used = False
        self._reusable = _digest(reusable) if reusable else None
        self._key = self.session_key(reusable) if reusable else secrets.token_bytes(32)
        self._ended = ended
        self._lock = threading.Lock()
        self._last_use: Dict[str, float] = {}  # nonce -> its last use (-inf: logged out)

    @staticmethod
    def session_key(reusable: str) -> bytes:
        """The key that signs session tokens under BALSAM_UI_TOKEN ``reusable`` (the same in every run)."""
        return hashlib.sha256(b"balsam-ui-session\n" + reusable.encode()).digest()

    @classmethod
    def ended_for(cls, home: Path, reusable: str) -> EndedSessions:
        """The logged-out sessions of BALSAM_UI_TOKEN ``reusable``, in its file under ``<home>/ui/`` (not read yet)."""
        return EndedSessions(ended_sessions_path(home, cls.session_key(reusable)), SESSION_MAX_S, lambda: cls.clock())

    def _mac(self, nonce: str) -> str:
        return hmac.new(self._key, nonce.encode(), hashlib.sha256).hexdigest()

    def _new_session(self) -> str:
        now = self.clock()
        login = int(now)
        if self._ended is not None:  # a cut-off (a damaged file of ended sessions) may lie in this very second
            cut = self._ended.login_not_before()
            if cut > login:
                login = int(math.ceil(cut))
        nonce = f"{login:x}-{secrets.token_hex(16)}"
        with self._lock:
            self._forget_expired(now)
            self._last_use[nonce] = now
        return f"{SESSION_PREFIX}{nonce}.{self._mac(nonce)}"

    def _forget_expired(self, now: float) -> None:
        """Drop the table's rows of tokens past :data:`SESSION_MAX_S` (refused by their login time alone); called
        under the lock. Rows of idle or logged-out tokens stay until then, so that such a token is never taken
        for one signed before a restart."""
        for nonce in [n for n in self._last_use if now - login_time(n) > SESSION_MAX_S]:
            del self._last_use[nonce]

    def _session_nonce(self, token: str) -> Optional[str]:
        """The nonce of a session token this server signed and that is still good, using it now; None otherwise."""
        nonce, _, mac = token[len(SESSION_PREFIX):].partition(".")
        if "-" not in nonce or not hmac.compare_digest(self._mac(nonce).encode(), mac.encode()):
            return None
        now = self.clock()
        if now - login_time(nonce) > SESSION_MAX_S:
            return None
        if self._ended is not None and self._ended.refuses(nonce):  # logged out, maybe by an earlier run
            return None
        with self._lock:
            # A nonce missing from the table was signed before a restart (same BALSAM_UI_TOKEN): in use from now.
            if now - self._last_use.get(nonce, now) > SESSION_IDLE_S:
                return None
            self._last_use[nonce] = now
        return nonce

    def log_out_nonce(self, nonce: str) -> None:
        """End a session at once (its dashboard logged out): ``nonce`` is its :attr:`UiPrincipal.session`. With
        BALSAM_UI_TOKEN the logout is also written for later runs; OSError if that failed (it holds for this run)."""
        with self._lock:
            self._last_use[nonce] = -math.inf  # idle forever
        if self._ended is not None:
            self._ended.end(nonce)

    def verify(self, token: str) -> Optional[Principal]:
        """The principal of a good session token or the reusable token; None for a wrong, expired or logged-out
        one; Unauthorized (with what to do) for the link's token."""
        if token.startswith(SESSION_PREFIX):
            nonce = self._session_nonce(token)
            return None if nonce is None else UiPrincipal(self.principal.kind, self.principal.name, session=nonce)
        digest = _digest(token)
        if self._reusable is not None and hmac.compare_digest(digest, self._reusable):
            return self.principal
        if hmac.compare_digest(digest, self._link):
            raise Unauthorized(LINK_USED if self._link_used else LINK_IS_FOR_LOGIN)
        return None

    def exchange(self, token: str) -> str:
        """A new session token for the link's token (once) or the reusable token; Unauthorized otherwise."""
        digest = _digest(token)
        if self._reusable is not None and hmac.compare_digest(digest, self._reusable):
            return self._new_session()
        if hmac.compare_digest(digest, self._link):
            with self._lock:
                if self._link_used:
                    raise Unauthorized(LINK_USED)
                self._link_used = True
            return self._new_session()
        if token.startswith(SESSION_PREFIX) and self.verify(token) is not None:
            return token
        raise Unauthorized("unknown token: open the link that `balsam ui` printed, or give BALSAM_UI_TOKEN's token")


def _session_handler(tokens: UiTokens) -> "Any":
    def open_session(call: "Call") -> Tuple[int, Any]:
        from balsam.exceptions import ValidationError
        from balsam.http.errors import ApiError

        body = call.body if isinstance(call.body, dict) else {}
        token = body.get("token")
        if not isinstance(token, str) or not token.strip():
            raise ValidationError("token: the token of the login link (or BALSAM_UI_TOKEN's)")
        try:
            session = tokens.exchange(token.strip())
        except Unauthorized as e:
            raise ApiError(401, "unauthorized", str(e), field="token", kind="ServiceError") from None
        return 201, {"token": session, "user": tokens.principal.name, "kind": tokens.principal.kind}

    return open_session


def _logout_handler(tokens: UiTokens) -> "Any":
    def log_out(call: "Call") -> Tuple[int, Any]:
        from balsam.exceptions import ValidationError
        from balsam.http.errors import ApiError

        session = call.principal.session if isinstance(call.principal, UiPrincipal) else ""
        if not session:
            raise ValidationError("only a session token logs out: BALSAM_UI_TOKEN stays valid until `balsam ui` runs without it")
        try:
            tokens.log_out_nonce(session)
        except OSError as e:
            raise ApiError(503, "unavailable", f"logged out until balsam ui stops, but the logout could not be recorded for "
                           f"its next run ({e.strerror or e}): log out again once that is mended", kind="ServiceError") from None
        return 200, {"revoked": 1}

    return log_out


def _host(call: "Call") -> HostBackend:
    backend = call.backend
    assert isinstance(backend, HostBackend)
    return backend


def _at_site(call: "Call", site: HostSite) -> "Call":
    """The call as the one site's own server would see it (its backend and its directory)."""
    from balsam.http.handlers import Call

    return Call(site.backend, call.principal, dict(call.params), list(call.query), call.body, site.root)


def _site_wire(call: "Call", site: HostSite) -> Dict[str, Any]:
    from balsam.http.handlers import _site

    return _site(_at_site(call, site))


def list_sites(call: "Call") -> Tuple[int, Any]:
    """Every site served, with its agent's health and backlog (``site_id``: some of them)."""
    from balsam.http.handlers import _narrow

    _narrow(call, [v for k, v in call.query if k == "site_id"] or None)
    out = [_site_wire(call, s) for s in _host(call).parts()]
    return 200, {"results": out, "next_cursor": None, "count": len(out)}


def get_site(call: "Call") -> Tuple[int, Any]:
    return 200, _site_wire(call, _host(call).part(call.int_param("id")))


def whoami(call: "Call") -> Tuple[int, Any]:
    return 200, {"user": call.principal.name, "sites": [s.id for s in _host(call).parts()], "kind": call.principal.kind}


def _by_job(handler: "Callable[[Call], Tuple[int, Any]]") -> "Callable[[Call], Tuple[int, Any]]":
    """A job route that reads the site's directory, answered at the job's site."""
    def routed(call: "Call") -> Tuple[int, Any]:
        from balsam.db.ids import site_of
        from balsam.exceptions import ObjectDoesNotExist

        job_id = call.int_param("id")
        try:
            site = _host(call).part(site_of(job_id))
        except ObjectDoesNotExist:
            raise ObjectDoesNotExist(f"no job {job_id}") from None
        return handler(_at_site(call, site))

    routed.__name__ = getattr(handler, "__name__", "routed")
    routed.__doc__ = handler.__doc__
    return routed


def _site_routes() -> Tuple[Any, ...]:
    from balsam.http import handlers as h
    from balsam.http.routes import ROUTES

    replaced = {"whoami": whoami, "list_sites": list_sites, "get_site": get_site, "job_output": _by_job(h.job_output),
                "job_why": _by_job(h.why)}
    return tuple(replace(r, handler=replaced[r.name]) for r in ROUTES if r.name in replaced)


@dataclass
class UiServer:
    """A running ``balsam ui`` server: where it listens and the token of its link."""

    server: "ApiServer"
    sites: HostSites
    bind: str
    port: int
    token: str
    """The link's one-time token."""
    tokens: UiTokens

    @property
    def url(self) -> str:
        """The dashboard's address on this host."""
        host = "127.0.0.1" if self.bind in ("127.0.0.1", "0.0.0.0", "") else self.bind
        return f"http://{host}:{self.port}/"

    @property
    def link(self) -> str:
        """The URL that logs a browser in, once."""
        return f"{self.url}#/login?token={self.token}"

    def ssh_line(self, login_host: Optional[str] = None) -> str:
        """The ``ssh -L`` command that brings the port to a laptop."""
        fqdn = socket.getfqdn()
        host = login_host or (fqdn if fqdn and not fqdn.startswith("localhost") else socket.gethostname())
        return f"ssh -N -L {self.port}:127.0.0.1:{self.port} {getpass.getuser()}@{host}"

    @property
    def site_names(self) -> Sequence[str]:
        """The names of the sites served now."""
        return [s.name for s in self.sites.all()]

    def stop(self) -> None:
        self.server.stop()


def start_ui(discover: Callable[[], Sequence[HostSite]], *, port: int = 0, bind: str = "127.0.0.1", token: Optional[str] = None,
             refresh_s: float = 2.0, home: Optional[Path] = None) -> UiServer:
    """Serve the dashboard and API of the sites ``discover`` lists (asked again every ``refresh_s`` seconds, so sites
    created later appear) on ``bind:port`` (0: any free port); returns the running server.

    The printed link's token is new and good for one login. ``token`` (BALSAM_UI_TOKEN): a reusable token
    accepted as well; giving the same one and the same port to a restarted ``balsam ui`` lets open dashboards
    reconnect without logging in again. ``home`` (BALSAM_HOME): where the sessions logged out under ``token`` are
    kept for the next run (without it, in memory only).
    """
    from balsam.exceptions import ConfigError
    from balsam.http.auth import Authenticator
    from balsam.http.routes import OBJ
    from balsam.http.routes import Route as ApiRoute
    from balsam.http.serve import ApiServer, ServeOptions
    from balsam.http.server import build_app

    if token is not None and (len(token) < MIN_TOKEN_CHARS or not token.isprintable() or " " in token):
        raise ConfigError(f"the dashboard token must be at least {MIN_TOKEN_CHARS} printable characters without spaces")
    principal = Principal(kind="ui", name=getpass.getuser())
    ended = None
    if token is not None and home is not None:  # logouts outlive this run (sessions signed under the same token would come back)
        ended = UiTokens.ended_for(home, token)
        ended.load()
    tokens = UiTokens(principal, token, ended)
    sites = HostSites(discover, refresh_s=refresh_s)
    backend = HostBackend(sites)
    # Bearer tokens only: the site secret's HMAC is for the agent's own server and its launchers.
    auth = Authenticator(None, tokens, not_before=time.time() - 1.0)
    session = ApiRoute("POST", "/v1/ui/session", "ui_session", "Exchange the login link's one-time token (or BALSAM_UI_TOKEN's) "
                       "for a session token", _session_handler(tokens), body=OBJ, response=OBJ, status=201, auth=False)
    logout = ApiRoute("DELETE", "/v1/token", "logout", "Log out: the session token of this request stops working at once",
                      _logout_handler(tokens), response=OBJ)
    app = build_app(backend, auth, site_id=0, extra_routes=(session, logout, *_site_routes()))
    server = ApiServer(app, ServeOptions(bind=bind, port=port)).start()
    return UiServer(server=server, sites=sites, bind=bind, port=server.port, token=tokens.link_token, tokens=tokens)
