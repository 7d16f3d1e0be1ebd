"""``balsam which``: the site and why, its DB and preset, and where Balsam runs from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from balsam import __version__
from balsam.db.schema import CURRENT_VERSION
from balsam.site import Registry
from tests.cli_helpers import fails, ok


def test_inside_a_site(site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (site.path / "data" / "sub").mkdir(parents=True)
    monkeypatch.chdir(site.path / "data" / "sub")
    out = ok("which").stdout
    assert f"Site:       test-site (id {site.id}) at {site.path}" in out
    assert f"Found by:   the working directory ({site.path / 'data' / 'sub'})" in out
    assert f"(schema {CURRENT_VERSION}; this Balsam: {CURRENT_VERSION}" in out and "Preset:     local" in out
    assert "Backend:    local: this host" in out
    assert f"Balsam:     {__version__} (source tree:" in out or f"Balsam:     {__version__} (installed:" in out
    data = json.loads(ok("which", "--json").stdout)
    assert data["site"]["name"] == "test-site" and data["site"]["schema_version"] == CURRENT_VERSION and data["balsam"]["version"] == __version__


def test_found_by_environment_and_option(site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALSAM_SITE_PATH", str(site.path))
    assert json.loads(ok("which", "--json").stdout)["found_by"] == f"BALSAM_SITE_PATH={site.path}"
    monkeypatch.delenv("BALSAM_SITE_PATH")
    monkeypatch.chdir(site.path / "data")
    assert json.loads(ok("which", "--site", "test-site", "--json").stdout)["found_by"] == "--site test-site (registered as 'test-site')"
    assert json.loads(ok("which", "--site", str(site.path), "--json").stdout)["site"]["id"] == site.id
    assert "no site 'nope'" in fails("which", "--site", "nope")


def test_no_site(tmp_path: Path) -> None:
    out = ok("which").stdout
    assert out.startswith("Site:       none: not inside a site") and "Registry:" in out


def test_site_of_another_host(tmp_path: Path, site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALSAM_HOSTNAME", "elsewhere")
    data = json.loads(ok("which", "--site", str(site.path), "--json").stdout)
    assert "can only be opened there" in data["site"]["note"] and "schema_version" not in data["site"]
    assert data["site"]["backend"] == "http" and "balsam site start" in data["site"]["api_error"]
    assert Registry().lookup("test-site")
    out = ok("which", "--site", str(site.path)).stdout
    assert "Backend:    http: this host (elsewhere) is not the site's home host" in out and "not running" in out
