"""The dashboard's files as every server answers them (the site agent, ``balsam ui``, the relay): ``/`` is
``index.html`` and ``/assets/<name>`` the built files, read from the package with :mod:`importlib.resources` (so
they load from the zipapp too), each with the headers that keep the page safe.

The content security policy lets the page run only the package's own script files: no inline ``<script>``, no
``onerror=``/``onload=`` attributes, no ``javascript:`` address and no ``eval``/``new Function`` runs, so job data
that ever reached the page as markup (a tag, a parameter, an error message holding ``<script>``) would still run
nothing. The page talks only to the server that served it (``connect-src``: its own address and WebSocket), loads
no plugin, takes no base address from markup, submits no form natively (the login form is handled by the script,
so a token never lands in a URL), and no other site may frame it. Styles come from the package's files, and the one
``<style>`` element written at run time (Vuetify's theme) carries a nonce new with each load of the page, which the
server writes into ``index.html``'s ``csp-nonce`` meta element; a ``<style>`` or ``style=`` that markup brought
is refused. The built assets are checked for inline scripts, inline handlers and code built from strings
(tests/test_web_csp.py).
"""

from __future__ import annotations

import re
import secrets
from importlib import resources
from typing import Dict, Optional, Tuple
from urllib.parse import urlsplit

CSP_DIRECTIVES: Tuple[Tuple[str, str], ...] = (
    ("default-src", "'none'"),
    ("script-src", "'self'"),
    ("style-src", "'self'"),
    ("img-src", "'self' data:"),
    ("font-src", "'self' data:"),
    ("connect-src", "'self'"),
    ("manifest-src", "'self'"),
    ("object-src", "'none'"),
    ("base-uri", "'none'"),
    ("form-action", "'none'"),
    ("frame-ancestors", "'none'"),
)
"""The dashboard's content security policy, directive by directive (``connect-src`` also gets the page's own
WebSocket address, from the request's Host, and ``style-src`` the page's nonce: :func:`page_headers`)."""

NONCE_META = b'<meta name="csp-nonce" content="" />'
"""Where ``index.html`` (web/index.html) takes the nonce of each load (the app's main.js reads it)."""

SAFE_HEADERS: Dict[str, str] = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
"""With the policy: no framing by browsers that ignore ``frame-ancestors``, no type guessed, no address (the login
link's token) sent on in a Referer, no window of another site holding a handle on the dashboard's, and no other
site embedding its files."""

_HOST = re.compile(r"(?:[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")
"""A Host header that can be written into the policy as it is (a name or an address, and a port)."""

_TYPES = {"html": "text/html; charset=utf-8", "js": "text/javascript", "mjs": "text/javascript", "css": "text/css",
          "json": "application/json", "svg": "image/svg+xml", "png": "image/png", "ico": "image/x-icon", "woff2": "font/woff2",
          "woff": "font/woff", "map": "application/json", "txt": "text/plain; charset=utf-8"}


def content_security_policy(host: Optional[str] = None, nonce: Optional[str] = None) -> str:
    """The ``Content-Security-Policy`` of a dashboard page requested with ``host`` as its Host header. ``'self'``
    covers the page's WebSocket in browsers that follow CSP 3; older ones need its ``ws:``/``wss:`` address named,
    which is added when ``host`` is a plain host[:port] (anything else is left out, never copied into the header).
    ``nonce``: the page's, allowed on ``<style>`` elements."""
    parts = []
    for name, value in CSP_DIRECTIVES:
        if name == "connect-src" and host and _HOST.fullmatch(host):
            value = f"{value} ws://{host} wss://{host}"
        if name == "style-src" and nonce:
            value = f"{value} 'nonce-{nonce}'"
        parts.append(f"{name} {value}")
    return "; ".join(parts)


def page_headers(name: str, host: Optional[str] = None, nonce: Optional[str] = None) -> Dict[str, str]:
    """The headers of the dashboard file ``name`` (``index.html`` or ``assets/...``): the policy, the headers of
    :data:`SAFE_HEADERS`, and caching: ``index.html`` is checked every time (a new Balsam's page names new files,
    and each load has its own nonce), the assets' names carry a hash of their content, so a browser may keep them."""
    headers = {"Content-Security-Policy": content_security_policy(host, nonce), **SAFE_HEADERS}
    headers["Cache-Control"] = "no-cache" if name == "index.html" else "public, max-age=604800, immutable"
    return headers


def page_answer(rel: Optional[str], host: Optional[str] = None) -> Optional[Tuple[bytes, str, Dict[str, str]]]:
    """The body, Content-Type and headers that answer ``/`` (``rel`` None) or ``/assets/<rel>``; None when there is
    no such file (:func:`read_page`). ``index.html`` gets a new nonce written in (:data:`NONCE_META`)."""
    page = read_page(rel)
    if page is None:
        return None
    name, data = page
    nonce = None
    if name == "index.html" and NONCE_META in data:
        nonce = secrets.token_urlsafe(18)
        data = data.replace(NONCE_META, NONCE_META.replace(b'content=""', b'content="%s"' % nonce.encode()), 1)
    return data, media_type(name), page_headers(name, host, nonce)


def same_origin(origin: Optional[str], *hosts: Optional[str]) -> bool:
    """Whether a browser's ``Origin`` header names the address the request came to: one of ``hosts`` (the Host
    header, or a proxy's X-Forwarded-Host), ports compared as the browser means them (``https://h`` is ``h:443``).
    No Origin passes (a script, not a page: the token authenticates it); ``null`` or another site's does not, so a
    page elsewhere cannot open the change stream even with a token it got hold of."""
    if origin is None:
        return True
    parts = urlsplit(origin.strip().lower())
    default = {"http": "80", "https": "443"}.get(parts.scheme)
    if default is None or not parts.hostname:
        return False
    try:
        port = str(parts.port or default)
    except ValueError:
        return False
    want = f"{parts.hostname}:{port}"
    for host in hosts:
        if not host:
            continue
        name = host.split(",")[0].strip().lower()  # a proxy chain's first (the browser's) address
        if not _HOST.fullmatch(name):
            continue
        if name.startswith("["):
            bare, _, rest = name.partition("]")
            name, given = bare + "]", rest.lstrip(":")
        else:
            name, _, given = name.partition(":")
        if f"{name.strip('[]')}:{given or default}" == want.replace("[", "").replace("]", ""):
            return True
    return False


def media_type(name: str) -> str:
    """The Content-Type of a dashboard file by its suffix (unknown: bytes, which nothing runs)."""
    return _TYPES.get(name.rsplit(".", 1)[-1].lower(), "application/octet-stream")


def read_page(rel: Optional[str]) -> Optional[Tuple[str, bytes]]:
    """``(name, bytes)`` of ``index.html`` (``rel`` None) or ``assets/<rel>``; None when there is no such file in
    the package or ``rel`` could step outside the assets (``..``, a hidden name, an empty or NUL segment)."""
    name = "index.html" if rel is None else f"assets/{rel}"
    parts = name.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") or "\\" in p for p in parts):
        return None
    try:
        node = resources.files("balsam.web")
        for p in parts:
            node = node / p
        return name, node.read_bytes()
    except (OSError, ModuleNotFoundError, TypeError, ValueError):  # ValueError: a NUL in the path (/assets/%00)
        return None


__all__ = ["CSP_DIRECTIVES", "SAFE_HEADERS", "content_security_policy", "media_type", "page_answer", "page_headers", "read_page",
           "same_origin"]
