"""Machine presets: a ``settings.yml`` and a ``job-template.sh`` per machine, read as package resources.

Resources load through ``importlib.resources`` so presets work from an installed package and from the
zipapp alike.
"""

from __future__ import annotations

from importlib import resources
from typing import List

from balsam.exceptions import ConfigError

PRESET_FILES = ("settings.yml", "job-template.sh")


def list_presets() -> List[str]:
    """Names of the presets shipped with Balsam."""
    root = resources.files(__name__)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_") and (p / "settings.yml").is_file())


def read_preset_file(preset: str, filename: str) -> str:
    """The text of one file of a preset."""
    if preset not in list_presets():
        raise ConfigError(f"unknown preset {preset!r} (available: {', '.join(list_presets())})")
    return (resources.files(__name__) / preset / filename).read_text()
