"""Every preset: its settings validate, its adapters exist, its job template renders, passes ``bash -n`` and
runs the launcher line under real bash; the Slurm one passes ``sbatch --test-only``; presets load from a zip."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from balsam.exceptions import ConfigError
from balsam.platforms.mpi import LaunchSpec, get_mpi_launcher
from balsam.platforms.mpi.detect import resolve_mpi
from balsam.platforms.nodes import get_node_adapter, gpu_visibility_env
from balsam.platforms.nodes.gpus import node_gpu_ids
from balsam.platforms.presets import describe_presets, list_presets, preset_data, read_preset_file
from balsam.platforms.schedulers import get_scheduler
from balsam.platforms.templates import format_partition, job_script_context, render_job_script
from balsam.settings import settings_from_dict
from tests.platforms_support import REPO, env_with_path, make_recorder, read_calls, slurm_status

PRESETS = list_presets()
REQUIRED = {
    "local", "theta", "thetagpu", "cooley", "bebop", "cori-haswell", "cori-knl", "summit", "crux", "perlmutter-cpu",
    "perlmutter-gpu", "polaris", "aurora", "sunspot", "frontier", "slurm", "pbs", "sge",
}  # fmt: skip


def test_every_required_preset_ships():
    assert REQUIRED <= set(PRESETS)


def settings_of(name):
    return settings_from_dict(preset_data(name), f"preset {name}")


def context_for(name, site: Path, balsam="balsam"):
    settings = settings_of(name)
    queue = next(iter(settings.scheduler.allowed_queues))
    return job_script_context(
        balsam=balsam, site_path=str(site), batch_job_id=42, job_mode="mpi", wall_time_min=20, num_nodes=2,
        project="MyProject", queue=queue, filter_tags={"workflow": "scan 7"},
        partitions=[format_partition("mpi", 1), format_partition("serial", 1, {"kind": "small"})],
        optional_params=dict(settings.scheduler.optional_batch_job_params),
    )  # fmt: skip


@pytest.mark.parametrize("name", PRESETS)
def test_settings_validate_and_name_real_adapters(name):
    s = settings_of(name)
    sched = get_scheduler(s.scheduler.type, options=s.scheduler.options)
    # "auto" (the local preset) becomes whatever MPI is on PATH, or none ("local")
    mpi, exe, options, _ = resolve_mpi(s.launcher.mpi_launcher, s.launcher.mpi_executable, s.launcher.mpi_options, os.environ)
    launcher = get_mpi_launcher(mpi, exe, **options)
    ranks = 1 if mpi == "local" else 2
    assert launcher.render(LaunchSpec(["app"], num_ranks=ranks, ranks_per_node=ranks, hosts=["nid00001"])).argv
    node = get_node_adapter(s.launcher.node)
    gpus = node_gpu_ids(s.launcher.gpu_ids, s.launcher.gpus_per_node)
    gpu_visibility_env(s.launcher.gpu_env or "CUDA_VISIBLE_DEVICES", gpus[:1])
    assert s.title and s.scheduler.allowed_queues and sched.name == s.scheduler.type and node.name == s.launcher.node
    for policy in s.scheduler.allowed_queues.values():
        assert policy.max_nodes >= 1 and policy.max_wall_time_min >= 1


@pytest.mark.parametrize("name", PRESETS)
def test_template_renders_passes_bash_n_and_runs_the_launcher(tmp_path, name):
    site = tmp_path / "my site"
    site.mkdir()
    text = render_job_script(read_preset_file(name, "job-template.sh"), context_for(name, site))
    assert text.startswith("#!/bin/bash\n")
    check = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    script = tmp_path / "qlaunch00042.sh"
    script.write_text(text)
    log = tmp_path / "calls.jsonl"
    make_recorder(tmp_path / "bin", "balsam", log, watch=["BALSAM_SITE_PATH"])
    subprocess.run(["bash", str(script)], env=env_with_path(tmp_path / "bin"), cwd=tmp_path, check=True, timeout=30)
    (call,) = read_calls(log)
    assert call["argv"] == [
        "launcher", "--batch-job-id", "42", "-j", "mpi", "-t", "20", "--tag", "workflow=scan 7", "-p", "mpi:1", "-p", "serial:1:kind=small",
    ]  # fmt: skip
    assert call["env"] == {"BALSAM_SITE_PATH": str(site)} and call["cwd"] == str(site)


@pytest.mark.parametrize("name", PRESETS)
def test_directives_carry_the_request(tmp_path, name):
    text = render_job_script(read_preset_file(name, "job-template.sh"), context_for(name, tmp_path))
    settings = settings_of(name)
    if settings.scheduler.type == "local":
        return
    queue = next(iter(settings.scheduler.allowed_queues))
    assert "MyProject" in text and queue in text
    assert any(w in text for w in ("nodes=2", "select=2", "-nnodes 2", "-n 2", "h_rt=00:20:00"))


def test_describe_presets():
    info = {p.name: p for p in describe_presets()}
    assert (info["polaris"].scheduler, info["polaris"].mpi_launcher, info["polaris"].node) == ("pbs", "pals", "pbs")
    assert (info["summit"].scheduler, info["summit"].mpi_launcher) == ("lsf", "jsrun")
    assert (info["frontier"].scheduler, info["theta"].mpi_launcher) == ("slurm", "aprun")
    assert all(p.title for p in info.values())


def test_unknown_preset_and_file():
    with pytest.raises(ConfigError, match="unknown preset 'nersc'"):
        read_preset_file("nersc", "settings.yml")
    with pytest.raises(ConfigError, match="no file"):
        read_preset_file("local", "secrets.txt")


def test_presets_load_from_a_zip(tmp_path):
    archive = tmp_path / "balsam.pyz"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in (REPO / "balsam").rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                zf.write(path, path.relative_to(REPO).as_posix())
    code = (
        "import balsam.platforms.presets as p, sys\n"
        "assert '.pyz' in p.__file__, p.__file__\n"
        "print(len(p.list_presets()), 'gpu_env: ZE_AFFINITY_MASK' in p.read_preset_file('aurora', 'settings.yml'))\n"
    )
    # -S skips .pth files, so the editable install cannot stand in for the zip; dependencies stay importable
    deps = [p for p in sys.path if p.endswith("site-packages")]
    env = {"PYTHONPATH": os.pathsep.join([str(archive), *deps])}
    out = subprocess.run([sys.executable, "-S", "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(len(PRESETS)), "True"]


slurm_up, slurm_why = slurm_status()


@pytest.mark.slurm
@pytest.mark.skipif(not slurm_up, reason=slurm_why)
def test_slurm_preset_script_passes_sbatch_test_only(tmp_path):
    text = render_job_script(read_preset_file("slurm", "job-template.sh"), context_for("slurm", tmp_path))
    script = tmp_path / "qlaunch00042.sh"
    script.write_text(text.replace("--nodes=2", "--nodes=1"))  # the CI cluster has one node
    result = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "to start at" in result.stderr and "partition debug" in result.stderr
