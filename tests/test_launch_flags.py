"""launch_params pass only flags that bind, place or map processes (balsam.db.launch_flags): a flag that runs a
program of the caller's choosing (``-x BASH_ENV=...``, ``--mca plm_rsh_agent``, ``-env LD_PRELOAD``) is refused in one
line when the job is made, at the site, through its agent and at the relay, and again before a real launcher starts
it under real Open MPI; a site's owner may allow more in settings.yml. Balsam 0.7's uses (``cpu_bind=depth``,
``--cpu-bind``, GPU binding, ``-d``) pass."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from balsam import exceptions as exc
from tests.launcher_support import REPO, configure, events, job_row, run, runnable

HOSTILE = [{"-x": "BASH_ENV=/tmp/evil.sh"}, {"--mca": "plm_rsh_agent /tmp/evil.sh"}, {"env": "LD_PRELOAD"},
           {"-genv": "LD_PRELOAD"}, {"--export": "ALL,BASH_ENV=/tmp/evil.sh"}, {"--cpu-bind": "-x"},
           {"--map-by=ppr:1:node -x": ""}, {"--bind-to": "core\n-x"}]


def _app() -> Any:
    from balsam.api import ApplicationDefinition

    class Echo(ApplicationDefinition):
        site = "test-site"
        command_template = "echo hello"

    Echo.sync()
    return Echo


@pytest.mark.parametrize("backend", ["local", "http"], indirect=True)
def test_hostile_flags_are_refused_when_the_job_is_made(site: Any, backend: str) -> None:
    from balsam.api import Job

    echo = _app()
    for n, params in enumerate(HOSTILE):
        with pytest.raises(exc.ValidationError, match=r"launch_params") as info:
            Job(f"bad/{n}", app_id=echo, launch_params=params).save()
        assert "\n" not in str(info.value)
    assert Job.objects.filter(workdir__contains="bad/").count() == 0
    ok = Job("ok/1", app_id=echo, launch_params={"cpu_bind": "depth", "cpu-bind": "depth", "--gpu-bind": "closest", "d": "4"})
    ok.save()
    assert Job.objects.get(id=ok.id).launch_params["--gpu-bind"] == "closest"
    ok.launch_params = {"-x": "LD_PRELOAD=/tmp/evil.so"}  # a change is checked as a creation is
    with pytest.raises(exc.ValidationError, match="flag -x is not one Balsam passes"):
        ok.save()
    assert Job.objects.get(id=ok.id).launch_params == {"cpu_bind": "depth", "cpu-bind": "depth", "--gpu-bind": "closest", "d": "4"}


def test_the_cli_refuses_a_hostile_flag_in_one_line(site: Any) -> None:
    _app()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "balsam", "job", "create", "--site", str(site.path), "-a", "Echo", "-w", "cli/1",
                          "-lp", "x=BASH_ENV=/tmp/evil.sh", "-y"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "launch_params flag -x is not one Balsam passes" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_site_owner_may_allow_more_flags_in_settings(site: Any) -> None:
    from balsam.api import Job

    echo = _app()
    with pytest.raises(exc.ValidationError, match="flag --mca is not one"):
        Job("mca/1", app_id=echo, launch_params={"--mca": "btl_tcp_if_include eth0"}).save()
    settings = site.path / "settings.yml"
    data = yaml.safe_load(settings.read_text())
    data["launcher"]["allowed_launch_params"] = ["--mca"]
    settings.write_text(yaml.safe_dump(data))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    synced = subprocess.run([sys.executable, "-m", "balsam", "site", "sync", "--site", str(site.path)], capture_output=True,
                            text=True, env=env, timeout=120)
    assert synced.returncode == 0, synced.stderr
    Job("mca/1", app_id=echo, launch_params={"--mca": "btl_tcp_if_include"}).save()
    data["launcher"]["allowed_launch_params"] = ["not a flag"]
    settings.write_text(yaml.safe_dump(data))
    bad = subprocess.run([sys.executable, "-m", "balsam", "site", "sync", "--site", str(site.path)], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode != 0 and "launcher.allowed_launch_params: 'not a flag' is not a launcher flag" in bad.stderr


def test_a_hostile_flag_already_stored_never_reaches_open_mpi(site: Any, tmp_path: Path) -> None:
    """A row written before this check (or around it) fails before launch; under real Open MPI, ``-x BASH_ENV``
    would make every rank's bash run the file first."""
    if shutil.which("mpirun.openmpi") is None:
        pytest.skip("Open MPI is not installed (bash .ci/mpi.sh)")
    from balsam.api import ApplicationDefinition

    marker = tmp_path / "evil-ran"
    evil = tmp_path / "evil.sh"
    evil.write_text(f"touch {marker}\n")

    class Bashy(ApplicationDefinition):
        site = "test-site"
        command_template = "bash -c 'echo rank'"

    configure(site.path, mpi_launcher="mpirun", mpi_executable="mpirun.openmpi",
              mpi_options={"allow_run_as_root": "true", "oversubscribe": "true"})
    good = Bashy.submit("mpi/good", ranks_per_node=2, launch_params={"--bind-to": "none"})
    bad = Bashy.submit("mpi/bad", ranks_per_node=2)
    site.store.execute("UPDATE job SET launch_params = ? WHERE id = ?", (f'{{"-x": "BASH_ENV={evil}"}}', bad.id))
    runnable(site.store, [good, bad])
    assert run(site, "mpi", idle_ttl_s=0.5) == 0
    assert not marker.exists()  # BASH_ENV never reached a rank's bash
    assert job_row(site.store, good.id)["state"] == "JOB_FINISHED"
    assert job_row(site.store, bad.id)["state"] == "FAILED"
    assert any("launch_params flag -x is not one Balsam passes to mpirun" in str(e["data"]) for e in events(site.store, bad.id))


def test_the_relay_refuses_a_hostile_flag_before_queuing_it(tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy")
    from balsam.db.creation import NEW_JOB_COLUMNS
    from balsam.db.jobs import new_job_row
    from balsam.relay.backend import RelayBackend
    from tests.relay_support import relay_store

    for store in relay_store("sqlite", tmp_path):
        store.add_user("alice", "correct horse")
        _, alice = store.login("alice", "correct horse")
        store.verify(store.link_site(alice, 7, "polaris"))
        backend = RelayBackend(store, alice, wait_s=0.2)
        row = new_job_row("w/1", (7 << 32) + 1, launch_params={"-x": "BASH_ENV=/tmp/evil.sh"})
        with pytest.raises(exc.ValidationError, match=r"job 'w/1': launch_params flag -x is not one"):
            backend.create_jobs([row], {})
        with pytest.raises(exc.ValidationError, match=r"launch_params flag --mca is not one"):
            backend.update_jobs([((7 << 32) + 1, {"launch_params": {"--mca": "plm_rsh_agent"}})])
        with pytest.raises(exc.ValidationError, match=r"job 'w/2': launch_params cpu_bind 'sideways' is not a binding"):
            raw = list(new_job_row("w/2", (7 << 32) + 1))  # as a client that skips the checks would send it
            raw[NEW_JOB_COLUMNS.index("launch_params")] = '{"cpu_bind": "sideways"}'
            backend.create_jobs([tuple(raw)], {})
        with pytest.raises(exc.ValidationError, match=r"launch_params cpu_bind 'list:a' is not|cpu_bind 'list:a': a list"):
            backend.update_jobs([((7 << 32) + 1, {"launch_params": {"cpu_bind": "list:a"}})])
        with pytest.raises(exc.ObjectDoesNotExist):
            store.command(alice, 1)  # nothing was queued for the site


BOGUS_BINDS = ["sideways", "", "list:", "list:a-b", "list:5-2", "core:3", "list:0-3::4"]


@pytest.mark.parametrize("backend", ["local", "http"], indirect=True)
def test_a_bogus_cpu_bind_is_refused_when_the_job_is_made_not_when_it_launches(site: Any, backend: str) -> None:
    """launch_params["cpu_bind"] is Balsam's own binding: a value no launcher renders is refused in one line when the
    job is made or changed (before, the job was made and failed when a launcher first tried to start it)."""
    from balsam.api import Job

    echo = _app()
    for n, bind in enumerate(BOGUS_BINDS):
        with pytest.raises(exc.ValidationError, match=r"launch_params cpu_bind") as info:
            Job(f"bind/{n}", app_id=echo, launch_params={"cpu_bind": bind}).save()
        assert "\n" not in str(info.value)
    assert Job.objects.filter(workdir__contains="bind/").count() == 0
    ok = Job("bind/ok", app_id=echo, launch_params={"cpu_bind": "list:0-3:4,6"})
    ok.save()
    ok.launch_params = {"cpu_bind": "sideways"}
    with pytest.raises(exc.ValidationError, match="cpu_bind 'sideways' is not a binding"):
        ok.save()
    with pytest.raises(exc.ValidationError, match="cpu_bind 'list:9-1': CPU range '9-1' runs backwards"):
        Job.objects.filter(workdir__contains="bind/").update(launch_params={"cpu_bind": "list:9-1"})
    assert Job.objects.get(id=ok.id).launch_params == {"cpu_bind": "list:0-3:4,6"}


def test_the_cli_and_job_files_refuse_a_bogus_cpu_bind_in_one_line(site: Any, tmp_path: Path) -> None:
    _app()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    jobs = tmp_path / "jobs.yml"
    jobs.write_text(yaml.safe_dump([{"workdir": "file/1", "app": "Echo", "launch_params": {"cpu_bind": "list:3-0"}}]))
    for args in (["-w", "cli/1", "-lp", "cpu_bind=sideways"], ["--from", str(jobs)]):
        out = subprocess.run([sys.executable, "-m", "balsam", "job", "create", "--site", str(site.path), "-a", "Echo", *args, "-y"],
                             capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
        assert "launch_params cpu_bind" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_the_store_and_the_launchers_agree_on_the_bindings() -> None:
    """The store refuses what the launchers cannot render, and accepts what they render."""
    from balsam.db.launch_flags import CPU_BIND_KINDS, bind_refused
    from balsam.platforms.mpi.base import BIND_KINDS, LaunchSpec, validate

    assert CPU_BIND_KINDS == BIND_KINDS
    for bind in ("none", "core", "hwthread", "depth", "numa", "list:0-1:4,5"):
        assert bind_refused(bind) is None
        validate(LaunchSpec(["a"], cpu_bind=bind), "mpiexec")
    for bind in ("sideways", "", "list:"):
        with pytest.raises(exc.BalsamError):
            validate(LaunchSpec(["a"], cpu_bind=bind), "mpiexec")
