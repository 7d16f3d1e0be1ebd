"""What this process runs with, for ``balsam which`` and ``balsam site status``: the Balsam it runs (a zipapp, a
source tree or an installed package, with its dependencies), how it reaches a site (its SQLite DB on the home host,
the site agent's HTTP API elsewhere) and why, and the MPI and GPUs a launcher started here would use.

::

    from balsam._api import environment

    environment.site_backend(Path("~/sites/my-site").expanduser())["backend_reason"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

__all__ = ["installed_versions", "node_hardware", "running_from", "site_backend"]

DEPENDENCIES = ("click", "jinja2", "markupsafe", "pyyaml", "psutil", "starlette", "uvicorn", "h11", "wsproto")
"""Balsam's dependencies whose versions ``balsam which`` shows."""


def running_from() -> Dict[str, Any]:
    """Where this Balsam's code comes from: ``kind`` (zipapp, source tree, installed), ``path``, the zipapp's
    ``build`` hash, and the ``dependencies``' versions."""
    import balsam
    from balsam.runtime import zipapp_path

    archive = zipapp_path()
    if archive is not None:
        from balsam._zipapp import build_info

        info = build_info(archive)
        deps = {k: v for k, v in info.get("dependencies", {}).items() if k != "balsam"}
        return {"kind": "zipapp", "path": str(archive), "build": info.get("build_hash", "?"), "dependencies": deps}
    origin = Path(balsam.__file__).resolve().parent
    kind = "installed" if "site-packages" in origin.parts or "dist-packages" in origin.parts else "source tree"
    return {"kind": kind, "path": str(origin), "dependencies": installed_versions()}


def installed_versions() -> Dict[str, str]:
    """Versions of Balsam's dependencies in this Python ('missing' where absent)."""
    import importlib.metadata as md

    out = {}
    for name in DEPENDENCIES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "missing"
    return out


def site_backend(root: Path) -> Dict[str, Any]:
    """How this process reaches the site in directory ``root`` and why: ``backend`` ("local": its SQLite DB;
    "http": its agent's API, at ``api_url``) and ``backend_reason``, with the site's path, home host, preset, DB
    and schema versions. Away from the home host the site's id and name come from its agent (``api_error`` when
    the agent does not answer); on it, from the DB (with its size and pending migrations)."""
    from balsam._api.sites import process_host
    from balsam.exceptions import BalsamError
    from balsam.site import SiteLayout, code_schema_version, store_report

    layout = SiteLayout(root)
    home = layout.home_host()
    info: Dict[str, Any] = {"path": str(root), "home_host": home, "preset": layout.preset(), "db": str(layout.db_path),
                            "code_schema_version": code_schema_version()}
    if home and home != process_host():
        info["backend"] = "http"
        info["backend_reason"] = (f"this host ({process_host()}) is not the site's home host ({home}): its DB can only be opened "
                                  "there, so the API and CLI go through the site agent's HTTP API")
        info["note"] = f"the site belongs to host {home!r}: its DB can only be opened there"
        from balsam.http.serve import read_address

        try:
            address = read_address(layout.state)
            info["api_url"] = address.get("url") or f"{address.get('host')}:{address.get('port')}"
            from balsam.http.client import HttpBackend

            row = HttpBackend.for_site(root, retry_s=2).site_row(("id", "name"))
            info.update(id=row[0], name=row[1])
        except BalsamError as e:
            info["api_error"] = str(e)
        return info
    info["backend"] = "local"
    info["backend_reason"] = f"this host ({process_host()}) is the site's home host: the DB is opened directly"
    info.update(store_report(root, process_host()))
    return info


def node_hardware(root: Optional[Path], env: Mapping[str, str]) -> Dict[str, str]:
    """What a launcher started here, in environment ``env``, would use: the MPI (``mpi``), the GPUs (``gpus``) and
    any ``warning`` about the settings (the site ``root``'s, else the defaults), found the way the launcher finds
    them."""
    from balsam.exceptions import BalsamError
    from balsam.settings import LauncherSettings, load_settings
    from balsam.site.hardware import resolve_launcher_settings

    ls = LauncherSettings()
    if root is not None:
        try:
            ls = load_settings(root / "settings.yml").launcher
        except BalsamError as exc:
            return {"warning": str(exc)}
    resolved, notes = resolve_launcher_settings(ls, env)
    out: Dict[str, str] = {}
    for note in notes:
        key, _, text = note.partition(": ")
        out[{"MPI": "mpi", "GPUs": "gpus"}.get(key, "warning")] = text
    if "mpi" not in out:
        exe = resolved.mpi_executable or "its usual program"
        out["mpi"] = f"{resolved.mpi_launcher} (launcher.mpi_launcher in settings.yml, as {exe})"
    if "gpus" not in out:
        n = resolved.gpus_per_node or len(resolved.gpu_ids)
        out["gpus"] = f"{n} per node (launcher settings); jobs see {resolved.gpu_env}"
    return out
