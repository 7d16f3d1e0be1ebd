"""The site agent's API server: the /v1 HTTP API over this site's store (DESIGN.md sections 3 and 5).

Every process on another host (a second login node, a launcher on a compute node, a job that creates jobs)
reaches the site DB through it; it replaces the launcher-only channel of earlier versions.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

from balsam.db.backend import LocalBackend
from balsam.db.connection import Store
from balsam.db.group import GroupWriter
from balsam.db.nonces import NONCES_FILE, SharedNonces
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
                     tokens: Optional[TokenVerifier] = None, worker_port: Optional[int] = None,
                     not_before: Optional[float] = None) -> ApiServer:
    """Serve the site at ``root`` and publish the address in ``.balsam/api.json``; the running server.

    With ``settings.workers`` > 1 (and no bearer tokens, which live in this process only), ``workers - 1`` more
    processes serve the same port (:mod:`balsam.services.api_workers`), all of them sharing one replay memory.
    ``worker_port``: this is one of those workers (share that port, publish nothing, start no workers)."""
    from balsam.http.server import Limits, build_app

    state = Path(root) / ".balsam"
    worker = worker_port is not None
    secret, _created = ensure_secret(state / SECRET_FILE)
    backend = LocalBackend(store, host=host, expiry_s=expiry_s)
    shared = worker or (settings.workers > 1 and tokens is None)
    nonces = SharedNonces(state / NONCES_FILE, settings.clock_skew_s) if shared else None
    not_before = time.time() - 1.0 if not_before is None else not_before
    auth = Authenticator(secret, tokens, window_s=settings.clock_skew_s, not_before=not_before, nonces=nonces)
    limits = Limits(max_body_bytes=int(settings.max_body_mb * 1024 * 1024), body_timeout_s=settings.body_timeout_s)
    writer = GroupWriter(store) if settings.group_commit else None
    app = build_app(backend, auth, site_root=Path(root), limits=limits, writer=writer, background=not worker)
    options = serve_options(settings)
    if worker:
        options.port, options.port_range = int(worker_port or 0), ""
    server = ApiServer(app, options, state_dir=None if worker else state, reuse_port=shared, join=worker)
    server.on_stop(app.state.api.close)
    if writer is not None:
        server.on_stop(writer.stop)
    server.start()
    if shared and not worker:
        from balsam.services.api_workers import ApiWorkers

        try:
            workers = ApiWorkers(Path(root), settings, server.port, settings.workers - 1, host=host, expiry_s=expiry_s,
                                 not_before=not_before, log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel())).start()
        except BaseException:
            server.stop()
            raise
        server.workers = workers
        server.on_stop(workers.stop)
    return server
