"""A user's relay from the API (balsam._api.relay), against a real relay server on 127.0.0.1: log in (the token
kept 0600, never the password), link a site by name (its agent's token in the site's state folder), list the user's
sites at the relay, unlink, log out (the token revoked); a wrong password is one clear error; linking from another
host than the site's home is refused, naming the home host."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from balsam.exceptions import BalsamError, ForeignHostError

pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

BACKENDS = ("local", "http")


@pytest.fixture
def relay_url(tmp_path: Path) -> Iterator[str]:
    from tests.relay_support import relay_store, served

    for store in relay_store("sqlite", tmp_path):
        store.add_user("alice", "alice-password")
        with served(store) as (_server, url):
            yield url


def test_login_link_list_unlink_logout(site: Any, backend: str, relay_url: str, balsam_home: Path) -> None:
    from balsam._api import relay

    assert relay.current_login() is None and relay.sites() == [] and relay.logout() is None
    with pytest.raises(BalsamError, match="wrong user name or password"):
        relay.login(relay_url, "alice", "not-her-password")
    record = relay.login(relay_url + "/", "alice", "alice-password")
    assert (record["url"], record["user"]) == (relay_url, "alice")
    saved = balsam_home / "relay-login.json"
    assert saved.stat().st_mode & 0o777 == 0o600 and "alice-password" not in saved.read_text()
    assert relay.current_login() == record
    if backend == "http":  # linking writes the site's DB and its agent's token: the home host's business
        with pytest.raises(ForeignHostError, match=f"belongs to host {site.host!r} .*so run it on {site.host}"):
            relay.link("test-site", relay_url)
        assert relay.sites() == [] and not (site.path / ".balsam" / "relay.json").exists()  # nothing half-done
        with pytest.raises(ForeignHostError, match=f"belongs to host {site.host!r}"):
            relay.unlink(site.path)
        return
    with pytest.raises(BalsamError, match=f"you are logged in to {relay_url}"):
        relay.link("test-site", "http://elsewhere.example.org")
    link = relay.link("test-site", relay_url)
    assert (link["url"], link["user"], link["site_id"]) == (relay_url, "alice", site.id)
    token = site.path / ".balsam" / "relay.json"
    assert token.stat().st_mode & 0o777 == 0o600 and json.loads(token.read_text())["site_id"] == site.id
    assert [(s["id"], s["name"]) for s in relay.sites()] == [(site.id, "test-site")]
    assert relay.unlink(site.path) is True and not token.exists()
    assert relay.unlink("test-site") is False
    assert relay.logout() == relay_url and relay.current_login() is None
    with pytest.raises(BalsamError, match="log in first"):
        relay.link("test-site")
