"""A site on disk: the directory layout, this host's name, and how a site is found.

A site is a directory::

    settings.yml        the typed settings (balsam.settings)
    job-template.sh     the batch script template the scheduler service renders
    data/               job workdirs (jobs name them relative to here)
    log/                agent and launcher logs
    qsubmit/            rendered batch scripts
    .balsam/            state: site.db (SQLite, WAL), db.lock, host, agent pid, the API address (api.json) and secret (api.secret)

A site is found from an explicit path (``--site``), then ``BALSAM_SITE_PATH``, then by walking up from the
working directory.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from balsam.exceptions import SiteNotFound, ValidationError

STATE_DIR = ".balsam"


def check_site_key(key: Union[str, "os.PathLike[str]"], what: str = "site") -> str:
    """A site's name or path as given, as text, if a file system and the site registry can hold it: a NUL
    character, or text that is not Unicode (a lone surrogate, as Python spells bytes that are not UTF-8), is
    refused here in one line (ValidationError) instead of failing deep in ``os.stat`` or SQLite."""
    text = os.fspath(key)
    if not isinstance(text, str):
        raise ValidationError(f"{what} {text!r}: give a name or a text path, not bytes")
    if "\x00" in text:
        raise ValidationError(f"{what} {text[:60]!r} contains a NUL character, which no name or path can hold")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise ValidationError(f"{what} {text[:60]!r} is not valid Unicode text (bytes that are not UTF-8?)") from None
    return text


def this_host() -> str:
    """The name this host records as a site's home host."""
    return os.environ.get("BALSAM_HOSTNAME") or socket.gethostname()


def balsam_home() -> Path:
    """The per-user folder holding the site registry (``$BALSAM_HOME`` or ``~/.balsam``)."""
    env = os.environ.get("BALSAM_HOME")
    return Path(env).expanduser() if env else Path.home() / ".balsam"


@dataclass(frozen=True)
class SiteLayout:
    """Paths of one site directory. Building one touches nothing on disk."""

    root: Path

    @property
    def settings_path(self) -> Path:
        return self.root / "settings.yml"

    @property
    def job_template_path(self) -> Path:
        return self.root / "job-template.sh"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def qsubmit(self) -> Path:
        return self.root / "qsubmit"

    @property
    def state(self) -> Path:
        return self.root / STATE_DIR

    @property
    def db_path(self) -> Path:
        return self.state / "site.db"

    @property
    def lock_path(self) -> Path:
        return self.state / "db.lock"

    @property
    def host_path(self) -> Path:
        return self.state / "host"

    @property
    def preset_path(self) -> Path:
        """Names the preset the site was created from."""
        return self.state / "preset"

    @property
    def agent_pid_path(self) -> Path:
        """The site agent's PID file (``pid [host]``), present while the agent runs."""
        return self.state / "agent.pid"

    def preset(self) -> Optional[str]:
        """The preset the site was created from, if recorded."""
        try:
            return self.preset_path.read_text().strip() or None
        except OSError:
            return None

    def home_host(self) -> Optional[str]:
        """The host recorded as the site's home (the only one that may open its DB)."""
        try:
            return self.host_path.read_text().strip() or None
        except OSError:
            return None

    def is_site(self) -> bool:
        """True when the directory holds a site DB (or a ``db recover`` killed as it swapped its rebuilt DB in left one
        that opening the site puts in place)."""
        if self.db_path.is_file():
            return True
        from balsam.db import swap

        return swap.pending(self.db_path) is not None


def find_site_root(explicit: Optional[Union[str, Path]] = None, cwd: Optional[Path] = None) -> Optional[Path]:
    """Find the site directory: ``explicit``, then ``$BALSAM_SITE_PATH``, then walk up from ``cwd``.

    Returns None when no site is found by the environment or the working directory. An explicit path or
    ``BALSAM_SITE_PATH`` that is not a site is an error, since the user asked for it by name.
    """
    for origin, value in (("--site", explicit), ("BALSAM_SITE_PATH", os.environ.get("BALSAM_SITE_PATH"))):
        if value:
            layout = SiteLayout(Path(check_site_key(value, origin)).expanduser().resolve())
            if not layout.is_site():
                raise SiteNotFound(f"{origin}={value}: not a Balsam site (no {STATE_DIR}/site.db there)")
            return layout.root
    try:
        here = (cwd or Path.cwd()).resolve()
    except FileNotFoundError:
        return None  # the working directory was removed: it is inside no site
    for candidate in (here, *here.parents):
        if SiteLayout(candidate).is_site():
            return candidate
    return None
