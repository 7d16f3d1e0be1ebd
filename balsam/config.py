"""``SiteConfig``: one site's settings and paths, as Balsam 0.7's ``balsam.config.SiteConfig`` offers them.

::

    from balsam.config import SiteConfig

    cfg = SiteConfig()               # the site around the working directory (or BALSAM_SITE_PATH)
    cfg.settings.launcher.idle_ttl_s
    cfg.data_path / "demo" / "hello"

``from balsam.api import site_config`` gives the same object for the current site, or None outside a site.
Constructing one reads ``settings.yml`` (validated once) and nothing else; the site DB is opened only when
``site_id`` is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from balsam.exceptions import SiteNotFound
from balsam.settings import SiteSettings, load_settings
from balsam.site import SiteLayout, find_site_root


class SiteConfig:
    """A site's typed settings (``.settings``) and its paths (``.site_path``, ``.data_path``, ``.log_path``, ...)."""

    def __init__(self, site_path: Optional[Union[str, Path]] = None, settings: Optional[SiteSettings] = None) -> None:
        root = find_site_root(site_path)
        if root is None:
            raise SiteNotFound("no Balsam site here: pass site_path=, set BALSAM_SITE_PATH, or run inside a site directory")
        self.site_path: Path = root
        self._layout = SiteLayout(root)
        self.settings: SiteSettings = settings if settings is not None else load_settings(self._layout.settings_path)

    @property
    def settings_path(self) -> Path:
        """``settings.yml``."""
        return self._layout.settings_path

    @property
    def data_path(self) -> Path:
        """Where job workdirs live (``data/``)."""
        return self._layout.data

    @property
    def log_path(self) -> Path:
        """Agent and launcher logs (``log/``)."""
        return self._layout.log

    @property
    def job_template_path(self) -> Path:
        """The batch script template (``scheduler.job_template``, relative to the site)."""
        return self.site_path / self.settings.scheduler.job_template

    @property
    def qsubmit_path(self) -> Path:
        """Rendered batch scripts (``qsubmit/``)."""
        return self._layout.qsubmit

    @property
    def site_id(self) -> int:
        """The site's id (the prefix of every id it hands out)."""
        from balsam._api import sites

        return sites.ref_for_root(self.site_path).id

    @property
    def client(self) -> "SiteClient":
        """The API models for code that should not import ``balsam.api`` (Balsam 0.7's ``SiteConfig().client.Job``)."""
        return SiteClient(self.site_path)

    def __repr__(self) -> str:
        return f"SiteConfig(site_path={str(self.site_path)!r})"


class SiteClient:
    """``SiteConfig().client``: ``Job``, ``BatchJob``, ``App``, ``Site``, ``EventLog``, ``TransferItem`` and ``Session``,
    the same classes as ``balsam.api``'s (queries reach the sites ``balsam.api`` reaches from here)."""

    def __init__(self, site_path: Path) -> None:
        self.site_path = site_path

    def __getattr__(self, name: str) -> Any:
        if name in ("Job", "BatchJob", "App", "Site", "EventLog", "TransferItem", "Session"):
            import balsam.api

            return getattr(balsam.api, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"SiteClient(site_path={str(self.site_path)!r})"


def current_site_config() -> Optional[SiteConfig]:
    """The SiteConfig of the site around the working directory (or BALSAM_SITE_PATH), or None."""
    return SiteConfig() if find_site_root() is not None else None


__all__ = ["SiteClient", "SiteConfig", "current_site_config"]
