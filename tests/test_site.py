"""Sites on disk (init, registry, discovery, ownership) and settings.yml validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from balsam.exceptions import ConfigError, ForeignHostError, SiteError, SiteNotFound
from balsam.settings import load_settings, settings_from_dict
from balsam.site import Registry, SiteLayout, find_site_root, init_site


def test_init_creates_the_layout_and_registers(tmp_path: Path) -> None:
    entry = init_site(tmp_path / "s", name="alpha")
    layout = SiteLayout(tmp_path / "s")
    assert layout.is_site() and layout.data.is_dir() and layout.log.is_dir() and layout.qsubmit.is_dir()
    assert (layout.state.stat().st_mode & 0o777) == 0o700
    assert load_settings(layout.settings_path).scheduler.type == "local"
    assert Registry().lookup("alpha").path == str(tmp_path / "s") == entry.path
    assert Registry().lookup(entry.id).name == "alpha"


def test_init_refusals_leave_nothing_behind(tmp_path: Path) -> None:
    init_site(tmp_path / "s", name="alpha")
    with pytest.raises(SiteError, match="already a Balsam site"):
        init_site(tmp_path / "s")
    with pytest.raises(SiteError, match="a site named 'alpha' already exists"):
        init_site(tmp_path / "t", name="alpha")
    assert not (tmp_path / "t").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(SiteError, match="not an empty directory"):
        init_site(tmp_path / "full")
    with pytest.raises(ConfigError, match="invalid site name"):
        init_site(tmp_path / "u", name="bad name!")
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        init_site(tmp_path / "v", preset="nope")
    assert [e.name for e in Registry().entries()] == ["alpha"]


def test_site_is_found_from_env_then_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_site(tmp_path / "s", name="alpha")
    (tmp_path / "s" / "data" / "deep").mkdir()
    assert find_site_root(cwd=tmp_path / "s" / "data" / "deep") == tmp_path / "s"
    assert find_site_root(cwd=tmp_path) is None
    monkeypatch.setenv("BALSAM_SITE_PATH", str(tmp_path / "nowhere"))
    with pytest.raises(SiteNotFound, match="BALSAM_SITE_PATH=.*not a Balsam site"):
        find_site_root()


def test_registry_lookup_errors_name_the_known_sites(tmp_path: Path) -> None:
    init_site(tmp_path / "s", name="alpha")
    with pytest.raises(SiteNotFound, match=r"no site 'beta' \(known sites: alpha\)"):
        Registry().lookup("beta")


def test_a_site_of_another_host_is_never_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from balsam._api import sites
    from balsam.api import Job

    monkeypatch.setenv("BALSAM_HOSTNAME", "login1")
    init_site(tmp_path / "s", name="alpha")
    monkeypatch.setenv("BALSAM_HOSTNAME", "login2")
    sites.reset()
    from balsam.exceptions import ServiceError

    # The directory is visible here: reached through the agent's API, which is not running (SQLite stays closed).
    with pytest.raises(ServiceError, match="belongs to host 'login1' and this is 'login2'.*agent.*not running.*balsam site start"):
        Job.objects.count()
    with pytest.raises(ServiceError, match="belongs to host 'login1' and this is 'login2'.*agent.*not running.*balsam site start"):
        sites.resolve("alpha")
    (tmp_path / "s").rename(tmp_path / "gone")
    sites.reset()
    with pytest.raises(ForeignHostError, match="lives on 'login1'"):
        Job.objects.count()
    with pytest.raises(ForeignHostError, match="site 'alpha' lives on host 'login1'"):
        sites.resolve("alpha")


@pytest.mark.parametrize("data,message", [
    ({"launcher": {"idle_ttl": 3}}, "unknown setting launcher.idle_ttl"),
    ({"bogus": 1}, "unknown setting bogus"),
    ({"launcher": {"idle_ttl_s": "soon"}}, "launcher.idle_ttl_s: expected a number, got 'soon'"),
    ({"processing": {"num_workers": 1.5}}, "processing.num_workers: expected an integer"),
    ({"scheduler": {"sync_period_s": 0}}, "scheduler.sync_period_s: must be positive"),
    ({"scheduler": {"allowed_queues": {"q": {"max_nodes": -1}}}}, "allowed_queues.q.max_nodes: must not be negative"),
    ({"elastic_queue": "x"}, "elastic_queue: expected a list"),
    ([1, 2], "expected a mapping at the top level"),
])
def test_settings_errors_name_the_key(data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_dict(data)


def test_settings_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "settings.yml"
    bad.write_text("launcher:\n  idle_ttl_s: [1\n")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line \d+, column \d+\)"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="no such settings file"):
        load_settings(tmp_path / "missing.yml")


DEEP_SETTINGS = {
    "flow list": ("launcher:\n  idle_ttl_s: " + "[" * 100_000 + "]" * 100_000 + "\n", 2),
    "flow map": ("launcher: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", 1),
    "block list": ("launcher:\n" + "".join("  " * (i + 1) + "-\n" for i in range(3000)), 33),
    "block map": ("".join("  " * i + f"k{i}:\n" for i in range(3000)), 32),
}


@pytest.mark.parametrize("yaml_kind", ["libyaml", "pure-python"])
@pytest.mark.parametrize("name", sorted(DEEP_SETTINGS))
def test_settings_nested_past_the_bound_are_refused_in_one_line_naming_the_line(tmp_path: Path, name: str, yaml_kind: str,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A settings.yml nested deeper than any settings need (lists or maps, flow or block) is refused as the parser
    reaches the bound, naming the line; before, PyYAML read and built it all (over a second for "[" * 5000) and
    failed with a RecursionError. Settings nested as deep as allowed still load."""
    import yaml

    from balsam.settings import MAX_SETTINGS_DEPTH

    if yaml_kind == "pure-python":  # as in the zipapp, which carries PyYAML without libyaml
        monkeypatch.delattr(yaml, "CSafeLoader", raising=False)
        init_site(tmp_path / "site", name="pure", preset="local")
        assert load_settings(SiteLayout(tmp_path / "site").settings_path).scheduler.type == "local"
    text, line = DEEP_SETTINGS[name]
    path = tmp_path / "settings.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    said = str(info.value)
    assert said == (f"{path}: not valid YAML: nested too deeply (more than {MAX_SETTINGS_DEPTH} levels at line {line}; "
                    "settings nest a few)")
    # As deep as allowed (the document, launcher, the lists and the number): read, and refused for its value alone.
    path.write_text("launcher:\n  idle_ttl_s: " + "[" * (MAX_SETTINGS_DEPTH - 3) + "1" + "]" * (MAX_SETTINGS_DEPTH - 3) + "\n")
    with pytest.raises(ConfigError, match="idle_ttl_s"):
        load_settings(path)


@pytest.mark.parametrize("yaml_kind", ["libyaml", "pure-python"])
def test_settings_that_expand_to_a_billion_values_are_refused_at_once(tmp_path: Path, yaml_kind: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Nine anchors of ten aliases each ("billion laughs") in a value of settings.yml: the refusal of the value wrote
    it out to name it, and 'balsam site sync' (and the agent's start) hung, growing, for as long as it was let run.
    Anchors and aliases that expand to a few values still load."""
    import yaml

    from balsam.settings import MAX_SETTINGS_VALUES

    if yaml_kind == "pure-python":
        monkeypatch.delattr(yaml, "CSafeLoader", raising=False)
    levels = ['&a0 ["x","x","x","x","x","x","x","x","x","x"]'] + [
        f"&a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = tmp_path / "settings.yml"
    path.write_text("title: [" + ", ".join(levels) + "]\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value) == (f"{path}: line 1 expands to more than {MAX_SETTINGS_VALUES:,} values (YAML aliases referring "
                               "to aliases?); write the values out")
    path.write_text("scheduler:\n  allowed_queues: &q {debug: {max_nodes: 2}}\nelastic_queue: []\ntitle: t\n"
                    "queue_maintainer: {num_queued_jobs: 1}\nprocessing: &p {num_workers: 2}\n")
    assert load_settings(path).processing.num_workers == 2


def test_a_bad_value_is_named_in_a_few_characters_whatever_its_size() -> None:
    shared: list = ["x"] * 10
    for _ in range(8):
        shared = [shared] * 10  # 10**9 values, as YAML aliases build them: shared, never copied
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"title": shared}, "settings.yml")
    assert len(str(info.value)) < 200


def test_settings_defaults_and_sections() -> None:
    s = settings_from_dict({"elastic_queue": [{"queue": "debug", "max_num_nodes": 4}], "queue_maintainer": {"num_queued_jobs": 2}})
    assert s.elastic_queue[0].max_num_nodes == 4 and s.queue_maintainer is not None and s.queue_maintainer.num_queued_jobs == 2
    assert s.launcher.mpi_launcher == "auto" and s.session.expiry_s == 300


def test_presets_and_their_sample_settings() -> None:
    from balsam.site.presets import preset_rows, sample_settings

    rows = {name: (machine, scheduler, mpi) for name, machine, scheduler, mpi in preset_rows()}
    assert rows["local"][1] == "local" and all(rows[n][1] and rows[n][2] for n in rows)
    assert settings_from_dict(__import__("yaml").safe_load(sample_settings("local"))).scheduler.type == "local"
    with pytest.raises(ConfigError, match="unknown preset 'nope' \\(available: .*local"):
        sample_settings("nope")


def test_transfer_locations_are_checked_with_one_line_naming_the_alias() -> None:
    from balsam.site import transfer_location_notes

    ok = settings_from_dict({"transfers": {"transfer_locations": {"here": "local", "peer": "rsync://me@host"}}})
    assert transfer_location_notes(ok) == []
    bad = settings_from_dict({"transfers": {"transfer_locations": {"peer": "rsync://host/with/path"}}})
    with pytest.raises(ConfigError, match="transfer location 'peer': .*expected rsync://\\[user@\\]host \\(no path\\)"):
        transfer_location_notes(bad)


def test_the_sites_a_call_names_none_of_follow_every_change_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Job(workdir, "AppName")`` finds its site without reading the registry for every job (a script making
    100,000 jobs), yet a new site, another working directory or another BALSAM_SITE_PATH counts at the next call."""
    import os
    import subprocess
    import sys

    from balsam._api import sites

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    monkeypatch.chdir(outside)
    init_site(tmp_path / "a", name="alpha")
    assert [s.name for s in sites.default_scope()] == ["alpha"]
    assert sites.default_scope() == sites.default_scope()  # remembered: the same answer
    # A site made by another process is seen at once (the registry changed), not a second later.
    subprocess.run([sys.executable, "-c", f"from balsam.site import init_site; init_site({str(tmp_path / 'b')!r}, name='beta')"],
                   check=True, env=dict(os.environ))
    assert sorted(s.name for s in sites.default_scope()) == ["alpha", "beta"]
    monkeypatch.chdir(tmp_path / "b" / "data")  # inside a site: that site only
    assert [s.name for s in sites.default_scope()] == ["beta"]
    monkeypatch.chdir(outside)
    monkeypatch.setenv("BALSAM_SITE_PATH", str(tmp_path / "a"))
    assert [s.name for s in sites.default_scope()] == ["alpha"]
