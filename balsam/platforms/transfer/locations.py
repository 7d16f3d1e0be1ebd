"""Transfer locations: what ``transfers.transfer_locations`` values in settings.yml may say (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping

from balsam.exceptions import ConfigError


@dataclass(frozen=True)
class Location:
    """Where an alias points: a protocol and its endpoint (a host for rsync, a UUID for Globus, '' here)."""

    protocol: str
    endpoint: str = ""


def parse_location(alias: str, url: str) -> Location:
    """A ``transfer_locations`` value as a :class:`Location`; a clear error for anything else."""
    text = str(url).strip()
    if text in ("local", "cp://", "cp", "file://"):
        return Location("local")
    if text.startswith("rsync://"):
        host = text[len("rsync://"):].rstrip("/")
        if host and ("/" in host or " " in host):
            raise ConfigError(f"transfer location {alias!r}: {url!r}: expected rsync://[user@]host (no path)")
        return Location("rsync", host)
    if text.startswith("globus://"):
        from balsam.platforms.transfer.globus import is_endpoint_id

        endpoint = text[len("globus://"):].strip("/")
        if not is_endpoint_id(endpoint):
            raise ConfigError(f"transfer location {alias!r}: {url!r}: expected globus://ENDPOINT_UUID")
        return Location("globus", endpoint)
    raise ConfigError(f"transfer location {alias!r}: {url!r} is not one of local, rsync://[user@]host, globus://ENDPOINT_UUID")


def missing_extra_notes(locations: Mapping[str, str]) -> List[str]:
    """One line per location this host cannot serve for want of an optional extra (globus:// without globus-sdk).

    Such a location does not stop ``site sync`` or the agent: jobs that use it are refused at creation naming the
    extra (see :mod:`balsam.db.transfers`), and the rest of the site works."""
    from balsam.platforms.transfer.globus import EXTRA_HINT, sdk_installed

    if sdk_installed():
        return []
    return [f"transfer location {alias!r} is {url}: {EXTRA_HINT}; jobs using it are refused until then"
            for alias, url in sorted(locations.items()) if str(url).strip().startswith("globus://")]
