"""The machine presets a site starts from (``balsam site init --preset``, ``site presets``, ``site
sample-settings``), as the packaged files describe them (:mod:`balsam.platforms.presets`)."""

from __future__ import annotations

from typing import List, Tuple


def preset_rows() -> List[Tuple[str, str, str, str]]:
    """(name, machine, scheduler, MPI launcher) of every packaged preset, by name."""
    from balsam.platforms.presets import describe_presets

    return [(p.name, p.title, p.scheduler, p.mpi_launcher) for p in describe_presets()]


def sample_settings(preset: str) -> str:
    """The settings.yml a new site of ``preset`` starts with (ConfigError naming the presets for an unknown one)."""
    from balsam.platforms.presets import site_settings_text

    return site_settings_text(preset)


__all__ = ["preset_rows", "sample_settings"]
