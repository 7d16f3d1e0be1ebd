"""The per-user site registry (``~/.balsam/sites.json``, or ``$BALSAM_HOME/sites.json``): site names to paths,
ids and home hosts, so ``site = "my-site"`` resolves from anywhere on the machine. A JSON file under a lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Union

from balsam.exceptions import ConfigError, SiteError, SiteNotFound
from balsam.site.layout import SiteLayout, balsam_home, check_site_key

SITE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass
class RegistryEntry:
    """One registered site."""

    name: str
    id: int
    path: str
    host: str
    uuid: str

    def to_dict(self) -> Dict[str, object]:
        return {"id": self.id, "path": self.path, "host": self.host, "uuid": self.uuid}


class Registry:
    """The per-user map of site names to directories, ids and home hosts (a JSON file under a lock)."""

    def __init__(self, home: Optional[Path] = None) -> None:
        self.home = home if home is not None else balsam_home()
        self.path = self.home / "sites.json"

    def _read(self) -> Dict[str, object]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"sites": {}}
        except (OSError, ValueError, RecursionError) as exc:
            raise SiteError(f"{self.path}: unreadable site registry ({exc}); fix or remove it") from None
        if not isinstance(data, dict) or not isinstance(data.get("sites"), dict):
            raise SiteError(f"{self.path}: malformed site registry; fix or remove it")
        for name, v in data["sites"].items():
            if not isinstance(v, dict) or type(v.get("id")) is not int or not isinstance(v.get("path"), str) or "\0" in v["path"]:
                raise SiteError(f"{self.path}: malformed entry for site {name!r} (wants an integer id and a path); fix or remove it")
        return data

    def entries(self) -> List[RegistryEntry]:
        """Every registered site, by id."""
        sites = self._read()["sites"]
        assert isinstance(sites, dict)
        out = [RegistryEntry(name=name, id=v["id"], path=v["path"], host=str(v.get("host", "")), uuid=str(v.get("uuid", "")))
               for name, v in sites.items()]
        return sorted(out, key=lambda e: e.id)

    @contextmanager
    def _locked(self) -> Iterator[Dict[str, object]]:
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)  # tokens live here too (each file 0600 besides)
        with open(self.home / "sites.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            yield data
            tmp = self.path.with_name(f".sites.json.{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)

    def register(self, name: str, path: Path, host: str, site_uuid: str, site_id: Optional[int] = None) -> RegistryEntry:
        """Add a site; its name must be free (a stale entry whose directory is gone is replaced)."""
        with self._locked() as data:
            sites = data["sites"]
            assert isinstance(sites, dict)
            old = sites.get(name)
            if old is not None and old["path"] != str(path) and SiteLayout(Path(old["path"])).is_site():
                raise SiteError(f"a site named {name!r} already exists at {old['path']}; choose another name (-n)")
            if site_id is None:
                # Random, so sites made on other machines that later meet at a relay almost surely differ
                # (every id the site hands out carries it: balsam.db.ids).
                from balsam.db.ids import draw_site_id

                site_id = draw_site_id({int(v["id"]) for n, v in sites.items() if n != name})
            sites[name] = {"id": site_id, "path": str(path), "host": host, "uuid": site_uuid}
            return RegistryEntry(name=name, id=site_id, path=str(path), host=host, uuid=site_uuid)

    def unregister(self, name: str) -> None:
        """Remove a site from the registry (its directory is untouched)."""
        with self._locked() as data:
            sites = data["sites"]
            assert isinstance(sites, dict)
            sites.pop(name, None)

    def update(self, name: str, *, new_name: Optional[str] = None, path: Optional[Path] = None, host: Optional[str] = None,
               site_id: Optional[int] = None) -> None:
        """Rename, move or re-home a registered site, or record its new id (after a migration gave it one)."""
        with self._locked() as data:
            sites = data["sites"]
            assert isinstance(sites, dict)
            if name not in sites:
                raise SiteNotFound(f"no registered site named {name!r}")
            entry = dict(sites[name])
            if path is not None:
                entry["path"] = str(path)
            if host is not None:
                entry["host"] = host
            if site_id is not None:
                entry["id"] = int(site_id)
            if new_name is not None and new_name != name:
                if new_name in sites:
                    raise SiteError(f"a site named {new_name!r} already exists")
                del sites[name]
                name = new_name
            sites[name] = entry

    def lookup(self, key: Union[str, int]) -> RegistryEntry:
        """Find a site by name, id, or path."""
        if isinstance(key, str):
            check_site_key(key)
        entries = self.entries()
        for e in entries:
            if e.name == key or (isinstance(key, int) and e.id == key) or (isinstance(key, str) and key.isdigit() and e.id == int(key)):
                return e
        if isinstance(key, str):
            resolved = str(Path(key).expanduser().resolve())
            for e in entries:
                if e.path == resolved:
                    return e
        known = ", ".join(e.name for e in entries) or "none registered"
        raise SiteNotFound(f"no site {key!r} (known sites: {known})")

    def by_path(self, root: Path) -> Optional[RegistryEntry]:
        """The entry for a site directory, if registered."""
        for e in self.entries():
            if e.path == str(root):
                return e
        return None


def validate_site_name(name: str) -> str:
    """Check a site name: letters, digits, ``_ . -``; at most 100 characters."""
    if not SITE_NAME_RE.match(name):
        raise ConfigError(f"invalid site name {name!r}: use letters, digits, '_', '.', '-' (starting with a letter or digit)")
    return name


def new_site_uuid() -> str:
    """A random identity for a site, stable across renames and moves (used by sync)."""
    return uuid.uuid4().hex
