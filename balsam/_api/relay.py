"""A user's relay, from the API: log in and out, link a site to the relay and unlink it, and list the user's sites
there (``balsam login``/``logout``, ``balsam site link``/``unlink``/``ls``).

::

    from balsam._api import relay

    relay.login("https://relay.example.org", "alice", password)
    relay.link("my-site")           # its agent then syncs with the relay
    [s["name"] for s in relay.sites()]

The login (a token, never the password) is kept in ``$BALSAM_HOME`` readable only by the user; a site's link
(its agent's token) in the site's state folder. Linking and unlinking write the site's DB, so they run on the
site's home host (elsewhere a ForeignHostError names it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["current_login", "link", "login", "logout", "sites", "unlink"]


def login(url: str, user: str, password: str, cafile: str = "") -> Dict[str, Any]:
    """Log in to the relay at ``url`` as ``user``; the saved record: url, user, expires (and the token, kept 0600).
    ``cafile`` is the CA bundle that signs a self-signed relay's certificate."""
    from balsam.sync import login as do_login

    return do_login(url, user, password, cafile)


def logout() -> Optional[str]:
    """Revoke this host's relay token (best effort) and forget it: the relay's URL, or None if not logged in."""
    from balsam.sync import logout as do_logout

    return do_logout()


def current_login() -> Optional[Dict[str, Any]]:
    """The saved login (url, user, expires), or None when not logged in to a relay."""
    from balsam.sync import current_login as saved

    return saved()


def sites(record: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """The logged-in user's sites at the relay, as the relay reports them (id, name, hostname, path, agent,
    last_seen, backlog by state, outbox); [] when not logged in. A relay that cannot be reached is a ServiceError."""
    from balsam.sync import relay_sites

    return relay_sites(record)


def _root(site: Any) -> Path:
    """A site's directory: a SiteRef or Site's path, a path as given, or a name or id looked up."""
    if hasattr(site, "path") and not isinstance(site, (str, Path)):
        return Path(str(site.path))
    if isinstance(site, Path) or (isinstance(site, str) and ("/" in site or site == ".")):
        return Path(site).expanduser()
    from balsam._api.sites import single_site

    return single_site(site).path


def _at_home(root: Path, what: str) -> Path:
    """``root``, after checking this is the site's home host: linking and unlinking write the site's DB and its
    agent's token, and a refusal half-way would leave the relay and the site disagreeing."""
    from balsam._api.sites import process_host
    from balsam.exceptions import ForeignHostError
    from balsam.site import SiteLayout

    owner = SiteLayout(root).home_host()
    if owner and owner != process_host():
        raise ForeignHostError(f"site {root} belongs to host {owner!r} and this is {process_host()!r}: {what} writes the site's "
                               f"DB and its agent's token, so run it on {owner}")
    return root


def link(site: Any, url: Optional[str] = None) -> Dict[str, Any]:
    """Link ``site`` (a name, id, path or Site) to the relay this host is logged in to (``url``, when given, must be
    that relay): its agent then pushes its changes and takes work made at the relay. A site id the relay already
    knows from another site moves this site to a free id first. The link: url, user, site_id, and moved_from
    (the old id) when the site moved."""
    from balsam.sync import link_site

    return link_site(_at_home(_root(site), "linking it to a relay"), url)


def unlink(site: Any) -> bool:
    """Stop syncing ``site`` with its relay (the site keeps working on its own); whether it was linked."""
    from balsam.sync import unlink_site

    return unlink_site(_at_home(_root(site), "unlinking it from its relay"))
