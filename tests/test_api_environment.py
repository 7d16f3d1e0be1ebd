"""What this process runs with, from the API (balsam._api.environment, behind ``balsam which``): how a site is
reached and why (its DB on the home host; its agent's HTTP API from another host, with the site's id and name as the
agent answers them), where Balsam runs from, and the MPI and GPUs a launcher started here would use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from balsam.db.schema import CURRENT_VERSION

BACKENDS = ("local", "http")


def test_how_a_site_is_reached_and_why(site: Any, backend: str) -> None:
    from balsam._api.environment import site_backend
    from balsam.site import this_host

    info = site_backend(site.path)
    assert (info["backend"], info["home_host"], info["preset"]) == (backend, site.host, "local")
    assert info["db"] == str(site.path / ".balsam" / "site.db") and info["code_schema_version"] == CURRENT_VERSION
    if backend == "http":  # from another host: the agent answers for the site
        assert f"this host ({this_host()}) is not the site's home host ({site.host})" in info["backend_reason"]
        assert (info["id"], info["name"]) == (site.id, "test-site") and info["api_url"].startswith("http") and "api_error" not in info
    else:
        assert info["backend_reason"] == f"this host ({this_host()}) is the site's home host: the DB is opened directly"
        assert info["schema_version"] == CURRENT_VERSION and "api_url" not in info


def test_where_balsam_runs_from() -> None:
    import balsam
    from balsam._api.environment import DEPENDENCIES, running_from

    found = running_from()
    assert found["kind"] in ("source tree", "installed") and found["path"] == str(Path(balsam.__file__).resolve().parent)
    assert set(found["dependencies"]) == set(DEPENDENCIES) and found["dependencies"]["click"] not in ("", "missing")


def test_what_a_launcher_here_would_use(tmp_path: Path) -> None:
    from balsam._api.environment import node_hardware

    found = node_hardware(None, {})
    assert "mpi" in found and "gpus" in found and "warning" not in found
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "settings.yml").write_text("launcher: {no_such_key: 1}\n")
    assert "no_such_key" in node_hardware(broken, {})["warning"]
