"""``balsam ui``: the dashboard and the /v1 API of one site, for a browser on this host (or through ``ssh -L``).

It is the site agent's app (:func:`balsam.http.server.build_app`) over the site's own store, with one more
credential: a random bearer token made for this run, printed in a link (``/#/login?token=...``: the part after
``#`` never reaches the server or its logs). It binds 127.0.0.1 by default, so only this host's users can reach
the port, and only the link's holder gets past the login page.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from balsam._api.sites import SiteRef
    from balsam.http.auth import Principal
    from balsam.http.serve import ApiServer

MIN_TOKEN_CHARS = 24


class _OneToken:
    """The run's one bearer token (compared by hash, in constant time)."""

    def __init__(self, token: str, principal: "Principal") -> None:
        self._digest = hashlib.sha256(token.encode()).digest()
        self._principal = principal

    def verify(self, token: str) -> "Optional[Principal]":
        ok = hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self._digest)
        return self._principal if ok else None


@dataclass
class UiServer:
    """A running ``balsam ui`` server: where it listens and the token of its link."""

    server: "ApiServer"
    site_name: str
    bind: str
    port: int
    token: str

    @property
    def url(self) -> str:
        """The dashboard's address on this host."""
        host = "127.0.0.1" if self.bind in ("127.0.0.1", "0.0.0.0", "") else self.bind
        return f"http://{host}:{self.port}/"

    @property
    def link(self) -> str:
        """The URL that logs the browser in."""
        return f"{self.url}#/login?token={self.token}"

    def ssh_line(self, login_host: Optional[str] = None) -> str:
        """The ``ssh -L`` command that brings the port to a laptop."""
        fqdn = socket.getfqdn()
        host = login_host or (fqdn if fqdn and not fqdn.startswith("localhost") else socket.gethostname())
        return f"ssh -N -L {self.port}:127.0.0.1:{self.port} {getpass.getuser()}@{host}"

    def stop(self) -> None:
        self.server.stop()


def start_ui(site: "SiteRef", *, port: int = 0, bind: str = "127.0.0.1", token: Optional[str] = None) -> UiServer:
    """Serve ``site``'s dashboard and API on ``bind:port`` (0: any free port); returns the running server.

    ``token``: the bearer token to accept (default: a new random one). Giving the same token and port to a
    restarted ``balsam ui`` lets open dashboards reconnect without logging in again.
    """
    from balsam.db.backend import LocalBackend
    from balsam.exceptions import ConfigError
    from balsam.http.auth import Authenticator, Principal
    from balsam.http.serve import ApiServer, ServeOptions
    from balsam.http.server import build_app

    if token is None:
        token = secrets.token_urlsafe(32)
    elif len(token) < MIN_TOKEN_CHARS or not token.isprintable() or " " in token:
        raise ConfigError(f"the dashboard token must be at least {MIN_TOKEN_CHARS} printable characters without spaces")
    principal = Principal(kind="ui", name=getpass.getuser(), site_ids=frozenset({int(site.id)}))
    backend = LocalBackend(site.store, host=site.host)
    # Bearer tokens only: the site secret's HMAC is for the agent's own server and its launchers.
    auth = Authenticator(None, _OneToken(token, principal), not_before=time.time() - 1.0)
    app = build_app(backend, auth, site_root=Path(site.path))
    server = ApiServer(app, ServeOptions(bind=bind, port=port)).start()
    return UiServer(server=server, site_name=site.name, bind=bind, port=server.port, token=token)
