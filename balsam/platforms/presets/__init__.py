"""Machine presets: a ``settings.yml`` and a ``job-template.sh`` per machine, read as package resources.

Resources load through ``importlib.resources`` so presets work from an installed package and from the
zipapp alike. ``balsam site init --preset NAME`` copies both files into the new site; ``balsam site presets``
lists :func:`describe_presets`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any, Dict, List

from balsam.exceptions import ConfigError

PRESET_FILES = ("settings.yml", "job-template.sh")


@dataclass(frozen=True)
class PresetInfo:
    """What ``balsam site presets`` shows about one preset."""

    name: str
    title: str
    scheduler: str
    mpi_launcher: str
    node: str


def list_presets() -> List[str]:
    """Names of the presets shipped with Balsam."""
    root = resources.files(__name__)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_") and (p / "settings.yml").is_file())


def read_preset_file(preset: str, filename: str) -> str:
    """The text of one file of a preset."""
    if preset not in list_presets():
        raise ConfigError(f"unknown preset {preset!r} (available: {', '.join(list_presets())})")
    if filename not in PRESET_FILES:
        raise ConfigError(f"a preset has no file {filename!r} (files: {', '.join(PRESET_FILES)})")
    return (resources.files(__name__) / preset / filename).read_text()


def preset_data(preset: str) -> Dict[str, Any]:
    """A preset's settings.yml as plain data (not yet validated into settings)."""
    import yaml  # deferred: only commands that look at presets pay for the import

    data = yaml.safe_load(read_preset_file(preset, "settings.yml"))
    if not isinstance(data, dict):
        raise ConfigError(f"preset {preset}/settings.yml: expected a mapping at the top level")
    return data


def describe_presets() -> List[PresetInfo]:
    """Every preset's name, title (the machine), scheduler, MPI launcher and node adapter, by name."""
    out = []
    for name in list_presets():
        data = preset_data(name)
        scheduler = data.get("scheduler") or {}
        launcher = data.get("launcher") or {}
        out.append(
            PresetInfo(
                name=name,
                title=str(data.get("title", name)),
                scheduler=str(scheduler.get("type", "local")),
                mpi_launcher=str(launcher.get("mpi_launcher", "mpiexec")),
                node=str(launcher.get("node", "local")),
            )
        )
    return out
