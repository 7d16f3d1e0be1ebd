"""The site agent's API server: the /v1 HTTP API over this site's store (DESIGN.md sections 3 and 5).

Every process on another host (a second login node, a launcher on a compute node, a job that creates jobs)
reaches the site DB through it; it replaces the launcher-only channel of earlier versions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from balsam.db.backend import LocalBackend
from balsam.db.connection import Store
from balsam.db.group import GroupWriter
from balsam.http.auth import SECRET_FILE, Authenticator, TokenVerifier, ensure_secret
from balsam.http.serve import ApiServer, ServeOptions
from balsam.settings import ApiSettings


def serve_options(settings: ApiSettings) -> ServeOptions:
    """The serving part of the ``api`` settings."""
    return ServeOptions(bind=settings.bind, port=settings.port, port_range=settings.port_range, advertise=settings.advertise,
                        tls_cert=settings.tls_cert or "", tls_key=settings.tls_key or "", tls_ca=settings.tls_ca or "",
                        max_connections=settings.max_connections,
                        header_timeout_s=settings.header_timeout_s, idle_timeout_s=settings.idle_timeout_s,
                        http_parser=settings.http_parser)


def start_api_server(root: Path, store: Store, settings: ApiSettings, *, host: str, expiry_s: float = 300.0,
                     tokens: Optional[TokenVerifier] = None) -> ApiServer:
    """Serve the site at ``root`` and publish the address in ``.balsam/api.json``; the running server."""
    from balsam.http.server import Limits, build_app

    state = Path(root) / ".balsam"
    secret, _created = ensure_secret(state / SECRET_FILE)
    backend = LocalBackend(store, host=host, expiry_s=expiry_s)
    auth = Authenticator(secret, tokens, window_s=settings.clock_skew_s, not_before=time.time() - 1.0)
    limits = Limits(max_body_bytes=int(settings.max_body_mb * 1024 * 1024), body_timeout_s=settings.body_timeout_s)
    writer = GroupWriter(store) if settings.group_commit else None
    app = build_app(backend, auth, site_root=Path(root), limits=limits, writer=writer)
    server = ApiServer(app, serve_options(settings), state_dir=state)
    server.on_stop(app.state.api.close)
    if writer is not None:
        server.on_stop(writer.stop)
    return server.start()
