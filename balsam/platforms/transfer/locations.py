"""Transfer locations: what ``transfers.transfer_locations`` values in settings.yml may say (pure)."""

from __future__ import annotations

from dataclasses import dataclass

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
        from balsam.platforms.transfer.globus import is_endpoint_id, require_sdk

        endpoint = text[len("globus://"):].strip("/")
        if not is_endpoint_id(endpoint):
            raise ConfigError(f"transfer location {alias!r}: {url!r}: expected globus://ENDPOINT_UUID")
        try:
            require_sdk()
        except ConfigError as exc:
            raise ConfigError(f"transfer location {alias!r} is {url}: {exc}") from None
        return Location("globus", endpoint)
    raise ConfigError(f"transfer location {alias!r}: {url!r} is not one of local, rsync://[user@]host, globus://ENDPOINT_UUID")
