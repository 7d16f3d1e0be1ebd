"""The client side of the relay (DESIGN.md section 6), pure Python so it runs from the zipapp.

- A user's login: ``balsam login URL -u USER`` keeps the relay's URL and a bearer token in
  ``$BALSAM_HOME/relay-login.json`` (mode 0600); ``balsam logout`` revokes the token and removes the file.
- A site's link: ``balsam site link URL`` registers the site with the relay (moving it to a free site id when
  its id is taken there), keeps the site's agent token in ``<site>/.balsam/relay.json`` (0600), and turns the
  site's outbox on; the agent's sync service (:mod:`balsam.services.sync`) then pushes and pulls.
- Sites seen through the relay: on a host with no site, a site name or id that is not on this host resolves
  to the user's site at the relay (:func:`relay_refs`), reached with :class:`RelaySiteBackend`: the HTTP
  Backend over the relay's /v1 API with the user's token, narrowed to that site.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from balsam import exceptions as exc
from balsam.db.backend import Row
from balsam.db.jobs import StateChange
from balsam.http.client import HttpBackend, HttpClient
from balsam.http.schemas import wire_to_row
from balsam.site import SiteLayout, balsam_home

LOGIN_FILE = "relay-login.json"
LINK_FILE = "relay.json"


def write_private(path: Path, payload: Dict[str, Any]) -> None:
    """Write JSON readable only by its owner (0600 from creation on, replaced atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def _read_private(path: Path) -> Optional[Dict[str, Any]]:
    try:
        if path.stat().st_mode & 0o077:
            raise exc.ConfigError(f"{path} holds a token and must be readable only by you: chmod 600 {path}")
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise exc.ConfigError(f"{path}: unreadable ({e})") from None
    return data if isinstance(data, dict) else None


def anonymous_client(url: str, cafile: str = "", retry_s: float = 10.0) -> HttpClient:
    """A client for routes that need no token (login)."""
    client = HttpClient(url=url, token="-", cafile=cafile, retry_s=retry_s)
    client.token = ""
    return client


# ------------------------------------------------------------------------------------------ commands on the wire
def encode_change(ch: StateChange) -> Dict[str, Any]:
    """A state change as JSON (no lease: a change made at the relay is a user's, never a launcher's)."""
    return {"job_id": int(ch.job_id), "state": str(ch.state), "timestamp": ch.timestamp, "data": ch.data or None,
            "fields": encode_fields(ch.fields) if ch.fields else None}


def decode_change(d: Dict[str, Any]) -> StateChange:
    fields = d.get("fields")
    return StateChange(int(d["job_id"]), str(d["state"]), d.get("timestamp"), d.get("data") or None,
                       decode_fields(fields) if isinstance(fields, dict) and fields else None)


def encode_fields(fields: Dict[str, Any]) -> Dict[str, Any]:
    """Fields as JSON values (bytes as ``{"__b64__": ...}``)."""
    return {k: ({"__b64__": base64.b64encode(bytes(v)).decode()} if isinstance(v, (bytes, bytearray, memoryview)) else v)
            for k, v in fields.items()}


def decode_fields(fields: Any) -> Dict[str, Any]:
    """The inverse of :func:`encode_fields` (the site's side)."""
    if not isinstance(fields, dict):
        raise exc.ValidationError("malformed fields")
    return {str(k): (base64.b64decode(v["__b64__"]) if isinstance(v, dict) and set(v) == {"__b64__"} else v) for k, v in fields.items()}


# ------------------------------------------------------------------------------------------ user login
def login_path() -> Path:
    return balsam_home() / LOGIN_FILE


def login(url: str, user: str, password: str, cafile: str = "") -> Dict[str, Any]:
    """Log in to a relay and keep the token (0600); returns the saved record (without echoing the token)."""
    url = url.rstrip("/")
    answer = anonymous_client(url, cafile).request("POST", "/v1/tokens", {"user": user, "password": password,
                                                                          "label": f"balsam login from {socket.gethostname()}"})
    record = {"url": url, "user": answer.get("user", user), "token": answer["token"], "expires": answer.get("expires"),
              "cafile": cafile}
    write_private(login_path(), record)
    return record


def current_login() -> Optional[Dict[str, Any]]:
    """The saved login, or None."""
    data = _read_private(login_path())
    return data if data and data.get("url") and data.get("token") else None


def logout() -> Optional[str]:
    """Revoke the saved token at the relay (best effort) and forget it; the relay's URL, or None if not logged in."""
    record = current_login()
    if record is None:
        return None
    try:
        user_client(record, retry_s=5).request("DELETE", "/v1/token")
    except exc.BalsamError:
        pass  # the token is forgotten here anyway; it expires at the relay
    login_path().unlink(missing_ok=True)
    return str(record["url"])


def user_client(record: Optional[Dict[str, Any]] = None, retry_s: float = 30.0) -> HttpClient:
    """A client with the saved user token (ServiceError when not logged in)."""
    record = record or current_login()
    if record is None:
        raise exc.ServiceError("not logged in to a relay: run 'balsam login URL -u USER'")
    return HttpClient(url=str(record["url"]), token=str(record["token"]), cafile=str(record.get("cafile") or ""), retry_s=retry_s)


# ------------------------------------------------------------------------------------------ site link
def link_path(root: Path) -> Path:
    return SiteLayout(Path(root)).state / LINK_FILE


def site_link(root: Path) -> Optional[Dict[str, Any]]:
    """The site's relay link (url, token, site_id), or None when the site is not linked."""
    data = _read_private(link_path(root))
    return data if data and data.get("url") and data.get("token") else None


def site_client(link: Dict[str, Any], retry_s: float = 5.0, timeout_s: float = 60.0) -> HttpClient:
    return HttpClient(url=str(link["url"]), token=str(link["token"]), cafile=str(link.get("cafile") or ""), retry_s=retry_s,
                      timeout_s=timeout_s)


def link_site(root: Path, url: Optional[str] = None) -> Dict[str, Any]:
    """Register the site at the relay the user is logged in to (``url`` must match the login when given), keep
    its agent token, and turn its outbox on. A site id the relay has seen elsewhere makes the site move to a
    free id first (every id of the site is rewritten). Returns the link record (site_id may be new)."""
    from balsam._api import sites as api_sites
    from balsam.db import outbox
    from balsam.db.ids import ensure_unique_site_id
    from balsam.site import Registry

    record = current_login()
    if record is None:
        raise exc.ServiceError("log in first: balsam login URL -u USER")
    if url and url.rstrip("/") != record["url"]:
        raise exc.ValidationError(f"you are logged in to {record['url']}, not {url}: run 'balsam login {url} -u USER' first")
    ref = api_sites.ref_for_root(Path(root).resolve())
    store = ref.store
    client = user_client(record)
    site_id = ref.id
    moved_from: Optional[int] = None
    for _ in range(5):
        try:
            answer = client.request("POST", "/v1/sites", {"site_id": site_id, "name": ref.name, "hostname": ref.host,
                                                          "path": str(ref.path)})
            break
        except exc.BalsamError as e:
            if "taken" not in str(e):
                raise
            with store.write() as conn:
                new = ensure_unique_site_id(conn, {site_id})
            assert new is not None
            moved_from = moved_from or site_id
            site_id = new
            try:
                Registry().update(ref.name, site_id=new)
            except exc.SiteNotFound:
                pass
            api_sites.reset()
    else:
        raise exc.ServiceError("the relay refused every site id tried: try again")
    link = {"url": record["url"], "token": answer["token"], "site_id": site_id, "user": record["user"],
            "cafile": record.get("cafile") or ""}
    with store.write() as conn:
        outbox.enable(conn)
    write_private(link_path(ref.path), link)
    if moved_from is not None:
        link["moved_from"] = moved_from
    return link


def unlink_site(root: Path) -> bool:
    """Forget the relay link and stop logging changes; whether the site was linked."""
    from balsam._api import sites as api_sites
    from balsam.db import outbox

    path = link_path(root)
    was = path.exists()
    path.unlink(missing_ok=True)
    with api_sites.ref_for_root(Path(root).resolve()).store.write() as conn:
        outbox.disable(conn)
    return was


# ------------------------------------------------------------------------------------------ sites through the relay
class RelaySiteBackend(HttpBackend):
    """One of the user's sites at the relay: the /v1 HTTP Backend with the user's token, narrowed to the site."""

    kind = "relay"

    def __init__(self, client: HttpClient, site_id: int) -> None:
        super().__init__(client)
        self.site_id = int(site_id)

    def describe(self) -> str:
        return f"the relay at {self.client.address} (site {self.site_id}, synced by its agent)"

    def site_row(self, columns: Any) -> Row:
        answer = self.client.request("GET", f"/v1/sites/{self.site_id}")
        if isinstance(answer, dict) and answer.get("last_refresh") is None and answer.get("last_seen"):
            answer = {**answer, "last_refresh": answer["last_seen"]}  # Balsam 0.7's last_refresh: the agent's last contact
        return wire_to_row("site", answer, columns)

    def _query(self, table: str, filters: Dict[str, Any], **extra: Any) -> Any:
        from balsam.http.client import _RESOURCE
        from balsam.http.schemas import encode_filter_value

        if table == "site":
            raise exc.ValidationError("sites are read with site_row()")
        body = {"filters": {**{k: encode_filter_value(v) for k, v in filters.items()}, "site_id": [self.site_id]}, **extra}
        return self.client.request("POST", f"/v1/{_RESOURCE[table]}/query", body, idempotency_key="")

    def create_batch_job(self, fields: Dict[str, Any]) -> int:
        return int(self.client.request("POST", "/v1/batch-jobs", {**fields, "site_id": self.site_id})["id"])

    def upload_site_id(self) -> Optional[int]:
        return self.site_id

    # DAG templates of this site (the relay holds many sites: each request names this one)
    def dag_save(self, name: str, description: str, spec: Dict[str, Any]) -> Dict[str, Any]:
        body = {"name": name, "description": description, "spec": spec, "site_id": self.site_id}
        return dict(self.client.request("PUT", "/v1/dags", body))

    def dag_list(self) -> List[Dict[str, Any]]:
        return list(self.client.request("GET", f"/v1/dags?site_id={self.site_id}")["results"])

    def dag_delete(self, name: str) -> int:
        from urllib.parse import quote

        return int(self.client.request("DELETE", f"/v1/dags?name={quote(name, safe='')}&site_id={self.site_id}")["deleted"])

    def dag_instantiate(self, name: str, records: Sequence[Dict[str, Any]]) -> List[int]:
        body = {"name": name, "records": list(records), "site_id": self.site_id}
        return [int(i) for i in self.client.request("POST", "/v1/dags/instantiate", body)["instances"]]


def relay_sites(record: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """The logged-in user's sites at the relay ([] when not logged in)."""
    record = record or current_login()
    if record is None:
        return []
    return list(user_client(record, retry_s=10).request("GET", "/v1/sites")["results"])


def relay_root(record: Dict[str, Any], name: str) -> Path:
    """The stand-in path naming a relay site in this process (no such directory exists)."""
    from urllib.parse import urlsplit

    return Path("/") / "balsam-relay" / (urlsplit(str(record["url"])).netloc or "relay") / name
