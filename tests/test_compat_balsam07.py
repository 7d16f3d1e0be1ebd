"""Balsam 0.7's documented API and settings, used as its user guide shows them (issue: what 0.7's docs promise).

Each test is written from the documented behaviour: ``from balsam.api import site_config``, ``SiteConfig``,
``site.path`` as a Path, 0.7's settings.yml keys, job templates using ``{{ launcher_cmd }}``, ``wait()``'s result
object, ``--site=active``, ``site = <Site>`` on an app, ``def run(self, *args)``, ``job.delete()``, and the log
names its docs use.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from balsam.api import ApplicationDefinition, Job, Site
from balsam.exceptions import ConfigError
from balsam.settings import load_settings, settings_from_dict
from balsam.site import init_site
from tests.cli_helpers import ok

# The settings.yml keys of Balsam 0.7's documentation and its default site files.
BALSAM07_SETTINGS = """
title: "Generic MPI (local)"
logging:
  level: DEBUG
  format: "%(asctime)s|%(process)d|%(levelname)8s|%(name)s:%(lineno)s] %(message)s"
  datefmt: "%d-%b-%Y %H:%M:%S"
  buffer_num_records: 1024
  flush_period: 30
launcher:
  idle_ttl_sec: 7
  delay_sec: 1
  error_tail_num_lines: 10
  max_concurrent_mpiruns: 990
  compute_node: balsam.platform.compute_node.DefaultNode
  mpi_app_launcher: balsam.platform.app_run.MPICHRun
  local_app_launcher: balsam.platform.app_run.LocalAppRun
  mpirun_allows_node_packing: true
  serial_mode_prefetch_per_rank: 64
  sort_by: long_large_first
  serial_mode_startup_params:
    cpu_affinity: none
scheduler:
  scheduler_class: balsam.platform.scheduler.LocalProcessScheduler
  sync_period: 3
  allowed_queues:
    local:
      max_nodes: 1
      max_queued_jobs: 5
      max_walltime: 60
  allowed_projects: [local]
  optional_batch_job_params: {}
  job_template_path: job-template.sh
processing:
  num_workers: 1
  prefetch_depth: 1000
transfers:
  transfer_locations:
    aps_dtn: globus://08925f04-569f-11e7-bef8-22000b9a448b
  globus_endpoint_id: 9d6d99eb-6d04-11e5-ba46-22000b92c6ec
  globus_endpoint_site_path: /balsam/my-site
  max_concurrent_transfers: 5
  transfer_batch_size: 100
  num_items_query_limit: 2000
  service_period: 5
elastic_queue: null
"""


def test_balsam07_settings_are_read_under_their_new_names() -> None:
    s = settings_from_dict(yaml.safe_load(BALSAM07_SETTINGS))
    assert s.logging.level == "DEBUG"
    assert (s.launcher.idle_ttl_s, s.launcher.poll_period_s, s.launcher.sort_by) == (7.0, 1.0, "long_large_first")
    assert (s.scheduler.type, s.scheduler.sync_period_s, s.scheduler.job_template) == ("local", 3.0, "job-template.sh")
    assert s.processing.prefetch == 1000 and s.elastic_queue == []
    assert (s.transfers.batch_size, s.transfers.period_s, s.transfers.num_items_query_limit) == (100, 5.0, 2000)
    assert s.transfers.globus_endpoint_id == "9d6d99eb-6d04-11e5-ba46-22000b92c6ec"
    assert s.transfers.transfer_locations == {"aps_dtn": "globus://08925f04-569f-11e7-bef8-22000b9a448b"}


def test_elastic_queue_as_one_mapping() -> None:
    data = {"elastic_queue": {"service_period": 60, "submit_project": "datascience", "submit_queue": "debug", "max_num_nodes": 4,
                              "min_wall_time_min": 35, "max_wall_time_min": 360, "wall_time_pad_min": 5}}
    (eq,) = settings_from_dict(data).elastic_queue
    assert (eq.project, eq.queue, eq.period_s, eq.max_num_nodes) == ("datascience", "debug", 60.0, 4)


@pytest.mark.parametrize("data, message", [
    ({"logging": {"level": "LOUD"}}, "logging.level: 'LOUD' is not one of DEBUG"),
    ({"launcher": {"sort_by": "biggest"}}, "launcher.sort_by: 'biggest' is not one of"),
    ({"transfers": {"globus_endpoint_id": "not-a-uuid"}}, "globus_endpoint_id: 'not-a-uuid' is not a Globus endpoint UUID"),
    ({"transfers": {"transfer_locations": {"x": "globus://nope"}}}, "needs globus://ENDPOINT_UUID"),
    ({"launcher": {"idle_ttl_secs": 3}}, "unknown setting launcher.idle_ttl_secs"),
])
def test_bad_balsam07_values_are_one_clear_error(data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_dict(data)


def test_site_sync_notes_each_balsam07_name(site: Any) -> None:
    (site.path / "settings.yml").write_text(BALSAM07_SETTINGS)
    out = ok("site", "sync", "--site", "test-site").stdout
    assert "launcher.idle_ttl_sec is Balsam 0.7's name; read as launcher.idle_ttl_s" in out
    assert "scheduler.job_template_path is Balsam 0.7's name; read as scheduler.job_template" in out
    assert "transfers.transfer_batch_size is Balsam 0.7's name; read as transfers.batch_size" in out
    assert "logging.format is a Balsam 0.7 setting with no effect here" in out
    assert "settings.yml is valid" in out


def test_the_agent_starts_with_balsam07_settings_and_a_globus_location(tmp_path: Path) -> None:
    root = tmp_path / "g-site"
    run = [sys.executable, "-m", "balsam"]
    subprocess.run([*run, "site", "init", str(root), "-n", "g-site"], check=True, capture_output=True, timeout=120)
    (root / "settings.yml").write_text(BALSAM07_SETTINGS)
    try:
        started = subprocess.run([*run, "site", "start", "--site", str(root)], capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr
        status = subprocess.run([*run, "site", "status", "--site", str(root), "--json"], capture_output=True, text=True, timeout=120)
        st = json.loads(status.stdout)
        assert st["running"] and "transfers" in st["services"]
        assert st["logs"]["site agent"].endswith("log/service.log") and list((root / "log").glob("service*.log"))
        listed = json.loads(subprocess.run([*run, "site", "ls", "--json"], capture_output=True, text=True, timeout=120).stdout)
        assert [r["name"] for r in listed if r.get("active")] == ["g-site"]
        jobs = subprocess.run([*run, "job", "ls", "--site", "active", "--json"], capture_output=True, text=True, timeout=120)
        assert jobs.returncode == 0 and json.loads(jobs.stdout) == []
    finally:
        subprocess.run([*run, "site", "stop", "--site", str(root)], capture_output=True, timeout=120)


def test_load_settings_of_a_balsam07_file(tmp_path: Path) -> None:
    path = tmp_path / "settings.yml"
    path.write_text(BALSAM07_SETTINGS)
    assert load_settings(path).launcher.idle_ttl_s == 7.0


# ------------------------------------------------------------------------------------------- job templates
BALSAM07_TEMPLATE = """#!/bin/bash
export BALSAM_SITE_PATH={{balsam_site_path}}
cd $BALSAM_SITE_PATH
export PATH={{balsam_bin}}:$PATH
echo "project={{ project }} queue={{ queue }} nodes={{ num_nodes }} pg={{ pg_bin }}"
{{launcher_cmd}} -j {{job_mode}} -t {{wall_time_min - 2}} {% for k, v in filter_tags.items() %} --tag {{k}}={{v}} {% endfor %} {{partitions}}
"""


def test_a_balsam07_job_template_renders() -> None:
    from balsam.platforms.templates import job_script_context, render_job_script

    ctx = job_script_context(balsam="python3 /opt/balsam.pyz", site_path="/sites/s", batch_job_id=42, job_mode="mpi",
                             wall_time_min=30, num_nodes=3, project="P", queue="Q", filter_tags={"exp": "a"},
                             partitions=["mpi:1", "serial:2:role=w"])
    script = render_job_script(BALSAM07_TEMPLATE, ctx)
    assert "export BALSAM_SITE_PATH=/sites/s\n" in script
    launch = script.strip().splitlines()[-1].split()
    assert launch[:5] == ["python3", "/opt/balsam.pyz", "launcher", "--batch-job-id", "42"]
    assert launch[5:] == ["-j", "mpi", "-t", "28", "--tag", "exp=a", "--part", "mpi:1", "--part", "serial:2:role=w"]
    assert 'project=P queue=Q nodes=3 pg="' in script


# ------------------------------------------------------------------------------------------- API
def test_site_config_and_siteconfig(site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import balsam.api
    from balsam.config import SiteConfig

    assert balsam.api.site_config is None  # outside a site
    monkeypatch.chdir(site.path / "data")
    from balsam.api import site_config

    assert isinstance(site_config, SiteConfig)
    assert site_config.site_path == site.path and site_config.data_path == site.path / "data"
    assert site_config.log_path == site.path / "log" and site_config.settings_path == site.path / "settings.yml"
    assert site_config.job_template_path == site.path / "job-template.sh"
    assert site_config.settings.launcher.idle_ttl_s > 0 and site_config.site_id == site.id
    assert SiteConfig(site.path).site_path == site.path


def test_site_path_is_a_path(site: Any) -> None:
    s = Site.objects.get(name="test-site")
    assert isinstance(s.path, Path) and s.path == site.path
    assert (s.path / "data").is_dir()


def test_wait_returns_done_and_not_done(site: Any, hello: Any) -> None:
    a = hello.submit(workdir="a", say_hello_to="x")
    b = hello.submit(workdir="b", say_hello_to="y")
    Job.objects.filter(id=[a.id]).update(state="USER_KILLED")
    result = Job.objects.wait([a, b], timeout=0.2)
    assert [j.id for j in result.done] == [a.id] and [j.id for j in result.not_done] == [b.id]
    done, not_done = result
    assert done == result.done


def test_app_with_a_site_object_and_run_with_star_args(site: Any) -> None:
    the_site = Site.objects.get(name="test-site")

    class Summer(ApplicationDefinition):
        site = the_site

        def run(self, *args: int) -> int:
            return sum(args)

    Summer.sync()
    assert Summer._site_ref().path == site.path
    jobs = [Summer.submit(workdir="sum", args=[1, 2, 3]), Summer.submit(workdir="none")]
    assert jobs[0].site_id == site.id
    from tests.launcher_support import run, runnable

    runnable(site.store, jobs)
    assert run(site, "mpi") == 0  # no postprocess hook: the launcher finishes them
    assert [str(j.state) for j in Job.objects.filter(id=[j.id for j in jobs])] == ["JOB_FINISHED"] * 2
    assert [j.result() for j in jobs] == [6, 0]


def test_job_delete_clears_its_id(site: Any, hello: Any) -> None:
    job = hello.submit(workdir="gone", say_hello_to="x")
    job_id = job.id
    job.delete()
    assert job.id is None
    assert not Job.objects.filter(id=[job_id]).exists()


# ------------------------------------------------------------------------------------------- CLI
def test_site_ls_active_column_and_site_active(site: Any, tmp_path: Path) -> None:
    init_site(tmp_path / "other", name="other")
    lines = ok("site", "ls").stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "Name", "Host", "Active"]
    assert all(line.split()[3] == "no" for line in lines[1:])
    assert "No jobs" in ok("job", "ls", "--site", "active").stdout or ok("job", "ls", "--site", "active").stdout.strip() == ""


def test_job_ls_has_a_site_column_with_several_sites(site: Any, hello: Any, tmp_path: Path) -> None:
    hello.submit(workdir="a", say_hello_to="x")
    init_site(tmp_path / "other", name="other")
    header = ok("job", "ls", "--site", "all").stdout.splitlines()[0].split()
    assert header[:2] == ["ID", "Site"]


def test_launcher_logs_match_balsam07_globs(site: Any, hello: Any) -> None:
    from tests.launcher_support import run, runnable

    runnable(site.store, [hello.submit(workdir="l", say_hello_to="x")])
    assert run(site, "mpi") == 0
    assert list((site.path / "log").glob("mpi_mode*.log"))
    out = ok("site", "status", "--site", str(site.path)).stdout
    assert "mpi_mode_*.log" in out and "serial_mode_*.log" in out and "balsam.log" in out


def test_a_service_set_to_null_is_off_as_balsam_07_documents(site: Any) -> None:
    """Balsam 0.7: "a service can be disabled by setting its key to null", and its settings template ships the file
    cleaner so. Here `file_cleaner: null` kept the cleaner running (deleting the cleanup_files globs of finished
    jobs a 0.7 site never cleaned); now it is off, and `transfers: null` means no transfer service."""
    from balsam.services.agent import agent_status, start_agent, stop_agent

    settings = yaml.safe_load((site.path / "settings.yml").read_text())
    settings.update(file_cleaner=None, transfers=None)
    (site.path / "settings.yml").write_text(yaml.safe_dump(settings))
    loaded = load_settings(site.path / "settings.yml")
    assert loaded.file_cleaner is None and loaded.transfers.transfer_locations == {}
    start_agent(site.path)
    try:
        services = set(agent_status(site.path)["services"])
    finally:
        stop_agent(site.path)
    assert "processing" in services and "scheduler" in services
    assert "file_cleaner" not in services and "transfers" not in services
    assert settings_from_dict({}).file_cleaner is not None  # on by default
